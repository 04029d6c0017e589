//! The focus's HTTP side. lk-jwt-service's endpoints take an OpenID token (verified at
//! the user's homeserver) and answer `{url, jwt}`; MSC4195's endpoint is reached only
//! through the homeserver (Synapse's MSC4512 proxy), which authenticated the user and
//! says who it is in `X-Matrix-User-Identifier`, a header believed only with our
//! `hs_token`. Every path answers something other than 404 (Element Call reads a 404
//! as "no such service" and falls back), and refusals are Matrix-shaped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower_http::cors::CorsLayer;

use super::Focus;
use super::delayed::{Delegation, DelegationError};
use super::names;
use crate::auth::membership::Joined;
use crate::auth::openid::{OpenIdError, OpenIdToken};
use crate::auth::token::{Claims, VideoGrant};
use crate::http::AppState;
use crate::http::appservice::{parse_json_body, read_body};
use crate::http::error::MatrixError;
use crate::meeting::Meeting;
use crate::meeting::access::Via;
use crate::store::{access as stored, meetings};

/// lk-jwt-service's routes; their CORS rules ([`cors`]: any origin, since Element
/// Call runs on another origin than the focus) are laid over them with the rate limit.
pub fn public_routes() -> Router<AppState> {
    // OPTIONS has a route of its own: the service's method-not-allowed fallback would
    // answer a preflight before the CORS layer saw it.
    let preflight = || async { StatusCode::OK };
    Router::new()
        .route("/sfu/get", post(sfu_get).options(preflight))
        .route("/get_token", post(get_token).options(preflight))
        .route(
            "/delegate_delayed_leave",
            post(delegate_delayed_leave).options(preflight),
        )
}

/// lk-jwt-service's CORS rules, laid outside the rate limit so that a 429 is readable
/// by the page that got it.
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::ACCEPT_ENCODING,
            header::HeaderName::from_static("x-csrf-token"),
        ])
        .max_age(Duration::from_secs(600))
}

/// lk-jwt-service's health check, for whoever probes a focus (not rate-limited).
pub fn health_routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// MSC4195's routes, which only the homeserver calls (through its MSC4512 proxy, which
/// rate-limits each user itself).
pub fn homeserver_routes() -> Router<AppState> {
    let mut msc4195 = Router::new();
    for version in ["v1", "unstable/io.element.msc4195"] {
        msc4195 = msc4195
            .route(
                &format!("/_matrix/client/{version}/rtc/livekit/get_token"),
                post(homeserver_get_token),
            )
            .route(
                &format!("/_matrix/client/{version}/rtc/livekit/delegate_delayed_leave"),
                post(homeserver_delegate_delayed_leave),
            );
    }
    msc4195
}

fn focus(state: &AppState) -> Result<&Arc<Focus>, MatrixError> {
    state.focus.as_ref().ok_or_else(MatrixError::unrecognized)
}

async fn healthz() -> StatusCode {
    StatusCode::OK
}

#[derive(Debug, Deserialize)]
struct OpenIdBody {
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    matrix_server_name: String,
}

#[derive(Debug, Deserialize)]
struct Member {
    #[serde(default)]
    id: String,
    #[serde(default)]
    claimed_user_id: String,
    #[serde(default)]
    claimed_device_id: String,
}

/// `/get_token` and `/delegate_delayed_leave` (lk-jwt-service's shapes; unknown fields
/// are ignored, so that newer clients are not refused for what they add).
#[derive(Debug, Deserialize)]
struct TokenRequest {
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    openid_token: Option<OpenIdBody>,
    member: Option<Member>,
    delay_id: Option<String>,
    /// Milliseconds.
    delay_timeout: Option<u64>,
}

impl TokenRequest {
    /// Its member, once the room, the slot and every member field are there (400
    /// `M_BAD_JSON` naming what is missing otherwise).
    fn checked_member(&mut self) -> Result<Member, MatrixError> {
        if self.room_id.is_empty() || self.slot_id.is_empty() {
            return Err(MatrixError::bad_json(
                "the body is missing `room_id` or `slot_id`",
            ));
        }
        self.member
            .take()
            .filter(|m| {
                !m.id.is_empty() && !m.claimed_user_id.is_empty() && !m.claimed_device_id.is_empty()
            })
            .ok_or_else(|| {
                MatrixError::bad_json(
                    "the body's `member` is missing `id`, `claimed_user_id` or `claimed_device_id`",
                )
            })
    }
}

/// `/sfu/get` (the legacy shape).
#[derive(Debug, Deserialize)]
struct LegacyRequest {
    #[serde(default)]
    room: String,
    openid_token: Option<OpenIdBody>,
    #[serde(default)]
    device_id: String,
    delay_id: Option<String>,
    delay_timeout: Option<u64>,
}

