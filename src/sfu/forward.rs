//! The media core: published tracks (up-tracks) and subscriptions (down-tracks) in tables
//! of their own, with typed keys, and each track's fan-out to its down-tracks. Forwarding,
//! keyframe requests (throttled), simulcast layer choice and caps, bandwidth allocation,
//! layer measurement and dynacast decisions live here.
//!
//! It knows participants only by [`ParticipantKey`] and reaches their peer connections
//! through [`Connections`], which the negotiation layer implements. It builds no
//! signalling message: what the layers above must tell clients comes back as return
//! values ([`DynacastChange`], the down-tracks a removal stopped). It depends only on the
//! helpers below it (`simulcast`, `rewrite`, `speakers`). The per-packet path compares
//! no strings: a packet finds its track by mid among its publisher's tracks, and the
//! track's fan-out lists its down-tracks.

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use slab::Slab;
use str0m::Rtc;
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Rid};

use super::rewrite::TimestampRewriter;
use super::simulcast::{self, Dynacast, LAYER_RIDS, LAYERS, LayerSelector, UpSwitch, Verdict};
use super::speakers::Voice;
use super::{ParticipantKey, Pc};

/// At most one keyframe request per layer this often: a publisher asked for a keyframe by
/// every subscriber at once sends one, not one each.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);
/// The bandwidth estimate a subscriber starts with, before TWCC feedback refines it: the
/// middle layer of a 720p camera and audio fit, and probing finds more within seconds.
pub const INITIAL_BANDWIDTH_BPS: u64 = 1_500_000;
/// A simulcast layer that sent nothing for this long is taken as paused by the publisher.
const LAYER_STALE: Duration = Duration::from_millis(1500);
/// Tracks one participant may announce.
pub const MAX_TRACKS: usize = 16;

/// A published track, in [`Forwarder`]'s table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackKey(usize);

/// A subscription of one participant to one track, in [`Forwarder`]'s table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DownTrackKey(usize);

/// The peer connections the forwarder writes to, by participant and role.
pub trait Connections {
    /// The connection playing `role` for `key` (in single peer connection mode the
    /// publisher's plays both); `None` once the participant is gone.
    fn rtc(&mut self, key: ParticipantKey, role: Pc) -> Option<&mut Rtc>;
    /// Something was written to that connection: it has output to poll.
    fn wake(&mut self, key: ParticipantKey, role: Pc);
}

/// A track a participant publishes.
#[derive(Debug)]
pub struct UpTrack {
    pub owner: ParticipantKey,
    pub sid: String,
    pub cid: String,
    pub kind: MediaKind,
    /// What subscribers are told about it (kept here: mute and the mid change it).
    pub info: lk::TrackInfo,
    /// The publisher's m-line, once media was negotiated for the track.
    pub mid: Option<Mid>,
    /// When a keyframe was last asked for, per simulcast layer (the first slot for a
    /// track without simulcast).
    keyframe_requested: [Option<Instant>; LAYERS],
    /// Simulcast: when each layer (q, h, f) last carried media.
    layers_seen: [Option<Instant>; LAYERS],
    /// Bytes per layer since the last measure, and the measured bit rates.
    layer_bytes: [u64; LAYERS],
    layer_bps: [u64; LAYERS],
    /// Simulcast: which layers the publisher was told to send.
    dynacast: Dynacast,
    /// The codec it arrives in, lower case as LiveKit names it ("vp8"), once media came.
    codec: Option<String>,
    /// Published with simulcast, and the layers the client announced (sizes).
    simulcast: bool,
    layers: Vec<lk::VideoLayer>,
    /// Fan-out: every down-track of this track.
    downs: Vec<DownTrackKey>,
}

impl UpTrack {
    /// What each simulcast layer costs: measured, but never less than the bit rate the
    /// publisher announced for it, so that a layer measured while its encoder was still
    /// ramping up (or before dynacast paused it) does not look cheaper than it will be.
    fn layer_cost(&self) -> [u64; LAYERS] {
        let mut cost = self.layer_bps;
        for layer in &self.layers {
            if let Ok(quality) = lk::VideoQuality::try_from(layer.quality)
                && let Some(index) = simulcast::layer_for_quality(quality as i32)
            {
                cost[index] = cost[index].max(u64::from(layer.bitrate));
            }
        }
        cost
    }

