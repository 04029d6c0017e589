//! Simulcast layer choice and dynacast, as pure decisions the engine applies.
//!
//! A simulcast publisher sends up to three encodings of one camera, named by RID as
//! LiveKit's clients do: `q` (quarter), `h` (half), `f` (full). Each subscriber asks for a
//! size (`UpdateTrackSettings` width/height, from the tile its client renders) or a
//! quality; [`LayerSelector`] turns that, the layers the publisher is actually sending and
//! the subscriber's bandwidth estimate into the layer to forward, and switches only at a
//! keyframe of the new layer so that the decoder never sees a delta frame it cannot use.
//! [`Dynacast`] decides which layers the publisher should pause because nobody watches
//! them (`SubscribedQualityUpdate`). No I/O, no str0m: plain data in, decisions out.

use std::time::{Duration, Instant};

use livekit_protocol as lk;

/// LiveKit's simulcast layer names, lowest first; the index is the layer.
pub const LAYER_RIDS: [&str; 3] = ["q", "h", "f"];
/// Number of simulcast layers.
pub const LAYERS: usize = LAYER_RIDS.len();
/// The highest layer index.
pub const TOP: usize = LAYERS - 1;

/// A subscriber's wish is met by a layer whose size reaches this share of the size asked:
/// a 350-pixel-high tile is served by a 360p layer, not the next one up (LiveKit uses the
/// same kind of tolerance).
const SIZE_TOLERANCE: f32 = 0.9;

/// How long the publisher keeps a layer nobody wants before it is told to pause it: a
/// tile shrinking for a moment (a resize, a layout change) does not bounce the encoder.
pub const DYNACAST_DOWN_DELAY: Duration = Duration::from_secs(2);

/// The layer a RID names, if it is one of LiveKit's.
pub fn layer_of_rid(rid: &str) -> Option<usize> {
    LAYER_RIDS.iter().position(|r| *r == rid)
}

/// The highest layer a `VideoQuality` allows; `None` for `OFF`. Unknown values (newer
/// clients) mean "no limit", the safe side for the viewer.
pub fn layer_for_quality(quality: i32) -> Option<usize> {
    match lk::VideoQuality::try_from(quality) {
        Ok(lk::VideoQuality::Low) => Some(0),
        Ok(lk::VideoQuality::Medium) => Some(1),
        Ok(lk::VideoQuality::High) | Err(_) => Some(TOP),
        Ok(lk::VideoQuality::Off) => None,
    }
}

/// The `VideoQuality` of a layer.
pub fn quality_of_layer(layer: usize) -> lk::VideoQuality {
    match layer {
        0 => lk::VideoQuality::Low,
        1 => lk::VideoQuality::Medium,
        _ => lk::VideoQuality::High,
    }
}

/// The lowest layer big enough for a `width` x `height` rendering of a track published at
/// `track_width` x `track_height` with the announced `layers` (from `AddTrackRequest`).
///
/// Sizes compare on the track's short side (height for landscape video, width for
/// portrait), so a wide tile and a tall tile of the same area ask for the same layer.
/// Without announced layer sizes, LiveKit's default ladder is assumed: a quarter, a half
/// and the full size.
pub fn layer_for_dimensions(
    layers: &[lk::VideoLayer],
    track_width: u32,
    track_height: u32,
    width: u32,
    height: u32,
) -> usize {
    let portrait = track_width < track_height;
    let short = |w: u32, h: u32| if portrait { w } else { h };
    let mut sizes = [0u32; LAYERS];
    let mut known = [false; LAYERS];
    for layer in layers {
        let index = match lk::VideoQuality::try_from(layer.quality) {
            Ok(lk::VideoQuality::Low) => 0,
            Ok(lk::VideoQuality::Medium) => 1,
            Ok(lk::VideoQuality::High) => 2,
            _ => continue,
        };
        let size = short(layer.width, layer.height);
        if size > 0 {
            sizes[index] = size;
            known[index] = true;
        }
    }
    let full = short(track_width, track_height).max(sizes[TOP]);
    for (index, size) in sizes.iter_mut().enumerate() {
        if !known[index] {
            // q = full / 4, h = full / 2, f = full.
            *size = full >> (TOP - index);
        }
    }
    let wanted = short(width, height) as f32 * SIZE_TOLERANCE;
    (0..LAYERS)
        .find(|&l| sizes[l] > 0 && sizes[l] as f32 >= wanted)
        .unwrap_or(TOP)
}

