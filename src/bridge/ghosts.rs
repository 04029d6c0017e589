//! Ghost users: the Matrix accounts that speak in a room for meeting guests and for bots
//! posting summaries. Each is registered, named, invited and joined once, in the room's
//! queue order, so its first message never races its own registration.

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::matrix::queue::{self, OutboundRequest};
use crate::store::{Connection, StoreError, ghosts};

/// How ghost ids are made: the registration's username template and the server name.
#[derive(Debug, Clone)]
pub struct GhostNamer {
    /// `visio_{id}`.
    pub template: String,
    pub domain: ruma::OwnedServerName,
}

impl GhostNamer {
    /// The ghost of a meeting guest, stable across their rejoins from one browser. The
    /// key is hashed: it is a browser's identifier, not something to publish.
    pub fn guest(&self, attendee_key: &str) -> OwnedUserId {
        self.user(&format!("g{}", short_hash(attendee_key)))
    }

    /// The ghost of a bot posting through the API: one per token and author name, so
    /// that a token cannot speak through the ghost another token's posts came from.
    pub fn author(&self, token_id: &str, author: &str) -> OwnedUserId {
        // The token id is hex, so the newline cannot be forged from either side.
        let key = format!("{token_id}\n{}", author.to_lowercase());
        self.user(&format!("b{}", short_hash(&key)))
    }

    fn user(&self, id: &str) -> OwnedUserId {
        let localpart = self.template.replace("{id}", id);
        UserId::parse(format!("@{localpart}:{}", self.domain))
            .expect("a template checked at start, a hex id and a server name make a user id")
    }
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Queues whatever makes `ghost` a member of `room` named `display_name`: registration
/// and invitation the first time, a rename when the name changed.
///
/// Nothing in an encrypted room: a ghost has no device there, so the outbound worker
/// has the bot relay its words with its name in front.
pub async fn ensure_in_room(
    conn: &mut Connection,
    ghost: &OwnedUserId,
    display_name: &str,
    room: &OwnedRoomId,
) -> Result<(), StoreError> {
    if crate::store::rooms::get(conn, room.as_str())
        .await?
        .encrypted
    {
        return Ok(());
    }
    let known = ghosts::display_name(conn, ghost.as_str()).await?;
    if known.is_none() {
        let request = OutboundRequest::RegisterGhost {
            localpart: ghost.localpart().to_owned(),
        };
        queue::enqueue_in_order_of(conn, &request, room).await?;
    }
    if known.as_deref() != Some(display_name) {
        let request = OutboundRequest::SetDisplayName {
            user_id: ghost.clone(),
            displayname: display_name.to_owned(),
        };
        queue::enqueue_in_order_of(conn, &request, room).await?;
        ghosts::put(conn, ghost.as_str(), display_name, now_ms()).await?;
    }
    if !ghosts::in_room(conn, ghost.as_str(), room.as_str()).await? {
        queue::enqueue(
            conn,
            &OutboundRequest::Invite {
                room_id: room.clone(),
                user_id: ghost.clone(),
            },
        )
        .await?;
        queue::enqueue(
            conn,
            &OutboundRequest::Join {
                room_id: room.clone(),
                as_user: Some(ghost.clone()),
            },
        )
        .await?;
        ghosts::add_room(conn, ghost.as_str(), room.as_str(), now_ms()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_ids_are_stable_valid_and_do_not_reveal_the_key() {
        let namer = GhostNamer {
            template: "visio_{id}".into(),
            domain: ruma::server_name!("localhost").to_owned(),
        };
        let a = namer.guest("B-7F3A/secret browser id");
        assert_eq!(a, namer.guest("B-7F3A/secret browser id"));
        assert_ne!(a, namer.guest("other"));
        assert!(a.as_str().starts_with("@visio_g"), "{a}");
        assert!(!a.as_str().contains("secret"));
        assert_eq!(a.localpart().len(), "visio_g".len() + 16);
        assert_eq!(
            namer.author("t1", "Compte-rendu"),
            namer.author("t1", "compte-rendu")
        );
        assert_ne!(
            namer.author("t1", "Compte-rendu"),
            namer.author("t2", "Compte-rendu"),
            "two tokens never share a ghost"
        );
        assert_ne!(
            namer.author("t1", "Compte-rendu"),
            namer.guest("Compte-rendu")
        );
    }
}
