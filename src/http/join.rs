//! `POST /api/v1/meetings/{slug}/join`: the meeting page trades the secret slug of its
//! link and a display name for the SFU's base URL and a LiveKit access token for the
//! meeting's room, within the meeting's access level (see [`super::access`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::access::{Browser, issue_join, use_verification};
use super::appservice::{parse_json_body, read_body};
use super::error::MatrixError;
use crate::ids::{MeetingId, MeetingSlug, ParticipantIdentity};
use crate::meeting::Meeting;
use crate::meeting::access::{Admission, Person, Refusal, Via, decide};
use crate::meeting::validate_display_name;
use crate::signal::{RoomAccess, RoomGate};
use crate::store::access::{self as stored, LobbyRequest, LobbyState};
use crate::store::{Store, meetings};

/// Largest join request body: a name and an id, with room to spare.
pub const JOIN_BODY_LIMIT: usize = 4096;

/// What the page sends. The stable per-browser id that merges a person's rejoins is not
/// in it: the server issues it in an HttpOnly cookie ([`crate::auth::browser`]), since a
/// value from the body could be anyone's.
#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    /// Display name shown to the others, 1 to 64 visible characters (an identified
    /// member is shown under their name in the room when it has one).
    pub name: String,
    /// A verification this browser had confirmed from Matrix (`!visio entrer <code>`).
    #[serde(default)]
    pub verification: Option<String>,
    /// Inside an Element-based client: the widget API's `get_openid` answer, checked at
    /// the user's homeserver instead of a code.
    #[serde(default)]
    pub openid_token: Option<crate::auth::openid::OpenIdToken>,
    /// The page lost its connection (its node died) and joins again: a browser that
    /// holds a live grant in the meeting gets the same access (member, admitted) without
    /// a new code or a new wait in the lobby.
    #[serde(default)]
    pub rejoin: bool,
}

/// What the page gets back: enough for `room.connect(url, token)` in livekit-client.
#[derive(Debug, Serialize)]
pub struct JoinResponse {
    /// Base `ws(s)://` URL of the SFU; LiveKit's SDKs append `/rtc` themselves.
    pub url: String,
    /// LiveKit-format access token for the meeting's room, valid 10 minutes to connect.
    pub token: String,
    /// The identity inside the token (unique to this join).
    pub identity: String,
    pub meeting: MeetingSummary,
    /// The Matrix user the participant is identified as, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MeetingSummary {
    pub id: String,
    pub title: String,
}

/// The WebSocket base URL the SFU is reached at, from `appservice.public_address`:
/// `http` becomes `ws`, `https` becomes `wss`, the path is kept without a final `/`.
pub fn ws_base_url(public_address: &str) -> String {
    let address = public_address.trim_end_matches('/');
    if let Some(rest) = address.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = address.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        // validate() only lets http(s) URLs through; keep anything else as given.
        address.to_owned()
    }
}

/// 403 `M_FORBIDDEN` with the reason the page shows (`reason`: a stable name).
fn refusal(refusal: Refusal, lang: crate::config::Language) -> Response {
    metrics::counter!("tchap_visio_joins_refused_total", "reason" => refusal.as_str()).increment(1);
    (
        StatusCode::FORBIDDEN,
        Json(serde_json::json!({
            "errcode": "M_FORBIDDEN",
            "error": refusal.message(lang),
            "reason": refusal.as_str(),
        })),
    )
        .into_response()
}

fn homeserver_unavailable(e: &dyn std::fmt::Display) -> MatrixError {
    tracing::warn!(error = %e, "cannot check room membership");
    MatrixError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "M_UNAVAILABLE",
        "The homeserver cannot be asked who is in the room right now; try again",
    )
}

