//! The bot: joins rooms it is invited to by permitted users (and refuses the others with
//! a reason), warns once in encrypted rooms, and keeps rooms' power levels. Commands are
//! not its business: [`super::commands::process`] dispatches them, called by the event
//! handler that sees messages (the bridge). Every reaction is queued in the event's
//! database transaction.

use std::collections::BTreeMap;

use ruma::events::Mentions;
use ruma::events::relation::{InReplyTo, Reply, Thread};
use ruma::events::room::member::{MembershipState, RoomMemberEventContent};
use ruma::events::room::message::{Relation, RoomMessageEventContent};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::Deserialize;

use super::commands;
use super::inbox::EventHandler;
use super::permissions::level_for;
use super::queue::{self, OutboundRequest};
use crate::config::{Config, Language, PermissionLevel};
use crate::i18n;
use crate::store::inbox::InboxEvent;
use crate::store::{Connection, StoreError, rooms};

/// What the bot needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct Bot {
    pub user_id: OwnedUserId,
    /// `@` + the ghost template's part before `{id}`: every ghost's ID starts with it.
    pub ghost_prefix: String,
    pub domain: ruma::OwnedServerName,
    pub permissions: BTreeMap<String, PermissionLevel>,
    pub lang: Language,
    /// The bot has a device and reads encrypted rooms; otherwise it says once that it
    /// cannot.
    pub reads_encrypted: bool,
}

/// The fields every event has, with the content left for the handler to type.
#[derive(Debug, Deserialize)]
pub struct EventEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: serde_json::Value,
    #[serde(default)]
    pub unsigned: serde_json::Value,
    #[serde(default)]
    pub origin_server_ts: i64,
}

impl EventEnvelope {
    /// Reads a stored event; `None` (logged) for one that can never be handled.
    pub fn parse(event: &InboxEvent) -> Option<Self> {
        match serde_json::from_str(&event.json) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                // A malformed event can never become valid: skip it rather than block the inbox.
                tracing::warn!(event_id = %event.event_id, error = %e, "skipping an event we cannot read");
                None
            }
        }
    }
}

impl Bot {
    pub fn from_config(config: &Config) -> Self {
        let prefix = config
            .appservice
            .username_template
            .split("{id}")
            .next()
            .unwrap_or_default();
        Self {
            user_id: config.bot_user_id(),
            ghost_prefix: format!("@{prefix}"),
            domain: config.homeserver.domain.clone(),
            permissions: config.effective_permissions(),
            lang: config.language,
            reads_encrypted: config.encryption.enabled,
        }
    }

    /// Whether a user is the bot or one of our ghosts (never answered, never mirrored).
    pub fn is_ours(&self, user: &UserId) -> bool {
        user == self.user_id
            || (user.as_str().starts_with(&self.ghost_prefix) && user.server_name() == self.domain)
    }

    /// A user's permission level from the configuration.
    pub fn level_for(&self, user: &UserId) -> PermissionLevel {
        level_for(user, &self.permissions)
    }

    /// Handles an event the bridge did not take: invites, encryption, power levels.
    pub async fn on_event(
        &self,
        event: EventEnvelope,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        match event.kind.as_str() {
            "m.room.power_levels" if event.state_key.as_deref() == Some("") => {
                rooms::set_power_levels(conn, event.room_id.as_str(), &event.content.to_string())
                    .await
            }
            "m.room.member" if event.state_key.as_deref() == Some(self.user_id.as_str()) => {
                self.on_own_membership(event, conn).await
            }
            "m.room.encryption" | "m.room.encrypted" if self.reads_encrypted => Ok(()),
            "m.room.encryption" => self.on_encrypted(&event.room_id, conn).await,
            "m.room.encrypted" if !self.is_ours(&event.sender) => {
                self.on_encrypted(&event.room_id, conn).await
            }
            _ => Ok(()),
        }
    }

