//! Forwarding benchmark: one publisher → N subscribers (N = 1, 10, 50) through the
//! sans-IO SFU engine, with encryption on (real DTLS handshakes, SRTP both ways: every
//! client is a str0m `Rtc`, as in the engine's tests). Virtual time, no sockets: the
//! bench carries datagrams between the clients and the engine, and times only the
//! engine's calls (`handle_packet`, `handle_timeout`, `poll_output`), so the figure is
//! what one core of the server does. Prints forwarded RTP packets per second per core.
//!
//! `TCHAP_VISIO_ALLOW_MISSING_WEB=1 cargo bench --bench forwarding`
//!
//! Environment: `FORWARDING_N=10` runs one size only, `FORWARDING_SECONDS=3` sets the
//! virtual seconds measured per round, `FORWARDING_ROUNDS=5` the rounds (best and
//! spread are printed), `FORWARDING_IDLE=500` adds that many participants in another
//! room who never connect media (kept by signalling): what other meetings on the same
//! server cost the forwarding path. `FORWARDING_SOCKET=1` also sends every forwarded
//! packet with one `send_to` on a real loopback UDP socket, as the driver does, and
//! prints what that syscall costs per packet next to the engine's time, and what the
//! driver's GSO batches ([`tchap_visio::sfu::gso`], from a second socket) cost instead. Instructions per packet come from running it under callgrind
//! (`scripts/bench-forwarding-callgrind.sh`), which counts only inside the engine's calls
//! made while measuring: they all go through [`measured`] then, and through [`warm_up`]
//! before (DTLS handshakes and negotiation are not forwarding).
//!
//! Written against the engine's public API only (join, signal, handle_packet,
//! handle_timeout, poll_output), so it measures whatever forwarding mode the engine uses.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use str0m::change::SdpPendingOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::{Event, Input, Output as RtcOutput, Rtc};
use tchap_visio::sfu::engine::Output;
use tchap_visio::sfu::gso;
use tchap_visio::sfu::testing::{
    SERVER, accept_answer, answer_offer, client_rtc, description, from_server,
};
use tchap_visio::sfu::{Engine, EngineConfig, JoinRequest, ParticipantKey};

/// Virtual-time step: the driver wakes at least this often under load.
const STEP: Duration = Duration::from_millis(1);
/// Publisher load: 60 frames/s of 12 kB, about 660 RTP packets/s (≈ 5.8 Mbit/s, a
/// busy screen share or a high simulcast layer).
const FPS: u32 = 60;
const FRAME_BYTES: usize = 12_000;