    /// The simulcast layers the publisher is sending now (a layer silent for
    /// [`LAYER_STALE`] is taken as paused).
    fn layers_available(&self, now: Instant) -> [bool; LAYERS] {
        self.layers_seen
            .map(|seen| seen.is_some_and(|t| now.duration_since(t) < LAYER_STALE))
    }
}

/// Where a down-track stands in its subscriber's negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownState {
    /// Waiting for an m-line (an offer, or a free slot in single peer connection mode).
    ToOpen,
    /// Offered on this m-line; opens with the answer.
    Negotiating(Mid),
    /// Media flows on this m-line.
    Open(Mid),
}

impl DownState {
    /// The m-line it holds, if any.
    pub fn mid(self) -> Option<Mid> {
        match self {
            Self::Negotiating(mid) | Self::Open(mid) => Some(mid),
            Self::ToOpen => None,
        }
    }
}

/// One subscriber's copy of one track.
#[derive(Debug)]
pub struct DownTrack {
    pub subscriber: ParticipantKey,
    pub track: TrackKey,
    pub publisher: ParticipantKey,
    /// For signalling only (msid, mid-to-track maps), never compared per packet.
    pub track_sid: String,
    /// `<publisher sid>|<track sid>`: livekit clients read the publisher from the msid
    /// stream id.
    pub stream_id: String,
    pub kind: MediaKind,
    pub state: DownState,
    /// Subscribed and not disabled by `UpdateTrackSettings`.
    enabled: bool,
    /// Simulcast: the layer wanted and the layer forwarded.
    layers: LayerSelector,
    /// RTP timestamps continuous across layer switches.
    timestamps: TimestampRewriter,
}

/// A participant's side of the media: what it publishes and receives, in order.
#[derive(Debug, Default)]
struct Member {
    tracks: Vec<TrackKey>,
    downs: Vec<DownTrackKey>,
    voice: Voice,
    /// The subscriber connection's bandwidth estimate (TWCC), once there is one.
    bandwidth_bps: Option<u64>,
    /// Its bandwidth-driven up-switches, on trial or rolled back.
    up: UpSwitch,
}

/// A publisher must be told which layers of a simulcast track to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynacastChange {
    pub publisher: ParticipantKey,
    pub track_sid: String,
    pub codec: Option<String>,
    /// The highest layer to send (`None`: none).
    pub highest: Option<usize>,
}

/// A down-track that a removal ended while it held an m-line, which its subscriber's
/// negotiation must now stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub subscriber: ParticipantKey,
    pub mid: Mid,
}

/// The media core. See the module documentation.
#[derive(Debug, Default)]
pub struct Forwarder {
    tracks: Slab<UpTrack>,
    downs: Slab<DownTrack>,
    /// By participant key (the room layer's slab index); grown on demand.
    members: Vec<Member>,
}

impl Forwarder {
    /// A participant arrives (its key may be a departed one's: it starts empty).
    pub fn add_member(&mut self, key: ParticipantKey) {
        if self.members.len() <= key {
            self.members.resize_with(key + 1, Member::default);
        }
        self.members[key] = Member::default();
    }

    /// A participant leaves: its tracks, their down-tracks and its own down-tracks go.
    /// Returns the down-tracks of others that held an m-line.
    pub fn remove_member(&mut self, key: ParticipantKey) -> Vec<Stopped> {
        let Some(member) = self.members.get_mut(key) else {
            return Vec::new();
        };
        let member = std::mem::take(member);
        for d in member.downs {
            let down = self.downs.remove(d.0);
            if let Some(track) = self.tracks.get_mut(down.track.0) {
                track.downs.retain(|&k| k != d);
            }
        }
        let mut stopped = Vec::new();
        for t in member.tracks {
            stopped.extend(self.drop_track(t));
        }
        stopped
    }

