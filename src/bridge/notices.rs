//! What the bridge writes into rooms, in French and English: the link notice, status
//! answers, the first-join notice and the summary, each as (plain body, HTML body).
//! Pure functions of their inputs, so every wording is unit-tested.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::config::Language;
use crate::i18n::{Text, html_escape};
use crate::matrix::queue::Attribution;
use crate::meeting::{Attendee, Meeting};

pub const DEFAULT_TITLE: Text = Text::new("Visio", "Meeting");
pub const GUEST_NAME: Text = Text::new("{name} (invité·e)", "{name} (guest)");
pub const SUMMARY_AUTHOR: Text = Text::new("Compte-rendu", "Minutes");
/// How an author posting through the bot API is shown, so nobody takes it for a person.
pub const BOT_NAME: Text = Text::new("{name} (bot)", "{name} (bot)");
const BAD_TITLE: Text = Text::new(
    "Le titre d’une visio tient sur une ligne de 1 à 200 caractères.",
    "A meeting title is 1 to 200 characters on one line.",
);
const ALREADY_RUNNING: Text = Text::new(
    "Une visio est déjà ouverte dans ce salon : « {title} ».",
    "A meeting is already open in this room: “{title}”.",
);
const NO_MEETING: Text = Text::new(
    "Aucune visio en cours dans ce salon. Tapez !visio pour en lancer une.",
    "No meeting is running in this room. Type !visio to start one.",
);
const END_REFUSED: Text = Text::new(
    "Désolé, seule la personne qui a lancé la visio ou la modération du salon (niveau {level}) peut la terminer. La visio continue.",
    "Sorry, only whoever started the meeting or the room's moderators (power level {level}) can end it. The meeting goes on.",
);
const ENDING: Text = Text::new(
    "Visio « {title} » terminée à la demande de {user}.",
    "Meeting “{title}” ended at {user}'s request.",
);
const JOIN: Text = Text::new("Rejoindre la visio", "Join the meeting");
const ACCESS_LINE: Text = Text::new(
    "🔒 Accès : {level} — {explain} (!visio accès pour changer).",
    "🔒 Access: {level} — {explain} (!visio access to change it).",
);

/// A `https://matrix.to` link to a user, shown as their display name in the room where
/// we know it, else their id (the bot never pings: its messages carry empty mentions).
fn user_html(user: &str, name: Option<&str>) -> String {
    let id = html_escape(user);
    let shown = html_escape(name.unwrap_or(user));
    format!("<a href=\"https://matrix.to/#/{id}\">{shown}</a>")
}

fn link_html(link: &str, lang: Language) -> String {
    let link = html_escape(link);
    format!("<a href=\"{link}\">{}</a> — {link}", JOIN.get(lang))
}

/// The notice that starts a meeting's thread; `creator_name` is the starter's display
/// name in the room, if known (their id otherwise).
pub fn link_notice(
    meeting: &Meeting,
    creator_name: Option<&str>,
    link: &str,
    lang: Language,
) -> (String, String) {
    let creator = meeting.creator.as_deref().unwrap_or("?");
    let (intro, thread) = match lang {
        Language::Fr => (
            "Visio « {title} » lancée par {user}",
            "La discussion de la visio arrive dans ce fil ; répondez-y pour écrire aux participants.",
        ),
        Language::En => (
            "Meeting “{title}” started by {user}",
            "The meeting's chat arrives in this thread; reply here to write to the participants.",
        ),
    };
    let access = ACCESS_LINE
        .get(lang)
        .replace("{level}", meeting.access.label(lang))
        .replace("{explain}", meeting.access.explain(lang));
    let plain = format!(
        "📹 {}\n{}: {link}\n{access}\n{thread}",
        intro
            .replace("{title}", &meeting.title)
            .replace("{user}", creator_name.unwrap_or(creator)),
        JOIN.get(lang)
    );
    let html = format!(
        "<p>📹 <strong>{}</strong></p><p>{}</p><p>{}</p><p><em>{}</em></p>",
        intro
            .replace("{title}", &html_escape(&meeting.title))
            .replace("{user}", &user_html(creator, creator_name)),
        link_html(link, lang),
        html_escape(&access),
        html_escape(thread)
    );
    (plain, html)
}