fn main() {
    let sizes: Vec<usize> = match std::env::var("FORWARDING_N") {
        Ok(n) => vec![n.parse().expect("FORWARDING_N is a number")],
        Err(_) => vec![1, 10, 50],
    };
    let seconds: u64 = env_or("FORWARDING_SECONDS", 3);
    let rounds: usize = env_or("FORWARDING_ROUNDS", 5);
    let idle: usize = env_or("FORWARDING_IDLE", 0);
    let socket = std::env::var("FORWARDING_SOCKET").is_ok_and(|v| v == "1");
    println!(
        "forwarding: 1 publisher → N subscribers, VP8 {FPS} fps × {FRAME_BYTES} B, DTLS-SRTP on, \
         {seconds} virtual s per round, {rounds} rounds, {idle} idle participants elsewhere"
    );
    println!(
        "{:>4}  {:>12}  {:>14}  {:>14}  {:>10}{}",
        "N",
        "forwarded",
        "best pkt/s",
        "median pkt/s",
        "spread",
        if socket {
            "  engine µs/pkt  send_to µs/pkt  gso µs/pkt"
        } else {
            ""
        }
    );
    for n in sizes {
        let mut world = World::new(n, idle);
        if socket {
            let sink = Sink::new();
            if n == 1 {
                println!(
                    "      (GSO: up to {} segments per send)",
                    sink.gso_state.max_gso_segments()
                );
            }
            world.socket = Some(sink);
        }
        world.connect();
        let mut rates = Vec::new();
        let mut forwarded = 0;
        let mut send_best = f64::INFINITY;
        let mut engine_best = f64::INFINITY;
        let mut gso_best = f64::INFINITY;
        for _ in 0..rounds {
            let round = world.measure(Duration::from_secs(seconds));
            forwarded = round.forwarded;
            rates.push(round.forwarded as f64 / round.engine_time.as_secs_f64());
            let per_packet = |d: Duration| d.as_secs_f64() * 1e6 / round.forwarded.max(1) as f64;
            engine_best = engine_best.min(per_packet(round.engine_time));
            send_best = send_best.min(per_packet(round.send_time));
            gso_best = gso_best.min(per_packet(round.gso_time));
        }
        rates.sort_by(f64::total_cmp);
        let best = rates[rates.len() - 1];
        let median = rates[rates.len() / 2];
        let spread = (best - rates[0]) / best * 100.0;
        let socket_columns = if socket {
            format!("  {engine_best:>13.2}  {send_best:>14.2}  {gso_best:>10.2}")
        } else {
            String::new()
        };
        println!(
            "{n:>4}  {forwarded:>12}  {best:>14.0}  {median:>14.0}  {spread:>9.1}%{socket_columns}"
        );
        black_box(world);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measured stretch of virtual time.
struct Round {
    /// RTP packets the engine sent to subscribers.
    forwarded: u64,
    /// Wall time spent inside the engine's calls.
    engine_time: Duration,
    /// Wall time spent in `send_to`, and in GSO batches (with `FORWARDING_SOCKET=1`).
    send_time: Duration,
    gso_time: Duration,
}

/// Loopback UDP sockets standing in for the network: forwarded packets go out of
/// `socket` (one `send_to` each) and `gso_socket` (the driver's GSO batches), each
/// subscriber's to a receiving socket of its own that nobody reads (the kernel drops what
/// overflows its buffer, as for a slow receiver; senders never block).
struct Sink {
    socket: std::net::UdpSocket,
    gso_socket: std::net::UdpSocket,
    gso_state: quinn_udp::UdpSocketState,
    batch: gso::Batch,
    /// Subscriber address → (its receiving socket, that socket's address).
    receivers: HashMap<SocketAddr, (std::net::UdpSocket, SocketAddr)>,
}

impl Sink {
    fn new() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let gso_socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        gso_socket.set_nonblocking(true).expect("non-blocking");
        let gso_state = quinn_udp::UdpSocketState::new((&gso_socket).into()).expect("state");
        let batch = gso::Batch::new(gso_state.max_gso_segments());
        Self {
            socket,
            gso_socket,
            gso_state,
            batch,
            receivers: HashMap::new(),
        }
    }

    /// The loopback address standing in for `destination` (bound on first use).
    fn target(&mut self, destination: SocketAddr) -> SocketAddr {
        self.receivers
            .entry(destination)
            .or_insert_with(|| {
                let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                let addr = receiver.local_addr().expect("addr");
                (receiver, addr)
            })
            .1
    }
}

struct Client {
    key: ParticipantKey,
    publisher: Rtc,
    publisher_addr: SocketAddr,
    subscriber: Rtc,
    subscriber_addr: SocketAddr,
    pending: Option<SdpPendingOffer>,
    video_mid: Option<Mid>,
    frames: u64,
}

struct World {
    now: Instant,
    engine: Engine,
    clients: Vec<Client>,
    /// Client address → (client index, is the subscriber connection).
    by_addr: HashMap<SocketAddr, (usize, bool)>,
    signals: Vec<(ParticipantKey, signal_response::Message)>,
    /// Participants of another room, without media; a signalling message each second
    /// keeps them from being removed as silent.
    idle: Vec<ParticipantKey>,
    next_keepalive: Instant,
    frame: u32,
    next_frame: Instant,
    // Counted while measuring.
    measuring: bool,
    forwarded: u64,
    engine_time: Duration,
    socket: Option<Sink>,
    send_time: Duration,
    gso_time: Duration,
}

/// RTP, not RTCP, DTLS or STUN (RFC 7983 demultiplexing, RFC 5761 for RTCP types).
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() >= 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1])
}

/// Runs one engine call, timed; see [`measured`] and [`warm_up`].
fn call<R>(
    engine: &mut Engine,
    measuring: bool,
    engine_time: &mut Duration,
    f: impl FnOnce(&mut Engine) -> R,
) -> R {
    let started = Instant::now();
    let result = if measuring {
        measured(engine, f)
    } else {
        warm_up(engine, f)
    };
    *engine_time += started.elapsed();
    result
}

/// Engine calls while measuring: callgrind's `--toggle-collect=*measured*` counts these.
#[inline(never)]
fn measured<R>(engine: &mut Engine, f: impl FnOnce(&mut Engine) -> R) -> R {
    black_box(f(black_box(engine)))
}

/// Engine calls while connecting (not counted). Distinct from [`measured`] in body, so
/// that the compiler cannot fold the two into one symbol.
#[inline(never)]
fn warm_up<R>(engine: &mut Engine, f: impl FnOnce(&mut Engine) -> R) -> R {
    let result = f(engine);
    black_box(&result);
    result
}

