//! `GET /api/v1/meetings/{slug}/chat`: the meeting's recent chat for a page that has just
//! joined, so that a late joiner sees what was said before (in the meeting, and in the
//! Matrix thread, also while nobody was in). The caller proves it may be in the meeting
//! with the LiveKit access token the join endpoint gave it, checked with the SFU's keys.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::AppState;
use super::error::MatrixError;
use crate::auth::Bearer;
use crate::auth::token::can_join;
use crate::ids::MeetingSlug;
use crate::meeting::ChatMessage;
use crate::store::chat;

/// How many of the latest messages a joining page gets.
pub const HISTORY_LIMIT: i64 = 100;

/// One message of the history.
#[derive(Debug, Serialize)]
pub struct HistoryMessage {
    /// The SFU's message id (chat from the meeting) or the Matrix event id (chat from
    /// the room): the id the live copy of the same message carries.
    pub id: String,
    /// The author's display name.
    pub author: String,
    /// `meeting` or `matrix`.
    pub origin: &'static str,
    /// The sender's participant identity, for chat from the meeting.
    pub identity: Option<String>,
    /// The text as written (Markdown, rendered by the page).
    pub body: String,
    /// Milliseconds since the Unix epoch.
    pub sent_at: i64,
}

#[derive(Debug, Serialize)]
pub struct ChatHistory {
    /// Oldest first, at most [`HISTORY_LIMIT`].
    pub messages: Vec<HistoryMessage>,
}

impl From<ChatMessage> for HistoryMessage {
    fn from(message: ChatMessage) -> Self {
        Self {
            id: message.message_id,
            author: message.sender_name,
            origin: message.origin.as_str(),
            identity: message.sender_identity,
            body: message.body,
            sent_at: message.sent_at,
        }
    }
}

fn unknown_token(reason: impl std::fmt::Display) -> MatrixError {
    MatrixError::new(
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        format!("Invalid meeting access token: {reason}"),
    )
}

/// `Authorization: Bearer <token>`; none → 401 `M_MISSING_TOKEN`.
fn bearer(headers: &HeaderMap) -> Result<&str, MatrixError> {
    match crate::auth::bearer(headers) {
        Bearer::Absent => Err(MatrixError::missing_token()),
        Bearer::Token(token) if !token.is_empty() => Ok(token),
        Bearer::Token(_) | Bearer::Malformed => Err(unknown_token("expected `Bearer <token>`")),
    }
}

