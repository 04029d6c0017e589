//! What a participant is and may do on its own: its identity and grants, the budgets of
//! what it sends, the rules of the changes it may make to itself, and the admission of
//! its data packets. No other participant, no room, no signalling message: the room
//! layer applies these decisions and tells the others.

use std::collections::HashMap;
use std::time::Instant;

use livekit_protocol as lk;
use prost::Message;
use str0m::media::MediaKind;

use super::bucket::TokenBucket;
use super::data::{self, TextStreams};

/// Identity of the media-less participant that speaks for the server (chat from Matrix).
pub const SERVER_IDENTITY: &str = "tchap";
pub const SERVER_NAME: &str = "Tchap";
/// Attributes a participant may hold, and their keys and values' bytes in all: each
/// update goes to every member, so what one client may make the server send is bounded.
pub const MAX_ATTRIBUTES: usize = 16;
pub const MAX_ATTRIBUTES_BYTES: usize = 1024;
/// Attribute keys only the server writes (the Matrix identity it verified, chat authors).
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "tchap.";
/// Longest name after a rename, as at join.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest track name and stream name kept from a client.
const MAX_TRACK_NAME_CHARS: usize = 128;
/// Data packets per second (and burst) from one participant.
pub const DATA_PACKETS_PER_SEC: f64 = 100.0;
pub const DATA_PACKETS_BURST: f64 = 300.0;
/// Data bytes per second (and burst) from one participant.
pub const DATA_BYTES_PER_SEC: f64 = 256.0 * 1024.0;
pub const DATA_BYTES_BURST: f64 = 1024.0 * 1024.0;
/// Chat messages per second (and burst) from one participant.
pub const CHAT_PER_SEC: f64 = 2.0;
pub const CHAT_BURST: f64 = 10.0;
/// Name and attribute updates per second (and burst) from one participant: a raised
/// hand is one; a client sending more is making the server broadcast on its behalf.
pub const UPDATES_PER_SEC: f64 = 2.0;
pub const UPDATES_BURST: f64 = 10.0;
/// A verified request to join a room.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub can_publish_data: bool,
    /// `canUpdateOwnMetadata`: the participant may change its name and its own
    /// (non-reserved) attributes; metadata stays the server's.
    pub can_update_own_metadata: bool,
    /// `canPublishSources` as LiveKit `TrackSource` values; empty allows every source.
    pub can_publish_sources: Vec<i32>,
    pub auto_subscribe: bool,
    /// Single peer connection (`/rtc/v1`): one peer connection, the client always offers.
    pub single_pc: bool,
    /// The first publisher offer, carried by a `/rtc/v1` join request.
    pub publisher_offer: Option<lk::SessionDescription>,
}

/// Why a join or resume was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the meeting is full ({0} participants)")]
    RoomFull(usize),
    #[error("the server is at its participant limit")]
    ServerFull,
    #[error("no such session to resume")]
    UnknownSession,
    #[error("the identity `{0}` is reserved")]
    ReservedIdentity(String),
    #[error("the meeting has ended")]
    RoomClosed,
    #[error("the media server is stopped")]
    Stopped,
}

#[derive(Debug)]
pub struct Participant {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub room: String,
    pub joined_at_ms: i64,
    pub permission: lk::ParticipantPermission,
    pub auto_subscribe: bool,
    pub text_streams: TextStreams,
    pub limits: ParticipantLimits,
    pub signal_connected: bool,
    pub last_seen: Instant,
    pub version: u32,
}

/// What one participant may send on the data channels. The budgets are far above what
/// people type or LiveKit's SDKs send for reactions and RPC; a client over them is
/// flooding, and its excess is dropped before it reaches anyone.
#[derive(Debug)]
pub struct ParticipantLimits {
    data_packets: TokenBucket,
    data_bytes: TokenBucket,
    chat: TokenBucket,
    /// Name and attribute changes: each goes to every member of the room.
    updates: TokenBucket,
    streams: data::RelayedStreams,
}

impl ParticipantLimits {
    pub fn new(now: Instant) -> Self {
        Self {
            data_packets: TokenBucket::new(DATA_PACKETS_PER_SEC, DATA_PACKETS_BURST, now),
            data_bytes: TokenBucket::new(DATA_BYTES_PER_SEC, DATA_BYTES_BURST, now),
            chat: TokenBucket::new(CHAT_PER_SEC, CHAT_BURST, now),
            updates: TokenBucket::new(UPDATES_PER_SEC, UPDATES_BURST, now),
            streams: data::RelayedStreams::default(),
        }
    }
}