/// The highest layer a bandwidth estimate can carry, given what each layer costs now
/// (bits per second, measured on arrival). The lowest layer is always allowed: a viewer
/// with too little bandwidth gets a poor picture rather than none, as in LiveKit.
pub fn layer_for_bandwidth(estimate_bps: u64, layer_bps: [u64; LAYERS]) -> usize {
    (1..LAYERS)
        .rev()
        .find(|&l| layer_bps[l] > 0 && layer_bps[l] <= estimate_bps)
        .unwrap_or(0)
}

/// Splits a subscriber's bandwidth estimate between what it receives: tracks without
/// simulcast (audio, screen share) cost what they cost (`fixed_bps`); the rest is shared
/// evenly by its simulcast tracks, each capped at the best layer its share carries
/// (`layer_bps`: what each layer of each track costs now). Returns the cap of each
/// simulcast track, in order, and the bit rate worth probing for: everything at the layers
/// the subscriber asks for (`wanted`), so that the estimate can grow towards it.
pub fn allocate(
    estimate_bps: u64,
    fixed_bps: u64,
    tracks: &[([u64; LAYERS], Option<usize>)],
) -> (Vec<usize>, u64) {
    let budget = estimate_bps.saturating_sub(fixed_bps);
    let share = budget / (tracks.len().max(1) as u64);
    let caps = tracks
        .iter()
        .map(|(cost, _)| layer_for_bandwidth(share, *cost))
        .collect();
    let desired = tracks
        .iter()
        .filter_map(|(cost, wanted)| wanted.map(|w| cost[..=w].iter().copied().max().unwrap_or(0)))
        .fold(fixed_bps, u64::saturating_add);
    (caps, desired)
}

/// How long after a bandwidth-driven down-switch a layer may go up again: long enough
/// for the estimate to settle after what made it fall.
pub const UP_HOLD: Duration = Duration::from_secs(2);
/// How long after a rolled-back up-switch the next may come; each further rollback
/// doubles it, up to [`UP_BACKOFF_MAX`].
pub const UP_BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait between two up-switches on a link that keeps failing them.
pub const UP_BACKOFF_MAX: Duration = Duration::from_secs(40);
/// An up-switch undone within this long failed: the link could not carry the new layer.
pub const UP_TRIAL: Duration = Duration::from_secs(3);

/// The share of a bandwidth estimate that may raise a layer: a 25 % margin over the new
/// layer's cost. Without it, an estimate that overshoots a little after a probe switches
/// up onto a link that cannot carry the layer, and the picture freezes until the switch
/// back down (seen over a throttled link: `tests/browser/throttle.test.mjs`).
pub fn up_margin(estimate_bps: u64) -> u64 {
    estimate_bps / 5 * 4
}

/// The highest layer from `from` up to `cap` that an up-switch may reach on `share_bps`
/// (a track's share of the margined estimate): the new layer's cost plus the jump again
/// (its cost over `from`'s). An estimate is a guess about rates not sent yet: over a
/// token-bucket link (a home router's shaper) a probe's short burst passes at line rate
/// and the estimate overshoots the link by up to 1.8 times (seen: 646 and 710 kb/s on a
/// 400 kb/s link, `tests/browser/throttle.test.mjs`). A tripling jump (`q` to `h`) on such
/// a guess freezes the picture until the switch back; a small step risks little.
pub fn up_step(share_bps: u64, cost: [u64; LAYERS], from: usize, cap: usize) -> usize {
    (from + 1..=cap.min(TOP))
        .rev()
        .find(|&l| {
            let jump = cost[l].saturating_sub(cost[from]);
            cost[l].saturating_add(jump) <= share_bps
        })
        .unwrap_or(from)
}

