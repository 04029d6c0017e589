//! One client peer connection: a str0m `Rtc` in RTP mode on a UDP socket of its own on
//! loopback, driven by a task. Signalling reaches the `Rtc` through [`Peer::with`]; a
//! publisher writes its frames on a 30 frames/s clock and its audio every 20 ms, a
//! subscriber counts what arrives ([`RecvStats`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::media::{AUDIO_PACKETS_PER_S, AudioSource, FPS, RecvStats, VideoSource};

/// What the task and the signalling share.
pub struct PeerState {
    pub rtc: Rtc,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// ICE gave up (the connection is lost).
    pub disconnected: bool,
    pub video: Option<VideoSource>,
    pub audio: Option<AudioSource>,
    pub stats: RecvStats,
    /// RTP packets written (publisher).
    pub sent_packets: u64,
    /// Datagrams received and sent, RTP packets str0m handed out.
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub rtp_events: u64,
    local: SocketAddr,
    /// Incoming SSRC → video (true) or audio.
    kinds: HashMap<Ssrc, bool>,
}

impl PeerState {
    /// Accepts the server's answer to a publisher's offer and starts the sources on the
    /// payload types the answer kept (the same for our server and Janus).
    pub fn accept_publisher_answer(
        &mut self,
        pending: SdpPendingOffer,
        answer: SdpAnswer,
        video_mid: Option<Mid>,
        audio_mid: Option<Mid>,
        source: u16,
    ) -> anyhow::Result<()> {
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        let pt = |codec| {
            self.rtc
                .codec_config()
                .iter()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
        };
        let (video_pt, audio_pt) = (pt(Codec::Vp8), pt(Codec::Opus));
        if let (Some(mid), Some(pt)) = (video_mid, video_pt) {
            self.video = Some(VideoSource::new(mid, pt, source));
        }
        if let (Some(mid), Some(pt)) = (audio_mid, audio_pt) {
            self.audio = Some(AudioSource::new(mid, pt, source));
        }
        Ok(())
    }

    fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.datagrams_in += 1;
        let Ok(receive) = Receive::new(Protocol::Udp, from, self.local, data) else {
            return;
        };
        let input = Input::Receive(now, receive);
        if self.rtc.accepts(&input) {
            let _ = self.rtc.handle_input(input);
        }
    }

    /// Polls str0m until it wants time: datagrams to send go to `out`; the deadline.
    fn drain(&mut self, out: &mut Vec<(SocketAddr, Vec<u8>)>) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(at)) => return at,
                Ok(Output::Transmit(t)) => {
                    self.datagrams_out += 1;
                    out.push((t.destination, t.contents.to_vec()));
                }
                Ok(Output::Event(event)) => self.on_event(event),
                Err(e) => {
                    eprintln!("load: a peer connection failed: {e}");
                    self.disconnected = true;
                    return Instant::now() + Duration::from_secs(3600);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.disconnected = true;
            }
            Event::KeyframeRequest(request) => {
                if let Some(video) = &mut self.video
                    && video.mid == request.mid
                {
                    video.keyframe_asked(request.rid);
                }
            }
            Event::RtpPacket(packet) => {
                self.rtp_events += 1;
                let ssrc = packet.header.ssrc;
                let video = match self.kinds.get(&ssrc) {
                    Some(&video) => video,
                    None => {
                        let mid = self.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid());
                        let video = mid
                            .and_then(|mid| self.rtc.media(mid))
                            .is_some_and(|m| m.kind() == MediaKind::Video);
                        self.kinds.insert(ssrc, video);
                        video
                    }
                };
                self.stats.on_packet(&packet, video, packet.timestamp);
            }
            _ => {}
        }
    }
}

/// A peer connection and its task.
#[derive(Clone)]
pub struct Peer {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<PeerState>,
    notify: Notify,
}

/// A client `Rtc` in RTP mode with VP8 and Opus only.
fn client_rtc(local: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp").expect("a host candidate"));
    rtc
}

