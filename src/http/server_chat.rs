//! `POST /api/v1/rooms/{room}/chat`: chat into a meeting's room as the server
//! participant, for a tool holding a LiveKit token that grants `roomAdmin` on that room.
//! Answers in LiveKit's plain-text style, like the signalling routes beside it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use crate::auth::bearer;

/// Longest text accepted, in bytes.
const MAX_TEXT_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct ServerChat {
    /// Display name of the original author (a Matrix user, say).
    name: String,
    text: String,
}

/// The route, on the service's state.
pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/rooms/{room}/chat",
        axum::routing::post(server_chat),
    )
}

fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

async fn server_chat(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers).token() else {
        return refuse(StatusCode::UNAUTHORIZED, "missing access token");
    };
    let signal = &state.signal;
    let claims = match signal.keys.verify(token, crate::clock::now_ms()) {
        Ok(claims) => claims,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    if !claims.video.room_admin || claims.video.room != room {
        return refuse(
            StatusCode::FORBIDDEN,
            "the access token does not grant roomAdmin on this room",
        );
    }
    if let Err((status, text)) = signal.rooms.room_access(&room, "").await.refusal() {
        return refuse(status, text);
    }
    let chat: ServerChat = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"name\", \"text\"}}: {e}"),
            );
        }
    };
    if chat.text.is_empty() || chat.text.len() > MAX_TEXT_BYTES {
        return refuse(StatusCode::BAD_REQUEST, "text must be 1 to 16384 bytes");
    }
    // The author is shown to every participant: the same rules as any name, and marked
    // as coming from a server-side tool, so it cannot pass for a person in the meeting.
    let name = match crate::names::normalise_display_name(&chat.name, 48) {
        Ok(name) => format!("{name} (bot)"),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("name: {e}")),
    };
    if signal.sfu.inject_chat(room, None, name, chat.text).await {
        refuse(StatusCode::OK, "sent")
    } else {
        refuse(StatusCode::NOT_FOUND, "nobody is in this room")
    }
}
