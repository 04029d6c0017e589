//! What the engine's tests and the forwarding bench share to play clients: a [`World`]
//! (the engine, str0m peers on made-up addresses playing the clients, virtual time, and
//! the loop that carries datagrams and signalling between them), and the pieces it is
//! made of (LiveKit session descriptions as clients send them, datagrams from the
//! engine). Not part of the service: public (and hidden from the documentation) only so
//! that `benches/` can use it.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{
    Direction, MediaData, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};

use super::engine::{Engine, EngineConfig, JoinRequest, Output};
use super::{EngineEvent, ParticipantKey};

/// The engine's one host candidate.
pub const SERVER: &str = "10.0.0.1:7882";

/// The engine's address, [`SERVER`].
pub fn server() -> SocketAddr {
    SERVER.parse().expect("a socket address")
}

/// A client's peer connection with one host candidate at `addr`.
pub fn client_rtc(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
    rtc
}

/// A LiveKit session description as a client sends it.
pub fn description(kind: &str, sdp: impl Into<String>, id: u32) -> lk::SessionDescription {
    lk::SessionDescription {
        r#type: kind.into(),
        sdp: sdp.into(),
        id,
        ..Default::default()
    }
}

/// A client's subscriber connection accepts the engine's offer: the answer to send back.
pub fn answer_offer(rtc: &mut Rtc, offer: &lk::SessionDescription) -> lk::SessionDescription {
    let offer = SdpOffer::from_sdp_string(&offer.sdp).expect("engine offers valid SDP");
    let answer = rtc.sdp_api().accept_offer(offer).expect("accept offer");
    description("answer", answer.to_sdp_string(), 0)
}

/// A client's publisher connection accepts the engine's answer to its pending offer.
pub fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &lk::SessionDescription) {
    let answer = SdpAnswer::from_sdp_string(&answer.sdp).expect("engine answers valid SDP");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("accept answer");
}

/// A datagram from the engine arriving at a client's `destination` at `now`.
pub fn from_server(now: Instant, destination: SocketAddr, contents: &[u8]) -> Input<'_> {
    Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: server(),
            destination,
            contents: contents.try_into().expect("a datagram"),
        },
    )
}

