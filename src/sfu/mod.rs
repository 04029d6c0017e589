//! The embedded selective forwarding unit, built on str0m: a sans-IO [`engine`] and one
//! [`driver`] task that owns the UDP socket and the clock ([`tcp`] carries ICE over TCP
//! for networks that block UDP). It speaks the media side of
//! LiveKit's protocol (peer connections, data packets) and knows nothing of Matrix, HTTP
//! or the database; `signal/` carries LiveKit's signalling to and from it.

pub mod bucket;
mod closed;
pub mod data;
pub mod driver;
pub mod engine;
pub mod forward;
pub mod gso;
pub mod negotiate;
pub mod participant;
pub mod rewrite;
pub mod room;
pub mod sdp;
pub mod shards;
pub mod simulcast;
pub mod speakers;
pub mod stun;
pub mod tcp;
#[doc(hidden)]
pub mod testing;

use rand::distr::{Alphanumeric, SampleString};

pub use driver::{SfuHandle, SignalSink};
pub use engine::{Engine, EngineConfig, JoinError, JoinRequest};

/// Index of a participant inside the engine (stable while it is connected).
pub type ParticipantKey = usize;

/// Which of a participant's two peer connections, or which role of its only one in
/// single peer connection mode (`/rtc/v1`), where both roles share the publisher's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pc {
    /// The client offers; carries its published media and data.
    Publisher,
    /// Only the server offers; carries what the participant receives.
    Subscriber,
}

/// What happened in a room, for the rest of the service (bridge, metrics, webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A participant joined a room (the room is created with its first participant).
    ParticipantJoined {
        room: String,
        sid: String,
        identity: String,
        name: String,
    },
    /// A participant left, was replaced, or fell silent.
    ParticipantLeft {
        room: String,
        sid: String,
        identity: String,
    },
    /// The last participant left.
    RoomEmpty { room: String },
    /// A chat message, emitted once whatever the number of shapes it arrived in.
    Chat {
        room: String,
        id: String,
        sender_sid: String,
        sender_identity: String,
        sender_name: String,
        text: String,
        timestamp_ms: i64,
    },
}

/// A random identifier with a LiveKit-style prefix (`PA_`, `TR_`, `RM_`).
pub fn random_id(prefix: &str, len: usize) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), len)
    )
}

#[cfg(test)]
mod tests;
