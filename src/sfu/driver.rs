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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use str0m::net::Protocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, EngineConfig, JoinError, JoinRequest, Output};
use super::gso;
use super::shards::{self, Placement};
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
    /// Whether this shard made the local ICE ufrag (to hand it an ICE-TCP connection).
    OwnsUfrag {
        ufrag: String,
        reply: oneshot::Sender<bool>,
    },
}

/// A cloneable handle to the running SFU: it routes each command to the shard that
/// holds the room or the participant concerned.
#[derive(Clone)]
pub struct SfuHandle {
    shards: Arc<[mpsc::UnboundedSender<Command>]>,
    placement: Arc<Mutex<Placement>>,
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
    #[error("cannot start the media thread for shard {shard}: {source}")]
    Thread {
        shard: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Locks the placement; a shard that panicked while holding it left it consistent (every
/// change is one call), so a poisoned lock is used as is.
fn lock(placement: &Mutex<Placement>) -> MutexGuard<'_, Placement> {
    placement
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SfuHandle {
    /// Binds the media sockets (one UDP port per shard: `bind`'s port for shard 0, the
    /// next ports for the next shards; any free ports when `bind`'s port is 0) and the
    /// ICE-TCP listener when `tcp_bind` is set, and starts one thread per shard, each
    /// with its own engine. The room events of every shard come out of the one
    /// [`EngineEvents`] returned, from the first join on; the task returned ends when
    /// every shard has stopped.
    pub async fn start(
        bind: SocketAddr,
        tcp_bind: Option<SocketAddr>,
        config: EngineConfig,
        shard_count: usize,
        shutdown: CancellationToken,
    ) -> Result<(Self, EngineEvents, tokio::task::JoinHandle<()>), DriverError> {
        let shard_count = shard_count.clamp(1, shards::MAX_SHARDS);
        let mut sockets = Vec::with_capacity(shard_count);
        for shard in 0..shard_count {
            let addr = if bind.port() == 0 {
                bind
            } else {
                let port = u16::try_from(usize::from(bind.port()) + shard).map_err(|_| {
                    DriverError::Bind {
                        addr: bind,
                        source: std::io::Error::other("the shards' ports run past 65535"),
                    }
                })?;
                SocketAddr::new(bind.ip(), port)
            };
            let socket = std::net::UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|source| DriverError::Bind { addr, source })?;
            enlarge_buffers(&socket, shard);
            sockets.push(socket);
        }
        let listener = match tcp_bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DriverError::BindTcp { addr, source })?,
            ),
            None => None,
        };
        let tcp_port = listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let placement = Arc::new(Mutex::new(Placement::new(
            shard_count,
            config.max_participants,
        )));
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let mut senders = Vec::with_capacity(shard_count);
        let mut tcp_senders = Vec::with_capacity(shard_count);
        let mut stopped = Vec::with_capacity(shard_count);
        for (shard, socket) in sockets.into_iter().enumerate() {
            let (commands, rx) = mpsc::unbounded_channel();
            let (tcp_events, tcp_rx) = mpsc::channel::<TcpEvent>(1024);
            let (done, stopped_rx) = oneshot::channel::<()>();
            let mut shard_config = config.clone();
            // Each shard's candidates name its own port.
            let port = socket.local_addr().map(|a| a.port()).unwrap_or(bind.port());
            for candidate in &mut shard_config.candidates {
                if bind.port() == 0 {
                    candidate.set_port(port);
                } else {
                    candidate.set_port(candidate.port().saturating_add(port - bind.port()));
                }
            }
            let context = ShardContext {
                index: shard,
                placement: placement.clone(),
            };
            let io = ShardIo {
                socket,
                tcp_port,
                tcp_frames: tcp_rx,
            };
            let events = events.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("sfu-shard-{shard}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime builds (it needs no threads)");
                    runtime.block_on(run(io, shard_config, rx, events, shutdown, context));
                    let _ = done.send(());
                })
                .map_err(|source| DriverError::Thread { shard, source })?;
            senders.push(commands);
            tcp_senders.push(tcp_events);
            stopped.push(stopped_rx);
        }
        let handle = Self {
            shards: senders.into(),
            placement,
        };
        if let Some(listener) = listener {
            let (tcp_events, tcp_rx) = mpsc::channel::<TcpEvent>(1024);
            tokio::spawn(tcp::serve(
                listener,
                tcp_events,
                tcp::Limits::default(),
                shutdown.child_token(),
            ));
            tokio::spawn(dispatch_tcp(tcp_rx, tcp_senders, handle.shards.clone()));
        }
        let task = tokio::spawn(async move {
            for shard in stopped {
                let _ = shard.await;
            }
        });
        Ok((handle, events_rx, task))
    }

    fn send(&self, shard: usize, command: Command) {
        let _ = self.shards[shard].send(command);
    }

    /// The shard holding `room`, if it is open.
    fn shard_of(&self, room: &str) -> Option<usize> {
        lock(&self.placement).shard_of(room)
    }

    /// Joins a room; the participant's signalling arrives on `sink`. `session` names the
    /// WebSocket, so that a late close of a replaced socket is not taken for the current one.
    pub async fn join(
        &self,
        request: JoinRequest,
        sink: SignalSink,
        session: u64,
    ) -> Result<ParticipantKey, JoinError> {
        let shard = lock(&self.placement).route_join(&request.room)?;
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::Join {
                request: Box::new(request),
                sink,
                session,
                reply,
            },
        );
        let local = answer.await.unwrap_or(Err(JoinError::Stopped))?;
        Ok(shards::global_key(self.shards.len(), shard, local))
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
        let Some(shard) = self.shard_of(&room) else {
            return Err(JoinError::UnknownSession);
        };
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::Resume {
                room,
                sid,
                identity,
                sink,
                session,
                reply,
            },
        );
        let local = answer.await.unwrap_or(Err(JoinError::Stopped))?;
        Ok(shards::global_key(self.shards.len(), shard, local))
    }

    pub fn signal(&self, key: ParticipantKey, message: signal_request::Message) {
        let (shard, key) = shards::split_key(self.shards.len(), key);
        self.send(
            shard,
            Command::Signal {
                key,
                message: Box::new(message),
            },
        );
    }

    /// The WebSocket `session` closed.
    pub fn signal_lost(&self, key: ParticipantKey, session: u64) {
        let (shard, key) = shards::split_key(self.shards.len(), key);
        self.send(shard, Command::SignalLost { key, session });
    }

    /// Sends chat into a room as the server participant; false if the room is empty.
    pub async fn inject_chat(
        &self,
        room: String,
        id: Option<String>,
        author: String,
        text: String,
    ) -> bool {
        let Some(shard) = self.shard_of(&room) else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::InjectChat {
                room,
                id,
                author,
                text,
                reply,
            },
        );
        answer.await.unwrap_or(false)
    }

    /// Whether a join would be admitted now (room and server limits), without joining.
    pub async fn admit(&self, room: String, identity: String) -> Result<(), JoinError> {
        // The same checks as a join's, without counting one on its way.
        let shard = lock(&self.placement).route_admit(&room)?;
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::Admit {
                room,
                identity,
                reply,
            },
        );
        answer.await.unwrap_or(Err(JoinError::Stopped))
    }

    /// Ends a room: its participants are told the meeting is over and removed, and the
    /// room cannot be joined again. Returns how many were in it.
    pub async fn close_room(&self, room: String) -> usize {
        let Some(shard) = lock(&self.placement).close(&room) else {
            return 0;
        };
        let (reply, answer) = oneshot::channel();
        self.send(shard, Command::CloseRoom { room, reply });
        answer.await.unwrap_or(0)
    }

    /// Removes `identity` from `room`, telling it why LiveKit's way; false when it is
    /// not there.
    pub async fn remove_identity(&self, room: String, identity: String, why: String) -> bool {
        let Some(shard) = self.shard_of(&room) else {
            return false;
        };
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::RemoveIdentity {
                room,
                identity,
                why,
                reply,
            },
        );
        answer.await.unwrap_or(false)
    }

    /// The open rooms (empty when the SFU stopped).
    pub async fn list_rooms(&self) -> Vec<lk::Room> {
        let mut rooms = Vec::new();
        for shard in 0..self.shards.len() {
            let (reply, answer) = oneshot::channel();
            self.send(shard, Command::ListRooms { reply });
            rooms.extend(answer.await.unwrap_or_default());
        }
        rooms
    }

    /// A room's participants; `None` when it is not open.
    pub async fn participants(&self, room: String) -> Option<Vec<lk::ParticipantInfo>> {
        let shard = self.shard_of(&room)?;
        let (reply, answer) = oneshot::channel();
        self.send(shard, Command::Participants { room, reply });
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
        let shard = self.shard_of(&room)?;
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::MuteTrack {
                room,
                identity,
                track_sid,
                source,
                muted,
                reply,
            },
        );
        answer.await.ok().flatten()
    }

    /// Changes a participant; `None` when it is not in the room.
    pub async fn update_participant(
        &self,
        room: String,
        identity: String,
        change: super::room::ParticipantChange,
    ) -> Option<lk::ParticipantInfo> {
        let shard = self.shard_of(&room)?;
        let (reply, answer) = oneshot::channel();
        self.send(
            shard,
            Command::UpdateParticipant {
                room,
                identity,
                change,
                reply,
            },
        );
        answer.await.ok().flatten()
    }

    pub async fn participant_count(&self) -> usize {
        let mut count = 0;
        for shard in 0..self.shards.len() {
            let (reply, answer) = oneshot::channel();
            self.send(shard, Command::Stats { reply });
            count += answer.await.unwrap_or(0);
        }
        count
    }

    /// Participants connected and rooms open, without asking the shards (a cluster
    /// node's heartbeat reads it every few seconds).
    pub fn load(&self) -> (usize, usize) {
        lock(&self.placement).load()
    }

    /// How many shards (engines, threads, UDP ports) the SFU runs.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard holding `room`, if it is open (for tests and diagnostics).
    pub fn room_shard(&self, room: &str) -> Option<usize> {
        self.shard_of(room)
    }
}

