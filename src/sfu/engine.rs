//! The SFU engine: a sans-IO state machine fed packets, signalling and time, returning
//! packets to send, signalling to deliver, events and its next timeout. One driver
//! ([`super::driver`]) owns the socket and the clock.
//!
//! This is the shell over the layers that do the work, each importing only those below
//! it: [`super::room`] (rooms, participants, every LiveKit message), then
//! [`super::negotiate`] (peer connections and SDP for `/rtc` and `/rtc/v1`), then
//! [`super::forward`] (the media core). The engine routes datagrams to their peer
//! connection (5-tuples, and local ICE ufrags for first packets), polls the peer
//! connections that have output and hands their events to the layer they concern, and
//! runs the timers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::signal_request;
use prost::Message;
use str0m::bwe::BweKind;
use str0m::media::Direction;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output as RtcOutput, PacerReason, Reason};

use super::room::Rooms;
use super::{ParticipantKey, Pc};

pub use super::participant::{
    CHAT_BURST, CHAT_PER_SEC, DATA_BYTES_BURST, DATA_BYTES_PER_SEC, DATA_PACKETS_BURST,
    DATA_PACKETS_PER_SEC, JoinError, JoinRequest, MAX_ATTRIBUTES, MAX_ATTRIBUTES_BYTES,
    MAX_NAME_CHARS, RESERVED_ATTRIBUTE_PREFIX, SERVER_IDENTITY, SERVER_NAME, UPDATES_BURST,
    UPDATES_PER_SEC,
};
pub use super::room::{
    AUTHOR_ATTRIBUTE, EngineConfig, Output, PING_INTERVAL_SECS, PING_TIMEOUT_SECS,
    PROTOCOL_VERSION, SERVER_VERSION, SILENCE_LIMIT,
};

const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(500);
const QUALITY_PERIOD: Duration = Duration::from_secs(5);

/// How far back a peer connection's timer is replayed. str0m's pacer (with bandwidth
/// estimation on) lets one packet out per `handle_timeout` and asks for the next one a
/// microsecond later; the driver's timer (tokio) wakes at millisecond granularity, so
/// fed the wall-clock `now` every time a connection sent about one packet per
/// millisecond. Instead a due connection is fed the instant it asked for, and then each
/// microsecond step its pacer asks for, up to `now`: what a microsecond-precise timer
/// would have done, caught up in one engine call. Bounded so that a connection that last
/// asked long ago (an idle subscriber getting a frame) does not stamp what it sends far
/// in the past: the TWCC send times its bandwidth estimate reads are off by at most this.
const TIMER_CATCH_UP: Duration = Duration::from_millis(1);
/// Pacer steps replayed at most per poll of one peer connection. The pacer's own burst
/// budget (40 ms of its rate, 63 kB at most) ends a run first, and one-microsecond steps
/// within [`TIMER_CATCH_UP`] cannot exceed this either: a guard against a str0m that
/// stops advancing its clock, counted in `tchap_visio_sfu_pacer_steps_capped_total`.
const PACER_STEPS_MAX: usize = 1_000;

/// Which role an event of a single peer connection plays: keyframe requests and the
/// bandwidth estimate concern what the participant receives, everything else what it
/// sends.
fn single_pc_role(event: &Event) -> Pc {
    match event {
        Event::KeyframeRequest(_) | Event::EgressBitrateEstimate(_) => Pc::Subscriber,
        _ => Pc::Publisher,
    }
}