fn join_request(i: usize) -> JoinRequest {
    JoinRequest {
        room: "bench".into(),
        identity: format!("p{i}"),
        name: format!("P{i}"),
        metadata: String::new(),
        attributes: HashMap::new(),
        can_publish: i == 0,
        can_subscribe: true,
        can_publish_data: true,
        can_update_own_metadata: true,
        can_publish_sources: Vec::new(),
        auto_subscribe: true,
        // The dual peer connection path: the bench's str0m clients answer server offers.
        single_pc: false,
        publisher_offer: None,
    }
}

impl World {
    fn call<R>(&mut self, f: impl FnOnce(&mut Engine) -> R) -> R {
        call(&mut self.engine, self.measuring, &mut self.engine_time, f)
    }

    fn new(subscribers: usize, idle: usize) -> Self {
        let now = Instant::now();
        let config = EngineConfig {
            candidates: vec![SERVER.parse().expect("addr")],
            max_participants_per_room: (subscribers + 1).max(idle),
            max_participants: subscribers + 1 + idle,
            ice_servers: vec![],
        };
        let mut world = Self {
            now,
            engine: Engine::new(config, now),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            signals: Vec::new(),
            idle: Vec::new(),
            next_keepalive: now,
            frame: 0,
            next_frame: now,
            measuring: false,
            forwarded: 0,
            engine_time: Duration::ZERO,
            socket: None,
            send_time: Duration::ZERO,
            gso_time: Duration::ZERO,
        };
        for i in 0..=subscribers {
            world.join(i);
        }
        for i in 0..idle {
            let mut request = join_request(i + subscribers + 1);
            request.room = "elsewhere".into();
            let key = world.engine.join(now, request).expect("idle join");
            world.idle.push(key);
        }
        world
    }

    fn join(&mut self, i: usize) {
        let key = self.engine.join(self.now, join_request(i)).expect("join");
        // 10.1.x.y: room for a few thousand clients, two addresses each.
        let addr = |port: u16| -> SocketAddr {
            SocketAddr::from(([10, 1, (i / 200) as u8, (i % 200) as u8 + 1], port))
        };
        let (publisher_addr, subscriber_addr) = (addr(5000), addr(6000));
        self.by_addr
            .insert(publisher_addr, (self.clients.len(), false));
        self.by_addr
            .insert(subscriber_addr, (self.clients.len(), true));
        self.clients.push(Client {
            key,
            publisher: client_rtc(publisher_addr, self.now),
            publisher_addr,
            subscriber: client_rtc(subscriber_addr, self.now),
            subscriber_addr,
            pending: None,
            video_mid: None,
            frames: 0,
        });
    }

