//! Webhooks: meeting events POSTed, signed, to the receivers listed in the config
//! (`webhooks: [{url, secret}]`).
//!
//! The bridge calls [`Webhooks::enqueue`] inside the database transaction that records
//! what happened, so an event is queued if and only if it happened; nothing is sent
//! there. One [`WebhookWorker`] task then delivers the queue: each receiver has its own
//! few delivery slots, so a slow or failing receiver only ever delays itself, and never
//! the meeting. A delivery is retried with backoff (1 s doubling to 5 min) until the
//! receiver answers 2xx or [`MAX_ATTEMPTS`] attempts failed; the failure stays in the
//! table. Deliveries are at least once: a receiver de-duplicates on
//! `X-Tchap-Visio-Delivery`, which a retry keeps.
//!
//! Signature: `X-Tchap-Visio-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, made anew at each attempt (so `t` is fresh). The body is fixed at
//! enqueue time and never holds the meeting's secret slug.
//!
//! Depends on `config`, `store` and `meeting`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::WebhookConfig;
use crate::meeting::{Attendee, ChatMessage, Meeting, Session};
use crate::store::webhooks::{DeliveryRow, NewDelivery};
use crate::store::{self, Store, StoreError};

/// Attempts of one delivery before giving up: with [`backoff`], about an hour of trying.
pub const MAX_ATTEMPTS: i64 = 20;
/// How long one attempt may take, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at once to one receiver.
pub const PER_RECEIVER_SLOTS: usize = 4;
/// First wait after a failure; it doubles at each failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(5 * 60);
/// Successful deliveries are kept this long (for diagnosis), then deleted; failures stay.
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often old successes are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The worker looks at the queue at least this often, for deliveries queued by another
/// process (`webhook test`) or committed after their wake-up.
const POLL: Duration = Duration::from_secs(1);

/// Event header names.
pub const EVENT_HEADER: &str = "X-Tchap-Visio-Event";
pub const DELIVERY_HEADER: &str = "X-Tchap-Visio-Delivery";
pub const SIGNATURE_HEADER: &str = "X-Tchap-Visio-Signature";

/// What happened, as the `type` of a webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    /// Someone joined a meeting that had not started yet.
    MeetingStarted,
    /// A participant connected (each session, rejoins included).
    ParticipantJoined,
    /// A participant's session ended.
    ParticipantLeft,
    /// A chat message was written in the meeting or mirrored from the room.
    ChatMessage,
    /// The meeting ended (ended by a moderator, or empty past the grace period).
    MeetingEnded,
    /// Sent by `tchap-visio webhook test` to check a receiver; no meeting behind it.
    Ping,
}

impl WebhookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MeetingStarted => "meeting.started",
            Self::ParticipantJoined => "participant.joined",
            Self::ParticipantLeft => "participant.left",
            Self::ChatMessage => "chat.message",
            Self::MeetingEnded => "meeting.ended",
            Self::Ping => "ping",
        }
    }

    pub const ALL: [WebhookKind; 6] = [
        Self::MeetingStarted,
        Self::ParticipantJoined,
        Self::ParticipantLeft,
        Self::ChatMessage,
        Self::MeetingEnded,
        Self::Ping,
    ];
}

/// A receiver: where to POST and the key to sign with.
#[derive(Clone)]
struct Receiver {
    url: String,
    secret: Arc<[u8]>,
}

/// The configured receivers, and the bell that wakes the worker. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    receivers: Arc<Vec<Receiver>>,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.receivers.iter().map(|r| r.url.as_str()).collect();
        f.debug_struct("Webhooks").field("urls", &urls).finish()
    }
}

fn random_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// What receivers are told about a meeting: never its slug (the join secret).
pub fn meeting_json(meeting: &Meeting) -> serde_json::Value {
    serde_json::json!({
        "id": meeting.id.as_str(),
        "title": meeting.title,
        "room_id": meeting.matrix_room_id,
        "state": meeting.state.as_str(),
        "created_at": meeting.created_at,
        "started_at": meeting.started_at,
        "ended_at": meeting.ended_at,
    })
}

