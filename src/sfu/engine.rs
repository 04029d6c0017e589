//! The SFU engine: a sans-IO state machine that owns rooms, participants, their two
//! peer connections (str0m `Rtc`s: a publisher the client offers on, a subscriber only
//! the server offers on), published tracks and subscriptions. It is fed packets,
//! signalling and time, and returns packets to send, signalling to deliver, events and
//! its next timeout. One driver ([`super::driver`]) owns the socket and the clock.
//!
//! Single peer connection participants (`/rtc/v1`) have one `Rtc`, the publisher's,
//! which also plays the subscriber role ([`Participant::peer`]). The server never offers
//! to them: what they receive goes out on the receive-only m-lines they offer ("slots"),
//! assigned when answering; when slots are missing the server sends
//! `MediaSectionsRequirement` and the client offers again ([`Engine::request_sections`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message;
use slab::Slab;
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, Rtc, RtcConfig};

use super::bucket::TokenBucket;
use super::data::{self, SeenChat, TextStreams};
use super::rewrite::TimestampRewriter;
use super::sdp::{self, SlotMsid};
use super::simulcast::{self, Dynacast, LAYER_RIDS, LAYERS, LayerSelector, Verdict};
use super::speakers::{self, Voice};
use super::{EngineEvent, ParticipantKey, Pc, random_id};

/// Version reported to clients: at least 1.9.0 so current SDKs use text streams for
/// chat and enable RPC (both gated on the server version).
pub const SERVER_VERSION: &str = "1.9.0";
/// Protocol version reported in `ServerInfo`.
pub const PROTOCOL_VERSION: i32 = 16;
/// Seconds between client pings, and without any message before the client gives up.
pub const PING_INTERVAL_SECS: i32 = 5;
pub const PING_TIMEOUT_SECS: i32 = 15;
/// A participant with neither media nor signalling for this long is removed.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(7);
/// Identity of the media-less participant that speaks for the server (chat from Matrix).
pub const SERVER_IDENTITY: &str = "tchap";
pub const SERVER_NAME: &str = "Tchap";
/// Stream attribute carrying the original author of server-injected chat.
pub const AUTHOR_ATTRIBUTE: &str = "tchap.author_name";

const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(500);
const QUALITY_PERIOD: Duration = Duration::from_secs(5);
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);
/// The bandwidth estimate a subscriber starts with, before TWCC feedback refines it: the
/// middle layer of a 720p camera and audio fit, and probing finds more within seconds.
const INITIAL_BANDWIDTH_BPS: u64 = 1_500_000;
/// A simulcast layer that sent nothing for this long is taken as paused by the publisher.
const LAYER_STALE: Duration = Duration::from_millis(1500);
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

/// Engine limits and addresses, from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The addresses clients may send media to (host candidates), all on the one UDP port.
    pub candidates: Vec<SocketAddr>,
    pub max_participants_per_room: usize,
    pub max_participants: usize,
    pub ice_servers: Vec<lk::IceServer>,
}

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
}

/// What the engine wants done.
#[derive(Debug)]
pub enum Output {
    /// Send a datagram (UDP) or an RFC 4571 frame on the TCP connection from `destination`.
    Transmit {
        proto: Protocol,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    /// Deliver a signalling message to a participant's WebSocket.
    Signal {
        key: ParticipantKey,
        /// Boxed: signalling is rare next to `Transmit`, which stays small.
        message: Box<signal_response::Message>,
    },
    /// Close a participant's signalling connection (left, replaced, or removed).
    CloseSignal { key: ParticipantKey },
    /// Something the rest of the service may want to know.
    Event(EngineEvent),
}

#[derive(Debug)]
struct Peer {
    rtc: Rtc,
    ufrag: String,
    /// Data channels by label role.
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    pending_offer: Option<SdpPendingOffer>,
    offer_id: u32,
    timeout: Instant,
    /// Set when the subscriber needs a new offer once the pending one is answered.
    renegotiate: bool,
    /// The next subscriber offer restarts ICE (after a resume).
    ice_restart: bool,
    /// The last offer sent, to send again if the socket that carried it dropped.
    last_offer: Option<lk::SessionDescription>,
    /// Subscriber m-lines whose track went away, to stop in the next offer.
    to_stop: Vec<Mid>,
}

#[derive(Debug)]
struct Track {
    sid: String,
    cid: String,
    kind: MediaKind,
    info: lk::TrackInfo,
    mid: Option<Mid>,
    /// When a keyframe was last asked for, per simulcast layer (the first slot for a
    /// track without simulcast).
    keyframe_requested: [Option<Instant>; LAYERS],
    /// Simulcast: when each layer (q, h, f) last carried media.
    layers_seen: [Option<Instant>; LAYERS],
    /// Simulcast: bytes per layer since the last measure, and the measured bit rates.
    layer_bytes: [u64; LAYERS],
    layer_bps: [u64; LAYERS],
    /// Simulcast: which layers the publisher was told to send.
    dynacast: Dynacast,
    /// The codec it arrives in, lower case as LiveKit names it ("vp8"), once media came.
    codec: Option<String>,
    /// Published with simulcast, and the layers the client announced (sizes).
    simulcast: bool,
    layers: Vec<lk::VideoLayer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownState {
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
}

#[derive(Debug)]
struct DownTrack {
    publisher: ParticipantKey,
    track_sid: String,
    kind: MediaKind,
    state: DownState,
    /// Subscribed and not disabled by `UpdateTrackSettings`.
    enabled: bool,
    /// Simulcast: the layer wanted and the layer forwarded.
    layers: LayerSelector,
    /// RTP timestamps continuous across layer switches.
    timestamps: TimestampRewriter,
}

impl Track {
    /// What each simulcast layer costs: measured, but never less than the bit rate the
    /// publisher announced for it, so that a layer measured while its encoder was still
    /// ramping up (or before dynacast paused it) does not look cheaper than it will be.
    fn layer_cost(&self) -> [u64; LAYERS] {
        let mut cost = self.layer_bps;
        for layer in &self.layers {
            if let Ok(quality) = lk::VideoQuality::try_from(layer.quality)
                && let Some(index) = simulcast::layer_for_quality(quality as i32)
            {
                cost[index] = cost[index].max(u64::from(layer.bitrate));
            }
        }
        cost
    }
}

impl DownTrack {
    fn new(publisher: ParticipantKey, track_sid: String, kind: MediaKind) -> Self {
        Self {
            publisher,
            track_sid,
            kind,
            state: DownState::ToOpen,
            enabled: true,
            layers: LayerSelector::default(),
            timestamps: TimestampRewriter::default(),
        }
    }
}

/// What a single peer connection participant's signalling needs beyond the dual mode's.
#[derive(Debug, Default)]
struct SinglePc {
    /// The receive slots of the last answer (m-lines the server may send on).
    slots: Vec<sdp::Slot>,
    /// Slots whose track went away: answered `inactive` from then on and never reused,
    /// because livekit-client stops the receiver's track when a track goes away and a
    /// stopped track never starts again (it ignores tracks that arrive already ended).
    retired: Vec<Mid>,
    /// How many of `retired` an answer has marked `inactive` so far.
    retired_answered: usize,
    /// A `MediaSectionsRequirement` went out and no offer has come since.
    requested: bool,
    /// An offer was answered: the client's peer connection exists.
    answered: bool,
}

#[derive(Debug)]
struct Participant {
    sid: String,
    identity: String,
    name: String,
    metadata: String,
    attributes: HashMap<String, String>,
    room: String,
    joined_at_ms: i64,
    permission: lk::ParticipantPermission,
    auto_subscribe: bool,
    publisher: Peer,
    subscriber: Peer,
    tracks: Vec<Track>,
    downtracks: Vec<DownTrack>,
    text_streams: TextStreams,
    limits: ParticipantLimits,
    signal_connected: bool,
    last_seen: Instant,
    voice: Voice,
    version: u32,
    /// The subscriber connection's bandwidth estimate (TWCC), once there is one.
    bandwidth_bps: Option<u64>,
    /// Set for single peer connection participants (`/rtc/v1`).
    single: Option<SinglePc>,
}

/// What one participant may send on the data channels. The budgets are far above what
/// people type or LiveKit's SDKs send for reactions and RPC; a client over them is
/// flooding, and its excess is dropped before it reaches anyone.
#[derive(Debug)]
struct ParticipantLimits {
    data_packets: TokenBucket,
    data_bytes: TokenBucket,
    chat: TokenBucket,
    /// Name and attribute changes: each goes to every member of the room.
    updates: TokenBucket,
    streams: data::RelayedStreams,
}

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

impl ParticipantLimits {
    fn new(now: Instant) -> Self {
        Self {
            data_packets: TokenBucket::new(DATA_PACKETS_PER_SEC, DATA_PACKETS_BURST, now),
            data_bytes: TokenBucket::new(DATA_BYTES_PER_SEC, DATA_BYTES_BURST, now),
            chat: TokenBucket::new(CHAT_PER_SEC, CHAT_BURST, now),
            updates: TokenBucket::new(UPDATES_PER_SEC, UPDATES_BURST, now),
            streams: data::RelayedStreams::default(),
        }
    }
}

impl Participant {
    /// The peer connection that plays `role`: in single peer connection mode the
    /// publisher's plays both.
    fn peer(&mut self, role: Pc) -> &mut Peer {
        match role {
            Pc::Subscriber if self.single.is_none() => &mut self.subscriber,
            _ => &mut self.publisher,
        }
    }
}

/// Which role an event of a single peer connection plays: keyframe requests and the
/// bandwidth estimate concern what the participant receives, everything else what it
/// sends.
fn single_pc_role(event: &Event) -> Pc {
    match event {
        Event::KeyframeRequest(_) | Event::EgressBitrateEstimate(_) => Pc::Subscriber,
        _ => Pc::Publisher,
    }
}

#[derive(Debug)]
struct Room {
    sid: String,
    name: String,
    created_ms: i64,
    members: Vec<ParticipantKey>,
    seen_chat: SeenChat,
    /// Sid of the server participant, once it has spoken in this room.
    server_participant: Option<String>,
    speakers: Vec<String>,
}

/// The engine. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    participants: Slab<Participant>,
    rooms: HashMap<String, Room>,
    /// Established 5-tuples (one UDP socket and one TCP port, so the protocol and the
    /// remote address) to their peer.
    routes: HashMap<(Protocol, SocketAddr), (ParticipantKey, Pc)>,
    /// ICE-TCP host candidates (passive), advertised next to the UDP ones; empty
    /// without a TCP listener ([`Engine::enable_tcp`]).
    tcp_candidates: Vec<SocketAddr>,
    /// Local ICE ufrags to their peer, for a peer's first packet.
    ufrags: HashMap<String, (ParticipantKey, Pc)>,
    outputs: VecDeque<Output>,
    /// Peers to poll after an input, and str0m events waiting to be handled.
    dirty: Vec<(ParticipantKey, Pc)>,
    events: VecDeque<(ParticipantKey, Pc, Event)>,
    /// Reused buffer for forwarding targets, as (subscriber, index of its downtrack): no
    /// allocation per packet in steady state.
    targets: Vec<(ParticipantKey, usize)>,
    next_housekeeping: Instant,
    next_quality: Instant,
    /// Rooms ended by the service: a token issued before the end cannot reopen them.
    closed_rooms: HashSet<String>,
    /// No peer's timer is due before this (a lower bound, exact after each
    /// `handle_timeout`): the driver asks [`Engine::next_timeout`] after every packet,
    /// and scanning every peer each time cost O(peers) per packet.
    peers_due: Instant,
}

/// Ended rooms remembered; beyond this the oldest are forgotten (their tokens have
/// long expired by then).
const CLOSED_ROOMS_KEPT: usize = 10_000;

fn new_peer(config: &EngineConfig, tcp_candidates: &[SocketAddr], now: Instant, bwe: bool) -> Peer {
    let ufrag = random_id("", 16);
    let creds = str0m::IceCreds {
        ufrag: ufrag.clone(),
        pass: random_id("", 32),
    };
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .set_local_ice_credentials(creds);
    if bwe {
        // On the connection the SFU sends media on: TWCC bandwidth estimation drives
        // simulcast layer choice and paces the sending.
        rtc = rtc.enable_bwe(Some(Bitrate::bps(INITIAL_BANDWIDTH_BPS)));
    }
    let mut rtc = rtc.build(now);
    for &addr in &config.candidates {
        let candidate =
            Candidate::host(addr, "udp").expect("a host candidate from a socket address is valid");
        rtc.add_local_candidate(candidate);
    }
    // Passive TCP (RFC 6544): the client connects to us. str0m gives TCP host candidates
    // a lower type preference (90 against 126), so UDP wins wherever it works.
    for &addr in tcp_candidates {
        let candidate = Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(TcpType::Passive)
            .build()
            .expect("a TCP host candidate from a socket address is valid");
        rtc.add_local_candidate(candidate);
    }
    Peer {
        rtc,
        ufrag,
        reliable: None,
        lossy: None,
        pending_offer: None,
        offer_id: 0,
        timeout: now,
        renegotiate: false,
        ice_restart: false,
        last_offer: None,
        to_stop: Vec::new(),
    }
}

fn track_type(kind: MediaKind) -> lk::TrackType {
    match kind {
        MediaKind::Audio => lk::TrackType::Audio,
        MediaKind::Video => lk::TrackType::Video,
    }
}

/// The `a=ice-ufrag` of an SDP we produced (it changes on ICE restarts).
fn sdp_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

impl Engine {
    /// The local candidate a datagram from `source` was sent to: the socket listens on
    /// every address, so pick the candidate on the same side of loopback as the sender.
    pub fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        let loopback = source.ip().is_loopback();
        self.config
            .candidates
            .iter()
            .copied()
            .find(|c| c.ip().is_loopback() == loopback && c.is_ipv4() == source.is_ipv4())
            .or_else(|| self.config.candidates.first().copied())
            .expect("the engine is configured with at least one candidate")
    }

