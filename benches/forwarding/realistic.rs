//! The realistic profile (`FORWARDING_PROFILE=realistic`): a meeting of N (50 unless
//! `FORWARDING_N` says otherwise) where the first `FORWARDING_PUBLISHERS` (10) publish
//! Opus (50 packets/s of 80 B) and a VP8 camera in three simulcast layers (q, h, f:
//! 150 kb/s, 500 kb/s and 1.5 Mb/s at 30 frames/s, a keyframe every 3 s and when the
//! engine asks), following dynacast (a layer the engine pauses is not sent), and everyone
//! subscribes to everyone else. Each subscriber's layer is the engine's own allocation
//! from its TWCC estimate (the str0m clients send the feedback); so that every layer is
//! in use, as in a grid of tiles of several sizes, one subscriber in five asks for
//! 320×180 tiles (served by q) and one in five for 640×360 (h), the rest ask nothing (the
//! best layer their estimate carries).
//!
//! Counts media packets only: RTP to subscribers without the padding bit, on a media
//! payload type (not RTX, which carries str0m's padding and spurious resends for
//! probing), with an SSRC (str0m's non-media probes have SSRC 0). Measures the delivery
//! delay of each media packet: from the virtual instant the engine was handed the
//! publisher's datagram that completed its frame (`handle_packet`) to the instant the
//! engine's output carrying the forwarded copy was drained (`poll_output`). The payload
//! carries the publisher and its RTP timestamp; each forwarded packet is matched with the
//! frame that the subscriber's str0m client assembles from it (by RTP timestamp and
//! payload type on that connection). The world's step is 1 ms of virtual time, fed to
//! the engine as `handle_timeout`, so delays are whole milliseconds: 0 ms means in the
//! same engine round as the arrival.
//!
//! Loss: a video frame or audio packet missing from what a subscriber assembled, on a
//! layer it kept receiving (a layer switch skips frames by design, not counted), and
//! forwarded packets whose frame never completed at the subscriber.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use str0m::format::Codec;
use str0m::media::{MediaData, MediaTime, Mid, Rid};
use tchap_visio::sfu::testing::{Camera, Layer, Probe, SERVER, World, join_request, vp8_frame};
use tchap_visio::sfu::{Engine, EngineConfig, JoinRequest};

use super::{STEP, env_or, is_rtp, measured, warm_up};

/// Frames per second of every layer, and the layers: RID, quality announced, size
/// divisor, bit rate (announced and sent).
const FPS: u64 = 30;
const LAYERS: [(&str, lk::VideoQuality, u32, u32); 3] = [
    ("q", lk::VideoQuality::Low, 4, 150_000),
    ("h", lk::VideoQuality::Medium, 2, 500_000),
    ("f", lk::VideoQuality::High, 1, 1_500_000),
];
/// Opus: a packet every 20 ms, 80 B (32 kb/s).
const AUDIO_EVERY: Duration = Duration::from_millis(20);
const AUDIO_BYTES: usize = 80;
/// A keyframe every this many frames (3 s), besides those the engine asks for.
const KEYFRAME_EVERY: u32 = 90;
/// RTP timestamps: publisher `p` starts its layer `l` at `p * SPAN + l * LAYER_SPAN`, its
/// audio at `p * SPAN + AUDIO_ORIGIN`: distinct ranges, so that a timestamp names the
/// frame it belongs to (a run uses a few million ticks of each).
const SPAN: u64 = 150_000_000;
const LAYER_SPAN: u64 = 30_000_000;
const AUDIO_ORIGIN: u64 = 100_000_000;
/// Video payloads: the VP8 header (10 bytes), the layer at 10 (the world's marker byte),
/// the publisher at 11, the frame's RTP timestamp at 12..16. Audio: 0xA0, the publisher,
/// the timestamp at 2..6.
const AUDIO_TAG: u8 = 0xa0;

/// The profile's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub n: usize,
    pub publishers: usize,
    /// Virtual seconds run after every subscriber has video from every publisher, for
    /// the estimates to grow and the layers to settle, before measuring.
    pub warmup: u64,
}