/// The engine. See the module documentation.
pub struct Engine {
    /// The UDP host candidates.
    candidates: Vec<SocketAddr>,
    rooms: Rooms,
    /// Established 5-tuples (one UDP socket and one TCP port, so the protocol and the
    /// remote address) to their peer.
    routes: HashMap<(Protocol, SocketAddr), (ParticipantKey, Pc)>,
    /// ICE-TCP host candidates (passive), advertised next to the UDP ones; empty
    /// without a TCP listener ([`Engine::enable_tcp`]).
    tcp_candidates: Vec<SocketAddr>,
    /// Local ICE ufrags to their peer, for a peer's first packet.
    ufrags: HashMap<String, (ParticipantKey, Pc)>,
    /// str0m events waiting to be handled.
    events: VecDeque<(ParticipantKey, Pc, Event)>,
    next_housekeeping: Instant,
    next_quality: Instant,
    /// The peers' timers, earliest first: each peer has one live entry (the one its
    /// `scheduled` names) at or before its `timeout`; entries it no longer names are
    /// skipped when they come up. A timeout then costs O(log peers) per due peer instead
    /// of a scan of every peer, and [`Engine::next_timeout`] (asked after every packet)
    /// is a peek.
    timers: BinaryHeap<Reverse<(Instant, ParticipantKey, Pc)>>,
}