/// What a shard is, beside its engine: its index and the shared placement.
struct ShardContext {
    index: usize,
    placement: Arc<Mutex<Placement>>,
}

/// A shard's sockets: its own UDP port, and the ICE-TCP connections handed to it.
struct ShardIo {
    socket: std::net::UdpSocket,
    /// The shared ICE-TCP listener's port, if there is one.
    tcp_port: Option<u16>,
    tcp_frames: mpsc::Receiver<TcpEvent>,
}

/// Hands each ICE-TCP connection to the shard that made the local ufrag its first STUN
/// request names (every shard shares the one TCP port), then carries its frames there.
/// Frames that arrive before a shard claims the connection are dropped: ICE
/// retransmits its checks.
async fn dispatch_tcp(
    mut events: mpsc::Receiver<TcpEvent>,
    shards: Vec<mpsc::Sender<TcpEvent>>,
    commands: Arc<[mpsc::UnboundedSender<Command>]>,
) {
    // Opened, not yet claimed: remote → (id, writer).
    let mut unclaimed: HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>)> = HashMap::new();
    // Claimed: remote → shard, and id → shard for the close.
    let mut by_remote: HashMap<SocketAddr, usize> = HashMap::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            TcpEvent::Opened { id, remote, writer } => {
                if shards.len() == 1 {
                    by_id.insert(id, 0);
                    by_remote.insert(remote, 0);
                    let _ = shards[0]
                        .send(TcpEvent::Opened { id, remote, writer })
                        .await;
                } else {
                    // A new connection from the same address supersedes the old one.
                    by_remote.remove(&remote);
                    unclaimed.insert(remote, (id, writer));
                }
            }
            TcpEvent::Frame { remote, frame } => {
                if let Some(&shard) = by_remote.get(&remote) {
                    let _ = shards[shard].send(TcpEvent::Frame { remote, frame }).await;
                    continue;
                }
                let Some(ufrag) = super::stun::local_ufrag(&frame) else {
                    continue;
                };
                let Some(shard) = owner_of(&commands, ufrag).await else {
                    continue;
                };
                let Some((id, writer)) = unclaimed.remove(&remote) else {
                    continue;
                };
                by_remote.insert(remote, shard);
                by_id.insert(id, shard);
                let _ = shards[shard]
                    .send(TcpEvent::Opened { id, remote, writer })
                    .await;
                let _ = shards[shard].send(TcpEvent::Frame { remote, frame }).await;
            }
            TcpEvent::Closed { id, remote } => {
                if unclaimed.get(&remote).is_some_and(|(open, _)| *open == id) {
                    unclaimed.remove(&remote);
                }
                if let Some(shard) = by_id.remove(&id) {
                    if by_remote.get(&remote) == Some(&shard) {
                        by_remote.remove(&remote);
                    }
                    let _ = shards[shard].send(TcpEvent::Closed { id, remote }).await;
                }
            }
        }
    }
}

