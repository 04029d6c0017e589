//! Markdown from bots (summaries posted through the bot API) turned into the two halves
//! of a Matrix message: `formatted_body` HTML limited to what the Matrix spec lets
//! clients render (its "HTML messages" allow-list), and a plain-text `body`.
//!
//! Markdown is rendered with pulldown-cmark, then every byte of HTML goes through
//! ammonia, because Markdown lets its author write raw HTML: the sanitiser, not the
//! renderer, is what keeps `<script>`, `<iframe>`, `style` and `on*` handlers out.
//! Depends on nothing else in the crate.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

/// Tags of the Matrix spec's suggested allow-list for `m.room.message` HTML, less `img`
/// (the spec only lets clients load `mxc://` images, which Markdown from a bot never
/// holds: images become links instead) and the deprecated `font` and `strike`.
const ALLOWED_TAGS: &[&str] = &[
    "del",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "p",
    "a",
    "ul",
    "ol",
    "sup",
    "sub",
    "li",
    "b",
    "i",
    "u",
    "strong",
    "em",
    "s",
    "code",
    "hr",
    "br",
    "div",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "caption",
    "pre",
    "span",
    "details",
    "summary",
];

/// Elements removed together with everything inside them (the rest of the disallowed
/// tags are unwrapped: their text stays, escaped).
const DROPPED_WITH_CONTENT: &[&str] = &[
    "script", "style", "iframe", "noscript", "textarea", "template", "object", "embed", "svg",
    "math", "title", "mx-reply",
];

/// Link schemes a summary may point to.
const URL_SCHEMES: &[&str] = &["http", "https", "mailto"];

static SANITIZER: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let attributes: HashMap<&str, HashSet<&str>> = HashMap::from([
        ("a", HashSet::from(["href"])),
        ("ol", HashSet::from(["start"])),
        ("code", HashSet::from(["class"])),
        ("pre", HashSet::from(["class"])),
        (
            "span",
            HashSet::from(["data-mx-color", "data-mx-bg-color", "data-mx-spoiler"]),
        ),
    ]);
    let mut builder = ammonia::Builder::empty();
    builder
        .tags(ALLOWED_TAGS.iter().copied().collect())
        .clean_content_tags(DROPPED_WITH_CONTENT.iter().copied().collect())
        .tag_attributes(attributes)
        .generic_attributes(HashSet::new())
        .url_schemes(URL_SCHEMES.iter().copied().collect())
        .url_relative(ammonia::UrlRelative::Deny)
        // Keeps the opened page from reaching back into the client's window.
        .link_rel(Some("noopener"))
        .strip_comments(true)
        .attribute_filter(|element, attribute, value| {
            let keep = match (element, attribute) {
                ("code" | "pre", "class") => is_language_class(value),
                ("ol", "start") => value.parse::<i64>().is_ok(),
                ("span", "data-mx-color" | "data-mx-bg-color") => is_hex_color(value),
                _ => true,
            };
            keep.then(|| value.into())
        });
    builder
});

/// A text-only sanitiser: every tag goes, text stays, script and style contents go.
static TEXT_ONLY: LazyLock<ammonia::Builder<'static>> = LazyLock::new(|| {
    let mut builder = ammonia::Builder::empty();
    builder
        .clean_content_tags(DROPPED_WITH_CONTENT.iter().copied().collect())
        .strip_comments(true);
    builder
});

/// Whether a link target is absolute with one of [`URL_SCHEMES`].
fn has_allowed_scheme(url: &str) -> bool {
    url.split_once(':').is_some_and(|(scheme, _)| {
        URL_SCHEMES
            .iter()
            .any(|allowed| scheme.eq_ignore_ascii_case(allowed))
    })
}

/// `language-xyz` tokens only, as Markdown code fences produce.
fn is_language_class(value: &str) -> bool {
    let mut tokens = value.split_whitespace().peekable();
    tokens.peek().is_some()
        && tokens.all(|t| {
            t.strip_prefix("language-").is_some_and(|lang| {
                !lang.is_empty()
                    && lang
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
            })
        })
}