    /// Removes a track and its down-tracks; returns those that held an m-line.
    fn drop_track(&mut self, key: TrackKey) -> Vec<Stopped> {
        let track = self.tracks.remove(key.0);
        let mut stopped = Vec::new();
        for d in track.downs {
            let down = self.downs.remove(d.0);
            if let Some(member) = self.members.get_mut(down.subscriber) {
                member.downs.retain(|&k| k != d);
            }
            if let Some(mid) = down.state.mid() {
                stopped.push(Stopped {
                    subscriber: down.subscriber,
                    mid,
                });
            }
        }
        stopped
    }

    pub fn voice(&self, key: ParticipantKey) -> Option<&Voice> {
        self.members.get(key).map(|m| &m.voice)
    }

    /// A participant's announced tracks, in order.
    pub fn tracks_of(&self, key: ParticipantKey) -> impl Iterator<Item = (TrackKey, &UpTrack)> {
        self.members
            .get(key)
            .into_iter()
            .flat_map(|m| &m.tracks)
            .map(|&k| (k, &self.tracks[k.0]))
    }

    /// A participant's tracks with media (announced and bound to an m-line).
    pub fn published(&self, key: ParticipantKey) -> impl Iterator<Item = (TrackKey, &UpTrack)> {
        self.tracks_of(key).filter(|(_, t)| t.mid.is_some())
    }

    /// A participant's down-tracks, in the order they were subscribed.
    pub fn down_keys(&self, key: ParticipantKey) -> &[DownTrackKey] {
        self.members.get(key).map_or(&[], |m| &m.downs)
    }

    pub fn track(&self, key: TrackKey) -> &UpTrack {
        &self.tracks[key.0]
    }

    pub fn down(&self, key: DownTrackKey) -> &DownTrack {
        &self.downs[key.0]
    }

    pub fn down_mut(&mut self, key: DownTrackKey) -> &mut DownTrack {
        &mut self.downs[key.0]
    }

    /// A participant's down-tracks.
    pub fn downs_of(&self, key: ParticipantKey) -> impl Iterator<Item = &DownTrack> {
        self.down_keys(key).iter().map(|&d| &self.downs[d.0])
    }

    /// Announces a track (`AddTrack`); `None` when the client already announced `cid` or
    /// has [`MAX_TRACKS`].
    pub fn add_track(
        &mut self,
        owner: ParticipantKey,
        cid: &str,
        kind: MediaKind,
        info: lk::TrackInfo,
        layers: Vec<lk::VideoLayer>,
    ) -> Option<TrackKey> {
        let member = self.members.get(owner)?;
        if member.tracks.len() >= MAX_TRACKS
            || member.tracks.iter().any(|&t| self.tracks[t.0].cid == cid)
        {
            return None;
        }
        tracing::debug!(
            owner,
            cid,
            layers = ?layers.iter().map(|l| (l.quality, l.width, l.height, l.bitrate)).collect::<Vec<_>>(),
            "track announced (layers: quality, width, height, bit rate)"
        );
        let key = TrackKey(self.tracks.insert(UpTrack {
            owner,
            sid: info.sid.clone(),
            cid: cid.to_owned(),
            kind,
            simulcast: kind == MediaKind::Video && layers.len() > 1,
            info,
            mid: None,
            keyframe_requested: [None; LAYERS],
            layers_seen: [None; LAYERS],
            layer_bytes: [0; LAYERS],
            layer_bps: [0; LAYERS],
            dynacast: Dynacast::default(),
            codec: None,
            layers,
            downs: Vec::new(),
        }));
        self.members[owner].tracks.push(key);
        Some(key)
    }

    /// Binds a publisher's new m-line to an announced track: by msid track id (= the
    /// client's cid), else the first unbound track of the same kind (LiveKit falls back
    /// the same way).
    pub fn bind(
        &mut self,
        owner: ParticipantKey,
        mid: Mid,
        kind: MediaKind,
        track_id: Option<&str>,
    ) -> Option<TrackKey> {
        let member = self.members.get(owner)?;
        let unbound = |k: &&TrackKey| self.tracks[k.0].mid.is_none();
        let key = member
            .tracks
            .iter()
            .filter(unbound)
            .find(|k| Some(self.tracks[k.0].cid.as_str()) == track_id)
            .or_else(|| {
                member
                    .tracks
                    .iter()
                    .filter(unbound)
                    .find(|k| self.tracks[k.0].kind == kind)
            })
            .copied()?;
        let track = &mut self.tracks[key.0];
        track.mid = Some(mid);
        track.info.mid = mid.to_string();
        Some(key)
    }

