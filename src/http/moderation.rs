//! Moderation over HTTP, two ways in, one set of actions:
//! - the page: `GET /api/v1/meetings/{slug}/lobby` and `POST .../moderation`, for a
//!   browser connected as an identified member who may moderate (checked at the
//!   homeserver on every call, never taken from the page);
//! - LiveKit's server SDKs: a subset of the Twirp `livekit.RoomService` at
//!   `/twirp/livekit.RoomService/{method}` (protobuf or JSON), authorised by a token
//!   signed with a configured API key and carrying the grant LiveKit asks for.
//!
//! Removing someone from a meeting revokes their tokens (so a rejoin with an old one
//! fails) and ending a meeting ends it as `!visio fin` does; both are stored first and
//! reach the SFU after commit.
//!
//! In a cluster the meeting's room may live on another node than the one asked: the
//! stored effects name the hosting node, which applies them (`bridge::effects`), so
//! removals, ends, lobby decisions and mutes act there; only reads of the SFU's live
//! state (listing participants) answer for this node's rooms.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use livekit_protocol as lk;
use serde::Deserialize;

use super::AppState;
use super::access::Browser;
use super::appservice::{parse_json_body, read_body};
use super::error::MatrixError;
use crate::bridge::access::{RemovalReason, remove_participant};
use crate::clock::now_ms;
use crate::ids::{MeetingId, MeetingSlug};
use crate::meeting::Meeting;
use crate::store::access::{self as stored, LobbyState};
use crate::store::meetings;

/// Largest moderation or room-service request body.
const BODY_LIMIT: usize = 64 * 1024;

// ----- the actions --------------------------------------------------------------------

/// The meeting an SFU room is, if it is one.
async fn meeting_named(state: &AppState, room: &str) -> Result<Option<Meeting>, MatrixError> {
    let Ok(id) = MeetingId::parse(room) else {
        return Ok(None);
    };
    let mut conn = state.conn().await?;
    meetings::get_by_id(&mut conn, &id)
        .await
        .map_err(|e| MatrixError::internal(&e))
}

/// Takes `identity` out of `room`: for a meeting, its tokens are revoked for good.
async fn remove(state: &AppState, room: &str, identity: &str) -> Result<(), MatrixError> {
    let meeting = meeting_named(state, room).await?;
    match meeting {
        Some(meeting) => {
            let mut tx = state.begin().await?;
            remove_participant(
                &mut tx,
                &meeting,
                identity,
                RemovalReason::Removed,
                now_ms(),
            )
            .await
            .map_err(|e| MatrixError::internal(&e))?;
            tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
            state.bot_api.bridge.effects_committed();
        }
        None => {
            state
                .signal
                .sfu
                .remove_identity(room.to_owned(), identity.to_owned(), "removed".to_owned())
                .await;
        }
    }
    tracing::info!(room, identity, "participant removed through the API");
    Ok(())
}

/// Ends a meeting as `!visio fin` does (summary, notice, SFU room closed); a room that
/// is no meeting is closed.
async fn end(state: &AppState, room: &str) -> Result<(), MatrixError> {
    let meeting = meeting_named(state, room).await?;
    match meeting {
        Some(meeting) => {
            let mut tx = state.begin().await?;
            crate::bridge::end_meeting(&state.bot_api.bridge, &mut tx, &meeting, now_ms())
                .await
                .map_err(|e| MatrixError::internal(&e))?;
            tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
            state.bot_api.bridge.effects_committed();
            state.bot_api.outbound_wake.notify_one();
        }
        None => {
            state.signal.sfu.close_room(room.to_owned()).await;
        }
    }
    Ok(())
}

/// Whether `room` is a meeting whose SFU room another cluster node hosts.
async fn hosted_elsewhere(state: &AppState, room: &str) -> Result<bool, MatrixError> {
    let Some(node) = &state.cluster_node else {
        return Ok(false);
    };
    let placed = state
        .store
        .placement(room)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    Ok(placed.is_some_and(|(p, _)| &p.node_id != node))
}

