//! What the publishers send and what the subscribers read: pre-built VP8 simulcast and
//! Opus RTP payloads, each ending in a stamp (magic, source, layer, kind, send time), and
//! the counters a subscriber keeps (packets, loss from sequence gaps, one-way delay),
//! without decoding anything.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};

/// The one monotonic clock every stamp is read against (shared by the whole process).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Starts the clock (call once, early).
pub fn start_clock() {
    let _ = origin();
}

/// Microseconds from the process's origin to `t`.
pub fn micros(t: Instant) -> u64 {
    t.saturating_duration_since(origin()).as_micros() as u64
}

/// Every payload ends in this trailer: `MAGIC`, source (u16), layer (u8: 0 q, 1 h, 2 f,
/// 255 audio), kind (u8: 0 audio, 1 video), index (u32: the frame, the same on every
/// layer, or the audio packet), send time (u64 µs), big-endian.
pub const TRAILER: usize = 20;
const MAGIC: u32 = 0x5456_4c44; // "TVLD"
pub const AUDIO_LAYER: u8 = 255;

/// What a trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub source: u16,
    pub layer: u8,
    pub index: u32,
    pub sent_us: u64,
}

fn write_trailer(buf: &mut [u8], stamp: Stamp, video: bool) {
    let n = buf.len();
    let t = &mut buf[n - TRAILER..];
    t[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    t[4..6].copy_from_slice(&stamp.source.to_be_bytes());
    t[6] = stamp.layer;
    t[7] = u8::from(video);
    t[8..12].copy_from_slice(&stamp.index.to_be_bytes());
    t[12..20].copy_from_slice(&stamp.sent_us.to_be_bytes());
}

/// The stamp in the last [`TRAILER`] bytes of `tail`, if they hold one.
pub fn read_trailer(tail: &[u8]) -> Option<Stamp> {
    if tail.len() < TRAILER {
        return None;
    }
    let t = &tail[tail.len() - TRAILER..];
    if u32::from_be_bytes(t[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    Some(Stamp {
        source: u16::from_be_bytes(t[4..6].try_into().ok()?),
        layer: t[6],
        index: u32::from_be_bytes(t[8..12].try_into().ok()?),
        sent_us: u64::from_be_bytes(t[12..20].try_into().ok()?),
    })
}

/// One simulcast layer: RID, size, and target bit rate at 30 frames/s.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    pub rid: &'static str,
    pub width: u16,
    pub height: u16,
    pub bitrate: u32,
}

/// q, h and f, as a 1280×720 LiveKit camera publishes them.
pub const LAYERS: [LayerSpec; 3] = [
    LayerSpec {
        rid: "q",
        width: 320,
        height: 180,
        bitrate: 150_000,
    },
    LayerSpec {
        rid: "h",
        width: 640,
        height: 360,
        bitrate: 500_000,
    },
    LayerSpec {
        rid: "f",
        width: 1280,
        height: 720,
        bitrate: 1_500_000,
    },
];

pub const FPS: u32 = 30;
pub const AUDIO_PACKETS_PER_S: u32 = 50;
/// Opus at 32 kbit/s in 20 ms packets.
const AUDIO_PAYLOAD: usize = 80;
/// VP8 data per RTP packet at most (browsers stay near 1,200 bytes a datagram).
const MAX_VP8_CHUNK: usize = 1100;
/// A keyframe is this many times the size of a delta frame.
const KEYFRAME_FACTOR: usize = 3;
/// Keyframes asked for more often than this are sent once.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// The VP8 payload descriptor written: X, I (15-bit PictureID), L, T.
const VP8_DESCRIPTOR: usize = 6;

/// A publisher's simulcast camera: VP8 frames on each RID at 30 frames/s.
pub struct VideoSource {
    pub mid: Mid,
    pub pt: Pt,
    source: u16,
    seq: [u64; 3],
    picid: [u16; 3],
    tl0: [u8; 3],
    ts_base: [u32; 3],
    frame: u32,
    want_key: [bool; 3],
    last_key: [Option<Instant>; 3],
    /// Layers sent (dynacast turns them off and on).
    enabled: [bool; 3],
}

impl VideoSource {
    pub fn new(mid: Mid, pt: Pt, source: u16) -> Self {
        Self {
            mid,
            pt,
            source,
            seq: [
                rand::random::<u16>() as u64 % 30_000,
                rand::random::<u16>() as u64 % 30_000,
                rand::random::<u16>() as u64 % 30_000,
            ],
            picid: [
                rand::random::<u16>() & 0x7fff,
                rand::random::<u16>() & 0x7fff,
                rand::random::<u16>() & 0x7fff,
            ],
            tl0: [0; 3],
            ts_base: [rand::random(), rand::random(), rand::random()],
            frame: 0,
            want_key: [true; 3],
            last_key: [None; 3],
            enabled: [true; 3],
        }
    }

    /// Sends layer `layer` (0 q, 1 h, 2 f) or not: a layer turned on starts with a
    /// keyframe.
    pub fn set_enabled(&mut self, layer: usize, on: bool) {
        if let Some(enabled) = self.enabled.get_mut(layer) {
            if on && !*enabled {
                self.want_key[layer] = true;
            }
            *enabled = on;
        }
    }

    /// A keyframe request for `rid` (none: every layer).
    pub fn keyframe_asked(&mut self, rid: Option<Rid>) {
        for (i, layer) in LAYERS.iter().enumerate() {
            if rid.is_none_or(|r| r == Rid::from(layer.rid)) {
                self.want_key[i] = true;
            }
        }
    }

    /// Writes the next frame of every layer; the number of packets written.
    pub fn write_frame(&mut self, rtc: &mut Rtc, now: Instant) -> usize {
        let sent_us = micros(now);
        let mut packets = 0;
        for (l, layer) in LAYERS.iter().enumerate() {
            if !self.enabled[l] {
                continue;
            }
            let key = self.want_key[l]
                && self.last_key[l]
                    .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_MIN_INTERVAL);
            if key {
                self.want_key[l] = false;
                self.last_key[l] = Some(now);
            }
            let base = (layer.bitrate / 8 / FPS) as usize;
            let size = if key { base * KEYFRAME_FACTOR } else { base };
            let chunks = size.div_ceil(MAX_VP8_CHUNK);
            let picid = self.picid[l];
            self.picid[l] = (picid + 1) & 0x7fff;
            let tl0 = self.tl0[l];
            self.tl0[l] = tl0.wrapping_add(1);
            let ts = self.ts_base[l].wrapping_add(self.frame.wrapping_mul(90_000 / FPS));
            let rid = Rid::from(layer.rid);
            let stamp = Stamp {
                source: self.source,
                layer: l as u8,
                index: self.frame,
                sent_us,
            };
            let mut api = rtc.direct_api();
            let Some(stream) = api.stream_tx_by_mid(self.mid, Some(rid)) else {
                continue;
            };
            for c in 0..chunks {
                let len = size / chunks + usize::from(c < size % chunks);
                let mut payload = vec![0u8; VP8_DESCRIPTOR + len];
                payload[0] = 0x80 | if c == 0 { 0x10 } else { 0 }; // X, S on the first
                payload[1] = 0xe0; // I, L, T
                payload[2] = 0x80 | (picid >> 8) as u8; // M: 15-bit PictureID
                payload[3] = picid as u8;
                payload[4] = tl0;
                payload[5] = 0x20; // TID 0, Y
                let data = &mut payload[VP8_DESCRIPTOR..];
                data.fill((l as u8) ^ (c as u8));
                if c == 0 {
                    // The VP8 frame header: P bit clear on a keyframe, then the start
                    // code and the size.
                    data[0] = if key { 0x10 } else { 0x11 };
                    data[1] = 0x02;
                    data[2] = 0x00;
                    data[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                    data[6..8].copy_from_slice(&layer.width.to_le_bytes());
                    data[8..10].copy_from_slice(&layer.height.to_le_bytes());
                }
                write_trailer(data, stamp, true);
                let seq = self.seq[l];
                self.seq[l] += 1;
                stream.write_rtp(
                    RtpWrite::new(self.pt, SeqNo::from(seq), ts, now, payload)
                        .marker(c + 1 == chunks)
                        .nackable(true),
                );
                packets += 1;
            }
        }
        self.frame = self.frame.wrapping_add(1);
        packets
    }
}

/// A publisher's microphone: one Opus packet every 20 ms.
pub struct AudioSource {
    pub mid: Mid,
    pub pt: Pt,
    source: u16,
    seq: u64,
    index: u32,
    ts: u32,
}

impl AudioSource {
    pub fn new(mid: Mid, pt: Pt, source: u16) -> Self {
        Self {
            mid,
            pt,
            source,
            seq: rand::random::<u16>() as u64 % 30_000,
            index: 0,
            ts: rand::random(),
        }
    }

    pub fn write_packet(&mut self, rtc: &mut Rtc, now: Instant) -> usize {
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(self.mid, None) else {
            return 0;
        };
        let mut payload = vec![0x55u8; AUDIO_PAYLOAD];
        payload[0] = 0x78; // TOC: CELT FB 20 ms, one frame
        write_trailer(
            &mut payload,
            Stamp {
                source: self.source,
                layer: AUDIO_LAYER,
                index: self.index,
                sent_us: micros(now),
            },
            false,
        );
        let ext = ExtensionValues {
            audio_level: Some(-30),
            voice_activity: Some(true),
            ..Default::default()
        };
        stream.write_rtp(
            RtpWrite::new(self.pt, SeqNo::from(self.seq), self.ts, now, payload).ext_vals(ext),
        );
        self.seq += 1;
        self.index = self.index.wrapping_add(1);
        self.ts = self.ts.wrapping_add(48_000 / AUDIO_PACKETS_PER_S);
        1
    }
}

/// The length of a VP8 payload descriptor at the start of `payload`.
fn vp8_descriptor_len(payload: &[u8]) -> Option<usize> {
    let b0 = *payload.first()?;
    if b0 & 0x80 == 0 {
        return Some(1);
    }
    let x = *payload.get(1)?;
    let mut len = 2;
    if x & 0x80 != 0 {
        len += if payload.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    if x & 0x40 != 0 {
        len += 1;
    }
    if x & 0x30 != 0 {
        len += 1;
    }
    (len <= payload.len()).then_some(len)
}

/// Which numbers of a sequence arrived: the range seen, and how many in it.
#[derive(Debug, Default, Clone)]
struct SeqCount {
    first: u64,
    highest: u64,
    received: u64,
    /// Which of the 64 sequence numbers up to `highest` arrived (bit i: highest - i).
    window: u64,
    started: bool,
}

/// One incoming SSRC.
#[derive(Debug, Default, Clone)]
struct SsrcCount {
    seq: SeqCount,
    /// The last bytes of the previous video packet's VP8 data: a stamp may straddle two
    /// packets once a server packetizes frames afresh.
    tail: Vec<u8>,
}

impl SeqCount {
    /// Counts `seq`; false for a duplicate.
    fn count(&mut self, seq: u64) -> bool {
        if !self.started {
            self.started = true;
            self.first = seq;
            self.highest = seq;
            self.window = 1;
            self.received = 1;
            return true;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.window = if shift >= 64 { 0 } else { self.window << shift };
            self.window |= 1;
            self.highest = seq;
        } else {
            let back = self.highest - seq;
            if seq < self.first {
                return false; // from before the count started
            }
            if back < 64 {
                if self.window & (1 << back) != 0 {
                    return false;
                }
                self.window |= 1 << back;
            }
        }
        self.received += 1;
        true
    }

    fn expected(&self) -> u64 {
        if self.started {
            self.highest - self.first + 1
        } else {
            0
        }
    }
}

/// Everything a subscriber connection counts.
#[derive(Debug, Default, Clone)]
pub struct RecvStats {
    pub packets: u64,
    pub video_packets: u64,
    pub audio_packets: u64,
    pub bytes: u64,
    pub duplicates: u64,
    /// Stamped frames (video) by layer, and stamped audio packets.
    pub frames_by_layer: [u64; 3],
    pub audio_stamped: u64,
    /// One-way delay, µs, of every stamped packet (audio, and each video frame's last).
    pub delays_us: Vec<u32>,
    /// Per source: when a stamp of each layer (0..3, 3 = audio) was last seen.
    pub last_seen: HashMap<u16, [Option<Instant>; 4]>,
    ssrcs: HashMap<u32, SsrcCount>,
    /// Stamped indices per source and kind (video: frames on any layer; audio packets).
    stamped: HashMap<(u16, bool), SeqCount>,
    /// Expected and received RTP packets, and stamped ones, of the connections merged in.
    merged_rtp: (u64, u64),
    merged_stamped: (u64, u64),
}

impl RecvStats {
    /// Counts a packet that arrived at `at`; `video` from the m-line it came on.
    pub fn on_packet(&mut self, packet: &RtpPacket, video: bool, at: Instant) {
        let payload = &packet.payload[..];
        if payload.is_empty() {
            return;
        }
        let ssrc = packet.header.ssrc;
        let count = self.ssrcs.entry(*ssrc).or_default();
        if !count.seq.count(*packet.seq_no) {
            self.duplicates += 1;
            return;
        }
        self.packets += 1;
        self.bytes += payload.len() as u64;
        let stamp = if video {
            self.video_packets += 1;
            let Some(start) = vp8_descriptor_len(payload) else {
                return;
            };
            let data = &payload[start..];
            let stamp = if packet.header.marker {
                if data.len() >= TRAILER {
                    read_trailer(data)
                } else {
                    let mut joined = std::mem::take(&mut count.tail);
                    joined.extend_from_slice(data);
                    read_trailer(&joined)
                }
            } else {
                None
            };
            count.tail.clear();
            if !packet.header.marker {
                count
                    .tail
                    .extend_from_slice(&data[data.len().saturating_sub(TRAILER)..]);
            }
            stamp
        } else {
            self.audio_packets += 1;
            read_trailer(payload)
        };
        let Some(stamp) = stamp else {
            return;
        };
        let slot = if stamp.layer == AUDIO_LAYER {
            self.audio_stamped += 1;
            3
        } else if let Some(n) = self.frames_by_layer.get_mut(stamp.layer as usize) {
            *n += 1;
            stamp.layer as usize
        } else {
            return;
        };
        self.last_seen.entry(stamp.source).or_default()[slot] = Some(at);
        self.stamped
            .entry((stamp.source, slot < 3))
            .or_default()
            .count(u64::from(stamp.index));
        let delay = micros(at).saturating_sub(stamp.sent_us);
        self.delays_us.push(delay.min(u64::from(u32::MAX)) as u32);
    }

    /// Expected and received RTP packets over every SSRC (sequence gaps: the loss
    /// between the server and this client).
    pub fn rtp_expected_received(&self) -> (u64, u64) {
        self.ssrcs.values().fold(self.merged_rtp, |(e, r), c| {
            (e + c.seq.expected(), r + c.seq.received)
        })
    }

    /// Expected and received stamped video frames and audio packets over every source
    /// (gaps in the publishers' numbering: the loss from publisher to this client).
    pub fn stamped_expected_received(&self) -> (u64, u64) {
        self.stamped
            .values()
            .fold(self.merged_stamped, |(e, r), c| {
                (e + c.expected(), r + c.received)
            })
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &RecvStats) {
        self.packets += other.packets;
        self.video_packets += other.video_packets;
        self.audio_packets += other.audio_packets;
        self.bytes += other.bytes;
        self.duplicates += other.duplicates;
        for (a, b) in self.frames_by_layer.iter_mut().zip(other.frames_by_layer) {
            *a += b;
        }
        self.audio_stamped += other.audio_stamped;
        self.delays_us.extend_from_slice(&other.delays_us);
        let (e, r) = other.rtp_expected_received();
        self.merged_rtp.0 += e;
        self.merged_rtp.1 += r;
        let (e, r) = other.stamped_expected_received();
        self.merged_stamped.0 += e;
        self.merged_stamped.1 += r;
    }
}

/// The `q`-th quantile (0..=1) of `sorted`, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(f64::from(sorted[i]) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_round_trip() {
        let mut buf = vec![0u8; 40];
        let stamp = Stamp {
            source: 7,
            layer: 2,
            index: 99,
            sent_us: 123_456_789,
        };
        write_trailer(&mut buf, stamp, true);
        assert_eq!(read_trailer(&buf), Some(stamp));
        assert_eq!(read_trailer(&buf[..39]), None);
        assert_eq!(read_trailer(&buf[..TRAILER - 1]), None);
    }

    #[test]
    fn sequence_gaps_and_duplicates() {
        let mut c = SeqCount::default();
        for seq in [10, 11, 13, 12, 12, 16] {
            c.count(seq);
        }
        assert_eq!(c.expected(), 7);
        assert_eq!(c.received, 5);
    }

    #[test]
    fn descriptor_lengths() {
        assert_eq!(vp8_descriptor_len(&[0x10, 0, 0]), Some(1));
        assert_eq!(
            vp8_descriptor_len(&[0x90, 0xe0, 0x81, 0x02, 3, 0x20, 9]),
            Some(6)
        );
        assert_eq!(vp8_descriptor_len(&[0x90, 0x80, 0x05, 9]), Some(3));
    }
}