    /// Mutes or unmutes a participant's track by sid; whether it has one.
    pub fn set_muted(&mut self, owner: ParticipantKey, sid: &str, muted: bool) -> bool {
        let Some(member) = self.members.get(owner) else {
            return false;
        };
        let Some(&key) = member.tracks.iter().find(|k| self.tracks[k.0].sid == sid) else {
            return false;
        };
        self.tracks[key.0].info.muted = muted;
        true
    }

    /// The publisher stopped sending on `mid`: the track and its down-tracks go. Returns
    /// the track and the down-tracks that held an m-line.
    pub fn unpublish(
        &mut self,
        owner: ParticipantKey,
        mid: Mid,
    ) -> Option<(lk::TrackInfo, Vec<Stopped>)> {
        let member = self.members.get_mut(owner)?;
        let index = member
            .tracks
            .iter()
            .position(|k| self.tracks[k.0].mid == Some(mid))?;
        let key = member.tracks.remove(index);
        let info = self.tracks[key.0].info.clone();
        Some((info, self.drop_track(key)))
    }

    /// Subscribes `subscriber` to a track; the down-track waits for an m-line.
    pub fn subscribe(
        &mut self,
        subscriber: ParticipantKey,
        track: TrackKey,
        publisher_sid: &str,
    ) -> DownTrackKey {
        let up = &self.tracks[track.0];
        let key = DownTrackKey(self.downs.insert(DownTrack {
            subscriber,
            track,
            publisher: up.owner,
            track_sid: up.sid.clone(),
            stream_id: format!("{publisher_sid}|{}", up.sid),
            kind: up.kind,
            state: DownState::ToOpen,
            enabled: true,
            layers: LayerSelector::default(),
            timestamps: TimestampRewriter::default(),
        }));
        self.tracks[track.0].downs.push(key);
        self.members[subscriber].downs.push(key);
        key
    }

    /// `UpdateSubscription` / `UpdateTrackSettings`: enables or disables the subscriber's
    /// copies of `track_sids`; re-enabled video asks its publisher for a keyframe.
    pub fn set_enabled(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        track_sids: &[String],
        enabled: bool,
        peers: &mut impl Connections,
    ) {
        let mut wake = Vec::new();
        for &d in self.down_keys(subscriber) {
            let down = &self.downs[d.0];
            if down.enabled != enabled && track_sids.contains(&down.track_sid) {
                wake.push(d);
            }
        }
        for d in wake {
            let down = &mut self.downs[d.0];
            down.enabled = enabled;
            if enabled && down.kind == MediaKind::Video {
                let track = down.track;
                self.request_keyframe(now, track, None, peers);
            }
        }
    }

    /// `UpdateTrackSettings` for simulcast: the size the subscriber renders the track at
    /// (livekit-client's adaptive stream) or, without a size, the quality it asks for
    /// (`set_video_quality`) sets the highest layer it receives.
    pub fn set_layer_wish(
        &mut self,
        subscriber: ParticipantKey,
        settings: &lk::UpdateTrackSettings,
    ) {
        let Some(member) = self.members.get(subscriber) else {
            return;
        };
        for &d in &member.downs {
            let down = &mut self.downs[d.0];
            if down.kind != MediaKind::Video || !settings.track_sids.contains(&down.track_sid) {
                continue;
            }
            let track = &self.tracks[down.track.0];
            let max = if settings.width > 0 || settings.height > 0 {
                Some(simulcast::layer_for_dimensions(
                    &track.layers,
                    track.info.width,
                    track.info.height,
                    settings.width,
                    settings.height,
                ))
            } else {
                simulcast::layer_for_quality(settings.quality)
            };
            tracing::debug!(subscriber, track = %down.track_sid, ?max, width = settings.width, height = settings.height, quality = settings.quality, "simulcast wish");
            down.layers.max = max;
        }
    }

    /// The m-lines of `subscriber`'s down-tracks opened: video asks for a keyframe.
    pub fn opened(&mut self, now: Instant, opened: &[DownTrackKey], peers: &mut impl Connections) {
        for &d in opened {
            let down = &self.downs[d.0];
            if down.kind == MediaKind::Video {
                let track = down.track;
                self.request_keyframe(now, track, None, peers);
            }
        }
    }