async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<T, MatrixError> {
    let bytes = read_body(headers, body, state.max_body_bytes).await?;
    parse_json_body(&bytes, shape)
}

fn refused(reason: &'static str) {
    metrics::counter!("tchap_visio_focus_refused_total", "reason" => reason).increment(1);
}

fn unauthorized(reason: &'static str, error: &str) -> MatrixError {
    refused(reason);
    MatrixError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", error)
}

/// The Matrix user an OpenID token belongs to, as their homeserver says.
async fn openid_user(state: &AppState, token: Option<OpenIdBody>) -> Result<String, MatrixError> {
    let token = token
        .filter(|t| !t.access_token.is_empty() && !t.matrix_server_name.is_empty())
        .ok_or_else(|| {
            MatrixError::bad_json(
                "the body's `openid_token` is missing `access_token` or `matrix_server_name`",
            )
        })?;
    let token = OpenIdToken {
        access_token: token.access_token,
        matrix_server_name: token.matrix_server_name,
    };
    match state.bot_api.bridge.access.openid.verify(&token).await {
        Ok(user) => Ok(user.to_string()),
        Err(e @ OpenIdError::Unreachable(_)) => {
            tracing::warn!(error = %e, "cannot check an OpenID token");
            Err(MatrixError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "the user's homeserver cannot be reached to check the OpenID token; try again",
            ))
        }
        Err(e) => {
            tracing::info!(error = %e, "OpenID token refused");
            Err(unauthorized(
                "openid",
                "The request could not be authorised.",
            ))
        }
    }
}

/// What one checked request asks for.
struct Ask<'a> {
    user: &'a str,
    room_id: &'a str,
    slot_id: &'a str,
    identity: String,
}

/// The checks lk-jwt-service does not make, then the token: the user is joined to the
/// room (403 otherwise), publishes only if of a publishing server; the call's record
/// (made at its first valid request, never by a refused one) notes the grant.
async fn grant(state: &AppState, focus: &Focus, ask: Ask<'_>) -> Result<String, MatrixError> {
    if ruma::RoomId::parse(ask.room_id).is_err() {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "`room_id` is not a Matrix room id",
        ));
    }
    if ask.slot_id.is_empty() || ask.slot_id.len() > 255 {
        return Err(MatrixError::bad_json(
            "`slot_id` must be 1 to 255 characters",
        ));
    }
    let view = &state.bot_api.bridge.access.view;
    let joined = view.joined(ask.room_id, ask.user).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot check a call's room membership");
        MatrixError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "the homeserver cannot tell now whether you are in this room; try again",
        )
    })?;
    let (bot_in_room, display_name) = match joined {
        Joined::Yes {
            bot_in_room,
            display_name,
        } => (bot_in_room, display_name),
        Joined::No => {
            refused("not_joined");
            tracing::info!(
                user = ask.user,
                room = ask.room_id,
                "call token refused: not joined to the room"
            );
            return Err(forbidden("not_joined", "You are not joined to this room."));
        }
        Joined::Unknown(why) => {
            refused("membership_unknown");
            tracing::warn!(
                room = ask.room_id,
                why,
                "call token refused: membership cannot be checked"
            );
            return Err(forbidden(
                "membership_unknown",
                "This service cannot check your membership of this room: invite its bot to the room, or ask the homeserver's admin to enable MSC4502.",
            ));
        }
    };
    let publish = focus.may_publish(ask.user);
    let room = names::room_name(ask.room_id, ask.slot_id);
    let name = display_name.unwrap_or_else(|| ask.user.to_owned());
    let now = crate::clock::now_ms();
    let mut tx = state.begin().await?;
    let call = match meetings::live_call(&mut tx, &room)
        .await
        .map_err(|e| MatrixError::internal(&e))?
    {
        Some(call) => call,
        None => {
            let title = match state.bot_api.bridge.lang {
                crate::config::Language::Fr => "Appel",
                crate::config::Language::En => "Call",
            };
            let mut call = Meeting::new(
                title,
                (bot_in_room && focus.thread).then(|| ask.room_id.to_owned()),
                Some(ask.user.to_owned()),
                now,
            )
            .expect("a fixed title is valid");
            call.sfu_room = Some(room.clone());
            call.call_room_id = Some(ask.room_id.to_owned());
            meetings::create(&mut tx, &call)
                .await
                .map_err(|e| MatrixError::internal(&e))?;
            tracing::info!(call = %call.id, room = ask.room_id, "call followed");
            call
        }
    };
    if let Some(reason) = stored::revocation(&mut tx, call.id.as_str(), &ask.identity)
        .await
        .map_err(|e| MatrixError::internal(&e))?
    {
        // Taken out for leaving the room (or a ban since lifted), and a member again now:
        // back in, as with meetings. Nobody else takes people out of a call.
        tracing::info!(call = %call.id, reason, "a member back in the room may rejoin its call");
        stored::lift_revocation(&mut tx, call.id.as_str(), &ask.identity)
            .await
            .map_err(|e| MatrixError::internal(&e))?;
    }
    stored::record_grant(
        &mut tx,
        &stored::Grant {
            meeting_id: call.id.to_string(),
            identity: ask.identity.clone(),
            user_id: Some(ask.user.to_owned()),
            name: name.clone(),
            via: Via::Member,
            issued_at: now,
            revoked_at: None,
        },
    )
    .await
    .map_err(|e| MatrixError::internal(&e))?;
    tx.commit().await.map_err(|e| MatrixError::internal(&e))?;

    if !publish {
        // Logged and counted so that an admin sees externs who only watch, and can add
        // their server to element_call.publish_servers.
        tracing::info!(
            user = ask.user,
            room = ask.room_id,
            "call token: subscribe only (the user's server is not in element_call.publish_servers)"
        );
    }
    metrics::counter!("tchap_visio_focus_tokens_total", "grant" => if publish { "publish" } else { "subscribe_only" })
        .increment(1);
    let now_s = now.div_euclid(1000);
    let claims = Claims {
        sub: ask.identity,
        name,
        nbf: now_s,
        exp: now_s + focus.token_ttl_secs,
        attributes: [("tchap.matrix_id".to_owned(), ask.user.to_owned())].into(),
        video: VideoGrant {
            room_join: true,
            room,
            can_publish: Some(publish),
            can_subscribe: Some(true),
            can_publish_data: Some(publish),
            can_update_own_metadata: Some(true),
            ..VideoGrant::default()
        },
        ..Claims::default()
    };
    Ok(state.signal.keys.issue(&claims))
}

