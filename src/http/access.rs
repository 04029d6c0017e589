//! Who may join, from the page's side: identity codes
//! (`POST|GET /api/v1/meetings/{slug}/verification[/{id}]`) and the lobby
//! (`GET /api/v1/meetings/{slug}/lobby/{id}`). The join endpoint ([`super::join`]) decides
//! with [`crate::meeting::access::decide`] from what the homeserver says
//! ([`crate::auth::membership::RoomView`]); everything a page holds (a verification id, a
//! lobby id) is bound to its browser's signed cookie, so a leaked id is of no use
//! elsewhere.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::error::MatrixError;
use super::join::{JoinResponse, MeetingSummary, joinable_meeting};
use crate::auth::browser::BrowserIds;
use crate::auth::token::Claims;
use crate::bridge::access::{CODE_LIFETIME_MS, VERIFIED_LIFETIME_MS};
use crate::clock::now_ms;
use crate::ids::{BrowserId, MeetingSlug, ParticipantIdentity};
use crate::meeting::Meeting;
use crate::meeting::access::{Via, new_code};
use crate::store::access::{self as stored, Grant, LobbyState, Verification, VerificationState};

/// Longest a long-poll waits before answering with the unchanged state.
pub const LONG_POLL_MAX_SECS: u64 = 25;

/// The browser a request comes from: its id, the cookie to (re)set, and its pseudonym
/// (what is stored, and what identities start with).
pub(super) struct Browser {
    pub cookie: String,
    pub pseudonym: BrowserId,
    pub secure: bool,
}

impl Browser {
    pub(super) fn of(state: &AppState, headers: &HeaderMap) -> Self {
        let ids = BrowserIds::from_secret(&state.hs_token);
        let known = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(BrowserIds::cookie_in)
            .find_map(|cookie| ids.verify(cookie).map(|id| (id, cookie.to_owned())));
        let (id, cookie) = known.unwrap_or_else(|| ids.issue());
        Self {
            cookie,
            pseudonym: ids.pseudonym(&id),
            secure: state.public_ws_url.starts_with("wss://"),
        }
    }

    pub(super) fn set_cookie(&self) -> [(header::HeaderName, String); 1] {
        [(
            header::SET_COOKIE,
            BrowserIds::set_cookie(&self.cookie, self.secure),
        )]
    }
}