    /// Advertises ICE-TCP on `port` (passive host candidates at the UDP candidates'
    /// addresses) to peers created from now on. A setter rather than an
    /// [`EngineConfig`] field: the listener may fail to bind, and the UDP path is whole
    /// without it.
    pub fn enable_tcp(&mut self, port: u16) {
        self.tcp_candidates = self
            .config
            .candidates
            .iter()
            .map(|c| SocketAddr::new(c.ip(), port))
            .collect();
    }

    /// The TCP candidate a connection from `source` reached (as [`Engine::destination_for`]).
    pub fn tcp_destination_for(&self, source: SocketAddr) -> Option<SocketAddr> {
        let loopback = source.ip().is_loopback();
        self.tcp_candidates
            .iter()
            .copied()
            .find(|c| c.ip().is_loopback() == loopback && c.is_ipv4() == source.is_ipv4())
            .or_else(|| self.tcp_candidates.first().copied())
    }

    pub fn new(config: EngineConfig, now: Instant) -> Self {
        assert!(
            !config.candidates.is_empty(),
            "the SFU needs at least one host candidate"
        );
        Self {
            config,
            participants: Slab::new(),
            rooms: HashMap::new(),
            routes: HashMap::new(),
            tcp_candidates: Vec::new(),
            ufrags: HashMap::new(),
            outputs: VecDeque::new(),
            dirty: Vec::new(),
            events: VecDeque::new(),
            targets: Vec::new(),
            next_housekeeping: now + HOUSEKEEPING_PERIOD,
            next_quality: now + QUALITY_PERIOD,
            closed_rooms: HashSet::new(),
            peers_due: now,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn next_timeout(&self) -> Instant {
        self.next_housekeeping
            .min(self.next_quality)
            .min(self.peers_due)
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn room_of(&self, key: ParticipantKey) -> Option<&str> {
        self.participants.get(key).map(|p| p.room.as_str())
    }

    pub fn sid_of(&self, key: ParticipantKey) -> Option<&str> {
        self.participants.get(key).map(|p| p.sid.as_str())
    }

    // ----- joining and leaving -------------------------------------------------------

    /// Whether `identity` may join `room` now; `Some(key)` names the session it replaces.
    pub fn admit(&self, room: &str, identity: &str) -> Result<Option<ParticipantKey>, JoinError> {
        if identity == SERVER_IDENTITY {
            return Err(JoinError::ReservedIdentity(identity.to_owned()));
        }
        if self.closed_rooms.contains(room) {
            return Err(JoinError::RoomClosed);
        }
        let replaced = self.find_identity(room, identity);
        // The session being replaced does not count against the limits.
        let leaving = usize::from(replaced.is_some());
        if self.participants.len() - leaving >= self.config.max_participants {
            return Err(JoinError::ServerFull);
        }
        let members = self.rooms.get(room).map_or(0, |r| r.members.len()) - leaving;
        if members >= self.config.max_participants_per_room {
            return Err(JoinError::RoomFull(self.config.max_participants_per_room));
        }
        Ok(replaced)
    }

    /// Adds a participant; the join response and the first subscriber offer are queued.
    pub fn join(
        &mut self,
        now: Instant,
        request: JoinRequest,
    ) -> Result<ParticipantKey, JoinError> {
        // A second session with the same identity replaces the first, as LiveKit does;
        // the old one is removed after the new one exists, so its key is not reused
        // while the driver still routes the old session's last messages.
        let replaced = self.admit(&request.room, &request.identity)?;
        let room = self
            .rooms
            .entry(request.room.clone())
            .or_insert_with(|| Room {
                sid: random_id("RM_", 12),
                name: request.room.clone(),
                created_ms: super::unix_ms(),
                members: Vec::new(),
                seen_chat: SeenChat::default(),
                server_participant: None,
                speakers: Vec::new(),
            });
        let single_pc = request.single_pc;
        let mut subscriber = new_peer(&self.config, &self.tcp_candidates, now, !single_pc);
        if single_pc {
            // Never used in this mode: keep it from waking the engine.
            subscriber.timeout = now + Duration::from_secs(365 * 24 * 3600);
        }
        let participant = Participant {
            sid: random_id("PA_", 12),
            identity: request.identity,
            name: request.name,
            metadata: request.metadata,
            attributes: request.attributes,
            room: request.room.clone(),
            joined_at_ms: super::unix_ms(),
            permission: lk::ParticipantPermission {
                can_subscribe: request.can_subscribe,
                can_publish: request.can_publish,
                can_publish_data: request.can_publish_data,
                can_update_metadata: request.can_update_own_metadata,
                can_publish_sources: request.can_publish_sources,
                ..Default::default()
            },
            auto_subscribe: request.auto_subscribe,
            publisher: new_peer(&self.config, &self.tcp_candidates, now, single_pc),
            subscriber,
            tracks: Vec::new(),
            downtracks: Vec::new(),
            text_streams: TextStreams::default(),
            limits: ParticipantLimits::new(now),
            signal_connected: true,
            last_seen: now,
            voice: Voice::default(),
            bandwidth_bps: None,
            version: 1,
            single: single_pc.then(SinglePc::default),
        };
        let key = self.participants.insert(participant);
        // The new peers' timers start now.
        self.peers_due = self.peers_due.min(now);
        room.members.push(key);
        if let Some(old) = replaced {
            self.send(
                old,
                signal_response::Message::Leave(lk::LeaveRequest {
                    reason: lk::DisconnectReason::DuplicateIdentity as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                }),
            );
            self.remove(old, "replaced by a new session");
        }
        let p = &self.participants[key];
        self.ufrags
            .insert(p.publisher.ufrag.clone(), (key, Pc::Publisher));
        if !single_pc {
            self.ufrags
                .insert(p.subscriber.ufrag.clone(), (key, Pc::Subscriber));
        }

        let room = &self.rooms[&request.room];
        let mut others: Vec<lk::ParticipantInfo> = room
            .members
            .iter()
            .filter(|&&k| k != key)
            .map(|&k| self.info(k))
            .collect();
        if let Some(server_sid) = &room.server_participant {
            others.push(server_participant_info(server_sid));
        }
        let join = lk::JoinResponse {
            room: Some(self.room_info(&request.room)),
            participant: Some(self.info(key)),
            other_participants: others,
            server_version: SERVER_VERSION.into(),
            ice_servers: self.config.ice_servers.clone(),
            // A single peer connection client negotiates its publisher at once.
            subscriber_primary: !single_pc,
            ping_interval: PING_INTERVAL_SECS,
            ping_timeout: PING_TIMEOUT_SECS,
            server_info: Some(server_info()),
            ..Default::default()
        };
        self.send(key, signal_response::Message::Join(join));
        let info = self.info(key);
        self.broadcast_update(&request.room, key, vec![info]);

        let auto = self.participants[key].auto_subscribe
            && self.participants[key].permission.can_subscribe;
        if auto {
            let members = self.rooms[&request.room].members.clone();
            for other in members.into_iter().filter(|&k| k != key) {
                let published: Vec<(String, MediaKind)> = self.participants[other]
                    .tracks
                    .iter()
                    .filter(|t| t.mid.is_some())
                    .map(|t| (t.sid.clone(), t.kind))
                    .collect();
                for (track_sid, kind) in published {
                    self.participants[key]
                        .downtracks
                        .push(DownTrack::new(other, track_sid, kind));
                }
            }
        }
        match request.publisher_offer {
            // Its answer assigns the slots for the tracks already in the room.
            Some(offer) if single_pc => self.on_publisher_offer(now, key, offer),
            // Slots are asked for once the client's first offer is answered.
            _ if single_pc => {}
            _ => self.negotiate_subscriber(key),
        }
        // The newcomer watches the room's simulcast tracks: paused layers resume now.
        self.update_dynacast(now);
        self.drain(now);
        let p = &self.participants[key];
        tracing::info!(room = %p.room, sid = %p.sid, identity = %p.identity, single_pc, "participant joined");
        self.outputs
            .push_back(Output::Event(EngineEvent::ParticipantJoined {
                room: p.room.clone(),
                sid: p.sid.clone(),
                identity: p.identity.clone(),
                name: p.name.clone(),
            }));
        Ok(key)
    }

    /// A participant's signalling came back (`reconnect=1`): media was never torn down.
    pub fn resume(
        &mut self,
        now: Instant,
        room: &str,
        sid: &str,
        identity: &str,
    ) -> Result<ParticipantKey, JoinError> {
        // The token's room too: a token for one meeting never resumes a session in another.
        let key = self
            .participants
            .iter()
            .find(|(_, p)| p.sid == sid && p.identity == identity && p.room == room)
            .map(|(k, _)| k)
            .ok_or(JoinError::UnknownSession)?;
        let p = &mut self.participants[key];
        p.signal_connected = true;
        p.last_seen = now;
        tracing::info!(sid, identity, "signalling resumed");
        self.send(
            key,
            signal_response::Message::Reconnect(lk::ReconnectResponse {
                ice_servers: self.config.ice_servers.clone(),
                server_info: Some(server_info()),
                ..Default::default()
            }),
        );
        // As LiveKit does after a resume: the room's full state again (updates sent while
        // the socket was down are lost), the room, then a subscriber ICE restart.
        let room_name = self.participants[key].room.clone();
        let room = &self.rooms[&room_name];
        let mut everyone: Vec<lk::ParticipantInfo> =
            room.members.iter().map(|&k| self.info(k)).collect();
        if let Some(server_sid) = &room.server_participant {
            everyone.push(server_participant_info(server_sid));
        }
        self.send(
            key,
            signal_response::Message::Update(lk::ParticipantUpdate {
                participants: everyone,
            }),
        );
        let room_info = self.room_info(&room_name);
        self.send(
            key,
            signal_response::Message::RoomUpdate(lk::RoomUpdate {
                room: Some(room_info),
            }),
        );
        if let Some(single) = &mut self.participants[key].single {
            // The client restarts ICE with an offer of its own; a requirement lost with the
            // old socket is sent again.
            single.requested = false;
            self.request_sections(key);
            self.drain(now);
            return Ok(key);
        }
        let subscriber = &mut self.participants[key].subscriber;
        subscriber.ice_restart = true;
        if subscriber.pending_offer.is_some() {
            // The pending offer may have been lost with the old socket: send it again; the
            // ICE restart follows its answer.
            subscriber.renegotiate = true;
            if let Some(offer) = subscriber.last_offer.clone() {
                self.send(key, signal_response::Message::Offer(offer));
            }
        } else {
            self.negotiate_subscriber(key);
        }
        self.drain(now);
        Ok(key)
    }

    /// Removes a participant the driver cannot talk to any more (its signalling queue is
    /// full: the client is not reading). The room is told, as for any departure.
    pub fn evict(&mut self, now: Instant, key: ParticipantKey, why: &str) {
        if let Some(p) = self.participants.get(key) {
            tracing::warn!(room = %p.room, sid = %p.sid, why, "participant removed");
        }
        self.remove(key, why);
        self.drain(now);
    }

    /// The participant's WebSocket closed without a leave; media goes on until it resumes
    /// or falls silent.
    pub fn signal_lost(&mut self, key: ParticipantKey) {
        if let Some(p) = self.participants.get_mut(key) {
            p.signal_connected = false;
        }
    }

    fn find_identity(&self, room: &str, identity: &str) -> Option<ParticipantKey> {
        self.rooms
            .get(room)?
            .members
            .iter()
            .copied()
            .find(|&k| self.participants[k].identity == identity)
    }

    /// Removes a participant and tells the room.
    fn remove(&mut self, key: ParticipantKey, why: &str) {
        if !self.participants.contains(key) {
            return;
        }
        let mut p = self.participants.remove(key);
        p.publisher.rtc.disconnect();
        p.subscriber.rtc.disconnect();
        self.ufrags.retain(|_, (k, _)| *k != key);
        self.routes.retain(|_, (k, _)| *k != key);
        self.dirty.retain(|(k, _)| *k != key);
        self.events.retain(|(k, _, _)| *k != key);
        let mut gone = Vec::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|&k| k != key);
            room.speakers.retain(|s| *s != p.sid);
            gone = p.tracks.iter().map(|t| t.sid.clone()).collect::<Vec<_>>();
        }
        // Subscribers drop the departed participant's tracks and stop their m-lines.
        let members = self
            .rooms
            .get(&p.room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for &other in &members {
            self.drop_downtracks(other, |d| d.publisher == key || gone.contains(&d.track_sid));
        }
        let mut info = participant_info(&p);
        info.state = lk::participant_info::State::Disconnected as i32;
        info.version = p.version + 1;
        for &other in &members {
            self.send(
                other,
                signal_response::Message::Update(lk::ParticipantUpdate {
                    participants: vec![info.clone()],
                }),
            );
        }
        self.outputs.push_back(Output::CloseSignal { key });
        tracing::info!(room = %p.room, sid = %p.sid, identity = %p.identity, why, "participant left");
        self.outputs
            .push_back(Output::Event(EngineEvent::ParticipantLeft {
                room: p.room.clone(),
                sid: p.sid,
                identity: p.identity,
            }));
        if members.is_empty() {
            self.rooms.remove(&p.room);
            self.outputs
                .push_back(Output::Event(EngineEvent::RoomEmpty { room: p.room }));
        }
    }

    // ----- signalling ------------------------------------------------------------------

    /// A signalling request from a participant. Pings are answered by the signalling
    /// layer; everything else lands here.
    pub fn signal(&mut self, now: Instant, key: ParticipantKey, message: signal_request::Message) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        p.last_seen = now;
        match message {
            signal_request::Message::Offer(offer) => self.on_publisher_offer(now, key, offer),
            signal_request::Message::Answer(answer) => self.on_subscriber_answer(now, key, answer),
            signal_request::Message::Trickle(trickle) => self.on_trickle(key, trickle),
            signal_request::Message::AddTrack(request) => self.on_add_track(key, request),
            signal_request::Message::Mute(mute) => self.on_mute(key, mute),
            signal_request::Message::Subscription(update) => {
                self.set_enabled(key, &update.track_sids, update.subscribe);
                for pt in &update.participant_tracks {
                    self.set_enabled(key, &pt.track_sids, update.subscribe);
                }
            }
            signal_request::Message::TrackSetting(settings) => {
                self.set_enabled(key, &settings.track_sids, !settings.disabled);
                self.set_layer_wish(key, &settings);
            }
            signal_request::Message::Leave(_) => self.remove(key, "left"),
            signal_request::Message::UpdateMetadata(update) => {
                self.on_update_metadata(now, key, update);
            }
            // Not supported yet (docs/signalling.md); ignored without harm.
            _ => {}
        }
        // Subscriptions and wishes may have changed: raise layers at once (a viewer waits).
        self.update_dynacast(now);
        self.drain(now);
    }

    /// A participant asks to change its own name or attributes. Only with the
    /// `canUpdateOwnMetadata` grant; metadata and `tchap.*` attributes belong to the
    /// server (they carry what it vouches for, such as a verified Matrix ID); names go
    /// through the same rules as at join; attributes are bounded in number and size, since
    /// every accepted update is sent to every member of the room.
    fn on_update_metadata(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        update: lk::UpdateParticipantMetadata,
    ) {
        use lk::request_response::Reason;
        let p = &mut self.participants[key];
        let within_budget = p.limits.updates.take(now, 1.0);
        let p = &self.participants[key];
        let refusal = if !within_budget {
            Some((
                Reason::LimitExceeded,
                format!("at most {UPDATES_PER_SEC} updates a second"),
            ))
        } else if !p.permission.can_update_metadata {
            Some((
                Reason::NotAllowed,
                "the access token does not grant canUpdateOwnMetadata".to_owned(),
            ))
        } else if !update.metadata.is_empty() && update.metadata != p.metadata {
            Some((
                Reason::NotAllowed,
                "metadata is set by the server".to_owned(),
            ))
        } else {
            let reserved = update
                .attributes
                .keys()
                .find(|k| k.starts_with(RESERVED_ATTRIBUTE_PREFIX));
            reserved.map(|key| {
                let key = truncate_chars(key, 64);
                (
                    Reason::NotAllowed,
                    format!("attribute `{key}` is reserved to the server"),
                )
            })
        };
        let name = if refusal.is_none() && !update.name.is_empty() && update.name != p.name {
            match crate::names::normalise_display_name(&update.name, MAX_NAME_CHARS) {
                Ok(name) => Some(name),
                Err(e) => {
                    return self.refuse_request(
                        key,
                        update.request_id,
                        Reason::InvalidName,
                        e.to_string(),
                    );
                }
            }
        } else {
            None
        };
        if let Some((reason, message)) = refusal {
            return self.refuse_request(key, update.request_id, reason, message);
        }
        let mut attributes = p.attributes.clone();
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
            return self.refuse_request(
                key,
                update.request_id,
                Reason::LimitExceeded,
                format!(
                    "at most {MAX_ATTRIBUTES} attributes of {MAX_ATTRIBUTES_BYTES} bytes in all"
                ),
            );
        }
        let p = &mut self.participants[key];
        if name.is_none() && attributes == p.attributes {
            return;
        }
        if let Some(name) = name {
            p.name = name;
        }
        p.attributes = attributes;
        p.version += 1;
        let room = p.room.clone();
        let info = self.info(key);
        self.broadcast_update(&room, usize::MAX, vec![info]);
    }

