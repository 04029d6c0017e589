//! What a subscriber's stream must not notice when its source changes: RTP timestamps.
//!
//! The engine forwards in str0m's frame mode: each subscriber m-line is a stream of its
//! own, whose SSRC and sequence numbers str0m writes, and whose VP8 payload descriptor
//! str0m's packetizer writes afresh (without PictureID or TL0PICIDX, which libwebrtc then
//! does not rely on). A simulcast layer switch therefore cannot break SSRC, sequence or
//! VP8 picture continuity; what remains is the RTP timestamp, which we hand to str0m per
//! frame. Each simulcast layer counts time from its own random origin, so after a switch
//! the new layer's timestamps are shifted to continue where the old layer stopped, by the
//! wall-clock time between the two frames (LiveKit's fallback when sender reports are not
//! there to align layers). A jump would make the receiver's jitter buffer wait or drop.
//! No I/O: numbers in, numbers out.

use std::time::Instant;

/// One subscriber stream's timestamp mapping: output = input + offset (wrapping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimestampRewriter {
    offset: u64,
    /// The last timestamp written, and when its frame arrived.
    last: Option<(u64, Instant)>,
}

impl TimestampRewriter {
    /// The timestamp to send for a frame stamped `input` (in `clock_rate` Hz) that arrived
    /// at `arrival`. `switched`: the frame is the first of a new source (layer), so the
    /// mapping is recomputed to follow the previous output by the time that passed (at
    /// least one tick, so two pictures never share a timestamp).
    pub fn rewrite(
        &mut self,
        input: u64,
        arrival: Instant,
        clock_rate: u32,
        switched: bool,
    ) -> u64 {
        if switched && let Some((last_out, last_arrival)) = self.last {
            let elapsed = arrival.saturating_duration_since(last_arrival);
            let ticks = (elapsed.as_micros().min(u128::from(u32::MAX)) as u64
                * u64::from(clock_rate))
                / 1_000_000;
            let out = last_out.wrapping_add(ticks.max(1));
            self.offset = out.wrapping_sub(input);
        }
        let out = input.wrapping_add(self.offset);
        self.last = Some((out, arrival));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_pass_through_until_a_switch() {
        let t0 = Instant::now();
        let mut r = TimestampRewriter::default();
        assert_eq!(r.rewrite(1000, t0, 90_000, false), 1000);
        assert_eq!(
            r.rewrite(4000, t0 + Duration::from_millis(33), 90_000, false),
            4000
        );
        // The first frame ever is not moved even when flagged as a switch.
        let mut fresh = TimestampRewriter::default();
        assert_eq!(fresh.rewrite(77, t0, 90_000, true), 77);
    }

    #[test]
    fn a_switch_continues_from_the_last_output_by_the_elapsed_time() {
        let t0 = Instant::now();
        let mut r = TimestampRewriter::default();
        r.rewrite(3_000_000, t0, 90_000, false);
        // The new layer counts from elsewhere; 100 ms later it becomes the source.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(r.rewrite(12, t1, 90_000, true), 3_009_000);
        // And its own progress carries on from there.
        let t2 = t1 + Duration::from_millis(66);
        assert_eq!(r.rewrite(12 + 6000, t2, 90_000, false), 3_015_000);
        // Two switches in the same instant still move time forward.
        assert_eq!(r.rewrite(500, t2, 90_000, true), 3_015_001);
    }

    #[test]
    fn wrapping_inputs_never_panic() {
        let t0 = Instant::now();
        let mut r = TimestampRewriter::default();
        r.rewrite(u64::MAX, t0, 90_000, false);
        let out = r.rewrite(0, t0 + Duration::from_secs(1), 90_000, true);
        assert_eq!(out, u64::MAX.wrapping_add(90_000));
        r.rewrite(
            5,
            t0 + Duration::from_secs(u64::from(u32::MAX) * 4),
            u32::MAX,
            true,
        );
    }
}