/// A data packet admitted for relaying.
#[derive(Debug)]
pub struct Relayed {
    /// The packet as the others receive it (sender stamped, channel kind set).
    pub encoded: Vec<u8>,
    pub destinations: data::Destinations,
    /// The chat message it completes, if any.
    pub chat: Option<data::Chat>,
}

/// A refusal: why, for the client's `RequestResponse`.
pub type Refusal = (lk::request_response::Reason, String);

impl Participant {
    /// A participant asks to change its own name or attributes. Only with the
    /// `canUpdateOwnMetadata` grant; metadata and `tchap.*` attributes belong to the
    /// server (they carry what it vouches for, such as a verified Matrix ID); names go
    /// through the same rules as at join; attributes are bounded in number and size, since
    /// every accepted update is sent to every member of the room. Returns whether anything
    /// changed (then the version moved on).
    pub fn update_metadata(
        &mut self,
        now: Instant,
        update: lk::UpdateParticipantMetadata,
    ) -> Result<bool, Refusal> {
        use lk::request_response::Reason;
        if !self.limits.updates.take(now, 1.0) {
            return Err((
                Reason::LimitExceeded,
                format!("at most {UPDATES_PER_SEC} updates a second"),
            ));
        }
        if !self.permission.can_update_metadata {
            return Err((
                Reason::NotAllowed,
                "the access token does not grant canUpdateOwnMetadata".to_owned(),
            ));
        }
        if !update.metadata.is_empty() && update.metadata != self.metadata {
            return Err((
                Reason::NotAllowed,
                "metadata is set by the server".to_owned(),
            ));
        }
        if let Some(key) = update
            .attributes
            .keys()
            .find(|k| k.starts_with(RESERVED_ATTRIBUTE_PREFIX))
        {
            let key = truncate_chars(key, 64);
            return Err((
                Reason::NotAllowed,
                format!("attribute `{key}` is reserved to the server"),
            ));
        }
        let name = if !update.name.is_empty() && update.name != self.name {
            let name = crate::names::normalise_display_name(&update.name, MAX_NAME_CHARS)
                .map_err(|e| (Reason::InvalidName, e.to_string()))?;
            Some(name)
        } else {
            None
        };
        let mut attributes = self.attributes.clone();
        for (k, v) in update.attributes {
            // As LiveKit: an empty value deletes the attribute.
            if v.is_empty() {
                attributes.remove(&k);
            } else {
                attributes.insert(k, v);
            }
        }
        let bytes: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        if attributes.len() > MAX_ATTRIBUTES || bytes > MAX_ATTRIBUTES_BYTES {
            return Err((
                Reason::LimitExceeded,
                format!(
                    "at most {MAX_ATTRIBUTES} attributes of {MAX_ATTRIBUTES_BYTES} bytes in all"
                ),
            ));
        }
        if name.is_none() && attributes == self.attributes {
            return Ok(false);
        }
        if let Some(name) = name {
            self.name = name;
        }
        self.attributes = attributes;
        self.version += 1;
        Ok(true)
    }

    /// A data packet from the participant, admitted within its grants and budgets, or
    /// dropped (counted by reason).
    pub fn admit_data(&mut self, now: Instant, bytes: &[u8], lossy: bool) -> Option<Relayed> {
        if !self.permission.can_publish_data {
            return None;
        }
        // One participant's flood costs the others nothing: past its budget, its packets
        // are dropped here, before they are decoded or fanned out.
        if !self.limits.data_packets.take(now, 1.0)
            || !self.limits.data_bytes.take(now, bytes.len() as f64)
        {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "data_rate")
                .increment(1);
            return None;
        }
        let Ok(mut packet) = data::decode_and_stamp(bytes, &self.sid, &self.identity) else {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "bad_data_packet")
                .increment(1);
            return None;
        };
        if data::starts_chat(&packet) && !self.limits.chat.take(now, 1.0) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "chat_rate")
                .increment(1);
            return None;
        }
        if !self.limits.streams.admit(&packet) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "stream_size")
                .increment(1);
            return None;
        }
        set_kind(&mut packet, lossy);
        let destinations = data::Destinations::of(&packet);
        let chat = data::chat_in(&packet, &mut self.text_streams);
        tracing::trace!(sid = %self.sid, chat = chat.is_some(), "data packet");
        Some(Relayed {
            encoded: packet.encode_to_vec(),
            destinations,
            chat,
        })
    }
}