/// `POST /api/v1/meetings/{slug}/join`: 200 with a token, 202 with a lobby request to
/// wait on, or 403 with the reason, by the meeting's access level and what the
/// homeserver says of the person (a verification names them; otherwise a guest).
pub async fn join(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, MatrixError> {
    // A slug of the wrong shape is as unknown as a well-formed one nobody issued.
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let bytes = read_body(&headers, body, JOIN_BODY_LIMIT).await?;
    let request: JoinRequest = parse_json_body(&bytes, "{name, verification?, openid_token?}")?;
    let name =
        validate_display_name(&request.name).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let meeting = joinable_meeting(&state, &slug).await?;
    let browser = Browser::of(&state, &headers);
    let bridge = &state.bot_api.bridge;
    let lang = bridge.lang;
    let identity = ParticipantIdentity::for_join(Some(&browser.pseudonym));
    let user_id = match (&request.verification, &request.openid_token) {
        (Some(id), _) => Some(use_verification(&state, &meeting, id, &browser).await?),
        (None, Some(token)) => Some(openid_user(&state, token).await?),
        (None, None) => None,
    };
    {
        let mut conn = state.conn().await?;
        let removed = stored::removed_by_moderator(
            &mut conn,
            meeting.id.as_str(),
            user_id.as_deref(),
            browser.pseudonym.as_str(),
        )
        .await
        .map_err(|e| MatrixError::internal(&e))?;
        if removed {
            return Ok(refusal(Refusal::Removed, lang));
        }
    }
    if request.rejoin
        && user_id.is_none()
        && let Some(joined) = rejoin(&state, &meeting, &browser, &identity).await?
    {
        return Ok((browser.set_cookie(), Json(joined)).into_response());
    }
    let Some(room) = meeting.matrix_room_id.clone() else {
        // A meeting an admin made has no room to be a member of: its link is the key.
        let joined =
            issue_join(&state, &meeting, &identity, &name, None, Via::Public, false).await?;
        return Ok((browser.set_cookie(), Json(joined)).into_response());
    };
    let view = &bridge.access.view;
    let rule = view
        .rule(&room)
        .await
        .map_err(|e| homeserver_unavailable(&e))?;
    let (person, shown_name) = match &user_id {
        Some(user) => {
            let (person, room_name) = view
                .person(&room, user)
                .await
                .map_err(|e| homeserver_unavailable(&e))?;
            (person, room_name.unwrap_or_else(|| name.clone()))
        }
        None => (Person::Guest, name.clone()),
    };
    match decide(meeting.access, rule, &person) {
        Admission::Enter => {
            let via = if matches!(&person, Person::Identified { membership: Some(m), .. } if m == "join")
            {
                Via::Member
            } else {
                Via::Public
            };
            let moderator = match (&user_id, via) {
                (Some(user), Via::Member) => {
                    meeting.creator.as_deref() == Some(user.as_str())
                        || view
                            .power_level(&room, user)
                            .await
                            .map_err(|e| homeserver_unavailable(&e))?
                            >= bridge.end_power_level
                }
                _ => false,
            };
            let joined = issue_join(
                &state,
                &meeting,
                &identity,
                &shown_name,
                user_id.as_deref(),
                via,
                moderator,
            )
            .await?;
            Ok((browser.set_cookie(), Json(joined)).into_response())
        }
        Admission::Refuse(why) => {
            tracing::info!(meeting = %meeting.id, reason = why.as_str(), identified = user_id.is_some(), "join refused");
            Ok(refusal(why, lang))
        }
        Admission::Lobby if !someone_may_admit(&state, &meeting, &room).await? => {
            tracing::info!(meeting = %meeting.id, "guest turned away: no moderator active lately");
            Ok(refusal(Refusal::NoModerator, lang))
        }
        Admission::Lobby => {
            let lobby =
                enter_lobby(&state, &meeting, &browser, &identity, &shown_name, user_id).await?;
            Ok((StatusCode::ACCEPTED, browser.set_cookie(), Json(lobby)).into_response())
        }
    }
}

/// A join again from a browser already let in: its latest live grant in the meeting (the
/// identity's prefix is the browser's pseudonym, which only its HttpOnly cookie gives)
/// says who it was and how it got in. `None`: no such grant, the usual rules apply. The
/// page asks this when its node died; the removal check above still holds.
async fn rejoin(
    state: &AppState,
    meeting: &Meeting,
    browser: &Browser,
    identity: &ParticipantIdentity,
) -> Result<Option<JoinResponse>, MatrixError> {
    let prefix = format!("{}-", browser.pseudonym.as_str());
    let mut conn = state.conn().await?;
    let grants = stored::live_grants(&mut conn, meeting.id.as_str())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    drop(conn);
    let Some(grant) = grants
        .into_iter()
        .filter(|g| g.identity.starts_with(&prefix) && g.via != Via::Public)
        .max_by_key(|g| g.issued_at)
    else {
        return Ok(None);
    };
    let bridge = &state.bot_api.bridge;
    // A member's access follows the room: asked of the homeserver again, as at every
    // join, not taken from the earlier grant (they may have left since).
    if let (Some(user), Via::Member, Some(room)) =
        (&grant.user_id, grant.via, &meeting.matrix_room_id)
    {
        let joined = bridge
            .access
            .view
            .joined(room, user)
            .await
            .map_err(|e| homeserver_unavailable(&e))?;
        if !matches!(joined, crate::auth::membership::Joined::Yes { .. }) {
            return Ok(None);
        }
    }
    let moderator = match (&grant.user_id, grant.via, &meeting.matrix_room_id) {
        (Some(user), Via::Member, Some(room)) => {
            meeting.creator.as_deref() == Some(user.as_str())
                || bridge
                    .access
                    .view
                    .power_level(room, user)
                    .await
                    .map_err(|e| homeserver_unavailable(&e))?
                    >= bridge.end_power_level
        }
        _ => false,
    };
    tracing::info!(meeting = %meeting.id, via = grant.via.as_str(), "a browser joins again after losing its connection");
    issue_join(
        state,
        meeting,
        identity,
        &grant.name,
        grant.user_id.as_deref(),
        grant.via,
        moderator,
    )
    .await
    .map(Some)
}

/// How recently someone who may let guests in must have been seen for a guest to wait.
const MODERATOR_ACTIVITY_MS: i64 = 30 * 60 * 1000;

/// Whether anyone who may admit a guest was active lately: the meeting is young (its
/// creator just asked for it), or a moderator sent something in the room, or is in the
/// meeting. When the room's power levels cannot be read, a guest may wait.
async fn someone_may_admit(
    state: &AppState,
    meeting: &Meeting,
    room: &str,
) -> Result<bool, MatrixError> {
    let now = crate::clock::now_ms();
    let since = now - MODERATOR_ACTIVITY_MS;
    if meeting.created_at >= since {
        return Ok(true);
    }
    let bridge = &state.bot_api.bridge;
    let Ok(levels) = bridge.access.view.power_levels(room).await else {
        return Ok(true);
    };
    let level = |user: &str| crate::auth::membership::power_level_in(&levels, user);
    if level("@nobody:invalid") >= bridge.end_power_level {
        return Ok(true);
    }
    let may_admit = |user: &str| {
        meeting.creator.as_deref() == Some(user) || level(user) >= bridge.end_power_level
    };
    let mut conn = state.conn().await?;
    let active = stored::recent_senders(&mut conn, room, since)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    if active.iter().any(|user| may_admit(user)) {
        return Ok(true);
    }
    let present: Vec<String> = crate::store::sessions::list_for_meeting(&mut conn, &meeting.id)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .into_iter()
        .filter(|s| s.left_at.is_none())
        .map(|s| s.identity.as_str().to_owned())
        .collect();
    let grants = stored::live_grants(&mut conn, meeting.id.as_str())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    Ok(grants
        .iter()
        .any(|g| present.contains(&g.identity) && g.user_id.as_deref().is_some_and(may_admit)))
}

/// The Matrix user an OpenID token belongs to, as their homeserver says.
async fn openid_user(
    state: &AppState,
    token: &crate::auth::openid::OpenIdToken,
) -> Result<String, MatrixError> {
    use crate::auth::openid::OpenIdError;
    match state.bot_api.bridge.access.openid.verify(token).await {
        Ok(user) => Ok(user.to_string()),
        Err(e @ OpenIdError::Malformed(_)) => Err(MatrixError::bad_json(e.to_string())),
        Err(e @ (OpenIdError::Rejected | OpenIdError::WrongServer)) => {
            tracing::info!(error = %e, "OpenID token refused");
            Err(MatrixError::new(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                e.to_string(),
            ))
        }
        Err(e @ OpenIdError::Unreachable(_)) => Err(homeserver_unavailable(&e)),
    }
}

/// Puts a guest in the meeting's lobby and updates its notice in the thread.
async fn enter_lobby(
    state: &AppState,
    meeting: &Meeting,
    browser: &Browser,
    identity: &ParticipantIdentity,
    name: &str,
    user_id: Option<String>,
) -> Result<serde_json::Value, MatrixError> {
    let bridge = &state.bot_api.bridge;
    let now = crate::clock::now_ms();
    let mut tx = state.begin().await?;
    let waiting = crate::bridge::access::waiting_guests(&mut tx, meeting, now)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    if waiting.len() >= crate::bridge::access::LOBBY_CAPACITY {
        return Err(MatrixError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_LIMIT_EXCEEDED",
            match bridge.lang {
                crate::config::Language::Fr => "Salle d’attente pleine : réessayez plus tard.",
                crate::config::Language::En => "The lobby is full: try again later.",
            },
        ));
    }
    let request = LobbyRequest {
        id: crate::ids::random_base32(24),
        meeting_id: meeting.id.as_str().to_owned(),
        number: 0,
        name: name.to_owned(),
        user_id,
        browser: browser.pseudonym.as_str().to_owned(),
        identity: identity.as_str().to_owned(),
        state: LobbyState::Waiting,
        decided_by: None,
        reason: None,
        created_at: now,
        decided_at: None,
    };
    let number = stored::enter_lobby(&mut tx, &request)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    crate::bridge::access::refresh_lobby_notice(bridge, &mut tx, meeting)
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    tx.commit().await.map_err(|e| MatrixError::internal(&e))?;
    state.bot_api.outbound_wake.notify_one();
    metrics::counter!("tchap_visio_lobby_requests_total").increment(1);
    tracing::info!(meeting = %meeting.id, number, "guest waiting in the lobby");
    Ok(serde_json::json!({ "lobby": { "id": request.id, "number": number } }))
}