/// Whether `identity` holds an unrevoked join grant for the meeting `room`.
async fn has_live_grant(state: &AppState, room: &str, identity: &str) -> Result<bool, MatrixError> {
    let mut conn = state.conn().await?;
    let grants = stored::live_grants(&mut conn, room)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    Ok(grants.iter().any(|g| g.identity == identity))
}

// ----- the page -----------------------------------------------------------------------

/// The identified member this browser is connected to `meeting` as, if they may
/// moderate it now (its creator, or at the room's power level).
async fn page_moderator(
    state: &AppState,
    meeting: &Meeting,
    headers: &HeaderMap,
) -> Result<String, MatrixError> {
    let forbidden = || {
        MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "Only the meeting's moderators may do this",
        )
    };
    let browser = Browser::of(state, headers);
    let prefix = format!("{}-", browser.pseudonym.as_str());
    let mut conn = state.conn().await?;
    let grants = stored::live_grants(&mut conn, meeting.id.as_str())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    drop(conn);
    let Some(user) = grants
        .into_iter()
        .filter(|g| g.identity.starts_with(&prefix))
        .find_map(|g| g.user_id)
    else {
        return Err(forbidden());
    };
    if meeting.creator.as_deref() == Some(user.as_str()) {
        return Ok(user);
    }
    let Some(room) = &meeting.matrix_room_id else {
        return Err(forbidden());
    };
    let bridge = &state.bot_api.bridge;
    let level = bridge
        .access
        .view
        .power_level(room, &user)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot read the room's power levels");
            MatrixError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNAVAILABLE",
                "The homeserver cannot be asked right now; try again",
            )
        })?;
    if level >= bridge.end_power_level {
        Ok(user)
    } else {
        Err(forbidden())
    }
}

async fn joinable(state: &AppState, slug: &str) -> Result<Meeting, MatrixError> {
    let slug = MeetingSlug::parse(slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    super::join::joinable_meeting(state, &slug).await
}

/// `GET /api/v1/meetings/{slug}/lobby`: who waits, for the page's moderators.
pub async fn waiting(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, MatrixError> {
    let meeting = joinable(&state, &slug).await?;
    page_moderator(&state, &meeting, &headers).await?;
    let mut conn = state.conn().await?;
    let waiting = crate::bridge::access::waiting_guests(&mut conn, &meeting, now_ms())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    let waiting: Vec<serde_json::Value> = waiting
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id, "number": r.number, "name": r.name,
                "user_id": r.user_id, "since": r.created_at,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "waiting": waiting })))
}

/// What a page's moderator asks for.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum PageAction {
    Admit { lobby_id: String },
    Refuse { lobby_id: String },
    Mute { identity: String, source: String },
    Remove { identity: String },
    End,
}

