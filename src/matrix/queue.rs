//! The persistent outbound queue: every request that changes something on the homeserver
//! (join, leave, send, profile, ghost registration) is stored first, in the same database
//! transaction as the decision that caused it, then sent by one worker that retries with
//! backoff, honours `M_LIMIT_EXCEEDED`, keeps each room's order, and reuses the request's
//! transaction id so a retried send is de-duplicated by the homeserver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::api::client::{account, membership, message, profile, state};
use ruma::events::{MessageLikeEventType, StateEventType};
use ruma::serde::Raw;
use ruma::{OwnedMxcUri, OwnedRoomId, OwnedUserId, TransactionId};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, MatrixClient};
use crate::clock::now_ms;
use crate::store::{self, Store, StoreError};

/// A change to make on the homeserver, as stored in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboundRequest {
    /// Join a room (the bot, or a ghost when `as_user` is set).
    Join {
        room_id: OwnedRoomId,
        as_user: Option<OwnedUserId>,
    },
    /// Leave a room, or refuse an invite, with an optional reason shown to the room.
    Leave {
        room_id: OwnedRoomId,
        as_user: Option<OwnedUserId>,
        reason: Option<String>,
    },
    /// Send a message-like event.
    Send {
        room_id: OwnedRoomId,
        as_user: Option<OwnedUserId>,
        event_type: String,
        content: serde_json::Value,
        /// Post it in the thread whose root is the event this queued request (its row id)
        /// created: the relation is added when sent, since the root's event id is only
        /// known once that request is out. The room's order makes it out first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        in_thread_of: Option<i64>,
        /// Who speaks, for a ghost's message: if the homeserver refuses the ghost (it
        /// is not in the room, typically because the bot may not invite there), the bot
        /// posts the message instead, with this name in front, rather than losing it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attribution: Option<Attribution>,
    },
    /// Invite a user (a ghost) into a room, as the bot.
    Invite {
        room_id: OwnedRoomId,
        user_id: OwnedUserId,
    },
    /// Set a state event (the meeting widget; empty content removes it).
    SetState {
        room_id: OwnedRoomId,
        event_type: String,
        state_key: String,
        content: serde_json::Value,
    },
    /// Set a user's display name.
    SetDisplayName {
        user_id: OwnedUserId,
        displayname: String,
    },
    /// Set a user's avatar.
    SetAvatar {
        user_id: OwnedUserId,
        avatar_url: OwnedMxcUri,
    },
    /// Register a ghost user in our namespace (`inhibit_login`, as MSC4190 requires).
    RegisterGhost { localpart: String },
    /// Replace a message the bot queued earlier (`of`: its row id) with `content` (a
    /// message content): sent as an `m.replace` edit once that message is out, or as a
    /// new message should it never have gone out.
    Edit {
        room_id: OwnedRoomId,
        of: i64,
        content: serde_json::Value,
    },
    /// A notice for one user's eyes: sent in their one-to-one room with the bot, which is
    /// made (and remembered) the first time.
    SendDirect {
        user_id: OwnedUserId,
        content: serde_json::Value,
    },
}

/// A speaker's name and what separates it from their words, in the room's language
/// ("Zoé (invitée)\u{202f}: " in French).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub name: String,
    pub separator: String,
}

impl OutboundRequest {
    /// The room whose order this request must keep, if any.
    pub fn room(&self) -> Option<&OwnedRoomId> {
        match self {
            Self::Join { room_id, .. }
            | Self::Leave { room_id, .. }
            | Self::Send { room_id, .. }
            | Self::Invite { room_id, .. }
            | Self::SetState { room_id, .. }
            | Self::Edit { room_id, .. } => Some(room_id),
            _ => None,
        }
    }
}

/// Stores a request for sending, inside the caller's database transaction.
/// The transaction id is random, so it is unique across all ghosts and restarts.
pub async fn enqueue(
    conn: &mut store::Connection,
    request: &OutboundRequest,
) -> Result<i64, StoreError> {
    enqueue_not_before(conn, request, crate::clock::now_ms()).await
}

