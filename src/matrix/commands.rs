//! Bot commands declared as data: the dispatcher and the help text read the same table,
//! so a command added here is parsed, permission-checked and documented at once.
//!
//! [`process`] is the one dispatcher (the shape of mautrix-go's `commands/processor.go`):
//! it parses a message once, checks the sender's permission once ([`permitted`], the one
//! rule), answers what needs no meeting (help, hints, refusals) itself, and hands the
//! meeting commands to their handler by kind. Those handlers live in `bridge/`, which
//! knows meetings and the SFU; this module knows neither, so dependencies point one way.

use crate::config::{Language, PermissionLevel};
use crate::i18n::{self, Text};

/// The prefix every command starts with.
pub const PREFIX: &str = "!visio";

/// What a command does once recognised; the kind its handler is chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandAction {
    /// Start a meeting (the arguments are its title), or repeat the running one's link.
    Start,
    /// Say whether a meeting is running, since when and with whom.
    Status,
    /// Repeat the running meeting's link.
    Link,
    /// End the running meeting.
    End,
    /// Show the command list.
    Help,
    /// Set the running meeting's access level (moderators).
    Access,
    /// Bind a page to the sender's Matrix identity with the code it shows.
    Enter,
    /// Let a guest waiting in the lobby in (moderators).
    Admit,
    /// Turn a guest waiting in the lobby away (moderators).
    Deny,
    /// Take a participant out of the meeting (moderators).
    Remove,
}

/// One command of the table.
#[derive(Debug)]
pub struct CommandSpec {
    /// Canonical (French) name; empty for `!visio` itself.
    pub name: &'static str,
    /// Other accepted names (English).
    pub aliases: &'static [&'static str],
    /// Argument synopsis shown in the help, if the command takes any.
    pub args: Option<Text>,
    pub help: Text,
    /// Least permission level needed, checked by [`permitted`] (ending a meeting also
    /// needs the room's power level or being its creator, checked by its handler).
    pub permission: PermissionLevel,
    pub action: CommandAction,
}