    /// Tells a client its request was refused (livekit-client rejects the pending call).
    fn refuse_request(
        &mut self,
        key: ParticipantKey,
        request_id: u32,
        reason: lk::request_response::Reason,
        message: String,
    ) {
        metrics::counter!("tchap_visio_sfu_requests_refused_total", "reason" => reason.as_str_name())
            .increment(1);
        tracing::debug!(sid = %self.participants[key].sid, reason = reason.as_str_name(), "request refused");
        self.send(
            key,
            signal_response::Message::RequestResponse(lk::RequestResponse {
                request_id,
                reason: reason as i32,
                message,
                ..Default::default()
            }),
        );
    }

    /// `UpdateTrackSettings` for simulcast: the size the subscriber renders the track at
    /// (livekit-client's adaptive stream) or, without a size, the quality it asks for
    /// (`set_video_quality`) sets the highest layer it receives.
    fn set_layer_wish(&mut self, key: ParticipantKey, settings: &lk::UpdateTrackSettings) {
        let mut wishes = Vec::new();
        for down in &self.participants[key].downtracks {
            if down.kind != MediaKind::Video || !settings.track_sids.contains(&down.track_sid) {
                continue;
            }
            let max = if settings.width > 0 || settings.height > 0 {
                let Some(track) = self
                    .participants
                    .get(down.publisher)
                    .and_then(|p| p.tracks.iter().find(|t| t.sid == down.track_sid))
                else {
                    continue;
                };
                Some(simulcast::layer_for_dimensions(
                    &track.layers,
                    track.info.width,
                    track.info.height,
                    settings.width,
                    settings.height,
                ))
            } else {
                simulcast::layer_for_quality(settings.quality)
            };
            wishes.push((down.track_sid.clone(), max));
        }
        let p = &mut self.participants[key];
        for (track_sid, max) in wishes {
            tracing::debug!(sid = %p.sid, track = %track_sid, ?max, width = settings.width, height = settings.height, quality = settings.quality, "simulcast wish");
            for down in p.downtracks.iter_mut().filter(|d| d.track_sid == track_sid) {
                down.layers.max = max;
            }
        }
    }