/// The meeting a slug opens, if it can still be joined; 404 otherwise.
pub(super) async fn joinable_meeting(
    state: &AppState,
    slug: &MeetingSlug,
) -> Result<Meeting, MatrixError> {
    let mut conn = state.conn().await?;
    meetings::get_by_slug(&mut conn, slug)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .filter(|meeting| meeting.is_joinable())
        .ok_or_else(|| MatrixError::not_found("Meeting"))
}

/// The stored meetings as the signalling routes' [`RoomGate`]: a meeting's room opens
/// while [`Meeting::is_joinable`], the rule the join endpoint and the chat history apply.
pub struct StoredMeetings {
    pub store: Store,
    /// In a cluster, this node's id: a meeting's room opens only on the node it is
    /// placed on. `None` on a single node.
    pub node_id: Option<String>,
}

impl RoomGate for StoredMeetings {
    fn room_access<'a>(&'a self, room: &'a str, identity: &'a str) -> BoxFuture<'a, RoomAccess> {
        Box::pin(async move {
            let id = MeetingId::parse(room).ok();
            let found = async {
                let mut conn = self.store.pool().acquire().await?;
                let meeting = match &id {
                    Some(id) => meetings::get_by_id(&mut conn, id).await?,
                    // Not named like a meeting: an Element Call call on our focus, or a
                    // room whose tokens come only from whoever holds the API keys
                    // (LiveKit's tools, load tests), not from us.
                    None => meetings::live_call(&mut conn, room).await?,
                };
                let revoked = match (&meeting, identity.is_empty()) {
                    (Some(m), false) => {
                        stored::revocation(&mut conn, m.id.as_str(), identity).await?
                    }
                    _ => None,
                };
                Ok::<_, crate::store::StoreError>((meeting, revoked))
            };
            match (found.await, id.is_some()) {
                (Ok((Some(meeting), _)), _) if !meeting.is_joinable() => RoomAccess::Ended,
                (Ok((Some(_), Some(reason))), _) => RoomAccess::Removed(removal_text(&reason)),
                (Ok((Some(meeting), None)), _) => match &self.node_id {
                    None => RoomAccess::Open,
                    Some(node) => self.hosted_here(meeting.id.as_str(), node).await,
                },
                (Ok((None, _)), true) => RoomAccess::Unknown,
                // A call that ended stays open to a token issued for it (its next token
                // request starts the call's next record), as any other room.
                (Ok((None, _)), false) => RoomAccess::Open,
                (Err(e), _) => {
                    tracing::warn!(room, error = %e, "cannot read whether a meeting has ended");
                    RoomAccess::Unavailable
                }
            }
        })
    }
}

