//! Rooms and participants: joining, resuming, leaving and closing, permissions,
//! participant updates, data packets and chat, dynacast and speaker announcements. This
//! is the only module of `sfu/` that builds LiveKit signalling messages
//! (`signal_response::Message`): the layers below return what clients must be told
//! ([`Negotiated`], [`forward::DynacastChange`], [`speakers::Decision`]) and this layer
//! words it, in the order it happened, into the [`Output`] queue.
//!
//! Above [`super::negotiate`] (which it owns, and through it the media core); below the
//! engine, which routes packets, runs the timers and drains peer connections.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use slab::Slab;
use str0m::media::{MediaKind, Mid};
use str0m::net::Protocol;

use super::closed::ClosedRooms;
use super::data::TextStreams;
use super::data::{self, SeenChat};
use super::forward;
use super::negotiate::{Negotiated, Negotiator};
use super::participant::{
    JoinError, JoinRequest, Participant, ParticipantLimits, Relayed, SERVER_IDENTITY,
    server_participant_info, track_info,
};
use super::simulcast;
use super::speakers;
use super::{EngineEvent, ParticipantKey, random_id};

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
/// Stream attribute carrying the original author of server-injected chat.
pub const AUTHOR_ATTRIBUTE: &str = "tchap.author_name";
/// Engine limits and addresses, from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The addresses clients may send media to (host candidates), all on the one UDP port.
    pub candidates: Vec<SocketAddr>,
    pub max_participants_per_room: usize,
    pub max_participants: usize,
    pub ice_servers: Vec<lk::IceServer>,
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

/// Every room and participant, over the negotiation layer. See the module documentation.
pub struct Rooms {
    config: EngineConfig,
    participants: Slab<Participant>,
    rooms: HashMap<String, Room>,
    closed: ClosedRooms,
    /// How many tracks send each simulcast layer, as last measured.
    layers_received: [u32; super::simulcast::LAYERS],
    pub net: Negotiator,
    pub outputs: VecDeque<Output>,
    /// Participants removed since the engine last looked: its routes forget them.
    removed: Vec<ParticipantKey>,
}

/// What a server-side update changes in a participant (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ParticipantChange {
    pub name: Option<String>,
    pub metadata: Option<String>,
    pub attributes: HashMap<String, String>,
    pub permission: Option<lk::ParticipantPermission>,
}

