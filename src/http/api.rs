//! The bot API under `/api/v1`: bots (minutes, transcription, calendar) holding a token
//! from `tchap-visio api-token create` list a room's meetings, read one meeting
//! (attendance, chat), and post a Markdown summary into its thread. Meetings are
//! addressed by their public id, never by the slug of their link, and no answer holds
//! a slug. Every call is checked against the token's scope (the meeting's Matrix room)
//! and, for writes, its read-only flag: 403 `M_FORBIDDEN` otherwise. Every read is
//! logged at INFO with the token's name and id (never the token). Also serves the
//! OpenAPI document of the HTTP API.
//!
//! `GET /api/v1/meetings/{key}` is shared with the meeting page: with an
//! `Authorization` header it is the bot API (`key` is the meeting id), without one it
//! is the page's lookup by slug ([`super::join::info`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::AppState;
use super::appservice::{parse_json_body, read_body};
use super::error::MatrixError;
use crate::auth::Bearer;
use crate::auth::api_token::{self, TokenScope};
use crate::bridge::BridgeContext;
use crate::i18n;
use crate::ids::MeetingId;
use crate::meeting::{self, Attendee, ChatMessage, Meeting, validate_display_name};
use crate::store::{self, Connection, api_tokens, meetings};

/// Largest summary request body (the Markdown and the author's name).
pub const SUMMARY_BODY_LIMIT: usize = 64 * 1024;
/// Largest summary once rendered (body + formatted body), so the event stays well under
/// the 64 KiB a Matrix event may weigh.
pub const SUMMARY_RENDERED_LIMIT: usize = 48 * 1024;

/// The OpenAPI document of the HTTP API, checked in and tested against the router.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// What the bot API needs beyond the common state.
#[derive(Clone)]
pub struct BotApiContext {
    /// Wakes the outbound worker once a summary is queued.
    pub outbound_wake: Arc<Notify>,
    /// Posts summaries (ghosts, thread); its language names the default author.
    pub bridge: Arc<BridgeContext>,
}

/// A caller that presented an active bot API token. Its name and public id are the
/// only things about it that are ever logged.
#[derive(Debug, Clone)]
pub struct BotToken {
    pub name: String,
    pub id: String,
    pub scope: TokenScope,
    pub read_only: bool,
}

impl BotToken {
    /// 403 `M_FORBIDDEN` unless a meeting in `room` is within the token's scope.
    fn check_scope(&self, room: Option<&str>) -> Result<(), MatrixError> {
        if self.scope.allows(room) {
            return Ok(());
        }
        metrics::counter!("tchap_visio_bot_api_refused_total", "reason" => "scope").increment(1);
        tracing::warn!(token_name = %self.name, token_id = %self.id, room = room.unwrap_or("-"), "bot API: room outside the token's scope");
        Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "this token does not reach this room (see its scope: api-token list)",
        ))
    }

    /// 403 `M_FORBIDDEN` for a read-only token.
    fn check_write(&self) -> Result<(), MatrixError> {
        if !self.read_only {
            return Ok(());
        }
        metrics::counter!("tchap_visio_bot_api_refused_total", "reason" => "read_only")
            .increment(1);
        tracing::warn!(token_name = %self.name, token_id = %self.id, "bot API: write refused to a read-only token");
        Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "this token is read-only",
        ))
    }
}

fn unknown_token() -> MatrixError {
    MatrixError::new(
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "Unrecognised access token",
    )
}

async fn connection(
    state: &AppState,
) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, MatrixError> {
    state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| MatrixError::internal(&e))
}

/// Checks `Authorization: Bearer <token>` against the stored tokens: none → 401
/// `M_MISSING_TOKEN`; unknown, revoked or malformed → 401 `M_UNKNOWN_TOKEN`.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<BotToken, MatrixError> {
    let presented = match crate::auth::bearer(headers) {
        Bearer::Absent => return Err(MatrixError::missing_token()),
        Bearer::Malformed => return Err(unknown_token()),
        Bearer::Token(token) => token,
    };
    let mut conn = connection(state).await?;
    let tokens = api_tokens::active(&mut conn)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    let found = api_token::find(presented, &tokens).ok_or_else(|| {
        metrics::counter!("tchap_visio_bot_api_refused_total", "reason" => "token").increment(1);
        unknown_token()
    })?;
    let scope = TokenScope::from_stored(&found.scope).unwrap_or_else(|| {
        // A row edited by hand: the token reaches nothing rather than everything.
        tracing::error!(token_name = %found.name, token_id = %found.id, "the token's stored scope does not parse: it reaches no room");
        TokenScope::default()
    });
    let token = BotToken {
        name: found.name.clone(),
        id: found.id.clone(),
        scope,
        read_only: found.read_only,
    };
    if let Err(e) = api_tokens::touch(&mut conn, &token.name, crate::clock::now_ms()).await {
        tracing::warn!(token_name = %token.name, error = %e, "cannot record the token's use");
    }
    Ok(token)
}