/// The shard whose engine made local ufrag `ufrag`.
async fn owner_of(commands: &[mpsc::UnboundedSender<Command>], ufrag: &str) -> Option<usize> {
    for (shard, commands) in commands.iter().enumerate() {
        let (reply, answer) = oneshot::channel();
        let _ = commands.send(Command::OwnsUfrag {
            ufrag: ufrag.to_owned(),
            reply,
        });
        if answer.await.unwrap_or(false) {
            return Some(shard);
        }
    }
    None
}

/// What a media socket asks the kernel for each way. The default (about 208 KiB) holds
/// ~150 full-size datagrams: at 200 participants a shard busy for a few milliseconds
/// lost 0.5–1.25 % of the audio it was sent there (docs/benchmarks.md).
const MEDIA_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Asks for [`MEDIA_SOCKET_BUFFER`] each way; the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`, which the log names when it does.
fn enlarge_buffers(socket: &std::net::UdpSocket, shard: usize) {
    let socket = socket2::SockRef::from(socket);
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = |size: std::io::Result<usize>| size.map(|s| s / 2).unwrap_or(0);
    let receive = socket
        .set_recv_buffer_size(MEDIA_SOCKET_BUFFER)
        .and_then(|()| socket.recv_buffer_size());
    let send = socket
        .set_send_buffer_size(MEDIA_SOCKET_BUFFER)
        .and_then(|()| socket.send_buffer_size());
    let (receive, send) = (granted(receive), granted(send));
    if receive < MEDIA_SOCKET_BUFFER || send < MEDIA_SOCKET_BUFFER {
        tracing::info!(
            shard,
            receive_bytes = receive,
            send_bytes = send,
            wanted_bytes = MEDIA_SOCKET_BUFFER,
            "media socket buffers capped by the kernel: raise net.core.rmem_max and \
             net.core.wmem_max (sysctl) to {MEDIA_SOCKET_BUFFER} to absorb bursts"
        );
    }
}

/// Datagrams read in one batch at most (recvmmsg); every readable one is read before
/// the engine's timers run, within [`RECV_BATCHES`] batches per wake-up so that timers
/// and commands are never starved under a flood.
const RECV_BATCHES: usize = 8;
/// A receive buffer: one datagram, or with GRO up to 64 segments of one sender.
const RECV_BUFFER: usize = 64 * 1024;

/// A shard's receive buffers, reused for every read.
struct Receiver {
    state: Option<quinn_udp::UdpSocketState>,
    buffers: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl Receiver {
    fn new(state: Option<quinn_udp::UdpSocketState>) -> Self {
        // Without the socket state (no GRO, no recvmmsg), one datagram per read.
        let (count, size) = match &state {
            Some(state) if state.gro_segments() > 1 => (quinn_udp::BATCH_SIZE, RECV_BUFFER),
            Some(_) => (quinn_udp::BATCH_SIZE, 2048),
            None => (1, 2048),
        };
        Self {
            state,
            buffers: vec![vec![0; size]; count],
            meta: vec![quinn_udp::RecvMeta::default(); count],
        }
    }

    /// Reads what is readable now, without waiting, into the engine: up to
    /// [`RECV_BATCHES`] batches. Returns how many datagrams were handled.
    fn drain(&mut self, socket: &UdpSocket, engine: &mut Engine) -> usize {
        let mut handled = 0;
        for _ in 0..RECV_BATCHES {
            let read = match &self.state {
                Some(state) => {
                    let mut slices: Vec<std::io::IoSliceMut<'_>> = self
                        .buffers
                        .iter_mut()
                        .map(|b| std::io::IoSliceMut::new(b))
                        .collect();
                    let meta = &mut self.meta;
                    socket.try_io(tokio::io::Interest::READABLE, || {
                        state.recv(socket.into(), &mut slices, meta)
                    })
                }
                None => socket
                    .try_recv_from(&mut self.buffers[0])
                    .map(|(len, addr)| {
                        self.meta[0].addr = addr;
                        self.meta[0].len = len;
                        self.meta[0].stride = len;
                        1
                    }),
            };
            let count = match read {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return handled,
                Err(e) => {
                    tracing::debug!(error = %e, "media socket receive error");
                    return handled;
                }
            };
            let now = Instant::now();
            for (meta, buffer) in self.meta.iter().zip(&self.buffers).take(count) {
                // IPv4-mapped senders (a dual-stack socket) are routed as IPv4.
                let source = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
                let destination = engine.destination_for(source);
                let stride = meta.stride.max(1);
                for datagram in buffer[..meta.len].chunks(stride) {
                    engine.handle_packet(now, source, destination, datagram);
                    handled += 1;
                }
            }
        }
        handled
    }
}

async fn run(
    io: ShardIo,
    config: EngineConfig,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<EngineEvent>,
    shutdown: CancellationToken,
    shard: ShardContext,
) {
    let ShardIo {
        socket,
        tcp_port,
        mut tcp_frames,
    } = io;
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(shard = shard.index, error = %e, "media socket unusable; shard stopped");
            return;
        }
    };
    let mut backlog = EventBacklog::new(shard.index);
    let mut engine = Engine::new(config, Instant::now());
    let mut sinks: HashMap<ParticipantKey, (SignalSink, u64)> = HashMap::new();
    let mut participants = usize::MAX;
    let mut layers_received = None;
    // Datagrams of one turn go out together (GSO and sendmmsg) where the kernel
    // supports it, and come in by recvmmsg (with GRO) where it does.
    let gso_state = match quinn_udp::UdpSocketState::new((&socket).into()) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!(error = %e, "media socket without GSO; one datagram per message");
            None
        }
    };
    let mut outgoing = gso::Outgoing::new(&socket, gso_state.map_or(1, |s| s.max_gso_segments()));
    let mut receiver = Receiver::new(quinn_udp::UdpSocketState::new((&socket).into()).ok());
    let mut connections = tcp::Connections::default();
    if let Some(port) = tcp_port {
        engine.enable_tcp(port);
    }
    // One timer, moved rather than made anew on every turn of the loop.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(engine.next_timeout()));
    tokio::pin!(sleep);
    loop {
        let deadline = tokio::time::Instant::from_std(engine.next_timeout());
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            readable = socket.readable() => match readable {
                Ok(()) => {
                    receiver.drain(&socket, &mut engine);
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
                handle_command(&mut engine, &mut sinks, command, &shard);
            }
            () = &mut sleep => {
                // What arrived meanwhile goes to its peers before their timers run.
                receiver.drain(&socket, &mut engine);
                engine.handle_timeout(Instant::now());
            }
            room = events.reserve(), if !backlog.is_empty() => match room {
                Ok(permit) => backlog.hand_over(permit, &events),
                // The bridge stopped: nobody is left to tell.
                Err(_) => backlog.clear(),
            },
            () = shutdown.cancelled() => return,
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
                } => outgoing.push(&socket, destination, contents),
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
                    if let EngineEvent::RoomEmpty { room } = &event {
                        lock(&shard.placement).room_empty(room, shard.index);
                    }
                    backlog.send(&events, event);
                }
            }
        }
        outgoing.flush(&socket);
        // Only on change: a metrics lookup per packet costs more than the comparison.
        if engine.participant_count() != participants {
            participants = engine.participant_count();
            let total = lock(&shard.placement).report(shard.index, participants);
            metrics::gauge!("tchap_visio_sfu_participants").set(total as f64);
            metrics::gauge!("tchap_visio_sfu_shard_participants", "shard" => shard.index.to_string())
                .set(participants as f64);
        }
        if layers_received != Some(engine.layers_received()) {
            let counts = engine.layers_received();
            layers_received = Some(counts);
            for (rid, count) in super::simulcast::LAYER_RIDS.iter().zip(counts) {
                metrics::gauge!(
                    "tchap_visio_sfu_simulcast_layers_received",
                    "rid" => *rid,
                    "shard" => shard.index.to_string()
                )
                .set(f64::from(count));
            }
        }
    }
}

/// Room events the bridge's channel had no room for, oldest first. Once one waits here,
/// later ones queue behind it, so the bridge sees them in the order they happened.
#[derive(Default)]
struct EventBacklog {
    waiting: VecDeque<EngineEvent>,
    /// The shard's index, the gauge's label.
    shard: String,
}

impl EventBacklog {
    fn new(shard: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            shard: shard.to_string(),
        }
    }

    fn publish_depth(&self) {
        metrics::gauge!("tchap_visio_sfu_events_backlog", "shard" => self.shard.clone())
            .set(self.waiting.len() as f64);
    }

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
        self.publish_depth();
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
        self.publish_depth();
    }

    fn clear(&mut self) {
        self.waiting.clear();
        self.publish_depth();
    }
}

/// Sends the batched datagrams; a full socket buffer drops them, as the network would.
fn handle_command(
    engine: &mut Engine,
    sinks: &mut HashMap<ParticipantKey, (SignalSink, u64)>,
    command: Command,
    shard: &ShardContext,
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
            let room = request.room.clone();
            let result = engine.join(now, *request);
            if let Ok(key) = result {
                sinks.insert(key, (sink, session));
            }
            {
                let mut placement = lock(&shard.placement);
                placement.join_done(&room, shard.index, engine.has_room(&room));
                placement.report(shard.index, engine.participant_count());
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
        Command::OwnsUfrag { ufrag, reply } => {
            let _ = reply.send(engine.owns_ufrag(&ufrag));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::testing::join_request;

    fn request(room: &str, identity: &str) -> JoinRequest {
        JoinRequest {
            room: room.into(),
            ..join_request(identity)
        }
    }

    /// The media socket gets the larger buffers up to what the kernel allows
    /// (`net.core.rmem_max`), not the ~208 KiB default that lost audio at 200.
    #[test]
    fn media_sockets_get_the_larger_buffers_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let default = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("size");
        enlarge_buffers(&socket, 0);
        let limit: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let granted = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .expect("size");
        let expected = (2 * limit.min(MEDIA_SOCKET_BUFFER)).max(default);
        assert_eq!(granted, expected, "default {default}, rmem_max {limit}");
    }

    /// Two shards behind one handle: rooms on different engines, keys that reach the
    /// right one, a server-wide limit, ended rooms refused wherever they were.
    #[tokio::test]
    async fn rooms_spread_over_shards_behind_one_handle() {
        let config = EngineConfig {
            candidates: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            max_participants_per_room: 10,
            max_participants: 3,
            ice_servers: Vec::new(),
        };
        let shutdown = CancellationToken::new();
        let (sfu, _events, task) = SfuHandle::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
            config,
            2,
            shutdown.clone(),
        )
        .await
        .expect("two shards on loopback ports");
        assert_eq!(sfu.shard_count(), 2);
        let (sink, _signals) = signal_channel();
        let a = sfu
            .join(request("a", "ana"), sink.clone(), 1)
            .await
            .expect("ana joins");
        let b = sfu
            .join(request("b", "bea"), sink.clone(), 2)
            .await
            .expect("bea joins");
        let (shard_a, shard_b) = (sfu.room_shard("a"), sfu.room_shard("b"));
        assert!(
            shard_a.is_some() && shard_b.is_some() && shard_a != shard_b,
            "{shard_a:?} {shard_b:?}"
        );
        assert_eq!(shards::split_key(2, a).0, shard_a.expect("placed"));
        assert_eq!(shards::split_key(2, b).0, shard_b.expect("placed"));
        // Joining a room stays on its shard; the third participant fills the server.
        sfu.join(request("a", "ali"), sink.clone(), 3)
            .await
            .expect("ali joins");
        assert_eq!(sfu.room_shard("a"), shard_a);
        assert_eq!(sfu.participant_count().await, 3);
        assert_eq!(
            sfu.join(request("c", "cyd"), sink.clone(), 4).await,
            Err(JoinError::ServerFull),
            "the limit counts both shards"
        );
        assert_eq!(
            sfu.admit("c".into(), "cyd".into()).await,
            Err(JoinError::ServerFull)
        );
        // Commands by room and by key reach the shard that holds them.
        let names = |rooms: Vec<lk::Room>| {
            let mut names: Vec<String> = rooms.into_iter().map(|r| r.name).collect();
            names.sort();
            names
        };
        assert_eq!(names(sfu.list_rooms().await), ["a", "b"]);
        assert_eq!(sfu.participants("b".into()).await.map(|p| p.len()), Some(1));
        assert!(
            sfu.remove_identity("b".into(), "bea".into(), "test".into())
                .await
        );
        // Emptied, "b" is forgotten; ending "a" removes its two and keeps it closed.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while sfu.room_shard("b").is_some() {
            assert!(Instant::now() < deadline, "room b still placed");
            tokio::task::yield_now().await;
        }
        assert_eq!(sfu.close_room("a".into()).await, 2);
        assert_eq!(
            sfu.join(request("a", "ana"), sink.clone(), 5).await,
            Err(JoinError::RoomClosed)
        );
        sfu.signal_lost(a, 1);
        shutdown.cancel();
        task.await.expect("every shard stops");
    }
}
