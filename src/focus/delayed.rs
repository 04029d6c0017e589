//! Delegated leaves (MSC4140): a MatrixRTC client schedules its own « left the call »
//! state event at its homeserver with a delay, and hands its `delay_id` to the focus.
//! While the participant is connected to our SFU the focus restarts that delay every
//! half timeout; once the SFU says the participant left (or vanished: its silence
//! limit), the focus sends the event at once, so the room never shows a ghost in the call.
//!
//! The homeserver is the one the verified OpenID token names (`matrix_server_name`),
//! resolved by `.well-known/matrix/client` (ours is `homeserver.address`), never a URL
//! from the request. Delayed-event management needs no access token (the delay id is
//! the secret); towards our own homeserver we send the appservice's token anyway, so its
//! `rc_delayed_event_mgmt` rate limit (one a second per caller) does not apply to us.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::matrix::client::url_component;
use crate::sfu::{EngineEvent, SfuHandle};

/// Longest wait for a participant to connect after its delegation.
const CONNECT_WAIT_MAX: Duration = Duration::from_secs(3600);
/// Longest delay we keep restarting for (Synapse's own maximum is its config's).
pub const MAX_DELAY_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Shortest accepted: restarting faster than every second floods the homeserver.
pub const MIN_DELAY_TIMEOUT_MS: u64 = 2000;
/// How long a resolved homeserver address is reused.
const RESOLVED_TTL: Duration = Duration::from_secs(4 * 3600);
/// At most this many delegations at once (each is one task).
const MAX_JOBS: usize = 20_000;

/// One delegation, as the token endpoint checked it.
#[derive(Debug, Clone)]
pub struct Delegation {
    /// The LiveKit room and identity whose presence keeps the event waiting.
    pub room: String,
    pub identity: String,
    pub delay_id: String,
    pub delay_timeout: Duration,
    /// From the verified OpenID token: whose homeserver holds the delayed event.
    pub server_name: String,
}

/// Whether a delegation's delay id and timeout are usable (checked before anything is
/// granted, so that a refused request makes nothing).
pub fn check(delay_id: &str, delay_timeout: Duration) -> Result<(), DelegationError> {
    let timeout_ms = delay_timeout.as_millis() as u64;
    if !(MIN_DELAY_TIMEOUT_MS..=MAX_DELAY_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(DelegationError::Timeout);
    }
    if delay_id.is_empty()
        || delay_id.len() > 255
        || delay_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(DelegationError::DelayId);
    }
    Ok(())
}

/// Why a delegation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    #[error(
        "`delay_timeout` must be between {MIN_DELAY_TIMEOUT_MS} and {MAX_DELAY_TIMEOUT_MS} milliseconds"
    )]
    Timeout,
    #[error("`delay_id` must be 1 to 255 printable characters")]
    DelayId,
    #[error("too many delegated leaves at once; try again later")]
    Full,
}

type Key = (String, String);

/// The running delegations and the SFU presence they follow.
pub struct DelayedLeaves {
    sfu: SfuHandle,
    http: reqwest::Client,
    own_server: String,
    own_address: String,
    as_token: Option<String>,
    /// Per (room, identity): whether the SFU said they joined or left since the job
    /// started (`None`: nothing yet), for the job waiting on it.
    presence: Mutex<HashMap<Key, watch::Sender<Option<bool>>>>,
    /// Per participant: its delegation's number (a newer one replaces it) and its stop.
    jobs: Mutex<HashMap<Key, (u64, CancellationToken)>>,
    next_job: std::sync::atomic::AtomicU64,
    resolved: Mutex<HashMap<String, (String, Instant)>>,
    shutdown: CancellationToken,
}