/// Like [`enqueue`], not sent before `not_before_ms` (pacing a flood of chat).
pub async fn enqueue_not_before(
    conn: &mut store::Connection,
    request: &OutboundRequest,
    not_before_ms: i64,
) -> Result<i64, StoreError> {
    let txn_id = format!("tv{}", TransactionId::new());
    let json = serde_json::to_string(request).expect("OutboundRequest always serialises");
    store::outbound::enqueue_not_before(
        conn,
        request.room().map(|r| r.as_str()),
        &txn_id,
        &json,
        not_before_ms,
    )
    .await
}

/// Like [`enqueue`], but kept in `room`'s order even for a request that names no room
/// (a ghost's registration and display name must precede its join and messages there).
pub async fn enqueue_in_order_of(
    conn: &mut store::Connection,
    request: &OutboundRequest,
    room: &OwnedRoomId,
) -> Result<i64, StoreError> {
    let txn_id = format!("tv{}", TransactionId::new());
    let json = serde_json::to_string(request).expect("OutboundRequest always serialises");
    store::outbound::enqueue(conn, Some(room.as_str()), &txn_id, &json).await
}

/// Sends queued requests, one at a time, until cancelled.
pub struct OutboundWorker {
    pub store: Store,
    pub client: MatrixClient,
    /// The bot's device, which encrypts what goes into encrypted rooms; `None` with
    /// `encryption.enabled: false`.
    pub device: Option<super::crypto::device::DeviceSlot>,
    /// `mode: bot`: there are no ghosts; the bot posts their messages itself, their
    /// speaker's name in front.
    pub relay_only: bool,
    /// Whether calls as the bot may be made: false until the bot, a user of the
    /// namespace, is registered (its first start).
    pub bot_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Woken whenever something is enqueued.
    pub wake: Arc<Notify>,
    /// In a cluster, the leader's term: checked before each request leaves, and a
    /// refusal ends the term (cancels `shutdown`). `None`: a single node.
    pub fence: Option<crate::store::cluster::Fence>,
    pub shutdown: CancellationToken,
}

/// Longest wait between two attempts of one request.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Wait before attempt `attempts + 1`: 0.5 s doubling up to [`MAX_BACKOFF`].
pub fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(0, 10) as u32;
    Duration::from_millis(500u64.saturating_mul(1 << exp)).min(MAX_BACKOFF)
}

