//! The SFU side of the bridge: one task that turns the SFU's room events (joins, leaves,
//! chat) into attendance, thread messages and, on a timer, ended meetings. Each event is
//! handled in its own database transaction with the requests it queues, and retried
//! until it is recorded: the SFU keeps later events waiting meanwhile, losing none.

use std::sync::Arc;
use std::time::Duration;

use ruma::events::room::message::RoomMessageEventContent;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    BridgeContext, attendee_key, end_meeting, ghosts, notices, post_in_thread,
    post_in_thread_not_before, record_chat, room_of,
};
use crate::clock::now_ms;
use crate::ids::MeetingId;
use crate::meeting::{ChatMessage, ChatOrigin, Meeting, MeetingState, Session};
use crate::sfu::EngineEvent;
use crate::sfu::driver::EngineEvents;
use crate::store::{Connection, Store, StoreError, meetings, sessions};
use crate::webhooks::{self, WebhookKind};

/// How often open sessions are marked alive (what a crash can lose of attendance).
const TOUCH_PERIOD: Duration = Duration::from_secs(10);

pub struct SfuEventWorker {
    pub ctx: Arc<BridgeContext>,
    pub store: Store,
    pub events: EngineEvents,
    /// Woken after queuing requests for the homeserver.
    pub outbound_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// Element Call's delegated leaves, which follow who is connected.
    pub delayed_leaves: Option<Arc<crate::focus::delayed::DelayedLeaves>>,
}

