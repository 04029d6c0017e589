//! The driver: one task that owns the media sockets and the engine's clock, and carries
//! commands from signalling sessions in and signalling, packets and events out. The
//! engine itself is never shared, so nothing on the forwarding path takes a lock.
//!
//! Room events (joins, leaves, chat, room empty) go to exactly one consumer, the bridge,
//! and none is ever dropped: attendance and summaries are built from them. The driver
//! never waits for that consumer, since media would then stall behind the bridge's
//! database: events go into a bounded channel ([`EVENT_QUEUE`]) while it has room, and
//! beyond that wait in order in the driver's backlog, handed over as the bridge frees
//! room (`tchap_visio_sfu_events_backlog` shows its depth). The backlog is bounded by
//! what the engine itself admits: participants (`max_participants`) and their chat
//! (rate-limited per participant), a few hundred bytes per event.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use str0m::net::Protocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, EngineConfig, JoinError, JoinRequest, Output};
use super::gso;
use super::tcp::{self, TcpEvent};
use super::{EngineEvent, ParticipantKey};

/// Where a participant's signalling responses go (its WebSocket task). Bounded: a client
/// that stops reading fills it, and is then disconnected instead of buffered without end.
pub type SignalSink = mpsc::Sender<signal_response::Message>;

/// Signalling messages waiting for one participant's WebSocket. A join response, a
/// room's worth of participant updates and an offer fit many times over; a client that
/// lets this many pile up is not reading.
pub const SIGNAL_QUEUE: usize = 256;

/// A sink and its receiver, sized [`SIGNAL_QUEUE`].
pub fn signal_channel() -> (SignalSink, mpsc::Receiver<signal_response::Message>) {
    mpsc::channel(SIGNAL_QUEUE)
}

/// Room events waiting in the channel to the bridge; more wait in the driver's backlog.
pub const EVENT_QUEUE: usize = 1024;

/// The bridge's end of the SFU's room events: lossless, in the order they happened.
pub type EngineEvents = mpsc::Receiver<EngineEvent>;

/// What the rest of the service asks of the driver.
enum Command {
    /// Admit a participant into a room; its signalling goes to `sink`.
    Join {
        request: Box<JoinRequest>,
        sink: SignalSink,
        session: u64,
        reply: oneshot::Sender<Result<ParticipantKey, JoinError>>,
    },
    /// Reattach a new WebSocket to a participant whose signalling dropped.
    Resume {
        room: String,
        sid: String,
        identity: String,
        sink: SignalSink,
        session: u64,
        reply: oneshot::Sender<Result<ParticipantKey, JoinError>>,
    },
    /// A signalling message from a participant's WebSocket.
    Signal {
        key: ParticipantKey,
        message: Box<signal_request::Message>,
    },
    /// The WebSocket `session` of a participant closed.
    SignalLost { key: ParticipantKey, session: u64 },
    /// Chat from outside the room (Matrix), sent by the server participant.
    InjectChat {
        room: String,
        /// The stream id to use (the Matrix event id); random when absent.
        id: Option<String>,
        author: String,
        text: String,
        reply: oneshot::Sender<bool>,
    },
    /// How many participants are connected, server-wide.
    Stats { reply: oneshot::Sender<usize> },
    /// End a room: its participants are told and removed, and it cannot reopen.
    CloseRoom {
        room: String,
        reply: oneshot::Sender<usize>,
    },
    /// Remove one participant (a moderator's decision, or the access rules').
    RemoveIdentity {
        room: String,
        identity: String,
        why: String,
        reply: oneshot::Sender<bool>,
    },
    /// The open rooms.
    ListRooms {
        reply: oneshot::Sender<Vec<lk::Room>>,
    },
    /// A room's participants (`None`: not open).
    Participants {
        room: String,
        reply: oneshot::Sender<Option<Vec<lk::ParticipantInfo>>>,
    },
    /// Mute or unmute a participant's track from the server side.
    MuteTrack {
        room: String,
        identity: String,
        track_sid: Option<String>,
        source: Option<i32>,
        muted: bool,
        reply: oneshot::Sender<Option<lk::TrackInfo>>,
    },
    /// Change a participant from the server side.
    UpdateParticipant {
        room: String,
        identity: String,
        change: super::room::ParticipantChange,
        reply: oneshot::Sender<Option<lk::ParticipantInfo>>,
    },
    /// Whether a join would be admitted now, without joining.
    Admit {
        room: String,
        identity: String,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
}

/// A cloneable handle to the running SFU.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::UnboundedSender<Command>,
}