    async fn on_own_membership(
        &self,
        event: EventEnvelope,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let Ok(member) = serde_json::from_value::<RoomMemberEventContent>(event.content) else {
            return Ok(());
        };
        match member.membership {
            MembershipState::Invite => {
                let level = level_for(&event.sender, &self.permissions);
                let refusal = if into_others_direct_room(&event.unsigned, member.is_direct) {
                    tracing::info!(room = %event.room_id, inviter = %event.sender, "invited into a direct room of two other people; refusing");
                    Some(i18n::DIRECT_ROOM_REFUSED)
                } else if !commands::permitted(level, PermissionLevel::User) {
                    tracing::info!(room = %event.room_id, inviter = %event.sender, "invite from a user without permission; refusing");
                    Some(i18n::INVITE_REFUSED)
                } else {
                    None
                };
                let request = match refusal {
                    Some(reason) => OutboundRequest::Leave {
                        room_id: event.room_id,
                        as_user: None,
                        reason: Some(reason.get(self.lang).to_owned()),
                    },
                    None => {
                        tracing::info!(room = %event.room_id, inviter = %event.sender, "invited; joining");
                        if invite_state_is_encrypted(&event.unsigned) {
                            let mut info = rooms::get(conn, event.room_id.as_str()).await?;
                            info.encrypted = true;
                            rooms::put(conn, event.room_id.as_str(), &info).await?;
                        }
                        OutboundRequest::Join {
                            room_id: event.room_id,
                            as_user: None,
                        }
                    }
                };
                queue::enqueue(conn, &request).await?;
                Ok(())
            }
            MembershipState::Join => {
                let info = rooms::get(conn, event.room_id.as_str()).await?;
                if info.encrypted && !info.encryption_notice_sent && !self.reads_encrypted {
                    self.send_encryption_notice(&event.room_id, conn).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn on_encrypted(
        &self,
        room_id: &OwnedRoomId,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let info = rooms::get(conn, room_id.as_str()).await?;
        if !info.encryption_notice_sent {
            self.send_encryption_notice(room_id, conn).await?;
        }
        Ok(())
    }

    async fn send_encryption_notice(
        &self,
        room_id: &OwnedRoomId,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let text = i18n::ENCRYPTED_ROOM.get(self.lang);
        let content = RoomMessageEventContent::notice_plain(text);
        self.send(room_id, content, conn).await?;
        let info = rooms::RoomInfo {
            encrypted: true,
            encryption_notice_sent: true,
        };
        rooms::put(conn, room_id.as_str(), &info).await
    }

    /// Queues a notice answering `event_id`, in its thread if it was in one.
    pub async fn reply(
        &self,
        room_id: &OwnedRoomId,
        event_id: &OwnedEventId,
        relates_to: Option<
            Relation<ruma::events::room::message::RoomMessageEventContentWithoutRelation>,
        >,
        plain: String,
        html: String,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let mut reply = RoomMessageEventContent::notice_html(plain, html);
        reply.relates_to = Some(reply_relation(relates_to, event_id.clone()));
        self.send(room_id, reply, conn).await
    }

    pub async fn send(
        &self,
        room_id: &OwnedRoomId,
        mut content: RoomMessageEventContent,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        // The bot's notices never ping anyone.
        content.mentions = Some(Mentions::new());
        let content = serde_json::to_value(&content).expect("message content always serialises");
        queue::enqueue(
            conn,
            &OutboundRequest::Send {
                room_id: room_id.clone(),
                as_user: None,
                event_type: "m.room.message".into(),
                content,
                in_thread_of: None,
                attribution: None,
            },
        )
        .await?;
        Ok(())
    }
}

/// A reply stays in the thread the command was typed in.
fn reply_relation(
    original: Option<Relation<ruma::events::room::message::RoomMessageEventContentWithoutRelation>>,
    event_id: OwnedEventId,
) -> Relation<ruma::events::room::message::RoomMessageEventContentWithoutRelation> {
    match original {
        Some(Relation::Thread(thread)) => {
            Relation::Thread(Thread::reply(thread.event_id, event_id))
        }
        _ => Relation::Reply(Reply::new(InReplyTo::new(event_id))),
    }
}

/// Whether an invite is into a Tchap direct room (`im.vector.room.access_rules`:
/// `direct`, which holds exactly two members) that is not a direct chat with the bot:
/// the invite does not say it is one (`is_direct`). Tchap's homeserver shows the rule in
/// the invite's stripped state (Synapse: `room_prejoin_state`).
fn into_others_direct_room(unsigned: &serde_json::Value, is_direct: Option<bool>) -> bool {
    if is_direct == Some(true) {
        return false;
    }
    unsigned
        .get("invite_room_state")
        .and_then(|s| s.as_array())
        .is_some_and(|events| {
            events.iter().any(|e| {
                e.get("type").and_then(|t| t.as_str()) == Some("im.vector.room.access_rules")
                    && e.pointer("/content/rule").and_then(|r| r.as_str()) == Some("direct")
            })
        })
}

/// Whether an invite's stripped room state says the room is encrypted.
fn invite_state_is_encrypted(unsigned: &serde_json::Value) -> bool {
    unsigned
        .get("invite_room_state")
        .and_then(|s| s.as_array())
        .is_some_and(|events| {
            events
                .iter()
                .any(|e| e.get("type").and_then(|t| t.as_str()) == Some("m.room.encryption"))
        })
}

impl EventHandler for Bot {
    async fn handle(&self, event: &InboxEvent, conn: &mut Connection) -> Result<(), StoreError> {
        match EventEnvelope::parse(event) {
            Some(envelope) => self.on_event(envelope, conn).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::both_dialects;

    fn bot() -> Bot {
        Bot {
            user_id: UserId::parse("@visio:localhost").expect("id"),
            ghost_prefix: "@visio_".into(),
            domain: ruma::server_name!("localhost").to_owned(),
            permissions: BTreeMap::from([("localhost".to_owned(), PermissionLevel::User)]),
            lang: Language::Fr,
            reads_encrypted: false,
        }
    }

    fn inbox(json: serde_json::Value) -> InboxEvent {
        InboxEvent {
            seq: 1,
            event_id: json["event_id"].as_str().unwrap_or("$x").to_owned(),
            json: json.to_string(),
        }
    }

    async fn queued(store: &Store) -> Vec<OutboundRequest> {
        let mut out = Vec::new();
        let now = crate::clock::now_ms();
        while let Some(row) = store.next_due_outbound(now).await.expect("next") {
            out.push(serde_json::from_str(&row.request_json).expect("request"));
            store
                .mark_outbound_sent(row.id, "{}", None)
                .await
                .expect("sent");
        }
        out
    }

    async fn feed(store: &Store, json: serde_json::Value) {
        let mut tx = store.begin().await.expect("begin");
        bot().handle(&inbox(json), &mut tx).await.expect("handle");
        tx.commit().await.expect("commit");
    }

    fn invite(sender: &str, encrypted: bool) -> serde_json::Value {
        let state = if encrypted {
            serde_json::json!([{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}, "sender": sender}])
        } else {
            serde_json::json!([])
        };
        serde_json::json!({
            "type": "m.room.member", "event_id": "$inv", "room_id": "!r:localhost", "sender": sender,
            "state_key": "@visio:localhost", "origin_server_ts": 1, "content": {"membership": "invite"},
            "unsigned": {"invite_room_state": state}
        })
    }

    both_dialects!(
        permitted_invites_are_joined_others_refused,
        |store: Store| async move {
            feed(&store, invite("@alice:localhost", false)).await;
            feed(&store, invite("@mallory:elsewhere.org", false)).await;
            let requests = queued(&store).await;
            assert!(
                matches!(&requests[0], OutboundRequest::Join { as_user: None, .. }),
                "{requests:?}"
            );
            match &requests[1] {
                OutboundRequest::Leave {
                    reason: Some(reason),
                    ..
                } => assert!(reason.contains("autorisée"), "{reason}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            assert_eq!(requests.len(), 2);
        }
    );

    both_dialects!(
        direct_rooms_of_two_others_are_refused_a_direct_chat_is_joined,
        |store: Store| async move {
            let direct_rule = serde_json::json!([{"type": "im.vector.room.access_rules", "state_key": "",
                "sender": "@alice:localhost", "content": {"rule": "direct"}}]);
            let mut into_others = invite("@alice:localhost", false);
            into_others["unsigned"]["invite_room_state"] = direct_rule.clone();
            feed(&store, into_others).await;
            let mut with_the_bot = invite("@alice:localhost", false);
            with_the_bot["event_id"] = "$dm".into();
            with_the_bot["room_id"] = "!dm:localhost".into();
            with_the_bot["content"]["is_direct"] = true.into();
            with_the_bot["unsigned"]["invite_room_state"] = direct_rule;
            feed(&store, with_the_bot).await;
            let requests = queued(&store).await;
            match &requests[0] {
                OutboundRequest::Leave {
                    reason: Some(reason),
                    ..
                } => assert!(
                    reason.contains("deux personnes") && reason.contains("!visio"),
                    "{reason}"
                ),
                other => panic!("expected a refusal, got {other:?}"),
            }
            assert!(
                matches!(&requests[1], OutboundRequest::Join { room_id, .. } if room_id == "!dm:localhost"),
                "{requests:?}"
            );
        }
    );

    both_dialects!(encrypted_rooms_get_one_notice, |store: Store| async move {
        feed(&store, invite("@alice:localhost", true)).await;
        let mut join = invite("@visio:localhost", false);
        join["content"]["membership"] = "join".into();
        join["sender"] = "@visio:localhost".into();
        feed(&store, join.clone()).await;
        feed(&store, join).await;
        let encrypted = serde_json::json!({"type": "m.room.encrypted", "event_id": "$e", "room_id": "!r:localhost",
            "sender": "@alice:localhost", "origin_server_ts": 1, "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
        feed(&store, encrypted).await;
        let requests = queued(&store).await;
        let notices: Vec<_> = requests
            .iter()
            .filter_map(|r| match r {
                OutboundRequest::Send { content, .. } => {
                    content["body"].as_str().map(str::to_owned)
                }
                _ => None,
            })
            .collect();
        assert_eq!(notices.len(), 1, "{requests:?}");
        assert!(notices[0].contains("chiffré"), "{}", notices[0]);
    });
}
