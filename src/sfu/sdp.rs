//! Text surgery on the answers str0m writes for single peer connection clients (`/rtc/v1`).
//!
//! In that mode the client offers receive-only m-lines ("slots") and the server answers
//! them `sendonly` to carry the tracks it forwards. str0m 0.25 answers every such m-line
//! `sendonly` with a random `a=msid`, and has no way to set an msid on media it did not
//! create. LiveKit clients find the publisher and the track of what they receive in the
//! msid stream id (`PA_<participant sid>|TR_<track sid>`), and a browser fires `ontrack`
//! only when an m-line starts receiving, so the answer is rewritten: assigned slots get
//! LiveKit's msid, unassigned ones become `inactive` (so that assigning one later is a
//! new track for the browser, and one whose track left stops). Pure functions on
//! strings; no str0m state is touched.

use std::collections::HashMap;

use str0m::media::MediaKind;

/// A receive slot of the client: an m-line the server's answer marks `sendonly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub mid: String,
    pub kind: MediaKind,
}

/// What to write for an assigned slot: the msid stream id and track id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMsid {
    pub stream_id: String,
    pub track_id: String,
}

/// One m-section of an SDP: its kind, mid and whether it is `sendonly`.
struct Section<'a> {
    lines: Vec<&'a str>,
    kind: Option<MediaKind>,
    mid: Option<&'a str>,
    send_only: bool,
}

/// Splits an SDP into its session part and its m-sections (lines without line endings).
fn sections(sdp: &str) -> (Vec<&str>, Vec<Section<'_>>) {
    let mut session = Vec::new();
    let mut media: Vec<Section<'_>> = Vec::new();
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("m=") {
            let kind = match rest.split(' ').next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
            media.push(Section {
                lines: vec![line],
                kind,
                mid: None,
                send_only: false,
            });
            continue;
        }
        match media.last_mut() {
            None => session.push(line),
            Some(section) => {
                if let Some(mid) = line.strip_prefix("a=mid:") {
                    section.mid = Some(mid.trim());
                } else if line == "a=sendonly" {
                    section.send_only = true;
                }
                section.lines.push(line);
            }
        }
    }
    (session, media)
}

/// The client's receive slots in an answer, in m-line order.
pub fn receive_slots(answer: &str) -> Vec<Slot> {
    sections(answer)
        .1
        .into_iter()
        .filter(|s| s.send_only)
        .filter_map(|s| {
            Some(Slot {
                mid: s.mid?.to_owned(),
                kind: s.kind?,
            })
        })
        .collect()
}

/// Rewrites an answer: slots in `assigned` carry the given msid, the other `sendonly`
/// m-lines become `inactive` without msid or SSRC lines. Other m-lines are kept as they are.
pub fn rewrite_answer(answer: &str, assigned: &HashMap<String, SlotMsid>) -> String {
    let (session, media) = sections(answer);
    let mut out = String::with_capacity(answer.len() + 64 * assigned.len());
    for line in session {
        out.push_str(line);
        out.push_str("\r\n");
    }
    for section in media {
        let target = section
            .send_only
            .then(|| section.mid.and_then(|mid| assigned.get(mid)));
        for line in section.lines {
            let rewritten = match target {
                // Not a receive slot: untouched.
                None => Some(line.to_owned()),
                Some(Some(msid)) => Some(with_msid(line, msid)),
                Some(None) => without_sending(line),
            };
            if let Some(line) = rewritten {
                out.push_str(&line);
                out.push_str("\r\n");
            }
        }
    }
    out
}

/// A line of an assigned slot, with LiveKit's msid in place of str0m's.
fn with_msid(line: &str, msid: &SlotMsid) -> String {
    if line.starts_with("a=msid:") {
        return format!("a=msid:{} {}", msid.stream_id, msid.track_id);
    }
    // a=ssrc:<ssrc> msid:<stream> <track>
    if let Some(rest) = line.strip_prefix("a=ssrc:")
        && let Some((ssrc, attribute)) = rest.split_once(' ')
        && attribute.starts_with("msid:")
    {
        return format!("a=ssrc:{ssrc} msid:{} {}", msid.stream_id, msid.track_id);
    }
    line.to_owned()
}

