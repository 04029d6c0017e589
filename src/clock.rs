//! The one wall clock: "now" as milliseconds since the Unix epoch, the time format of
//! access tokens, the database, the APIs and LiveKit's pongs. Timers and the SFU's
//! packet timing use monotonic time (`Instant`) where they run. Depends on nothing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