impl SfuEventWorker {
    pub async fn run(mut self) {
        // The grace check runs often enough that a meeting ends within a tenth of its
        // grace period (and at least every second) after it is due.
        let tick = Duration::from_millis((self.ctx.grace_ms / 10).clamp(100, 1000) as u64);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_touch = tokio::time::Instant::now();
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => {
                        // Before recording: a leave must not wait on the database.
                        if let Some(delayed) = &self.delayed_leaves {
                            delayed.observe(&event);
                        }
                        self.apply(event).await
                    }
                    None => return,
                },
                _ = ticker.tick() => {
                    let touch = last_touch.elapsed() >= TOUCH_PERIOD;
                    if touch {
                        last_touch = tokio::time::Instant::now();
                    }
                    if let Err(e) = self.periodic(touch).await {
                        tracing::error!(error = %e, "meeting timers failed; retrying");
                    }
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Records one event, retrying (with backoff) until the database takes it or the
    /// service stops: skipping it would make attendance wrong.
    async fn apply(&self, event: EngineEvent) {
        let mut attempt: u32 = 0;
        loop {
            match self.apply_once(&event).await {
                Ok(()) => {
                    self.outbound_wake.notify_one();
                    self.ctx.webhooks.wake();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "cannot record an SFU event; retrying");
                    let wait = Duration::from_millis(200 << attempt.min(5));
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn apply_once(&self, event: &EngineEvent) -> Result<(), StoreError> {
        let mut tx = self.store.begin().await?;
        handle_event(&self.ctx, &mut tx, event, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keeps this node's sessions alive and ends the meetings whose time is up. On
    /// several nodes at once each meeting still ends once: `end_meeting` is conditioned
    /// on the meeting's state, and the second node's update waits on the first's row
    /// lock, then finds it ended and does nothing (`tests::two_nodes_end_a_meeting_once`).
    async fn periodic(&self, touch: bool) -> Result<(), StoreError> {
        let now = now_ms();
        let mut conn = self.store.pool().acquire().await?;
        if touch {
            sessions::touch_open_on(&mut conn, now, self.ctx.node_id.as_deref()).await?;
        }
        let due = super::due_for_end(&mut conn, &self.ctx, now).await?;
        drop(conn);
        for meeting in due {
            let mut tx = self.store.begin().await?;
            end_meeting(&self.ctx, &mut tx, &meeting, now).await?;
            tx.commit().await?;
            self.ctx.effects_committed();
            self.outbound_wake.notify_one();
        }
        Ok(())
    }
}

async fn live_meeting(conn: &mut Connection, room: &str) -> Result<Option<Meeting>, StoreError> {
    let Ok(id) = MeetingId::parse(room) else {
        return meetings::live_call(conn, room).await;
    };
    Ok(meetings::get_by_id(conn, &id)
        .await?
        .filter(|m| m.state != MeetingState::Ended))
}

/// What one SFU event changes; public for the tests, which feed events by hand.
pub async fn handle_event(
    ctx: &BridgeContext,
    conn: &mut Connection,
    event: &EngineEvent,
    now: i64,
) -> Result<(), StoreError> {
    match event {
        EngineEvent::ParticipantJoined {
            room,
            sid,
            identity,
            name,
        } => {
            let Some(meeting) = live_meeting(conn, room).await? else {
                return Ok(());
            };
            // A call's people are Matrix users, one whatever their devices.
            let call_user = if meeting.is_call() {
                crate::store::access::grant_user(conn, meeting.id.as_str(), identity).await?
            } else {
                None
            };
            let session = Session {
                meeting_id: meeting.id.clone(),
                sid: sid.clone(),
                identity: identity.clone(),
                attendee_key: call_user.clone().unwrap_or_else(|| attendee_key(identity)),
                // A call's participants are members whose name the homeserver gave.
                display_name: if meeting.is_call() {
                    crate::meeting::validate_display_name(name).unwrap_or_else(|_| "?".to_owned())
                } else {
                    guest_name(ctx, name)
                },
                matrix_user_id: call_user,
                joined_at: now,
                left_at: None,
                last_seen_at: now,
            };
            if !sessions::open_on(conn, &session, ctx.node_id.as_deref()).await? {
                return Ok(());
            }
            meetings::set_empty_since(conn, &meeting.id, None).await?;
            let present = sessions::open_count(conn, &meeting.id).await?;
            meetings::raise_peak(conn, &meeting.id, present).await?;
            if meetings::set_state(conn, &meeting.id, MeetingState::Running, now).await? {
                if meeting.is_call() {
                    // A call's thread starts when it does: a token nobody used posts
                    // nothing.
                    super::open_call_thread(conn, ctx, &meeting, &session.display_name).await?;
                } else {
                    let (plain, html) = notices::first_join(&session.display_name, ctx.lang);
                    post_in_thread(
                        conn,
                        &meeting,
                        None,
                        RoomMessageEventContent::notice_html(plain, html),
                    )
                    .await?;
                }
                let started = meetings::get_by_id(conn, &meeting.id)
                    .await?
                    .unwrap_or_else(|| meeting.clone());
                ctx.webhooks
                    .enqueue(
                        conn,
                        WebhookKind::MeetingStarted,
                        &started,
                        serde_json::json!({}),
                    )
                    .await?;
            }
            ctx.webhooks
                .enqueue(
                    conn,
                    WebhookKind::ParticipantJoined,
                    &meeting,
                    webhooks::participant_data(&session),
                )
                .await?;
            metrics::counter!("tchap_visio_bridge_joins_total").increment(1);
        }
        EngineEvent::ParticipantLeft { room, sid, .. } => {
            let Some(meeting) = live_meeting(conn, room).await? else {
                return Ok(());
            };
            if !sessions::close(conn, &meeting.id, sid, now).await? {
                return Ok(());
            }
            if sessions::open_count(conn, &meeting.id).await? == 0 {
                meetings::set_empty_since(conn, &meeting.id, Some(now)).await?;
            }
            let closed = sessions::get(conn, &meeting.id, sid).await?;
            if let Some(session) = closed {
                ctx.webhooks
                    .enqueue(
                        conn,
                        WebhookKind::ParticipantLeft,
                        &meeting,
                        webhooks::participant_data(&session),
                    )
                    .await?;
            }
        }
        EngineEvent::RoomEmpty { .. } => {}
        EngineEvent::Chat {
            room,
            id,
            sender_identity,
            sender_name,
            text,
            timestamp_ms,
            ..
        } => {
            let Some(meeting) = live_meeting(conn, room).await? else {
                return Ok(());
            };
            let text = text.trim();
            if text.is_empty() {
                return Ok(());
            }
            let name = guest_name(ctx, sender_name);
            let message = ChatMessage {
                meeting_id: meeting.id.clone(),
                message_id: id.clone(),
                origin: ChatOrigin::Meeting,
                sender_identity: Some(sender_identity.clone()),
                sender_name: name.clone(),
                matrix_user_id: None,
                body: text.to_owned(),
                sent_at: if *timestamp_ms > 0 {
                    *timestamp_ms
                } else {
                    now
                },
            };
            if !record_chat(conn, ctx, &meeting, &message).await? {
                return Ok(());
            }
            if let Some(room) = room_of(&meeting) {
                let ghost = ctx.ghosts.guest(&attendee_key(sender_identity));
                if !ctx.relay_only {
                    ghosts::ensure_in_room(conn, &ghost, &name, &room).await?;
                }
                let speaker = (ghost, notices::attribution(ctx.lang, &name));
                let slot = ctx.chat_mirror_slot(meeting.id.as_str(), now);
                if slot > now {
                    metrics::counter!("tchap_visio_chat_mirror_paced_total").increment(1);
                }
                post_in_thread_not_before(conn, &meeting, Some(speaker), chat_content(text), slot)
                    .await?;
                metrics::counter!("tchap_visio_chat_mirrored_total", "direction" => "to_room")
                    .increment(1);
            }
        }
    }
    Ok(())
}

/// "Zoé (invité·e)": until access control verifies Matrix users, everyone is a guest.
fn guest_name(ctx: &BridgeContext, name: &str) -> String {
    let name = crate::meeting::validate_display_name(name).unwrap_or_else(|_| "?".to_owned());
    notices::GUEST_NAME.get(ctx.lang).replace("{name}", &name)
}

/// A guest's meeting chat as a Matrix message: inline Markdown (bold, italics, code,
/// plain links) as sanitised HTML; anything richer goes as the plain text typed, so that
/// a guest cannot post a heading or a link whose text hides its target
/// ([`crate::markdown::guest_html`]).
fn chat_content(text: &str) -> RoomMessageEventContent {
    match crate::markdown::guest_html(text) {
        Some(html) => RoomMessageEventContent::text_html(crate::markdown::to_plain(text), html),
        None => RoomMessageEventContent::text_plain(text),
    }
}
