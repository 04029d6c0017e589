//! Peer connections and their negotiation, for both of LiveKit's connection modes: SDP
//! offers and answers, data channels, ICE candidates, and which m-line carries each
//! down-track.
//!
//! Dual peer connection participants (`/rtc`) have a publisher connection the client
//! offers on and a subscriber connection only the server offers on. Single peer
//! connection participants (`/rtc/v1`) have one `Rtc`, the publisher's, which also plays
//! the subscriber role ([`Connection::peer`]). The server never offers to them: what they
//! receive goes out on the receive-only m-lines they offer ("slots"), assigned when
//! answering; when slots are missing the client is asked for more
//! ([`Negotiated::Sections`]) and offers again.
//!
//! Below the room layer and above [`super::forward`], whose down-tracks it opens and
//! whose [`Connections`] it implements. It builds no signalling message: the descriptions
//! and requirements to send queue up as [`Negotiated`] for the room layer to wrap, in
//! order; local ICE ufrags that changed queue up for the engine's routing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::TcpType;
use str0m::{Candidate, Rtc, RtcConfig};

use super::forward::{self, Connections, DownState, Forwarder, Stopped};
use super::sdp::{self, SlotMsid};
use super::{ParticipantKey, Pc, random_id};

/// One peer connection.
#[derive(Debug)]
pub struct Peer {
    pub rtc: Rtc,
    pub ufrag: String,
    /// Data channels by label role.
    pub reliable: Option<ChannelId>,
    pub lossy: Option<ChannelId>,
    pending_offer: Option<SdpPendingOffer>,
    offer_id: u32,
    /// When str0m next needs time.
    pub timeout: Instant,
    /// The earliest entry the engine's timer heap holds for this peer (others for it
    /// are stale and skipped).
    pub scheduled: Option<Instant>,
    /// Set when the subscriber needs a new offer once the pending one is answered.
    renegotiate: bool,
    /// The next subscriber offer restarts ICE (after a resume).
    ice_restart: bool,
    /// The last offer sent, to send again if the socket that carried it dropped.
    last_offer: Option<lk::SessionDescription>,
    /// Subscriber m-lines whose track went away, to stop in the next offer.
    to_stop: Vec<Mid>,
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

/// A participant's peer connections.
#[derive(Debug)]
pub struct Connection {
    /// The participant's sid, for logs.
    sid: String,
    pub publisher: Peer,
    /// Unused (and never woken) in single peer connection mode.
    pub subscriber: Peer,
    single: Option<SinglePc>,
}

impl Connection {
    /// The peer connection that plays `role`: in single peer connection mode the
    /// publisher's plays both.
    pub fn peer(&mut self, role: Pc) -> &mut Peer {
        match role {
            Pc::Subscriber if self.single.is_none() => &mut self.subscriber,
            _ => &mut self.publisher,
        }
    }

    /// Single peer connection mode (`/rtc/v1`).
    pub fn is_single(&self) -> bool {
        self.single.is_some()
    }
}

/// Something the client must be told, for the room layer to send.
#[derive(Debug)]
pub enum Negotiated {
    /// A subscriber offer (dual peer connection mode).
    Offer(lk::SessionDescription),
    /// The answer to the client's publisher offer.
    Answer(lk::SessionDescription),
    /// Single peer connection: offer again with this many more receive m-lines.
    Sections(lk::MediaSectionsRequirement),
}

/// The connections by participant key, and which of them have output to poll.
#[derive(Debug, Default)]
pub struct Peers {
    connections: Vec<Option<Connection>>,
    /// Peers to poll after an input.
    pub dirty: Vec<(ParticipantKey, Pc)>,
}

impl Peers {
    fn get(&mut self, key: ParticipantKey) -> Option<&mut Connection> {
        self.connections.get_mut(key).and_then(Option::as_mut)
    }
}

impl Connections for Peers {
    fn rtc(&mut self, key: ParticipantKey, role: Pc) -> Option<&mut Rtc> {
        Some(&mut self.get(key)?.peer(role).rtc)
    }