impl StoredMeetings {
    /// Whether the meeting's room lives on this node (placing it here if it was placed
    /// nowhere yet), so that a room never spans nodes.
    async fn hosted_here(&self, meeting: &str, node: &str) -> RoomAccess {
        match self.store.claim_room(meeting, node).await {
            Ok(host) if host == node => RoomAccess::Open,
            Ok(host) => {
                tracing::info!(meeting, %host, "connection refused: the meeting is hosted on another node");
                RoomAccess::Elsewhere
            }
            Err(e) => {
                tracing::warn!(meeting, error = %e, "cannot read where the meeting is hosted");
                RoomAccess::Unavailable
            }
        }
    }
}

/// What `/rtc` answers a removed participant: a stable prefix, then the reason's name,
/// which the page turns into a sentence.
fn removal_text(reason: &str) -> &'static str {
    match reason {
        "left_room" => "removed from the meeting: left_room",
        "banned" => "removed from the meeting: banned",
        "access_changed" => "removed from the meeting: access_changed",
        _ => "removed from the meeting: removed",
    }
}

/// What the pre-join page shows about a meeting.
#[derive(Debug, Serialize)]
pub struct MeetingInfo {
    pub id: String,
    pub title: String,
    /// `scheduled`, `running` or `ended`.
    pub state: &'static str,
    /// When it ended (milliseconds since the Unix epoch), for an ended meeting only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
}

