//! `tchap-visio-load`: a load generator for tchap-visio's SFU, and for Janus's VideoRoom
//! to compare with. One process on loopback: publishers send pre-built VP8 simulcast
//! (q, h, f at about 150k, 500k and 1.5M bit/s, 30 frames/s) and Opus (50 packets/s);
//! subscribers count the packets, the loss (sequence gaps) and the one-way delay (a send
//! time stamped in each payload, read against the same clock), without decoding. The
//! server's CPU time and memory come from `/proc/<pid>`.
//!
//! Scenarios, as LiveKit's published benchmark: `large` (N participants publishing and
//! subscribing to every other), `livestream` (1 publisher, N subscribers) and `audio`
//! (10 speakers with Opus only, N listeners). Every subscriber asks for the same
//! simulcast layer (`--layer`): from tchap-visio with `UpdateTrackSettings` (quality),
//! from Janus with `configure` (substream).
//!
//! Prints a readable summary on stderr and one line of JSON on stdout (docs/benchmarks.md).
//! `TCHAP_VISIO_LOAD_DEBUG=1` also prints Janus's SDP exchanges and each connection's
//! datagram counts.
#![forbid(unsafe_code)]

mod janus;
mod livekit;
mod media;
mod peer;
mod procstat;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use livekit_protocol as lk;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::media::{LAYERS, RecvStats, quantile_ms};
use crate::peer::Peer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// tchap-visio's SFU, through LiveKit's signalling (`/rtc`).
    Tchap,
    /// Janus's VideoRoom, through its HTTP API.
    Janus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N participants, each publishing and subscribing to all the others.
    Large,
    /// One publisher, N subscribers.
    Livestream,
    /// Ten speakers (Opus only), N listeners.
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layer {
    Q,
    H,
    F,
}

/// Load on an SFU: tchap-visio's (LiveKit signalling) or Janus's VideoRoom.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server under load.
    #[arg(long, value_enum)]
    target: Target,
    /// tchap: the LiveKit URL (`ws://127.0.0.1:29330`); janus: the HTTP API
    /// (`http://127.0.0.1:8088/janus`).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "large")]
    scenario: Scenario,
    /// Participants (large), subscribers (livestream) or listeners (audio).
    #[arg(short = 'n', default_value_t = 10)]
    n: usize,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The server's process, for its CPU time and memory (`/proc/<pid>`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// tchap: the LiveKit API key (a key of the server's `sfu.keys`).
    #[arg(long, env = "TCHAP_VISIO_LOAD_KEY", default_value = "")]
    key: String,
    /// tchap: that key's secret.
    #[arg(
        long,
        env = "TCHAP_VISIO_LOAD_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    secret: String,
    /// The simulcast layer every subscriber asks for.
    #[arg(long, value_enum, default_value = "h")]
    layer: Layer,
    /// Longest wait for every subscriber to receive every source at that layer.
    #[arg(long, default_value_t = 30)]
    warmup: u64,
    /// tchap: publishers send only the layers the server asks for (LiveKit's dynacast);
    /// Janus has no such signal, its publishers always send every layer.
    #[arg(long)]
    dynacast: bool,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// What one participant does.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    pub video: bool,
    pub audio: bool,
    pub subscribe: bool,
    /// The id in its stamps.
    pub source: u16,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The address the default route leaves from (a UDP `connect` sends nothing).
pub fn primary_ipv4() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// The participants of a scenario: publishers then subscribers (in `large` they are the
/// same participants).
fn roles(scenario: Scenario, n: usize) -> Vec<Role> {
    match scenario {
        Scenario::Large => (0..n)
            .map(|i| Role {
                video: true,
                audio: true,
                subscribe: true,
                source: i as u16,
            })
            .collect(),
        Scenario::Livestream | Scenario::Audio => {
            let (publishers, video) = if scenario == Scenario::Livestream {
                (1, true)
            } else {
                (10, false)
            };
            let mut roles: Vec<Role> = (0..publishers)
                .map(|i| Role {
                    video,
                    audio: true,
                    subscribe: false,
                    source: i as u16,
                })
                .collect();
            roles.extend((0..n).map(|i| Role {
                video: false,
                audio: false,
                subscribe: true,
                source: (publishers + i) as u16,
            }));
            roles
        }
    }
}