    /// Dynacast: tells each simulcast publisher which layers someone watches, so that it
    /// pauses the others (`SubscribedQualityUpdate`), raising at once and lowering after
    /// [`simulcast::DYNACAST_DOWN_DELAY`].
    fn update_dynacast(&mut self, now: Instant) {
        let mut updates = Vec::new();
        for (key, p) in &self.participants {
            let Some(room) = self.rooms.get(&p.room) else {
                continue;
            };
            for (index, track) in p.tracks.iter().enumerate() {
                if !track.simulcast || track.mid.is_none() {
                    continue;
                }
                let wanted = room
                    .members
                    .iter()
                    .filter(|&&m| m != key)
                    .flat_map(|&m| &self.participants[m].downtracks)
                    .filter(|d| d.enabled && d.publisher == key && d.track_sid == track.sid)
                    .map(|d| d.layers.max)
                    .max()
                    .flatten();
                updates.push((key, index, wanted));
            }
        }
        for (key, index, wanted) in updates {
            let p = &mut self.participants[key];
            let track = &mut p.tracks[index];
            let Some(announce) = track.dynacast.update(now, wanted) else {
                continue;
            };
            tracing::debug!(sid = %p.sid, track = %track.sid, highest = ?announce.map(|l| LAYER_RIDS[l]), "dynacast");
            metrics::counter!("tchap_visio_sfu_dynacast_updates_total").increment(1);
            let message = signal_response::Message::SubscribedQualityUpdate(
                simulcast::quality_update(&track.sid, track.codec.as_deref(), announce),
            );
            self.send(key, message);
        }
    }

