//! What the outbound worker sends into an encrypted room: the bot's own messages,
//! encrypted at send time (never at enqueue: a retry keeps its transaction id), for the
//! room's members as our database knows them. A ghost cannot speak there (the bot's
//! device would sign for a user who does not own it: a red shield in every client), so
//! the bot relays its words with the speaker's name in front.

use super::Rotation;
use super::device::{BotDevice, DeviceError};
use crate::matrix::client::{CallError, url_component};
use crate::matrix::queue::{OutboundRequest, spoken_by_bot};
use crate::store::crypto as stored;

/// The request as it must go out: unchanged in a clear room (or for anything but a
/// message), encrypted as the bot in an encrypted one (a ghost's words with its name in
/// front).
pub async fn seal(
    device: &BotDevice,
    request: &OutboundRequest,
) -> Result<OutboundRequest, DeviceError> {
    let OutboundRequest::Send { room_id, .. } = request else {
        return Ok(request.clone());
    };
    let room = room_id.as_str();
    let mut conn = device.store.pool().acquire().await?;
    let known = stored::room(&mut conn, room).await?;
    drop(conn);
    let Some(encryption) = room_encryption(device, room, &known).await? else {
        return Ok(request.clone());
    };
    let speaking = spoken_by_bot(request);
    let OutboundRequest::Send {
        room_id,
        event_type,
        content,
        in_thread_of,
        ..
    } = speaking
    else {
        unreachable!("a send stays a send");
    };
    let members = members_to_share_with(device, room, &known).await?;
    let rotation =
        Rotation::from_encryption_event(&serde_json::from_str(&encryption).unwrap_or_default());
    device.share_room_key(room, &members, rotation).await?;
    let encrypted = device.crypto.encrypt(room, &event_type, &content).await?;
    metrics::counter!("tchap_visio_events_encrypted_total").increment(1);
    Ok(OutboundRequest::Send {
        room_id,
        as_user: None,
        event_type: "m.room.encrypted".into(),
        content: encrypted,
        in_thread_of,
        attribution: None,
    })
}

/// The room's `m.room.encryption` content, or `None` for a clear room; asked of the
/// homeserver once for a room we know nothing of (the bot joined after it was set).
async fn room_encryption(
    device: &BotDevice,
    room: &str,
    known: &stored::RoomCrypto,
) -> Result<Option<String>, DeviceError> {
    if known.encryption_known {
        return Ok(known.encryption_json.clone());
    }
    let path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.encryption/",
        url_component(room)
    );
    let found = match device
        .client()
        .call_json("GET", &path, None, None, None)
        .await
    {
        Ok(content) => Some(content.to_string()),
        Err(CallError::Matrix { status: 404, .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut conn = device.store.pool().acquire().await?;
    match &found {
        Some(content) => stored::set_room_encryption(&mut conn, room, content).await?,
        None => stored::set_room_clear(&mut conn, room).await?,
    }
    Ok(found)
}

/// Who gets the room key: joined members, and invited ones unless the room's history is
/// visible to joined members only. The list is read from the homeserver once, then kept
/// by the membership events the inbox records.
async fn members_to_share_with(
    device: &BotDevice,
    room: &str,
    known: &stored::RoomCrypto,
) -> Result<Vec<String>, DeviceError> {
    if !known.members_loaded {
        let path = format!("/_matrix/client/v3/rooms/{}/members", url_component(room));
        let answer = device
            .client()
            .call_json("GET", &path, None, None, None)
            .await?;
        let members: Vec<(String, String)> = answer
            .get("chunk")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|event| {
                Some((
                    event.get("state_key")?.as_str()?.to_owned(),
                    event.pointer("/content/membership")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        let mut conn = device.store.pool().acquire().await?;
        stored::load_members(&mut conn, room, &members).await?;
    }
    let memberships: &[&str] = if known.history_visibility.as_deref() == Some("joined") {
        &["join"]
    } else {
        &["join", "invite"]
    };
    let mut conn = device.store.pool().acquire().await?;
    Ok(stored::members(&mut conn, room, memberships).await?)
}