impl OutboundWorker {
    pub async fn run(self) {
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Ok(depth) = self.store.outbound_pending_count().await {
                metrics::gauge!("tchap_visio_outbound_queue_depth").set(depth as f64);
            }
            match self.store.next_due_outbound(now_ms()).await {
                Ok(Some(row)) => self.attempt(row).await,
                Ok(None) => {
                    let wait = match self.store.next_outbound_due_at().await {
                        Ok(Some(due)) => {
                            Duration::from_millis((due - now_ms()).clamp(0, 60_000) as u64)
                        }
                        _ => Duration::from_secs(60),
                    };
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbound queue; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn attempt(&self, row: store::outbound::OutboundRow) {
        let mut request: OutboundRequest = match serde_json::from_str(&row.request_json) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(id = row.id, error = %e, "unreadable queued request; dropping it");
                let _ = self
                    .store
                    .mark_outbound_failed(row.id, &format!("unreadable: {e}"))
                    .await;
                return;
            }
        };
        // Resolving may create a room at the homeserver: fenced like the send.
        if !self.may_send().await {
            return;
        }
        match self.resolve(request).await {
            Ok(resolved) => request = resolved,
            Err(error) => {
                let retry_in = error.is_transient().then(|| backoff(row.attempts));
                tracing::warn!(id = row.id, error = %error, "cannot prepare an edit or a private notice");
                if let Err(e) = self.failed(&row, &error.to_string(), retry_in).await {
                    tracing::error!(id = row.id, error = %e, "cannot record the send result");
                }
                return;
            }
        }
        if let Err(e) = self.link_to_thread(&mut request).await {
            tracing::error!(id = row.id, error = %e, "cannot read the thread root; retrying in 1 s");
            let _ = self
                .store
                .reschedule_outbound(row.id, now_ms() + 1000, &e.to_string())
                .await;
            return;
        }
        if !self.bot_ready.load(std::sync::atomic::Ordering::Acquire) {
            let wait = backoff(row.attempts);
            tracing::debug!(id = row.id, "the bot is not registered yet; waiting");
            if let Err(e) = self
                .store
                .reschedule_outbound(
                    row.id,
                    now_ms() + wait.as_millis() as i64,
                    "the bot is not registered yet",
                )
                .await
            {
                tracing::error!(id = row.id, error = %e, "cannot record the send result");
            }
            return;
        }
        if self.relay_only {
            request = spoken_by_bot(&request);
        }
        if let Some(slot) = &self.device {
            let sealed = match slot.get() {
                Some(device) => super::crypto::outbound::seal(device, &request).await,
                // Whether the room is encrypted is not known without it; the homeserver
                // it waits for would not take the message either.
                None if matches!(request, OutboundRequest::Send { .. }) => {
                    Err(super::crypto::device::DeviceError::Call(
                        CallError::Unreachable("the bot's device is not ready yet".into()),
                    ))
                }
                None => Ok(request.clone()),
            };
            match sealed {
                Ok(sealed) => request = sealed,
                Err(error) => {
                    let retry_in = error.is_transient().then(|| backoff(row.attempts));
                    match retry_in {
                        Some(wait) => {
                            tracing::warn!(id = row.id, error = %error, retry_in_ms = wait.as_millis() as u64, "cannot encrypt yet; will retry")
                        }
                        None => {
                            tracing::error!(id = row.id, error = %error, "cannot encrypt; giving up")
                        }
                    }
                    if let Err(e) = self.failed(&row, &error.to_string(), retry_in).await {
                        tracing::error!(id = row.id, error = %e, "cannot record the send result");
                    }
                    return;
                }
            }
        }
        // The request keeps its transaction id: should a stalled leader's send still
        // go out after this check, the homeserver takes its repeat by the next leader
        // as the same event.
        if !self.may_send().await {
            return;
        }
        let started = Instant::now();
        tracing::trace!(id = row.id, kind = kind(&request), "sending");
        let mut result = execute(&self.client, &request, &row.txn_id).await;
        if let Err(CallError::Matrix { status: 403, .. }) = &result
            && let Some(as_bot) = attributed_to_bot(&request)
        {
            match ghost_never_let_in(&self.client, &request).await {
                Ok(true) => {
                    tracing::info!(
                        id = row.id,
                        "the homeserver refused a ghost that could not join; the bot posts its message"
                    );
                    metrics::counter!("tchap_visio_outbound_sent_as_bot_total").increment(1);
                    // Its own transaction id, stable across retries of this row.
                    result = execute(&self.client, &as_bot, &format!("{}-bot", row.txn_id)).await;
                }
                // Banned, kicked, or muted by the room's moderators: the bot does not
                // speak for them.
                Ok(false) => {}
                // Retried if transient; the ghost's attempt is repeated first.
                Err(error) => result = Err(error),
            }
        }
        metrics::histogram!("tchap_visio_outbound_send_seconds")
            .record(started.elapsed().as_secs_f64());
        let recorded = match result {
            Ok(result_json) => {
                tracing::debug!(id = row.id, kind = kind(&request), "sent");
                let event_id = result_json.get("event_id").and_then(|e| e.as_str());
                self.store
                    .mark_outbound_sent(row.id, &result_json.to_string(), event_id)
                    .await
            }
            Err(error) if error.is_transient() => {
                let wait = error.retry_after().unwrap_or_else(|| backoff(row.attempts));
                tracing::warn!(id = row.id, kind = kind(&request), attempts = row.attempts + 1,
                    retry_in_ms = wait.as_millis() as u64, error = %error, "send failed; will retry");
                self.failed(&row, &error.to_string(), Some(wait)).await
            }
            Err(error) => {
                tracing::warn!(id = row.id, kind = kind(&request), error = %error, "send refused; giving up");
                self.failed(&row, &error.to_string(), None).await
            }
        };
        if let Err(e) = recorded {
            // The request stays pending and is retried with the same transaction id.
            tracing::error!(id = row.id, error = %e, "cannot record the send result");
        }
    }
}

impl OutboundWorker {
    /// Whether this node may still send: always on a single node; in a cluster while its
    /// term's fence holds. A refused fence ends the term; the request stays pending for
    /// the next leader.
    async fn may_send(&self) -> bool {
        let Some(fence) = &self.fence else {
            return true;
        };
        match self.store.fence_holds(fence).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    epoch = fence.epoch,
                    "another node leads now; this node sends nothing more"
                );
                self.shutdown.cancel();
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the leadership; the send waits 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                false
            }
        }
    }

    /// Records a failed attempt: tried again after `retry_in`, or (`None`) given up.
    async fn failed(
        &self,
        row: &store::outbound::OutboundRow,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        metrics::counter!("tchap_visio_outbound_send_failures_total").increment(1);
        match retry_in {
            Some(wait) => {
                self.store
                    .reschedule_outbound(row.id, now_ms() + wait.as_millis() as i64, error)
                    .await
            }
            None => self.store.mark_outbound_failed(row.id, error).await,
        }
    }

    /// An edit or a private notice as the send it becomes; anything else unchanged.
    async fn resolve(&self, request: OutboundRequest) -> Result<OutboundRequest, CallError> {
        let unavailable = |e: StoreError| CallError::Unreachable(format!("database: {e}"));
        match request {
            OutboundRequest::Edit {
                room_id,
                of,
                content,
            } => {
                let mut conn = self
                    .store
                    .pool()
                    .acquire()
                    .await
                    .map_err(|e| unavailable(e.into()))?;
                let original = store::outbound::sent_event_id(&mut conn, of)
                    .await
                    .map_err(unavailable)?;
                Ok(OutboundRequest::Send {
                    room_id,
                    as_user: None,
                    event_type: "m.room.message".into(),
                    content: match original {
                        Some(original) => edit_content(&original, content),
                        None => content,
                    },
                    in_thread_of: None,
                    attribution: None,
                })
            }
            OutboundRequest::SendDirect { user_id, content } => {
                let room_id = self.direct_room(&user_id).await?;
                Ok(OutboundRequest::Send {
                    room_id,
                    as_user: None,
                    event_type: "m.room.message".into(),
                    content,
                    in_thread_of: None,
                    attribution: None,
                })
            }
            other => Ok(other),
        }
    }

    /// The bot's one-to-one room with `user`, made on first use: private, marked direct,
    /// encrypted when the bot has a device.
    async fn direct_room(&self, user: &OwnedUserId) -> Result<OwnedRoomId, CallError> {
        let unavailable = |e: StoreError| CallError::Unreachable(format!("database: {e}"));
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| unavailable(e.into()))?;
        if let Some(room) = store::access::direct_room(&mut conn, user.as_str())
            .await
            .map_err(unavailable)?
            && let Ok(room) = OwnedRoomId::try_from(room)
        {
            return Ok(room);
        }
        drop(conn);
        let mut body = serde_json::json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [user],
        });
        if self.device.is_some() {
            body["initial_state"] = serde_json::json!([{
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }]);
        }
        let created = self
            .client
            .call_json(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&body),
                None,
                None,
            )
            .await?;
        let room = created
            .get("room_id")
            .and_then(|r| r.as_str())
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| CallError::Build("createRoom answered without a room id".into()))?;
        tracing::info!(room = %room, user = %user, "one-to-one room made for private notices");
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| unavailable(e.into()))?;
        store::access::set_direct_room(&mut conn, user.as_str(), room.as_str(), now_ms())
            .await
            .map_err(unavailable)?;
        Ok(room)
    }

    /// Adds the thread relation to a message bound for a thread. Without a root (the
    /// request that was to create it failed for good) the message goes to the main
    /// timeline rather than nowhere.
    async fn link_to_thread(&self, request: &mut OutboundRequest) -> Result<(), StoreError> {
        let OutboundRequest::Send {
            in_thread_of: Some(root_request),
            content,
            ..
        } = request
        else {
            return Ok(());
        };
        let mut conn = self.store.pool().acquire().await?;
        let root = store::outbound::sent_event_id(&mut conn, *root_request).await?;
        if let (Some(root), Some(object)) = (root, content.as_object_mut()) {
            object
                .entry("m.relates_to")
                .or_insert_with(|| thread_relation(&root));
        }
        Ok(())
    }
}

