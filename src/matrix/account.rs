//! `mode: bot`: the service as an ordinary Matrix account, where a homeserver refuses
//! appservices (Tchap's bots are plain accounts). It logs in once and keeps its device
//! (and so its keys) across restarts, and runs one `/sync` loop whose timeline, state,
//! invites and encryption input go into the same inbox as appservice transactions, in
//! one database transaction with the new sync token: the inbox worker, the bridge, the
//! commands and the outbound queue run unchanged, with the same exactly-once guarantee.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, MatrixClient};
use super::crypto::CryptoInput;
use super::crypto::device::DeviceSlot;
use crate::config::Config;
use crate::store::inbox::NewInboxEvent;
use crate::store::{Store, crypto as stored};

const ACCESS_TOKEN: &str = "account_access_token";
const DEVICE_ID: &str = "account_device_id";

/// What the service speaks with: the account's token and device.
pub struct Session {
    pub access_token: String,
    pub device_id: String,
}

/// The account's session: the configured token, else the one kept from the last login
/// (if the homeserver still knows it), else a new login with the password, on the
/// device kept before. A lost crypto store (encryption on) means a new device: never
/// the old id with new keys; the old device is deleted.
pub async fn session(config: &Config, store: &Store) -> anyhow::Result<Session> {
    let account = &config.bot_account;
    let base = config.homeserver.address.as_str();
    if !account.access_token.is_empty() {
        return Ok(Session {
            access_token: account.access_token.clone(),
            device_id: account.device_id.trim().to_owned(),
        });
    }
    let mut conn = store.pool().acquire().await?;
    let kept_token = stored::state(&mut conn, ACCESS_TOKEN).await?;
    let kept_device = stored::state(&mut conn, DEVICE_ID).await?;
    drop(conn);
    let store_lost = config.encryption.enabled
        && kept_device.is_some()
        && !std::path::Path::new(&config.encryption.store_path).exists();
    if let (Some(token), Some(device), false) = (&kept_token, &kept_device, store_lost) {
        let client = MatrixClient::for_account(base, token);
        match client
            .call_json("GET", "/_matrix/client/v3/account/whoami", None, None, None)
            .await
        {
            Ok(me) if me.get("device_id").and_then(|d| d.as_str()) == Some(device) => {
                return Ok(Session {
                    access_token: token.clone(),
                    device_id: device.clone(),
                });
            }
            Ok(_) | Err(CallError::Matrix { status: 401, .. }) => {}
            Err(e) => {
                return Err(e).context("cannot reach the homeserver to check the bot's session");
            }
        }
    }
    let reuse = if store_lost {
        None
    } else {
        kept_device.as_deref()
    };
    let session = login(config, reuse).await?;
    let mut conn = store.pool().acquire().await?;
    stored::set_state(&mut conn, ACCESS_TOKEN, &session.access_token).await?;
    stored::set_state(&mut conn, DEVICE_ID, &session.device_id).await?;
    drop(conn);
    tracing::info!(user = %account.user_id, device = %session.device_id, "logged in");
    if store_lost && let Some(old) = kept_device {
        tracing::warn!(device = %old, "the crypto store is lost: logged in on a new device; deleting the old one");
        delete_device(config, &session, &old).await;
    }
    Ok(session)
}

async fn login(config: &Config, device_id: Option<&str>) -> anyhow::Result<Session> {
    let account = &config.bot_account;
    let client = MatrixClient::for_account(config.homeserver.address.as_str(), "");
    let mut body = serde_json::json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": account.user_id.trim()},
        "password": account.password,
        "initial_device_display_name": config.appservice.bot.displayname,
    });
    if let Some(device) = device_id {
        body["device_id"] = device.into();
    }
    let answer = client
        .call_json("POST", "/_matrix/client/v3/login", Some(&body), None, None)
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(CallError::Matrix { status: 403, .. }) => bail!(
            "the homeserver refused the login of bot_account.user_id {}: check bot_account.password",
            account.user_id
        ),
        Err(e) => return Err(e).context("cannot log the bot in"),
    };
    let field = |name: &str| {
        answer
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("the login answer has no {name}"))
    };
    Ok(Session {
        access_token: field("access_token")?,
        device_id: field("device_id")?,
    })
}