    fn wake(&mut self, key: ParticipantKey, role: Pc) {
        self.dirty.push((key, role));
    }
}

/// Negotiation for every participant, over the media core. See the module documentation.
#[derive(Debug)]
pub struct Negotiator {
    pub peers: Peers,
    pub media: Forwarder,
    /// Host candidates (UDP), and ICE-TCP passive candidates once TCP is enabled.
    candidates: Vec<SocketAddr>,
    tcp_candidates: Vec<SocketAddr>,
    /// What clients must be told, in order, for the room layer.
    said: Vec<(ParticipantKey, Negotiated)>,
    /// Local ICE ufrags that appeared, for the engine's routing of first packets.
    ufrags: Vec<(String, ParticipantKey, Pc)>,
}

fn new_peer(
    candidates: &[SocketAddr],
    tcp_candidates: &[SocketAddr],
    now: Instant,
    bwe: bool,
) -> Peer {
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
        rtc = rtc.enable_bwe(Some(Bitrate::bps(forward::INITIAL_BANDWIDTH_BPS)));
    }
    let mut rtc = rtc.build(now);
    for &addr in candidates {
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
        scheduled: None,
        renegotiate: false,
        ice_restart: false,
        last_offer: None,
        to_stop: Vec::new(),
    }
}

/// The `a=ice-ufrag` of an SDP we produced (it changes on ICE restarts).
fn sdp_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

impl Negotiator {
    pub fn new(candidates: Vec<SocketAddr>) -> Self {
        Self {
            peers: Peers::default(),
            media: Forwarder::default(),
            candidates,
            tcp_candidates: Vec::new(),
            said: Vec::new(),
            ufrags: Vec::new(),
        }
    }

    /// Peers created from now on advertise these ICE-TCP candidates.
    pub fn set_tcp_candidates(&mut self, candidates: Vec<SocketAddr>) {
        self.tcp_candidates = candidates;
    }

    pub fn connection(&mut self, key: ParticipantKey) -> Option<&mut Connection> {
        self.peers.get(key)
    }

    /// Every connection, with its participant key.
    pub fn connections(&mut self) -> impl Iterator<Item = (ParticipantKey, &mut Connection)> {
        self.peers
            .connections
            .iter_mut()
            .enumerate()
            .filter_map(|(k, c)| Some((k, c.as_mut()?)))
    }