/// A join request to the room named `"room"`, with every grant, named after the identity
/// in capitals, on the dual peer connection path (the str0m clients answer the server's
/// offers).
pub fn join_request(identity: &str) -> JoinRequest {
    JoinRequest {
        room: "room".into(),
        identity: identity.into(),
        name: identity.to_uppercase(),
        metadata: String::new(),
        attributes: HashMap::new(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
        can_update_own_metadata: true,
        can_publish_sources: Vec::new(),
        auto_subscribe: true,
        single_pc: false,
        publisher_offer: None,
    }
}

/// A VP8 frame of `len` bytes (10 at least): the header of a `width`×`height` frame (a
/// keyframe when `keyframe`: the P bit clear), then `filler`.
pub fn vp8_frame(keyframe: bool, width: u16, height: u16, len: usize, filler: u8) -> Vec<u8> {
    let len = len.max(10);
    let mut data = Vec::with_capacity(len);
    data.push(if keyframe { 0x10 } else { 0x11 });
    data.extend([0x02, 0x00, 0x9d, 0x01, 0x2a]);
    data.extend(width.to_le_bytes());
    data.extend(height.to_le_bytes());
    data.resize(len, filler);
    data
}

/// One simulated client: two str0m peer connections on their own addresses, and what
/// they received.
pub struct Client {
    pub key: ParticipantKey,
    pub publisher: Rtc,
    pub publisher_addr: SocketAddr,
    pub subscriber: Rtc,
    pub subscriber_addr: SocketAddr,
    /// The publisher's offer waiting for the engine's answer.
    pub pending: Option<SdpPendingOffer>,
    /// Every signalling message the engine sent this client, in order.
    pub signals: Vec<signal_response::Message>,
    /// The published camera's m-line, and the `_reliable` data channel.
    pub video_mid: Option<Mid>,
    pub channel: Option<ChannelId>,
    /// Media frames received, on either connection.
    pub frames_received: usize,
    pub data_received: Vec<lk::DataPacket>,
    /// Video received: (layer marker byte, RTP time, keyframe), in order.
    pub video: Vec<(u8, u64, bool)>,
    /// Publisher side: the RIDs the engine asked keyframes for, not yet sent.
    pub keyframes_asked: Vec<Option<Rid>>,
    /// Single peer connection (`/rtc/v1`): only `publisher` is used.
    pub single: bool,
}

/// What watches the world's traffic: every engine call the world makes goes through
/// [`Probe::call`], and every datagram the engine sends a client past
/// [`Probe::transmit`]. `()` watches nothing (the tests); the forwarding bench times and
/// counts.
pub trait Probe {
    /// Runs one engine call: a packet in (with the next timeout, as the driver asks), a
    /// timeout, a poll.
    #[inline]
    fn call<R>(&mut self, engine: &mut Engine, f: impl FnOnce(&mut Engine) -> R) -> R {
        f(engine)
    }

    /// A datagram from the engine to a client's `destination` (its subscriber
    /// connection when `subscriber`), before the client receives it.
    #[inline]
    fn transmit(&mut self, _destination: SocketAddr, _subscriber: bool, _contents: &[u8]) {}

    /// The engine's output was drained (once per round of [`World::exchange`]).
    #[inline]
    fn drained(&mut self) {}

    /// A datagram from a client's `source` to the engine at `now`, before the engine
    /// handles it (the forwarding bench times each packet from here).
    #[inline]
    fn receive(&mut self, _now: Instant, _source: SocketAddr, _contents: &[u8]) {}

    /// Media (a whole video frame, or an audio packet) that the client connection at
    /// `destination` assembled at `now`, as str0m hands it over.
    #[inline]
    fn media(&mut self, _now: Instant, _destination: SocketAddr, _data: &MediaData) {}
}

impl Probe for () {}

/// A narrow link in front of one address: datagrams to it queue and leave at `bps`.
pub struct Bottleneck {
    pub destination: SocketAddr,
    pub bps: u64,
    /// When the link is free again, and the datagrams in flight with their arrival time.
    pub free_at: Instant,
    pub queue: VecDeque<(Instant, Vec<u8>)>,
}

/// A camera to publish: what the `AddTrack` request announces and the offer carries.
#[derive(Debug, Clone, Copy)]
pub struct Camera {
    pub cid: &'static str,
    pub width: u32,
    pub height: u32,
    /// Three simulcast layers (q, h, f: a quarter, half and all of the size) with the
    /// bit rate announced for each (0: none); `None`: one layer.
    pub simulcast: Option<[u32; 3]>,
    /// Opens the `_reliable` data channel in the same offer.
    pub channel: bool,
}

/// One simulcast layer a publisher announces (`AddTrack`) and offers: its RID, the
/// quality the announcement gives it, its size as a divisor of the camera's, and the bit
/// rate announced (0: none).
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    pub rid: &'static str,
    pub quality: lk::VideoQuality,
    pub divisor: u32,
    pub bitrate: u32,
}

/// The engine and its clients in virtual time, with no sockets: the world carries
/// datagrams and signalling between them. Clients are indices into `clients`.
pub struct World<P: Probe = ()> {
    pub now: Instant,
    pub engine: Engine,
    pub clients: Vec<Client>,
    /// The engine's events, in order.
    pub events: Vec<EngineEvent>,
    pub bottleneck: Option<Bottleneck>,
    /// Virtual time per [`World::step`]: 2 ms unless set.
    pub tick: Duration,
    pub probe: P,
    /// Client address → index in `clients` (checked against the client's addresses:
    /// the tests may remove clients).
    by_addr: HashMap<SocketAddr, usize>,
}

impl World {
    pub fn new(config: EngineConfig) -> Self {
        Self::with_probe(config, ())
    }
}

