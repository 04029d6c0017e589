//! Active speakers as pure decisions: audio levels and time in, the room's speaker list
//! and what changed in it out. No I/O, no str0m, no LiveKit message: the room layer turns
//! a [`Decision`] into `SpeakersChanged`. Depends on nothing else in `sfu/`.

use std::time::{Duration, Instant};

/// Audio level (dBov, 0 loudest, -127 silence) above which a participant is speaking.
pub const SPEAKING_DBOV: i8 = -50;
/// How long a participant stays a speaker after its last loud packet: speech has pauses
/// between words, and the list should not flicker on each.
pub const SPEAKING_HOLD: Duration = Duration::from_millis(1000);

/// What one participant's microphone said lately.
#[derive(Debug, Clone, Copy, Default)]
pub struct Voice {
    /// Speaking until then (the last loud packet plus [`SPEAKING_HOLD`]).
    until: Option<Instant>,
    /// The last loud packet's level, 0 (silence) to 1 (loudest).
    level: f32,
}

impl Voice {
    /// An audio packet carried `level_dbov` (RFC 6464) at `now`.
    pub fn heard(&mut self, now: Instant, level_dbov: i8) {
        if level_dbov > SPEAKING_DBOV {
            self.until = Some(now + SPEAKING_HOLD);
            self.level = (1.0 + f32::from(level_dbov) / 127.0).clamp(0.0, 1.0);
        }
    }

    /// The level if speaking at `now`.
    pub fn speaking(&self, now: Instant) -> Option<f32> {
        self.until.is_some_and(|t| t > now).then_some(self.level)
    }
}

/// One entry of a change in the speaker list.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub sid: String,
    /// The level (0 for a participant who stopped speaking).
    pub level: f32,
    pub active: bool,
}

/// A new speaker list for a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The speakers now, loudest first.
    pub speakers: Vec<String>,
    /// What to tell the members: every current speaker with its level, then every
    /// former speaker who stopped.
    pub changes: Vec<Change>,
}

/// The speakers among `voices` (participant sid and voice, in room order) at `now`,
/// loudest first; `None` when that is `previous` again (nothing to tell).
pub fn choose<'a>(
    now: Instant,
    voices: impl IntoIterator<Item = (&'a str, &'a Voice)>,
    previous: &[String],
) -> Option<Decision> {
    let mut speaking: Vec<(&str, f32)> = voices
        .into_iter()
        .filter_map(|(sid, voice)| Some((sid, voice.speaking(now)?)))
        .collect();
    // Stable: equal levels keep the room's order.
    speaking.sort_by(|a, b| b.1.total_cmp(&a.1));
    if speaking.len() == previous.len() && speaking.iter().zip(previous).all(|(s, p)| s.0 == p) {
        return None;
    }
    let speakers: Vec<String> = speaking.iter().map(|(sid, _)| (*sid).to_owned()).collect();
    let mut changes: Vec<Change> = speaking
        .iter()
        .map(|&(sid, level)| Change {
            sid: sid.to_owned(),
            level,
            active: true,
        })
        .collect();
    changes.extend(
        previous
            .iter()
            .filter(|old| !speakers.contains(old))
            .map(|old| Change {
                sid: old.clone(),
                level: 0.0,
                active: false,
            }),
    );
    Some(Decision { speakers, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(now: Instant, dbov: i8) -> Voice {
        let mut voice = Voice::default();
        voice.heard(now, dbov);
        voice
    }

    #[test]
    fn quiet_packets_do_not_make_a_speaker() {
        let now = Instant::now();
        assert_eq!(voice(now, SPEAKING_DBOV).speaking(now), None);
        assert_eq!(voice(now, -127).speaking(now), None);
        assert!(voice(now, SPEAKING_DBOV + 1).speaking(now).is_some());
    }

    #[test]
    fn a_speaker_holds_through_a_pause_then_stops() {
        let now = Instant::now();
        let v = voice(now, -10);
        assert!(
            v.speaking(now + SPEAKING_HOLD - Duration::from_millis(1))
                .is_some()
        );
        assert_eq!(v.speaking(now + SPEAKING_HOLD), None);
    }

    #[test]
    fn louder_speakers_come_first() {
        let now = Instant::now();
        let (soft, loud) = (voice(now, -40), voice(now, 0));
        let decision = choose(now, [("soft", &soft), ("loud", &loud)], &[]).expect("a change");
        assert_eq!(decision.speakers, ["loud", "soft"]);
        assert_eq!(decision.changes[0].level, 1.0);
        assert!(decision.changes.iter().all(|c| c.active));
    }

    #[test]
    fn the_same_list_again_is_no_decision() {
        let now = Instant::now();
        let a = voice(now, -10);
        let previous = vec!["a".to_owned()];
        assert_eq!(choose(now, [("a", &a)], &previous), None);
        assert_eq!(choose(now, [], &[]), None);
    }

    #[test]
    fn former_speakers_are_reported_inactive() {
        let now = Instant::now();
        let (a, b) = (voice(now, -10), Voice::default());
        let previous = vec!["b".to_owned()];
        let decision = choose(now, [("a", &a), ("b", &b)], &previous).expect("a change");
        assert_eq!(decision.speakers, ["a"]);
        assert_eq!(
            decision.changes,
            [
                Change {
                    sid: "a".into(),
                    level: a.speaking(now).expect("speaking"),
                    active: true,
                },
                Change {
                    sid: "b".into(),
                    level: 0.0,
                    active: false,
                },
            ]
        );
    }
}