    /// What clients must be told since the last call, in order.
    pub fn take_said(&mut self) -> std::vec::Drain<'_, (ParticipantKey, Negotiated)> {
        self.said.drain(..)
    }

    /// Local ufrags that appeared since the last call.
    pub fn take_ufrags(&mut self) -> std::vec::Drain<'_, (String, ParticipantKey, Pc)> {
        self.ufrags.drain(..)
    }

    /// Creates a participant's connections (its media starts empty).
    pub fn open(&mut self, now: Instant, key: ParticipantKey, sid: &str, single_pc: bool) {
        let mut subscriber = new_peer(&self.candidates, &self.tcp_candidates, now, !single_pc);
        if single_pc {
            // Never used in this mode: keep it from waking the engine.
            subscriber.timeout = now + Duration::from_secs(365 * 24 * 3600);
        }
        let publisher = new_peer(&self.candidates, &self.tcp_candidates, now, single_pc);
        self.ufrags
            .push((publisher.ufrag.clone(), key, Pc::Publisher));
        if !single_pc {
            self.ufrags
                .push((subscriber.ufrag.clone(), key, Pc::Subscriber));
        }
        let connections = &mut self.peers.connections;
        if connections.len() <= key {
            connections.resize_with(key + 1, || None);
        }
        connections[key] = Some(Connection {
            sid: sid.to_owned(),
            publisher,
            subscriber,
            single: single_pc.then(SinglePc::default),
        });
        self.media.add_member(key);
    }

    /// Closes a participant's connections; its tracks leave the other subscribers
    /// (`order`: the room's members, in whose order they renegotiate).
    pub fn close(&mut self, key: ParticipantKey, order: &[ParticipantKey]) {
        if let Some(mut connection) = self.peers.connections.get_mut(key).and_then(Option::take) {
            connection.publisher.rtc.disconnect();
            connection.subscriber.rtc.disconnect();
        }
        self.peers.dirty.retain(|(k, _)| *k != key);
        let stopped = self.media.remove_member(key);
        self.stop(&stopped, order);
    }

    /// Stops the m-lines of down-tracks that went away, then renegotiates each subscriber
    /// concerned, in `order`.
    pub fn stop(&mut self, stopped: &[Stopped], order: &[ParticipantKey]) {
        for &Stopped { subscriber, mid } in stopped {
            let Some(connection) = self.peers.get(subscriber) else {
                continue;
            };
            match &mut connection.single {
                Some(single) => single.retired.push(mid),
                None => connection.subscriber.to_stop.push(mid),
            }
        }
        for &key in order {
            if stopped.iter().any(|s| s.subscriber == key) {
                self.negotiate_subscriber(key);
            }
        }
    }

    /// The client's publisher offer: answered (in single peer connection mode with the
    /// down-tracks waiting assigned to its receive slots).
    pub fn publisher_offer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        offer: lk::SessionDescription,
    ) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        if let Some(single) = &mut connection.single {
            // This offer answers any outstanding requirement.
            single.requested = false;
        }
        let parsed = match SdpOffer::from_sdp_string(&offer.sdp) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(sid = %connection.sid, error = %e, "unreadable publisher offer; ignored");
                return;
            }
        };
        match connection.publisher.rtc.sdp_api().accept_offer(parsed) {
            Ok(answer) => {
                let mut sdp = answer.to_sdp_string();
                if let Some(ufrag) = sdp_ufrag(&sdp) {
                    connection.publisher.ufrag = ufrag.clone();
                    self.ufrags.push((ufrag, key, Pc::Publisher));
                }
                let mut mid_to_track_id = HashMap::new();
                if connection.single.is_some() {
                    (sdp, mid_to_track_id) = self.assign_slots(now, key, &sdp);
                }
                self.peers.dirty.push((key, Pc::Publisher));
                self.said.push((
                    key,
                    Negotiated::Answer(lk::SessionDescription {
                        r#type: "answer".into(),
                        sdp,
                        id: offer.id,
                        mid_to_track_id,
                    }),
                ));
                self.request_sections(key);
            }
            Err(e) => tracing::warn!(sid = %connection.sid, error = %e, "publisher offer refused"),
        }
    }

    /// The client's answer to the subscriber offer: the down-tracks offered open.
    pub fn subscriber_answer(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        answer: lk::SessionDescription,
    ) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        let subscriber = &mut connection.subscriber;
        let Some(pending) = subscriber.pending_offer.take() else {
            tracing::debug!(sid = %connection.sid, "answer without a pending offer; ignored");
            return;
        };
        let parsed = match SdpAnswer::from_sdp_string(&answer.sdp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(sid = %connection.sid, error = %e, "unreadable subscriber answer");
                subscriber.renegotiate = true;
                return;
            }
        };
        if let Err(e) = subscriber.rtc.sdp_api().accept_answer(pending, parsed) {
            tracing::warn!(sid = %connection.sid, error = %e, "subscriber answer refused");
            return;
        }
        let mut opened = Vec::new();
        for &d in self.media.down_keys(key) {
            opened.push(d);
        }
        opened.retain(|&d| {
            let down = self.media.down_mut(d);
            match down.state {
                DownState::Negotiating(mid) => {
                    down.state = DownState::Open(mid);
                    true
                }
                _ => false,
            }
        });
        self.peers.dirty.push((key, Pc::Subscriber));
        self.media.opened(now, &opened, &mut self.peers);
        let waiting = self
            .media
            .downs_of(key)
            .any(|d| d.state == DownState::ToOpen);
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        let subscriber = &mut connection.subscriber;
        if subscriber.renegotiate
            || subscriber.ice_restart
            || !subscriber.to_stop.is_empty()
            || waiting
        {
            subscriber.renegotiate = false;
            self.negotiate_subscriber(key);
        }
    }

    /// A remote ICE candidate (`trickle`).
    pub fn trickle(&mut self, key: ParticipantKey, trickle: lk::TrickleRequest) {
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
        if let Some(connection) = self.peers.get(key) {
            connection.peer(role).rtc.add_remote_candidate(candidate);
        }
    }

    /// After a resume: dual mode restarts ICE with the next subscriber offer (the pending
    /// one, possibly lost with the old socket, is sent again first); single mode waits
    /// for the client's own restart offer and sends a lost requirement again.
    pub fn resume(&mut self, key: ParticipantKey) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        if let Some(single) = &mut connection.single {
            single.requested = false;
            self.request_sections(key);
            return;
        }
        let subscriber = &mut connection.subscriber;
        subscriber.ice_restart = true;
        if subscriber.pending_offer.is_some() {
            // The ICE restart follows its answer.
            subscriber.renegotiate = true;
            if let Some(offer) = subscriber.last_offer.clone() {
                self.said.push((key, Negotiated::Offer(offer)));
            }
        } else {
            self.negotiate_subscriber(key);
        }
    }

    /// Subscribes `subscriber` to a track and, unless `later`, negotiates at once.
    pub fn subscribe(
        &mut self,
        subscriber: ParticipantKey,
        track: forward::TrackKey,
        publisher_sid: &str,
        later: bool,
    ) {
        self.media.subscribe(subscriber, track, publisher_sid);
        if !later {
            self.negotiate_subscriber(subscriber);
        }
    }

    /// Queues a new subscriber offer with every track still to open, unless one is pending.
    pub fn negotiate_subscriber(&mut self, key: ParticipantKey) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        if connection.single.is_some() {
            // The server never offers on a single peer connection.
            self.request_sections(key);
            return;
        }
        let subscriber = &mut connection.subscriber;
        if subscriber.pending_offer.is_some() {
            subscriber.renegotiate = true;
            return;
        }
        let first = subscriber.reliable.is_none();
        let mut api = subscriber.rtc.sdp_api();
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
            subscriber.reliable = Some(reliable);
            subscriber.lossy = Some(lossy);
        }
        for i in 0..self.media.down_keys(key).len() {
            let d = self.media.down_keys(key)[i];
            let down = self.media.down(d);
            if down.state != DownState::ToOpen {
                continue;
            }
            // livekit clients read `<participant sid>|<track sid>` from the msid stream id.
            let mid = api.add_media(
                down.kind,
                Direction::SendOnly,
                Some(down.stream_id.clone()),
                Some(down.track_sid.clone()),
                None,
            );
            self.media.down_mut(d).state = DownState::Negotiating(mid);
        }
        for mid in subscriber.to_stop.drain(..) {
            api.stop_media(mid);
        }
        if subscriber.ice_restart {
            subscriber.ice_restart = false;
            api.ice_restart(true);
        }
        if !api.has_changes() {
            return;
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        subscriber.pending_offer = Some(pending);
        subscriber.offer_id += 1;
        let id = subscriber.offer_id;
        let sdp = offer.to_sdp_string();
        if let Some(ufrag) = sdp_ufrag(&sdp)
            && ufrag != subscriber.ufrag
        {
            subscriber.ufrag = ufrag.clone();
            self.ufrags.push((ufrag, key, Pc::Subscriber));
        }
        let offer = lk::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id,
            ..Default::default()
        };
        subscriber.last_offer = Some(offer.clone());
        self.peers.dirty.push((key, Pc::Subscriber));
        self.said.push((key, Negotiated::Offer(offer)));
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
        let Some(single) = self.peers.get(key).and_then(|c| c.single.as_mut()) else {
            return (answer.to_owned(), HashMap::new());
        };
        let mut taken: Vec<String> = single.retired.iter().map(Mid::to_string).collect();
        taken.extend(
            self.media
                .downs_of(key)
                .filter_map(|d| d.state.mid())
                .map(|mid| mid.to_string()),
        );
        let mut opened = Vec::new();
        let downs: Vec<_> = self.media.down_keys(key).to_vec();
        for &d in &downs {
            let down = self.media.down_mut(d);
            if down.state != DownState::ToOpen {
                continue;
            }
            let Some(slot) = slots
                .iter()
                .find(|s| s.kind == down.kind && !taken.contains(&s.mid))
            else {
                continue;
            };
            taken.push(slot.mid.clone());
            down.state = DownState::Open(Mid::from(slot.mid.as_str()));
            opened.push(d);
        }
        let mut assigned = HashMap::new();
        let mut mid_to_track_id = HashMap::new();
        for down in self.media.downs_of(key) {
            let DownState::Open(mid) = down.state else {
                continue;
            };
            assigned.insert(
                mid.to_string(),
                SlotMsid {
                    stream_id: down.stream_id.clone(),
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
        self.media.opened(now, &opened, &mut self.peers);
        (sdp, mid_to_track_id)
    }

    /// Single peer connection: asks the client to offer again when tracks wait for a slot
    /// or newly retired slots must be answered `inactive`, with the number of receive
    /// m-lines to add. At most one request is outstanding; each answer checks again.
    pub fn request_sections(&mut self, key: ParticipantKey) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        let Some(single) = &mut connection.single else {
            return;
        };
        if single.requested || !single.answered {
            return;
        }
        let waiting = |kind: MediaKind| {
            self.media
                .downs_of(key)
                .filter(|d| d.kind == kind && d.state == DownState::ToOpen)
                .count()
        };
        let (audio, video) = (waiting(MediaKind::Audio), waiting(MediaKind::Video));
        if audio == 0 && video == 0 && single.retired.len() == single.retired_answered {
            return;
        }
        let used: Vec<String> = self
            .media
            .downs_of(key)
            .filter_map(|d| d.state.mid())
            .chain(single.retired.iter().copied())
            .map(|mid| mid.to_string())
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
        tracing::debug!(sid = %connection.sid, ?requirement, "asking for an offer");
        self.said.push((key, Negotiated::Sections(requirement)));
    }

    /// A data channel the client opened on its publisher connection.
    pub fn channel_open(&mut self, key: ParticipantKey, id: ChannelId, label: &str) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        match label {
            "_reliable" => connection.publisher.reliable = Some(id),
            "_lossy" => connection.publisher.lossy = Some(id),
            _ => {}
        }
    }

    /// Whether a data packet arrived on the client's lossy channel.
    pub fn is_lossy(&mut self, key: ParticipantKey, id: ChannelId) -> bool {
        self.peers
            .get(key)
            .is_some_and(|c| c.publisher.lossy == Some(id))
    }

    /// Writes a data packet to what `key` receives on.
    pub fn write_data(&mut self, key: ParticipantKey, bytes: &[u8], lossy: bool) {
        let Some(connection) = self.peers.get(key) else {
            return;
        };
        // A single peer connection client receives on the channels it opened.
        let peer = connection.peer(Pc::Subscriber);
        let channel = if lossy { peer.lossy } else { peer.reliable };
        let Some(mut channel) = channel.and_then(|id| peer.rtc.channel(id)) else {
            return;
        };
        let _ = channel.write(true, bytes);
        self.peers.dirty.push((key, Pc::Subscriber));
    }

    // ----- the media core, with the connections it writes to ------------------------

    pub fn forward(&mut self, now: Instant, key: ParticipantKey, data: str0m::media::MediaData) {
        self.media.forward(now, key, data, &mut self.peers);
    }

    pub fn keyframe_asked(&mut self, now: Instant, key: ParticipantKey, mid: Mid) {
        self.media.keyframe_asked(now, key, mid, &mut self.peers);
    }

    pub fn estimate(&mut self, now: Instant, key: ParticipantKey, bps: u64) {
        self.media.estimate(now, key, bps, &mut self.peers);
    }

    pub fn allocate_bandwidth(&mut self, now: Instant, key: ParticipantKey) {
        self.media.allocate_bandwidth(now, key, &mut self.peers);
    }

    pub fn set_enabled(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        track_sids: &[String],
        enabled: bool,
    ) {
        self.media
            .set_enabled(now, key, track_sids, enabled, &mut self.peers);
    }
}