    /// The subscriber's decoder asks for a keyframe on `mid`.
    pub fn keyframe_asked(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        mid: Mid,
        peers: &mut impl Connections,
    ) {
        let found = self
            .downs_of(subscriber)
            .find(|d| d.state == DownState::Open(mid))
            .map(|d| (d.track, d.layers.current));
        if let Some((track, layer)) = found {
            self.request_keyframe(now, track, layer, peers);
        }
    }

    /// Forwards a publisher's media to every open, enabled down-track of its track.
    pub fn forward(
        &mut self,
        now: Instant,
        publisher: ParticipantKey,
        data: MediaData,
        peers: &mut impl Connections,
    ) {
        let Some(member) = self.members.get_mut(publisher) else {
            return;
        };
        let tracks = &mut self.tracks;
        let Some(&key) = member
            .tracks
            .iter()
            .find(|k| tracks[k.0].mid == Some(data.mid))
        else {
            return;
        };
        let track = &mut tracks[key.0];
        let muted = track.info.muted;
        if track.kind == MediaKind::Audio
            && !muted
            && let Some(level) = data.ext_vals.audio_level
        {
            member.voice.heard(now, level);
        }
        if muted {
            return;
        }
        // Simulcast: each subscriber gets its own layer (see `simulcast`), switched at a
        // keyframe of the new layer with timestamps made continuous (see `rewrite`).
        let layer = match data.rid.as_ref() {
            None => None,
            Some(rid) => match simulcast::layer_of_rid(rid) {
                Some(layer) => Some(layer),
                None => {
                    metrics::counter!("tchap_visio_sfu_packets_dropped_total", "reason" => "unknown_rid")
                        .increment(1);
                    return;
                }
            },
        };
        if track.codec.is_none() {
            track.codec = Some(format!("{:?}", data.params.spec().codec).to_lowercase());
        }
        track.layer_bytes[layer.unwrap_or(0)] += data.data.len() as u64;
        if let Some(layer) = layer {
            track.layers_seen[layer] = Some(now);
        }
        let available = track.layers_available(now);
        let keyframe = data.is_keyframe();
        let clock_rate = data.time.frequency();
        let mut keyframes_wanted = [false; LAYERS];
        for &d in &self.tracks[key.0].downs {
            let down = &mut self.downs[d.0];
            let DownState::Open(mid) = down.state else {
                continue;
            };
            if !down.enabled {
                continue;
            }
            let switched = match layer {
                None => false,
                Some(layer) => {
                    let target = down.layers.target(available);
                    if let Some(wanted) = down.layers.keyframe_wanted(target) {
                        keyframes_wanted[wanted] = true;
                    }
                    match down.layers.on_frame(layer, keyframe, target) {
                        Verdict::Drop => continue,
                        Verdict::Forward => false,
                        Verdict::Switch => {
                            tracing::debug!(subscriber = down.subscriber, track = %down.track_sid, layer = LAYER_RIDS[layer], "simulcast layer switch");
                            metrics::counter!("tchap_visio_sfu_layer_switches_total").increment(1);
                            true
                        }
                    }
                }
            };
            // The connection the participant receives on (one for both in `/rtc/v1`).
            let Some(receiver) = peers.rtc(down.subscriber, Pc::Subscriber) else {
                continue;
            };
            let Some(writer) = receiver.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            let time = down.timestamps.rewrite(
                data.time.numer(),
                data.network_time,
                clock_rate.get(),
                switched,
            );
            let time = MediaTime::new(time, clock_rate);
            if let Err(e) = writer.write(pt, data.network_time, time, data.data.clone()) {
                tracing::debug!(subscriber = down.subscriber, error = %e, "write to subscriber failed");
                continue;
            }
            peers.wake(down.subscriber, Pc::Subscriber);
        }
        for (wanted, _) in keyframes_wanted.iter().enumerate().filter(|(_, w)| **w) {
            self.request_keyframe(now, key, Some(wanted), peers);
        }
        if !data.contiguous {
            self.request_keyframe(now, key, layer, peers);
        }
    }