/// `GET /api/v1/meetings/{slug}`: the meeting's title for the pre-join page. An ended
/// meeting is still described (`state: "ended"`, `ended_at`), so that its link says it
/// is over rather than unknown; the join endpoint refuses it all the same. 404 for a
/// slug nobody issued.
pub async fn info(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<MeetingInfo>, MatrixError> {
    let slug = MeetingSlug::parse(&slug).map_err(|_| MatrixError::not_found("Meeting"))?;
    let mut conn = state.conn().await?;
    let meeting = meetings::get_by_slug(&mut conn, &slug)
        .await
        .map_err(|e| MatrixError::internal(&e))?
        .ok_or_else(|| MatrixError::not_found("Meeting"))?;
    let ended = !meeting.is_joinable();
    Ok(Json(MeetingInfo {
        id: meeting.id.as_str().to_owned(),
        title: meeting.title,
        state: meeting.state.as_str(),
        ended_at: if ended { meeting.ended_at } else { None },
    }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};

    use super::super::tests::{TEST_SFU_KEY, TEST_WS_URL, call, sfu_keys, signal_state};
    use super::*;
    use crate::auth::token::can_join;
    use crate::auth::token::{Claims, JOIN_TOKEN_TTL_SECS};
    use crate::http::AppState;
    use crate::meeting::{Meeting, MeetingState};
    use crate::store::Store;
    use crate::store::testing::both_dialects;
    use axum::http::header;

    async fn stored_meeting(store: &Store) -> Meeting {
        let meeting =
            Meeting::new("Point hebdo", None, None, crate::clock::now_ms()).expect("valid");
        let mut conn = store.pool().acquire().await.expect("conn");
        meetings::create(&mut conn, &meeting).await.expect("create");
        meeting
    }

    fn join_request(slug: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(format!("/api/v1/meetings/{slug}/join"))
            .header("content-type", "application/json")
            .body(body.into())
            .expect("request")
    }

    both_dialects!(
        meeting_info_for_the_pre_join_page,
        |store: Store| async move {
            let meeting = stored_meeting(&store).await;
            let get = |slug: &str| {
                Request::get(format!("/api/v1/meetings/{slug}"))
                    .body(Body::empty())
                    .expect("request")
            };
            let (status, body) = call(&store, get(meeting.slug.expose())).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["title"], "Point hebdo");
            assert_eq!(body["id"], meeting.id.as_str());
            assert_eq!(body["state"], "scheduled");
            assert!(body.get("ended_at").is_none(), "{body}");
            // Neither the id nor an unknown slug opens the meeting.
            for slug in [meeting.id.as_str(), "aaaaaaaaaaaaaaaaaaaaaaaaaa", "x"] {
                let (status, body) = call(&store, get(slug)).await;
                assert_eq!(
                    (status, body["errcode"].as_str()),
                    (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
                    "{slug}"
                );
            }
        }
    );

    both_dialects!(
        the_page_is_served_with_a_strict_policy,
        |store: Store| async move {
            use tower::ServiceExt;
            let response = crate::http::router(crate::http::tests::state(store.clone()).await)
                .oneshot(
                    Request::get("/m/anything")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            // 200 with the built page, 503 with the "build it" placeholder in a debug build.
            assert!(matches!(
                response.status(),
                StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
            ));
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .expect("ascii");
            assert!(
                csp.contains("default-src 'self'") && csp.contains(TEST_WS_URL),
                "{csp}"
            );
            let missing = crate::http::router(crate::http::tests::state(store.clone()).await)
                .oneshot(
                    Request::get("/assets/nope.js")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        }
    );

    /// One request through the whole router on `state`; the status and the body as text
    /// (LiveKit-style refusals are plain text).
    async fn call_text(state: &AppState, request: Request<Body>) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let response = crate::http::router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn validate(path: &str, token: &str) -> Request<Body> {
        Request::get(format!("{path}?access_token={token}"))
            .body(Body::empty())
            .expect("request")
    }

    fn token_for(room: &str) -> String {
        sfu_keys().issue(&Claims::participant(
            &ParticipantIdentity::for_join(None),
            "Zoé",
            room,
            crate::clock::now_ms(),
            JOIN_TOKEN_TTL_SECS,
        ))
    }

    both_dialects!(
        ended_meetings_stay_ended_after_ten_thousand_and_one_closed_rooms,
        |store: Store| async move {
            let state = crate::http::tests::state(store.clone()).await;
            // 10,001 meetings, each with a token issued while it was open, then all
            // ended, and their rooms closed in the SFU (whose memory of closed rooms is
            // bounded): more than it keeps, so it has forgotten the first.
            const ENDED: usize = 10_001;
            let mut ended = Vec::with_capacity(ENDED);
            let mut tx = store.begin().await.expect("begin");
            for _ in 0..ENDED {
                let meeting =
                    Meeting::new("Point hebdo", None, None, crate::clock::now_ms()).expect("valid");
                meetings::create(&mut tx, &meeting).await.expect("create");
                ended.push(meeting.id);
            }
            let first_token = token_for(ended[0].as_str());
            for id in &ended {
                assert!(
                    meetings::set_state(&mut tx, id, MeetingState::Ended, crate::clock::now_ms())
                        .await
                        .expect("end")
                );
            }
            tx.commit().await.expect("commit");
            for id in &ended {
                state.signal.sfu.close_room(id.as_str().to_owned()).await;
            }
            let open = stored_meeting(&store).await;

            for path in ["/rtc/validate", "/rtc/v1/validate"] {
                let (status, text) = call_text(&state, validate(path, &first_token)).await;
                assert_eq!(
                    (status, text.as_str()),
                    (StatusCode::FORBIDDEN, "the meeting has ended"),
                    "{path}"
                );
            }
            // The last one too, and the server's chat into it.
            let last_token = token_for(ended[ENDED - 1].as_str());
            let (status, _) = call_text(&state, validate("/rtc/validate", &last_token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN);
            let mut admin = Claims::participant(
                &ParticipantIdentity::for_join(None),
                "Outil",
                ended[0].as_str(),
                crate::clock::now_ms(),
                JOIN_TOKEN_TTL_SECS,
            );
            admin.video.room_join = false;
            admin.video.room_admin = true;
            let chat = Request::post(format!("/api/v1/rooms/{}/chat", ended[0]))
                .header(
                    "authorization",
                    format!("Bearer {}", sfu_keys().issue(&admin)),
                )
                .body(Body::from(r#"{"name":"Alice","text":"bonjour"}"#))
                .expect("request");
            assert_eq!(
                call_text(&state, chat).await,
                (StatusCode::FORBIDDEN, "the meeting has ended".to_owned())
            );

            // Controls: an open meeting, and a room that is no meeting, are let in; a
            // room named like a meeting nobody created is not.
            for (room, expected) in [
                (open.id.as_str(), StatusCode::OK),
                ("operator-room", StatusCode::OK),
                (MeetingId::generate().as_str(), StatusCode::FORBIDDEN),
            ] {
                let (status, text) =
                    call_text(&state, validate("/rtc/validate", &token_for(room))).await;
                assert_eq!(status, expected, "{room}: {text}");
            }
        }
    );

    #[test]
    fn ws_urls_follow_the_public_address() {
        assert_eq!(
            ws_base_url("http://127.0.0.1:29330"),
            "ws://127.0.0.1:29330"
        );
        assert_eq!(ws_base_url("https://visio.example/"), "wss://visio.example");
        assert_eq!(
            ws_base_url("https://example.org/visio/"),
            "wss://example.org/visio"
        );
    }

    /// A join's status, JSON and `Set-Cookie` value.
    async fn join_with_cookie(
        store: &Store,
        slug: &str,
        body: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, serde_json::Value, Option<String>) {
        let mut request = join_request(slug, body.to_owned());
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert(header::COOKIE, cookie.parse().expect("header value"));
        }
        let (status, headers, json) = crate::http::tests::call_with_headers(store, request).await;
        let set_cookie = headers
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().expect("ascii").to_owned());
        (status, json, set_cookie)
    }

    fn stable_part(json: &serde_json::Value) -> String {
        ParticipantIdentity::parse(json["identity"].as_str().expect("identity"))
            .expect("valid")
            .stable_part()
            .to_owned()
    }

    both_dialects!(
        a_guest_is_told_at_once_when_nobody_who_may_admit_was_active_for_30_minutes,
        |store: Store| async move {
            let long_ago = crate::clock::now_ms() - 31 * 60 * 1000;
            let mut meeting = Meeting::new(
                "Vieille réunion",
                Some("!room:hs".into()),
                Some("@alice:hs".into()),
                long_ago,
            )
            .expect("valid");
            meeting.access = crate::meeting::AccessLevel::Trusted;
            {
                let mut conn = store.pool().acquire().await.expect("conn");
                meetings::create(&mut conn, &meeting).await.expect("create");
            }
            let slug = meeting.slug.expose();
            let (status, json, _) =
                join_with_cookie(&store, slug, r#"{"name": "Zoé"}"#, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{json}");
            assert_eq!(json["reason"], "no_moderator");
            assert!(json["error"].as_str().expect("a sentence").contains("30"));

            // Alice, who started it, says something in the room: now a guest may wait.
            store
                .store_transaction(
                    "t1",
                    &[crate::store::inbox::NewInboxEvent {
                        event_id: "$recent".into(),
                        room_id: Some("!room:hs".into()),
                        json: r#"{"type":"m.room.message","sender":"@alice:hs","room_id":"!room:hs","event_id":"$recent","content":{}}"#.into(),
                    }],
                )
                .await
                .expect("stored");
            let (status, json, _) =
                join_with_cookie(&store, slug, r#"{"name": "Zoé"}"#, None).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{json}");
            assert_eq!(json["lobby"]["number"], 1);
        }
    );

    both_dialects!(
        connected_participants_get_fresh_tokens_until_removed,
        |store: Store| async move {
            let meeting = stored_meeting(&store).await;
            let signal = signal_state(store.clone()).await;
            let identity = ParticipantIdentity::parse("guest-1").expect("identity");
            let issued_at = crate::clock::now_ms() - 400_000;
            let claims = Claims::participant(
                &identity,
                "Zoé",
                meeting.id.as_str(),
                issued_at,
                JOIN_TOKEN_TTL_SECS,
            );
            let mut refresher = crate::signal::Refresher::new(signal.clone(), claims.clone());
            let fresh = refresher.token().await.expect("a fresh token");
            let fresh = sfu_keys()
                .verify(&fresh, crate::clock::now_ms())
                .expect("a valid token");
            assert_eq!(
                (fresh.sub.as_str(), fresh.name.as_str()),
                ("guest-1", "Zoé")
            );
            assert_eq!(fresh.video, claims.video);
            assert_eq!(fresh.exp - fresh.nbf, JOIN_TOKEN_TTL_SECS);
            assert!(fresh.exp > claims.exp + 300, "it outlives the join token");

            // Removed: no more tokens.
            {
                let mut conn = store.pool().acquire().await.expect("conn");
                stored::revoke(&mut conn, meeting.id.as_str(), "guest-1", "removed", 1)
                    .await
                    .expect("revoked");
            }
            assert_eq!(refresher.token().await, None);
            // Nor for anyone once the meeting ended.
            let other = ParticipantIdentity::parse("guest-2").expect("identity");
            let mut refresher = crate::signal::Refresher::new(
                signal,
                Claims::participant(
                    &other,
                    "Marc",
                    meeting.id.as_str(),
                    issued_at,
                    JOIN_TOKEN_TTL_SECS,
                ),
            );
            assert!(refresher.token().await.is_some());
            {
                let mut conn = store.pool().acquire().await.expect("conn");
                meetings::set_state(&mut conn, &meeting.id, MeetingState::Ended, 1)
                    .await
                    .expect("ended");
            }
            assert_eq!(refresher.token().await, None);
        }
    );

    both_dialects!(
        a_join_returns_a_token_for_the_meeting_room,
        |store: Store| async move {
            let meeting = stored_meeting(&store).await;
            let slug = meeting.slug.expose();
            let body = r#"{"name": "  Zoé  "}"#;
            let (status, json, set_cookie) = join_with_cookie(&store, slug, body, None).await;
            assert_eq!(status, StatusCode::OK, "{json}");
            assert_eq!(json["url"], TEST_WS_URL);
            assert_eq!(json["meeting"]["id"], meeting.id.as_str());
            assert_eq!(json["meeting"]["title"], "Point hebdo");

            let token = json["token"].as_str().expect("token");
            let claims = sfu_keys()
                .verify(token, crate::clock::now_ms())
                .expect("a valid token");
            assert_eq!(claims.iss, TEST_SFU_KEY);
            assert_eq!(claims.name, "Zoé");
            assert_eq!(claims.sub, json["identity"].as_str().expect("identity"));
            assert!(can_join(&claims, meeting.id.as_str()));
            let grant = &claims.video;
            assert_eq!(
                (
                    grant.can_publish,
                    grant.can_subscribe,
                    grant.can_publish_data,
                    grant.can_update_own_metadata,
                ),
                (Some(true), Some(true), Some(true), Some(true))
            );
            assert!(!grant.room_admin && !grant.room_create);
            let lifetime = claims.exp - claims.nbf;
            assert_eq!(lifetime, JOIN_TOKEN_TTL_SECS);

            // The browser id comes back as an HttpOnly cookie, never in the body, and the
            // identity the room sees does not contain it.
            let set_cookie = set_cookie.expect("a Set-Cookie");
            assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
            let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
            let browser_id = cookie
                .split_once('=')
                .and_then(|(_, v)| v.split_once('.'))
                .map(|(id, _)| id.to_owned())
                .expect("id.signature");
            assert!(!json.to_string().contains(&browser_id));
            let first = stable_part(&json);
            assert!(!first.contains(&browser_id));

            // A rejoin with the cookie: same stable part, new identity.
            let (_, again, _) = join_with_cookie(&store, slug, body, Some(&cookie)).await;
            assert_ne!(again["identity"], json["identity"]);
            assert_eq!(stable_part(&again), first);

            // Without a cookie, with a forged one, or with the pseudonym someone else
            // shows the room (as a cookie or in the body's old `browser_id`): another
            // browser, so another stable part.
            let forged_cookie = format!("tv_browser={first}.{}", "0".repeat(32));
            let with_browser_id = format!(r#"{{"name":"Bob","browser_id":"{first}"}}"#);
            for (body, cookie) in [
                (r#"{"name":"Bob"}"#, None),
                (r#"{"name":"Bob"}"#, Some(forged_cookie.as_str())),
                (with_browser_id.as_str(), None),
            ] {
                let (status, other, set) = join_with_cookie(&store, slug, body, cookie).await;
                assert_eq!(status, StatusCode::OK, "{other}");
                assert_ne!(stable_part(&other), first, "{body} {cookie:?}");
                assert!(set.is_some(), "a fresh browser id is issued");
            }
        }
    );

    both_dialects!(
        unknown_or_ended_meetings_cannot_be_joined,
        |store: Store| async move {
            let body = r#"{"name":"Zoé"}"#;
            let unknown = MeetingSlug::generate();
            for slug in [unknown.expose(), "not-a-slug", "AAAAAAAAAAAAAAAAAAAAAAAAAA"] {
                let (status, json) = call(&store, join_request(slug, body)).await;
                assert_eq!(
                    (status, json["errcode"].as_str()),
                    (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
                    "{slug}"
                );
            }
            let meeting = stored_meeting(&store).await;
            let mut conn = store.pool().acquire().await.expect("conn");
            meetings::set_state(&mut conn, &meeting.id, MeetingState::Running, 1)
                .await
                .expect("start");
            drop(conn);
            let (status, _) = call(&store, join_request(meeting.slug.expose(), body)).await;
            assert_eq!(status, StatusCode::OK, "a running meeting can be joined");
            let mut conn = store.pool().acquire().await.expect("conn");
            meetings::set_state(&mut conn, &meeting.id, MeetingState::Ended, 2)
                .await
                .expect("end");
            drop(conn);
            let (status, json) = call(&store, join_request(meeting.slug.expose(), body)).await;
            assert_eq!(
                (status, json["errcode"].as_str()),
                (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
            );
            // The page's info tells the ended meeting from an unknown one.
            let info = Request::get(format!("/api/v1/meetings/{}", meeting.slug.expose()))
                .body(Body::empty())
                .expect("request");
            let (status, json) = call(&store, info).await;
            assert_eq!(status, StatusCode::OK, "{json}");
            assert_eq!(json["state"], "ended");
            assert_eq!(json["ended_at"], 2);
            assert_eq!(json["title"], "Point hebdo");
            // The id is not a slug: knowing it does not let anyone in.
            let (status, _) = call(&store, join_request(meeting.id.as_str(), body)).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    );

    both_dialects!(bad_bodies_are_refused, |store: Store| async move {
        let meeting = stored_meeting(&store).await;
        let slug = meeting.slug.expose();
        let long_name = format!(r#"{{"name":"{}"}}"#, "x".repeat(65));
        let oversize = format!(r#"{{"name":"a","pad":"{}"}}"#, "x".repeat(5000));
        let cases: [(String, StatusCode, &str); 10] = [
            ("{nope".into(), StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            ("".into(), StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            ("{}".into(), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            (
                r#"{"name": 5}"#.into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (
                r#"{"name": "   "}"#.into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (
                r#"{"name": "a\nb"}"#.into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (long_name, StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            (
                "{\"name\": \"Zo\u{202E}\u{200B}\u{3164}\"}".into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (
                format!(r#"{{"name": "Zoé{}"}}"#, "\u{2800}".repeat(30)),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (oversize, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        ];
        for (body, status, errcode) in cases {
            let (got, json) = call(&store, join_request(slug, body.clone())).await;
            assert_eq!(
                (got, json["errcode"].as_str()),
                (status, Some(errcode)),
                "{body:.60}"
            );
            assert!(json["error"].is_string());
        }
        let get = Request::get(format!("/api/v1/meetings/{slug}/join"))
            .body(Body::empty())
            .expect("request");
        let (status, _) = call(&store, get).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    });
}