/// `content` as an edit of `original`: the new content under `m.new_content`, and a
/// fallback body marked with `*` for clients that do not show edits.
fn edit_content(original: &str, content: serde_json::Value) -> serde_json::Value {
    let mut fallback = content.clone();
    if let Some(object) = fallback.as_object_mut() {
        for key in ["body", "formatted_body"] {
            if let Some(text) = object.get(key).and_then(|t| t.as_str()) {
                let starred = format!("* {text}");
                object.insert(key.into(), starred.into());
            }
        }
        object.remove("m.relates_to");
        object.insert("m.new_content".into(), content);
        object.insert(
            "m.relates_to".into(),
            serde_json::json!({"rel_type": "m.replace", "event_id": original}),
        );
    }
    fallback
}

/// Whether the ghost of a refused message never got into the room (the bot could not
/// invite it): no membership at all, or an invitation it could not act on. Ghosts never
/// leave by themselves, so any other membership is the moderators' decision.
async fn ghost_never_let_in(
    client: &MatrixClient,
    request: &OutboundRequest,
) -> Result<bool, CallError> {
    let OutboundRequest::Send {
        room_id,
        as_user: Some(ghost),
        ..
    } = request
    else {
        return Ok(false);
    };
    let lookup = state::get_state_event_for_key::v3::Request::new(
        room_id.clone(),
        StateEventType::RoomMember,
        ghost.to_string(),
    );
    match client.call(lookup, None).await {
        Ok(response) => {
            let found: serde_json::Value =
                serde_json::from_str(response.event_or_content.get()).unwrap_or_default();
            // The content, or the whole event with `?format=event`.
            let membership = found
                .get("membership")
                .or_else(|| found.pointer("/content/membership"))
                .and_then(|m| m.as_str());
            Ok(membership == Some("invite"))
        }
        Err(CallError::Matrix { status: 404, .. }) => Ok(true),
        Err(error) => Err(error),
    }
}