impl DelayedLeaves {
    pub fn new(
        sfu: SfuHandle,
        own_server: String,
        own_address: String,
        as_token: Option<String>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        crate::matrix::client::install_tls_provider();
        Arc::new(Self {
            sfu,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("tchap-visio/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("a client with static settings always builds"),
            own_server,
            own_address: own_address.trim_end_matches('/').to_owned(),
            as_token,
            presence: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            next_job: std::sync::atomic::AtomicU64::new(1),
            resolved: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Follows the SFU's joins and leaves (called for every room event).
    pub fn observe(&self, event: &EngineEvent) {
        let (room, identity, present) = match event {
            EngineEvent::ParticipantJoined { room, identity, .. } => (room, identity, true),
            EngineEvent::ParticipantLeft { room, identity, .. } => (room, identity, false),
            _ => return,
        };
        let presence = self
            .presence
            .lock()
            .expect("no panic while holding the lock");
        if let Some(tx) = presence.get(&(room.clone(), identity.clone())) {
            tx.send_replace(Some(present));
        }
    }

    /// How many delegations run now.
    pub fn running(&self) -> usize {
        self.jobs.lock().map(|j| j.len()).unwrap_or(0)
    }

    /// Starts following a delegation; a newer one for the same participant replaces it.
    pub fn delegate(self: &Arc<Self>, d: Delegation) -> Result<(), DelegationError> {
        check(&d.delay_id, d.delay_timeout)?;
        let key = (d.room.clone(), d.identity.clone());
        let cancel = self.shutdown.child_token();
        let job = self
            .next_job
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut jobs = self.jobs.lock().expect("no panic while holding the lock");
            if jobs.len() >= MAX_JOBS && !jobs.contains_key(&key) {
                return Err(DelegationError::Full);
            }
            if let Some((_, old)) = jobs.insert(key.clone(), (job, cancel.clone())) {
                old.cancel();
            }
        }
        // Registered before the SFU is asked, so that a join in between is not missed.
        let present = {
            let mut presence = self
                .presence
                .lock()
                .expect("no panic while holding the lock");
            presence
                .entry(key.clone())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        metrics::counter!("tchap_visio_focus_delayed_leaves_total", "outcome" => "delegated")
            .increment(1);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                outcome = this.follow(&d, present) => {
                    metrics::counter!("tchap_visio_focus_delayed_leaves_total", "outcome" => outcome)
                        .increment(1);
                    tracing::info!(room = %d.room, outcome, "delegated leave done");
                }
                _ = cancel.cancelled() => {}
            }
            this.finish(&key, job);
        });
        Ok(())
    }

    fn finish(&self, key: &Key, job: u64) {
        let mut jobs = self.jobs.lock().expect("no panic while holding the lock");
        // A newer delegation of the same participant keeps its own entries.
        if jobs.get(key).is_some_and(|(j, _)| *j == job) {
            jobs.remove(key);
            self.presence
                .lock()
                .expect("no panic while holding the lock")
                .remove(key);
        }
    }

    /// The whole life of one delegation; returns its outcome's name.
    async fn follow(
        &self,
        d: &Delegation,
        mut present: watch::Receiver<Option<bool>>,
    ) -> &'static str {
        let Some(base) = self.homeserver(&d.server_name).await else {
            return "homeserver_unresolved";
        };
        let connected_now = self
            .sfu
            .participants(d.room.clone())
            .await
            .is_some_and(|ps| ps.iter().any(|p| p.identity == d.identity));
        // What the SFU said since registration wins over the list asked after it.
        let connected = present.borrow_and_update().unwrap_or(connected_now);
        if !connected {
            let wait = d.delay_timeout.min(CONNECT_WAIT_MAX);
            let joined = tokio::time::timeout(wait, present.wait_for(|p| *p == Some(true)))
                .await
                .is_ok_and(|r| r.is_ok());
            if !joined {
                // Never came: the event may go (the homeserver sends it by itself too).
                return match self.manage(&base, d, "send").await {
                    Managed::Done | Managed::Gone => "never_connected",
                    Managed::Failed => "send_failed",
                };
            }
        }
        let period = d.delay_timeout / 2;
        loop {
            match self.manage(&base, d, "restart").await {
                Managed::Done => {}
                // The client sent or cancelled it itself: nothing left to do.
                Managed::Gone => return "cancelled_by_client",
                Managed::Failed => {}
            }
            let left = tokio::time::timeout(period, present.wait_for(|p| *p == Some(false)))
                .await
                .is_ok();
            if left {
                return match self.manage(&base, d, "send").await {
                    Managed::Done | Managed::Gone => "sent_on_leave",
                    Managed::Failed => "send_failed",
                };
            }
        }
    }