/// `?wait=<seconds>`: long-poll until the state changes, at most [`LONG_POLL_MAX_SECS`].
/// Read from the raw query so that any bad value gets a Matrix-shaped 400.
fn wait_seconds(query: Option<&str>) -> Result<Option<u64>, MatrixError> {
    let bad = || {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!("wait is one number of seconds from 0 to {LONG_POLL_MAX_SECS}"),
        )
    };
    let values: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "wait")
        .map(|(_, v)| v.into_owned())
        .collect();
    match values.as_slice() {
        [] => Ok(None),
        [one] if one.is_empty() => Ok(None),
        [one] => one.parse().map(Some).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[derive(Debug, Serialize)]
pub struct VerificationCreated {
    pub id: String,
    pub code: String,
    /// Seconds the code may wait to be sent and confirmed.
    pub expires_in: i64,
    /// What to send in the room (French command; `join <code>` works too).
    pub command: String,
}

/// `POST /api/v1/meetings/{slug}/verification`: a code this page shows, for its person
/// to send the bot from Matrix.
pub async fn create_verification(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let meeting = joinable_meeting(&state, &slug).await?;
    if meeting.matrix_room_id.is_none() {
        return Err(MatrixError::new(
            StatusCode::CONFLICT,
            "M_FORBIDDEN",
            "This meeting has no Matrix room: anyone with the link joins it",
        ));
    }
    let browser = Browser::of(&state, &headers);
    let now = now_ms();
    let verification = Verification {
        id: crate::ids::random_base32(24),
        meeting_id: meeting.id.as_str().to_owned(),
        code: new_code(),
        browser: browser.pseudonym.as_str().to_owned(),
        state: VerificationState::Pending,
        user_id: None,
        prompt_outbound_id: None,
        created_at: now,
        expires_at: now + CODE_LIFETIME_MS,
    };
    let mut conn = state.conn().await?;
    stored::create_verification(&mut conn, &verification)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "issued").increment(1);
    tracing::info!(meeting = %meeting.id, "identity code issued");
    Ok((
        StatusCode::CREATED,
        browser.set_cookie(),
        Json(VerificationCreated {
            command: format!("!visio entrer {}", verification.code),
            id: verification.id,
            code: verification.code,
            expires_in: CODE_LIFETIME_MS / 1000,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VerificationStatus {
    /// `pending`, `confirming`, `verified` or `expired` (a used code reads `expired`).
    pub state: &'static str,
    /// The Matrix user the page is bound to, once verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

fn verification_status(v: &Verification, now: i64) -> VerificationStatus {
    let state = match v.state {
        VerificationState::Pending | VerificationState::Confirming if v.expired(now) => "expired",
        VerificationState::Pending => "pending",
        VerificationState::Confirming => "confirming",
        VerificationState::Verified if now < v.created_at + VERIFIED_LIFETIME_MS => "verified",
        VerificationState::Verified | VerificationState::Used => "expired",
    };
    VerificationStatus {
        state,
        user_id: (state == "verified").then(|| v.user_id.clone()).flatten(),
    }
}

/// Reads `read` until `changed` says its answer moved on, or the wait is over; wakes
/// on every committed decision and at least every second.
async fn long_poll<T, F, Fut>(
    state: &AppState,
    wait: Option<u64>,
    mut read: F,
) -> Result<T, MatrixError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(T, bool), MatrixError>>,
{
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(wait.unwrap_or(0).min(LONG_POLL_MAX_SECS));
    let changed = state.bot_api.bridge.access.changed.clone();
    loop {
        let notified = changed.notified();
        let (answer, settled) = read().await?;
        if settled || tokio::time::Instant::now() >= deadline {
            return Ok(answer);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `GET /api/v1/meetings/{slug}/verification/{id}`: where the code stands; only for the
/// browser that asked for it.
pub async fn verification(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<VerificationStatus>, MatrixError> {
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let wait = wait_seconds(query.as_deref())?;
    let meeting = meeting_by_slug(&state, &slug).await?;
    let browser = Browser::of(&state, &headers);
    let first = read_verification(&state, &meeting, &id, &browser).await?;
    let initial = verification_status(&first, now_ms()).state;
    let status = long_poll(&state, wait, || async {
        let v = read_verification(&state, &meeting, &id, &browser).await?;
        let status = verification_status(&v, now_ms());
        let settled = status.state != initial || matches!(status.state, "verified" | "expired");
        Ok((status, settled))
    })
    .await?;
    Ok(Json(status))
}

async fn read_verification(
    state: &AppState,
    meeting: &Meeting,
    id: &str,
    browser: &Browser,
) -> Result<Verification, MatrixError> {
    let mut conn = state.conn().await?;
    stored::verification_by_id(&mut conn, id)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .filter(|v| v.meeting_id == meeting.id.as_str() && v.browser == browser.pseudonym.as_str())
        .ok_or_else(|| MatrixError::not_found("Verification"))
}

/// A meeting by slug, ended or not (a page waiting in the lobby must learn it ended).
async fn meeting_by_slug(state: &AppState, slug: &MeetingSlug) -> Result<Meeting, MatrixError> {
    let mut conn = state.conn().await?;
    crate::store::meetings::get_by_slug(&mut conn, slug)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .ok_or_else(|| MatrixError::not_found("Meeting"))
}

/// Takes a verified code for a join, once: the Matrix user it identifies.
pub(super) async fn use_verification(
    state: &AppState,
    meeting: &Meeting,
    id: &str,
    browser: &Browser,
) -> Result<String, MatrixError> {
    let v = read_verification(state, meeting, id, browser).await?;
    let refused =
        |why: &str| MatrixError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", why.to_owned());
    if verification_status(&v, now_ms()).state != "verified" {
        return Err(refused(
            "This verification is not confirmed, or no longer valid",
        ));
    }
    let mut conn = state.conn().await?;
    let taken = stored::move_verification(
        &mut conn,
        &v.id,
        VerificationState::Verified,
        VerificationState::Used,
        None,
        None,
    )
    .await
    .map_err(|e| MatrixError::internal(&e))?;
    match (taken, v.user_id) {
        (true, Some(user)) => Ok(user),
        _ => Err(refused("This verification was used already")),
    }
}

#[derive(Debug, Serialize)]
pub struct LobbyStatus {
    /// `waiting`, `admitted`, `refused` or `expired`; `ended` when the meeting ended.
    pub state: &'static str,
    /// The number moderators admit this guest by.
    pub number: i64,
    /// Once admitted: what `room.connect(url, token)` needs.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinResponse>,
}

/// `GET /api/v1/meetings/{slug}/lobby/{id}` (`?wait=25` to long-poll): a waiting
/// guest's state, and their token once admitted.
pub async fn lobby(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let wait = wait_seconds(query.as_deref())?;
    let browser = Browser::of(&state, &headers);
    let request = long_poll(&state, wait, || async {
        let meeting = meeting_by_slug(&state, &slug).await?;
        let mut conn = state.conn().await?;
        let request = stored::lobby_request_by_id(&mut conn, &id)
            .await
            .map_err(|e| MatrixError::internal(&e))?
            .filter(|r| {
                r.meeting_id == meeting.id.as_str() && r.browser == browser.pseudonym.as_str()
            })
            .ok_or_else(|| MatrixError::not_found("Lobby request"))?;
        if request.state == LobbyState::Waiting
            && now_ms() - request.created_at >= crate::bridge::access::LOBBY_WAIT_MS
        {
            // Expiring it edits the notice: done by the bridge's rule, in one place.
            let _ = crate::bridge::access::waiting_guests(&mut conn, &meeting, now_ms()).await;
            crate::bridge::access::refresh_lobby_notice(&state.bot_api.bridge, &mut conn, &meeting)
                .await
                .map_err(|e| MatrixError::internal(&e))?;
            state.bot_api.outbound_wake.notify_one();
            let mut expired = request;
            expired.state = LobbyState::Expired;
            return Ok(((meeting, expired), true));
        }
        let settled = request.state != LobbyState::Waiting || !meeting.is_joinable();
        Ok(((meeting, request), settled))
    })
    .await?;
    let (meeting, request) = request;
    let state_name = match request.state {
        _ if !meeting.is_joinable() => "ended",
        other => other.as_str(),
    };
    let join = if state_name == "admitted" {
        let mut conn = state.conn().await?;
        let revoked = stored::revocation(&mut conn, meeting.id.as_str(), &request.identity)
            .await
            .map_err(|e| MatrixError::internal(&e))?;
        // One connection at a time: SQLite's pool may hold only one.
        drop(conn);
        if revoked.is_some() {
            return Ok(Json(LobbyStatus {
                state: "refused",
                number: request.number,
                join: None,
            })
            .into_response());
        }
        let identity =
            ParticipantIdentity::parse(&request.identity).map_err(|e| MatrixError::internal(&e))?;
        Some(
            issue_join(
                &state,
                &meeting,
                &identity,
                &request.name,
                request.user_id.as_deref(),
                Via::Admitted,
                false,
            )
            .await?,
        )
    } else {
        None
    };
    Ok((
        browser.set_cookie(),
        Json(LobbyStatus {
            state: state_name,
            number: request.number,
            join,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/meetings/{slug}/lobby/{id}`: the guest stops waiting; the notice
/// says they left. 204, also when they were no longer waiting.
pub async fn leave_lobby(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let meeting = meeting_by_slug(&state, &slug).await?;
    let browser = Browser::of(&state, &headers);
    let mut tx = state.begin().await?;
    let request = stored::lobby_request_by_id(&mut tx, &id)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .filter(|r| r.meeting_id == meeting.id.as_str() && r.browser == browser.pseudonym.as_str())
        .ok_or_else(|| MatrixError::not_found("Lobby request"))?;
    let left = stored::decide_lobby(&mut tx, &request.id, LobbyState::Left, None, None, now_ms())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    if left {
        crate::bridge::access::refresh_lobby_notice(&state.bot_api.bridge, &mut tx, &meeting)
            .await
            .map_err(|e| MatrixError::internal(&e))?;
    }
    tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
    if left {
        state.bot_api.outbound_wake.notify_one();
        tracing::info!(meeting = %meeting.id, number = request.number, "guest left the lobby");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Issues a join token for `identity` (10 minutes to connect) and records the grant,
/// so that a removal can reach it.
pub(super) async fn issue_join(
    state: &AppState,
    meeting: &Meeting,
    identity: &ParticipantIdentity,
    name: &str,
    user_id: Option<&str>,
    via: Via,
    moderator: bool,
) -> Result<JoinResponse, MatrixError> {
    let now = now_ms();
    let mut claims = Claims::participant(
        identity,
        name,
        meeting.id.as_str(),
        now,
        state.bot_api.bridge.access.join_token_ttl_secs,
    );
    if let Some(user) = user_id {
        claims
            .attributes
            .insert(MATRIX_ID_ATTRIBUTE.to_owned(), user.to_owned());
    }
    claims
        .attributes
        .insert(ACCESS_ATTRIBUTE.to_owned(), via.as_str().to_owned());
    if moderator {
        // LiveKit's own mark of a moderator: the page and SDKs may call the room
        // service for this room with the token.
        claims.video.room_admin = true;
        claims
            .attributes
            .insert(MODERATOR_ATTRIBUTE.to_owned(), "true".to_owned());
    }
    let url = match &state.cluster_node {
        None => state.public_ws_url.clone(),
        Some(_) => super::join::ws_base_url(&placed_node(state, meeting).await?.node_url),
    };
    let mut conn = state.conn().await?;
    stored::record_grant(
        &mut conn,
        &Grant {
            meeting_id: meeting.id.as_str().to_owned(),
            identity: identity.as_str().to_owned(),
            user_id: user_id.map(str::to_owned),
            name: name.to_owned(),
            via,
            issued_at: now,
            revoked_at: None,
        },
    )
    .await
    .map_err(|e| MatrixError::internal(&e))?;
    let token = state.signal.keys.issue(&claims);
    metrics::counter!("tchap_visio_join_tokens_issued_total").increment(1);
    tracing::info!(meeting = %meeting.id, %identity, via = via.as_str(), identified = user_id.is_some(), "join token issued");
    Ok(JoinResponse {
        url,
        token,
        identity: identity.as_str().to_owned(),
        meeting: MeetingSummary {
            id: meeting.id.as_str().to_owned(),
            title: meeting.title.clone(),
        },
        user_id: user_id.map(str::to_owned),
    })
}

/// The node the meeting's room is placed on (placing it now at its first join), or 503
/// while no node is alive.
async fn placed_node(
    state: &AppState,
    meeting: &Meeting,
) -> Result<crate::store::placements::Placement, MatrixError> {
    match state.store.place_room(meeting.id.as_str()).await {
        Ok(Some(placement)) => Ok(placement),
        Ok(None) => {
            tracing::warn!(meeting = %meeting.id, "no live node to place the meeting on");
            Err(MatrixError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNAVAILABLE",
                match state.bot_api.bridge.lang {
                    crate::config::Language::Fr => {
                        "Aucun serveur de visio n’est disponible : réessayez dans un instant."
                    }
                    crate::config::Language::En => {
                        "No video server is available: try again in a moment."
                    }
                },
            ))
        }
        Err(e) => Err(MatrixError::internal(&e)),
    }
}

/// Participant attribute holding an identified member's Matrix id (reserved: a page
/// cannot set it on itself).
pub const MATRIX_ID_ATTRIBUTE: &str = "tchap.matrix_id";
/// Participant attribute saying how someone got in (`member`, `admitted`, `public`).
pub const ACCESS_ATTRIBUTE: &str = "tchap.access";
/// Participant attribute marking a moderator (`"true"`): the page shows it the controls.
pub const MODERATOR_ATTRIBUTE: &str = "tchap.moderator";

#[cfg(test)]
mod tests {
    use super::*;

    fn verification(state: VerificationState, created_at: i64) -> Verification {
        Verification {
            id: "v".into(),
            meeting_id: "m".into(),
            code: "ABCDEFGH".into(),
            browser: "b".into(),
            state,
            user_id: Some("@alice:hs".into()),
            prompt_outbound_id: None,
            created_at,
            expires_at: created_at + CODE_LIFETIME_MS,
        }
    }

    #[test]
    fn a_code_reads_verified_only_while_usable_and_names_its_user_only_then() {
        use VerificationState::*;
        let at = |state, now| verification_status(&verification(state, 0), now);
        assert_eq!(at(Pending, 1).state, "pending");
        assert_eq!(at(Pending, CODE_LIFETIME_MS).state, "expired");
        assert_eq!(at(Confirming, 1).state, "confirming");
        assert_eq!(at(Confirming, 1).user_id, None);
        assert_eq!(at(Confirming, CODE_LIFETIME_MS).state, "expired");
        assert_eq!(
            at(Verified, CODE_LIFETIME_MS + 1),
            VerificationStatus {
                state: "verified",
                user_id: Some("@alice:hs".into())
            }
        );
        assert_eq!(at(Verified, VERIFIED_LIFETIME_MS).state, "expired");
        assert_eq!(at(Used, 1).state, "expired");
    }
}