/// Why the SFU could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot bind the media UDP port {addr} (sfu.udp_port): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the media TCP port {addr} (sfu.tcp_port): {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl SfuHandle {
    /// Binds the media socket (and the ICE-TCP listener when `tcp_bind` is set) and
    /// starts the driver task. The room events come out of the one [`EngineEvents`]
    /// returned, from the first join on.
    pub async fn start(
        bind: SocketAddr,
        tcp_bind: Option<SocketAddr>,
        config: EngineConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, EngineEvents, tokio::task::JoinHandle<()>), DriverError> {
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|source| DriverError::Bind { addr: bind, source })?;
        let listener = match tcp_bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DriverError::BindTcp { addr, source })?,
            ),
            None => None,
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let handle = Self { commands };
        let task = tokio::spawn(run(socket, listener, config, rx, events, shutdown));
        Ok((handle, events_rx, task))
    }

    /// Joins a room; the participant's signalling arrives on `sink`. `session` names the
    /// WebSocket, so that a late close of a replaced socket is not taken for the current one.
    pub async fn join(
        &self,
        request: JoinRequest,
        sink: SignalSink,
        session: u64,
    ) -> Result<ParticipantKey, JoinError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Join {
            request: Box::new(request),
            sink,
            session,
            reply,
        });
        answer.await.unwrap_or(Err(JoinError::Stopped))
    }

    /// Reattaches signalling to a participant of `room` whose WebSocket dropped.
    pub async fn resume(
        &self,
        room: String,
        sid: String,
        identity: String,
        sink: SignalSink,
        session: u64,
    ) -> Result<ParticipantKey, JoinError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Resume {
            room,
            sid,
            identity,
            sink,
            session,
            reply,
        });
        answer.await.unwrap_or(Err(JoinError::Stopped))
    }

    pub fn signal(&self, key: ParticipantKey, message: signal_request::Message) {
        let _ = self.commands.send(Command::Signal {
            key,
            message: Box::new(message),
        });
    }

    /// The WebSocket `session` closed.
    pub fn signal_lost(&self, key: ParticipantKey, session: u64) {
        let _ = self.commands.send(Command::SignalLost { key, session });
    }

    /// Sends chat into a room as the server participant; false if the room is empty.
    pub async fn inject_chat(
        &self,
        room: String,
        id: Option<String>,
        author: String,
        text: String,
    ) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::InjectChat {
            room,
            id,
            author,
            text,
            reply,
        });
        answer.await.unwrap_or(false)
    }

    /// Whether a join would be admitted now (room and server limits), without joining.
    pub async fn admit(&self, room: String, identity: String) -> Result<(), JoinError> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Admit {
            room,
            identity,
            reply,
        });
        answer.await.unwrap_or(Err(JoinError::Stopped))
    }

    /// Ends a room: its participants are told the meeting is over and removed, and the
    /// room cannot be joined again. Returns how many were in it.
    pub async fn close_room(&self, room: String) -> usize {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::CloseRoom { room, reply });
        answer.await.unwrap_or(0)
    }

    /// Removes `identity` from `room`, telling it why LiveKit's way; false when it is
    /// not there.
    pub async fn remove_identity(&self, room: String, identity: String, why: String) -> bool {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::RemoveIdentity {
            room,
            identity,
            why,
            reply,
        });
        answer.await.unwrap_or(false)
    }

    /// The open rooms (empty when the SFU stopped).
    pub async fn list_rooms(&self) -> Vec<lk::Room> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::ListRooms { reply });
        answer.await.unwrap_or_default()
    }

    /// A room's participants; `None` when it is not open.
    pub async fn participants(&self, room: String) -> Option<Vec<lk::ParticipantInfo>> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Participants { room, reply });
        answer.await.ok().flatten()
    }

    /// Mutes or unmutes a participant's track (by sid, else by source); the track, or
    /// `None` when there is no such participant or track.
    pub async fn mute_track(
        &self,
        room: String,
        identity: String,
        track_sid: Option<String>,
        source: Option<i32>,
        muted: bool,
    ) -> Option<lk::TrackInfo> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::MuteTrack {
            room,
            identity,
            track_sid,
            source,
            muted,
            reply,
        });
        answer.await.ok().flatten()
    }

    /// Changes a participant; `None` when it is not in the room.
    pub async fn update_participant(
        &self,
        room: String,
        identity: String,
        change: super::room::ParticipantChange,
    ) -> Option<lk::ParticipantInfo> {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::UpdateParticipant {
            room,
            identity,
            change,
            reply,
        });
        answer.await.ok().flatten()
    }

    pub async fn participant_count(&self) -> usize {
        let (reply, answer) = oneshot::channel();
        let _ = self.commands.send(Command::Stats { reply });
        answer.await.unwrap_or(0)
    }
}