/// Every command the bot knows, in help order.
pub static COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "",
        aliases: &[],
        args: Some(Text::new("[titre]", "[title]")),
        help: Text::new(
            "démarre une visio dans ce salon (ou redonne le lien de celle en cours)",
            "starts a meeting in this room (or repeats the link of the running one)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Start,
    },
    CommandSpec {
        name: "statut",
        aliases: &["status"],
        args: None,
        help: Text::new(
            "dit si une visio est en cours, depuis quand et avec qui",
            "tells whether a meeting is running, since when and with whom",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Status,
    },
    CommandSpec {
        name: "lien",
        aliases: &["link"],
        args: None,
        help: Text::new(
            "redonne le lien de la visio en cours",
            "repeats the running meeting's link",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Link,
    },
    CommandSpec {
        name: "fin",
        aliases: &["end"],
        args: None,
        help: Text::new(
            "termine la visio en cours (modération du salon ou personne qui l’a lancée)",
            "ends the running meeting (room moderators or whoever started it)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::End,
    },
    CommandSpec {
        name: "accès",
        aliases: &["access", "acces"],
        args: Some(Text::new(
            "public|confiance|membres",
            "public|trusted|members",
        )),
        help: Text::new(
            "qui entre dans la visio en cours : tout le monde, les membres (les autres attendent), ou les membres seulement (modération)",
            "who enters the running meeting: anyone, members (others wait), or members only (moderators)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Access,
    },
    CommandSpec {
        name: "entrer",
        aliases: &["join"],
        args: Some(Text::new("<code>", "<code>")),
        help: Text::new(
            "relie la page de la visio à votre compte, avec le code qu’elle affiche",
            "links the meeting page to your account, with the code it shows",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Enter,
    },
    CommandSpec {
        name: "admettre",
        aliases: &["admit"],
        args: Some(Text::new("<numéro>", "<number>")),
        help: Text::new(
            "fait entrer la personne n° <numéro> de la salle d’attente (modération)",
            "lets person no. <number> in from the lobby (moderators)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Admit,
    },
    CommandSpec {
        name: "refuser",
        aliases: &["deny"],
        args: Some(Text::new("<numéro>", "<number>")),
        help: Text::new(
            "refuse l’entrée à la personne n° <numéro> de la salle d’attente (modération)",
            "turns person no. <number> in the lobby away (moderators)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Deny,
    },
    CommandSpec {
        name: "exclure",
        aliases: &["remove"],
        args: Some(Text::new("<nom>", "<name>")),
        help: Text::new(
            "retire une personne de la visio en cours (modération)",
            "removes someone from the running meeting (moderators)",
        ),
        permission: PermissionLevel::User,
        action: CommandAction::Remove,
    },
    CommandSpec {
        name: "aide",
        aliases: &["help"],
        args: None,
        help: Text::new("affiche cette aide", "shows this help"),
        permission: PermissionLevel::User,
        action: CommandAction::Help,
    },
];

/// What a message body means to the bot.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not addressed to the bot.
    NotACommand,
    /// A command with the rest of the line as arguments (for `!visio <titre>`, the title).
    Command {
        spec: &'static CommandSpec,
        args: &'a str,
    },
    /// `!visio` followed by one word that looks like a mistyped command.
    Unknown {
        word: &'a str,
        suggestion: &'static str,
    },
}

impl PartialEq for CommandSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for CommandSpec {}

fn spec_for(action: CommandAction) -> &'static CommandSpec {
    COMMANDS
        .iter()
        .find(|c| c.action == action)
        .expect("every action has an entry in the table")
}

/// Parses a message body; only the first line counts, and the prefix is
/// case-insensitive and must stand alone (`!visioconf` is not a command).
///
/// `!visio <words>` starts a meeting titled `<words>`, unless the first word is a
/// command name, or the whole rest is one word one or two typing mistakes away from
/// one (`!visio staut`), which gets a hint instead of a meeting nobody wanted. Quotes
/// force a title: `!visio "aide"`.
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
    let start = spec_for(CommandAction::Start);
    if rest.is_empty() {
        return Parsed::Command {
            spec: start,
            args: "",
        };
    }
    for quote in [('"', '"'), ('«', '»'), ('“', '”')] {
        if let Some(inner) = rest
            .strip_prefix(quote.0)
            .and_then(|r| r.strip_suffix(quote.1))
        {
            return Parsed::Command {
                spec: start,
                args: inner.trim(),
            };
        }
    }
    let (word, args) = match rest.split_once(char::is_whitespace) {
        Some((word, args)) => (word, args.trim()),
        None => (rest, ""),
    };
    let lower = word.to_lowercase();
    let named = COMMANDS
        .iter()
        .filter(|c| !c.name.is_empty())
        .find(|c| c.name == lower || c.aliases.contains(&lower.as_str()));
    if let Some(spec) = named {
        return Parsed::Command { spec, args };
    }
    if args.is_empty()
        && let Some(suggestion) = near_command(&lower)
    {
        return Parsed::Unknown { word, suggestion };
    }
    Parsed::Command {
        spec: start,
        args: rest,
    }
}

/// The command name a single word is one or two edits away from, if any.
fn near_command(word: &str) -> Option<&'static str> {
    if word.chars().count() < 3 || !word.chars().all(|c| c.is_alphabetic()) {
        return None;
    }
    COMMANDS
        .iter()
        .filter(|c| !c.name.is_empty())
        .flat_map(|c| std::iter::once(c.name).chain(c.aliases.iter().copied()))
        .map(|name| (edit_distance(word, name), name))
        .filter(|(d, name)| *d <= if name.chars().count() <= 4 { 1 } else { 2 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Edit distance over characters where swapping two neighbours counts as one typo
/// (optimal string alignment), as in `aied` for `aide`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Whether a user at `level` may use a command that requires `required`: the one
/// permission rule. Nobody below [`PermissionLevel::User`] may use the bot at all.
pub fn permitted(level: PermissionLevel, required: PermissionLevel) -> bool {
    level >= PermissionLevel::User && level >= required
}

/// What a message is to the bot, once parsed and permission-checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch<'a> {
    /// Not addressed to the bot: other handlers (meeting chat) may take it.
    NotACommand,
    /// A permitted command whose handler must run: the meeting commands.
    Run {
        spec: &'static CommandSpec,
        args: &'a str,
    },
    /// The answer to give, needing no handler (help, a hint, a refusal): (plain, HTML).
    Answer(String, String),
}

/// The one command dispatcher: parses `body` (from a sender at `level`), checks the
/// permission, and says what to do. `mention` is the bot's names when the message
/// mentions the bot: a mention that asks for a call starts a meeting.
pub fn process<'a>(
    body: &'a str,
    level: PermissionLevel,
    mention: Option<&[&str]>,
    lang: Language,
) -> Dispatch<'a> {
    let (parsed, by_mention) = match parse(body) {
        Parsed::NotACommand => match mention {
            Some(names) if asks_for_a_call(body, names) => {
                let start = spec_for(CommandAction::Start);
                (
                    Parsed::Command {
                        spec: start,
                        args: "",
                    },
                    true,
                )
            }
            _ => return Dispatch::NotACommand,
        },
        parsed => (parsed, false),
    };
    let required = match &parsed {
        Parsed::Command { spec, .. } => spec.permission,
        _ => PermissionLevel::User,
    };
    if !permitted(level, required) {
        // A mention is not a command: nobody is told off for talking about calls.
        if by_mention {
            return Dispatch::NotACommand;
        }
        let text = i18n::NOT_PERMITTED.get(lang);
        return Dispatch::Answer(text.to_owned(), i18n::html_escape(text));
    }
    match parsed {
        Parsed::NotACommand => Dispatch::NotACommand,
        Parsed::Command { spec, .. } if spec.action == CommandAction::Help => {
            let (plain, html) = help(lang);
            Dispatch::Answer(plain, html)
        }
        Parsed::Command { spec, args } => Dispatch::Run { spec, args },
        Parsed::Unknown { word, suggestion } => {
            let plain = i18n::UNKNOWN_COMMAND
                .get(lang)
                .replace("{word}", word)
                .replace("{suggestion}", suggestion);
            let html = i18n::html_escape(&plain);
            Dispatch::Answer(plain, html)
        }
    }
}

/// Words that, next to a mention of the bot, ask for a meeting.
const CALL_WORDS: &[&str] = &["visio", "appel", "réunion", "reunion", "call", "meeting"];

/// Whether a message that mentions the bot asks for a meeting: one of the call words
/// stands as a word in the text once the mention itself is taken out.
pub fn asks_for_a_call(body: &str, bot_names: &[&str]) -> bool {
    let mut text = body.to_lowercase();
    for name in bot_names {
        // Only the mention itself: "Visio, lance une visio" still asks for one.
        text = text.replacen(&name.to_lowercase(), " ", 1);
    }
    text.split(|c: char| !c.is_alphanumeric())
        .any(|word| CALL_WORDS.contains(&word))
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
        let usage = [PREFIX, name, spec.args.map_or("", |a| a.get(lang))]
            .iter()
            .filter(|part| !part.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
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

    fn action(body: &str) -> Option<(CommandAction, &str)> {
        match parse(body) {
            Parsed::Command { spec, args } => Some((spec.action, args)),
            _ => None,
        }
    }

    #[test]
    fn recognises_commands_and_aliases() {
        for (body, expected) in [
            ("!visio aide", CommandAction::Help),
            ("!VISIO help", CommandAction::Help),
            ("  !visio Aide  ", CommandAction::Help),
            ("!visio aide\nplus", CommandAction::Help),
            ("!visio statut", CommandAction::Status),
            ("!visio status", CommandAction::Status),
            ("!visio lien", CommandAction::Link),
            ("!visio link", CommandAction::Link),
            ("!visio fin", CommandAction::End),
            ("!visio END", CommandAction::End),
        ] {
            assert_eq!(action(body).map(|a| a.0), Some(expected), "{body}");
        }
    }

    #[test]
    fn anything_else_after_the_prefix_is_a_title() {
        assert_eq!(action("!visio"), Some((CommandAction::Start, "")));
        assert_eq!(
            action("!visio Point hebdo"),
            Some((CommandAction::Start, "Point hebdo"))
        );
        assert_eq!(action("!visio Démo"), Some((CommandAction::Start, "Démo")));
        assert_eq!(
            action("!visio Comité de suivi  "),
            Some((CommandAction::Start, "Comité de suivi"))
        );
        // A command name followed by more words is still that command.
        assert_eq!(
            action("!visio fin merci à tous"),
            Some((CommandAction::End, "merci à tous"))
        );
        // Quotes make anything a title, command names included.
        assert_eq!(
            action("!visio \"aide\""),
            Some((CommandAction::Start, "aide"))
        );
        assert_eq!(
            action("!visio « fin »"),
            Some((CommandAction::Start, "fin"))
        );
        // Words far from every command are titles too.
        assert_eq!(
            action("!visio rétro"),
            Some((CommandAction::Start, "rétro"))
        );
        assert_eq!(action("!visio x1"), Some((CommandAction::Start, "x1")));
    }

    #[test]
    fn one_mistyped_word_gets_a_hint() {
        for (body, word, suggestion) in [
            ("!visio staut", "staut", "statut"),
            ("!visio aied", "aied", "aide"),
            ("!visio lein", "lein", "lien"),
            ("!visio hepl", "hepl", "help"),
            ("!visio Stauts", "Stauts", "status"),
        ] {
            assert_eq!(parse(body), Parsed::Unknown { word, suggestion }, "{body}");
        }
        assert_eq!(
            parse("!visio fni"),
            Parsed::Unknown {
                word: "fni",
                suggestion: "fin"
            }
        );
        // Two letters are too close to everything to guess.
        assert_eq!(action("!visio RH"), Some((CommandAction::Start, "RH")));
        assert_eq!(edit_distance("aied", "aide"), 1);
        assert_eq!(edit_distance("statut", "statut"), 0);
        assert_eq!(edit_distance("", "fin"), 3);
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
    }

    #[test]
    fn mentions_with_a_call_word_ask_for_a_meeting() {
        let names = ["@visio:localhost", "Visio"];
        for body in [
            "Visio: on fait un appel ?",
            "@visio:localhost réunion maintenant",
            "Visio, meeting please",
            "Visio lance une visio",
            "Visio REUNION",
        ] {
            assert!(asks_for_a_call(body, &names), "{body}");
        }
        for body in [
            "Visio: bonjour",
            "Visio tu es là ?",
            "Visio appelons",
            "Visio",
        ] {
            assert!(!asks_for_a_call(body, &names), "{body}");
        }
    }

    #[test]
    fn help_lists_every_command_in_both_languages() {
        let (plain, html) = help(Language::Fr);
        assert!(
            plain.contains("!visio aide") && plain.starts_with("Commandes"),
            "{plain}"
        );
        assert!(plain.contains("• !visio [titre] — démarre"), "{plain}");
        assert!(html.contains("<code>!visio aide</code>"), "{html}");
        let (plain, _) = help(Language::En);
        assert!(
            plain.contains("!visio help") && plain.starts_with("Visio commands"),
            "{plain}"
        );
        assert!(plain.contains("!visio [title]"), "{plain}");
        for spec in COMMANDS {
            assert!(help(Language::Fr).0.contains(spec.name));
        }
    }

    #[test]
    fn the_dispatcher_checks_permission_once_for_commands_and_mentions() {
        let names = ["@visio:localhost", "Visio"];
        let user = PermissionLevel::User;
        let none = PermissionLevel::None;
        assert!(matches!(
            process("!visio fin", user, None, Language::Fr),
            Dispatch::Run { spec, .. } if spec.action == CommandAction::End
        ));
        assert!(matches!(
            process("!visio aide", user, None, Language::Fr),
            Dispatch::Answer(plain, _) if plain.starts_with("Commandes")
        ));
        assert!(matches!(
            process("!visio staut", user, None, Language::Fr),
            Dispatch::Answer(plain, _) if plain.contains("statut")
        ));
        for body in ["!visio", "!visio aide", "!visio staut"] {
            assert!(
                matches!(process(body, none, None, Language::Fr), Dispatch::Answer(plain, _) if plain == i18n::NOT_PERMITTED.get(Language::Fr)),
                "{body}"
            );
        }
        // A mention asking for a call starts a meeting; from someone not permitted it
        // is plain talk, with no refusal.
        assert!(matches!(
            process("Visio: on fait un appel ?", user, Some(&names), Language::Fr),
            Dispatch::Run { spec, args: "" } if spec.action == CommandAction::Start
        ));
        assert_eq!(
            process(
                "Visio: on fait un appel ?",
                none,
                Some(&names),
                Language::Fr
            ),
            Dispatch::NotACommand
        );
        assert_eq!(
            process("on fait un appel ?", user, None, Language::Fr),
            Dispatch::NotACommand
        );
        assert!(permitted(PermissionLevel::Admin, PermissionLevel::User));
        assert!(!permitted(PermissionLevel::User, PermissionLevel::Admin));
        assert!(!permitted(PermissionLevel::None, PermissionLevel::None));
    }
}