impl Peer {
    /// Binds a socket on `ip` (an address of this machine) and starts the connection's
    /// task (until `stop`).
    pub async fn start(ip: IpAddr, stop: CancellationToken) -> anyhow::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        let state = PeerState {
            rtc: client_rtc(local, Instant::now()),
            connected: false,
            disconnected: false,
            video: None,
            audio: None,
            stats: RecvStats::default(),
            sent_packets: 0,
            datagrams_in: 0,
            datagrams_out: 0,
            rtp_events: 0,
            local,
            kinds: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            notify: Notify::new(),
        });
        tokio::spawn(run(shared.clone(), socket, stop));
        Ok(Peer { shared })
    }

    /// Runs `f` on the connection's state, then wakes its task (str0m may have output).
    pub fn with<R>(&self, f: impl FnOnce(&mut PeerState) -> R) -> R {
        let r = f(&mut self.lock());
        self.shared.notify.notify_one();
        r
    }

    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.shared
            .state
            .lock()
            .expect("a peer's lock is never poisoned")
    }

    pub fn connected(&self) -> bool {
        self.lock().connected
    }

    /// The counts so far, replaced by fresh ones.
    pub fn take_stats(&self) -> RecvStats {
        std::mem::take(&mut self.lock().stats)
    }

    /// When a stamp of `slot` (0..3 a video layer, 3 audio) from `source` last arrived.
    pub fn last_seen(&self, source: u16, slot: usize) -> Option<Instant> {
        self.lock()
            .stats
            .last_seen
            .get(&source)
            .and_then(|s| s[slot])
    }

    pub fn sent_packets(&self) -> u64 {
        self.lock().sent_packets
    }

    /// Datagrams in, datagrams out, RTP packets handed out by str0m.
    pub fn io_counts(&self) -> [u64; 3] {
        let st = self.lock();
        [st.datagrams_in, st.datagrams_out, st.rtp_events]
    }
}

async fn run(shared: Arc<Shared>, socket: UdpSocket, stop: CancellationToken) {
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    let mut video_tick = tokio::time::interval(Duration::from_secs(1) / FPS);
    video_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut audio_tick = tokio::time::interval(Duration::from_secs(1) / AUDIO_PACKETS_PER_S);
    audio_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let (deadline, video, audio) = {
            let mut st = shared.state.lock().expect("never poisoned");
            let deadline = st.drain(&mut out);
            let live = st.connected && !st.disconnected;
            (
                deadline,
                live && st.video.is_some(),
                live && st.audio.is_some(),
            )
        };
        for (destination, data) in out.drain(..) {
            let _ = socket.send_to(&data, destination).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv_from(&mut buf) => {
                let mut st = shared.state.lock().expect("never poisoned");
                if let Ok((n, from)) = received {
                    st.receive(Instant::now(), from, &buf[..n]);
                }
                // Whatever else is there, without waiting; str0m is polled after each
                // input (it keeps one received packet at a time).
                for _ in 0..64 {
                    st.drain(&mut out);
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => st.receive(Instant::now(), from, &buf[..n]),
                        Err(_) => break,
                    }
                }
            }
            _ = video_tick.tick(), if video => {
                let mut st = shared.state.lock().expect("never poisoned");
                let now = Instant::now();
                let st = &mut *st;
                if let Some(source) = &mut st.video {
                    st.sent_packets += source.write_frame(&mut st.rtc, now) as u64;
                }
                let _ = st.rtc.handle_input(Input::Timeout(now));
            }
            _ = audio_tick.tick(), if audio => {
                let mut st = shared.state.lock().expect("never poisoned");
                let now = Instant::now();
                let st = &mut *st;
                if let Some(source) = &mut st.audio {
                    st.sent_packets += source.write_packet(&mut st.rtc, now) as u64;
                }
                let _ = st.rtc.handle_input(Input::Timeout(now));
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let mut st = shared.state.lock().expect("never poisoned");
                let _ = st.rtc.handle_input(Input::Timeout(Instant::now()));
            }
            _ = shared.notify.notified() => {}
        }
    }
}
