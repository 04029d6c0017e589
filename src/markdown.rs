//! Markdown to Matrix HTML. Interim version: escapes the text; the sanitising renderer
//! replaces it.

pub fn to_matrix_html(markdown: &str) -> String {
    format!("<p>{}</p>", crate::i18n::html_escape(markdown))
}

pub fn to_plain(markdown: &str) -> String {
    markdown.to_owned()
}