impl<P: Probe> World<P> {
    pub fn with_probe(config: EngineConfig, probe: P) -> Self {
        let now = Instant::now();
        Self {
            now,
            engine: Engine::new(config, now),
            clients: Vec::new(),
            events: Vec::new(),
            bottleneck: None,
            tick: Duration::from_millis(2),
            probe,
            by_addr: HashMap::new(),
        }
    }

    /// Joins `identity` to the room named `"room"` with every grant ([`join_request`]).
    pub fn join(&mut self, identity: &str) -> usize {
        self.join_with(join_request(identity))
    }

    /// Joins as asked; the client's connections wait for the engine's first offer.
    pub fn join_with(&mut self, request: JoinRequest) -> usize {
        let key = self.engine.join(self.now, request).expect("join");
        let (publisher_addr, _) = addresses(self.clients.len());
        let publisher = client_rtc(publisher_addr, self.now);
        self.add_client(key, publisher, None, None, false)
    }

    /// Joins as a single peer connection client whose join request carries its first
    /// offer: a `_reliable` channel and one receive-only audio m-line (like the Python
    /// SDK plus one slot, so that an unassigned slot is answered too).
    pub fn join_single(&mut self, identity: &str) -> usize {
        let (addr, _) = addresses(self.clients.len());
        let mut publisher = client_rtc(addr, self.now);
        let mut api = publisher.sdp_api();
        let channel = api.add_channel("_reliable".into());
        api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let (offer, pending) = api.apply().expect("changes to offer");
        let mut request = join_request(identity);
        request.single_pc = true;
        request.publisher_offer = Some(description("offer", offer.to_sdp_string(), 1));
        let key = self.engine.join(self.now, request).expect("join");
        self.add_client(key, publisher, Some(pending), Some(channel), true)
    }

    fn add_client(
        &mut self,
        key: ParticipantKey,
        publisher: Rtc,
        pending: Option<SdpPendingOffer>,
        channel: Option<ChannelId>,
        single: bool,
    ) -> usize {
        let index = self.clients.len();
        let (publisher_addr, subscriber_addr) = addresses(index);
        self.by_addr.insert(publisher_addr, index);
        self.by_addr.insert(subscriber_addr, index);
        self.clients.push(Client {
            key,
            publisher,
            publisher_addr,
            subscriber: client_rtc(subscriber_addr, self.now),
            subscriber_addr,
            pending,
            signals: Vec::new(),
            video_mid: None,
            channel,
            frames_received: 0,
            data_received: Vec::new(),
            video: Vec::new(),
            keyframes_asked: Vec::new(),
            single,
        });
        index
    }

    /// Announces a 320×180 camera and a data channel, and offers them.
    pub fn publish(&mut self, index: usize) {
        self.publish_camera(
            index,
            Camera {
                cid: "camera-cid",
                width: 320,
                height: 180,
                simulcast: None,
                channel: true,
            },
        );
    }

    /// Announces a 1280×720 camera with three simulcast layers (q, h, f) and offers it.
    pub fn publish_simulcast(&mut self, index: usize) {
        self.publish_simulcast_announcing(index, [0; 3]);
    }

    /// The same, announcing a target bit rate per layer (0: none), as clients do.
    pub fn publish_simulcast_announcing(&mut self, index: usize, bitrates: [u32; 3]) {
        self.publish_camera(
            index,
            Camera {
                cid: "camera-cid",
                width: 1280,
                height: 720,
                simulcast: Some(bitrates),
                channel: false,
            },
        );
    }

    /// Announces `camera` (`AddTrack`), adds its m-line (and the data channel) to client
    /// `index`'s publisher connection, and offers them.
    pub fn publish_camera(&mut self, index: usize, camera: Camera) {
        let layers: Vec<Layer> = match camera.simulcast {
            None => Vec::new(),
            Some(bitrates) => [
                ("q", lk::VideoQuality::Low, 4),
                ("h", lk::VideoQuality::Medium, 2),
                ("f", lk::VideoQuality::High, 1),
            ]
            .into_iter()
            .zip(bitrates)
            .map(|((rid, quality, divisor), bitrate)| Layer {
                rid,
                quality,
                divisor,
                bitrate,
            })
            .collect(),
        };
        self.publish_layers(index, camera, &layers);
    }