/// `data` of `participant.joined` and `participant.left`: the session, without its
/// identity (which carries the browser's stable id; the SFU's `sid` pairs join and leave).
pub fn participant_data(session: &Session) -> serde_json::Value {
    serde_json::json!({
        "sid": session.sid,
        "name": session.display_name,
        "matrix_user_id": session.matrix_user_id,
        "joined_at": session.joined_at,
        "left_at": session.left_at,
    })
}

/// `data` of `chat.message`.
pub fn chat_data(message: &ChatMessage) -> serde_json::Value {
    serde_json::json!({
        "id": message.message_id,
        "origin": message.origin.as_str(),
        "sender_name": message.sender_name,
        "matrix_user_id": message.matrix_user_id,
        "body": message.body,
        "sent_at": message.sent_at,
    })
}

/// `data` of `meeting.ended`: what the summary in the thread says; the duration runs
/// from the first join to the last leave (`last_left_at`), without the grace period.
pub fn ended_data(
    meeting: &Meeting,
    last_left_at: i64,
    attendance: &[Attendee],
    chat_messages: i64,
) -> serde_json::Value {
    let duration_ms = meeting
        .started_at
        .map(|start| (last_left_at - start).max(0));
    serde_json::json!({
        "duration_ms": duration_ms,
        "peak_participants": meeting.peak_participants,
        "chat_messages": chat_messages,
        "attendance": attendance.iter().map(|a| serde_json::json!({
            "name": a.display_name,
            "matrix_user_id": a.matrix_user_id,
            "present_ms": a.present_ms,
        })).collect::<Vec<_>>(),
    })
}

impl Webhooks {
    /// From the validated config (`webhooks`).
    pub fn from_config(config: &[WebhookConfig]) -> Self {
        Self {
            receivers: Arc::new(
                config
                    .iter()
                    .map(|hook| Receiver {
                        url: hook.url.clone(),
                        secret: Arc::from(hook.secret.trim().as_bytes()),
                    })
                    .collect(),
            ),
            wake: Arc::new(Notify::new()),
        }
    }