/// A line of an unassigned slot: `sendonly` becomes `inactive`; what describes the
/// outgoing stream goes.
fn without_sending(line: &str) -> Option<String> {
    if line == "a=sendonly" {
        return Some("a=inactive".into());
    }
    if line.starts_with("a=msid:")
        || line.starts_with("a=ssrc:")
        || line.starts_with("a=ssrc-group:")
    {
        return None;
    }
    Some(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\n\
        o=str0m-1 1 2 IN IP4 0.0.0.0\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1 2 3\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=mid:0\r\n\
        a=sctp-port:5000\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:1\r\n\
        a=sendonly\r\n\
        a=msid:abc def\r\n\
        a=rtcp-mux\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=ssrc:11 cname:x\r\n\
        a=ssrc:11 msid:abc def\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
        a=mid:2\r\n\
        a=sendonly\r\n\
        a=msid:ghi jkl\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        a=ssrc:21 cname:x\r\n\
        a=ssrc:21 msid:ghi jkl\r\n\
        a=ssrc:22 cname:x\r\n\
        a=ssrc:22 msid:ghi jkl\r\n\
        a=ssrc-group:FID 21 22\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:3\r\n\
        a=recvonly\r\n\
        a=msid:- cid\r\n";

    #[test]
    fn finds_the_sendonly_m_lines() {
        assert_eq!(
            receive_slots(ANSWER),
            vec![
                Slot {
                    mid: "1".into(),
                    kind: MediaKind::Audio
                },
                Slot {
                    mid: "2".into(),
                    kind: MediaKind::Video
                },
            ]
        );
    }

    #[test]
    fn assigned_slots_carry_livekit_msids_and_free_ones_go_inactive() {
        let assigned = HashMap::from([(
            "2".to_owned(),
            SlotMsid {
                stream_id: "PA_a|TR_b".into(),
                track_id: "TR_b".into(),
            },
        )]);
        let out = rewrite_answer(ANSWER, &assigned);
        let video: Vec<&str> = out
            .split("m=")
            .find(|s| s.contains("a=mid:2"))
            .expect("video section")
            .lines()
            .collect();
        assert!(video.contains(&"a=sendonly"));
        assert!(video.contains(&"a=msid:PA_a|TR_b TR_b"));
        assert!(video.contains(&"a=ssrc:21 msid:PA_a|TR_b TR_b"));
        assert!(video.contains(&"a=ssrc:22 msid:PA_a|TR_b TR_b"));
        assert!(video.contains(&"a=ssrc-group:FID 21 22"));
        assert!(!out.contains("ghi"), "str0m's msid is gone: {out}");

        let audio = out
            .split("m=")
            .find(|s| s.contains("a=mid:1"))
            .expect("audio section");
        assert!(audio.contains("a=inactive\r\n"));
        assert!(!audio.contains("sendonly") && !audio.contains("msid") && !audio.contains("ssrc"));
        // The published m-line and the data channel are untouched.
        assert!(out.contains("a=recvonly\r\na=msid:- cid\r\n"));
        assert!(out.contains("a=sctp-port:5000\r\n"));
        assert!(out.starts_with("v=0\r\n") && out.ends_with("\r\n"));
    }

    #[test]
    fn odd_input_is_passed_through_without_panicking() {
        for sdp in [
            "",
            "m=",
            "a=mid:1\r\n",
            "m=video\r\na=sendonly\r\n",
            "\u{0}\n\n\r",
        ] {
            let _ = receive_slots(sdp);
            let _ = rewrite_answer(sdp, &HashMap::new());
        }
    }
}