async fn run(
    socket: UdpSocket,
    listener: Option<TcpListener>,
    config: EngineConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<EngineEvent>,
    shutdown: CancellationToken,
) {
    let mut backlog = EventBacklog::default();
    let mut engine = Engine::new(config, Instant::now());
    let mut sinks: HashMap<ParticipantKey, (SignalSink, u64)> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut participants = usize::MAX;
    // Datagrams of one poll go out in GSO batches where the kernel supports it.
    let gso_state = match quinn_udp::UdpSocketState::new((&socket).into()) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(error = %e, "media socket without GSO; one send per packet");
            None
        }
    };
    let mut batch = gso::Batch::new(gso_state.as_ref().map_or(1, |s| s.max_gso_segments()));
    // ICE-TCP: connections run in tasks of their own and hand frames over this channel;
    // without a listener it stays empty (its sender lives on, so `recv` just waits).
    let (tcp_events, mut tcp_frames) = mpsc::channel::<TcpEvent>(1024);
    let mut connections = tcp::Connections::default();
    if let Some(listener) = listener {
        match listener.local_addr() {
            Ok(addr) => {
                engine.enable_tcp(addr.port());
                tokio::spawn(tcp::serve(
                    listener,
                    tcp_events.clone(),
                    tcp::Limits::default(),
                    shutdown.child_token(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "ICE-TCP listener unusable; UDP only"),
        }
    }
    loop {
        let deadline = tokio::time::Instant::from_std(engine.next_timeout());
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, source)) => {
                    let destination = engine.destination_for(source);
                    engine.handle_packet(Instant::now(), source, destination, &buf[..n]);
                }
                Err(e) => tracing::debug!(error = %e, "media socket receive error"),
            },
            Some(event) = tcp_frames.recv() => match event {
                TcpEvent::Frame { remote, frame } => {
                    if let Some(destination) = engine.tcp_destination_for(remote) {
                        engine.handle_tcp_packet(Instant::now(), remote, destination, &frame);
                    }
                }
                TcpEvent::Opened { id, remote, writer } => connections.opened(id, remote, writer),
                TcpEvent::Closed { id, remote } => connections.closed(id, remote),
            },
            command = commands.recv() => {
                let Some(command) = command else { return };
                handle_command(&mut engine, &mut sinks, command);
            }
            _ = tokio::time::sleep_until(deadline) => engine.handle_timeout(Instant::now()),
            room = events.reserve(), if !backlog.is_empty() => match room {
                Ok(permit) => backlog.hand_over(permit, &events),
                // The bridge stopped: nobody is left to tell.
                Err(_) => backlog.clear(),
            },
            _ = shutdown.cancelled() => return,
        }
        while let Some(output) = engine.poll_output() {
            match output {
                Output::Transmit {
                    proto: Protocol::Tcp,
                    destination,
                    contents,
                } => connections.send(destination, contents),
                Output::Transmit {
                    destination,
                    contents,
                    ..
                } => match &gso_state {
                    Some(state) => {
                        if !batch.push(destination, &contents) {
                            flush(&mut batch, state, &socket);
                            batch.push(destination, &contents);
                        }
                    }
                    None => {
                        // A full socket buffer drops the packet, as the network would.
                        if let Err(e) = socket.try_send_to(&contents, destination) {
                            tracing::trace!(error = %e, "media send dropped");
                        }
                    }
                },
                Output::Signal { key, message } => {
                    // Only the kind: SDPs carry ICE passwords, which stay out of logs.
                    tracing::trace!(key, kind = signal_kind(&message), "signal out");
                    let full = sinks.get(&key).is_some_and(|(sink, _)| {
                        matches!(
                            sink.try_send(*message),
                            Err(mpsc::error::TrySendError::Full(_))
                        )
                    });
                    if full {
                        // Its messages are not read: drop the sink (the WebSocket task
                        // closes once it has sent what it holds) and the participant.
                        sinks.remove(&key);
                        metrics::counter!("tchap_visio_signal_evicted_total", "reason" => "queue_full")
                            .increment(1);
                        engine.evict(
                            Instant::now(),
                            key,
                            "signalling queue full (client not reading)",
                        );
                    }
                }
                Output::CloseSignal { key } => {
                    sinks.remove(&key);
                }
                Output::Event(event) => {
                    record(&event);
                    backlog.send(&events, event);
                }
            }
        }
        if let Some(state) = &gso_state {
            flush(&mut batch, state, &socket);
        }
        // Only on change: a metrics lookup per packet costs more than the comparison.
        if engine.participant_count() != participants {
            participants = engine.participant_count();
            metrics::gauge!("tchap_visio_sfu_participants").set(participants as f64);
        }
    }
}