/// Answer to `!visio` or `!visio lien` while a meeting is open.
pub fn already_running(meeting: &Meeting, link: &str, lang: Language) -> (String, String) {
    let text = ALREADY_RUNNING.get(lang).replace("{title}", &meeting.title);
    let html_text = ALREADY_RUNNING
        .get(lang)
        .replace("{title}", &html_escape(&meeting.title));
    (
        format!("{text}\n{}: {link}", JOIN.get(lang)),
        format!("<p>{html_text}</p><p>{}</p>", link_html(link, lang)),
    )
}

pub fn no_meeting(lang: Language) -> (String, String) {
    plain_and_html(NO_MEETING.get(lang))
}

pub fn bad_title(lang: Language) -> (String, String) {
    plain_and_html(BAD_TITLE.get(lang))
}

pub fn end_refused(level: i64, lang: Language) -> (String, String) {
    plain_and_html(&END_REFUSED.get(lang).replace("{level}", &level.to_string()))
}

/// `name`: the user's display name in the room, if known.
pub fn ending(
    meeting: &Meeting,
    user: &str,
    name: Option<&str>,
    lang: Language,
) -> (String, String) {
    let plain = ENDING
        .get(lang)
        .replace("{title}", &meeting.title)
        .replace("{user}", name.unwrap_or(user));
    let html = ENDING
        .get(lang)
        .replace("{title}", &html_escape(&meeting.title))
        .replace("{user}", &user_html(user, name));
    (plain, format!("<p>{html}</p>"))
}

fn plain_and_html(text: &str) -> (String, String) {
    (text.to_owned(), format!("<p>{}</p>", html_escape(text)))
}

/// `!visio statut`: who is in, since when.
pub fn status(
    meeting: &Meeting,
    present: &[String],
    link: &str,
    tz: &TimeZone,
    lang: Language,
) -> (String, String) {
    let title = &meeting.title;
    let line = match (meeting.started_at, lang) {
        (None, Language::Fr) => format!(
            "Visio « {title} » ouverte à {}, personne ne l’a encore rejointe.",
            clock(meeting.created_at, tz)
        ),
        (None, Language::En) => format!(
            "Meeting “{title}” opened at {}; nobody has joined yet.",
            clock(meeting.created_at, tz)
        ),
        (Some(start), Language::Fr) => format!(
            "Visio « {title} » en cours depuis {} ({}), {} participant·e·s : {}.",
            clock(start, tz),
            duration(crate::clock::now_ms() - start),
            present.len(),
            if present.is_empty() {
                "personne pour l’instant".to_owned()
            } else {
                present.join(", ")
            }
        ),
        (Some(start), Language::En) => format!(
            "Meeting “{title}” running since {} ({}), {} participant(s): {}.",
            clock(start, tz),
            duration(crate::clock::now_ms() - start),
            present.len(),
            if present.is_empty() {
                "nobody right now".to_owned()
            } else {
                present.join(", ")
            }
        ),
    };
    (
        format!("{line}\n{}: {link}", JOIN.get(lang)),
        format!(
            "<p>{}</p><p>{}</p>",
            html_escape(&line),
            link_html(link, lang)
        ),
    )
}

/// The notice that starts an Element Call call's thread in its room.
pub fn call_notice(lang: Language) -> (String, String) {
    let (head, rest) = match lang {
        Language::Fr => (
            "📞 Appel en cours dans ce salon",
            "Rejoignez-le depuis votre client (Element Call). Le compte rendu arrivera dans ce fil.",
        ),
        Language::En => (
            "📞 Call in progress in this room",
            "Join it from your client (Element Call). Its summary will arrive in this thread.",
        ),
    };
    (
        format!("{head}\n{rest}"),
        format!(
            "<p>📞 <strong>{}</strong></p><p>{}</p>",
            html_escape(head.trim_start_matches("📞 ")),
            html_escape(rest)
        ),
    )
}

/// The thread notice when the first person joins a call.
pub fn first_join_call(name: &str, lang: Language) -> (String, String) {
    let text = match lang {
        Language::Fr => format!("{name} a rejoint l’appel : il commence."),
        Language::En => format!("{name} joined: the call has started."),
    };
    plain_and_html(&text)
}