    /// Announces `camera` with the simulcast `layers` given (none: one layer; its own
    /// `simulcast` field is not read), adds its m-line (and the data channel) to client
    /// `index`'s publisher connection, and offers them.
    pub fn publish_layers(&mut self, index: usize, camera: Camera, layers: &[Layer]) {
        let key = self.clients[index].key;
        let announced = layers
            .iter()
            .map(|layer| lk::VideoLayer {
                quality: layer.quality as i32,
                width: camera.width / layer.divisor,
                height: camera.height / layer.divisor,
                bitrate: layer.bitrate,
                ..Default::default()
            })
            .collect();
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::AddTrack(lk::AddTrackRequest {
                cid: camera.cid.into(),
                r#type: lk::TrackType::Video as i32,
                source: lk::TrackSource::Camera as i32,
                width: camera.width,
                height: camera.height,
                layers: announced,
                ..Default::default()
            }),
        );
        let simulcast = (!layers.is_empty()).then(|| {
            let mut simulcast = Simulcast::new();
            for layer in layers {
                simulcast.add_send_layer(SimulcastLayer::new(layer.rid));
            }
            simulcast
        });
        let client = &mut self.clients[index];
        let mut api = client.publisher.sdp_api();
        let mid = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            Some("stream".into()),
            Some(camera.cid.into()),
            simulcast,
        );
        if camera.channel {
            client.channel = Some(api.add_channel("_reliable".into()));
        }
        let (offer, pending) = api.apply().expect("changes to offer");
        client.pending = Some(pending);
        client.video_mid = Some(mid);
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::Offer(description("offer", offer.to_sdp_string(), 1)),
        );
    }

    /// Writes `data`, a VP8 frame at `time`, on client `index`'s camera (on simulcast
    /// layer `rid`, if any). False when the camera cannot send yet (not negotiated).
    pub fn write_video(
        &mut self,
        index: usize,
        rid: Option<Rid>,
        time: MediaTime,
        data: Vec<u8>,
    ) -> bool {
        let now = self.now;
        let client = &mut self.clients[index];
        let Some(mid) = client.video_mid else {
            return false;
        };
        let Some(writer) = client.publisher.writer(mid) else {
            return false;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return false;
        };
        let writer = match rid {
            Some(rid) => writer.rid(rid),
            None => writer,
        };
        let _ = writer.write(pt, now, time, data);
        true
    }

    /// Announces a microphone (`AddTrack`, Opus) on client `index`, adds a send-only
    /// audio m-line to its publisher connection and offers it: the m-line, for
    /// [`World::write_audio`]. Call it once the client's previous offer is answered.
    pub fn publish_microphone(&mut self, index: usize, cid: &'static str) -> Mid {
        let key = self.clients[index].key;
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::AddTrack(lk::AddTrackRequest {
                cid: cid.into(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            }),
        );
        let client = &mut self.clients[index];
        assert!(client.pending.is_none(), "an offer is still pending");
        let mut api = client.publisher.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("stream".into()),
            Some(cid.into()),
            None,
        );
        let (offer, pending) = api.apply().expect("changes to offer");
        client.pending = Some(pending);
        self.engine.signal(
            self.now,
            key,
            signal_request::Message::Offer(description("offer", offer.to_sdp_string(), 1)),
        );
        mid
    }

    /// Writes `data`, an Opus packet at `time` (48 kHz), on client `index`'s audio
    /// m-line `mid`. False when it cannot send yet (not negotiated).
    pub fn write_audio(&mut self, index: usize, mid: Mid, time: MediaTime, data: Vec<u8>) -> bool {
        let now = self.now;
        let Some(writer) = self.clients[index].publisher.writer(mid) else {
            return false;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return false;
        };
        writer.write(pt, now, time, data).is_ok()
    }

    /// Keyframe `frame` of client `index`'s single-layer camera (15 frames/s of RTP
    /// time): a VP8 header then 800 bytes of filler.
    pub fn send_frame(&mut self, index: usize, frame: u32) {
        let data = vp8_frame(true, 320, 180, 810, (frame % 251) as u8);
        let time = MediaTime::from_90khz(u64::from(frame) * 6000);
        self.write_video(index, None, time, data);
    }

    /// Frame `frame` of every simulcast layer in `layers` (0 = q, 1 = h, 2 = f): each
    /// layer counts RTP time from its own origin, as browsers' encoders do; a keyframe
    /// every 30 frames and whenever the engine asked for one on that layer. The layer is
    /// the filler (the marker byte in [`Client::video`]).
    pub fn send_layers(&mut self, index: usize, frame: u32, layers: &[usize]) {
        if self.clients[index].video_mid.is_none() {
            return;
        }
        let asked = std::mem::take(&mut self.clients[index].keyframes_asked);
        for &layer in layers {
            let rid = Rid::from(["q", "h", "f"][layer]);
            let keyframe = frame.is_multiple_of(30) || asked.contains(&Some(rid));
            // Layers cost about 70, 240 and 720 kb/s at 15 frames/s.
            let data = vp8_frame(
                keyframe,
                320,
                180,
                10 + [600, 2000, 6000][layer],
                layer as u8,
            );
            let origin = [1_000_000u64, 50_000_000, 2_000_000_000][layer];
            let time = MediaTime::from_90khz(origin + u64::from(frame) * 6000);
            if !self.write_video(index, Some(rid), time, data) {
                return;
            }
        }
    }

    /// Runs the world for `duration` of virtual time in steps of `tick`, calling
    /// `each_step` before each.
    pub fn run(&mut self, duration: Duration, mut each_step: impl FnMut(&mut Self)) {
        let end = self.now + duration;
        while self.now < end {
            each_step(self);
            self.step();
        }
    }

    /// Runs the world as [`World::run`] until `done` (checked after each step), for
    /// `limit` at most: whether `done` came.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut each_step: impl FnMut(&mut Self),
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            each_step(self);
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// One step: everything pending is carried, then the clock moves on by `tick` and
    /// the engine and clients see their timeouts.
    pub fn step(&mut self) {
        self.exchange();
        self.now += self.tick;
        let now = self.now;
        self.probe.call(&mut self.engine, |e| {
            if e.next_timeout() <= now {
                e.handle_timeout(now);
            }
        });
        for client in &mut self.clients {
            let _ = client.publisher.handle_input(Input::Timeout(now));
            let _ = client.subscriber.handle_input(Input::Timeout(now));
        }
    }

    /// Carries everything pending until nothing moves (bounded), without moving the
    /// clock.
    pub fn exchange(&mut self) {
        let now = self.now;
        // Datagrams through the bottleneck that have arrived by now.
        if let Some(b) = &mut self.bottleneck {
            while b.queue.front().is_some_and(|(at, _)| *at <= now) {
                let (_, contents) = b.queue.pop_front().expect("checked above");
                if let Some((rtc, _)) = peer(&mut self.clients, &self.by_addr, b.destination) {
                    let _ = rtc.handle_input(from_server(now, b.destination, &contents));
                }
            }
        }
        for _ in 0..100 {
            let mut moved = false;
            // Clients → engine.
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
                                self.probe.receive(now, source, &t.contents);
                                // As the driver does: a packet in, then the next timeout.
                                self.probe.call(&mut self.engine, |e| {
                                    e.handle_packet(now, source, t.destination, &t.contents);
                                    black_box(e.next_timeout());
                                });
                            }
                            Ok(RtcOutput::Event(Event::MediaData(data))) => {
                                self.probe.media(now, source, &data);
                                client.frames_received += 1;
                                if let Some(&marker) = data.data.get(10) {
                                    client.video.push((
                                        marker,
                                        data.time.numer(),
                                        data.is_keyframe(),
                                    ));
                                }
                            }
                            Ok(RtcOutput::Event(Event::KeyframeRequest(request))) => {
                                client.keyframes_asked.push(request.rid);
                            }
                            Ok(RtcOutput::Event(Event::ChannelData(data))) => {
                                if let Ok(packet) = lk::DataPacket::decode(data.data.as_slice()) {
                                    client.data_received.push(packet);
                                }
                            }
                            Ok(RtcOutput::Event(_)) => {}
                            Ok(RtcOutput::Timeout(_)) | Err(_) => break,
                        }
                    }
                }
            }
            // Engine → clients.
            while let Some(output) = self.probe.call(&mut self.engine, Engine::poll_output) {
                moved = true;
                match output {
                    Output::Transmit {
                        destination,
                        contents,
                        ..
                    } => {
                        let subscriber = self
                            .by_addr
                            .get(&destination)
                            .and_then(|&i| self.clients.get(i))
                            .is_some_and(|c| c.subscriber_addr == destination);
                        // What the engine sends, whether or not a narrow link then loses it.
                        self.probe.transmit(destination, subscriber, &contents);
                        if let Some(b) = &mut self.bottleneck
                            && b.destination == destination
                        {
                            // Queued behind what is in flight; a full second of queue
                            // overflows (the datagram is lost), as a router's buffer would.
                            let start = b.free_at.max(now);
                            if start.duration_since(now) < Duration::from_secs(1) {
                                let bits = contents.len() as u64 * 8;
                                b.free_at = start + Duration::from_micros(bits * 1_000_000 / b.bps);
                                b.queue.push_back((b.free_at, contents));
                            }
                            continue;
                        }
                        let Some((rtc, _)) = peer(&mut self.clients, &self.by_addr, destination)
                        else {
                            continue;
                        };
                        let _ = rtc.handle_input(from_server(now, destination, &contents));
                    }
                    Output::Signal { key, message } => self.deliver(key, *message),
                    Output::CloseSignal { .. } => {}
                    Output::Event(event) => self.events.push(event),
                }
            }
            self.probe.drained();
            if !moved {
                return;
            }
        }
    }

    /// A signalling message from the engine, handled as a client does: offers answered,
    /// answers accepted, media sections added; every message kept in
    /// [`Client::signals`]. Messages to no client (or a forgotten key) are dropped.
    fn deliver(&mut self, key: ParticipantKey, message: signal_response::Message) {
        let Some(index) = self.clients.iter().position(|c| c.key == key) else {
            return;
        };
        let now = self.now;
        let client = &mut self.clients[index];
        match &message {
            signal_response::Message::Offer(offer) => {
                let answer = answer_offer(&mut client.subscriber, offer);
                let key = client.key;
                self.engine
                    .signal(now, key, signal_request::Message::Answer(answer));
            }
            signal_response::Message::Answer(answer) => {
                let pending = client.pending.take().unwrap_or_else(|| {
                    panic!(
                        "an offer was pending for client {index} ({} signals)",
                        client.signals.len()
                    )
                });
                accept_answer(&mut client.publisher, pending, answer);
            }
            // As livekit-client does: add the receive-only m-lines asked for, offer again.
            signal_response::Message::MediaSectionsRequirement(need) => {
                assert!(
                    client.single,
                    "only single-PC clients are asked for sections"
                );
                assert!(client.pending.is_none(), "asked while an offer is pending");
                let mut api = client.publisher.sdp_api();
                // str0m offers only when something changed: a spare audio m-line stands
                // for livekit-client's offering again with nothing to add.
                let spare = u32::from(need.num_audios == 0 && need.num_videos == 0);
                for _ in 0..need.num_audios + spare {
                    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
                }
                for _ in 0..need.num_videos {
                    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
                }
                let (offer, pending) = api.apply().expect("sections to offer");
                client.pending = Some(pending);
                let key = client.key;
                self.engine.signal(
                    now,
                    key,
                    signal_request::Message::Offer(description("offer", offer.to_sdp_string(), 2)),
                );
            }
            _ => {}
        }
        self.clients[index].signals.push(message);
    }
}