impl Settings {
    pub fn from_env() -> Self {
        let n: usize = env_or("FORWARDING_N", 50);
        let publishers: usize = env_or("FORWARDING_PUBLISHERS", 10);
        assert!(
            publishers >= 1 && publishers <= n && publishers <= 25,
            "FORWARDING_PUBLISHERS between 1 and min(N, 25)"
        );
        Self {
            n,
            publishers,
            warmup: env_or("FORWARDING_WARMUP", 5),
        }
    }
}

/// The probe: times the engine's calls, classifies and counts what it sends subscribers,
/// and matches each forwarded media packet with its publisher's datagram for the delay.
#[derive(Default)]
pub struct Meter {
    pub measuring: bool,
    /// The world's virtual time, set before each step (the world drains the engine's
    /// output at the time of the step, see [`Load::before_step`]).
    now: Option<Instant>,
    /// Each client's publisher and subscriber addresses, by index.
    publisher_addrs: Vec<SocketAddr>,
    subscriber_addrs: HashMap<SocketAddr, usize>,
    /// RTX payload types (padding, spurious resends for probing, NACK answers).
    rtx_pts: Vec<u8>,
    pub engine_time: Duration,
    /// Media RTP packets sent to subscribers while measuring, in all and per subscriber.
    pub media: u64,
    pub media_to: Vec<u64>,
    /// RTP to subscribers that is not media: padding-only, RTX, probes.
    pub not_media: u64,
    /// (publisher address, RTP timestamp) → when the engine was handed the last datagram
    /// of that frame.
    arrivals: HashMap<(SocketAddr, u32), Instant>,
    /// (subscriber address, payload type, RTP timestamp) → when each media packet of that
    /// frame left the engine, until the subscriber assembles the frame.
    sent: HashMap<(SocketAddr, u8, u32), Vec<Instant>>,
    /// Per subscriber: the delays of its media packets while measuring, in µs.
    pub delays: Vec<Vec<u32>>,
    /// Forwarded packets whose publisher datagram was not seen (should stay 0).
    pub unmatched: u64,
    /// Per (subscriber, publisher, kind: 0..3 video layer, 3 audio): the last frame
    /// number assembled and its layer.
    last: HashMap<(usize, usize, bool), (u8, u64)>,
    /// Video frames and audio packets missing on a layer that kept coming.
    pub lost_video: Vec<u64>,
    pub lost_audio: Vec<u64>,
    /// Video frames assembled while measuring, by layer (q, h, f).
    pub frames_by_layer: [u64; 3],
    /// Which publishers each client has assembled video from (connecting).
    pub video_from: Vec<Vec<bool>>,
}

impl Meter {
    fn start(&mut self) {
        let clients = self.publisher_addrs.len();
        *self = Self {
            measuring: true,
            now: self.now,
            publisher_addrs: std::mem::take(&mut self.publisher_addrs),
            subscriber_addrs: std::mem::take(&mut self.subscriber_addrs),
            rtx_pts: std::mem::take(&mut self.rtx_pts),
            arrivals: std::mem::take(&mut self.arrivals),
            last: std::mem::take(&mut self.last),
            video_from: std::mem::take(&mut self.video_from),
            media_to: vec![0; clients],
            delays: vec![Vec::new(); clients],
            lost_video: vec![0; clients],
            lost_audio: vec![0; clients],
            ..Self::default()
        };
    }
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

    fn receive(&mut self, now: Instant, source: SocketAddr, contents: &[u8]) {
        // The RTP header stays in clear under SRTP.
        if is_rtp(contents) {
            self.arrivals.insert((source, rtp_timestamp(contents)), now);
        }
    }

    fn transmit(&mut self, destination: SocketAddr, subscriber: bool, contents: &[u8]) {
        if !(self.measuring && subscriber && is_rtp(contents)) {
            return;
        }
        let padding = contents[0] & 0x20 != 0;
        let pt = contents[1] & 0x7f;
        let ssrc = u32::from_be_bytes(contents[8..12].try_into().expect("12 bytes"));
        if padding || ssrc == 0 || self.rtx_pts.contains(&pt) {
            self.not_media += 1;
            return;
        }
        self.media += 1;
        if let Some(&i) = self.subscriber_addrs.get(&destination) {
            self.media_to[i] += 1;
        }
        let now = self.now.expect("set before each step");
        self.sent
            .entry((destination, pt, rtp_timestamp(contents)))
            .or_default()
            .push(now);
    }