fn forbidden(reason: &'static str, error: &str) -> MatrixError {
    MatrixError::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", error).with_reason(reason)
}

fn token_answer(state: &AppState, jwt: String) -> Response {
    axum::Json(serde_json::json!({ "url": state.public_ws_url, "jwt": jwt })).into_response()
}

/// `POST /get_token`.
async fn get_token(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match get_token_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn get_token_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, MatrixError> {
    let focus = focus(state)?.clone();
    let mut req: TokenRequest = json_body(
        state,
        headers,
        body,
        "{room_id, slot_id, openid_token, member: {id, claimed_user_id, claimed_device_id}}",
    )
    .await?;
    let member = req.checked_member()?;
    let delay = delay_of(req.delay_id, req.delay_timeout)?;
    let user = openid_user(state, req.openid_token).await?;
    if member.claimed_user_id != user {
        tracing::info!(user, "call token refused: claimed_user_id is someone else");
        return Err(unauthorized(
            "claimed_user",
            "The request could not be authorised.",
        ));
    }
    let server = server_of(&user);
    let identity = names::member_identity(&user, &member.claimed_device_id, &member.id);
    let room = names::room_name(&req.room_id, &req.slot_id);
    let jwt = grant(
        state,
        &focus,
        Ask {
            user: &user,
            room_id: &req.room_id,
            slot_id: &req.slot_id,
            identity: identity.clone(),
        },
    )
    .await?;
    if let Some((delay_id, timeout)) = delay {
        delegate(&focus, room, identity, delay_id, timeout, server)?;
    }
    Ok(token_answer(state, jwt))
}

/// `POST /sfu/get` (legacy: the room's one call, identity `user:device`).
async fn sfu_get(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match sfu_get_inner(&state, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn sfu_get_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, MatrixError> {
    let focus = focus(state)?.clone();
    let req: LegacyRequest =
        json_body(state, headers, body, "{room, openid_token, device_id}").await?;
    if req.room.is_empty() {
        return Err(MatrixError::bad_json("the body is missing `room`"));
    }
    if req.device_id.is_empty() {
        return Err(MatrixError::bad_json("the body is missing `device_id`"));
    }
    let delay = delay_of(req.delay_id, req.delay_timeout)?;
    let user = openid_user(state, req.openid_token).await?;
    let server = server_of(&user);
    let identity = names::legacy_identity(&user, &req.device_id);
    let jwt = grant(
        state,
        &focus,
        Ask {
            user: &user,
            room_id: &req.room,
            slot_id: names::ROOM_CALL_SLOT,
            identity: identity.clone(),
        },
    )
    .await?;
    if let Some((delay_id, timeout)) = delay {
        let room = names::room_name(&req.room, names::ROOM_CALL_SLOT);
        delegate(&focus, room, identity, delay_id, timeout, server)?;
    }
    Ok(token_answer(state, jwt))
}

/// `POST /delegate_delayed_leave`: the same checks as `/get_token`, no token.
async fn delegate_delayed_leave(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match delegate_inner(&state, &headers, body).await {
        Ok(()) => axum::Json(serde_json::json!({})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn delegate_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), MatrixError> {
    let focus = focus(state)?.clone();
    let mut req: TokenRequest = json_body(
        state,
        headers,
        body,
        "{room_id, slot_id, openid_token, member, delay_id, delay_timeout}",
    )
    .await?;
    let member = req.checked_member()?;
    let Some((delay_id, timeout)) = delay_of(req.delay_id, req.delay_timeout)? else {
        return Err(MatrixError::bad_json(
            "the body is missing `delay_id` or `delay_timeout`",
        ));
    };
    let user = openid_user(state, req.openid_token).await?;
    if member.claimed_user_id != user {
        return Err(unauthorized(
            "claimed_user",
            "The request could not be authorised.",
        ));
    }
    check_joined(state, &req.room_id, &user).await?;
    let server = server_of(&user);
    let identity = names::member_identity(&user, &member.claimed_device_id, &member.id);
    let room = names::room_name(&req.room_id, &req.slot_id);
    delegate(&focus, room, identity, delay_id, timeout, server)
}

/// A delegation needs the same membership a token does.
async fn check_joined(state: &AppState, room_id: &str, user: &str) -> Result<(), MatrixError> {
    if ruma::RoomId::parse(room_id).is_err() {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "`room_id` is not a Matrix room id",
        ));
    }
    match state.bot_api.bridge.access.view.joined(room_id, user).await {
        Ok(Joined::Yes { .. }) => Ok(()),
        Ok(Joined::No) => {
            refused("not_joined");
            Err(forbidden("not_joined", "You are not joined to this room."))
        }
        Ok(Joined::Unknown(_)) => {
            refused("membership_unknown");
            Err(forbidden(
                "membership_unknown",
                "This service cannot check your membership of this room.",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a call's room membership");
            Err(MatrixError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "the homeserver cannot tell now whether you are in this room; try again",
            ))
        }
    }
}

fn delay_of(
    delay_id: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<Option<(String, Duration)>, MatrixError> {
    match (
        delay_id.filter(|d| !d.is_empty()),
        timeout_ms.filter(|t| *t > 0),
    ) {
        (None, None) => Ok(None),
        (Some(id), Some(ms)) => {
            let timeout = Duration::from_millis(ms);
            super::delayed::check(&id, timeout).map_err(|e| {
                MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string())
            })?;
            Ok(Some((id, timeout)))
        }
        _ => Err(MatrixError::bad_json(
            "the body is missing `delay_id` or `delay_timeout`",
        )),
    }
}

fn server_of(user: &str) -> String {
    user.split_once(':').map_or("", |(_, s)| s).to_owned()
}

fn delegate(
    focus: &Focus,
    room: String,
    identity: String,
    delay_id: String,
    delay_timeout: Duration,
    server_name: String,
) -> Result<(), MatrixError> {
    focus
        .delayed
        .delegate(Delegation {
            room,
            identity,
            delay_id,
            delay_timeout,
            server_name,
        })
        .map_err(|e| match e {
            DelegationError::Full => MatrixError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_LIMIT_EXCEEDED",
                e.to_string(),
            ),
            _ => MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string()),
        })
}

// ---- MSC4195, through the homeserver ----------------------------------------------

/// MSC4195's request (`member_id`; some drafts send `member: {id}`).
#[derive(Debug, Deserialize)]
struct HomeserverTokenRequest {
    server_name: Option<String>,
    #[serde(default)]
    url: String,
    #[serde(default)]
    room_id: String,
    #[serde(default)]
    slot_id: String,
    member_id: Option<String>,
    member: Option<MemberId>,
    delay_id: Option<String>,
    delay_timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct MemberId {
    #[serde(default)]
    id: String,
}

/// The user the homeserver authenticated: only a request bearing our `hs_token` comes
/// from it, and only then is `X-Matrix-User-Identifier` believed.
fn proxied_user(state: &AppState, headers: &HeaderMap) -> Result<String, MatrixError> {
    let token = match crate::auth::bearer(headers) {
        crate::auth::Bearer::Token(t) if !t.is_empty() => t,
        crate::auth::Bearer::Absent => {
            refused("not_from_homeserver");
            return Err(MatrixError::new(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "only the homeserver calls this endpoint (its MSC4512 proxy)",
            ));
        }
        _ => {
            return Err(unauthorized(
                "not_from_homeserver",
                "only the homeserver calls this endpoint (its MSC4512 proxy)",
            ));
        }
    };
    if !state.hs_token.matches(token) {
        tracing::warn!("a request on the homeserver's proxy path without the homeserver's token");
        return Err(unauthorized(
            "not_from_homeserver",
            "only the homeserver calls this endpoint (its MSC4512 proxy)",
        ));
    }
    let user = headers
        .get("x-matrix-user-identifier")
        .and_then(|v| v.to_str().ok())
        .filter(|u| ruma::UserId::parse(*u).is_ok())
        .ok_or_else(|| {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_MISSING_PARAM",
                "X-Matrix-User-Identifier is missing or not a user id",
            )
        })?;
    Ok(user.to_owned())
}

/// The checks MSC4195 asks of a homeserver: our URL, our server.
fn check_homeserver_request(
    state: &AppState,
    focus: &Focus,
    req: &HomeserverTokenRequest,
) -> Result<String, MatrixError> {
    if let Some(server) = req.server_name.as_deref()
        && server != focus.own_server
    {
        return Err(MatrixError::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            "this focus serves this homeserver's users only (federation is not supported)",
        ));
    }
    if req.url.trim_end_matches('/') != state.public_ws_url.trim_end_matches('/') {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "`url` is not this focus's SFU",
        ));
    }
    if req.room_id.is_empty() || req.slot_id.is_empty() {
        return Err(MatrixError::bad_json(
            "the body is missing `room_id` or `slot_id`",
        ));
    }
    req.member_id
        .clone()
        .or_else(|| req.member.as_ref().map(|m| m.id.clone()))
        .filter(|m| !m.is_empty())
        .ok_or_else(|| MatrixError::bad_json("the body is missing `member_id`"))
}