    /// Asks the publisher for a keyframe on `layer` of a simulcast track (`None`: on every
    /// layer it sends), or on the track itself without simulcast; at most one request per
    /// layer every [`KEYFRAME_THROTTLE`].
    fn request_keyframe(
        &mut self,
        now: Instant,
        key: TrackKey,
        layer: Option<usize>,
        peers: &mut impl Connections,
    ) {
        let Some(track) = self.tracks.get_mut(key.0) else {
            return;
        };
        let Some(mid) = track.mid else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let simulcast = track.layers_seen.iter().any(Option::is_some);
        let available = track.layers_available(now);
        let Some(mut writer) = peers
            .rtc(track.owner, Pc::Publisher)
            .and_then(|rtc| rtc.writer(mid))
        else {
            return;
        };
        let mut asked = false;
        for slot in 0..LAYERS {
            let wanted = if !simulcast {
                slot == 0
            } else {
                layer.map_or(available[slot], |l| l == slot)
            };
            if !wanted
                || track.keyframe_requested[slot]
                    .is_some_and(|t| now.duration_since(t) < KEYFRAME_THROTTLE)
            {
                continue;
            }
            track.keyframe_requested[slot] = Some(now);
            let rid = simulcast.then(|| Rid::from(LAYER_RIDS[slot]));
            let _ = writer.request_keyframe(rid, KeyframeRequestKind::Pli);
            asked = true;
        }
        if asked {
            peers.wake(track.owner, Pc::Publisher);
        }
    }

    /// Dynacast: which simulcast publishers must be told what layers someone watches, so
    /// that they pause the others, raising at once and lowering after
    /// [`simulcast::DYNACAST_DOWN_DELAY`]. Publishers in key order, tracks in their order.
    pub fn update_dynacast(&mut self, now: Instant) -> Vec<DynacastChange> {
        let mut changes = Vec::new();
        for member in &self.members {
            for &key in &member.tracks {
                let track = &self.tracks[key.0];
                if !track.simulcast || track.mid.is_none() {
                    continue;
                }
                let wanted = track
                    .downs
                    .iter()
                    .map(|d| &self.downs[d.0])
                    .filter(|d| d.enabled)
                    .map(|d| d.layers.max)
                    .max()
                    .flatten();
                let track = &mut self.tracks[key.0];
                let Some(highest) = track.dynacast.update(now, wanted) else {
                    continue;
                };
                tracing::debug!(publisher = track.owner, track = %track.sid, highest = ?highest.map(|l| LAYER_RIDS[l]), "dynacast");
                metrics::counter!("tchap_visio_sfu_dynacast_updates_total").increment(1);
                changes.push(DynacastChange {
                    publisher: track.owner,
                    track_sid: track.sid.clone(),
                    codec: track.codec.clone(),
                    highest,
                });
            }
        }
        changes
    }

    /// A new bandwidth estimate for what `subscriber` receives (TWCC, str0m's estimator).
    pub fn estimate(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        bps: u64,
        peers: &mut impl Connections,
    ) {
        let Some(member) = self.members.get_mut(subscriber) else {
            return;
        };
        // Log big moves only: estimates come several times a second.
        if member
            .bandwidth_bps
            .is_none_or(|old| bps.abs_diff(old) > old / 5)
        {
            tracing::debug!(
                subscriber,
                kbps = bps / 1000,
                "subscriber bandwidth estimate"
            );
        }
        member.bandwidth_bps = Some(bps);
        self.allocate_bandwidth(now, subscriber, peers);
    }

    /// The last bandwidth estimate of what `subscriber` receives (TWCC), if any came.
    pub fn bandwidth_estimate(&self, subscriber: ParticipantKey) -> Option<u64> {
        self.members.get(subscriber).and_then(|m| m.bandwidth_bps)
    }