    /// One management call (`restart` or `send`), retried while it may still matter.
    async fn manage(&self, base: &str, d: &Delegation, action: &str) -> Managed {
        let url = format!(
            "{base}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{}/{action}",
            url_component(&d.delay_id)
        );
        let deadline = Instant::now() + (d.delay_timeout / 2).max(Duration::from_secs(2));
        let mut wait = Duration::from_millis(200);
        loop {
            let mut request = self.http.post(&url).json(&serde_json::json!({}));
            if base == self.own_address
                && let Some(token) = &self.as_token
            {
                request = request.bearer_auth(token);
            }
            let retry_after = match request.send().await {
                Ok(r) if r.status().is_success() => return Managed::Done,
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Managed::Gone,
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    body.get("retry_after_ms")
                        .and_then(|v| v.as_u64())
                        .map(Duration::from_millis)
                }
                Ok(r) => {
                    tracing::warn!(
                        status = r.status().as_u16(),
                        action,
                        "the homeserver refused a delayed-event call"
                    );
                    return Managed::Failed;
                }
                Err(e) => {
                    tracing::debug!(error = %e, action, "delayed-event call failed; retrying");
                    None
                }
            };
            let pause = retry_after.unwrap_or(wait).min(Duration::from_secs(5));
            if Instant::now() + pause > deadline {
                tracing::warn!(action, "gave up a delayed-event call");
                return Managed::Failed;
            }
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// The client-server base URL of `server`: ours from the config, others from their
    /// `.well-known/matrix/client`.
    async fn homeserver(&self, server: &str) -> Option<String> {
        if server == self.own_server {
            return Some(self.own_address.clone());
        }
        if let Some((url, at)) = self
            .resolved
            .lock()
            .ok()
            .and_then(|r| r.get(server).cloned())
            && at.elapsed() < RESOLVED_TTL
        {
            return Some(url);
        }
        let answer: serde_json::Value = self
            .http
            .get(format!("https://{server}/.well-known/matrix/client"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let base = answer
            .get("m.homeserver")?
            .get("base_url")?
            .as_str()?
            .trim_end_matches('/')
            .to_owned();
        let url = url::Url::parse(&base).ok()?;
        if url.scheme() != "https" {
            tracing::warn!(
                server,
                "a homeserver's .well-known names a non-https address; not used"
            );
            return None;
        }
        if let Ok(mut r) = self.resolved.lock() {
            if r.len() > 10_000 {
                r.clear();
            }
            r.insert(server.to_owned(), (base.clone(), Instant::now()));
        }
        Some(base)
    }
}

enum Managed {
    Done,
    /// The homeserver no longer has the event (sent or cancelled).
    Gone,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_checked_before_anything_is_granted() {
        let ok = Duration::from_millis(8000);
        assert!(check("syd_abc", ok).is_ok());
        assert!(matches!(
            check("syd_abc", Duration::from_millis(1000)),
            Err(DelegationError::Timeout)
        ));
        assert!(matches!(
            check("syd_abc", Duration::from_secs(2 * 24 * 3600)),
            Err(DelegationError::Timeout)
        ));
        for bad in ["", "a b", "a\nb", &"x".repeat(256)] {
            assert!(
                matches!(check(bad, ok), Err(DelegationError::DelayId)),
                "{bad:?}"
            );
        }
    }
}
