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
//! driver's GSO and sendmmsg batches ([`tchap_visio::sfu::gso`], from a second socket) cost instead. Instructions per packet come from running it under callgrind
//! (`scripts/bench-forwarding-callgrind.sh`), which counts only inside the engine's calls
//! made while measuring: they all go through [`measured`] then, and through [`warm_up`]
//! before (DTLS handshakes and negotiation are not forwarding).
//!
//! `FORWARDING_PROFILE=realistic` runs a meeting instead (10 of 50 participants publish
//! Opus and VP8 simulcast, everyone subscribes, layers from the engine's allocation),
//! counts media packets only and reports each packet's delay through the engine: see
//! [`realistic`]. `FORWARDING_SHARDS=K` runs the profile chosen on K threads, a world and
//! an engine each, against one alone: see [`shards`].
//!
//! The clients and the loop that carries their traffic are the engine tests' own
//! ([`tchap_visio::sfu::testing::World`]); the bench adds a [`Meter`] (the world's
//! probe: it times the engine's calls and counts what they forward) and the [`Load`]
//! (the publisher's frames, the idle participants' keepalives). Written against the
//! engine's public API only (join, signal, handle_packet, handle_timeout, poll_output),
//! so it measures whatever forwarding mode the engine uses.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol::signal_request;
use str0m::media::MediaTime;
use tchap_visio::sfu::gso;
use tchap_visio::sfu::testing::{Camera, Probe, SERVER, World, join_request, vp8_frame};
use tchap_visio::sfu::{Engine, EngineConfig, JoinRequest, ParticipantKey};

#[path = "forwarding/realistic.rs"]
mod realistic;
#[path = "forwarding/shards.rs"]
mod shards;

/// Virtual-time step: the driver wakes at least this often under load.
const STEP: Duration = Duration::from_millis(1);
/// Publisher load: 60 frames/s of 12 kB, about 660 RTP packets/s (≈ 5.8 Mbit/s, a
/// busy screen share or a high simulcast layer).
const FPS: u32 = 60;
const FRAME_BYTES: usize = 12_000;