/// The bot's version of a ghost's message: the speaker's name (bold in HTML), then the
/// whole message quoted under it, so that no part of a guest's words reads as the bot's
/// own. `None` for anything else.
fn attributed_to_bot(request: &OutboundRequest) -> Option<OutboundRequest> {
    let OutboundRequest::Send {
        room_id,
        as_user: Some(_),
        event_type,
        content,
        in_thread_of,
        attribution: Some(speaker),
        ..
    } = request
    else {
        return None;
    };
    let mut content = content.clone();
    let object = content.as_object_mut()?;
    let body = object
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or_default();
    let html = match object.get("formatted_body").and_then(|h| h.as_str()) {
        Some(html) => html.to_owned(),
        None => crate::i18n::html_escape(body).replace('\n', "<br>"),
    };
    let separator = speaker.separator.trim_end();
    let formatted = format!(
        "<p><strong>{}</strong>{}</p>\n<blockquote>{html}</blockquote>",
        crate::i18n::html_escape(&speaker.name),
        crate::i18n::html_escape(separator)
    );
    let quoted: Vec<String> = body.lines().map(|line| format!("> {line}")).collect();
    let plain = format!("{}{separator}\n{}", speaker.name, quoted.join("\n"));
    object.insert("body".into(), plain.into());
    object.insert("format".into(), "org.matrix.custom.html".into());
    object.insert("formatted_body".into(), formatted.into());
    Some(OutboundRequest::Send {
        room_id: room_id.clone(),
        as_user: None,
        event_type: event_type.clone(),
        content,
        in_thread_of: *in_thread_of,
        attribution: None,
    })
}

/// A ghost's message as the bot's: with the speaker's name in front when it has one,
/// else as it is; anything else unchanged. Where ghosts cannot speak (an encrypted room,
/// `mode: bot`).
pub fn spoken_by_bot(request: &OutboundRequest) -> OutboundRequest {
    if let Some(as_bot) = attributed_to_bot(request) {
        return as_bot;
    }
    let mut plain = request.clone();
    if let OutboundRequest::Send { as_user, .. } = &mut plain {
        *as_user = None;
    }
    plain
}