    /// No receivers: `enqueue` does nothing.
    pub fn none() -> Self {
        Self::from_config(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.receivers.is_empty()
    }

    /// Queues `kind` about `meeting` for every receiver, inside the caller's transaction.
    /// Nothing is sent here; call [`Webhooks::wake`] after the commit to send at once
    /// (otherwise the worker finds it within a second).
    pub async fn enqueue(
        &self,
        conn: &mut store::Connection,
        kind: WebhookKind,
        meeting: &Meeting,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.enqueue_body(conn, kind, Some(meeting_json(meeting)), data)
            .await
            .map(drop)
    }

    /// Queues a `ping` for every receiver (the `webhook test` command).
    pub async fn enqueue_ping(&self, conn: &mut store::Connection) -> Result<String, StoreError> {
        self.enqueue_body(
            conn,
            WebhookKind::Ping,
            None,
            serde_json::json!({ "message": "tchap-visio webhook test" }),
        )
        .await
    }

    async fn enqueue_body(
        &self,
        conn: &mut store::Connection,
        kind: WebhookKind,
        meeting: Option<serde_json::Value>,
        data: serde_json::Value,
    ) -> Result<String, StoreError> {
        let event_id = random_id("evt_");
        if self.receivers.is_empty() {
            return Ok(event_id);
        }
        let now = now_ms();
        let body = serde_json::json!({
            "id": event_id,
            "type": kind.as_str(),
            "created_at": now,
            "meeting": meeting,
            "data": data,
        })
        .to_string();
        for receiver in self.receivers.iter() {
            let delivery_id = random_id("dlv_");
            store::webhooks::insert(
                conn,
                &NewDelivery {
                    id: &delivery_id,
                    event_id: &event_id,
                    event_type: kind.as_str(),
                    url: &receiver.url,
                    body: &body,
                    created_at: now,
                },
            )
            .await?;
        }
        self.wake.notify_one();
        Ok(event_id)
    }

    /// Wakes the worker (after committing a transaction that queued events).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The worker that delivers this config's queue.
    pub fn worker(&self, store: Store, shutdown: CancellationToken) -> WebhookWorker {
        WebhookWorker {
            store,
            webhooks: self.clone(),
            shutdown,
            first_retry: FIRST_RETRY,
            timeout: ATTEMPT_TIMEOUT,
            fence: None,
        }
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature_header(secret: &[u8], unix_secs: i64, body: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Wait after the `attempts`-th failure: 1 s, 2 s, 4 s … up to 5 min.
pub fn backoff(first: Duration, attempts: i64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    first.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Delivers the queue until cancelled.
pub struct WebhookWorker {
    store: Store,
    webhooks: Webhooks,
    shutdown: CancellationToken,
    /// [`FIRST_RETRY`], shorter in tests.
    pub first_retry: Duration,
    /// [`ATTEMPT_TIMEOUT`], shorter in tests.
    pub timeout: Duration,
    /// In a cluster, the leader's term: checked before each round of deliveries, and a
    /// refusal ends the term (cancels `shutdown`). `None`: a single node.
    pub fence: Option<crate::store::cluster::Fence>,
}

/// How one attempt went.
enum Outcome {
    Delivered(u16),
    Failed { status: Option<u16>, error: String },
}

impl WebhookWorker {
    pub async fn run(self) {
        let receivers = self.webhooks.receivers.clone();
        self.give_up_on_removed_receivers(&receivers).await;
        if receivers.is_empty() {
            tracing::debug!("webhooks: no receiver configured");
            return;
        }
        // reqwest is built without a default TLS provider; `main` installs ring, and
        // doing it here too (a no-op then) lets the worker run alone in tests.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            // A signed event goes to the configured URL and nowhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tchap-visio/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: cannot build the HTTP client; no webhook will be sent");
                return;
            }
        };
        let mut in_flight: HashMap<String, HashSet<String>> = receivers
            .iter()
            .map(|r| (r.url.clone(), HashSet::new()))
            .collect();
        let mut tasks: JoinSet<(String, String)> = JoinSet::new();
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if let Some(fence) = &self.fence {
                match self.store.fence_holds(fence).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            epoch = fence.epoch,
                            "another node leads now; this node delivers no more webhooks"
                        );
                        self.shutdown.cancel();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: cannot check the leadership; retrying in 1 s");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = self.shutdown.cancelled() => break,
                        }
                    }
                }
            }
            let now = now_ms();
            if tokio::time::Instant::now() >= next_prune {
                next_prune += PRUNE_EVERY;
                match self
                    .store
                    .prune_delivered_webhooks(now - KEEP_DELIVERED.as_millis() as i64)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "webhooks: old deliveries pruned"),
                    Err(e) => tracing::warn!(error = %e, "webhooks: cannot prune old deliveries"),
                }
            }
            let mut next_due: Option<i64> = None;
            for receiver in receivers.iter() {
                let busy = in_flight
                    .get_mut(&receiver.url)
                    .expect("one set per receiver");
                let free = PER_RECEIVER_SLOTS.saturating_sub(busy.len());
                if free == 0 {
                    // Its next completion wakes the loop.
                    continue;
                }
                // Ask for more than the free slots: rows in flight are still pending.
                let limit = (free + busy.len()) as i64;
                match self
                    .store
                    .due_webhook_deliveries(&receiver.url, now, limit)
                    .await
                {
                    Ok(rows) => {
                        let fresh: Vec<DeliveryRow> = rows
                            .into_iter()
                            .filter(|row| !busy.contains(&row.id))
                            .take(free)
                            .collect();
                        for row in fresh {
                            busy.insert(row.id.clone());
                            let attempt = Attempt {
                                client: client.clone(),
                                store: self.store.clone(),
                                receiver: receiver.clone(),
                                first_retry: self.first_retry,
                            };
                            tasks.spawn(attempt.run(row));
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "webhooks: cannot read the queue"),
                }
                if busy.len() < PER_RECEIVER_SLOTS
                    && let Ok(Some(due)) = self.store.next_webhook_due_at(&receiver.url).await
                    && due > now
                {
                    next_due = Some(next_due.map_or(due, |d: i64| d.min(due)));
                }
            }
            if let Ok(pending) = self.store.webhook_pending_count().await {
                metrics::gauge!("tchap_visio_webhook_pending").set(pending as f64);
            }
            let wait = next_due
                .map(|due| {
                    Duration::from_millis((due - now).clamp(0, POLL.as_millis() as i64) as u64)
                })
                .unwrap_or(POLL);
            tokio::select! {
                _ = self.webhooks.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((url, id)) = done
                        && let Some(busy) = in_flight.get_mut(&url)
                    {
                        busy.remove(&id);
                    }
                    // A panicked attempt leaves its id in the set: that receiver keeps
                    // one slot fewer until restart, and the row is retried then.
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
        // Attempts still running are dropped; their rows stay pending and are sent
        // again, with the same delivery id, after the restart.
        tasks.abort_all();
    }

    /// Deliveries to a URL no longer in the config can never be signed: they fail now,
    /// with the reason recorded.
    async fn give_up_on_removed_receivers(&self, receivers: &[Receiver]) {
        let Ok(urls) = self.store.pending_webhook_urls().await else {
            return;
        };
        for url in urls {
            if receivers.iter().all(|r| r.url != url) {
                match self
                    .store
                    .fail_webhooks_to(&url, "receiver no longer in the configuration", now_ms())
                    .await
                {
                    Ok(n) => {
                        tracing::warn!(receiver = %crate::config::redact_url(&url), deliveries = n, "webhooks: receiver removed from the config; its pending deliveries are dropped")
                    }
                    Err(e) => tracing::error!(error = %e, "webhooks: cannot update the queue"),
                }
            }
        }
    }
}