/// The thread notice when the first person joins.
pub fn first_join(name: &str, lang: Language) -> (String, String) {
    let text = match lang {
        Language::Fr => format!("{name} a rejoint la visio : elle commence."),
        Language::En => format!("{name} joined: the meeting has started."),
    };
    plain_and_html(&text)
}

/// What a summary says, gathered at the end.
#[derive(Debug, Clone)]
pub struct SummaryFacts<'a> {
    pub meeting: &'a Meeting,
    /// When the last participant left (or was let go by the end): the meeting's end as
    /// its people lived it. The grace period after it, waiting for someone to come
    /// back, is not meeting time.
    pub last_left_at: i64,
    pub attendees: &'a [Attendee],
    pub chat_messages: i64,
}

/// The summary for the thread.
pub fn summary(facts: &SummaryFacts<'_>, tz: &TimeZone, lang: Language) -> (String, String) {
    let m = facts.meeting;
    let Some(start) = m.started_at else {
        let text = match (lang, m.is_call()) {
            (Language::Fr, true) => "Appel terminé : personne ne l’a rejoint.".to_owned(),
            (Language::En, true) => "Call ended: nobody joined.".to_owned(),
            (Language::Fr, false) => {
                format!("Visio « {} » terminée : personne ne l’a rejointe.", m.title)
            }
            (Language::En, false) => format!("Meeting “{}” ended: nobody joined.", m.title),
        };
        return plain_and_html(&text);
    };
    let (head, l_start, l_end, l_duration, l_people, l_chat) = match lang {
        Language::Fr => (
            if m.is_call() {
                "Compte rendu de l’appel".to_owned()
            } else {
                format!("Compte rendu de la visio « {} »", m.title)
            },
            "Début",
            "Fin",
            "Durée",
            format!(
                "Participant·e·s : {} (au plus {} en même temps)",
                facts.attendees.len(),
                m.peak_participants
            ),
            format!("Messages dans la discussion : {}", facts.chat_messages),
        ),
        Language::En => (
            if m.is_call() {
                "Summary of the call".to_owned()
            } else {
                format!("Summary of the meeting “{}”", m.title)
            },
            "Start",
            "End",
            "Duration",
            format!(
                "Attendees: {} (at most {} at once)",
                facts.attendees.len(),
                m.peak_participants
            ),
            format!("Chat messages: {}", facts.chat_messages),
        ),
    };
    let times = [
        (l_start, date_time(start, tz, lang)),
        (l_end, date_time(facts.last_left_at, tz, lang)),
        (l_duration, duration(facts.last_left_at - start)),
    ];
    let mut plain = format!("{head}\n");
    let mut html = format!("<p><strong>{}</strong></p><ul>", html_escape(&head));
    for (label, value) in &times {
        plain.push_str(&format!("{label} : {value}\n").replace(" : ", sep(lang)));
        html.push_str(&format!(
            "<li>{}{}{}</li>",
            html_escape(label),
            sep(lang),
            html_escape(value)
        ));
    }
    html.push_str("</ul>");
    plain.push_str(&format!("{l_people}\n"));
    html.push_str(&format!("<p>{}</p><ul>", html_escape(&l_people)));
    for a in facts.attendees {
        let line = format!("{} — {}", a.display_name, duration(a.present_ms));
        plain.push_str(&format!("• {line}\n"));
        html.push_str(&format!("<li>{}</li>", html_escape(&line)));
    }
    html.push_str("</ul>");
    if m.is_call() {
        // Element Call's chat is not ours to count.
        return (plain.trim_end().to_owned(), html);
    }
    plain.push_str(&l_chat);
    html.push_str(&format!("<p>{}</p>", html_escape(&l_chat)));
    (plain, html)
}