    fn media(&mut self, _now: Instant, destination: SocketAddr, data: &MediaData) {
        let Some(&subscriber) = self.subscriber_addrs.get(&destination) else {
            return;
        };
        let d = &data.data;
        let (publisher, layer, ts, audio) = match data.params.spec().codec {
            Codec::Vp8 if d.len() >= 16 => (d[11], d[10], u32_at(d, 12), false),
            Codec::Opus if d.len() >= 6 && d[0] == AUDIO_TAG => (d[1], 3, u32_at(d, 2), true),
            _ => return,
        };
        let publisher = usize::from(publisher);
        let Some(&publisher_addr) = self.publisher_addrs.get(publisher) else {
            return;
        };
        if !audio && let Some(from) = self.video_from.get_mut(subscriber) {
            from[publisher] = true;
        }
        if !self.measuring {
            return;
        }
        // Loss: frame numbers from the timestamp's offset in its range.
        let origin = publisher as u64 * SPAN
            + if audio {
                AUDIO_ORIGIN
            } else {
                u64::from(layer) * LAYER_SPAN
            };
        let per_frame = if audio { 960 } else { 90_000 / FPS };
        let Some(offset) = u64::from(ts).checked_sub(origin) else {
            return;
        };
        let number = offset / per_frame;
        if let Some((last_layer, last)) = self
            .last
            .insert((subscriber, publisher, audio), (layer, number))
            && last_layer == layer
            && number > last + 1
        {
            let lost = if audio {
                &mut self.lost_audio
            } else {
                &mut self.lost_video
            };
            lost[subscriber] += number - last - 1;
        }
        if !audio {
            self.frames_by_layer[usize::from(layer).min(2)] += 1;
        }
        let key = (
            destination,
            *data.pt,
            (data.time.numer() & u64::from(u32::MAX)) as u32,
        );
        let Some(sent) = self.sent.remove(&key) else {
            return;
        };
        let Some(&arrived) = self.arrivals.get(&(publisher_addr, ts)) else {
            self.unmatched += sent.len() as u64;
            return;
        };
        for at in sent {
            let delay = at.saturating_duration_since(arrived);
            self.delays[subscriber].push(u32::try_from(delay.as_micros()).unwrap_or(u32::MAX));
        }
    }
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn rtp_timestamp(packet: &[u8]) -> u32 {
    u32::from_be_bytes(packet[4..8].try_into().expect("an RTP header"))
}

/// One publisher's microphone and camera.
struct Publisher {
    index: usize,
    audio: Mid,
    packets: u64,
    frames: u32,
    next_audio: Instant,
    next_frame: Instant,
    /// The layers dynacast paused, and how many signals were read for it.
    paused: [bool; 3],
    signals_read: usize,
}

impl Publisher {
    fn follow_dynacast(&mut self, signals: &[signal_response::Message]) {
        for message in &signals[self.signals_read..] {
            if let signal_response::Message::SubscribedQualityUpdate(update) = message
                && let Some(codec) = update.subscribed_codecs.first()
            {
                for quality in &codec.qualities {
                    if let Some(slot) = LAYERS.iter().position(|l| l.1 as i32 == quality.quality) {
                        self.paused[slot] = !quality.enabled;
                    }
                }
            }
        }
        self.signals_read = signals.len();
    }
}

/// What the bench feeds the world before each step.
struct Load {
    publishers: Vec<Publisher>,
}

impl Load {
    fn before_step(&mut self, world: &mut World<Meter>) {
        let now = world.now;
        // The world drains the engine's output at this instant: in this step's exchange,
        // and after the timeout of the step before (fed at this same instant).
        world.probe.now = Some(now);
        for p in &mut self.publishers {
            while now >= p.next_audio {
                let ts = p.index as u64 * SPAN + AUDIO_ORIGIN + p.packets * 960;
                let mut data = vec![0u8; AUDIO_BYTES];
                data[0] = AUDIO_TAG;
                data[1] = p.index as u8;
                data[2..6].copy_from_slice(&(ts as u32).to_le_bytes());
                world.write_audio(
                    p.index,
                    p.audio,
                    MediaTime::new(ts, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                    data,
                );
                p.packets += 1;
                p.next_audio += AUDIO_EVERY;
            }
            if now >= p.next_frame {
                p.follow_dynacast(&world.clients[p.index].signals);
                let asked = std::mem::take(&mut world.clients[p.index].keyframes_asked);
                for (slot, &(rid, _, divisor, bps)) in LAYERS.iter().enumerate() {
                    if p.paused[slot] {
                        continue;
                    }
                    let rid = Rid::from(rid);
                    let keyframe =
                        p.frames.is_multiple_of(KEYFRAME_EVERY) || asked.contains(&Some(rid));
                    let bytes = (bps as u64 / 8 / FPS) as usize;
                    let ts = p.index as u64 * SPAN
                        + slot as u64 * LAYER_SPAN
                        + u64::from(p.frames) * (90_000 / FPS);
                    let mut data = vp8_frame(
                        keyframe,
                        (1280 / divisor) as u16,
                        (720 / divisor) as u16,
                        bytes,
                        0,
                    );
                    data[10] = slot as u8;
                    data[11] = p.index as u8;
                    data[12..16].copy_from_slice(&(ts as u32).to_le_bytes());
                    world.write_video(p.index, Some(rid), MediaTime::from_90khz(ts), data);
                }
                p.frames += 1;
                p.next_frame += Duration::from_micros(1_000_000 / FPS);
            }
        }
    }
}

fn request(i: usize, publishers: usize) -> JoinRequest {
    let mut request = join_request(&format!("p{i}"));
    request.room = "bench".into();
    request.can_publish = i < publishers;
    request
}

/// The profile's world, connected and warmed up.
pub struct Bench {
    pub world: World<Meter>,
    load: Load,
    pub settings: Settings,
}

/// What one measured stretch gave.
pub struct Round {
    pub media: u64,
    pub not_media: u64,
    pub engine_time: Duration,
    /// Per subscriber: media packets, delays (µs), video frames and audio packets lost.
    pub media_to: Vec<u64>,
    pub delays: Vec<Vec<u32>>,
    pub lost_video: Vec<u64>,
    pub lost_audio: Vec<u64>,
    /// Forwarded packets whose frame never completed at the subscriber, or whose
    /// publisher datagram was not seen.
    pub undelivered: u64,
    pub unmatched: u64,
    pub frames_by_layer: [u64; 3],
    pub seconds: f64,
}

impl Bench {
    pub fn new(settings: Settings) -> Self {
        let Settings { n, publishers, .. } = settings;
        let config = EngineConfig {
            candidates: vec![SERVER.parse().expect("addr")],
            max_participants_per_room: n,
            max_participants: n,
            ice_servers: vec![],
        };
        let mut world = World::with_probe(config, Meter::default());
        world.tick = STEP;
        for i in 0..n {
            world.join_with(request(i, publishers));
        }
        world.exchange();
        let camera = Camera {
            cid: "camera",
            width: 1280,
            height: 720,
            simulcast: None,
            channel: false,
        };
        let layers: Vec<Layer> = LAYERS
            .iter()
            .map(|&(rid, quality, divisor, bitrate)| Layer {
                rid,
                quality,
                divisor,
                bitrate,
            })
            .collect();
        for p in 0..publishers {
            world.publish_layers(p, camera, &layers);
        }
        world.exchange();
        let now = world.now;
        let load = Load {
            publishers: (0..publishers)
                .map(|p| Publisher {
                    index: p,
                    audio: world.publish_microphone(p, "microphone"),
                    packets: 0,
                    frames: 0,
                    // Staggered, as independent clients are.
                    next_audio: now + Duration::from_micros(p as u64 * 1_700),
                    next_frame: now + Duration::from_micros(p as u64 * 3_100),
                    paused: [false; 3],
                    signals_read: 0,
                })
                .collect(),
        };
        world.exchange();
        let probe = &mut world.probe;
        probe.publisher_addrs = world.clients.iter().map(|c| c.publisher_addr).collect();
        probe.subscriber_addrs = world
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| (c.subscriber_addr, i))
            .collect();
        probe.video_from = vec![vec![false; publishers]; n];
        Self {
            world,
            load,
            settings,
        }
    }

