//! The inbox's view of encrypted rooms: a wrapper around the event handler that
//! decrypts `m.room.encrypted` events before it sees them (so commands, mentions, thread
//! replies and reactions work unchanged), parks those whose room key has not arrived,
//! and keeps what encrypting for a room needs (members, settings) from state events.

use std::collections::HashMap;
use std::sync::Mutex;

use super::DecryptError;
use super::device::{BotDevice, DeviceSlot};
use crate::matrix::inbox::EventHandler;
use crate::store::inbox::InboxEvent;
use crate::store::{Connection, StoreError, crypto as stored};

/// What became of an encrypted event before its transaction.
enum Outcome {
    Clear(InboxEvent),
    WaitingForKey {
        room: String,
        session: String,
    },
    Undecryptable(String),
    /// The crypto store failed: the batch is retried.
    Failed(String),
}

/// Wraps the inbox's handler: decrypts for it; with encryption off (no slot) passes
/// everything on.
pub struct Decrypting<H> {
    pub inner: H,
    pub device: Option<DeviceSlot>,
    outcomes: Mutex<HashMap<i64, Outcome>>,
}

impl<H> Decrypting<H> {
    pub fn new(inner: H, device: Option<DeviceSlot>) -> Self {
        Self {
            inner,
            device,
            outcomes: Mutex::new(HashMap::new()),
        }
    }
}

/// The fields this wrapper reads.
fn envelope(event: &InboxEvent) -> Option<serde_json::Value> {
    serde_json::from_str(&event.json).ok()
}

fn is_encrypted(json: &serde_json::Value) -> bool {
    json.get("type").and_then(|t| t.as_str()) == Some("m.room.encrypted")
}

async fn decrypt(device: &BotDevice, event: &InboxEvent, json: &serde_json::Value) -> Outcome {
    let room = json
        .get("room_id")
        .and_then(|r| r.as_str())
        .unwrap_or_default();
    match device.crypto.decrypt(room, json).await {
        Ok(mut clear) => {
            // Relations travel in the clear part of an encrypted event (the spec); the
            // handlers look for them in the content.
            if let (Some(relation), Some(content)) = (
                json.pointer("/content/m.relates_to"),
                clear.get_mut("content").and_then(|c| c.as_object_mut()),
            ) {
                content
                    .entry("m.relates_to")
                    .or_insert_with(|| relation.clone());
            }
            Outcome::Clear(InboxEvent {
                seq: event.seq,
                event_id: event.event_id.clone(),
                json: clear.to_string(),
            })
        }
        Err(DecryptError::MissingKey {
            session_id,
            withheld,
        }) => {
            if withheld {
                tracing::info!(event_id = %event.event_id, "the sender withheld the room key; waiting in case it comes");
            }
            Outcome::WaitingForKey {
                room: room.to_owned(),
                session: session_id,
            }
        }
        Err(DecryptError::Undecryptable(reason)) => Outcome::Undecryptable(reason),
        Err(DecryptError::Store(e)) => Outcome::Failed(e.to_string()),
    }
}

impl<H: EventHandler> EventHandler for Decrypting<H> {
    async fn prepare(&self, batch: &[InboxEvent]) {
        let mut outcomes = HashMap::new();
        let mut view = Vec::with_capacity(batch.len());
        let device = self.device.as_ref().and_then(|slot| slot.get());
        for event in batch {
            match (device, envelope(event)) {
                (Some(device), Some(json)) if is_encrypted(&json) => {
                    let outcome = decrypt(device, event, &json).await;
                    if let Outcome::Clear(clear) = &outcome {
                        view.push(clear.clone());
                    }
                    outcomes.insert(event.seq, outcome);
                }
                _ => view.push(event.clone()),
            }
        }
        *self
            .outcomes
            .lock()
            .expect("no panic while holding the lock") = outcomes;
        self.inner.prepare(&view).await;
    }

    async fn handle(&self, event: &InboxEvent, conn: &mut Connection) -> Result<(), StoreError> {
        let Some(json) = envelope(event) else {
            return self.inner.handle(event, conn).await;
        };
        record_room_state(&json, conn).await?;
        let Some(slot) = &self.device else {
            return self.inner.handle(event, conn).await;
        };
        if !is_encrypted(&json) {
            return self.inner.handle(event, conn).await;
        }
        let Some(device) = slot.get() else {
            // Encrypted events wait (the batch is retried) until the device is up.
            return Err(StoreError::DeviceNotReady);
        };
        let prepared = self
            .outcomes
            .lock()
            .expect("no panic while holding the lock")
            .remove(&event.seq);
        let outcome = match prepared {
            Some(outcome) => outcome,
            None => decrypt(device, event, &json).await,
        };
        match outcome {
            Outcome::Clear(clear) => {
                metrics::counter!("tchap_visio_events_decrypted_total").increment(1);
                self.inner.handle(&clear, conn).await
            }
            Outcome::WaitingForKey { room, session } => {
                tracing::debug!(event_id = %event.event_id, %room, "waiting for the room key");
                metrics::counter!("tchap_visio_events_parked_total").increment(1);
                stored::park(conn, event.seq, &room, &session).await
            }
            Outcome::Undecryptable(reason) => {
                tracing::warn!(event_id = %event.event_id, %reason, "an encrypted event can never be decrypted; skipping it");
                metrics::counter!("tchap_visio_events_undecryptable_total", "reason" => "invalid")
                    .increment(1);
                Ok(())
            }
            Outcome::Failed(reason) => Err(StoreError::CryptoStore(reason)),
        }
    }

    fn committed(&self) {
        self.inner.committed();
    }
}

/// Keeps members, encryption settings and history visibility of rooms from their state
/// events (and an invite's stripped state), for encrypting what the bot sends there.
async fn record_room_state(
    json: &serde_json::Value,
    conn: &mut Connection,
) -> Result<(), StoreError> {
    let (Some(kind), Some(room), Some(state_key)) = (
        json.get("type").and_then(|t| t.as_str()),
        json.get("room_id").and_then(|r| r.as_str()),
        json.get("state_key").and_then(|s| s.as_str()),
    ) else {
        return Ok(());
    };
    let content = json.get("content").cloned().unwrap_or_default();
    match kind {
        "m.room.member" => {
            if let Some(membership) = content.get("membership").and_then(|m| m.as_str()) {
                stored::set_member(conn, room, state_key, membership).await?;
            }
            let stripped = json
                .pointer("/unsigned/invite_room_state")
                .and_then(|s| s.as_array());
            for state in stripped.into_iter().flatten() {
                if state.get("type").and_then(|t| t.as_str()) == Some("m.room.encryption") {
                    let content = state.get("content").cloned().unwrap_or_default();
                    stored::set_room_encryption(conn, room, &content.to_string()).await?;
                }
            }
        }
        "m.room.encryption" if state_key.is_empty() => {
            stored::set_room_encryption(conn, room, &content.to_string()).await?;
        }
        "m.room.history_visibility" if state_key.is_empty() => {
            if let Some(visibility) = content.get("history_visibility").and_then(|v| v.as_str()) {
                stored::set_history_visibility(conn, room, visibility).await?;
            }
        }
        _ => {}
    }
    Ok(())
}