/// A subscriber connection and the sources it should receive.
struct Watcher {
    peer: Peer,
    sources: Vec<u16>,
}

/// What joining everybody gave: the publishers' and subscribers' connections.
struct Joined {
    publishers: Vec<Peer>,
    watchers: Vec<Watcher>,
}

fn expected_sources(roles: &[Role], me: &Role) -> Vec<u16> {
    roles
        .iter()
        .filter(|r| (r.video || r.audio) && r.source != me.source)
        .map(|r| r.source)
        .collect()
}

async fn join_tchap(
    args: &Args,
    roles: &[Role],
    stop: &CancellationToken,
) -> anyhow::Result<Joined> {
    if args.key.is_empty() || args.secret.is_empty() {
        bail!("--target tchap needs --key and --secret (a key of the server's sfu.keys)");
    }
    let config = livekit::Config {
        url: args.url.clone(),
        key: args.key.clone(),
        secret: args.secret.clone(),
        room: format!("load-{}", rand::random::<u32>()),
        quality: match args.layer {
            Layer::Q => lk::VideoQuality::Low,
            Layer::H => lk::VideoQuality::Medium,
            Layer::F => lk::VideoQuality::High,
        },
        dynacast: args.dynacast,
    };
    // Publishers first, as in the Janus run (where subscribers need their feeds).
    let mut order: Vec<&Role> = roles.iter().filter(|r| r.video || r.audio).collect();
    order.extend(roles.iter().filter(|r| !(r.video || r.audio)));
    let results: Vec<anyhow::Result<(Role, Option<Peer>, Peer)>> =
        futures::stream::iter(order.into_iter().map(|role| {
            let config = config.clone();
            let stop = stop.clone();
            let role = *role;
            async move {
                let identity = format!("load-{}", role.source);
                let (publisher, subscriber) = livekit::join(&config, &identity, role, stop).await?;
                Ok((role, publisher, subscriber))
            }
        }))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut joined = Joined {
        publishers: Vec::new(),
        watchers: Vec::new(),
    };
    for result in results {
        let (role, publisher, subscriber) = result?;
        joined.publishers.extend(publisher);
        if role.subscribe {
            joined.watchers.push(Watcher {
                peer: subscriber,
                sources: expected_sources(roles, &role),
            });
        }
    }
    Ok(joined)
}