impl Rooms {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            net: Negotiator::new(config.candidates.clone()),
            config,
            participants: Slab::new(),
            rooms: HashMap::new(),
            closed: ClosedRooms::default(),
            layers_received: [0; super::simulcast::LAYERS],
            outputs: VecDeque::new(),
            removed: Vec::new(),
        }
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// How many tracks send each simulcast layer (q, h, f), as last measured.
    pub fn layers_received(&self) -> [u32; super::simulcast::LAYERS] {
        self.layers_received
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn room_of(&self, key: ParticipantKey) -> Option<&str> {
        self.participants.get(key).map(|p| p.room.as_str())
    }

    pub fn sid_of(&self, key: ParticipantKey) -> Option<&str> {
        self.participants.get(key).map(|p| p.sid.as_str())
    }

    /// Media or signalling came from the participant.
    pub fn touch(&mut self, key: ParticipantKey, now: Instant) {
        if let Some(p) = self.participants.get_mut(key) {
            p.last_seen = now;
        }
    }

    /// Participants removed since the last call.
    pub fn take_removed(&mut self) -> std::vec::Drain<'_, ParticipantKey> {
        self.removed.drain(..)
    }

    // ----- joining and leaving -------------------------------------------------------

    /// Whether `identity` may join `room` now; `Some(key)` names the session it replaces.
    pub fn admit(&self, room: &str, identity: &str) -> Result<Option<ParticipantKey>, JoinError> {
        if identity == SERVER_IDENTITY {
            return Err(JoinError::ReservedIdentity(identity.to_owned()));
        }
        if self.closed.contains(room) {
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
                created_ms: crate::clock::now_ms(),
                members: Vec::new(),
                seen_chat: SeenChat::default(),
                server_participant: None,
                speakers: Vec::new(),
            });
        let single_pc = request.single_pc;
        let participant = Participant {
            sid: random_id("PA_", 12),
            identity: request.identity,
            name: request.name,
            metadata: request.metadata,
            attributes: request.attributes,
            room: request.room.clone(),
            joined_at_ms: crate::clock::now_ms(),
            permission: lk::ParticipantPermission {
                can_subscribe: request.can_subscribe,
                can_publish: request.can_publish,
                can_publish_data: request.can_publish_data,
                can_update_metadata: request.can_update_own_metadata,
                can_publish_sources: request.can_publish_sources,
                ..Default::default()
            },
            auto_subscribe: request.auto_subscribe,
            text_streams: TextStreams::default(),
            limits: ParticipantLimits::new(now),
            signal_connected: true,
            last_seen: now,
            version: 1,
        };
        let key = self.participants.insert(participant);
        room.members.push(key);
        self.net
            .open(now, key, &self.participants[key].sid, single_pc);
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

        let p = &self.participants[key];
        if p.auto_subscribe && p.permission.can_subscribe {
            for &other in self.rooms[&request.room]
                .members
                .iter()
                .filter(|&&k| k != key)
            {
                let publisher_sid = &self.participants[other].sid;
                let published: Vec<forward::TrackKey> =
                    self.net.media.published(other).map(|(t, _)| t).collect();
                for track in published {
                    self.net.subscribe(key, track, publisher_sid, true);
                }
            }
        }
        match request.publisher_offer {
            // Its answer assigns the slots for the tracks already in the room.
            Some(offer) if single_pc => self.net.publisher_offer(now, key, offer),
            // Slots are asked for once the client's first offer is answered.
            _ if single_pc => {}
            _ => self.net.negotiate_subscriber(key),
        }
        // The newcomer watches the room's simulcast tracks: paused layers resume now.
        self.update_dynacast(now);
        self.flush();
        Ok(key)
    }

    /// Tells the service a participant joined (once its first packets are queued).
    pub fn announce_joined(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get(key) else {
            return;
        };
        tracing::info!(room = %p.room, sid = %p.sid, identity = %p.identity, single_pc = self.net.connection(key).is_some_and(|c| c.is_single()), "participant joined");
        let p = &self.participants[key];
        self.outputs
            .push_back(Output::Event(EngineEvent::ParticipantJoined {
                room: p.room.clone(),
                sid: p.sid.clone(),
                identity: p.identity.clone(),
                name: p.name.clone(),
            }));
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
        self.net.resume(key);
        self.flush();
        Ok(key)
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
    pub fn remove(&mut self, key: ParticipantKey, why: &str) {
        if !self.participants.contains(key) {
            return;
        }
        // Described as it was, tracks included, before its media goes.
        let mut info = self.info(key);
        let p = self.participants.remove(key);
        self.removed.push(key);
        let mut members = Vec::new();
        if let Some(room) = self.rooms.get_mut(&p.room) {
            room.members.retain(|&k| k != key);
            room.speakers.retain(|s| *s != p.sid);
            members = room.members.clone();
        }
        // Subscribers drop the departed participant's tracks and stop their m-lines.
        self.net.close(key, &members);
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
        self.flush();
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

    /// Removes `identity` from `room` at a moderator's or the access rules' request: it
    /// is told it was removed (LiveKit's `PARTICIPANT_REMOVED`, which the page shows)
    /// and the room sees it leave. False when it is not there.
    pub fn remove_identity(&mut self, room_name: &str, identity: &str, why: &str) -> bool {
        let Some(key) = self.find_identity(room_name, identity) else {
            return false;
        };
        self.send(
            key,
            signal_response::Message::Leave(lk::LeaveRequest {
                reason: lk::DisconnectReason::ParticipantRemoved as i32,
                action: lk::leave_request::Action::Disconnect as i32,
                ..Default::default()
            }),
        );
        self.remove(key, why);
        true
    }

    /// The rooms open now: their descriptions (LiveKit's `Room`).
    pub fn list_rooms(&self) -> Vec<lk::Room> {
        let mut names: Vec<&String> = self.rooms.keys().collect();
        names.sort();
        names.into_iter().map(|name| self.room_info(name)).collect()
    }

    /// A room's participants as LiveKit describes them; `None` for a room not open.
    pub fn participants_of(&self, room_name: &str) -> Option<Vec<lk::ParticipantInfo>> {
        let room = self.rooms.get(room_name)?;
        Some(room.members.iter().map(|&k| self.info(k)).collect())
    }

    /// Mutes (or unmutes) one of a participant's tracks from the server side, chosen by
    /// sid or, without one, by source (`TrackSource`): forwarding stops at once, the
    /// participant's client is asked to mute too (livekit-client obeys), and the room
    /// sees the change. The track as it is now, or `None` when there is no such track.
    pub fn mute_published(
        &mut self,
        room_name: &str,
        identity: &str,
        track_sid: Option<&str>,
        source: Option<i32>,
        muted: bool,
    ) -> Option<lk::TrackInfo> {
        let key = self.find_identity(room_name, identity)?;
        let info = self
            .net
            .media
            .published(key)
            .map(|(_, t)| t.info.clone())
            .find(|t| match track_sid {
                Some(sid) => t.sid == sid,
                None => source.is_some_and(|s| t.source == s),
            })?;
        self.net.media.set_muted(key, &info.sid, muted);
        self.send(
            key,
            signal_response::Message::Mute(lk::MuteTrackRequest {
                sid: info.sid.clone(),
                muted,
            }),
        );
        let p = &mut self.participants[key];
        p.version += 1;
        let room = p.room.clone();
        let participant = self.info(key);
        self.broadcast_update(&room, usize::MAX, vec![participant.clone()]);
        participant.tracks.into_iter().find(|t| t.sid == info.sid)
    }

    /// Changes a participant from the server side (LiveKit's `UpdateParticipant`): name,
    /// metadata, attributes (an empty value removes one), permission. Everyone, the
    /// participant included, is told. `None` when it is not in the room.
    pub fn update_participant(
        &mut self,
        room_name: &str,
        identity: &str,
        update: ParticipantChange,
    ) -> Option<lk::ParticipantInfo> {
        let key = self.find_identity(room_name, identity)?;
        let p = &mut self.participants[key];
        if let Some(name) = update.name {
            p.name = name;
        }
        if let Some(metadata) = update.metadata {
            p.metadata = metadata;
        }
        for (k, v) in update.attributes {
            if v.is_empty() {
                p.attributes.remove(&k);
            } else {
                p.attributes.insert(k, v);
            }
        }
        if let Some(permission) = update.permission {
            p.permission = permission;
        }
        p.version += 1;
        let room = p.room.clone();
        let info = self.info(key);
        self.broadcast_update(&room, usize::MAX, vec![info.clone()]);
        Some(info)
    }

    /// Ends a room for good: every participant is told the room was deleted (the page
    /// shows its "meeting ended" screen) and removed, and later joins are refused.
    /// Returns how many participants were in it.
    pub fn close_room(&mut self, room_name: &str) -> usize {
        self.closed.insert(room_name);
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
        members.len()
    }

    // ----- signalling ------------------------------------------------------------------

    /// A signalling request from a participant (pings are answered by the signalling
    /// layer).
    pub fn signal(&mut self, now: Instant, key: ParticipantKey, message: signal_request::Message) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        p.last_seen = now;
        match message {
            signal_request::Message::Offer(offer) => self.net.publisher_offer(now, key, offer),
            signal_request::Message::Answer(answer) => {
                self.net.subscriber_answer(now, key, answer);
            }
            signal_request::Message::Trickle(trickle) => self.net.trickle(key, trickle),
            signal_request::Message::AddTrack(request) => self.on_add_track(key, request),
            signal_request::Message::Mute(mute) => self.on_mute(key, mute),
            signal_request::Message::Subscription(update) => {
                self.net
                    .set_enabled(now, key, &update.track_sids, update.subscribe);
                for pt in &update.participant_tracks {
                    self.net
                        .set_enabled(now, key, &pt.track_sids, update.subscribe);
                }
            }
            signal_request::Message::TrackSetting(settings) => {
                self.net
                    .set_enabled(now, key, &settings.track_sids, !settings.disabled);
                self.net.media.set_layer_wish(key, &settings);
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
        self.flush();
    }

    /// A participant asks to change its own name or attributes (see
    /// [`Participant::update_metadata`]); an accepted change goes to the whole room.
    fn on_update_metadata(
        &mut self,
        now: Instant,
        key: ParticipantKey,
        update: lk::UpdateParticipantMetadata,
    ) {
        let request_id = update.request_id;
        match self.participants[key].update_metadata(now, update) {
            Err((reason, message)) => self.refuse_request(key, request_id, reason, message),
            Ok(false) => {}
            Ok(true) => {
                let room = self.participants[key].room.clone();
                let info = self.info(key);
                self.broadcast_update(&room, usize::MAX, vec![info]);
            }
        }
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

    /// Dynacast: tells each simulcast publisher which layers someone watches (see
    /// [`forward::Forwarder::update_dynacast`]).
    pub fn update_dynacast(&mut self, now: Instant) {
        for change in self.net.media.update_dynacast(now) {
            let message =
                signal_response::Message::SubscribedQualityUpdate(simulcast::quality_update(
                    &change.track_sid,
                    change.codec.as_deref(),
                    change.highest,
                ));
            self.send(change.publisher, message);
        }
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
        let (kind, info) = track_info(&request);
        let added = self
            .net
            .media
            .add_track(key, &request.cid, kind, info.clone(), request.layers);
        if added.is_none() {
            return;
        }
        self.send(
            key,
            signal_response::Message::TrackPublished(lk::TrackPublishedResponse {
                cid: request.cid,
                track: Some(info),
            }),
        );
    }

    fn on_mute(&mut self, key: ParticipantKey, mute: lk::MuteTrackRequest) {
        if !self.net.media.set_muted(key, &mute.sid, mute.muted) {
            return;
        }
        let p = &mut self.participants[key];
        p.version += 1;
        let room = p.room.clone();
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
    }

    /// The client's publisher connection has a new m-line it sends on: the announced
    /// track it carries is published, and the room's members subscribe.
    pub fn media_added(&mut self, key: ParticipantKey, mid: Mid, kind: MediaKind) {
        let track_id = self
            .net
            .connection(key)
            .and_then(|c| c.publisher.rtc.media(mid).map(|m| m.track_id().to_owned()));
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let Some(track) = self.net.media.bind(key, mid, kind, track_id.as_deref()) else {
            tracing::debug!(sid = %p.sid, ?mid, "media without a matching AddTrack; not forwarded");
            return;
        };
        p.version += 1;
        let room = p.room.clone();
        let sid = p.sid.clone();
        tracing::info!(%sid, track = %self.net.media.track(track).sid, ?kind, "track published");
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
        let members = self.rooms[&room].members.clone();
        for other in members.into_iter().filter(|&k| k != key) {
            let s = &self.participants[other];
            if s.auto_subscribe && s.permission.can_subscribe {
                self.net.subscribe(other, track, &sid, false);
            }
        }
    }

    /// A published track went away (its m-line stopped sending).
    pub fn unpublish(&mut self, key: ParticipantKey, mid: Mid) {
        let Some((track, stopped)) = self.net.media.unpublish(key, mid) else {
            return;
        };
        let p = &mut self.participants[key];
        p.version += 1;
        let room = p.room.clone();
        tracing::info!(sid = %p.sid, track = %track.sid, "track unpublished");
        self.send(
            key,
            signal_response::Message::TrackUnpublished(lk::TrackUnpublishedResponse {
                track_sid: track.sid,
            }),
        );
        let info = self.info(key);
        self.broadcast_update(&room, key, vec![info]);
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        self.net.stop(&stopped, &members);
    }

    // ----- data ---------------------------------------------------------------------

    /// A data packet from a participant's channel, relayed within its budgets.
    pub fn on_data(&mut self, now: Instant, key: ParticipantKey, bytes: &[u8], lossy: bool) {
        let Some(p) = self.participants.get_mut(key) else {
            return;
        };
        let Some(Relayed {
            encoded,
            destinations,
            chat,
        }) = p.admit_data(now, bytes, lossy)
        else {
            return;
        };
        let p = &self.participants[key];
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        // A message to some participants only is relayed to them and to nothing else: it
        // is not an event, so it is never stored, mirrored into Matrix or published.
        if let Some(chat) = chat
            && !destinations.is_private()
            && room.seen_chat.insert(&chat.id)
        {
            self.outputs.push_back(Output::Event(EngineEvent::Chat {
                room: p.room.clone(),
                id: chat.id,
                sender_sid: p.sid.clone(),
                sender_identity: p.identity.clone(),
                sender_name: p.name.clone(),
                text: chat.text,
                timestamp_ms: chat.timestamp_ms,
            }));
        }
        for &member in room.members.iter().filter(|&&k| k != key) {
            let m = &self.participants[member];
            if destinations.includes(&m.identity, &m.sid) {
                self.net.write_data(member, &encoded, lossy);
            }
        }
    }

    /// Chat from the server side (the Matrix room), as the media-less server participant,
    /// with the original author in the stream's attributes. `id` becomes the stream id
    /// (the Matrix event id, so that a page that also loads the stored history shows the
    /// message once); a random one without it.
    pub fn inject_chat(
        &mut self,
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
                self.net.write_data(member, packet, false);
            }
        }
        true
    }

    // ----- periodic work --------------------------------------------------------------

    /// Every `period`: silent participants go, layers are measured and bandwidth shared
    /// out, dynacast and speakers are announced.
    pub fn housekeeping(&mut self, now: Instant, period: Duration) {
        let silent: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > SILENCE_LIMIT)
            .map(|(k, _)| k)
            .collect();
        for key in silent {
            self.remove(key, "silent");
        }
        self.layers_received = self.net.media.measure_layers(now, period);
        let keys: Vec<ParticipantKey> = self.participants.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.net.allocate_bandwidth(now, key);
        }
        self.update_dynacast(now);
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for name in rooms {
            let room = &self.rooms[&name];
            let voices = room.members.iter().filter_map(|&k| {
                Some((self.participants[k].sid.as_str(), self.net.media.voice(k)?))
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

    pub fn send_quality(&mut self) {
        self.flush();
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

    /// Words what the negotiation layer queued, in its order.
    pub fn flush(&mut self) {
        for (key, said) in self.net.take_said() {
            let message = match said {
                Negotiated::Offer(offer) => signal_response::Message::Offer(offer),
                Negotiated::Answer(answer) => signal_response::Message::Answer(answer),
                Negotiated::Sections(need) => {
                    signal_response::Message::MediaSectionsRequirement(need)
                }
            };
            self.outputs.push_back(Output::Signal {
                key,
                message: Box::new(message),
            });
        }
    }

    fn send(&mut self, key: ParticipantKey, message: signal_response::Message) {
        // What negotiation queued happened first.
        self.flush();
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
        let p = &self.participants[key];
        let tracks: Vec<lk::TrackInfo> = self
            .net
            .media
            .published(key)
            .map(|(_, t)| t.info.clone())
            .collect();
        lk::ParticipantInfo {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            state: lk::participant_info::State::Active as i32,
            is_publisher: !tracks.is_empty(),
            tracks,
            metadata: p.metadata.clone(),
            attributes: p.attributes.clone(),
            joined_at: p.joined_at_ms / 1000,
            joined_at_ms: p.joined_at_ms,
            version: p.version,
            permission: Some(p.permission.clone()),
            ..Default::default()
        }
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