/// An `m.thread` relation with the reply fallback for clients without threads.
pub fn thread_relation(root: &str) -> serde_json::Value {
    serde_json::json!({
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": true,
        "m.in_reply_to": { "event_id": root },
    })
}

fn kind(request: &OutboundRequest) -> &'static str {
    match request {
        OutboundRequest::Join { .. } => "join",
        OutboundRequest::Leave { .. } => "leave",
        OutboundRequest::Send { .. } => "send",
        OutboundRequest::SetDisplayName { .. } => "set_displayname",
        OutboundRequest::SetAvatar { .. } => "set_avatar",
        OutboundRequest::RegisterGhost { .. } => "register_ghost",
        OutboundRequest::Invite { .. } => "invite",
        OutboundRequest::SetState { .. } => "set_state",
        OutboundRequest::Edit { .. } => "edit",
        OutboundRequest::SendDirect { .. } => "send_direct",
    }
}

/// Makes one attempt; returns a small JSON record of the result (e.g. the event id).
pub async fn execute(
    client: &MatrixClient,
    request: &OutboundRequest,
    txn_id: &str,
) -> Result<serde_json::Value, CallError> {
    match request {
        OutboundRequest::Join { room_id, as_user } => {
            let req = membership::join_room_by_id::v3::Request::new(room_id.clone());
            let res = client.call(req, as_user.as_deref()).await?;
            Ok(serde_json::json!({ "room_id": res.room_id }))
        }
        OutboundRequest::Leave {
            room_id,
            as_user,
            reason,
        } => {
            let mut req = membership::leave_room::v3::Request::new(room_id.clone());
            req.reason = reason.clone();
            match client.call(req, as_user.as_deref()).await {
                Ok(_) => Ok(serde_json::json!({})),
                // Leaving a room we are not in is already done.
                Err(CallError::Matrix { status: 403, .. })
                | Err(CallError::Matrix { status: 404, .. }) => {
                    Ok(serde_json::json!({ "already_left": true }))
                }
                Err(e) => Err(e),
            }
        }
        OutboundRequest::Send {
            room_id,
            as_user,
            event_type,
            content,
            ..
        } => {
            let raw = Raw::new(content)
                .map_err(|e| CallError::Build(e.to_string()))?
                .cast_unchecked();
            let req = message::send_message_event::v3::Request::new_raw(
                room_id.clone(),
                ruma::OwnedTransactionId::from(txn_id.to_owned()),
                MessageLikeEventType::from(event_type.as_str()),
                raw,
            );
            let res = client.call(req, as_user.as_deref()).await?;
            Ok(serde_json::json!({ "event_id": res.event_id }))
        }
        // The per-field endpoints are deprecated in favour of `set_profile_field`, which
        // older homeservers lack; these two paths work everywhere.
        #[allow(deprecated)]
        OutboundRequest::SetDisplayName {
            user_id,
            displayname,
        } => {
            let req = profile::set_display_name::v3::Request::new(
                user_id.clone(),
                Some(displayname.clone()),
            );
            client.call(req, Some(user_id)).await?;
            Ok(serde_json::json!({}))
        }
        #[allow(deprecated)]
        OutboundRequest::SetAvatar {
            user_id,
            avatar_url,
        } => {
            let req = profile::set_avatar_url::v3::Request::new(
                user_id.clone(),
                Some(avatar_url.clone()),
            );
            client.call(req, Some(user_id)).await?;
            Ok(serde_json::json!({}))
        }
        OutboundRequest::Invite { room_id, user_id } => {
            let req = membership::invite_user::v3::Request::new(
                room_id.clone(),
                membership::invite_user::v3::InviteUserId::new(user_id.clone()).into(),
            );
            match client.call(req, None).await {
                Ok(_) => Ok(serde_json::json!({})),
                // Already in the room (or invited): nothing to do.
                Err(CallError::Matrix { status: 403, .. }) => {
                    Ok(serde_json::json!({ "already_member": true }))
                }
                Err(e) => Err(e),
            }
        }
        OutboundRequest::SetState {
            room_id,
            event_type,
            state_key,
            content,
        } => {
            let raw = Raw::new(content)
                .map_err(|e| CallError::Build(e.to_string()))?
                .cast_unchecked();
            let req = ruma::api::client::state::send_state_event::v3::Request::new_raw(
                room_id.clone(),
                ruma::events::StateEventType::from(event_type.as_str()),
                state_key.clone(),
                raw,
            );
            let res = client.call(req, None).await?;
            Ok(serde_json::json!({ "event_id": res.event_id }))
        }
        // The worker turns these into sends first ([`OutboundWorker::resolve`]).
        OutboundRequest::Edit { .. } | OutboundRequest::SendDirect { .. } => Err(CallError::Build(
            "an edit or a private notice is resolved before sending".into(),
        )),
        OutboundRequest::RegisterGhost { localpart } => {
            let mut req = account::register::v3::Request::new();
            req.username = Some(localpart.clone());
            req.inhibit_login = true;
            req.login_type = Some(account::register::LoginType::ApplicationService);
            match client.call(req, None).await {
                Ok(res) => Ok(serde_json::json!({ "user_id": res.user_id })),
                Err(e) if e.errcode() == Some("M_USER_IN_USE") => {
                    Ok(serde_json::json!({ "existed": true }))
                }
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }

    #[test]
    fn requests_round_trip_through_json() {
        let request = OutboundRequest::Send {
            room_id: "!room:localhost".try_into().expect("room id"),
            as_user: None,
            event_type: "m.room.message".into(),
            content: serde_json::json!({"msgtype": "m.notice", "body": "bonjour"}),
            in_thread_of: None,
            attribution: None,
        };
        let json = serde_json::to_string(&request).expect("serialise");
        assert!(json.contains(r#""kind":"send""#), "{json}");
        assert_eq!(
            serde_json::from_str::<OutboundRequest>(&json).expect("parse"),
            request
        );
        assert_eq!(request.room().map(|r| r.as_str()), Some("!room:localhost"));
    }

    #[test]
    fn a_refused_ghost_message_becomes_the_bots_with_the_speakers_name() {
        let ghost_message = |content: serde_json::Value| OutboundRequest::Send {
            room_id: "!room:localhost".try_into().expect("room id"),
            as_user: Some("@visio_g1:localhost".try_into().expect("user id")),
            event_type: "m.room.message".into(),
            content,
            in_thread_of: Some(7),
            attribution: Some(Attribution {
                name: "Zoé <3 (invitée)".into(),
                separator: "\u{202f}: ".into(),
            }),
        };
        let plain = ghost_message(serde_json::json!({"msgtype": "m.text", "body": "a < b\nc"}));
        let Some(OutboundRequest::Send {
            as_user: None,
            content,
            in_thread_of: Some(thread_root_request),
            attribution: None,
            ..
        }) = attributed_to_bot(&plain)
        else {
            panic!("a ghost's message with an attribution has a bot version");
        };
        assert_eq!(thread_root_request, 7);
        assert_eq!(content["msgtype"], "m.text");
        assert_eq!(content["body"], "Zoé <3 (invitée)\u{202f}:\n> a < b\n> c");
        assert_eq!(
            content["formatted_body"],
            "<p><strong>Zoé &lt;3 (invitée)</strong>\u{202f}:</p>\n<blockquote>a &lt; b<br>c</blockquote>"
        );

        let html = ghost_message(serde_json::json!({
            "msgtype": "m.text", "body": "gras", "format": "org.matrix.custom.html",
            "formatted_body": "<p><em>gras</em></p>\n<p>suite</p>",
        }));
        let Some(OutboundRequest::Send { content, .. }) = attributed_to_bot(&html) else {
            panic!("a bot version");
        };
        // The whole message sits under the name, not only its first paragraph.
        assert_eq!(
            content["formatted_body"],
            "<p><strong>Zoé &lt;3 (invitée)</strong>\u{202f}:</p>\n<blockquote><p><em>gras</em></p>\n<p>suite</p></blockquote>"
        );

        // The bot's own messages, and ghosts' without an attribution, have none.
        let mut unattributed = plain.clone();
        if let OutboundRequest::Send { attribution, .. } = &mut unattributed {
            *attribution = None;
        }
        assert_eq!(attributed_to_bot(&unattributed), None);
    }
}