/// One subscriber's bandwidth-driven up-switches, each a trial: one followed by a
/// down-switch within [`UP_TRIAL`] failed, and the next waits a backoff, doubled by each
/// failure, reset by an up-switch that holds. After any down-switch, [`UP_HOLD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpSwitch {
    /// The last up-switch, while it is on trial.
    trial_since: Option<Instant>,
    /// The last down-switch.
    down_at: Option<Instant>,
    /// After a failed up-switch: none before this.
    not_before: Option<Instant>,
    backoff: Duration,
}

impl Default for UpSwitch {
    fn default() -> Self {
        Self {
            trial_since: None,
            down_at: None,
            not_before: None,
            backoff: UP_BACKOFF_BASE,
        }
    }
}

impl UpSwitch {
    /// Whether a layer may go up now (never while an up-switch is on trial).
    pub fn may_go_up(&mut self, now: Instant) -> bool {
        if self
            .trial_since
            .is_some_and(|t| now.duration_since(t) >= UP_TRIAL)
        {
            self.trial_since = None;
            self.backoff = UP_BACKOFF_BASE;
        }
        self.trial_since.is_none()
            && self.not_before.is_none_or(|t| now >= t)
            && self.down_at.is_none_or(|t| now >= t + UP_HOLD)
    }

    /// A layer went up: the bandwidth allows it again.
    pub fn went_up(&mut self, now: Instant) {
        self.trial_since = Some(now);
    }

    /// A layer went down for lack of bandwidth; returns whether it rolled back a trial.
    pub fn went_down(&mut self, now: Instant) -> bool {
        let failed = self
            .trial_since
            .take()
            .is_some_and(|t| now.duration_since(t) < UP_TRIAL);
        if failed {
            self.not_before = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(UP_BACKOFF_MAX);
        }
        self.down_at = Some(now);
        failed
    }
}

/// What to do with one frame of one layer for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for this subscriber (another layer, or waiting for a keyframe).
    Drop,
    /// Forward it on the layer already being forwarded.
    Forward,
    /// A keyframe of the target layer: forward it and everything of that layer from now
    /// on; timestamps must be made continuous with what was sent before.
    Switch,
}

/// One subscriber's layer state for one simulcast track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSelector {
    /// The highest layer the subscriber asked for; `None` when it asked for none (`OFF`).
    pub max: Option<usize>,
    /// The highest layer its bandwidth allows (the top one until an estimate says less).
    pub bandwidth_max: usize,
    /// The layer being forwarded, once a keyframe started it.
    pub current: Option<usize>,
}

impl Default for LayerSelector {
    fn default() -> Self {
        Self {
            max: Some(TOP),
            bandwidth_max: TOP,
            current: None,
        }
    }
}

impl LayerSelector {
    /// The highest layer this subscriber may receive now.
    pub fn allowed(&self) -> Option<usize> {
        self.max.map(|m| m.min(self.bandwidth_max))
    }

    /// The layer to forward, among the layers the publisher is sending: the best one
    /// allowed, else (every allowed layer paused) the lowest one sent, so the picture
    /// does not freeze while the publisher catches up with dynacast.
    pub fn target(&self, available: [bool; LAYERS]) -> Option<usize> {
        let allowed = self.allowed()?;
        (0..=allowed)
            .rev()
            .find(|&l| available[l])
            .or_else(|| (allowed + 1..LAYERS).find(|&l| available[l]))
    }

    /// Decides about one frame of `layer`; `target` is [`Self::target`] for now.
    /// The current layer keeps flowing until the target's keyframe arrives.
    pub fn on_frame(&mut self, layer: usize, keyframe: bool, target: Option<usize>) -> Verdict {
        if target == Some(layer) && self.current != Some(layer) {
            if keyframe {
                self.current = Some(layer);
                return Verdict::Switch;
            }
            return Verdict::Drop;
        }
        if self.current == Some(layer) && target.is_some() {
            return Verdict::Forward;
        }
        Verdict::Drop
    }