    /// Caps each simulcast subscription of `subscriber` at the layer its share of the
    /// bandwidth estimate carries, and asks str0m's estimator to probe for what the
    /// subscriber wants. Caps go down at once; they go up only with a margin over the
    /// estimate, and as [`simulcast::UpSwitch`] allows.
    pub fn allocate_bandwidth(
        &mut self,
        now: Instant,
        subscriber: ParticipantKey,
        peers: &mut impl Connections,
    ) {
        let Some(member) = self.members.get(subscriber) else {
            return;
        };
        let Some(estimate) = member.bandwidth_bps else {
            return;
        };
        let mut fixed = 0u64;
        let mut simulcast_downs = Vec::new();
        let mut costs = Vec::new();
        let mut current = Vec::new();
        for &d in &member.downs {
            let down = &self.downs[d.0];
            if !down.enabled || !matches!(down.state, DownState::Open(_)) {
                continue;
            }
            let track = &self.tracks[down.track.0];
            if track.info.muted {
                continue;
            }
            if track.simulcast {
                simulcast_downs.push(d);
                costs.push((track.layer_cost(), down.layers.max));
                current.push(down.layers.bandwidth_max);
            } else {
                fixed = fixed.saturating_add(track.layer_bps[0]);
            }
        }
        let member = &mut self.members[subscriber];
        let (caps, desired) = simulcast::allocate(estimate, fixed, &costs);
        let up_caps = if member.up.may_go_up(now) {
            let margined = simulcast::up_margin(estimate);
            let share = margined.saturating_sub(fixed) / (costs.len().max(1) as u64);
            simulcast::allocate(margined, fixed, &costs)
                .0
                .into_iter()
                .zip(&costs)
                .zip(&current)
                .map(|((cap, (cost, _)), &from)| simulcast::up_step(share, *cost, from, cap))
                .collect()
        } else {
            current.clone()
        };
        let (mut up, mut down) = (false, false);
        let mut lowered = Vec::new();
        for (i, d) in simulcast_downs.into_iter().enumerate() {
            let old = current[i];
            let (cost, wanted) = costs[i];
            // A layer not measured yet (a new track, a layer resumed) costs 0 and is
            // passed over; losing it is no sign of a narrow link, nor is getting it back.
            let measured = cost[old] > 0;
            let new = if measured {
                caps[i].min(old.max(up_caps[i]))
            } else {
                caps[i]
            };
            // Only what the subscriber would receive counts: a cap above its wish is none.
            let wanted = wanted.unwrap_or(0);
            up |= measured && new.min(wanted) > old.min(wanted);
            if measured && new.min(wanted) < old.min(wanted) {
                down = true;
                lowered.push((d, new));
            }
            self.downs[d.0].layers.bandwidth_max = new;
        }
        if down {
            if member.up.went_down(now) {
                tracing::debug!(subscriber, "simulcast up-switch rolled back");
                for (d, cap) in lowered {
                    self.downs[d.0].layers.abandon_above(cap);
                }
            }
        } else if up {
            member.up.went_up(now);
        }
        // Probe above the need and the up-switch margin, so that the estimate can show
        // room for the layers wanted rather than sit just under it.
        let desired = Bitrate::bps(
            desired
                .saturating_add(desired / 2)
                .max(INITIAL_BANDWIDTH_BPS),
        );
        if let Some(rtc) = peers.rtc(subscriber, Pc::Subscriber) {
            rtc.bwe().set_bitrate(Bitrate::ZERO, desired);
            peers.wake(subscriber, Pc::Subscriber);
        }
    }

    /// Measures what each layer costs (bits per second over the `period` since the last
    /// call), for bandwidth-driven layer choice. Returns how many tracks send each
    /// simulcast layer (the driver publishes it, labelled with its shard).
    pub fn measure_layers(&mut self, now: Instant, period: Duration) -> [u32; LAYERS] {
        let period = period.as_millis() as u64;
        let mut sending = [0u32; LAYERS];
        for (_, track) in &mut self.tracks {
            let available = track.layers_available(now);
            for layer in 0..LAYERS {
                if track.simulcast {
                    sending[layer] += u32::from(available[layer]);
                }
                let measured = track.layer_bytes[layer].saturating_mul(8 * 1000) / period;
                track.layer_bytes[layer] = 0;
                // A paused layer keeps its last cost: it is what resuming it would
                // take. Otherwise smooth over keyframes and frame-rate jitter.
                if !track.simulcast || available[layer] {
                    track.layer_bps[layer] = (track.layer_bps[layer] + measured) / 2;
                }
            }
        }
        sending
    }
}