/// Warns, at start, about each token made before tokens had scopes: they still reach
/// every room and may write, until replaced by one made with a scope.
pub async fn warn_about_legacy_tokens(store: &store::Store) -> Result<(), store::StoreError> {
    let mut conn = store.pool().acquire().await?;
    for token in api_tokens::active(&mut conn).await? {
        if TokenScope::from_stored(&token.scope).is_some_and(|s| s.legacy) {
            tracing::warn!(
                token_name = %token.name,
                token_id = %token.id,
                "bot API token made before scopes: it reaches every room and may post; replace it with `api-token revoke --name {0}` then `api-token create --name {0} --room <room id>` (or --server, --all-rooms, --read-only)",
                token.name
            );
        }
    }
    Ok(())
}

/// The longest room id (bytes), as the Matrix spec allows.
pub const ROOM_ID_MAX_BYTES: usize = 255;

/// A room id as this API accepts it: `!`, then 1 to 254 printable ASCII characters
/// (the OpenAPI document's pattern `^![!-~]{1,254}$`, which every Matrix room id fits).
fn parse_room_id(raw: &str) -> Option<ruma::OwnedRoomId> {
    let shaped = raw.len() >= 2
        && raw.len() <= ROOM_ID_MAX_BYTES
        && raw.starts_with('!')
        && raw.bytes().all(|b| b.is_ascii_graphic());
    shaped.then(|| ruma::RoomId::parse(raw).ok()).flatten()
}

impl FromRequestParts<AppState> for BotToken {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, MatrixError> {
        authenticate(state, &parts.headers).await
    }
}

/// A meeting as the bot API shows it: no slug, no link.
#[derive(Debug, Serialize)]
pub struct MeetingView {
    pub id: String,
    pub title: String,
    pub room_id: Option<String>,
    pub state: &'static str,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub peak_participants: i64,
    /// Event id of the link notice, the root of the meeting's thread.
    pub thread_root_event_id: Option<String>,
}

