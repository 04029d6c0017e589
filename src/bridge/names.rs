//! Who is who in the rooms, as the bridge needs it: display names (global and per
//! room) and power levels. Looked up at the homeserver before a batch's transaction
//! (never inside it) and kept for a while; the handlers read only what is kept.

use std::time::Instant;

use ruma::{OwnedRoomId, UserId};

use super::{BridgeContext, DISPLAY_NAME_TTL, LOOKUP_TIMEOUT};
use crate::meeting;
use crate::store::{Connection, StoreError, rooms};

impl BridgeContext {
    /// A user's display name as last looked up (by [`Self::look_up_display_name`],
    /// before the transaction); the user id's localpart when unknown.
    pub(super) fn display_name(&self, user: &UserId) -> String {
        self.cached_name(user)
            .map_or_else(|| user.localpart().to_owned(), |(name, _)| name)
    }

    /// Looks a user's display name up at the homeserver unless known recently, and
    /// remembers it (the localpart when the homeserver cannot say). Called before a
    /// batch's transaction, never inside one.
    pub(super) async fn look_up_display_name(&self, user: &UserId) {
        if let Some((_, at)) = self.cached_name(user)
            && at.elapsed() < DISPLAY_NAME_TTL
        {
            return;
        }
        let Some(client) = &self.client else {
            return;
        };
        let fallback = user.localpart().to_owned();
        #[allow(deprecated)] // the per-field endpoint works on every homeserver version
        let request =
            ruma::api::client::profile::get_display_name::v3::Request::new(user.to_owned());
        let name = match tokio::time::timeout(LOOKUP_TIMEOUT, client.call(request, None)).await {
            Ok(Ok(response)) => response.displayname.filter(|n| !n.trim().is_empty()),
            _ => None,
        }
        .unwrap_or(fallback);
        if let Ok(mut cache) = self.display_names.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(user.to_owned(), (name, Instant::now()));
        }
    }

    /// A member's display name in a room as last seen, if we know it and it is fresh;
    /// the outer `None` means "unknown", the inner "no display name".
    pub(super) fn member_name(&self, room: &OwnedRoomId, user: &UserId) -> Option<Option<String>> {
        let cache = self.member_names.lock().ok()?;
        let (name, at) = cache.get(&(room.clone(), user.to_owned()))?;
        (at.elapsed() < DISPLAY_NAME_TTL).then(|| name.clone())
    }

    /// How notices name a user: their display name in the room if we know a usable one
    /// (no lookup here: this runs inside the event's database transaction).
    pub(super) fn name_in_room(&self, room: &OwnedRoomId, user: &UserId) -> Option<String> {
        self.member_name(room, user).flatten()
    }

    pub(super) fn remember_member_name(
        &self,
        room: &OwnedRoomId,
        user: &UserId,
        name: Option<&str>,
    ) {
        let name = name.and_then(|n| meeting::validate_display_name(n).ok());
        if let Ok(mut cache) = self.member_names.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert((room.clone(), user.to_owned()), (name, Instant::now()));
        }
    }

    /// Asks the homeserver for a member's display name in a room and remembers it.
    /// Called before a batch's transaction, never inside one.
    pub(super) async fn look_up_member_name(&self, room: &OwnedRoomId, user: &UserId) {
        let Some(client) = &self.client else {
            return;
        };
        let request = ruma::api::client::state::get_state_event_for_key::v3::Request::new(
            room.clone(),
            ruma::events::StateEventType::RoomMember,
            user.to_string(),
        );
        match tokio::time::timeout(LOOKUP_TIMEOUT, client.call(request, None)).await {
            Ok(Ok(response)) => {
                let content: serde_json::Value =
                    serde_json::from_str(response.event_or_content.get()).unwrap_or_default();
                // Either the content or, with `format=event`, the whole event.
                let content = content.get("content").unwrap_or(&content);
                let name = content.get("displayname").and_then(|n| n.as_str());
                self.remember_member_name(room, user, name);
            }
            // Not remembered: the next command tries again; this one names the user by id.
            Ok(Err(e)) => {
                tracing::debug!(room = %room, user = %user, error = %e, "display name lookup failed")
            }
            Err(_) => {
                tracing::debug!(room = %room, user = %user, "display name lookup timed out")
            }
        }
    }

    pub(super) fn cached_name(&self, user: &UserId) -> Option<(String, Instant)> {
        self.display_names.lock().ok()?.get(user).cloned()
    }

    /// A user's power level in a room: from the state the homeserver sent us, else from
    /// the lookup made before the transaction (then stored with the room).
    pub(super) async fn power_level(
        &self,
        conn: &mut Connection,
        room: &OwnedRoomId,
        user: &UserId,
    ) -> Result<i64, StoreError> {
        let mut json = rooms::power_levels(conn, room.as_str()).await?;
        if json.is_none() {
            let fetched = self
                .fetched_power_levels
                .lock()
                .ok()
                .and_then(|cache| cache.get(room).map(|(text, _)| text.clone()));
            if let Some(text) = fetched {
                rooms::set_power_levels(conn, room.as_str(), &text).await?;
                json = Some(text);
            }
        }
        Ok(json
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .map_or(0, |levels| level_in(&levels, user)))
    }

    /// Asks the homeserver for a room's power levels unless fetched recently, and keeps
    /// them for the transaction to come. Called before a batch's transaction.
    pub(super) async fn look_up_power_levels(&self, room: &OwnedRoomId) {
        let fresh = self.fetched_power_levels.lock().ok().is_some_and(|cache| {
            cache
                .get(room)
                .is_some_and(|(_, at)| at.elapsed() < DISPLAY_NAME_TTL)
        });
        let Some(client) = self.client.as_ref().filter(|_| !fresh) else {
            return;
        };
        let request = ruma::api::client::state::get_state_event_for_key::v3::Request::new(
            room.clone(),
            ruma::events::StateEventType::RoomPowerLevels,
            String::new(),
        );
        if let Ok(Ok(response)) =
            tokio::time::timeout(LOOKUP_TIMEOUT, client.call(request, None)).await
            && let Ok(mut cache) = self.fetched_power_levels.lock()
        {
            if cache.len() > 10_000 {
                cache.clear();
            }
            let text = response.event_or_content.get().to_owned();
            cache.insert(room.clone(), (text, Instant::now()));
        }
    }
}

/// A user's level in `m.room.power_levels` content (`users`, else `users_default`).
pub(super) fn level_in(levels: &serde_json::Value, user: &UserId) -> i64 {
    crate::auth::membership::power_level_in(levels, user.as_str())
}