/// `POST /api/v1/meetings/{slug}/moderation`.
pub async fn act(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, MatrixError> {
    let meeting = joinable(&state, &slug).await?;
    let bytes = read_body(&headers, body, BODY_LIMIT).await?;
    let action: PageAction = parse_json_body(
        &bytes,
        "{action: admit|refuse, lobby_id} | {action: mute, identity, source} | {action: remove, identity} | {action: end}",
    )?;
    let moderator = page_moderator(&state, &meeting, &headers).await?;
    tracing::info!(meeting = %meeting.id, %moderator, action = ?action, "moderation from the page");
    let room = meeting.id.as_str();
    match action {
        PageAction::Admit { lobby_id } => {
            decide(&state, &meeting, &lobby_id, true, &moderator).await?
        }
        PageAction::Refuse { lobby_id } => {
            decide(&state, &meeting, &lobby_id, false, &moderator).await?
        }
        PageAction::Mute { identity, source } => {
            let source = match source.as_str() {
                "microphone" => lk::TrackSource::Microphone,
                "camera" => lk::TrackSource::Camera,
                "screen_share" => lk::TrackSource::ScreenShare,
                _ => {
                    return Err(MatrixError::bad_json(
                        "source is microphone, camera or screen_share",
                    ));
                }
            };
            if hosted_elsewhere(&state, room).await? {
                // The hosting node mutes it (the effect names that node); whether the
                // track was there is known only there.
                let mut tx = state.begin().await?;
                crate::bridge::effects::enqueue(
                    &mut tx,
                    &crate::bridge::effects::SfuEffect::MuteSource {
                        meeting: room.to_owned(),
                        identity,
                        source: source as i32,
                    },
                )
                .await
                .map_err(|e| MatrixError::internal(&e))?;
                tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
            } else {
                let muted = state
                    .signal
                    .sfu
                    .mute_track(room.to_owned(), identity, None, Some(source as i32), true)
                    .await
                    .is_some();
                if !muted {
                    return Err(MatrixError::not_found("Track"));
                }
            }
        }
        PageAction::Remove { identity } => remove(&state, room, &identity).await?,
        PageAction::End => end(&state, room).await?,
    }
    Ok(Json(serde_json::json!({ "done": true })))
}

async fn decide(
    state: &AppState,
    meeting: &Meeting,
    lobby_id: &str,
    admit: bool,
    moderator: &str,
) -> Result<(), MatrixError> {
    let by = ruma::UserId::parse(moderator).map_err(|e| MatrixError::internal(&e))?;
    let mut tx = state.begin().await?;
    let request = stored::lobby_request_by_id(&mut tx, lobby_id)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .filter(|r| r.meeting_id == meeting.id.as_str() && r.state == LobbyState::Waiting)
        .ok_or_else(|| MatrixError::not_found("Waiting guest"))?;
    crate::bridge::access::decide(
        &state.bot_api.bridge,
        &mut tx,
        meeting,
        &request,
        admit,
        &by,
    )
    .await
    .map_err(|e| MatrixError::internal(&e))?;
    tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
    state.bot_api.bridge.effects_committed();
    state.bot_api.outbound_wake.notify_one();
    Ok(())
}

// ----- LiveKit's RoomService ----------------------------------------------------------

/// A Twirp error: `{code, msg}` with its HTTP status.
struct TwirpError(StatusCode, &'static str, String);

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(serde_json::json!({ "code": self.1, "msg": self.2 })),
        )
            .into_response()
    }
}

impl From<MatrixError> for TwirpError {
    fn from(e: MatrixError) -> Self {
        let code = match e.status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::BAD_REQUEST => "invalid_argument",
            _ => "internal",
        };
        Self(e.status, code, e.error)
    }
}

/// How a request's body is encoded; the answer uses the same.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
) -> Result<M, TwirpError> {
    let malformed = |e: String| TwirpError(StatusCode::BAD_REQUEST, "malformed", e);
    match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| malformed(e.to_string())),
        Encoding::Json if body.is_empty() => Ok(M::default()),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| malformed(e.to_string())),
    }
}

fn encode<M: prost::Message + serde::Serialize>(encoding: Encoding, message: &M) -> Response {
    match encoding {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/protobuf")],
            Bytes::from(message.encode_to_vec()),
        )
            .into_response(),
        Encoding::Json => Json(serde_json::to_value(message).unwrap_or_default()).into_response(),
    }
}

/// What a RoomService method needs the token to grant.
enum Needs<'a> {
    /// `roomList`.
    List,
    /// `roomCreate` (LiveKit asks it for deleting rooms too).
    Create,
    /// `roomAdmin` on this room.
    Admin(&'a str),
}

fn authorize(state: &AppState, headers: &HeaderMap, needs: Needs<'_>) -> Result<(), TwirpError> {
    let unauthenticated =
        |msg: String| TwirpError(StatusCode::UNAUTHORIZED, "unauthenticated", msg);
    let token = crate::auth::bearer(headers).token().ok_or_else(|| {
        unauthenticated("an Authorization: Bearer <token> header is required".into())
    })?;
    let claims = state
        .signal
        .keys
        .verify(token, now_ms())
        .map_err(|e| unauthenticated(e.to_string()))?;
    let grant = &claims.video;
    let allowed = match needs {
        Needs::List => grant.room_list,
        Needs::Create => grant.room_create,
        Needs::Admin(room) => grant.room_admin && grant.room == room,
    };
    if allowed {
        Ok(())
    } else {
        metrics::counter!("tchap_visio_room_service_refused_total").increment(1);
        Err(TwirpError(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the token does not grant this on this room".into(),
        ))
    }
}