/// The kind and description of a track a client announces (`AddTrack`), its names
/// bounded (every member receives them).
pub fn track_info(request: &lk::AddTrackRequest) -> (MediaKind, lk::TrackInfo) {
    let (kind, track_type) = if request.r#type == lk::TrackType::Audio as i32 {
        (MediaKind::Audio, lk::TrackType::Audio)
    } else {
        (MediaKind::Video, lk::TrackType::Video)
    };
    let mut info = lk::TrackInfo {
        sid: super::random_id("TR_", 12),
        r#type: track_type as i32,
        name: truncate_chars(&request.name, MAX_TRACK_NAME_CHARS),
        muted: request.muted,
        width: request.width,
        height: request.height,
        source: request.source,
        disable_red: request.disable_red,
        stream: truncate_chars(&request.stream, MAX_TRACK_NAME_CHARS),
        // End-to-end encrypted media (MatrixRTC in encrypted rooms): subscribers turn
        // their decryptors on from these two, and refuse to set one up without a type.
        encryption: request.encryption,
        mime_type: mime_type(kind, request),
        ..Default::default()
    };
    if kind == MediaKind::Video && request.layers.len() > 1 {
        super::simulcast::announce_layers(&mut info, &request.layers);
    }
    (kind, info)
}

/// The track's media type as LiveKit writes it (`video/VP8`, `audio/opus`): the codec the
/// client announced for video, else VP8, the codec every client sends.
fn mime_type(kind: MediaKind, request: &lk::AddTrackRequest) -> String {
    if kind == MediaKind::Audio {
        return "audio/opus".into();
    }
    let codec = request
        .simulcast_codecs
        .iter()
        .map(|c| c.codec.trim())
        .find(|c| !c.is_empty())
        .map(|c| c.rsplit('/').next().unwrap_or(c))
        .filter(|c| c.len() <= 16 && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
        .unwrap_or("vp8");
    format!("video/{}", codec.to_ascii_uppercase())
}

/// The media-less participant that speaks for the server, as members see it.
pub fn server_participant_info(sid: &str) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: sid.to_owned(),
        identity: SERVER_IDENTITY.into(),
        name: SERVER_NAME.into(),
        state: lk::participant_info::State::Active as i32,
        version: 1,
        ..Default::default()
    }
}

/// Records the channel a packet came on; older clients still read this field.
#[allow(deprecated)]
fn set_kind(packet: &mut lk::DataPacket, lossy: bool) {
    packet.kind = if lossy {
        lk::data_packet::Kind::Lossy as i32
    } else {
        lk::data_packet::Kind::Reliable as i32
    };
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_info_carries_the_encryption_and_a_media_type() {
        let request = lk::AddTrackRequest {
            r#type: lk::TrackType::Video as i32,
            encryption: lk::encryption::Type::Gcm as i32,
            simulcast_codecs: vec![lk::SimulcastCodec {
                codec: "vp9".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (_, info) = track_info(&request);
        assert_eq!(info.encryption, lk::encryption::Type::Gcm as i32);
        assert_eq!(info.mime_type, "video/VP9");
        let plain = lk::AddTrackRequest {
            r#type: lk::TrackType::Video as i32,
            ..Default::default()
        };
        assert_eq!(track_info(&plain).1.mime_type, "video/VP8");
        assert_eq!(track_info(&plain).1.encryption, 0);
        let audio = lk::AddTrackRequest {
            r#type: lk::TrackType::Audio as i32,
            ..Default::default()
        };
        assert_eq!(track_info(&audio).1.mime_type, "audio/opus");
        let hostile = lk::AddTrackRequest {
            r#type: lk::TrackType::Video as i32,
            simulcast_codecs: vec![lk::SimulcastCodec {
                codec: "vp8\"><script>".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(track_info(&hostile).1.mime_type, "video/VP8");
    }
}