/// Room events the bridge's channel had no room for, oldest first. Once one waits here,
/// later ones queue behind it, so the bridge sees them in the order they happened.
#[derive(Default)]
struct EventBacklog {
    waiting: VecDeque<EngineEvent>,
}

impl EventBacklog {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Sends `event` now if nothing waits and the channel has room; otherwise queues it.
    fn send(&mut self, events: &mpsc::Sender<EngineEvent>, event: EngineEvent) {
        if self.waiting.is_empty() {
            match events.try_send(event) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(event)) => self.waiting.push_back(event),
                // No bridge (tests, check mode): nobody to tell.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        } else {
            self.waiting.push_back(event);
        }
        metrics::gauge!("tchap_visio_sfu_events_backlog").set(self.waiting.len() as f64);
    }

    /// Moves waiting events into the channel, the first into the slot `permit` holds,
    /// then as many as fit.
    fn hand_over(
        &mut self,
        permit: mpsc::Permit<'_, EngineEvent>,
        events: &mpsc::Sender<EngineEvent>,
    ) {
        let first = self
            .waiting
            .pop_front()
            .expect("a slot is only reserved while events wait");
        permit.send(first);
        while let Some(event) = self.waiting.pop_front() {
            if let Err(e) = events.try_send(event) {
                if let mpsc::error::TrySendError::Full(event) = e {
                    self.waiting.push_front(event);
                }
                break;
            }
        }
        metrics::gauge!("tchap_visio_sfu_events_backlog").set(self.waiting.len() as f64);
    }

    fn clear(&mut self) {
        self.waiting.clear();
        metrics::gauge!("tchap_visio_sfu_events_backlog").set(0.0);
    }
}