/// Deletes a device of the account, authenticating with the password in the same
/// request (Synapse accepts a complete password stage without a session).
async fn delete_device(config: &Config, session: &Session, device: &str) {
    let client =
        MatrixClient::for_account(config.homeserver.address.as_str(), &session.access_token);
    let body = serde_json::json!({"auth": {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": config.bot_account.user_id.trim()},
        "password": config.bot_account.password,
    }});
    match client
        .call_json(
            "DELETE",
            &format!("/_matrix/client/v3/devices/{device}"),
            Some(&body),
            None,
            None,
        )
        .await
    {
        Ok(_) | Err(CallError::Matrix { status: 404, .. }) => {
            tracing::info!(device, "deleted the device whose keys were lost");
        }
        Err(e) => {
            tracing::warn!(device, error = %e, "could not delete the old device; delete it by hand")
        }
    }
}

/// The account's one `/sync` loop.
pub struct AccountSync {
    pub client: MatrixClient,
    pub store: Store,
    pub bot: ruma::OwnedUserId,
    /// Where encryption input goes (`None`: encryption off).
    pub device: Option<DeviceSlot>,
    pub inbox_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
}

/// Timeline and state of joined rooms, invites; no presence, no account data.
const FILTER: &str = r#"{"room":{"timeline":{"limit":100}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;