/// The history: 401 without a valid token, 404 for an unknown slug or an ended meeting
/// (as the join endpoint), 403 when the token is for another meeting's room.
pub async fn history(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ChatHistory>, MatrixError> {
    let token = bearer(&headers)?;
    let claims = state
        .signal
        .keys
        .verify(token, crate::clock::now_ms())
        .map_err(unknown_token)?;
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let meeting = super::join::joinable_meeting(&state, &slug).await?;
    if !can_join(&claims, meeting.id.as_str()) {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "This access token is for another meeting",
        ));
    }
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    let messages = chat::recent_for_meeting(&mut conn, &meeting.id, HISTORY_LIMIT)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    Ok(Json(ChatHistory {
        messages: messages.into_iter().map(HistoryMessage::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};

    use super::super::tests::{call, sfu_keys};
    use super::*;
    use crate::auth::token::Claims;
    use crate::ids::ParticipantIdentity;
    use crate::meeting::{ChatOrigin, Meeting, MeetingState};
    use crate::store::testing::both_dialects;
    use crate::store::{Store, meetings};

    async fn stored_meeting(store: &Store, title: &str) -> Meeting {
        let meeting = Meeting::new(title, None, None, crate::clock::now_ms()).expect("valid");
        let mut conn = store.pool().acquire().await.expect("conn");
        meetings::create(&mut conn, &meeting).await.expect("create");
        meeting
    }

    fn token_for(room: &str) -> String {
        let identity = ParticipantIdentity::for_join(None);
        sfu_keys().issue(&Claims::participant(
            &identity,
            "Zoé",
            room,
            crate::clock::now_ms(),
            600,
        ))
    }

    fn get(slug: &str, token: Option<&str>) -> Request<Body> {
        let mut request = Request::get(format!("/api/v1/meetings/{slug}/chat"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Body::empty()).expect("request")
    }

    both_dialects!(
        the_history_is_the_latest_chat_in_order,
        |store: Store| async move {
            let meeting = stored_meeting(&store, "Point hebdo").await;
            let other = stored_meeting(&store, "Autre").await;
            let mut conn = store.pool().acquire().await.expect("conn");
            // 105 messages: the history holds the latest 100, oldest first.
            for i in 0..105_i64 {
                let from_matrix = i % 2 == 0;
                let message = ChatMessage {
                    meeting_id: meeting.id.clone(),
                    message_id: if from_matrix {
                        format!("$event{i:03}")
                    } else {
                        format!("stream{i:03}")
                    },
                    origin: if from_matrix {
                        ChatOrigin::Matrix
                    } else {
                        ChatOrigin::Meeting
                    },
                    sender_identity: (!from_matrix).then(|| "b-1-x".to_owned()),
                    sender_name: if from_matrix { "Alice" } else { "Zoé" }.into(),
                    matrix_user_id: from_matrix.then(|| "@alice:localhost".to_owned()),
                    body: format!("message **{i}**"),
                    sent_at: 1_000 + i,
                };
                chat::insert(&mut conn, &message).await.expect("insert");
            }
            drop(conn);
            let token = token_for(meeting.id.as_str());
            let (status, json) = call(&store, get(meeting.slug.expose(), Some(&token))).await;
            assert_eq!(status, StatusCode::OK, "{json}");
            let messages = json["messages"].as_array().expect("messages");
            assert_eq!(messages.len(), 100);
            assert_eq!(messages[0]["id"], "stream005");
            assert_eq!(messages[0]["origin"], "meeting");
            assert_eq!(messages[0]["author"], "Zoé");
            assert_eq!(messages[0]["identity"], "b-1-x");
            assert_eq!(messages[0]["body"], "message **5**");
            assert_eq!(messages[0]["sent_at"], 1_005);
            assert_eq!(messages[99]["id"], "$event104");
            assert_eq!(messages[99]["origin"], "matrix");
            assert_eq!(messages[99]["author"], "Alice");
            assert!(messages[99]["identity"].is_null());
            let times: Vec<i64> = messages
                .iter()
                .map(|m| m["sent_at"].as_i64().expect("time"))
                .collect();
            assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

            // Another meeting's history is empty, not this one's.
            let (status, json) = call(
                &store,
                get(other.slug.expose(), Some(&token_for(other.id.as_str()))),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(json["messages"], serde_json::json!([]));
        }
    );

    both_dialects!(
        the_history_needs_a_token_for_that_meeting,
        |store: Store| async move {
            let meeting = stored_meeting(&store, "Point hebdo").await;
            let other = stored_meeting(&store, "Autre").await;
            let slug = meeting.slug.expose();
            let expired = sfu_keys().issue(&Claims::participant(
                &ParticipantIdentity::for_join(None),
                "Zoé",
                meeting.id.as_str(),
                crate::clock::now_ms() - 3_600_000,
                600,
            ));
            let foreign = crate::auth::token::issue(
                "test-key",
                "another-secret-0123456789abcdef01",
                &Claims::participant(
                    &ParticipantIdentity::for_join(None),
                    "Zoé",
                    meeting.id.as_str(),
                    crate::clock::now_ms(),
                    600,
                ),
            );
            let cases: [(Option<&str>, StatusCode, &str); 5] = [
                (None, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
                (Some("nope"), StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
                (Some(&expired), StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
                (Some(&foreign), StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
                (
                    Some(&token_for(other.id.as_str())),
                    StatusCode::FORBIDDEN,
                    "M_FORBIDDEN",
                ),
            ];
            for (token, status, errcode) in cases {
                let (got, json) = call(&store, get(slug, token)).await;
                assert_eq!(
                    (got, json["errcode"].as_str()),
                    (status, Some(errcode)),
                    "{token:?}"
                );
                assert!(json["error"].is_string());
            }
            // Unknown slugs and ended meetings: not found, as for the join.
            let token = token_for(meeting.id.as_str());
            for slug in [
                MeetingSlug::generate().expose().to_owned(),
                "x".to_owned(),
                meeting.id.as_str().to_owned(),
            ] {
                let (status, json) = call(&store, get(&slug, Some(&token))).await;
                assert_eq!(
                    (status, json["errcode"].as_str()),
                    (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
                    "{slug}"
                );
            }
            let mut conn = store.pool().acquire().await.expect("conn");
            meetings::set_state(&mut conn, &meeting.id, MeetingState::Ended, 2)
                .await
                .expect("end");
            drop(conn);
            let (status, json) = call(&store, get(slug, Some(&token))).await;
            assert_eq!(
                (status, json["errcode"].as_str()),
                (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
            );
        }
    );
}