/// One attempt of one delivery, run in its own task.
struct Attempt {
    client: reqwest::Client,
    store: Store,
    receiver: Receiver,
    first_retry: Duration,
}

impl Attempt {
    async fn run(self, row: DeliveryRow) -> (String, String) {
        let outcome = self.send(&row).await;
        let now = now_ms();
        let attempts = row.attempts + 1;
        let recorded = match &outcome {
            Outcome::Delivered(status) => {
                metrics::counter!("tchap_visio_webhook_attempts_total", "outcome" => "delivered")
                    .increment(1);
                tracing::debug!(delivery = %row.id, event = %row.event_type, status, "webhook delivered");
                self.store
                    .mark_webhook_delivered(&row.id, i64::from(*status), now)
                    .await
            }
            Outcome::Failed { status, error } if attempts >= MAX_ATTEMPTS => {
                metrics::counter!("tchap_visio_webhook_attempts_total", "outcome" => "gave_up")
                    .increment(1);
                tracing::warn!(delivery = %row.id, receiver = %crate::config::redact_url(&self.receiver.url), attempts, %error, "webhook failed; giving up");
                self.store
                    .mark_webhook_failed(&row.id, status.map(i64::from), error, now)
                    .await
            }
            Outcome::Failed { status, error } => {
                metrics::counter!("tchap_visio_webhook_attempts_total", "outcome" => "retry")
                    .increment(1);
                let wait = backoff(self.first_retry, attempts);
                tracing::info!(delivery = %row.id, receiver = %crate::config::redact_url(&self.receiver.url), attempts,
                    retry_in_ms = wait.as_millis() as u64, %error, "webhook failed; will retry");
                self.store
                    .reschedule_webhook(
                        &row.id,
                        status.map(i64::from),
                        error,
                        now + wait.as_millis() as i64,
                    )
                    .await
            }
        };
        if let Err(e) = recorded {
            // The row stays as it was: it is attempted again, with the same id.
            tracing::error!(delivery = %row.id, error = %e, "webhooks: cannot record an attempt");
        }
        (self.receiver.url, row.id)
    }

    async fn send(&self, row: &DeliveryRow) -> Outcome {
        let t = now_ms() / 1000;
        let signature = signature_header(&self.receiver.secret, t, &row.body);
        let result = self
            .client
            .post(&self.receiver.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, &row.event_type)
            .header(DELIVERY_HEADER, &row.id)
            .header(SIGNATURE_HEADER, signature)
            .body(row.body.clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status().is_success() => {
                Outcome::Delivered(response.status().as_u16())
            }
            Ok(response) => Outcome::Failed {
                status: Some(response.status().as_u16()),
                error: format!("HTTP {}", response.status()),
            },
            // Without the URL: it may hold credentials.
            Err(e) => Outcome::Failed {
                status: None,
                error: e.without_url().to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