/// `#rrggbb`, the only colour form the spec defines.
fn is_hex_color(value: &str) -> bool {
    value
        .strip_prefix('#')
        .is_some_and(|hex| hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// Images become links to the image (see [`ALLOWED_TAGS`]), their alt text the link text.
fn images_as_links(event: Event<'_>) -> Event<'_> {
    match event {
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    }
}

/// Markdown → HTML safe for `formatted_body`: only the allow-listed tags and
/// attributes, links only to http(s) and mailto with `rel="noopener"`, no scripts,
/// frames, styles or event handlers, whatever raw HTML the Markdown holds.
pub fn to_matrix_html(markdown: &str) -> String {
    let mut rendered = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(
        &mut rendered,
        Parser::new_ext(markdown, options()).map(images_as_links),
    );
    SANITIZER.clean(&rendered).to_string().trim().to_owned()
}

/// Guest chat as Matrix HTML, when it uses only the inline subset a chat line needs:
/// paragraphs and line breaks, emphasis, bold, strikethrough, inline code, and links whose
/// text is their target (`<https://…>`). Anything else (headings, quotes, lists, tables,
/// images, raw HTML, a link whose text differs from where it goes) gives `None`: the
/// message goes as the plain text that was typed, so a guest cannot dress words up as a
/// notice or hide a link's target behind other text.
pub fn guest_html(markdown: &str) -> Option<String> {
    use pulldown_cmark::LinkType;
    let events: Vec<Event<'_>> = Parser::new_ext(markdown, Options::ENABLE_STRIKETHROUGH).collect();
    let mut formatted = false;
    for (i, event) in events.iter().enumerate() {
        match event {
            Event::Start(Tag::Paragraph) | Event::End(TagEnd::Paragraph) => {}
            Event::Text(_) | Event::SoftBreak | Event::HardBreak => {}
            Event::Start(Tag::Emphasis | Tag::Strong | Tag::Strikethrough)
            | Event::End(TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough)
            | Event::Code(_) => formatted = true,
            Event::Start(Tag::Link {
                link_type: LinkType::Autolink | LinkType::Email,
                dest_url,
                ..
            }) => {
                // The link's text, as rendered, must be its target.
                let text_is_target = matches!(
                    (events.get(i + 1), events.get(i + 2)),
                    (Some(Event::Text(text)), Some(Event::End(TagEnd::Link)))
                        if text.as_ref() == dest_url.as_ref()
                            || format!("mailto:{}", text.as_ref()) == dest_url.as_ref()
                );
                if !text_is_target || !has_allowed_scheme(dest_url) && !dest_url.contains('@') {
                    return None;
                }
                formatted = true;
            }
            Event::End(TagEnd::Link) => {}
            _ => return None,
        }
    }
    if !formatted {
        return None;
    }
    let mut rendered = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut rendered, events.into_iter());
    Some(SANITIZER.clean(&rendered).to_string().trim().to_owned())
}

/// Text of an HTML fragment: tags removed (script and style with their content), the
/// entities the sanitiser writes decoded back.
fn html_text(html: &str) -> String {
    let cleaned = TEXT_ONLY.clean(html).to_string();
    cleaned
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Markdown → the plain-text `body`: the text, list markers, link targets in
/// parentheses, raw HTML reduced to its text.
pub fn to_plain(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    // One entry per open list: the next number, or None for a bullet list.
    let mut lists: Vec<Option<u64>> = Vec::new();
    // Targets of the open links, with where their text started.
    let mut links: Vec<(CowStr<'_>, usize)> = Vec::new();
    let block_break = |out: &mut String| {
        let trimmed = out.trim_end_matches([' ', '\n']).len();
        out.truncate(trimmed);
        if !out.is_empty() {
            out.push_str("\n\n");
        }
    };
    let line_break = |out: &mut String| {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    };
    for event in Parser::new_ext(markdown, options()) {
        match event {
            Event::Text(text) | Event::Code(text) => out.push_str(&text),
            Event::Html(html) | Event::InlineHtml(html) => out.push_str(&html_text(&html)),
            Event::SoftBreak | Event::HardBreak => out.push('\n'),
            Event::Rule => {
                block_break(&mut out);
                out.push_str("---");
            }
            Event::TaskListMarker(done) => out.push_str(if done { "[x] " } else { "[ ] " }),
            Event::Start(Tag::Paragraph | Tag::Heading { .. } | Tag::CodeBlock(_))
            | Event::Start(Tag::BlockQuote(_) | Tag::Table(_) | Tag::HtmlBlock) => {
                if lists.is_empty() {
                    block_break(&mut out);
                } else {
                    line_break(&mut out);
                }
            }
            Event::Start(Tag::List(start)) => {
                if lists.is_empty() {
                    block_break(&mut out);
                } else {
                    line_break(&mut out);
                }
                lists.push(start);
            }
            Event::End(TagEnd::List(_)) => {
                lists.pop();
            }
            Event::Start(Tag::Item) => {
                line_break(&mut out);
                out.push_str(&"  ".repeat(lists.len().saturating_sub(1)));
                match lists.last_mut() {
                    Some(Some(n)) => {
                        out.push_str(&format!("{n}. "));
                        *n += 1;
                    }
                    _ => out.push_str("- "),
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push((dest_url, out.len()));
            }
            Event::End(TagEnd::Link | TagEnd::Image) => {
                if let Some((url, start)) = links.pop() {
                    let text = out[start..].trim();
                    let bare = url.strip_prefix("mailto:").unwrap_or(&url);
                    if !has_allowed_scheme(&url) {
                        // As in the HTML: the text stays, the target goes.
                    } else if text.is_empty() {
                        out.push_str(&url);
                    } else if text != bare {
                        out.push_str(&format!(" ({url})"));
                    }
                }
            }
            Event::End(TagEnd::TableCell) => out.push_str(" | "),
            Event::End(TagEnd::TableHead | TagEnd::TableRow) => {
                let trimmed = out.trim_end_matches([' ', '|']).len();
                out.truncate(trimmed);
                out.push('\n');
            }
            _ => {}
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No tag or attribute outside the allow-list survives, whatever the input.
    fn assert_inert(html: &str) {
        let lower = html.to_ascii_lowercase();
        for bad in [
            "<script",
            "<iframe",
            "<style",
            "<img",
            "<object",
            "<embed",
            "<svg",
            "<form",
            "<input",
            " on",
            "style=",
            "javascript:",
            "data:",
            "vbscript:",
            "srcset",
        ] {
            assert!(!lower.contains(bad), "{bad:?} in {html}");
        }
    }

    #[test]
    fn markdown_becomes_matrix_html() {
        let html = to_matrix_html(
            "# Compte-rendu\n\n**Décisions** et *suites* ~~barré~~\n\n- un\n- deux\n\n3. trois\n4. quatre\n\n> cité\n\n`code` [lien](https://example.org)",
        );
        assert!(html.starts_with("<h1>Compte-rendu</h1>"), "{html}");
        for part in [
            "<strong>Décisions</strong>",
            "<em>suites</em>",
            "<del>barré</del>",
            "<ul>\n<li>un</li>",
            "<ol start=\"3\">",
            "<blockquote>",
            "<code>code</code>",
            "<a href=\"https://example.org\" rel=\"noopener\">lien</a>",
        ] {
            assert!(html.contains(part), "{part:?} missing in {html}");
        }
        let code = to_matrix_html("```rust\nfn main() {}\n```");
        assert_eq!(
            code,
            "<pre><code class=\"language-rust\">fn main() {}\n</code></pre>"
        );
        let table = to_matrix_html("| a | b |\n|:-|-:|\n| 1 | 2 |");
        assert!(
            table.contains("<table>") && table.contains("<td>2</td>"),
            "{table}"
        );
        assert_inert(&table);
    }

    #[test]
    fn hostile_html_is_removed() {
        let cases = [
            "<script>alert(1)</script>hello",
            "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
            "<iframe src=\"https://evil.example\"></iframe>",
            "<iframe srcdoc=\"<script>alert(1)</script>\">",
            "<p onclick=\"alert(1)\">click</p>",
            "<a href=\"#\" onmouseover=\"alert(1)\">x</a>",
            "<img src=x onerror=alert(1)>",
            "<div style=\"background:url(javascript:alert(1))\">styled</div>",
            "<style>body{display:none}</style>",
            "[click](javascript:alert(1))",
            "[click](JaVaScRiPt:alert(1))",
            "[click](data:text/html;base64,PHNjcmlwdD4=)",
            "<a href=\"vbscript:msgbox\">x</a>",
            "![pic](javascript:alert(1))",
            "<svg onload=alert(1)><circle/></svg>",
            "<object data=\"x.swf\"></object><embed src=x>",
            "<form action=\"https://evil.example\"><input name=p></form>",
            "<scr<script>ipt>alert(1)</script>",
            "<!-- <script>alert(1)</script> -->",
            "<details ontoggle=alert(1) open>x</details>",
            "<span data-mx-color=\"red;x:expression(alert(1))\">c</span>",
            "<math><mi xlink:href=\"javascript:alert(1)\">x</mi></math>",
            "<a href=\"&#106;avascript:alert(1)\">encoded</a>",
            "<img src=\"https://tracker.example/pixel.png\">",
        ];
        for case in cases {
            let html = to_matrix_html(case);
            assert_inert(&html);
            assert!(
                !html.contains("alert(1)") || !html.contains('<'),
                "{case} -> {html}"
            );
        }
        assert_eq!(to_matrix_html("<script>alert(1)</script>hello"), "hello");
        assert_eq!(
            to_matrix_html("<p onclick=\"alert(1)\">click</p>"),
            "<p>click</p>"
        );
        // A disallowed link scheme keeps the text, not the link.
        assert_eq!(
            to_matrix_html("[click](javascript:alert(1))"),
            "<p><a rel=\"noopener\">click</a></p>"
        );
    }

    #[test]
    fn allowed_attributes_are_checked() {
        assert_eq!(
            to_matrix_html("<span data-mx-color=\"#ff00aa\" title=\"t\">c</span>"),
            "<p><span data-mx-color=\"#ff00aa\">c</span></p>"
        );
        assert_eq!(
            to_matrix_html("<code class=\"language-rust evil\">x</code>"),
            "<p><code>x</code></p>"
        );
        assert_eq!(
            to_matrix_html("<ol start=\"2x\"><li>a</li></ol>"),
            "<ol><li>a</li></ol>"
        );
        assert_eq!(
            to_matrix_html("<a href=\"/relative\" target=\"_blank\">r</a>"),
            "<p><a rel=\"noopener\">r</a></p>"
        );
        assert_eq!(
            to_matrix_html("<a href=\"mailto:a@b.example\">m</a>"),
            "<p><a href=\"mailto:a@b.example\" rel=\"noopener\">m</a></p>"
        );
        // Images become links to the image.
        assert_eq!(
            to_matrix_html("![schéma](https://example.org/s.png)"),
            "<p><a href=\"https://example.org/s.png\" rel=\"noopener\">schéma</a></p>"
        );
    }

    #[test]
    fn plain_text_body() {
        let plain = to_plain(
            "# Compte-rendu\n\nPoint **hebdo** avec [la doc](https://example.org).\n\n- un\n- deux\n  1. a\n  2. b\n\n<script>alert(1)</script>\n\nFin <b>gras</b> & co",
        );
        assert_eq!(
            plain,
            "Compte-rendu\n\nPoint hebdo avec la doc (https://example.org).\n\n- un\n- deux\n  1. a\n  2. b\n\nFin gras & co"
        );
        assert_eq!(to_plain("<https://example.org>"), "https://example.org");
        assert_eq!(to_plain("a < b && c > d"), "a < b && c > d");
        assert_eq!(
            to_plain("- [x] fait\n- [ ] à faire"),
            "- [x] fait\n- [ ] à faire"
        );
        assert_eq!(to_plain("| a | b |\n|-|-|\n| 1 | 2 |"), "a | b\n1 | 2");
        assert_eq!(to_plain(""), "");
        assert_eq!(
            to_plain("[piège](javascript:alert(1)) [rel](/x)"),
            "piège rel"
        );
        assert_eq!(to_plain("<iframe src=x></iframe>texte"), "texte");
    }

    #[test]
    fn guest_chat_keeps_only_the_inline_subset() {
        assert_eq!(
            guest_html("c'est **gras** et *penché*").as_deref(),
            Some("<p>c'est <strong>gras</strong> et <em>penché</em></p>")
        );
        assert_eq!(
            guest_html("`code` ~~barré~~").as_deref(),
            Some("<p><code>code</code> <del>barré</del></p>")
        );
        assert_eq!(
            guest_html("voir <https://www.numerique.gouv.fr>").as_deref(),
            Some(
                "<p>voir <a href=\"https://www.numerique.gouv.fr\" rel=\"noopener\">https://www.numerique.gouv.fr</a></p>"
            )
        );
        // Plain text needs no HTML at all.
        assert_eq!(guest_html("bonjour à tous"), None);
        // Headings, disguised links, quotes, lists, images, raw HTML: plain text instead.
        for dressed_up in [
            "# Message officiel du ministère",
            "Votre compte : [https://tchap.gouv.fr](https://evil.example/login)",
            "[cliquez ici](https://evil.example)",
            "> citation",
            "- un\n- deux",
            "![logo](https://evil.example/x.png)",
            "<b>gras</b>",
            "texte\n\n---",
            "<javascript:alert(1)>",
            "| a | b |\n|---|---|\n| 1 | 2 |",
        ] {
            assert_eq!(guest_html(dressed_up), None, "{dressed_up}");
        }
    }
}