    /// Stops forwarding the current layer if it is above `cap`, until the keyframe of the
    /// layer to switch to. Only for a rolled-back up-switch trial: the link is dropping
    /// that layer's packets already (its frames are lost), and what would still be sent of
    /// it queues in front of the lower layer's keyframe at the bottleneck, lengthening the
    /// freeze. An ordinary down-switch keeps the current layer until then, as usual.
    pub fn abandon_above(&mut self, cap: usize) {
        if self.current.is_some_and(|c| c > cap) {
            self.current = None;
        }
    }

    /// The layer a keyframe should be asked for, when a switch is waiting for one.
    pub fn keyframe_wanted(&self, target: Option<usize>) -> Option<usize> {
        target.filter(|&t| self.current != Some(t))
    }
}

/// The publisher side of dynacast for one simulcast track: which layers it was told to
/// send, and a pending downgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynacast {
    /// The highest layer the publisher was last told to send (`None`: none at all). A new
    /// track sends everything, as the client starts it.
    announced: Option<usize>,
    /// A lower wish, and since when it has held.
    lower_since: Option<(Option<usize>, Instant)>,
}

impl Default for Dynacast {
    fn default() -> Self {
        Self {
            announced: Some(TOP),
            lower_since: None,
        }
    }
}

impl Dynacast {
    /// The highest layer any subscriber wants is `wanted` (`None`: no subscriber wants the
    /// track). Returns the new highest layer to announce, if the publisher must be told:
    /// at once when more is wanted (a viewer waits), after [`DYNACAST_DOWN_DELAY`] of
    /// steady lower wishes when less is.
    pub fn update(&mut self, now: Instant, wanted: Option<usize>) -> Option<Option<usize>> {
        if wanted == self.announced {
            self.lower_since = None;
            return None;
        }
        if wanted > self.announced {
            self.lower_since = None;
            self.announced = wanted;
            return Some(wanted);
        }
        match self.lower_since {
            Some((pending, since)) if pending == wanted => {
                if now.duration_since(since) >= DYNACAST_DOWN_DELAY {
                    self.lower_since = None;
                    self.announced = wanted;
                    return Some(wanted);
                }
                None
            }
            _ => {
                self.lower_since = Some((wanted, now));
                None
            }
        }
    }

    /// The highest layer the publisher was last told to send.
    pub fn announced(&self) -> Option<usize> {
        self.announced
    }
}

/// The qualities of a `SubscribedQualityUpdate` for a highest wanted layer: every layer up
/// to it stays on (a lower layer is the fallback when a subscriber's bandwidth drops),
/// every layer above it is paused.
pub fn subscribed_qualities(max: Option<usize>) -> Vec<lk::SubscribedQuality> {
    (0..LAYERS)
        .map(|layer| lk::SubscribedQuality {
            quality: quality_of_layer(layer) as i32,
            enabled: max.is_some_and(|m| layer <= m),
        })
        .collect()
}

/// The `SubscribedQualityUpdate` telling a publisher which layers of `track_sid` to send.
/// Both shapes are filled: livekit-client reads the per-codec list (by the codec it
/// publishes), older SDKs the flat one, which the protocol keeps though deprecated.
#[allow(deprecated)]
pub fn quality_update(
    track_sid: &str,
    codec: Option<&str>,
    max: Option<usize>,
) -> lk::SubscribedQualityUpdate {
    let qualities = subscribed_qualities(max);
    lk::SubscribedQualityUpdate {
        track_sid: track_sid.to_owned(),
        subscribed_qualities: qualities.clone(),
        subscribed_codecs: codec
            .map(|codec| lk::SubscribedCodec {
                codec: codec.to_owned(),
                qualities,
            })
            .into_iter()
            .collect(),
    }
}