/// Client `index`'s publisher and subscriber addresses: 10.0.x.y (after the engine's
/// 10.0.0.1), ports 5000 and 6000.
fn addresses(index: usize) -> (SocketAddr, SocketAddr) {
    let host = [
        10,
        0,
        u8::try_from(index / 250).expect("fewer than 64,000 clients"),
        (index % 250) as u8 + 2,
    ];
    (
        SocketAddr::from((host, 5000)),
        SocketAddr::from((host, 6000)),
    )
}

/// The client connection at `destination`, and whether it is a subscriber connection.
fn peer<'a>(
    clients: &'a mut [Client],
    by_addr: &HashMap<SocketAddr, usize>,
    destination: SocketAddr,
) -> Option<(&'a mut Rtc, bool)> {
    let client = clients.get_mut(*by_addr.get(&destination)?)?;
    if destination == client.subscriber_addr {
        Some((&mut client.subscriber, true))
    } else if destination == client.publisher_addr {
        Some((&mut client.publisher, false))
    } else {
        None
    }
}

/// The helpers the realistic forwarding bench (`benches/forwarding/realistic.rs`) is
/// made of, in one short run: a microphone and a simulcast camera published, and the
/// probe's view of the datagrams in and the media assembled.
#[cfg(test)]
mod tests {
    use super::*;