/// `POST /twirp/livekit.RoomService/{method}`.
pub async fn room_service(
    State(state): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match room_service_call(&state, &method, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn room_service_call(
    state: &AppState,
    method: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, TwirpError> {
    let encoding = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
    {
        Some("application/protobuf") => Encoding::Protobuf,
        Some("application/json") => Encoding::Json,
        _ => {
            return Err(TwirpError(
                StatusCode::BAD_REQUEST,
                "malformed",
                "Content-Type is application/protobuf or application/json".into(),
            ));
        }
    };
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        TwirpError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "malformed",
            format!("body over {BODY_LIMIT} bytes"),
        )
    })?;
    let sfu = state.signal.sfu.clone();
    let not_found = |what: &str| {
        TwirpError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    };
    match method {
        "ListRooms" => {
            let request: lk::ListRoomsRequest = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::List)?;
            let rooms = sfu
                .list_rooms()
                .await
                .into_iter()
                .filter(|r| request.names.is_empty() || request.names.contains(&r.name))
                .collect();
            Ok(encode(encoding, &lk::ListRoomsResponse { rooms }))
        }
        "DeleteRoom" => {
            let request: lk::DeleteRoomRequest = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Create)?;
            end(state, &request.room).await?;
            Ok(encode(encoding, &lk::DeleteRoomResponse {}))
        }
        "ListParticipants" => {
            let request: lk::ListParticipantsRequest = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Admin(&request.room))?;
            let participants = sfu.participants(request.room).await.unwrap_or_default();
            Ok(encode(
                encoding,
                &lk::ListParticipantsResponse { participants },
            ))
        }
        "GetParticipant" => {
            let request: lk::RoomParticipantIdentity = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Admin(&request.room))?;
            let found = sfu
                .participants(request.room)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.identity == request.identity)
                .ok_or_else(|| not_found("participant"))?;
            Ok(encode(encoding, &found))
        }
        "RemoveParticipant" => {
            let request: lk::RoomParticipantIdentity = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Admin(&request.room))?;
            let present = sfu
                .participants(request.room.clone())
                .await
                .unwrap_or_default()
                .iter()
                .any(|p| p.identity == request.identity);
            // In a cluster the room may live on another node: that node removes them
            // (the effect names it), and here only their live grant says they may be in.
            let present = present
                || (hosted_elsewhere(state, &request.room).await?
                    && has_live_grant(state, &request.room, &request.identity).await?);
            if !present {
                return Err(not_found("participant"));
            }
            remove(state, &request.room, &request.identity).await?;
            Ok(encode(encoding, &lk::RemoveParticipantResponse {}))
        }
        "MutePublishedTrack" => {
            let request: lk::MuteRoomTrackRequest = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Admin(&request.room))?;
            let track = sfu
                .mute_track(
                    request.room,
                    request.identity,
                    Some(request.track_sid),
                    None,
                    request.muted,
                )
                .await
                .ok_or_else(|| not_found("track"))?;
            Ok(encode(
                encoding,
                &lk::MuteRoomTrackResponse { track: Some(track) },
            ))
        }
        "UpdateParticipant" => {
            let request: lk::UpdateParticipantRequest = decode(encoding, &bytes)?;
            authorize(state, headers, Needs::Admin(&request.room))?;
            let change = crate::sfu::room::ParticipantChange {
                name: Some(request.name).filter(|n| !n.is_empty()),
                metadata: Some(request.metadata).filter(|m| !m.is_empty()),
                attributes: request.attributes,
                permission: request.permission,
            };
            let info = sfu
                .update_participant(request.room, request.identity, change)
                .await
                .ok_or_else(|| not_found("participant"))?;
            Ok(encode(encoding, &info))
        }
        _ => Err(TwirpError(
            StatusCode::NOT_FOUND,
            "bad_route",
            format!("livekit.RoomService/{method} is not served here"),
        )),
    }
}