fn main() {
    let seconds: u64 = env_or("FORWARDING_SECONDS", 3);
    let rounds: usize = env_or("FORWARDING_ROUNDS", 5);
    let idle: usize = env_or("FORWARDING_IDLE", 0);
    let realistic = match std::env::var("FORWARDING_PROFILE").as_deref() {
        Ok("realistic") => true,
        Ok("" | "one-publisher") | Err(_) => false,
        Ok(other) => panic!("FORWARDING_PROFILE: realistic or one-publisher, not {other:?}"),
    };
    let shard_count: usize = env_or("FORWARDING_SHARDS", 0);
    if shard_count > 0 {
        if realistic {
            let settings = realistic::Settings::from_env();
            shards::run(shard_count, rounds, "media packets", || {
                let mut bench = realistic::Bench::new(settings);
                bench.connect();
                bench
            });
        } else {
            let n = env_or("FORWARDING_N", 50);
            shards::run(shard_count, rounds, "forwarded RTP packets", || {
                let mut bench = Bench::new(n, idle);
                bench.connect();
                bench
            });
        }
        return;
    }
    if realistic {
        realistic::main(seconds, rounds);
        return;
    }
    let sizes: Vec<usize> = match std::env::var("FORWARDING_N") {
        Ok(n) => vec![n.parse().expect("FORWARDING_N is a number")],
        Err(_) => vec![1, 10, 50],
    };
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
        let mut bench = Bench::new(n, idle);
        if socket {
            let sink = Sink::new();
            if n == 1 {
                println!(
                    "      (GSO: up to {} segments per send)",
                    sink.max_gso_segments
                );
            }
            bench.world.probe.socket = Some(sink);
        }
        bench.connect();
        let mut rates = Vec::new();
        let mut forwarded = 0;
        let mut send_best = f64::INFINITY;
        let mut engine_best = f64::INFINITY;
        let mut gso_best = f64::INFINITY;
        for _ in 0..rounds {
            let round = bench.measure(Duration::from_secs(seconds));
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
        black_box(bench);
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
    max_gso_segments: usize,
    outgoing: gso::Outgoing,
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
        let max_gso_segments = gso_state.max_gso_segments();
        let outgoing = gso::Outgoing::new(&gso_socket, max_gso_segments);
        Self {
            socket,
            gso_socket,
            max_gso_segments,
            outgoing,
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

/// The world's probe: times every engine call (through [`measured`] while measuring,
/// [`warm_up`] before), counts the RTP packets the engine sends subscribers while
/// measuring, and sends them on the sockets too when asked (`FORWARDING_SOCKET=1`).
#[derive(Default)]
struct Meter {
    measuring: bool,
    /// RTP packets the engine sent to subscribers while measuring.
    forwarded: u64,
    /// Wall time spent inside the engine's calls.
    engine_time: Duration,
    socket: Option<Sink>,
    /// Wall time spent in `send_to`, and in GSO batches.
    send_time: Duration,
    gso_time: Duration,
}

impl Probe for Meter {
    fn call<R>(&mut self, engine: &mut Engine, f: impl FnOnce(&mut Engine) -> R) -> R {
        let started = Instant::now();
        let result = if self.measuring {
            measured(engine, f)
        } else {
            warm_up(engine, f)
        };
        self.engine_time += started.elapsed();
        result
    }

    fn transmit(&mut self, destination: SocketAddr, subscriber: bool, contents: &[u8]) {
        if !(self.measuring && subscriber && is_rtp(contents)) {
            return;
        }
        self.forwarded += 1;
        if let Some(sink) = &mut self.socket {
            let to = sink.target(destination);
            let started = Instant::now();
            // A full buffer (EAGAIN) drops the packet, as the driver does.
            let _ = sink.socket.send_to(contents, to);
            self.send_time += started.elapsed();
            // The driver's way: batched while consecutive packets go to the same
            // subscriber, flushed when a poll is drained.
            let started = Instant::now();
            // The driver moves the engine's datagram; the bench has a borrowed one.
            sink.outgoing.push(&sink.gso_socket, to, contents.to_vec());
            self.gso_time += started.elapsed();
        }
    }

    fn drained(&mut self) {
        if let Some(sink) = &mut self.socket {
            let started = Instant::now();
            sink.outgoing.flush(&sink.gso_socket);
            self.gso_time += started.elapsed();
        }
    }
}

/// RTP, not RTCP, DTLS or STUN (RFC 7983 demultiplexing, RFC 5761 for RTCP types).
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() >= 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1])
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

/// What the bench feeds the world before each step: client 0's camera frames, and a
/// signalling message each second for the participants of another room, without media,
/// that keeps them from being removed as silent.
struct Load {
    frame: u32,
    next_frame: Instant,
    idle: Vec<ParticipantKey>,
    next_keepalive: Instant,
}

impl Load {
    fn before_step(&mut self, world: &mut World<Meter>) {
        if world.now >= self.next_frame {
            self.frame += 1;
            // A keyframe (the P bit clear) then filler: every frame decodable alone.
            let data = vp8_frame(true, 1280, 720, FRAME_BYTES, (self.frame % 251) as u8);
            let time = MediaTime::from_90khz(u64::from(self.frame) * 90_000 / u64::from(FPS));
            world.write_video(0, None, time, data);
            self.next_frame += Duration::from_secs(1) / FPS;
        }
        if world.now >= self.next_keepalive {
            self.next_keepalive += Duration::from_secs(1);
            for &key in &self.idle {
                world
                    .engine
                    .signal(world.now, key, signal_request::Message::Ping(0));
            }
        }
    }
}

/// Participant `i` of the bench's room: only the first publishes.
fn bench_request(i: usize) -> JoinRequest {
    let mut request = join_request(&format!("p{i}"));
    request.room = "bench".into();
    request.can_publish = i == 0;
    request
}

struct Bench {
    world: World<Meter>,
    load: Load,
}

impl Bench {
    fn new(subscribers: usize, idle: usize) -> Self {
        let config = EngineConfig {
            candidates: vec![SERVER.parse().expect("addr")],
            max_participants_per_room: (subscribers + 1).max(idle),
            max_participants: subscribers + 1 + idle,
            ice_servers: vec![],
        };
        let mut world = World::with_probe(config, Meter::default());
        world.tick = STEP;
        for i in 0..=subscribers {
            world.join_with(bench_request(i));
        }
        let now = world.now;
        let idle = (0..idle)
            .map(|i| {
                let mut request = bench_request(i + subscribers + 1);
                request.room = "elsewhere".into();
                world.engine.join(now, request).expect("idle join")
            })
            .collect();
        Self {
            world,
            load: Load {
                frame: 0,
                next_frame: now,
                idle,
                next_keepalive: now,
            },
        }
    }

    /// Publishes client 0's camera and runs until every subscriber decodes it.
    fn connect(&mut self) {
        self.world.exchange();
        self.world.publish_camera(
            0,
            Camera {
                cid: "camera",
                width: 1280,
                height: 720,
                simulcast: None,
                channel: false,
            },
        );
        let load = &mut self.load;
        // Bounded: 20 virtual seconds to get every subscriber its frames.
        let connected = self.world.run_until(
            Duration::from_secs(20),
            |w| load.before_step(w),
            |w| w.clients[1..].iter().all(|c| c.frames_received >= 5),
        );
        if !connected {
            let frames: Vec<usize> = self
                .world
                .clients
                .iter()
                .map(|c| c.frames_received)
                .collect();
            panic!("subscribers did not all receive media: frames per client {frames:?}");
        }
    }

    fn measure(&mut self, duration: Duration) -> Round {
        let frames = |world: &World<Meter>| -> usize {
            world.clients[1..].iter().map(|c| c.frames_received).sum()
        };
        self.world.probe = Meter {
            measuring: true,
            socket: self.world.probe.socket.take(),
            ..Meter::default()
        };
        let before = frames(&self.world);
        let load = &mut self.load;
        self.world.run(duration, |w| load.before_step(w));
        self.world.probe.measuring = false;
        assert!(
            frames(&self.world) > before,
            "no frame reached the subscribers while measuring"
        );
        let probe = &self.world.probe;
        Round {
            forwarded: probe.forwarded,
            engine_time: probe.engine_time,
            send_time: probe.send_time,
            gso_time: probe.gso_time,
        }
    }
}

impl shards::Shard for Bench {
    fn start(&mut self) {
        self.world.probe = Meter {
            measuring: true,
            ..Meter::default()
        };
    }

    fn step(&mut self) {
        self.load.before_step(&mut self.world);
        self.world.step();
    }

    fn stop(&mut self) -> (u64, Duration) {
        self.world.probe.measuring = false;
        (self.world.probe.forwarded, self.world.probe.engine_time)
    }
}

impl shards::Shard for realistic::Bench {
    fn start(&mut self) {
        realistic::Bench::start(self);
    }

    fn step(&mut self) {
        realistic::Bench::step(self);
    }

    fn stop(&mut self) -> (u64, Duration) {
        let round = self.finish(Duration::ZERO);
        (round.media, round.engine_time)
    }
}