/// Sends the batched datagrams; a full socket buffer drops them, as the network would.
fn flush(batch: &mut gso::Batch, state: &quinn_udp::UdpSocketState, socket: &UdpSocket) {
    if let Err(e) = batch.flush(state, socket) {
        tracing::trace!(error = %e, "media send dropped");
    }
}

fn handle_command(
    engine: &mut Engine,
    sinks: &mut HashMap<ParticipantKey, (SignalSink, u64)>,
    command: Command,
) {
    let now = Instant::now();
    match command {
        Command::Join {
            request,
            sink,
            session,
            reply,
        } => {
            // Outputs stay queued in the engine until this returns, so registering the
            // sink afterwards still delivers the join response to it.
            let result = engine.join(now, *request);
            if let Ok(key) = result {
                sinks.insert(key, (sink, session));
            }
            let _ = reply.send(result);
        }
        Command::Resume {
            room,
            sid,
            identity,
            sink,
            session,
            reply,
        } => {
            let result = engine.resume(now, &room, &sid, &identity);
            if let Ok(key) = result {
                sinks.insert(key, (sink, session));
            }
            let _ = reply.send(result);
        }
        Command::Signal { key, message } => engine.signal(now, key, *message),
        Command::SignalLost { key, session } => {
            // Only if the closing socket is still the participant's current one.
            if sinks
                .get(&key)
                .is_some_and(|(_, current)| *current == session)
            {
                sinks.remove(&key);
                engine.signal_lost(key);
            }
        }
        Command::CloseRoom { room, reply } => {
            let _ = reply.send(engine.close_room(now, &room));
        }
        Command::ListRooms { reply } => {
            let _ = reply.send(engine.list_rooms());
        }
        Command::Participants { room, reply } => {
            let _ = reply.send(engine.participants_of(&room));
        }
        Command::MuteTrack {
            room,
            identity,
            track_sid,
            source,
            muted,
            reply,
        } => {
            let _ = reply.send(engine.mute_published(
                now,
                &room,
                &identity,
                track_sid.as_deref(),
                source,
                muted,
            ));
        }
        Command::UpdateParticipant {
            room,
            identity,
            change,
            reply,
        } => {
            let _ = reply.send(engine.update_participant(now, &room, &identity, change));
        }
        Command::RemoveIdentity {
            room,
            identity,
            why,
            reply,
        } => {
            let _ = reply.send(engine.remove_identity(now, &room, &identity, &why));
        }
        Command::InjectChat {
            room,
            id,
            author,
            text,
            reply,
        } => {
            let _ = reply.send(engine.inject_chat(now, &room, id.as_deref(), &author, &text));
        }
        Command::Admit {
            room,
            identity,
            reply,
        } => {
            let _ = reply.send(engine.admit(&room, &identity).map(|_| ()));
        }
        Command::Stats { reply } => {
            let _ = reply.send(engine.participant_count());
        }
    }
}

fn signal_kind(message: &signal_response::Message) -> &'static str {
    use signal_response::Message as M;
    match message {
        M::Join(_) => "join",
        M::Offer(_) => "offer",
        M::Answer(_) => "answer",
        M::Update(_) => "participant_update",
        M::TrackPublished(_) => "track_published",
        M::TrackUnpublished(_) => "track_unpublished",
        M::Leave(_) => "leave",
        M::Reconnect(_) => "reconnect",
        M::SpeakersChanged(_) => "speakers_changed",
        M::ConnectionQuality(_) => "connection_quality",
        M::RoomUpdate(_) => "room_update",
        _ => "other",
    }
}

fn record(event: &EngineEvent) {
    match event {
        EngineEvent::Chat { .. } => {
            metrics::counter!("tchap_visio_chat_messages_total").increment(1)
        }
        EngineEvent::ParticipantJoined { .. } => {
            metrics::counter!("tchap_visio_sfu_joins_total").increment(1)
        }
        EngineEvent::ParticipantLeft { .. } => {
            metrics::counter!("tchap_visio_sfu_leaves_total").increment(1)
        }
        EngineEvent::RoomEmpty { .. } => {}
    }
}