    /// Publishes client 0's camera and runs until every subscriber decodes it.
    fn connect(&mut self) {
        self.exchange();
        let key = self.clients[0].key;
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::AddTrack(lk::AddTrackRequest {
                cid: "camera".into(),
                r#type: lk::TrackType::Video as i32,
                source: lk::TrackSource::Camera as i32,
                width: 1280,
                height: 720,
                ..Default::default()
            }),
        );
        let client = &mut self.clients[0];
        let mut api = client.publisher.sdp_api();
        let mid = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("stream".into()),
            Some("camera".into()),
            None,
        );
        let (offer, pending) = api.apply().expect("an offer");
        client.pending = Some(pending);
        client.video_mid = Some(mid);
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::Offer(description("offer", offer.to_sdp_string(), 1)),
        );
        // Bounded: 20 virtual seconds to get every subscriber its frames.
        for _ in 0..20_000 {
            self.step();
            if self.clients[1..].iter().all(|c| c.frames >= 5) {
                return;
            }
        }
        let frames: Vec<u64> = self.clients.iter().map(|c| c.frames).collect();
        panic!("subscribers did not all receive media: frames per client {frames:?}");
    }

    fn measure(&mut self, duration: Duration) -> Round {
        self.measuring = true;
        self.forwarded = 0;
        self.engine_time = Duration::ZERO;
        self.send_time = Duration::ZERO;
        self.gso_time = Duration::ZERO;
        let before: u64 = self.clients[1..].iter().map(|c| c.frames).sum();
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
        self.measuring = false;
        let after: u64 = self.clients[1..].iter().map(|c| c.frames).sum();
        assert!(
            after > before,
            "no frame reached the subscribers while measuring"
        );
        Round {
            forwarded: self.forwarded,
            engine_time: self.engine_time,
            send_time: self.send_time,
            gso_time: self.gso_time,
        }
    }

    /// One step of virtual time: the publisher's frame when due, packets both ways,
    /// timers.
    fn step(&mut self) {
        if self.now >= self.next_frame {
            self.send_frame();
            self.next_frame += Duration::from_secs(1) / FPS;
        }
        if self.now >= self.next_keepalive {
            self.next_keepalive += Duration::from_secs(1);
            for &key in &self.idle {
                self.engine
                    .signal(self.now, key, signal_request::Message::Ping(0));
            }
        }
        self.exchange();
        self.now += STEP;
        let now = self.now;
        self.call(|e| {
            if e.next_timeout() <= now {
                e.handle_timeout(now);
            }
        });
        for client in &mut self.clients {
            let _ = client.publisher.handle_input(Input::Timeout(self.now));
            let _ = client.subscriber.handle_input(Input::Timeout(self.now));
        }
    }

    fn send_frame(&mut self) {
        self.frame += 1;
        let now = self.now;
        let client = &mut self.clients[0];
        let Some(mid) = client.video_mid else { return };
        let Some(writer) = client.publisher.writer(mid) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        // A VP8 keyframe header (the P bit clear) then filler: every frame decodable alone.
        let mut data = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02];
        data.resize(FRAME_BYTES, (self.frame % 251) as u8);
        let _ = writer.write(
            pt,
            now,
            MediaTime::from_90khz(u64::from(self.frame) * 90_000 / u64::from(FPS)),
            data,
        );
    }

    /// Carries everything pending until nothing moves (bounded).
    fn exchange(&mut self) {
        let server: SocketAddr = SERVER.parse().expect("addr");
        for _ in 0..100 {
            let mut moved = false;
            for client in &mut self.clients {
                for subscriber in [false, true] {
                    let (rtc, source) = if subscriber {
                        (&mut client.subscriber, client.subscriber_addr)
                    } else {
                        (&mut client.publisher, client.publisher_addr)
                    };
                    loop {
                        match rtc.poll_output() {
                            Ok(RtcOutput::Transmit(t)) => {
                                moved = true;
                                let now = self.now;
                                // As the driver does: a packet in, then the next timeout.
                                call(
                                    &mut self.engine,
                                    self.measuring,
                                    &mut self.engine_time,
                                    |e| {
                                        e.handle_packet(now, source, server, &t.contents);
                                        black_box(e.next_timeout());
                                    },
                                );
                            }
                            Ok(RtcOutput::Event(Event::MediaData(_))) => client.frames += 1,
                            Ok(RtcOutput::Event(_)) => {}
                            Ok(RtcOutput::Timeout(_)) | Err(_) => break,
                        }
                    }
                }
            }
            while let Some(output) = self.call(|e| e.poll_output()) {
                moved = true;
                match output {
                    Output::Transmit {
                        destination,
                        contents,
                        ..
                    } => {
                        let Some(&(index, subscriber)) = self.by_addr.get(&destination) else {
                            continue;
                        };
                        if self.measuring && subscriber && is_rtp(&contents) {
                            self.forwarded += 1;
                            if let Some(sink) = &mut self.socket {
                                let to = sink.target(destination);
                                let started = Instant::now();
                                // A full buffer (EAGAIN) drops the packet, as the driver does.
                                let _ = sink.socket.send_to(&contents, to);
                                self.send_time += started.elapsed();
                                // The driver's way: batched while consecutive packets go to
                                // the same subscriber, flushed when a poll is drained.
                                let started = Instant::now();
                                if !sink.batch.push(to, &contents) {
                                    let _ = sink.batch.flush(&sink.gso_state, &sink.gso_socket);
                                    sink.batch.push(to, &contents);
                                }
                                self.gso_time += started.elapsed();
                            }
                        }
                        let client = &mut self.clients[index];
                        let rtc = if subscriber {
                            &mut client.subscriber
                        } else {
                            &mut client.publisher
                        };
                        let _ = rtc.handle_input(from_server(self.now, destination, &contents));
                    }
                    Output::Signal { key, message } => self.signals.push((key, *message)),
                    Output::CloseSignal { .. } | Output::Event(_) => {}
                }
            }
            if let Some(sink) = &mut self.socket {
                let started = Instant::now();
                let _ = sink.batch.flush(&sink.gso_state, &sink.gso_socket);
                self.gso_time += started.elapsed();
            }
            for (key, message) in std::mem::take(&mut self.signals) {
                self.deliver(key, message);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver(&mut self, key: ParticipantKey, message: signal_response::Message) {
        let Some(index) = self.clients.iter().position(|c| c.key == key) else {
            return;
        };
        let now = self.now;
        let client = &mut self.clients[index];
        match message {
            signal_response::Message::Offer(offer) => {
                let answer = answer_offer(&mut client.subscriber, &offer);
                self.engine
                    .signal(now, key, signal_request::Message::Answer(answer));
            }
            signal_response::Message::Answer(answer) => {
                if let Some(pending) = client.pending.take() {
                    accept_answer(&mut client.publisher, pending, &answer);
                }
            }
            _ => {}
        }
    }
}