/// Marks a published video track as simulcast with its announced layers. The protocol
/// deprecates these fields for per-codec ones, but subscribers' SDKs still read them: the
/// Python SDK offers `set_video_quality` only on tracks marked so.
#[allow(deprecated)]
pub fn announce_layers(info: &mut lk::TrackInfo, layers: &[lk::VideoLayer]) {
    info.simulcast = layers.len() > 1;
    info.layers = layers.to_vec();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(quality: lk::VideoQuality, width: u32, height: u32) -> lk::VideoLayer {
        lk::VideoLayer {
            quality: quality as i32,
            width,
            height,
            ..Default::default()
        }
    }

    #[test]
    fn rids_and_qualities_map_to_layers() {
        assert_eq!(layer_of_rid("q"), Some(0));
        assert_eq!(layer_of_rid("f"), Some(2));
        assert_eq!(layer_of_rid("x"), None);
        assert_eq!(layer_for_quality(lk::VideoQuality::Low as i32), Some(0));
        assert_eq!(layer_for_quality(lk::VideoQuality::Medium as i32), Some(1));
        assert_eq!(layer_for_quality(lk::VideoQuality::High as i32), Some(2));
        assert_eq!(layer_for_quality(lk::VideoQuality::Off as i32), None);
        assert_eq!(layer_for_quality(99), Some(TOP));
    }

    #[test]
    fn dimensions_pick_the_smallest_layer_that_fills_the_tile() {
        let layers = [
            layer(lk::VideoQuality::Low, 320, 180),
            layer(lk::VideoQuality::Medium, 640, 360),
            layer(lk::VideoQuality::High, 1280, 720),
        ];
        assert_eq!(layer_for_dimensions(&layers, 1280, 720, 160, 90), 0);
        assert_eq!(layer_for_dimensions(&layers, 1280, 720, 320, 180), 0);
        // Within the tolerance: a 350-pixel tile is served by 360p.
        assert_eq!(layer_for_dimensions(&layers, 1280, 720, 622, 350), 1);
        assert_eq!(layer_for_dimensions(&layers, 1280, 720, 800, 450), 2);
        assert_eq!(layer_for_dimensions(&layers, 1280, 720, 4000, 4000), 2);
        // Without announced layers: the default ladder from the track size.
        assert_eq!(layer_for_dimensions(&[], 1280, 720, 320, 180), 0);
        assert_eq!(layer_for_dimensions(&[], 1280, 720, 640, 360), 1);
        // Portrait video compares widths.
        assert_eq!(layer_for_dimensions(&[], 720, 1280, 180, 320), 0);
        // Nonsense sizes never panic and serve the top layer.
        assert_eq!(layer_for_dimensions(&[], 0, 0, 100, 100), TOP);
        assert_eq!(
            layer_for_dimensions(&[], u32::MAX, u32::MAX, 1, u32::MAX),
            TOP
        );
    }

    #[test]
    fn bandwidth_caps_the_layer_but_never_below_the_lowest() {
        let cost = [150_000, 500_000, 1_500_000];
        assert_eq!(layer_for_bandwidth(5_000_000, cost), 2);
        assert_eq!(layer_for_bandwidth(1_000_000, cost), 1);
        assert_eq!(layer_for_bandwidth(100_000, cost), 0);
        // A layer not measured yet (0) is not chosen on bandwidth grounds.
        assert_eq!(layer_for_bandwidth(5_000_000, [150_000, 500_000, 0]), 1);
    }

    #[test]
    fn the_estimate_is_shared_between_simulcast_tracks() {
        let cost = [150_000, 500_000, 1_500_000];
        // One track, plenty: the top layer; probe for everything wanted.
        let (caps, desired) = allocate(3_000_000, 100_000, &[(cost, Some(2))]);
        assert_eq!(caps, [2]);
        assert_eq!(desired, 1_600_000);
        // Two tracks share 2 Mb/s after audio: 950 kb/s each, the middle layer.
        let (caps, desired) = allocate(2_000_000, 100_000, &[(cost, Some(2)), (cost, Some(0))]);
        assert_eq!(caps, [1, 1]);
        assert_eq!(desired, 100_000 + 1_500_000 + 150_000);
        // Less than the fixed part: the lowest layer, never nothing.
        let (caps, _) = allocate(50_000, 100_000, &[(cost, Some(2))]);
        assert_eq!(caps, [0]);
        // No simulcast track: nothing to cap, a track turned off wants nothing.
        assert_eq!(allocate(1_000, 0, &[]), (vec![], 0));
        assert_eq!(allocate(1_000, 0, &[(cost, None)]).1, 0);
        assert_eq!(
            allocate(u64::MAX, u64::MAX, &[([u64::MAX; 3], Some(2))]).1,
            u64::MAX
        );
    }

    #[test]
    fn up_switches_wait_after_a_down_switch_and_back_off_when_rolled_back() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut up = UpSwitch::default();
        assert!(up.may_go_up(t0));
        // A down-switch: up again after UP_HOLD.
        assert!(!up.went_down(t0));
        assert!(!up.may_go_up(t0 + UP_HOLD - Duration::from_millis(1)));
        assert!(up.may_go_up(t0 + UP_HOLD));
        // An up-switch rolled back within UP_TRIAL: the next waits the backoff.
        up.went_up(s(10));
        assert!(!up.may_go_up(s(11)), "one trial at a time");
        assert!(up.went_down(s(11)));
        assert!(!up.may_go_up(s(11) + UP_BACKOFF_BASE - Duration::from_millis(1)));
        assert!(up.may_go_up(s(11) + UP_BACKOFF_BASE));
        // Each failure doubles it up to the cap; an up-switch that holds resets it.
        let mut t = s(100);
        for _ in 0..5 {
            up.went_up(t);
            assert!(up.went_down(t + Duration::from_secs(1)));
            t += Duration::from_secs(1) + UP_BACKOFF_MAX;
        }
        assert_eq!(up.backoff, UP_BACKOFF_MAX);
        up.went_up(t);
        assert!(up.may_go_up(t + UP_TRIAL));
        assert_eq!(up.backoff, UP_BACKOFF_BASE);
        assert!(
            !up.went_down(t + UP_TRIAL * 2),
            "a later down-switch is no rollback"
        );
    }

    #[test]
    fn a_measured_estimate_raises_a_layer_only_with_a_margin() {
        let cost = [150_000, 500_000, 1_500_000];
        // 600 kb/s carries `h` (500 kb/s) but not with a 25 % margin.
        assert_eq!(allocate(600_000, 0, &[(cost, Some(2))]).0, [1]);
        assert_eq!(allocate(up_margin(600_000), 0, &[(cost, Some(2))]).0, [0]);
        assert_eq!(allocate(up_margin(625_000), 0, &[(cost, Some(2))]).0, [1]);
    }

    #[test]
    fn a_rolled_back_trial_stops_the_higher_layer_until_the_lower_keyframe() {
        let mut s = LayerSelector {
            current: Some(1),
            bandwidth_max: 0,
            ..LayerSelector::default()
        };
        let available = [true; LAYERS];
        s.abandon_above(1);
        assert_eq!(s.current, Some(1), "not above the cap: kept");
        s.abandon_above(0);
        assert_eq!(s.current, None);
        let target = s.target(available);
        assert_eq!(
            s.on_frame(1, true, target),
            Verdict::Drop,
            "the abandoned layer is not sent"
        );
        assert_eq!(
            s.on_frame(0, false, target),
            Verdict::Drop,
            "waits for a keyframe"
        );
        assert_eq!(s.keyframe_wanted(target), Some(0));
        assert_eq!(s.on_frame(0, true, target), Verdict::Switch);
    }

    #[test]
    fn a_big_jump_needs_the_estimate_to_carry_it_twice() {
        let cost = [180_000, 540_000, 1_500_000];
        // 710 kb/s (a probe's overshoot on a 400 kb/s link) would carry `h` with the 25 %
        // margin, but not the tripling from `q`: 540 + 360 kb/s.
        assert_eq!(up_step(up_margin(710_000), cost, 0, 1), 0);
        assert_eq!(up_step(900_000, cost, 0, 2), 1);
        assert_eq!(up_step(899_999, cost, 0, 2), 0);
        // From `h`, `f` needs 1.5 + 0.96 Mb/s; `q` to `f` at once, 1.5 + 1.32.
        assert_eq!(up_step(2_460_000, cost, 1, 2), 2);
        assert_eq!(up_step(2_460_000, cost, 0, 2), 1);
        assert_eq!(up_step(2_820_000, cost, 0, 2), 2);
        // Never below where it starts, nor above the cap.
        assert_eq!(up_step(0, cost, 1, 2), 1);
        assert_eq!(up_step(u64::MAX, cost, 0, 1), 1);
        assert_eq!(up_step(u64::MAX, cost, 2, 2), 2);
    }

    #[test]
    fn the_target_is_the_best_allowed_layer_being_sent() {
        let mut s = LayerSelector::default();
        assert_eq!(s.target([true, true, true]), Some(2));
        assert_eq!(s.target([true, true, false]), Some(1));
        s.max = Some(0);
        assert_eq!(s.target([true, true, true]), Some(0));
        // The wanted layer is paused: the lowest one sent above it.
        assert_eq!(s.target([false, true, true]), Some(1));
        assert_eq!(s.target([false, false, false]), None);
        s.max = Some(2);
        s.bandwidth_max = 1;
        assert_eq!(s.target([true, true, true]), Some(1));
        s.max = None;
        assert_eq!(s.target([true, true, true]), None);
    }

    #[test]
    fn switches_happen_at_a_keyframe_of_the_target_only() {
        let mut s = LayerSelector::default();
        // Nothing forwarded until the target's keyframe.
        assert_eq!(s.on_frame(2, false, Some(2)), Verdict::Drop);
        assert_eq!(s.on_frame(0, true, Some(2)), Verdict::Drop);
        assert_eq!(s.on_frame(2, true, Some(2)), Verdict::Switch);
        assert_eq!(s.on_frame(2, false, Some(2)), Verdict::Forward);
        // Asked for less: the high layer keeps flowing until the low keyframe.
        s.max = Some(0);
        let target = s.target([true, true, true]);
        assert_eq!(target, Some(0));
        assert_eq!(s.keyframe_wanted(target), Some(0));
        assert_eq!(s.on_frame(0, false, target), Verdict::Drop);
        assert_eq!(s.on_frame(2, false, target), Verdict::Forward);
        assert_eq!(s.on_frame(0, true, target), Verdict::Switch);
        assert_eq!(s.on_frame(2, false, target), Verdict::Drop);
        assert_eq!(s.on_frame(0, false, target), Verdict::Forward);
        assert_eq!(s.keyframe_wanted(target), None);
        // Turned off: nothing flows.
        s.max = None;
        assert_eq!(s.on_frame(0, false, s.target([true; 3])), Verdict::Drop);
    }

    #[test]
    fn dynacast_raises_at_once_and_lowers_after_a_delay() {
        let t0 = Instant::now();
        let mut d = Dynacast::default();
        assert_eq!(
            d.update(t0, Some(2)),
            None,
            "a new track already sends everything"
        );
        assert_eq!(d.update(t0, Some(0)), None);
        assert_eq!(d.update(t0 + Duration::from_secs(1), Some(0)), None);
        assert_eq!(d.update(t0 + DYNACAST_DOWN_DELAY, Some(0)), Some(Some(0)));
        assert_eq!(d.announced(), Some(0));
        // A wish that bounces back before the delay restarts the wait.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(d.update(t1, None), None);
        assert_eq!(d.update(t1 + Duration::from_secs(1), Some(0)), None);
        assert_eq!(d.update(t1 + Duration::from_secs(2), None), None);
        assert_eq!(d.update(t1 + Duration::from_secs(3), None), None);
        assert_eq!(d.update(t1 + Duration::from_secs(4), None), Some(None));
        assert_eq!(
            d.update(t1 + Duration::from_secs(4), Some(1)),
            Some(Some(1))
        );
    }

    #[test]
    fn subscribed_qualities_pause_the_layers_above_the_wish() {
        let q = subscribed_qualities(Some(1));
        assert_eq!(q.len(), 3);
        assert!(q[0].enabled && q[1].enabled && !q[2].enabled);
        assert_eq!(q[2].quality, lk::VideoQuality::High as i32);
        assert!(subscribed_qualities(None).iter().all(|q| !q.enabled));
    }
}