impl From<&Meeting> for MeetingView {
    fn from(m: &Meeting) -> Self {
        Self {
            id: m.id.as_str().to_owned(),
            title: m.title.clone(),
            room_id: m.matrix_room_id.clone(),
            state: m.state.as_str(),
            created_at: m.created_at,
            started_at: m.started_at,
            ended_at: m.ended_at,
            peak_participants: m.peak_participants,
            thread_root_event_id: m.thread_root_event_id.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct IntervalView {
    pub joined_at: i64,
    pub left_at: i64,
}

#[derive(Debug, Serialize)]
pub struct AttendeeView {
    pub name: String,
    pub matrix_user_id: Option<String>,
    pub present_ms: i64,
    pub first_joined_at: i64,
    pub intervals: Vec<IntervalView>,
}

impl From<Attendee> for AttendeeView {
    fn from(a: Attendee) -> Self {
        Self {
            name: a.display_name,
            matrix_user_id: a.matrix_user_id,
            present_ms: a.present_ms,
            first_joined_at: a.first_joined_at,
            intervals: a
                .intervals
                .into_iter()
                .map(|(joined_at, left_at)| IntervalView { joined_at, left_at })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ChatView {
    pub id: String,
    /// `meeting` (written in the meeting) or `matrix` (from the room).
    pub origin: &'static str,
    pub sender_name: String,
    pub matrix_user_id: Option<String>,
    pub body: String,
    pub sent_at: i64,
}

impl From<ChatMessage> for ChatView {
    fn from(c: ChatMessage) -> Self {
        Self {
            id: c.message_id,
            origin: c.origin.as_str(),
            sender_name: c.sender_name,
            matrix_user_id: c.matrix_user_id,
            body: c.body,
            sent_at: c.sent_at,
        }
    }
}

/// One meeting with who came and what was said.
#[derive(Debug, Serialize)]
pub struct MeetingDetail {
    #[serde(flatten)]
    pub meeting: MeetingView,
    pub attendance: Vec<AttendeeView>,
    pub chat: Vec<ChatView>,
}

#[derive(Debug, Serialize)]
pub struct MeetingList {
    pub meetings: Vec<MeetingView>,
}

/// `GET /api/v1/rooms/{room_id}/meetings`: the room's meetings, newest first.
pub async fn list_room_meetings(
    token: BotToken,
    State(state): State<AppState>,
    Path(room_id): Path<String>,
) -> Result<Json<MeetingList>, MatrixError> {
    let room_id = parse_room_id(&room_id).ok_or_else(|| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "not a room id like !abc:example.org (percent-encode it in the path)",
        )
    })?;
    token.check_scope(Some(room_id.as_str()))?;
    let mut conn = connection(&state).await?;
    let listed = meetings::list_by_room(&mut conn, room_id.as_str())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    tracing::info!(token_name = %token.name, token_id = %token.id, room = %room_id, count = listed.len(), "bot API read: a room's meetings listed");
    Ok(Json(MeetingList {
        meetings: listed.iter().map(MeetingView::from).collect(),
    }))
}

/// `GET /api/v1/meetings/{key}`: the bot API with a bearer token, else the page's info.
pub async fn get_meeting(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    if crate::auth::bearer(&headers) == Bearer::Absent {
        return super::join::info(State(state), Path(key))
            .await
            .into_response();
    }
    bot_get_meeting(&state, &headers, &key)
        .await
        .into_response()
}

async fn bot_get_meeting(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
) -> Result<Json<MeetingDetail>, MatrixError> {
    let token = authenticate(state, headers).await?;
    let mut conn = connection(state).await?;
    let meeting = meeting_by_id(&mut conn, key).await?;
    token.check_scope(meeting.matrix_room_id.as_deref())?;
    let sessions = store::sessions::list_for_meeting(&mut conn, &meeting.id)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    let chat = store::chat::list_for_meeting(&mut conn, &meeting.id)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    let attendance: Vec<AttendeeView> = meeting::attendance(&sessions, crate::clock::now_ms())
        .into_iter()
        .map(AttendeeView::from)
        .collect();
    tracing::info!(
        token_name = %token.name,
        token_id = %token.id,
        meeting = %meeting.id,
        attendees = attendance.len(),
        chat_messages = chat.len(),
        "bot API read: a meeting with its attendance and chat"
    );
    Ok(Json(MeetingDetail {
        meeting: MeetingView::from(&meeting),
        attendance,
        chat: chat.into_iter().map(ChatView::from).collect(),
    }))
}

/// The meeting with this public id; 404 for anything else (a slug included).
async fn meeting_by_id(conn: &mut Connection, key: &str) -> Result<Meeting, MatrixError> {
    let id = MeetingId::parse(key).map_err(|_| MatrixError::not_found("Meeting"))?;
    meetings::get_by_id(conn, &id)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .ok_or_else(|| MatrixError::not_found("Meeting"))
}

/// What a bot posts.
#[derive(Debug, Deserialize)]
pub struct SummaryRequest {
    /// The summary, in Markdown (CommonMark with tables, strikethrough and task lists).
    pub markdown: String,
    /// Display name of the ghost that posts it; "Compte-rendu" (or "Meeting notes"
    /// in English) by default.
    #[serde(default)]
    pub author: Option<String>,
}

/// `POST /api/v1/meetings/{id}/summary`: the Markdown, sanitised, posted as a notice in
/// the meeting's thread by the ghost of this token and `author`, shown as a bot
/// (« Compte-rendu (bot) »). Answers 202 once queued in the outbound queue (sent as soon
/// as the homeserver takes it, retried otherwise).
pub async fn post_summary(
    token: BotToken,
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), MatrixError> {
    token.check_write()?;
    let bytes = read_body(&headers, body, SUMMARY_BODY_LIMIT).await?;
    // Scope before content: a token learns nothing about a room it does not reach.
    let meeting = {
        let mut conn = connection(&state).await?;
        meeting_by_id(&mut conn, &key).await?
    };
    token.check_scope(meeting.matrix_room_id.as_deref())?;
    let request: SummaryRequest = parse_json_body(&bytes, "{markdown, author}")?;
    if request.markdown.trim().is_empty() {
        return Err(MatrixError::bad_json("`markdown` is empty"));
    }
    let author = match request.author.as_deref() {
        Some(author) => validate_display_name(author)
            .map_err(|e| MatrixError::bad_json(format!("`author`: {e}")))?,
        None => i18n::SUMMARY_AUTHOR
            .get(state.bot_api.bridge.lang)
            .to_owned(),
    };
    let html = crate::markdown::to_matrix_html(&request.markdown);
    let plain = crate::markdown::to_plain(&request.markdown);
    if plain.is_empty() && html.is_empty() {
        return Err(MatrixError::bad_json(
            "the summary holds nothing once sanitised",
        ));
    }
    if plain.len() + html.len() > SUMMARY_RENDERED_LIMIT {
        return Err(MatrixError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!(
                "the rendered summary is over {SUMMARY_RENDERED_LIMIT} bytes, too long for one Matrix message"
            ),
        ));
    }

    let mut tx = state
        .store
        .begin()
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    if meeting.matrix_room_id.is_none() {
        return Err(MatrixError::new(
            StatusCode::CONFLICT,
            "M_BAD_STATE",
            "this meeting has no Matrix room to post into",
        ));
    }
    crate::bridge::post_summary(
        &mut tx,
        &state.bot_api.bridge,
        &meeting,
        &token.id,
        &author,
        plain,
        html,
    )
    .await
    .map_err(|e| MatrixError::internal(&e))?;
    tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
    state.bot_api.outbound_wake.notify_one();
    metrics::counter!("tchap_visio_bot_api_summaries_total").increment(1);
    tracing::info!(token_name = %token.name, token_id = %token.id, meeting = %meeting.id, %author, "bot API: summary queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "queued" })),
    ))
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
}

#[cfg(test)]
mod tests;