/// The one line in the main timeline when a meeting ends.
pub fn summary_line(facts: &SummaryFacts<'_>, lang: Language) -> (String, String) {
    let m = facts.meeting;
    let took = m.started_at.map(|s| duration(facts.last_left_at - s));
    if m.is_call() {
        let text = match (lang, took) {
            (Language::Fr, Some(took)) => format!(
                "Appel terminé : {took}, {} participant·e·s. Compte rendu dans le fil.",
                facts.attendees.len()
            ),
            (Language::En, Some(took)) => format!(
                "Call ended: {took}, {} attendee(s). Summary in the thread.",
                facts.attendees.len()
            ),
            (Language::Fr, None) => "Appel terminé sans participant.".to_owned(),
            (Language::En, None) => "Call ended without attendees.".to_owned(),
        };
        return plain_and_html(&text);
    }
    let text = match (lang, took) {
        (Language::Fr, Some(took)) => format!(
            "Visio « {} » terminée : {took}, {} participant·e·s, {} messages. Compte rendu dans le fil.",
            m.title,
            facts.attendees.len(),
            facts.chat_messages
        ),
        (Language::En, Some(took)) => format!(
            "Meeting “{}” ended: {took}, {} attendee(s), {} messages. Summary in the thread.",
            m.title,
            facts.attendees.len(),
            facts.chat_messages
        ),
        (Language::Fr, None) => format!("Visio « {} » terminée sans participant.", m.title),
        (Language::En, None) => format!("Meeting “{}” ended without attendees.", m.title),
    };
    plain_and_html(&text)
}

/// How the bot names a speaker before their words when their ghost may not speak.
pub fn attribution(lang: Language, name: &str) -> Attribution {
    Attribution {
        name: name.to_owned(),
        separator: sep(lang).to_owned(),
    }
}

fn sep(lang: Language) -> &'static str {
    // French typography puts a (narrow) space before the colon.
    match lang {
        Language::Fr => "\u{202f}: ",
        Language::En => ": ",
    }
}

fn zoned(ms: i64, tz: &TimeZone) -> Option<jiff::Zoned> {
    Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_zoned(tz.clone()))
}

/// `14:05`.
pub fn clock(ms: i64, tz: &TimeZone) -> String {
    zoned(ms, tz).map_or_else(|| "?".into(), |z| z.strftime("%H:%M").to_string())
}

/// `24/11/2026 14:05` in French, `2026-11-24 14:05` in English.
pub fn date_time(ms: i64, tz: &TimeZone, lang: Language) -> String {
    let format = match lang {
        Language::Fr => "%d/%m/%Y %H:%M",
        Language::En => "%Y-%m-%d %H:%M",
    };
    zoned(ms, tz).map_or_else(|| "?".into(), |z| z.strftime(format).to_string())
}