async fn join_janus(
    args: &Args,
    roles: &[Role],
    stop: &CancellationToken,
) -> anyhow::Result<Joined> {
    let janus = janus::Janus::connect(&args.url, stop.clone()).await?;
    let room: u64 = rand::random::<u32>() as u64 + 1;
    let publishing: Vec<Role> = roles
        .iter()
        .filter(|r| r.video || r.audio)
        .copied()
        .collect();
    janus.create_room(room, publishing.len() + 1).await?;
    let results: Vec<anyhow::Result<(Role, Peer, u64)>> =
        futures::stream::iter(publishing.iter().map(|&role| {
            let janus = janus.clone();
            let stop = stop.clone();
            async move {
                let name = format!("load-{}", role.source);
                let (peer, feed) = janus::publish(&janus, room, &name, role, stop).await?;
                Ok((role, peer, feed))
            }
        }))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut publishers = Vec::new();
    for result in results {
        publishers.push(result?);
    }
    // Janus lists a publisher once its connection is up.
    let peers: Vec<Peer> = publishers.iter().map(|(_, p, _)| p.clone()).collect();
    wait_connected(&peers, Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = janus.publishers(room).await?;
        if publishers.iter().all(|(_, _, f)| listed.contains(f)) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "Janus lists {} of {} publishers",
                listed.len(),
                publishers.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let substream = match args.layer {
        Layer::Q => 0,
        Layer::H => 1,
        Layer::F => 2,
    };
    let feeds: Vec<(u16, u64)> = publishers.iter().map(|(r, _, f)| (r.source, *f)).collect();
    let subscribing: Vec<Role> = roles.iter().filter(|r| r.subscribe).copied().collect();
    let results: Vec<anyhow::Result<Watcher>> =
        futures::stream::iter(subscribing.iter().map(|&role| {
            let janus = janus.clone();
            let stop = stop.clone();
            let feeds: Vec<u64> = feeds
                .iter()
                .filter(|(s, _)| *s != role.source)
                .map(|(_, f)| *f)
                .collect();
            let sources = expected_sources(roles, &role);
            async move {
                let peer = janus::subscribe(&janus, room, &feeds, substream, stop).await?;
                Ok(Watcher { peer, sources })
            }
        }))
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut watchers = Vec::new();
    for result in results {
        watchers.push(result?);
    }
    Ok(Joined {
        publishers: publishers.into_iter().map(|(_, p, _)| p).collect(),
        watchers,
    })
}

async fn wait_connected(peers: &[Peer], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let up = peers.iter().filter(|p| p.connected()).count();
        if up == peers.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{up} of {} connections came up", peers.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every subscriber received, in the last second and a half, a stamp of `slot`
/// from every source it should.
fn all_flowing(watchers: &[Watcher], slot: usize) -> (usize, usize) {
    let now = Instant::now();
    let mut flowing = 0;
    let mut total = 0;
    for w in watchers {
        for &source in &w.sources {
            total += 1;
            if w.peer
                .last_seen(source, slot)
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(1500))
            {
                flowing += 1;
            }
        }
    }
    (flowing, total)
}

fn server_sample(pid: Option<u32>) -> (Option<f64>, Option<u64>) {
    match pid {
        Some(pid) => {
            let pid = pid.to_string();
            (
                procstat::cpu_seconds(&pid),
                procstat::status_kb(&pid, "VmRSS"),
            )
        }
        None => (None, None),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tchap-visio-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    media::start_clock();
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(pid) = args.server_pid
        && procstat::cpu_seconds(&pid.to_string()).is_none()
    {
        bail!("no process {pid} to measure (--server-pid)");
    }
    let (_, rss_idle) = server_sample(args.server_pid);
    let roles = roles(args.scenario, args.n);
    let participants = roles.len();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let joined = match args.target {
        Target::Tchap => join_tchap(&args, &roles, &stop).await,
        Target::Janus => join_janus(&args, &roles, &stop).await,
    };
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            stop.cancel();
            return Err(e).context("joining");
        }
    };
    wait_connected(&joined.publishers, Duration::from_secs(30))
        .await
        .context("publishers")?;
    let subscribers: Vec<Peer> = joined.watchers.iter().map(|w| w.peer.clone()).collect();
    wait_connected(&subscribers, Duration::from_secs(30))
        .await
        .context("subscribers")?;
    let joined_s = started.elapsed().as_secs_f64();

    // Warm-up: every subscriber receives every source at the layer asked for.
    let slot = if args.scenario == Scenario::Audio {
        3
    } else {
        args.layer as usize
    };
    let warmup_deadline = Instant::now() + Duration::from_secs(args.warmup);
    let ready = loop {
        let (flowing, total) = all_flowing(&joined.watchers, slot);
        if flowing == total {
            break true;
        }
        if Instant::now() > warmup_deadline {
            eprintln!(
                "tchap-visio-load: after the warm-up, {flowing} of {total} (subscriber, source) pairs flow at the layer asked for; measuring anyway"
            );
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let warmup_s = started.elapsed().as_secs_f64() - joined_s;

    // The measured window.
    for w in &joined.watchers {
        w.peer.take_stats();
    }
    let sent0: u64 = joined.publishers.iter().map(Peer::sent_packets).sum();
    let (cpu0, _) = server_sample(args.server_pid);
    let own0 = procstat::cpu_seconds("self");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let mut total = RecvStats::default();
    for w in &joined.watchers {
        total.merge(&w.peer.take_stats());
    }
    let window = t0.elapsed().as_secs_f64();
    let (cpu1, rss) = server_sample(args.server_pid);
    let own1 = procstat::cpu_seconds("self");
    let sent: u64 = joined
        .publishers
        .iter()
        .map(Peer::sent_packets)
        .sum::<u64>()
        - sent0;
    let load = procstat::load_average();
    if std::env::var_os("TCHAP_VISIO_LOAD_DEBUG").is_some() {
        for (what, peers) in [
            ("publisher", &joined.publishers),
            ("subscriber", &subscribers),
        ] {
            for p in peers.iter() {
                eprintln!(
                    "{what}: in/out/rtp {:?}, written {}",
                    p.io_counts(),
                    p.sent_packets()
                );
            }
        }
    }
    stop.cancel();
    // Let the leaves go out.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let loss = |(expected, received): (u64, u64)| {
        if expected > 0 {
            100.0 * expected.saturating_sub(received) as f64 / expected as f64
        } else {
            0.0
        }
    };
    let loss_pct = loss(total.stamped_expected_received());
    let rtp_loss_pct = loss(total.rtp_expected_received());
    total.delays_us.sort_unstable();
    let p50 = quantile_ms(&total.delays_us, 0.5);
    let p99 = quantile_ms(&total.delays_us, 0.99);
    let server_cpu = cpu0.zip(cpu1).map(|(a, b)| b - a);
    let per_cpu = server_cpu
        .filter(|c| *c > 0.0)
        .map(|c| total.packets as f64 / c);
    let rss_per = rss_idle
        .zip(rss)
        .map(|(idle, now)| now.saturating_sub(idle) as f64 / participants as f64);
    let layer = LAYERS[args.layer as usize].rid;
    let result = json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "n": args.n,
        "participants": participants,
        "publishers": joined.publishers.len(),
        "subscribers": joined.watchers.len(),
        "layer": layer,
        "dynacast": args.dynacast && args.target == Target::Tchap,
        "ready": ready,
        "join_s": round(joined_s, 2),
        "warmup_s": round(warmup_s, 2),
        "seconds": round(window, 2),
        "packets": total.packets,
        "video_packets": total.video_packets,
        "audio_packets": total.audio_packets,
        "packets_per_s": round(total.packets as f64 / window, 1),
        "megabits_per_s": round(total.bytes as f64 * 8.0 / window / 1e6, 2),
        "frames_by_layer": {"q": total.frames_by_layer[0], "h": total.frames_by_layer[1], "f": total.frames_by_layer[2]},
        "duplicates": total.duplicates,
        "loss_pct": round(loss_pct, 3),
        "rtp_loss_pct": round(rtp_loss_pct, 3),
        "delay_samples": total.delays_us.len(),
        "delay_ms_p50": p50.map(|v| round(v, 2)),
        "delay_ms_p99": p99.map(|v| round(v, 2)),
        "sent_packets": sent,
        "server_pid": args.server_pid,
        "server_cpu_s": server_cpu.map(|v| round(v, 2)),
        "packets_per_cpu_s": per_cpu.map(|v| round(v, 0)),
        "server_rss_idle_kb": rss_idle,
        "server_rss_kb": rss,
        "rss_per_participant_kb": rss_per.map(|v| round(v, 1)),
        "loadgen_cpu_s": own0.zip(own1).map(|(a, b)| round(b - a, 2)),
        "load_average": load,
    });
    let opt = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    };
    eprintln!(
        "{:?} {:?} n={} ({} participants, layer {layer}): {} media packets in {window:.1} s ({:.0}/s), loss {loss_pct:.2}%, delay p50 {} ms p99 {} ms; server CPU {} s, {} packets per CPU-second; RSS {} kB ({} kB per participant)",
        args.target,
        args.scenario,
        args.n,
        participants,
        total.packets,
        total.packets as f64 / window,
        opt(p50, 2),
        opt(p99, 2),
        opt(server_cpu, 2),
        opt(per_cpu, 0),
        rss.map_or("-".into(), |v| v.to_string()),
        opt(rss_per, 1),
    );
    println!("{result}");
    Ok(())
}