impl AccountSync {
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let result = tokio::select! {
                result = self.once() => result,
                _ = self.shutdown.cancelled() => return,
            };
            match result {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = super::queue::backoff(i64::from(failures));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "the bot's sync failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One long poll, stored in one database transaction with its token.
    async fn once(&self) -> anyhow::Result<()> {
        let mut conn = self.store.pool().acquire().await?;
        let since = stored::state(&mut conn, stored::SYNC_TOKEN).await?;
        drop(conn);
        let (sync, next) = self
            .client
            .sync(FILTER, since.as_deref(), Duration::from_secs(30), None)
            .await?;
        let next = next.as_str();
        let events = inbox_events(&sync, self.bot.as_str(), since.is_none(), next);
        let input = self
            .device
            .as_ref()
            .map(|_| CryptoInput::from_sync(&sync))
            .filter(|input| *input != CryptoInput::default())
            .map(|input| serde_json::to_string(&input).expect("crypto input always serialises"));
        self.store
            .store_sync_batch(next, &events, input.as_deref())
            .await?;
        if !events.is_empty() {
            metrics::counter!("tchap_visio_events_received_total").increment(events.len() as u64);
            self.inbox_wake.notify_one();
        }
        if input.is_some()
            && let Some(device) = self.device.as_ref().and_then(|slot| slot.get())
        {
            device.input_wake.notify_one();
        }
        Ok(())
    }
}

/// A sync answer's events as inbox rows, each with its room: joined and left rooms'
/// state and timeline, and for each invite a member event made from its stripped state
/// (as an appservice transaction carries it). The first sync of a fresh account keeps
/// state and invites only: old commands are not answered.
pub fn inbox_events(
    sync: &serde_json::Value,
    bot: &str,
    first: bool,
    next_batch: &str,
) -> Vec<NewInboxEvent> {
    let mut rows = Vec::new();
    for section in ["join", "leave"] {
        let Some(rooms) = sync
            .pointer(&format!("/rooms/{section}"))
            .and_then(|r| r.as_object())
        else {
            continue;
        };
        for (room_id, room) in rooms {
            for block in ["state", "timeline"] {
                let events = room
                    .pointer(&format!("/{block}/events"))
                    .and_then(|e| e.as_array());
                for event in events.into_iter().flatten() {
                    let is_state = event.get("state_key").is_some();
                    if first && !is_state {
                        continue;
                    }
                    let Some(event_id) = event.get("event_id").and_then(|e| e.as_str()) else {
                        continue;
                    };
                    let mut event = event.clone();
                    event["room_id"] = room_id.as_str().into();
                    rows.push(NewInboxEvent {
                        event_id: event_id.to_owned(),
                        room_id: Some(room_id.clone()),
                        json: event.to_string(),
                    });
                }
            }
        }
    }
    if let Some(invites) = sync.pointer("/rooms/invite").and_then(|r| r.as_object()) {
        for (room_id, room) in invites {
            let stripped: Vec<serde_json::Value> = room
                .pointer("/invite_state/events")
                .and_then(|e| e.as_array())
                .cloned()
                .unwrap_or_default();
            let Some(member) = stripped.iter().find(|e| {
                e.get("type").and_then(|t| t.as_str()) == Some("m.room.member")
                    && e.get("state_key").and_then(|s| s.as_str()) == Some(bot)
            }) else {
                continue;
            };
            let digest = Sha256::digest(format!("{room_id}\n{next_batch}").as_bytes());
            let event_id = format!("$tv-invite-{}", hex::encode(&digest[..12]));
            let event = serde_json::json!({
                "type": "m.room.member",
                "event_id": event_id,
                "room_id": room_id,
                "sender": member.get("sender").cloned().unwrap_or_default(),
                "state_key": bot,
                "origin_server_ts": crate::clock::now_ms(),
                "content": member.get("content").cloned().unwrap_or_default(),
                "unsigned": {"invite_room_state": stripped},
            });
            rows.push(NewInboxEvent {
                event_id,
                room_id: Some(room_id.clone()),
                json: event.to_string(),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync() -> serde_json::Value {
        serde_json::json!({
            "next_batch": "s2",
            "rooms": {
                "join": {"!r:x": {
                    "state": {"events": [{"type": "m.room.power_levels", "state_key": "", "event_id": "$pl", "sender": "@a:x", "content": {}}]},
                    "timeline": {"events": [
                        {"type": "m.room.message", "event_id": "$m", "sender": "@a:x", "content": {"msgtype": "m.text", "body": "!visio"}},
                        {"type": "m.room.member", "state_key": "@b:x", "event_id": "$j", "sender": "@b:x", "content": {"membership": "join"}},
                    ]},
                }},
                "invite": {"!i:x": {"invite_state": {"events": [
                    {"type": "m.room.encryption", "state_key": "", "sender": "@a:x", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                    {"type": "m.room.member", "state_key": "@bot:x", "sender": "@a:x", "content": {"membership": "invite"}},
                ]}}},
            }
        })
    }

    #[test]
    fn a_sync_becomes_inbox_rows_with_their_rooms_and_invites() {
        let rows = inbox_events(&sync(), "@bot:x", false, "s2");
        let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(&ids[..3], ["$pl", "$m", "$j"]);
        let message: serde_json::Value = serde_json::from_str(&rows[1].json).expect("json");
        assert_eq!(message["room_id"], "!r:x");
        let invite: serde_json::Value = serde_json::from_str(&rows[3].json).expect("json");
        assert_eq!(invite["type"], "m.room.member");
        assert_eq!(invite["state_key"], "@bot:x");
        assert_eq!(invite["sender"], "@a:x");
        assert_eq!(invite["content"]["membership"], "invite");
        assert_eq!(
            invite["unsigned"]["invite_room_state"][0]["type"],
            "m.room.encryption"
        );
        // The same invite in the same batch has the same id (a stored batch is not
        // stored twice); another batch's invite is another event.
        assert_eq!(
            rows[3].event_id,
            inbox_events(&sync(), "@bot:x", false, "s2")[3].event_id
        );
        assert_ne!(
            rows[3].event_id,
            inbox_events(&sync(), "@bot:x", false, "s3")[3].event_id
        );
    }

    #[test]
    fn the_first_sync_keeps_state_and_invites_but_no_old_command() {
        let rows = inbox_events(&sync(), "@bot:x", true, "s1");
        let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        assert!(!ids.contains(&"$m"), "{ids:?}");
        assert!(ids.contains(&"$pl") && ids.contains(&"$j"), "{ids:?}");
        assert!(
            ids.iter().any(|id| id.starts_with("$tv-invite-")),
            "{ids:?}"
        );
    }
}