/// `35 s`, `42 min`, `1 h 05 min`.
pub fn duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting() -> Meeting {
        let mut m = Meeting::new(
            "Point <hebdo>",
            Some("!r:localhost".into()),
            Some("@alice:localhost".into()),
            0,
        )
        .expect("valid");
        // 2026-11-24 13:05 UTC, 14:05 in Paris.
        m.started_at = Some(1_795_000_000_000 - 1_795_000_000_000 % 60_000);
        m.peak_participants = 2;
        m
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(59_999), "59 s");
        assert_eq!(duration(60_000), "1 min");
        assert_eq!(duration(42 * 60_000 + 10_000), "42 min");
        assert_eq!(duration(3_900_000), "1 h 05 min");
        assert_eq!(duration(-5), "0 s");
    }

    #[test]
    fn link_notice_escapes_and_links() {
        let m = meeting();
        let (plain, html) = link_notice(&m, None, "https://v.example/m/abc", Language::Fr);
        assert!(
            plain.contains("Visio « Point <hebdo> » lancée par @alice:localhost"),
            "{plain}"
        );
        assert!(plain.contains("https://v.example/m/abc"), "{plain}");
        assert!(html.contains("Point &lt;hebdo&gt;"), "{html}");
        assert!(!html.contains("<hebdo>"), "{html}");
        assert!(
            html.contains("<a href=\"https://v.example/m/abc\">Rejoindre la visio</a>"),
            "{html}"
        );
        let (plain, _) = link_notice(&m, None, "https://v.example/m/abc", Language::En);
        assert!(
            plain.contains("Meeting “Point <hebdo>” started by"),
            "{plain}"
        );
    }

    #[test]
    fn notices_name_people_by_display_name_and_link_their_id() {
        let m = meeting();
        let name = Some("Alice <Martin>");
        let (plain, html) = link_notice(&m, name, "https://v.example/m/abc", Language::Fr);
        assert!(plain.contains("lancée par Alice <Martin>\n"), "{plain}");
        assert!(!plain.contains("@alice:localhost"), "{plain}");
        assert!(
            html.contains(
                "lancée par <a href=\"https://matrix.to/#/@alice:localhost\">Alice &lt;Martin&gt;</a>"
            ),
            "{html}"
        );
        let (plain, html) = ending(&m, "@bob:localhost", Some("Bob"), Language::En);
        assert!(plain.ends_with("ended at Bob's request."), "{plain}");
        assert!(
            html.contains("<a href=\"https://matrix.to/#/@bob:localhost\">Bob</a>"),
            "{html}"
        );
        let (plain, _) = ending(&m, "@bob:localhost", None, Language::Fr);
        assert!(plain.contains("à la demande de @bob:localhost."), "{plain}");
    }

    #[test]
    fn summary_names_attendees_with_their_time() {
        let m = meeting();
        let start = m.started_at.expect("started");
        let attendees = vec![
            Attendee {
                attendee_key: "a".into(),
                display_name: "Alice (invité·e)".into(),
                matrix_user_id: None,
                present_ms: 40 * 60_000,
                intervals: vec![(start, start + 40 * 60_000)],
                first_joined_at: start,
            },
            Attendee {
                attendee_key: "b".into(),
                display_name: "Bob <b>".into(),
                matrix_user_id: None,
                present_ms: 90_000,
                intervals: vec![(start, start + 90_000)],
                first_joined_at: start,
            },
        ];
        let facts = SummaryFacts {
            meeting: &m,
            last_left_at: start + 42 * 60_000,
            attendees: &attendees,
            chat_messages: 3,
        };
        let tz = TimeZone::get("Europe/Paris").expect("tz");
        let (plain, html) = summary(&facts, &tz, Language::Fr);
        for expected in [
            "Compte rendu de la visio « Point <hebdo> »",
            "Durée\u{202f}: 42 min",
            "Participant·e·s : 2 (au plus 2 en même temps)",
            "• Alice (invité·e) — 40 min",
            "• Bob <b> — 1 min",
            "Messages dans la discussion : 3",
        ] {
            assert!(plain.contains(expected), "{expected:?} not in {plain}");
        }
        assert!(html.contains("Bob &lt;b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        let start_local = date_time(start, &tz, Language::Fr);
        assert!(plain.contains(&start_local), "{plain}");
        assert_eq!(start_local.len(), "24/11/2026 14:05".len());
        let (line, _) = summary_line(&facts, Language::Fr);
        assert_eq!(
            line,
            "Visio « Point <hebdo> » terminée : 42 min, 2 participant·e·s, 3 messages. Compte rendu dans le fil."
        );
        let (plain, _) = summary(&facts, &tz, Language::En);
        assert!(
            plain.contains("Attendees: 2 (at most 2 at once)"),
            "{plain}"
        );
    }

    #[test]
    fn a_meeting_nobody_joined_says_so() {
        let mut m = meeting();
        m.started_at = None;
        let facts = SummaryFacts {
            meeting: &m,
            last_left_at: 5,
            attendees: &[],
            chat_messages: 0,
        };
        let tz = TimeZone::UTC;
        assert!(
            summary(&facts, &tz, Language::Fr)
                .0
                .contains("personne ne l’a rejointe")
        );
        assert!(
            summary_line(&facts, Language::En)
                .0
                .contains("without attendees")
        );
    }

    #[test]
    fn times_are_shown_in_the_configured_zone() {
        let tz = TimeZone::get("Europe/Paris").expect("tz");
        // 2026-11-24T13:05:00Z is 14:05 in Paris (winter time).
        let ms = Timestamp::from_second(1_795_525_500)
            .expect("ts")
            .as_millisecond();
        assert_eq!(clock(ms, &TimeZone::UTC), "13:05");
        assert_eq!(clock(ms, &tz), "14:05");
        assert_eq!(date_time(ms, &tz, Language::Fr), "24/11/2026 14:05");
        assert_eq!(date_time(ms, &tz, Language::En), "2026-11-24 14:05");
    }
}