impl Engine {
    /// The local candidate a datagram from `source` was sent to: the socket listens on
    /// every address, so pick the candidate on the same side of loopback as the sender.
    pub fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        let loopback = source.ip().is_loopback();
        self.candidates
            .iter()
            .copied()
            .find(|c| c.ip().is_loopback() == loopback && c.is_ipv4() == source.is_ipv4())
            .or_else(|| self.candidates.first().copied())
            .expect("the engine is configured with at least one candidate")
    }

    /// Advertises ICE-TCP on `port` (passive host candidates at the UDP candidates'
    /// addresses) to peers created from now on. A setter rather than an
    /// [`EngineConfig`] field: the listener may fail to bind, and the UDP path is whole
    /// without it.
    pub fn enable_tcp(&mut self, port: u16) {
        self.tcp_candidates = self
            .candidates
            .iter()
            .map(|c| SocketAddr::new(c.ip(), port))
            .collect();
        self.rooms
            .net
            .set_tcp_candidates(self.tcp_candidates.clone());
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
            candidates: config.candidates.clone(),
            rooms: Rooms::new(config),
            routes: HashMap::new(),
            tcp_candidates: Vec::new(),
            ufrags: HashMap::new(),
            events: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING_PERIOD,
            next_quality: now + QUALITY_PERIOD,
            timers: BinaryHeap::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.rooms.outputs.pop_front()
    }

    /// When the engine next needs [`Engine::handle_timeout`].
    pub fn next_timeout(&self) -> Instant {
        let peers = self
            .timers
            .peek()
            .map_or(self.next_housekeeping, |Reverse((at, _, _))| *at);
        self.next_housekeeping.min(self.next_quality).min(peers)
    }

    pub fn participant_count(&self) -> usize {
        self.rooms.participant_count()
    }

    /// How many tracks send each simulcast layer (q, h, f), as last measured.
    pub fn layers_received(&self) -> [u32; super::simulcast::LAYERS] {
        self.rooms.layers_received()
    }

    /// Whether `room` has anyone in it.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.has_room(room)
    }

    /// Whether a peer connection of this engine uses local ICE ufrag `ufrag`.
    pub fn owns_ufrag(&self, ufrag: &str) -> bool {
        self.ufrags.contains_key(ufrag)
    }

    pub fn room_of(&self, key: ParticipantKey) -> Option<&str> {
        self.rooms.room_of(key)
    }

    pub fn sid_of(&self, key: ParticipantKey) -> Option<&str> {
        self.rooms.sid_of(key)
    }

    // ----- joining and leaving -------------------------------------------------------

    /// Whether `identity` may join `room` now; `Some(key)` names the session it replaces.
    pub fn admit(&self, room: &str, identity: &str) -> Result<Option<ParticipantKey>, JoinError> {
        self.rooms.admit(room, identity)
    }

    /// Adds a participant; the join response and the first subscriber offer are queued.
    pub fn join(
        &mut self,
        now: Instant,
        request: JoinRequest,
    ) -> Result<ParticipantKey, JoinError> {
        let key = self.rooms.join(now, request)?;
        // The new peers' timers start now.
        self.schedule(key, Pc::Publisher, now);
        if self
            .rooms
            .net
            .connection(key)
            .is_some_and(|c| !c.is_single())
        {
            self.schedule(key, Pc::Subscriber, now);
        }
        self.drain(now);
        self.rooms.announce_joined(key);
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
        let key = self.rooms.resume(now, room, sid, identity)?;
        self.drain(now);
        Ok(key)
    }

    /// Removes a participant the driver cannot talk to any more (its signalling queue is
    /// full: the client is not reading). The room is told, as for any departure.
    pub fn evict(&mut self, now: Instant, key: ParticipantKey, why: &str) {
        if let (Some(room), Some(sid)) = (self.rooms.room_of(key), self.rooms.sid_of(key)) {
            tracing::warn!(%room, %sid, why, "participant removed");
        }
        self.rooms.remove(key, why);
        self.drain(now);
    }

    /// The participant's WebSocket closed without a leave; media goes on until it resumes
    /// or falls silent.
    pub fn signal_lost(&mut self, key: ParticipantKey) {
        self.rooms.signal_lost(key);
    }

    /// Chat from the server side (the Matrix room); see [`Rooms::inject_chat`].
    pub fn inject_chat(
        &mut self,
        now: Instant,
        room_name: &str,
        id: Option<&str>,
        author: &str,
        text: &str,
    ) -> bool {
        let injected = self.rooms.inject_chat(room_name, id, author, text);
        self.drain(now);
        injected
    }

    /// Removes one participant by identity; see [`Rooms::remove_identity`].
    pub fn remove_identity(&mut self, now: Instant, room: &str, identity: &str, why: &str) -> bool {
        let removed = self.rooms.remove_identity(room, identity, why);
        self.drain(now);
        removed
    }

    /// The open rooms; see [`Rooms::list_rooms`].
    pub fn list_rooms(&self) -> Vec<lk::Room> {
        self.rooms.list_rooms()
    }

    /// A room's participants; see [`Rooms::participants_of`].
    pub fn participants_of(&self, room: &str) -> Option<Vec<lk::ParticipantInfo>> {
        self.rooms.participants_of(room)
    }

    /// See [`Rooms::mute_published`].
    pub fn mute_published(
        &mut self,
        now: Instant,
        room: &str,
        identity: &str,
        track_sid: Option<&str>,
        source: Option<i32>,
        muted: bool,
    ) -> Option<lk::TrackInfo> {
        let track = self
            .rooms
            .mute_published(room, identity, track_sid, source, muted);
        self.drain(now);
        track
    }

    /// See [`Rooms::update_participant`].
    pub fn update_participant(
        &mut self,
        now: Instant,
        room: &str,
        identity: &str,
        change: super::room::ParticipantChange,
    ) -> Option<lk::ParticipantInfo> {
        let info = self.rooms.update_participant(room, identity, change);
        self.drain(now);
        info
    }

    /// Ends a room for good: every participant is told the room was deleted (the page
    /// shows its "meeting ended" screen) and removed, and later joins are refused.
    /// Returns how many participants were in it.
    pub fn close_room(&mut self, now: Instant, room_name: &str) -> usize {
        let members = self.rooms.close_room(room_name);
        self.drain(now);
        members
    }

    // ----- signalling ------------------------------------------------------------------

    /// A signalling request from a participant. Pings are answered by the signalling
    /// layer; everything else lands here.
    pub fn signal(&mut self, now: Instant, key: ParticipantKey, message: signal_request::Message) {
        self.rooms.signal(now, key, message);
        self.drain(now);
    }

    /// Decodes a signalling frame; malformed input is an error, never a panic.
    pub fn decode_request(
        bytes: &[u8],
    ) -> Result<Option<signal_request::Message>, prost::DecodeError> {
        Ok(lk::SignalRequest::decode(bytes)?.message)
    }

    // ----- packets ----------------------------------------------------------------------

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
        let Some(connection) = self.rooms.net.connection(key) else {
            return;
        };
        let rtc = &mut connection.peer(pc).rtc;
        if !rtc.accepts(&input) {
            metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "not_accepted")
                .increment(1);
            return;
        }
        if let Err(e) = rtc.handle_input(input) {
            tracing::debug!(key, error = %e, "input refused by the peer connection");
            return;
        }
        self.rooms.touch(key, now);
        if route_is_new {
            self.routes.insert((proto, source), (key, pc));
        }
        self.rooms.net.peers.dirty.push((key, pc));
        self.drain(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let net = &mut self.rooms.net;
        while let Some(&Reverse((at, key, pc))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            // A participant that left (or a later one that got its key) is skipped by
            // the stale-entry check: its entry is not the one its peer names.
            let Some(connection) = net.connection(key) else {
                continue;
            };
            let peer = connection.peer(pc);
            if peer.scheduled != Some(at) {
                continue;
            }
            peer.scheduled = None;
            if peer.timeout <= now {
                // The instant it asked for (see `TIMER_CATCH_UP`); never earlier than
                // its own clock, since str0m reports a timeout no earlier than the last
                // time it was given. Polling it schedules its next timeout.
                let at = peer
                    .timeout
                    .max(now.checked_sub(TIMER_CATCH_UP).unwrap_or(now));
                let _ = peer.rtc.handle_input(Input::Timeout(at));
                net.peers.dirty.push((key, pc));
            } else {
                // Its timer moved later since this entry was made.
                peer.scheduled = Some(peer.timeout);
                self.timers.push(Reverse((peer.timeout, key, pc)));
            }
        }
        self.drain(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_PERIOD;
            self.rooms.housekeeping(now, HOUSEKEEPING_PERIOD);
            self.drain(now);
        }
        if now >= self.next_quality {
            self.next_quality = now + QUALITY_PERIOD;
            self.rooms.send_quality();
        }
    }

    /// Polls dirty peers and handles their events until nothing is left to do.
    fn drain(&mut self, now: Instant) {
        loop {
            self.update_routing();
            while let Some((key, pc)) = self.rooms.net.peers.dirty.pop() {
                self.poll_peer(now, key, pc);
            }
            let Some((key, pc, event)) = self.events.pop_front() else {
                break;
            };
            self.on_rtc_event(now, key, pc, event);
        }
        self.rooms.flush();
        self.update_routing();
    }

    /// Learns the ufrags negotiation created and forgets the participants that left.
    fn update_routing(&mut self) {
        for key in self.rooms.take_removed() {
            self.ufrags.retain(|_, (k, _)| *k != key);
            self.routes.retain(|_, (k, _)| *k != key);
            self.events.retain(|(k, _, _)| *k != key);
        }
        for (ufrag, key, pc) in self.rooms.net.take_ufrags() {
            self.ufrags.insert(ufrag, (key, pc));
        }
    }

    /// Makes sure the timer heap wakes `key`'s `pc` peer at `at` or earlier.
    fn schedule(&mut self, key: ParticipantKey, pc: Pc, at: Instant) {
        if let Some(connection) = self.rooms.net.connection(key) {
            let peer = connection.peer(pc);
            if peer.scheduled.is_none_or(|s| at < s) {
                peer.scheduled = Some(at);
                self.timers.push(Reverse((at, key, pc)));
            }
        }
    }

    /// Takes everything a peer connection has to say, and runs its pacer up to `now`.
    fn poll_peer(&mut self, now: Instant, key: ParticipantKey, pc: Pc) {
        let Some(connection) = self.rooms.net.connection(key) else {
            return;
        };
        let single = connection.is_single();
        let peer = connection.peer(pc);
        let mut pacer_steps = 0;
        loop {
            match peer.rtc.poll_output() {
                Ok(RtcOutput::Transmit(t)) => self.rooms.outputs.push_back(Output::Transmit {
                    proto: t.proto,
                    destination: t.destination,
                    contents: t.contents.into(),
                }),
                Ok(RtcOutput::Timeout(t)) => {
                    // The pacer sent a packet and wants time to move on before the
                    // next: give it its own next microsecond while that is not past
                    // `now` (see `TIMER_CATCH_UP`), until it says wait (its burst
                    // budget) or has nothing left. The same instant again would
                    // stamp a whole burst with one send time.
                    if t <= now
                        && peer.rtc.last_timeout_reason() == Reason::Pacer(PacerReason::Immediate)
                    {
                        if pacer_steps < PACER_STEPS_MAX {
                            pacer_steps += 1;
                            let at = t.max(now.checked_sub(TIMER_CATCH_UP).unwrap_or(now));
                            let _ = peer.rtc.handle_input(Input::Timeout(at));
                            continue;
                        }
                        metrics::counter!("tchap_visio_sfu_pacer_steps_capped_total").increment(1);
                    }
                    peer.timeout = t;
                    if peer.scheduled.is_none_or(|s| t < s) {
                        peer.scheduled = Some(t);
                        self.timers.push(Reverse((t, key, pc)));
                    }
                    break;
                }
                Ok(RtcOutput::Event(e)) => {
                    let role = if single { single_pc_role(&e) } else { pc };
                    self.events.push_back((key, role, e));
                }
                Err(e) => {
                    tracing::debug!(key, error = %e, "peer connection failed");
                    peer.rtc.disconnect();
                    peer.timeout = Instant::now() + Duration::from_secs(3600);
                    break;
                }
            }
        }
    }

    /// The str0m connection playing `role` for `key`, for tests that look inside it.
    #[cfg(test)]
    pub(crate) fn rtc_mut(&mut self, key: ParticipantKey, role: Pc) -> Option<&mut str0m::Rtc> {
        self.rooms
            .net
            .connection(key)
            .map(|c| &mut c.peer(role).rtc)
    }

    /// The last bandwidth estimate of what `key` receives, for tests.
    #[cfg(test)]
    pub(crate) fn bandwidth_estimate(&self, key: ParticipantKey) -> Option<u64> {
        self.rooms.net.media.bandwidth_estimate(key)
    }

    fn on_rtc_event(&mut self, now: Instant, key: ParticipantKey, pc: Pc, event: Event) {
        let Some(sid) = self.rooms.sid_of(key) else {
            return;
        };
        match (pc, event) {
            (_, Event::IceConnectionStateChange(state)) => {
                tracing::debug!(%sid, ?pc, ?state, "ICE state");
                if state == IceConnectionState::Disconnected {
                    // Silence handling removes the participant if it does not come back.
                }
            }
            (Pc::Publisher, Event::MediaChanged(changed))
                if !matches!(changed.direction, Direction::RecvOnly | Direction::SendRecv) =>
            {
                // The client stopped sending on this m-line: the track is unpublished.
                self.rooms.unpublish(key, changed.mid);
            }
            // A m-line the server sends on is a single peer connection client's receive
            // slot, not a published track.
            (Pc::Publisher, Event::MediaAdded(added)) if added.direction != Direction::SendOnly => {
                self.rooms.media_added(key, added.mid, added.kind);
            }
            (Pc::Publisher, Event::MediaData(data)) => self.rooms.net.forward(now, key, data),
            (Pc::Subscriber, Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. })) => {
                self.rooms.net.estimate(now, key, estimate.as_u64());
            }
            (Pc::Subscriber, Event::KeyframeRequest(request)) => {
                self.rooms.net.keyframe_asked(now, key, request.mid);
            }
            (Pc::Publisher, Event::ChannelOpen(id, label)) => {
                self.rooms.net.channel_open(key, id, &label);
            }
            (Pc::Publisher, Event::ChannelData(data)) => {
                let lossy = self.rooms.net.is_lossy(key, data.id);
                self.rooms.on_data(now, key, &data.data, lossy);
            }
            _ => {}
        }
    }
}
