//! The workers of the bot's device: one feeds stored encryption input to the crypto
//! core and sends what it asks for, making parked events pending again when their room
//! key arrives; the other (`encryption.to_device: sync`) long-polls the device's
//! `/sync` and stores what it returns. In a cluster both run on every node, each for its
//! own device, so that room keys reach a node's device before it leads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::device::{BotDevice, DeviceError, store_sync_batch, sync_token};
use crate::clock::now_ms;

/// How long an encrypted event waits for its room key before it is given up (counted).
pub const PARKED_EVENT_LIFETIME: Duration = Duration::from_secs(600);

pub struct CryptoWorker {
    pub device: Arc<BotDevice>,
    /// Woken when parked events became pending again.
    pub inbox_wake: Arc<Notify>,
    /// In a cluster, whether this node leads now: only the leader decrypts, so only its
    /// keys decide when parked events are tried again or given up. `None`: a single
    /// node, which always does.
    pub leading: Option<Arc<AtomicBool>>,
    pub shutdown: CancellationToken,
}

impl CryptoWorker {
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let wait = match self.step().await {
                Ok(()) => {
                    failures = 0;
                    Duration::from_secs(30)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = crate::matrix::queue::backoff(i64::from(failures));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the bot's device could not catch up; retrying");
                    wait
                }
            };
            tokio::select! {
                _ = self.device.input_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Feeds the input, re-queues events whose key arrived, sends the core's requests,
    /// gives up events that waited too long.
    pub async fn step(&self) -> Result<(), DeviceError> {
        let mut sessions = self.device.feed_stored_input().await?;
        if self
            .leading
            .as_ref()
            .is_some_and(|leading| !leading.load(Ordering::Acquire))
        {
            // The keys are in this node's crypto store; when it leads, the scan below
            // finds them for the events that wait.
            return self.device.flush().await;
        }
        // A key may have arrived while its event was being parked (or before a crash):
        // those are found by asking the core.
        for (room, session) in self.device.store.parked_sessions().await? {
            if !sessions.contains(&session)
                && self.device.crypto.has_room_key(&room, &session).await?
            {
                sessions.push(session);
            }
        }
        let mut unparked = 0;
        for session in sessions {
            unparked += self.device.store.unpark_session(&session).await?;
        }
        if unparked > 0 {
            tracing::debug!(events = unparked, "room keys arrived for parked events");
            metrics::counter!("tchap_visio_events_decrypted_late_total").increment(unparked);
            self.inbox_wake.notify_one();
        }
        self.device.flush().await?;
        let limit = now_ms() - PARKED_EVENT_LIFETIME.as_millis() as i64;
        let dropped = self.device.store.give_up_parked(limit).await?;
        for parked in &dropped {
            tracing::warn!(room = %parked.room_id, seq = parked.inbox_seq, "gave up an encrypted event whose room key never arrived");
        }
        if !dropped.is_empty() {
            metrics::counter!("tchap_visio_events_undecryptable_total", "reason" => "key_never_arrived")
                .increment(dropped.len() as u64);
        }
        metrics::gauge!("tchap_visio_events_waiting_for_key")
            .set(self.device.store.parked_count().await? as f64);
        Ok(())
    }
}

/// `encryption.to_device: sync`: the bot's device long-polls its own `/sync`.
pub struct SyncLoop {
    pub device: Arc<BotDevice>,
    pub shutdown: CancellationToken,
}

impl SyncLoop {
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let node = self.device.node.as_deref();
            let since = match sync_token(&self.device.store, node).await {
                Ok(since) => since,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the sync token");
                    None
                }
            };
            let poll = self
                .device
                .sync_once(since.as_deref(), Duration::from_secs(30));
            let result = tokio::select! {
                result = poll => result,
                _ = self.shutdown.cancelled() => return,
            };
            let stored = match result {
                Ok((next, input)) => store_sync_batch(&self.device.store, node, &next, &input)
                    .await
                    .map_err(DeviceError::from),
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => {
                    failures = 0;
                    self.device.input_wake.notify_one();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = crate::matrix::queue::backoff(i64::from(failures));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the bot device's sync failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}