    /// Runs until every subscriber has video from every other publisher, asks for the
    /// small tiles, and warms up.
    pub fn connect(&mut self) {
        let publishers = self.settings.publishers;
        let load = &mut self.load;
        let connected = self.world.run_until(
            Duration::from_secs(30),
            |w| load.before_step(w),
            |w| {
                w.probe
                    .video_from
                    .iter()
                    .enumerate()
                    .all(|(i, from)| from.iter().enumerate().all(|(p, &got)| got || p == i))
            },
        );
        assert!(
            connected,
            "not every subscriber receives every publisher's video"
        );
        let rtx: Vec<u8> = self.world.clients[self.settings.n - 1]
            .subscriber
            .codec_config()
            .params()
            .iter()
            .filter_map(|p| p.resend().map(|pt| *pt))
            .collect();
        self.world.probe.rtx_pts = rtx;
        // Small tiles for one subscriber in five, middle-sized for another.
        let sids: Vec<(usize, String)> = (0..publishers)
            .flat_map(|p| {
                self.world.clients[p]
                    .signals
                    .iter()
                    .filter_map(move |m| match m {
                        signal_response::Message::TrackPublished(t) => t
                            .track
                            .as_ref()
                            .filter(|t| t.r#type == lk::TrackType::Video as i32)
                            .map(|t| (p, t.sid.clone())),
                        _ => None,
                    })
            })
            .collect();
        for i in 0..self.settings.n {
            let (width, height) = match i % 5 {
                3 => (320, 180),
                4 => (640, 360),
                _ => continue,
            };
            let key = self.world.clients[i].key;
            let track_sids = sids
                .iter()
                .filter(|(p, _)| *p != i)
                .map(|(_, sid)| sid.clone())
                .collect();
            let now = self.world.now;
            self.world.engine.signal(
                now,
                key,
                livekit_protocol::signal_request::Message::TrackSetting(lk::UpdateTrackSettings {
                    track_sids,
                    width,
                    height,
                    ..Default::default()
                }),
            );
        }
        let load = &mut self.load;
        self.world
            .run(Duration::from_secs(self.settings.warmup), |w| {
                load.before_step(w)
            });
    }

    /// Starts counting (the shard bench steps on its own).
    pub fn start(&mut self) {
        self.world.probe.start();
    }

    pub fn step(&mut self) {
        self.load.before_step(&mut self.world);
        self.world.step();
    }

    pub fn measure(&mut self, duration: Duration) -> Round {
        self.start();
        let started = self.world.now;
        let load = &mut self.load;
        self.world.run(duration, |w| load.before_step(w));
        // Drains what the last step left, so that every packet sent has had its chance.
        self.load.before_step(&mut self.world);
        self.world.exchange();
        self.finish(self.world.now.duration_since(started))
    }

    pub fn finish(&mut self, elapsed: Duration) -> Round {
        let probe = &mut self.world.probe;
        probe.measuring = false;
        // What left in the last 100 ms may still be on its way (the rest of its frame
        // held by the pacer): not counted as lost.
        let now = self.world.now;
        let undelivered = probe
            .sent
            .drain()
            .filter(|(_, v)| {
                v.first()
                    .is_some_and(|&at| now.duration_since(at) > Duration::from_millis(100))
            })
            .map(|(_, v)| v.len() as u64)
            .sum();
        Round {
            media: probe.media,
            not_media: probe.not_media,
            engine_time: probe.engine_time,
            media_to: std::mem::take(&mut probe.media_to),
            delays: std::mem::take(&mut probe.delays),
            lost_video: std::mem::take(&mut probe.lost_video),
            lost_audio: std::mem::take(&mut probe.lost_audio),
            undelivered,
            unmatched: probe.unmatched,
            frames_by_layer: probe.frames_by_layer,
            seconds: elapsed.as_secs_f64(),
        }
    }
}

/// The `q`th quantile (0..=1) of sorted `values`.
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(us: u32) -> f64 {
    f64::from(us) / 1000.0
}

/// The profile's bench: rounds of `seconds` virtual seconds, then the delays and losses
/// of all rounds together.
pub fn main(seconds: u64, rounds: usize) {
    let settings = Settings::from_env();
    let Settings { n, publishers, .. } = settings;
    println!(
        "forwarding, realistic: N = {n}, {publishers} publishers (Opus 50 pkt/s + VP8 simulcast \
         150k/500k/1.5M at {FPS} fps), everyone subscribes, DTLS-SRTP on, {seconds} virtual s \
         per round, {rounds} rounds; media packets only"
    );
    let mut bench = Bench::new(settings);
    bench.connect();
    let mut rates = Vec::new();
    let mut last = None;
    let mut delays: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut media_to = vec![0u64; n];
    let mut lost_video = vec![0u64; n];
    let mut lost_audio = vec![0u64; n];
    let (mut undelivered, mut unmatched, mut not_media, mut virtual_s) = (0, 0, 0, 0.0);
    let mut layers = [0u64; 3];
    for _ in 0..rounds {
        let round = bench.measure(Duration::from_secs(seconds));
        rates.push(round.media as f64 / round.engine_time.as_secs_f64());
        for i in 0..n {
            delays[i].extend_from_slice(&round.delays[i]);
            media_to[i] += round.media_to[i];
            lost_video[i] += round.lost_video[i];
            lost_audio[i] += round.lost_audio[i];
        }
        undelivered += round.undelivered;
        unmatched += round.unmatched;
        not_media += round.not_media;
        virtual_s += round.seconds;
        for (total, frames) in layers.iter_mut().zip(round.frames_by_layer) {
            *total += frames;
        }
        last = Some(round.media);
    }
    rates.sort_by(f64::total_cmp);
    let best = rates[rates.len() - 1];
    let median = rates[rates.len() / 2];
    let spread = (best - rates[0]) / best * 100.0;
    for d in &mut delays {
        d.sort_unstable();
    }
    let mut all: Vec<u32> = delays.iter().flatten().copied().collect();
    all.sort_unstable();
    println!(
        "{:>4}  {:>12}  {:>14}  {:>14}  {:>10}  {:>9}  {:>9}",
        "N", "media", "best pkt/s", "median pkt/s", "spread", "delay p50", "delay p99"
    );
    println!(
        "{n:>4}  {:>12}  {best:>14.0}  {median:>14.0}  {spread:>9.1}%  {:>7.1}ms  {:>7.1}ms",
        last.unwrap_or(0),
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.99)),
    );
    let total_layers: u64 = layers.iter().sum::<u64>().max(1);
    println!(
        "      video frames delivered by layer q/h/f: {:.0}% / {:.0}% / {:.0}%; \
         {not_media} non-media RTP packets (padding, probes, RTX: payload types {:?}) not \
         counted; \
         max delay {:.1} ms",
        layers[0] as f64 * 100.0 / total_layers as f64,
        layers[1] as f64 * 100.0 / total_layers as f64,
        layers[2] as f64 * 100.0 / total_layers as f64,
        bench.world.probe.rtx_pts,
        ms(all.last().copied().unwrap_or(0)),
    );
    let worst = (0..n)
        .max_by_key(|&i| quantile(&delays[i], 0.99))
        .expect("subscribers");
    let busiest = (0..n).max_by_key(|&i| media_to[i]).expect("subscribers");
    for (what, i) in [
        ("busiest subscriber", busiest),
        ("worst p99 subscriber", worst),
    ] {
        println!(
            "      {what}: p{i}, {:.0} media pkt/s, delay p50 {:.1} ms p99 {:.1} ms max {:.1} ms, \
             lost {} video frames and {} audio packets",
            media_to[i] as f64 / virtual_s,
            ms(quantile(&delays[i], 0.5)),
            ms(quantile(&delays[i], 0.99)),
            ms(delays[i].last().copied().unwrap_or(0)),
            lost_video[i],
            lost_audio[i],
        );
    }
    println!(
        "      lost in all: {} video frames, {} audio packets, {undelivered} packets of frames \
         never assembled, {unmatched} unmatched (delay resolution 1 ms: the world's step)",
        lost_video.iter().sum::<u64>(),
        lost_audio.iter().sum::<u64>(),
    );
}
