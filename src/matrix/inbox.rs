//! The inbox worker: takes stored events in arrival order and hands each to the event
//! handler inside a database transaction that also marks it processed, so an event's
//! effects (rows, queued requests) are recorded exactly once, even across a crash.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::cluster::{Fence, fence_holds};
use crate::store::inbox::{InboxEvent, mark_processed};
use crate::store::{Connection, Store, StoreError};

/// Decides what an event means. Effects go through `conn` (the event's database
/// transaction); requests to the homeserver go through [`super::queue::enqueue`].
pub trait EventHandler: Send + Sync + 'static {
    /// Runs before a batch's database transaction opens: the place for the lookups at
    /// the homeserver a handler may want (display names), so none runs inside it.
    fn prepare(&self, _batch: &[InboxEvent]) -> impl Future<Output = ()> + Send {
        async {}
    }

    fn handle(
        &self,
        event: &InboxEvent,
        conn: &mut Connection,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs after a batch's transaction committed: the place to wake the workers that
    /// apply what it queued.
    fn committed(&self) {}
}

pub struct InboxWorker<H> {
    pub store: Store,
    pub handler: H,
    /// Woken by the intake when events arrive.
    pub wake: Arc<Notify>,
    /// Woken when handling queued requests for the homeserver.
    pub outbound_wake: Arc<Notify>,
    /// In a cluster, the leader's term: each batch's transaction checks it first, and a
    /// refusal ends the term (cancels `shutdown`). `None`: a single node.
    pub fence: Option<Fence>,
    pub shutdown: CancellationToken,
}

impl<H: EventHandler> InboxWorker<H> {
    pub async fn run(self) {
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.process_batch().await {
                Ok(0) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        // A safety net: the intake's wake-up is the normal path.
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
                Ok(_) => {}
                Err(StoreError::DeviceNotReady) => {
                    tracing::debug!("encrypted events wait for the bot's device");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "inbox processing failed; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Processes up to one batch in one database transaction (one commit, one fsync, for
    /// up to 100 events); returns how many events were handled. A failure rolls the whole
    /// batch back, and it is handled again from the start.
    pub async fn process_batch(&self) -> Result<usize, StoreError> {
        let batch = self.store.pending_inbox(100).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        self.handler.prepare(&batch).await;
        let mut tx = self.store.begin().await?;
        if let Some(fence) = &self.fence
            && !fence_holds(&mut tx, fence).await?
        {
            // Another node leads: it handles these events; nothing of ours commits.
            drop(tx);
            tracing::warn!(
                epoch = fence.epoch,
                "another node leads now; this node handles no more events"
            );
            self.shutdown.cancel();
            return Ok(0);
        }
        for event in &batch {
            self.handler.handle(event, &mut tx).await?;
            mark_processed(&mut tx, event.seq).await?;
        }
        tx.commit().await?;
        self.handler.committed();
        metrics::counter!("tchap_visio_events_processed_total").increment(batch.len() as u64);
        metrics::gauge!("tchap_visio_inbox_pending").decrement(batch.len() as f64);
        self.outbound_wake.notify_one();
        Ok(batch.len())
    }
}
