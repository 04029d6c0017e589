//! Bot commands declared as data: the dispatcher and the help text read the same table,
//! so a command added here is parsed, permission-checked and documented at once.

use crate::config::{Language, PermissionLevel};
use crate::i18n::{self, Text};

/// The prefix every command starts with.
pub const PREFIX: &str = "!visio";

/// What a command does once recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandAction {
    /// Show the command list.
    Help,
}

/// One command of the table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Canonical (French) name.
    pub name: &'static str,
    /// Other accepted names (English).
    pub aliases: &'static [&'static str],
    /// Argument synopsis shown in the help, if the command takes any.
    pub args: Option<Text>,
    pub help: Text,
    /// Least permission level needed.
    pub permission: PermissionLevel,
    pub action: CommandAction,
}

/// Every command the bot knows, in help order.
pub static COMMANDS: &[CommandSpec] = &[CommandSpec {
    name: "aide",
    aliases: &["help"],
    args: None,
    help: Text::new("affiche cette aide", "shows this help"),
    permission: PermissionLevel::User,
    action: CommandAction::Help,
}];

/// What a message body means to the bot.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not addressed to the bot.
    NotACommand,
    /// A known command with the rest of the line as arguments.
    Command {
        spec: &'static CommandSpec,
        args: &'a str,
    },
    /// `!visio` followed by a word that is no command.
    Unknown { word: &'a str },
    /// `!visio` alone.
    Bare,
}

impl PartialEq for CommandSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for CommandSpec {}

/// Parses a message body; only the first line counts, and the prefix is
/// case-insensitive and must stand alone (`!visioconf` is not a command).
pub fn parse(body: &str) -> Parsed<'_> {
    let line = body.lines().next().unwrap_or("").trim();
    let Some(head) = line.get(..PREFIX.len()) else {
        return Parsed::NotACommand;
    };
    if !head.eq_ignore_ascii_case(PREFIX) {
        return Parsed::NotACommand;
    }
    let rest = &line[PREFIX.len()..];
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return Parsed::NotACommand;
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Parsed::Bare;
    }
    let (word, args) = match rest.split_once(char::is_whitespace) {
        Some((word, args)) => (word, args.trim()),
        None => (rest, ""),
    };
    let lower = word.to_lowercase();
    match COMMANDS
        .iter()
        .find(|c| c.name == lower || c.aliases.contains(&lower.as_str()))
    {
        Some(spec) => Parsed::Command { spec, args },
        None => Parsed::Unknown { word },
    }
}

/// The help message, generated from the table: (plain body, HTML body).
pub fn help(lang: Language) -> (String, String) {
    let title = i18n::HELP_TITLE.get(lang);
    let mut plain = format!("{title}\n");
    let mut html = format!("<p><strong>{}</strong></p><ul>", i18n::html_escape(title));
    for spec in COMMANDS {
        let name = match lang {
            Language::Fr => spec.name,
            Language::En => spec.aliases.first().copied().unwrap_or(spec.name),
        };
        let usage = match spec.args {
            Some(args) => format!("{PREFIX} {name} {}", args.get(lang)),
            None => format!("{PREFIX} {name}"),
        };
        let help = spec.help.get(lang);
        plain.push_str(&format!("• {usage} — {help}\n"));
        html.push_str(&format!(
            "<li><code>{}</code> — {}</li>",
            i18n::html_escape(&usage),
            i18n::html_escape(help)
        ));
    }
    let footer = i18n::HELP_FOOTER.get(lang);
    plain.push_str(footer);
    html.push_str(&format!("</ul><p>{}</p>", i18n::html_escape(footer)));
    (plain, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_commands_and_aliases() {
        for body in [
            "!visio aide",
            "!VISIO help",
            "  !visio Aide  ",
            "!visio aide\nplus",
        ] {
            match parse(body) {
                Parsed::Command { spec, .. } => {
                    assert_eq!(spec.action, CommandAction::Help, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn ignores_what_is_not_addressed_to_the_bot() {
        for body in [
            "",
            "bonjour",
            "!visioconf",
            "visio aide",
            "a !visio aide",
            "!vis",
        ] {
            assert_eq!(parse(body), Parsed::NotACommand, "{body}");
        }
        assert_eq!(parse("!visio"), Parsed::Bare);
        assert_eq!(parse("!visio x1"), Parsed::Unknown { word: "x1" });
    }

    #[test]
    fn help_lists_every_command_in_both_languages() {
        let (plain, html) = help(Language::Fr);
        assert!(
            plain.contains("!visio aide") && plain.starts_with("Commandes"),
            "{plain}"
        );
        assert!(html.contains("<code>!visio aide</code>"), "{html}");
        let (plain, _) = help(Language::En);
        assert!(
            plain.contains("!visio help") && plain.starts_with("Visio commands"),
            "{plain}"
        );
        for spec in COMMANDS {
            assert!(help(Language::Fr).0.contains(spec.name));
        }
    }
}
