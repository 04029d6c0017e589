//! Display names that cannot pass for someone else's. A name others will read (a guest's
//! name at join or rename, a bot API author) is normalised (NFKC, runs of spaces made
//! one) and refused when it holds what lets a name hide or disguise itself: control and
//! format characters (bidi overrides, zero-width joiners and spaces), line and paragraph
//! separators, private-use code points, and the "blank" fillers that
//! render as nothing (U+3164, U+2800…). Such a name could push the « (invité·e) » marker
//! out of view or look like another participant's while comparing unequal. Code points
//! unassigned in this crate's Unicode tables are let through: clients newer than it may
//! know them, and older ones draw them as a visible box.
//!
//! Depends on nothing else in the crate (the SFU uses it for renames).

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing visible is left once spaces are collapsed.
    #[error("the name is empty")]
    Empty,
    /// More characters than allowed, after normalisation.
    #[error("the name is longer than {0} characters")]
    TooLong(usize),
    /// It holds a character that renders as nothing or reorders the text around it.
    #[error(
        "the name holds an invisible, formatting or private character (U+{0:04X}); use letters, digits, spaces and punctuation"
    )]
    Hidden(u32),
}

/// Characters that are letters or symbols by category but draw nothing: Hangul fillers,
/// the braille blank, and the like, used to make blank-looking names.
const FILLERS: &[char] = &[
    '\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}', '\u{2062}', '\u{2063}', '\u{2064}',
    '\u{180E}', '\u{17B4}', '\u{17B5}', '\u{034F}', '\u{FE0F}', '\u{FE0E}',
];

fn is_hidden(c: char) -> bool {
    use GeneralCategory as G;
    if FILLERS.contains(&c) {
        return true;
    }
    matches!(
        c.general_category(),
        G::Control
            | G::Format
            | G::LineSeparator
            | G::ParagraphSeparator
            | G::PrivateUse
            | G::Surrogate
    ) || (c.general_category() == G::SpaceSeparator && c != ' ')
        // Variation selectors (U+FE00–FE0F, U+E0100–E01EF) and tag characters.
        || ('\u{FE00}'..='\u{FE0F}').contains(&c)
        || ('\u{E0000}'..='\u{E01EF}').contains(&c)
}

/// `name` normalised (NFKC, trimmed, inner runs of spaces made one), if it
/// is 1 to `max_chars` characters with nothing hidden in it.
pub fn normalise_display_name(name: &str, max_chars: usize) -> Result<String, NameError> {
    // White space around the name (tabs and line breaks included) is trimmed, as a form
    // field would; inside it, only spaces may separate words.
    let nfkc: String = name.trim().nfkc().collect();
    let mut out = String::with_capacity(nfkc.len());
    // NFKC already turned most exotic spaces (U+00A0, U+2000…) into U+0020; what is left
    // of them, tabs included, is refused below.
    for word in nfkc.split(' ').filter(|w| !w.is_empty()) {
        if let Some(hidden) = word.chars().find(|&c| is_hidden(c)) {
            return Err(NameError::Hidden(u32::from(hidden)));
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    let chars = out.chars().count();
    if chars == 0 {
        return Err(NameError::Empty);
    }
    if chars > max_chars {
        return Err(NameError::TooLong(max_chars));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_kept_and_tidied() {
        for (given, kept) in [
            ("Zoé", "Zoé"),
            ("  Jean-Luc   Picard ", "Jean-Luc Picard"),
            ("李小龍", "李小龍"),
            ("محمد", "محمد"),
            ("O'Brien (DINUM)", "O'Brien (DINUM)"),
            // NFKC: full-width letters and ligatures become plain ones.
            ("Ｚｏé", "Zoé"),
            ("ﬁona", "fiona"),
            // A no-break space is a space.
            ("Zoé\u{A0}B.", "Zoé B."),
            ("emoji 🎉", "emoji 🎉"),
        ] {
            assert_eq!(
                normalise_display_name(given, 64).as_deref(),
                Ok(kept),
                "{given:?}"
            );
        }
    }

    #[test]
    fn hidden_and_disguising_characters_are_refused() {
        for bad in [
            "Zoé\u{202E}ecnarF",    // right-to-left override
            "Zo\u{200B}é",          // zero-width space
            "Zo\u{200D}é",          // zero-width joiner
            "Zoé\u{2066}x\u{2069}", // isolates
            "\u{3164}\u{3164}",     // Hangul filler
            "Zoé\u{2800}\u{2800}",  // braille blank
            "Zoé\u{2028}Bob",       // line separator
            "Zoé\u{E000}",          // private use
            "Zoé\u{0}",             // control
            "Anne\tMarie",          // tab
            "Zoé\n(invité·e)",      // line break
            "Zoé\u{FEFF}",          // byte order mark
            "Zoé\u{E0041}",         // tag character
            "Zoé\u{FE0F}",          // variation selector on its own
        ] {
            assert!(
                matches!(normalise_display_name(bad, 64), Err(NameError::Hidden(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn blank_and_long_names_are_refused() {
        assert_eq!(normalise_display_name("", 64), Err(NameError::Empty));
        assert_eq!(normalise_display_name("   ", 64), Err(NameError::Empty));
        assert_eq!(
            normalise_display_name("\t Zoé \n", 64).as_deref(),
            Ok("Zoé")
        );
        assert!(normalise_display_name(&"é".repeat(64), 64).is_ok());
        assert_eq!(
            normalise_display_name(&"é".repeat(65), 64),
            Err(NameError::TooLong(64))
        );
        // Padding with spaces no longer makes a name long: it collapses.
        assert_eq!(
            normalise_display_name(&format!("Zoé{}x", " ".repeat(700)), 64).as_deref(),
            Ok("Zoé x")
        );
        // 700 characters of a name with bidi and zero-width characters in it.
        let hostile = format!("{}\u{202E}{}", "a".repeat(350), "\u{200B}b".repeat(175));
        assert!(normalise_display_name(&hostile, 64).is_err());
    }
}