    /// Counts RTP datagrams from clients and the media each client assembled.
    #[derive(Default)]
    struct Seen {
        rtp_in: usize,
        audio: HashMap<SocketAddr, usize>,
        video: HashMap<SocketAddr, usize>,
    }

    impl Probe for Seen {
        fn receive(&mut self, _now: Instant, _source: SocketAddr, contents: &[u8]) {
            self.rtp_in += usize::from(contents.len() >= 12 && (128..=191).contains(&contents[0]));
        }

        fn media(&mut self, _now: Instant, destination: SocketAddr, data: &MediaData) {
            let seen = if data.params.spec().codec == Codec::Opus {
                &mut self.audio
            } else {
                &mut self.video
            };
            *seen.entry(destination).or_default() += 1;
        }
    }

    #[test]
    fn a_microphone_and_a_simulcast_camera_reach_every_subscriber() {
        let config = EngineConfig {
            candidates: vec![server()],
            max_participants_per_room: 3,
            max_participants: 3,
            ice_servers: vec![],
        };
        let mut world = World::with_probe(config, Seen::default());
        // A step a millisecond, as the bench.
        world.tick = Duration::from_millis(1);
        let alice = world.join("alice");
        let subscribers = [world.join("bob"), world.join("carol")];
        world.exchange();
        world.publish_simulcast_announcing(alice, [150_000, 500_000, 1_500_000]);
        world.exchange();
        let mic = world.publish_microphone(alice, "microphone");
        let mut step = 0u64;
        world.run(Duration::from_secs(2), |w| {
            step += 1;
            if step.is_multiple_of(20) {
                let time = MediaTime::new(step * 48, str0m::media::Frequency::FORTY_EIGHT_KHZ);
                w.write_audio(alice, mic, time, vec![0xa0; 80]);
            }
            if step.is_multiple_of(33) {
                w.send_layers(alice, (step / 33) as u32, &[0, 1, 2]);
            }
        });
        assert!(
            world.probe.rtp_in > 100,
            "{} RTP datagrams in",
            world.probe.rtp_in
        );
        for index in subscribers {
            let addr = world.clients[index].subscriber_addr;
            let audio = world.probe.audio.get(&addr).copied().unwrap_or(0);
            let video = world.probe.video.get(&addr).copied().unwrap_or(0);
            // 100 audio packets and 60 frames were written; the first wait for the
            // connections.
            assert!(
                audio > 50 && video > 30,
                "client {index}: {audio} audio, {video} video"
            );
        }
    }
}