    fn on_publisher_offer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        offer: lk::SessionDescription,
    ) {
        let p = &mut self.participants[key];
        if let Some(single) = &mut p.single {
            // This offer answers any outstanding requirement.
            single.requested = false;
        }
        let parsed = match SdpOffer::from_sdp_string(&offer.sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(sid = %p.sid, error = %e, "unreadable publisher offer; ignored");
                return;
            }
        };
        match p.publisher.rtc.sdp_api().accept_offer(parsed) {
            Ok(answer) => {
                let mut sdp = answer.to_sdp_string();
                if let Some(ufrag) = sdp_ufrag(&sdp) {
                    self.ufrags.insert(ufrag.clone(), (key, Pc::Publisher));
                    self.participants[key].publisher.ufrag = ufrag;
                }
                let mut mid_to_track_id = HashMap::new();
                if self.participants[key].single.is_some() {
                    (sdp, mid_to_track_id) = self.assign_slots(now, key, &sdp);
                }
                self.dirty.push((key, Pc::Publisher));
                self.send(
                    key,
                    signal_response::Message::Answer(lk::SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id: offer.id,
                        mid_to_track_id,
                    }),
                );
                self.request_sections(key);
            }
            Err(e) => tracing::warn!(sid = %p.sid, error = %e, "publisher offer refused"),
        }
    }

    fn on_subscriber_answer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        answer: lk::SessionDescription,
    ) {
        let p = &mut self.participants[key];
        let Some(pending) = p.subscriber.pending_offer.take() else {
            tracing::debug!(sid = %p.sid, "answer without a pending offer; ignored");
            return;
        };
        let parsed = match SdpAnswer::from_sdp_string(&answer.sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(sid = %p.sid, error = %e, "unreadable subscriber answer");
                p.subscriber.renegotiate = true;
                return;
            }
        };
        if let Err(e) = p.subscriber.rtc.sdp_api().accept_answer(pending, parsed) {
            tracing::warn!(sid = %p.sid, error = %e, "subscriber answer refused");
            return;
        }
        let mut opened = Vec::new();
        for down in &mut p.downtracks {
            if let DownState::Negotiating(mid) = down.state {
                down.state = DownState::Open(mid);
                if down.kind == MediaKind::Video {
                    opened.push((down.publisher, down.track_sid.clone()));
                }
            }
        }
        self.dirty.push((key, Pc::Subscriber));
        for (publisher, track_sid) in opened {
            self.request_keyframe(now, publisher, &track_sid, None);
        }
        let p = &mut self.participants[key];
        if p.subscriber.renegotiate
            || p.subscriber.ice_restart
            || !p.subscriber.to_stop.is_empty()
            || p.downtracks.iter().any(|d| d.state == DownState::ToOpen)
        {
            p.subscriber.renegotiate = false;
            self.negotiate_subscriber(key);
        }
    }

    fn on_trickle(&mut self, key: ParticipantKey, trickle: lk::TrickleRequest) {
        #[derive(serde::Deserialize)]
        struct CandidateInit {
            candidate: String,
        }
        let Ok(init) = serde_json::from_str::<CandidateInit>(&trickle.candidate_init) else {
            return;
        };
        if init.candidate.is_empty() {
            return; // end-of-candidates
        }
        let line = init.candidate.strip_prefix("a=").unwrap_or(&init.candidate);
        // mDNS (.local) candidates cannot be resolved here; ice-lite learns the real
        // address from the client's checks anyway.
        let Ok(candidate) = Candidate::from_sdp_string(line) else {
            return;
        };
        let role = if trickle.target == lk::SignalTarget::Subscriber as i32 {
            Pc::Subscriber
        } else {
            Pc::Publisher
        };
        self.participants[key]
            .peer(role)
            .rtc
            .add_remote_candidate(candidate);
    }

    fn on_add_track(&mut self, key: ParticipantKey, request: lk::AddTrackRequest) {
        let p = &mut self.participants[key];
        if !p.permission.can_publish {
            tracing::info!(sid = %p.sid, "add track without permission to publish; ignored");
            return;
        }
        let sources = &p.permission.can_publish_sources;
        if !sources.is_empty() && !sources.contains(&request.source) {
            tracing::info!(sid = %p.sid, source = request.source, "add track of a source the token does not grant; ignored");
            metrics::counter!("tchap_visio_sfu_requests_refused_total", "reason" => "source")
                .increment(1);
            return;
        }
        if p.tracks.iter().any(|t| t.cid == request.cid) || p.tracks.len() >= 16 {
            return;
        }
        let kind = if request.r#type == lk::TrackType::Audio as i32 {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let sid = random_id("TR_", 12);
        let mut info = lk::TrackInfo {
            sid: sid.clone(),
            r#type: track_type(kind) as i32,
            // Every member receives it: bounded like a name.
            name: truncate_chars(&request.name, MAX_TRACK_NAME_CHARS),
            muted: request.muted,
            width: request.width,
            height: request.height,
            source: request.source,
            disable_red: request.disable_red,
            stream: truncate_chars(&request.stream, MAX_TRACK_NAME_CHARS),
            ..Default::default()
        };
        let simulcast = kind == MediaKind::Video && request.layers.len() > 1;
        if simulcast {
            simulcast::announce_layers(&mut info, &request.layers);
        }
        p.tracks.push(Track {
            sid,
            cid: request.cid.clone(),
            kind,
            info: info.clone(),
            mid: None,
            keyframe_requested: [None; LAYERS],
            layers_seen: [None; LAYERS],
            layer_bytes: [0; LAYERS],
            layer_bps: [0; LAYERS],
            dynacast: Dynacast::default(),
            codec: None,
            simulcast,
            layers: request.layers,
        });
        self.send(
            key,
            signal_response::Message::TrackPublished(lk::TrackPublishedResponse {
                cid: request.cid,
                track: Some(info),
            }),
        );
    }

    fn on_mute(&mut self, key: ParticipantKey, mute: lk::MuteTrackRequest) {
        let p = &mut self.participants[key];
        let Some(track) = p.tracks.iter_mut().find(|t| t.sid == mute.sid) else {
            return;
        };
        track.info.muted = mute.muted;
        p.version += 1;
        let room = p.room.clone();
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
    }

    fn set_enabled(&mut self, key: ParticipantKey, track_sids: &[String], enabled: bool) {
        let mut wake = Vec::new();
        for down in &mut self.participants[key].downtracks {
            if track_sids.contains(&down.track_sid) && down.enabled != enabled {
                down.enabled = enabled;
                if enabled && down.kind == MediaKind::Video {
                    wake.push((down.publisher, down.track_sid.clone()));
                }
            }
        }
        let now = Instant::now();
        for (publisher, track_sid) in wake {
            self.request_keyframe(now, publisher, &track_sid, None);
        }
    }

    /// Queues a new subscriber offer with every track still to open, unless one is pending.
    fn negotiate_subscriber(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        if p.single.is_some() {
            // The server never offers on a single peer connection.
            self.request_sections(key);
            return;
        }
        if p.subscriber.pending_offer.is_some() {
            p.subscriber.renegotiate = true;
            return;
        }
        let first = p.subscriber.reliable.is_none();
        let p = &self.participants[key];
        let publishers: HashMap<ParticipantKey, String> = p
            .downtracks
            .iter()
            .filter(|d| d.state == DownState::ToOpen)
            .filter_map(|d| {
                self.participants_sid(d.publisher)
                    .map(|sid| (d.publisher, sid))
            })
            .collect();
        let p = &mut self.participants[key];
        let mut api = p.subscriber.rtc.sdp_api();
        if first {
            let reliable = api.add_channel_with_config(ChannelConfig {
                label: "_reliable".into(),
                ordered: true,
                reliability: Reliability::Reliable,
                ..Default::default()
            });
            let lossy = api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
            p.subscriber.reliable = Some(reliable);
            p.subscriber.lossy = Some(lossy);
        }
        for down in p
            .downtracks
            .iter_mut()
            .filter(|d| d.state == DownState::ToOpen)
        {
            let Some(publisher_sid) = publishers.get(&down.publisher) else {
                continue;
            };
            // livekit clients read `<participant sid>|<track sid>` from the msid stream id.
            let mid = api.add_media(
                down.kind,
                Direction::SendOnly,
                Some(format!("{publisher_sid}|{}", down.track_sid)),
                Some(down.track_sid.clone()),
                None,
            );
            down.state = DownState::Negotiating(mid);
        }
        for mid in p.subscriber.to_stop.drain(..) {
            api.stop_media(mid);
        }
        if p.subscriber.ice_restart {
            p.subscriber.ice_restart = false;
            api.ice_restart(true);
        }
        if !api.has_changes() {
            return;
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        p.subscriber.pending_offer = Some(pending);
        p.subscriber.offer_id += 1;
        let id = p.subscriber.offer_id;
        let sdp = offer.to_sdp_string();
        if let Some(ufrag) = sdp_ufrag(&sdp)
            && ufrag != p.subscriber.ufrag
        {
            p.subscriber.ufrag = ufrag.clone();
            self.ufrags.insert(ufrag, (key, Pc::Subscriber));
        }
        self.dirty.push((key, Pc::Subscriber));
        let offer = lk::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id,
            ..Default::default()
        };
        p.subscriber.last_offer = Some(offer.clone());
        self.send(key, signal_response::Message::Offer(offer));
    }

    /// Single peer connection: assigns the tracks still to open to free receive slots of
    /// `answer` and rewrites it (see [`super::sdp`]). Returns the answer to send and its
    /// mid-to-track map. Opened video gets a keyframe request.
    fn assign_slots(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        answer: &str,
    ) -> (String, HashMap<String, String>) {
        let slots = sdp::receive_slots(answer);
        let publisher_sids: HashMap<ParticipantKey, String> = self.participants[key]
            .downtracks
            .iter()
            .filter_map(|d| Some((d.publisher, self.participants_sid(d.publisher)?)))
            .collect();
        let p = &mut self.participants[key];
        let single = p
            .single
            .as_mut()
            .expect("assign_slots is for single-PC participants");
        let mut taken: Vec<String> = single.retired.iter().map(Mid::to_string).collect();
        taken.extend(p.downtracks.iter().filter_map(|d| match d.state {
            DownState::Open(mid) | DownState::Negotiating(mid) => Some(mid.to_string()),
            DownState::ToOpen => None,
        }));
        let mut opened = Vec::new();
        for down in p
            .downtracks
            .iter_mut()
            .filter(|d| d.state == DownState::ToOpen)
        {
            let Some(slot) = slots
                .iter()
                .find(|s| s.kind == down.kind && !taken.contains(&s.mid))
            else {
                continue;
            };
            taken.push(slot.mid.clone());
            down.state = DownState::Open(Mid::from(slot.mid.as_str()));
            if down.kind == MediaKind::Video {
                opened.push((down.publisher, down.track_sid.clone()));
            }
        }
        let mut assigned = HashMap::new();
        let mut mid_to_track_id = HashMap::new();
        for down in &p.downtracks {
            let (DownState::Open(mid), Some(publisher_sid)) =
                (down.state, publisher_sids.get(&down.publisher))
            else {
                continue;
            };
            // livekit clients read `<participant sid>|<track sid>` from the msid stream id.
            assigned.insert(
                mid.to_string(),
                SlotMsid {
                    stream_id: format!("{publisher_sid}|{}", down.track_sid),
                    track_id: down.track_sid.clone(),
                },
            );
            mid_to_track_id.insert(mid.to_string(), down.track_sid.clone());
        }
        // Retired slots are not in `assigned`: this answer marks them inactive.
        single.retired_answered = single.retired.len();
        single.slots = slots;
        single.answered = true;
        let sdp = sdp::rewrite_answer(answer, &assigned);
        for (publisher, track_sid) in opened {
            self.request_keyframe(now, publisher, &track_sid, None);
        }
        (sdp, mid_to_track_id)
    }

    /// Single peer connection: asks the client to offer again when tracks wait for a slot
    /// or newly retired slots must be answered `inactive`, with the number of receive
    /// m-lines to add. At most one request is outstanding; each answer checks again.
    fn request_sections(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let Some(single) = &mut p.single else {
            return;
        };
        if single.requested || !single.answered {
            return;
        }
        let waiting = |kind: MediaKind| {
            p.downtracks
                .iter()
                .filter(|d| d.kind == kind && d.state == DownState::ToOpen)
                .count()
        };
        let (audio, video) = (waiting(MediaKind::Audio), waiting(MediaKind::Video));
        if audio == 0 && video == 0 && single.retired.len() == single.retired_answered {
            return;
        }
        let used: Vec<String> = p
            .downtracks
            .iter()
            .filter_map(|d| match d.state {
                DownState::Open(mid) | DownState::Negotiating(mid) => Some(mid.to_string()),
                DownState::ToOpen => None,
            })
            .chain(single.retired.iter().map(Mid::to_string))
            .collect();
        let free = |kind: MediaKind| {
            single
                .slots
                .iter()
                .filter(|s| s.kind == kind && !used.contains(&s.mid))
                .count()
        };
        let requirement = lk::MediaSectionsRequirement {
            num_audios: audio.saturating_sub(free(MediaKind::Audio)) as u32,
            num_videos: video.saturating_sub(free(MediaKind::Video)) as u32,
        };
        single.requested = true;
        tracing::debug!(sid = %p.sid, ?requirement, "asking for an offer");
        self.send(
            key,
            signal_response::Message::MediaSectionsRequirement(requirement),
        );
    }

    fn participants_sid(&self, key: ParticipantKey) -> Option<String> {
        self.participants.get(key).map(|p| p.sid.clone())
    }

    // ----- media and data ---------------------------------------------------------------

    /// A datagram arrived on the media socket.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        packet: &[u8],
    ) {
        self.handle_input(now, Protocol::Udp, source, destination, packet);
    }

    /// An RFC 4571 frame arrived on the TCP connection from `source` to `destination`
    /// (one of the TCP candidates, [`Engine::tcp_destination_for`]).
    pub fn handle_tcp_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        packet: &[u8],
    ) {
        self.handle_input(now, Protocol::Tcp, source, destination, packet);
    }

    fn handle_input(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        packet: &[u8],
    ) {
        let known = self.routes.get(&(proto, source)).copied();
        let route_is_new = known.is_none();
        let route = known.or_else(|| {
            super::stun::local_ufrag(packet).and_then(|ufrag| self.ufrags.get(ufrag).copied())
        });
        let Some((key, pc)) = route else {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "unroutable")
                .increment(1);
            return;
        };
        let Ok(contents) = packet.try_into() else {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "not_webrtc")
                .increment(1);
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        if !p.peer(pc).rtc.accepts(&input) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "not_accepted")
                .increment(1);
            return;
        }
        p.last_seen = now;
        if let Err(e) = p.peer(pc).rtc.handle_input(input) {
            tracing::debug!(sid = %p.sid, error = %e, "input refused by the peer connection");
            return;
        }
        if route_is_new {
            self.routes.insert((proto, source), (key, pc));
        }
        self.dirty.push((key, pc));
        self.drain(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Peers whose timer is due go straight to the dirty list (reused, no allocation).
        for (key, p) in &mut self.participants {
            // A single peer connection has no second `Rtc` to wake.
            let roles: &[Pc] = if p.single.is_some() {
                &[Pc::Publisher]
            } else {
                &[Pc::Publisher, Pc::Subscriber]
            };
            for &pc in roles {
                let peer = p.peer(pc);
                if peer.timeout <= now {
                    let _ = peer.rtc.handle_input(Input::Timeout(now));
                    self.dirty.push((key, pc));
                }
            }
        }
        self.drain(now);
        // Every peer was just looked at: the bound is exact again (a removed or idle
        // peer no longer holds it early).
        self.peers_due = self
            .participants
            .iter()
            .map(|(_, p)| p.publisher.timeout.min(p.subscriber.timeout))
            .min()
            .unwrap_or(now + HOUSEKEEPING_PERIOD);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_PERIOD;
            self.housekeeping(now);
        }
        if now >= self.next_quality {
            self.next_quality = now + QUALITY_PERIOD;
            self.send_quality();
        }
    }

    /// Polls dirty peers and handles their events until nothing is left to do.
    fn drain(&mut self, now: Instant) {
        loop {
            while let Some((key, pc)) = self.dirty.pop() {
                self.poll_peer(key, pc);
            }
            let Some((key, pc, event)) = self.events.pop_front() else {
                break;
            };
            self.on_rtc_event(now, key, pc, event);
        }
    }

    fn poll_peer(&mut self, key: ParticipantKey, pc: Pc) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let single = p.single.is_some();
        let sid = &p.sid;
        let peer = match pc {
            Pc::Subscriber if !single => &mut p.subscriber,
            _ => &mut p.publisher,
        };
        loop {
            match peer.rtc.poll_output() {
                Ok(RtcOutput::Transmit(t)) => self.outputs.push_back(Output::Transmit {
                    proto: t.proto,
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Ok(RtcOutput::Timeout(t)) => {
                    peer.timeout = t;
                    self.peers_due = self.peers_due.min(t);
                    break;
                }
                Ok(RtcOutput::Event(e)) => {
                    let role = if single { single_pc_role(&e) } else { pc };
                    self.events.push_back((key, role, e));
                }
                Err(e) => {
                    tracing::debug!(%sid, error = %e, "peer connection failed");
                    peer.rtc.disconnect();
                    peer.timeout = Instant::now() + Duration::from_secs(3600);
                    break;
                }
            }
        }
    }

    fn on_rtc_event(&mut self, now: Instant, key: ParticipantKey, pc: Pc, event: Event) {
        if !self.participants.contains(key) {
            return;
        }
        match (pc, event) {
            (_, Event::IceConnectionStateChange(state)) => {
                tracing::debug!(sid = %self.participants[key].sid, ?pc, ?state, "ICE state");
                if state == IceConnectionState::Disconnected {
                    // Silence handling removes the participant if it does not come back.
                }
            }
            (Pc::Publisher, Event::MediaChanged(changed))
                if !matches!(changed.direction, Direction::RecvOnly | Direction::SendRecv) =>
            {
                // The client stopped sending on this m-line: the track is unpublished.
                self.unpublish(key, changed.mid);
            }
            // A m-line the server sends on is a single peer connection client's receive
            // slot, not a published track.
            (Pc::Publisher, Event::MediaAdded(added)) if added.direction != Direction::SendOnly => {
                self.on_media_added(key, added.mid, added.kind)
            }
            (Pc::Publisher, Event::MediaData(data)) => self.forward(now, key, data),
            (Pc::Subscriber, Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })) => {
                let p = &mut self.participants[key];
                let bps = estimate.as_u64();
                // Log big moves only: estimates come several times a second.
                if p.bandwidth_bps
                    .is_none_or(|old| bps.abs_diff(old) > old / 5)
                {
                    tracing::debug!(sid = %p.sid, kbps = bps / 1000, "subscriber bandwidth estimate");
                }
                p.bandwidth_bps = Some(bps);
                self.allocate_bandwidth(key);
            }
            (Pc::Subscriber, Event::KeyframeRequest(request)) => {
                let down = self.participants[key]
                    .downtracks
                    .iter()
                    .find(|d| d.state == DownState::Open(request.mid))
                    .map(|d| (d.publisher, d.track_sid.clone(), d.layers.current));
                if let Some((publisher, track_sid, layer)) = down {
                    self.request_keyframe(now, publisher, &track_sid, layer);
                }
            }
            (Pc::Publisher, Event::ChannelOpen(id, label)) => {
                let peer = &mut self.participants[key].publisher;
                match label.as_str() {
                    "_reliable" => peer.reliable = Some(id),
                    "_lossy" => peer.lossy = Some(id),
                    _ => {}
                }
            }
            (Pc::Publisher, Event::ChannelData(data)) => {
                let lossy = self.participants[key].publisher.lossy == Some(data.id);
                self.on_data(now, key, &data.data, lossy);
            }
            _ => {}
        }
    }

    fn on_media_added(&mut self, key: ParticipantKey, mid: Mid, kind: MediaKind) {
        let p = &mut self.participants[key];
        let track_id = p.publisher.rtc.media(mid).map(|m| m.track_id().to_owned());
        // Bind the m-line to the announced track: by msid track id (= the client's cid),
        // else the first unbound track of the same kind (LiveKit falls back the same way).
        let index = p
            .tracks
            .iter()
            .position(|t| t.mid.is_none() && Some(&t.cid) == track_id.as_ref())
            .or_else(|| {
                p.tracks
                    .iter()
                    .position(|t| t.mid.is_none() && t.kind == kind)
            });
        let Some(index) = index else {
            tracing::debug!(sid = %p.sid, ?mid, "media without a matching AddTrack; not forwarded");
            return;
        };
        p.tracks[index].mid = Some(mid);
        p.tracks[index].info.mid = mid.to_string();
        p.version += 1;
        let track_sid = p.tracks[index].sid.clone();
        let room = p.room.clone();
        tracing::info!(sid = %p.sid, track = %track_sid, ?kind, "track published");
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
        let members = self.rooms[&room].members.clone();
        for other in members.into_iter().filter(|&k| k != key) {
            let s = &mut self.participants[other];
            if s.auto_subscribe && s.permission.can_subscribe {
                s.downtracks
                    .push(DownTrack::new(key, track_sid.clone(), kind));
                self.negotiate_subscriber(other);
            }
        }
    }

    /// Forwards a publisher's media to every subscriber of the track.
    fn forward(&mut self, now: Instant, key: ParticipantKey, data: str0m::media::MediaData) {
        let p = &mut self.participants[key];
        let Some(index) = p.tracks.iter().position(|t| t.mid == Some(data.mid)) else {
            return;
        };
        let (kind, muted) = (p.tracks[index].kind, p.tracks[index].info.muted);
        if kind == MediaKind::Audio
            && !muted
            && let Some(level) = data.ext_vals.audio_level
        {
            p.voice.heard(now, level);
        }
        if muted {
            return;
        }
        // Simulcast: each subscriber gets its own layer (see `simulcast`), switched at a
        // keyframe of the new layer with timestamps made continuous (see `rewrite`).
        let layer = match data.rid.as_ref() {
            None => None,
            Some(rid) => match simulcast::layer_of_rid(rid) {
                Some(layer) => Some(layer),
                None => {
                    metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "unknown_rid")
                        .increment(1);
                    return;
                }
            },
        };
        let track = &mut p.tracks[index];
        if track.codec.is_none() {
            track.codec = Some(format!("{:?}", data.params.spec().codec).to_lowercase());
        }
        track.layer_bytes[layer.unwrap_or(0)] += data.data.len() as u64;
        if let Some(layer) = layer {
            track.layers_seen[layer] = Some(now);
        }
        let available = layers_available(track, now);
        let keyframe = data.is_keyframe();
        let clock_rate = data.time.frequency();
        // Disjoint field borrows: read rooms/participants, fill the reused target buffer.
        self.targets.clear();
        let publisher = &self.participants[key];
        let track_sid = publisher.tracks[index].sid.as_str();
        if let Some(room) = self.rooms.get(&publisher.room) {
            for &member in room.members.iter().filter(|&&m| m != key) {
                for (d, down) in self.participants[member].downtracks.iter().enumerate() {
                    if matches!(down.state, DownState::Open(_))
                        && down.enabled
                        && down.publisher == key
                        && down.track_sid == track_sid
                    {
                        self.targets.push((member, d));
                    }
                }
            }
        }
        let mut keyframes_wanted = [false; LAYERS];
        for i in 0..self.targets.len() {
            let (member, d) = self.targets[i];
            let Participant {
                sid,
                downtracks,
                publisher,
                subscriber,
                single,
                ..
            } = &mut self.participants[member];
            // The connection the participant receives on (one for both in `/rtc/v1`).
            let receiver = if single.is_some() {
                publisher
            } else {
                subscriber
            };
            let down = &mut downtracks[d];
            let DownState::Open(mid) = down.state else {
                continue;
            };
            let switched = match layer {
                None => false,
                Some(layer) => {
                    let target = down.layers.target(available);
                    if let Some(wanted) = down.layers.keyframe_wanted(target) {
                        keyframes_wanted[wanted] = true;
                    }
                    match down.layers.on_frame(layer, keyframe, target) {
                        Verdict::Drop => continue,
                        Verdict::Forward => false,
                        Verdict::Switch => {
                            tracing::debug!(sid = %sid, track = %down.track_sid, layer = LAYER_RIDS[layer], "simulcast layer switch");
                            metrics::counter!("tchap_visio_sfu_layer_switches_total").increment(1);
                            true
                        }
                    }
                }
            };
            let Some(writer) = receiver.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            let time = down.timestamps.rewrite(
                data.time.numer(),
                data.network_time,
                clock_rate.get(),
                switched,
            );
            let time = MediaTime::new(time, clock_rate);
            if let Err(e) = writer.write(pt, data.network_time, time, data.data.clone()) {
                tracing::debug!(sid = %sid, error = %e, "write to subscriber failed");
                continue;
            }
            self.dirty.push((member, Pc::Subscriber));
        }
        let track_sid = self.participants[key].tracks[index].sid.clone();
        for (wanted, _) in keyframes_wanted.iter().enumerate().filter(|(_, w)| **w) {
            self.request_keyframe(now, key, &track_sid, Some(wanted));
        }
        if !data.contiguous {
            self.request_keyframe(now, key, &track_sid, layer);
        }
    }

    /// Removes a participant's downtracks matching `gone`, stopping their m-lines.
    fn drop_downtracks(&mut self, key: ParticipantKey, gone: impl Fn(&DownTrack) -> bool) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let mut stopped = false;
        p.downtracks.retain(|d| {
            if !gone(d) {
                return true;
            }
            if let DownState::Negotiating(mid) | DownState::Open(mid) = d.state {
                match &mut p.single {
                    Some(single) => single.retired.push(mid),
                    None => p.subscriber.to_stop.push(mid),
                }
                stopped = true;
            }
            false
        });
        if stopped {
            self.negotiate_subscriber(key);
        }
    }

    /// A published track went away (its m-line stopped sending).
    fn unpublish(&mut self, key: ParticipantKey, mid: Mid) {
        let p = &mut self.participants[key];
        let Some(index) = p.tracks.iter().position(|t| t.mid == Some(mid)) else {
            return;
        };
        let track = p.tracks.remove(index);
        p.version += 1;
        let room = p.room.clone();
        tracing::info!(sid = %p.sid, track = %track.sid, "track unpublished");
        self.send(
            key,
            signal_response::Message::TrackUnpublished(lk::TrackUnpublishedResponse {
                track_sid: track.sid.clone(),
            }),
        );
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for other in members.into_iter().filter(|&k| k != key) {
            self.drop_downtracks(other, |d| d.track_sid == track.sid);
        }
    }

    /// Asks the publisher for a keyframe on `layer` of a simulcast track (`None`: on every
    /// layer it sends), or on the track itself without simulcast; at most one request per
    /// layer every [`KEYFRAME_THROTTLE`].
    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantKey,
        track_sid: &str,
        layer: Option<usize>,
    ) {
        let Some(p) = self.participants.get_mut(publisher) else {
            return;
        };
        let Some(track) = p.tracks.iter_mut().find(|t| t.sid == track_sid) else {
            return;
        };
        let Some(mid) = track.mid else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let simulcast = track.layers_seen.iter().any(Option::is_some);
        let available = layers_available(track, now);
        let Some(mut writer) = p.publisher.rtc.writer(mid) else {
            return;
        };
        let mut asked = false;
        for slot in 0..LAYERS {
            let wanted = if !simulcast {
                slot == 0
            } else {
                layer.map_or(available[slot], |l| l == slot)
            };
            if !wanted
                || track.keyframe_requested[slot]
                    .is_some_and(|t| now.duration_since(t) < KEYFRAME_THROTTLE)
            {
                continue;
            }
            track.keyframe_requested[slot] = Some(now);
            let rid = simulcast.then(|| Rid::from(LAYER_RIDS[slot]));
            let _ = writer.request_keyframe(rid, KeyframeRequestKind::Pli);
            asked = true;
        }
        if asked {
            self.dirty.push((publisher, Pc::Publisher));
        }
    }

    fn on_data(&mut self, now: Instant, key: ParticipantKey, bytes: &[u8], lossy: bool) {
        let p = &mut self.participants[key];
        if !p.permission.can_publish_data {
            return;
        }
        // One participant's flood costs the others nothing: past its budget, its packets
        // are dropped here, before they are decoded or fanned out.
        if !p.limits.data_packets.take(now, 1.0)
            || !p.limits.data_bytes.take(now, bytes.len() as f64)
        {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "data_rate")
                .increment(1);
            return;
        }
        let mut packet = match data::decode_and_stamp(bytes, &p.sid, &p.identity) {
            Ok(packet) => packet,
            Err(_) => {
                metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "bad_data_packet").increment(1);
                return;
            }
        };
        if data::starts_chat(&packet) && !p.limits.chat.take(now, 1.0) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "chat_rate")
                .increment(1);
            return;
        }
        if !p.limits.streams.admit(&packet) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "stream_size")
                .increment(1);
            return;
        }
        set_kind(&mut packet, lossy);
        let destinations = data::Destinations::of(&packet);
        let chat = data::chat_in(&packet, &mut p.text_streams);
        tracing::trace!(sid = %p.sid, chat = chat.is_some(), "data packet");
        let (sender_sid, identity, name, room_name) = (
            p.sid.clone(),
            p.identity.clone(),
            p.name.clone(),
            p.room.clone(),
        );
        let encoded = packet.encode_to_vec();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        // A message to some participants only is relayed to them and to nothing else: it
        // is not an event, so it is never stored, mirrored into Matrix or published.
        if let Some(chat) = chat
            && !destinations.is_private()
            && room.seen_chat.insert(&chat.id)
        {
            self.outputs.push_back(Output::Event(EngineEvent::Chat {
                room: room_name.clone(),
                id: chat.id,
                sender_sid,
                sender_identity: identity,
                sender_name: name,
                text: chat.text,
                timestamp_ms: chat.timestamp_ms,
            }));
        }
        let members = room.members.clone();
        for member in members.into_iter().filter(|&k| k != key) {
            let m = &self.participants[member];
            if !destinations.includes(&m.identity, &m.sid) {
                continue;
            }
            self.write_data(member, &encoded, lossy);
        }
    }

    fn write_data(&mut self, key: ParticipantKey, bytes: &[u8], lossy: bool) {
        // A single peer connection client receives on the channels it opened.
        let peer = self.participants[key].peer(Pc::Subscriber);
        let channel = if lossy { peer.lossy } else { peer.reliable };
        if let Some(mut channel) = channel.and_then(|id| peer.rtc.channel(id)) {
            let _ = channel.write(true, bytes);
            self.dirty.push((key, Pc::Subscriber));
        }
    }

    /// Chat from the server side (the Matrix room), as the media-less server participant,
    /// with the original author in the stream's attributes. `id` becomes the stream id
    /// (the Matrix event id, so that a page that also loads the stored history shows the
    /// message once); a random one without it.
    pub fn inject_chat(
        &mut self,
        now: Instant,
        room_name: &str,
        id: Option<&str>,
        author: &str,
        text: &str,
    ) -> bool {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return false;
        };
        let first = room.server_participant.is_none();
        let server_sid = room
            .server_participant
            .get_or_insert_with(|| random_id("PA_", 12))
            .clone();
        let stream_id = id.map_or_else(|| random_id("", 20), str::to_owned);
        room.seen_chat.insert(&stream_id);
        let members = room.members.clone();
        if first {
            for &member in &members {
                self.send(
                    member,
                    signal_response::Message::Update(lk::ParticipantUpdate {
                        participants: vec![server_participant_info(&server_sid)],
                    }),
                );
            }
        }
        let attributes = HashMap::from([(AUTHOR_ATTRIBUTE.to_owned(), author.to_owned())]);
        let packets =
            data::server_chat_packets(&server_sid, SERVER_IDENTITY, &stream_id, text, attributes);
        for &member in &members {
            for packet in &packets {
                self.write_data(member, packet, false);
            }
        }
        self.drain(now);
        true
    }

    /// Ends a room for good: every participant is told the room was deleted (the page
    /// shows its "meeting ended" screen) and removed, and later joins are refused.
    /// Returns how many participants were in it.
    pub fn close_room(&mut self, now: Instant, room_name: &str) -> usize {
        if self.closed_rooms.len() >= CLOSED_ROOMS_KEPT {
            self.closed_rooms.clear();
        }
        self.closed_rooms.insert(room_name.to_owned());
        let members = self
            .rooms
            .get(room_name)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for &key in &members {
            self.send(
                key,
                signal_response::Message::Leave(lk::LeaveRequest {
                    reason: lk::DisconnectReason::RoomDeleted as i32,
                    action: lk::leave_request::Action::Disconnect as i32,
                    ..Default::default()
                }),
            );
            self.remove(key, "meeting ended");
        }
        self.drain(now);
        members.len()
    }

    // ----- periodic work --------------------------------------------------------------

    fn housekeeping(&mut self, now: Instant) {
        let silent: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > SILENCE_LIMIT)
            .map(|(k, _)| k)
            .collect();
        for key in silent {
            self.remove(key, "silent");
        }
        self.measure_layers(now);
        let keys: Vec<ParticipantKey> = self.participants.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.allocate_bandwidth(key);
        }
        self.update_dynacast(now);
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for name in rooms {
            let room = &self.rooms[&name];
            let voices = room.members.iter().map(|&k| {
                let p = &self.participants[k];
                (p.sid.as_str(), &p.voice)
            });
            let Some(decision) = speakers::choose(now, voices, &room.speakers) else {
                continue;
            };
            let changed: Vec<lk::SpeakerInfo> = decision
                .changes
                .into_iter()
                .map(|c| lk::SpeakerInfo {
                    sid: c.sid,
                    level: c.level,
                    active: c.active,
                })
                .collect();
            let members = room.members.clone();
            self.rooms
                .get_mut(&name)
                .expect("iterating existing rooms")
                .speakers = decision.speakers;
            for member in members {
                self.send(
                    member,
                    signal_response::Message::SpeakersChanged(lk::SpeakersChanged {
                        speakers: changed.clone(),
                    }),
                );
            }
        }
    }

    /// Caps each simulcast subscription of `key` at the layer its share of the bandwidth
    /// estimate carries, and asks str0m's estimator to probe for what the subscriber wants.
    fn allocate_bandwidth(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get(key) else {
            return;
        };
        let Some(estimate) = p.bandwidth_bps else {
            return;
        };
        let mut fixed = 0u64;
        let mut simulcast_downs = Vec::new();
        let mut costs = Vec::new();
        for (d, down) in p.downtracks.iter().enumerate() {
            if !down.enabled || !matches!(down.state, DownState::Open(_)) {
                continue;
            }
            let Some(track) = self
                .participants
                .get(down.publisher)
                .and_then(|publisher| publisher.tracks.iter().find(|t| t.sid == down.track_sid))
            else {
                continue;
            };
            if track.info.muted {
                continue;
            }
            if track.simulcast {
                simulcast_downs.push(d);
                costs.push((track.layer_cost(), down.layers.max));
            } else {
                fixed = fixed.saturating_add(track.layer_bps[0]);
            }
        }
        let (caps, desired) = simulcast::allocate(estimate, fixed, &costs);
        let p = &mut self.participants[key];
        for (d, cap) in simulcast_downs.into_iter().zip(caps) {
            p.downtracks[d].layers.bandwidth_max = cap;
        }
        // Probe a little above the need, so the estimate does not sit just under it.
        let desired = Bitrate::bps(
            desired
                .saturating_add(desired / 4)
                .max(INITIAL_BANDWIDTH_BPS),
        );
        p.peer(Pc::Subscriber)
            .rtc
            .bwe()
            .set_bitrate(Bitrate::ZERO, desired);
        self.dirty.push((key, Pc::Subscriber));
    }

    /// Measures what each simulcast layer costs (bits per second since the last call), for
    /// bandwidth-driven layer choice, and publishes how many tracks send each layer.
    fn measure_layers(&mut self, now: Instant) {
        let period = HOUSEKEEPING_PERIOD.as_millis() as u64;
        let mut sending = [0u32; LAYERS];
        for (_, p) in &mut self.participants {
            for track in &mut p.tracks {
                let available = layers_available(track, now);
                for layer in 0..LAYERS {
                    if track.simulcast {
                        sending[layer] += u32::from(available[layer]);
                    }
                    let measured = track.layer_bytes[layer].saturating_mul(8 * 1000) / period;
                    track.layer_bytes[layer] = 0;
                    // A paused layer keeps its last cost: it is what resuming it would
                    // take. Otherwise smooth over keyframes and frame-rate jitter.
                    if !track.simulcast || available[layer] {
                        track.layer_bps[layer] = (track.layer_bps[layer] + measured) / 2;
                    }
                }
            }
        }
        for (layer, count) in sending.iter().enumerate() {
            metrics::gauge!("tchap_visio_sfu_simulcast_layers_received", "rid" => LAYER_RIDS[layer])
                .set(f64::from(*count));
        }
    }

    fn send_quality(&mut self) {
        for room in self.rooms.values() {
            let updates: Vec<lk::ConnectionQualityInfo> = room
                .members
                .iter()
                .map(|&k| lk::ConnectionQualityInfo {
                    participant_sid: self.participants[k].sid.clone(),
                    quality: lk::ConnectionQuality::Excellent as i32,
                    score: 4.5,
                })
                .collect();
            for &member in &room.members {
                if self.participants[member].signal_connected {
                    self.outputs.push_back(Output::Signal {
                        key: member,
                        message: Box::new(signal_response::Message::ConnectionQuality(
                            lk::ConnectionQualityUpdate {
                                updates: updates.clone(),
                            },
                        )),
                    });
                }
            }
        }
    }

    // ----- helpers --------------------------------------------------------------------

    fn send(&mut self, key: ParticipantKey, message: signal_response::Message) {
        self.outputs.push_back(Output::Signal {
            key,
            message: Box::new(message),
        });
    }

    /// Sends a participant update to every member of a room except `except`.
    fn broadcast_update(
        &mut self,
        room: &str,
        except: ParticipantKey,
        participants: Vec<lk::ParticipantInfo>,
    ) {
        let Some(room) = self.rooms.get(room) else {
            return;
        };
        let members: Vec<ParticipantKey> = room
            .members
            .iter()
            .copied()
            .filter(|&k| k != except)
            .collect();
        for member in members {
            self.send(
                member,
                signal_response::Message::Update(lk::ParticipantUpdate {
                    participants: participants.clone(),
                }),
            );
        }
    }

    fn info(&self, key: ParticipantKey) -> lk::ParticipantInfo {
        participant_info(&self.participants[key])
    }

    fn room_info(&self, name: &str) -> lk::Room {
        let room = &self.rooms[name];
        lk::Room {
            sid: room.sid.clone(),
            name: room.name.clone(),
            creation_time: room.created_ms / 1000,
            creation_time_ms: room.created_ms,
            max_participants: self.config.max_participants_per_room as u32,
            num_participants: room.members.len() as u32,
            ..Default::default()
        }
    }

    /// Decodes a signalling frame; malformed input is an error, never a panic.
    pub fn decode_request(
        bytes: &[u8],
    ) -> Result<Option<signal_request::Message>, prost::DecodeError> {
        Ok(lk::SignalRequest::decode(bytes)?.message)
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

/// The simulcast layers a track's publisher is sending now (a layer silent for
/// [`LAYER_STALE`] is taken as paused).
fn layers_available(track: &Track, now: Instant) -> [bool; LAYERS] {
    track
        .layers_seen
        .map(|seen| seen.is_some_and(|t| now.duration_since(t) < LAYER_STALE))
}

fn participant_info(p: &Participant) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: p.sid.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        state: lk::participant_info::State::Active as i32,
        tracks: p
            .tracks
            .iter()
            .filter(|t| t.mid.is_some())
            .map(|t| t.info.clone())
            .collect(),
        metadata: p.metadata.clone(),
        attributes: p.attributes.clone(),
        joined_at: p.joined_at_ms / 1000,
        joined_at_ms: p.joined_at_ms,
        version: p.version,
        permission: Some(p.permission.clone()),
        is_publisher: p.tracks.iter().any(|t| t.mid.is_some()),
        ..Default::default()
    }
}

fn server_participant_info(sid: &str) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: sid.to_owned(),
        identity: SERVER_IDENTITY.into(),
        name: SERVER_NAME.into(),
        state: lk::participant_info::State::Active as i32,
        version: 1,
        ..Default::default()
    }
}

fn server_info() -> lk::ServerInfo {
    lk::ServerInfo {
        edition: lk::server_info::Edition::Standard as i32,
        version: SERVER_VERSION.into(),
        protocol: PROTOCOL_VERSION,
        node_id: "tchap-visio".into(),
        ..Default::default()
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
