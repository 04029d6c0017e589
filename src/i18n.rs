//! Every text a user sees, in French (the default) and English. Texts are grouped here so
//! a translation review reads one file.

use crate::config::Language;

/// A text in both languages.
#[derive(Debug, Clone, Copy)]
pub struct Text {
    pub fr: &'static str,
    pub en: &'static str,
}

impl Text {
    pub const fn new(fr: &'static str, en: &'static str) -> Self {
        Self { fr, en }
    }

    pub fn get(&self, lang: Language) -> &'static str {
        match lang {
            Language::Fr => self.fr,
            Language::En => self.en,
        }
    }
}

pub const HELP_TITLE: Text = Text::new("Commandes de Visio", "Visio commands");
pub const HELP_FOOTER: Text = Text::new(
    "Les commandes anglaises sont aussi acceptées.",
    "French command names work too.",
);
pub const UNKNOWN_COMMAND: Text = Text::new(
    "Commande inconnue « {word} ». Vouliez-vous dire !visio {suggestion} ? Pour lancer une visio nommée ainsi : !visio \"{word}\". Tapez !visio aide pour la liste des commandes.",
    "Unknown command “{word}”. Did you mean !visio {suggestion}? To start a meeting with that title: !visio \"{word}\". Type !visio help for the list of commands.",
);
pub const NOT_PERMITTED: Text = Text::new(
    "Désolé, vous n’avez pas le droit d’utiliser cette commande.",
    "Sorry, you are not allowed to use this command.",
);
pub const INVITE_REFUSED: Text = Text::new(
    "Ce bot ne rejoint que les salons où l’invite une personne autorisée par l’administration du service.",
    "This bot only joins rooms when invited by someone the service's administrators allow.",
);
pub const DIRECT_ROOM_REFUSED: Text = Text::new(
    "Cette conversation privée est réservée à deux personnes : je n’y entre pas. Pour une visio, ouvrez une conversation privée avec moi ou invitez-moi dans un salon, puis tapez !visio ; ou partagez ici le lien d’une visio lancée ailleurs.",
    "This direct chat is for two people only: I will not join it. For a meeting, start a direct chat with me or invite me to a room, then type !visio; or share here the link of a meeting started elsewhere.",
);
pub const ENCRYPTED_ROOM: Text = Text::new(
    "Ce salon est chiffré : je ne peux pas encore lire les messages chiffrés, donc je ne verrai pas les commandes !visio ici. Utilisez un salon non chiffré en attendant.",
    "This room is encrypted: I cannot read encrypted messages yet, so I will not see !visio commands here. Use an unencrypted room for now.",
);

/// Default name of the ghost that posts summaries sent through the bot API.
pub const SUMMARY_AUTHOR: Text = Text::new("Compte-rendu", "Meeting notes");

/// Escapes text for Matrix HTML (`formatted_body`).
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_is_the_default() {
        assert_eq!(HELP_TITLE.get(Language::default()), "Commandes de Visio");
        assert_eq!(HELP_TITLE.get(Language::En), "Visio commands");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