/// `POST /_matrix/client/{v1|unstable/io.element.msc4195}/rtc/livekit/get_token`.
async fn homeserver_get_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let focus = focus(&state)?.clone();
        let user = proxied_user(&state, &headers)?;
        let req: HomeserverTokenRequest =
            json_body(&state, &headers, body, "{url, room_id, slot_id, member_id}").await?;
        let member_id = check_homeserver_request(&state, &focus, &req)?;
        let delay = delay_of(req.delay_id.clone(), req.delay_timeout)?;
        let identity = names::msc4195_identity(&user, &member_id);
        let jwt = grant(
            &state,
            &focus,
            Ask {
                user: &user,
                room_id: &req.room_id,
                slot_id: &req.slot_id,
                identity: identity.clone(),
            },
        )
        .await?;
        if let Some((delay_id, timeout)) = delay {
            let room = names::room_name(&req.room_id, &req.slot_id);
            delegate(&focus, room, identity, delay_id, timeout, server_of(&user))?;
        }
        Ok::<_, MatrixError>(axum::Json(serde_json::json!({ "jwt": jwt })).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// MSC4195's delegation (`{url, room_id, slot_id, member_id, delay_id}`; the delay's
/// length is the client's `delay_timeout` when sent, else Element Call's default, 8 s,
/// whose half we restart at).
async fn homeserver_delegate_delayed_leave(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let focus = focus(&state)?.clone();
        let user = proxied_user(&state, &headers)?;
        let req: HomeserverTokenRequest = json_body(
            &state,
            &headers,
            body,
            "{url, room_id, slot_id, member_id, delay_id}",
        )
        .await?;
        let member_id = check_homeserver_request(&state, &focus, &req)?;
        let delay_id = req
            .delay_id
            .clone()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| MatrixError::bad_json("the body is missing `delay_id`"))?;
        let timeout = Duration::from_millis(req.delay_timeout.unwrap_or(DEFAULT_DELAY_TIMEOUT_MS));
        super::delayed::check(&delay_id, timeout).map_err(|e| {
            MatrixError::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string())
        })?;
        check_joined(&state, &req.room_id, &user).await?;
        let identity = names::msc4195_identity(&user, &member_id);
        let room = names::room_name(&req.room_id, &req.slot_id);
        delegate(&focus, room, identity, delay_id, timeout, server_of(&user))?;
        Ok::<_, MatrixError>(axum::Json(serde_json::json!({})).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// Element Call's `delayed_leave_event_delay_ms` default.
const DEFAULT_DELAY_TIMEOUT_MS: u64 = 8000;
