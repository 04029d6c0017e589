//! LiveKit's client signalling over WebSocket: `/rtc` (dual peer connections) and
//! `/rtc/v1` (single peer connection, the join request in the query, see [`v1`]): token
//! checks, protobuf framing, pings, and resume after a dropped socket, mapped onto the
//! SFU's commands. Query strings carry tokens and SDPs: nothing here logs them.
//!
//! Whether a token's room may open is asked of a [`RoomGate`] (the stored meetings,
//! behind a trait so that this module needs no store): an ended meeting stays ended
//! whatever the SFU remembers, across restarts too.

pub mod v1;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::token::{Claims, SfuKeys, TokenError};
use crate::sfu::bucket::TokenBucket;
use crate::sfu::{Engine, JoinError, JoinRequest, ParticipantKey, SfuHandle};

/// Largest signalling frame accepted (an SDP with many m-lines fits easily).
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// What the signalling routes need.
#[derive(Clone)]
pub struct SignalState {
    pub sfu: SfuHandle,
    pub keys: Arc<SfuKeys>,
    /// Which rooms may open.
    pub rooms: Arc<dyn RoomGate>,
}

/// Says whether a room may open now, from what outlives the SFU's memory (the meeting's
/// stored state): the SFU's own list of closed rooms is bounded and lost on restart.
pub trait RoomGate: Send + Sync {
    /// Whether `identity` (empty for a server-side caller) may be in `room` now.
    fn room_access<'a>(&'a self, room: &'a str, identity: &'a str) -> BoxFuture<'a, RoomAccess>;
}

/// A [`RoomGate`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    /// A meeting that has not ended, or a room that is no meeting.
    Open,
    /// The meeting has ended; it does not open again.
    Ended,
    /// The room is named like a meeting nobody created.
    Unknown,
    /// The answer could not be read (the database is down): the client may retry.
    Unavailable,
    /// This participant was taken out of the meeting (by a moderator, for leaving the
    /// room, or by a stricter level): its tokens open nothing any more. The reason is
    /// a stable name the page shows a sentence for.
    Removed(&'static str),
    /// The meeting's room is placed on another node of the cluster: joining again
    /// through the join endpoint gives that node's URL.
    Elsewhere,
}

impl RoomAccess {
    /// `Ok` when the room may open, else the refusal: 4xx tells LiveKit's SDKs not to
    /// retry, 503 that they may.
    pub fn refusal(self) -> Result<(), (StatusCode, &'static str)> {
        match self {
            RoomAccess::Open => Ok(()),
            RoomAccess::Ended => Err((StatusCode::FORBIDDEN, "the meeting has ended")),
            RoomAccess::Removed(reason) => Err((StatusCode::FORBIDDEN, reason)),
            RoomAccess::Unknown => Err((StatusCode::FORBIDDEN, "no such meeting")),
            RoomAccess::Elsewhere => Err((
                StatusCode::MISDIRECTED_REQUEST,
                "the meeting is hosted on another node: join again for its address",
            )),
            RoomAccess::Unavailable => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the meeting cannot be checked now; try again",
            )),
        }
    }
}

/// `/rtc`, `/rtc/v1` and their `validate` routes, for any router whose state holds a
/// [`SignalState`] (`http::router` mounts them).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    SignalState: FromRef<S>,
{
    // Element Call runs on another origin than its focus and reads here why its
    // WebSocket was refused; the answers say nothing without a valid token.
    let validation = Router::new()
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1/validate", get(validate_v1))
        .layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(tower_http::cors::Any)
                .allow_methods([axum::http::Method::GET])
                .allow_headers([axum::http::header::AUTHORIZATION]),
        );
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/v1", get(rtc_v1))
        .merge(validation)
}

#[derive(Debug, Default, Deserialize)]
pub struct RtcParams {
    access_token: Option<String>,
    #[serde(default)]
    reconnect: Option<String>,
    sid: Option<String>,
    auto_subscribe: Option<String>,
    /// `/rtc/v1` only: the base64url `WrappedJoinRequest`.
    join_request: Option<String>,
}

fn flag(value: &Option<String>) -> Option<bool> {
    value
        .as_deref()
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A refusal in LiveKit's plain-text style, with the status its SDKs understand.
fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    // CORS headers, where a browser elsewhere may read the answer (the validation
    // routes), come from the router's layer.
    (status, text.into()).into_response()
}

/// The token from `Authorization: Bearer`, else from the query (browsers cannot set
/// headers on a WebSocket).
fn token_from(headers: &HeaderMap, params: &RtcParams) -> Option<String> {
    crate::auth::bearer(headers)
        .token()
        .map(str::to_owned)
        .or_else(|| params.access_token.clone())
}

/// Checks the token, the grant to join its room, and that the room may open.
async fn authorize(
    state: &SignalState,
    headers: &HeaderMap,
    params: &RtcParams,
) -> Result<Claims, (StatusCode, String)> {
    let Some(token) = token_from(headers, params) else {
        return Err((StatusCode::UNAUTHORIZED, "missing access token".into()));
    };
    let claims = state
        .keys
        .verify(&token, crate::clock::now_ms())
        .map_err(|e: TokenError| {
            metrics::counter!("tchap_visio_signal_refused_total", "reason" => "token").increment(1);
            (StatusCode::UNAUTHORIZED, e.to_string())
        })?;
    if !claims.video.room_join || claims.video.room.is_empty() {
        metrics::counter!("tchap_visio_signal_refused_total", "reason" => "grant").increment(1);
        return Err((
            StatusCode::UNAUTHORIZED,
            "the access token does not grant roomJoin".into(),
        ));
    }
    let access = state
        .rooms
        .room_access(&claims.video.room, &claims.sub)
        .await;
    if let Err((status, text)) = access.refusal() {
        let reason = match access {
            RoomAccess::Ended => "ended",
            RoomAccess::Removed(_) => "removed",
            RoomAccess::Unknown => "unknown_meeting",
            RoomAccess::Elsewhere => "elsewhere",
            _ => "unavailable",
        };
        metrics::counter!("tchap_visio_signal_refused_total", "reason" => reason).increment(1);
        return Err((status, text.into()));
    }
    Ok(claims)
}

/// `/rtc/v1/validate`: as `/rtc/validate`, and the join request must decode (checked
/// after the token, so that a bad token is still answered 401).
async fn validate_v1(
    State(state): State<SignalState>,
    Query(params): Query<RtcParams>,
    headers: HeaderMap,
) -> Response {
    if let Err((status, text)) = authorize(&state, &headers, &params).await {
        return refuse(status, text);
    }
    if let Err(e) = v1::decode(params.join_request.as_deref()) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    validate(State(state), Query(params), headers).await
}

async fn validate(
    State(state): State<SignalState>,
    Query(params): Query<RtcParams>,
    headers: HeaderMap,
) -> Response {
    let claims = match authorize(&state, &headers, &params).await {
        Ok(claims) => claims,
        Err((status, text)) => return refuse(status, text),
    };
    // Clients ask here why a WebSocket was refused: say when the meeting is full.
    match state.sfu.admit(claims.video.room, claims.sub).await {
        Ok(()) => refuse(StatusCode::OK, "success"),
        Err(e @ (JoinError::RoomFull(_) | JoinError::ServerFull | JoinError::Stopped)) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e) => refuse(StatusCode::FORBIDDEN, e.to_string()),
    }
}

async fn rtc(
    State(state): State<SignalState>,
    Query(params): Query<RtcParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let claims = match authorize(&state, &headers, &params).await {
        Ok(claims) => claims,
        Err((status, text)) => return refuse(status, text),
    };
    metrics::counter!("tchap_visio_signal_connections_total", "path" => "/rtc").increment(1);
    let resume_sid = params
        .sid
        .clone()
        .filter(|_| flag(&params.reconnect) == Some(true));
    let request = join_request(&claims, flag(&params.auto_subscribe));
    connect(state, claims, resume_sid, request, upgrade).await
}

/// `/rtc/v1`: single peer connection. The join request (and the first publisher offer)
/// comes in the query; a resume is a join request with `reconnect` and the sid.
async fn rtc_v1(
    State(state): State<SignalState>,
    Query(params): Query<RtcParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let claims = match authorize(&state, &headers, &params).await {
        Ok(claims) => claims,
        Err((status, text)) => return refuse(status, text),
    };
    let join = match v1::decode(params.join_request.as_deref()) {
        Ok(join) => join,
        Err(e) => {
            metrics::counter!("tchap_visio_signal_refused_total", "reason" => "join_request")
                .increment(1);
            return refuse(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    metrics::counter!("tchap_visio_signal_connections_total", "path" => "/rtc/v1").increment(1);
    let resume_sid =
        Some(join.participant_sid.clone()).filter(|sid| join.reconnect && !sid.is_empty());
    // The join request's metadata and attributes are not applied: the token's are what
    // the service vouches for (the Matrix identity of verified users).
    let mut request = join_request(&claims, join.connection_settings.map(|c| c.auto_subscribe));
    request.single_pc = true;
    request.publisher_offer = join.publisher_offer;
    connect(state, claims, resume_sid, request, upgrade).await
}

/// Joins (or resumes) and upgrades to the signalling WebSocket.
async fn connect(
    state: SignalState,
    claims: Claims,
    resume_sid: Option<String>,
    request: JoinRequest,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (sink, outgoing) = crate::sfu::driver::signal_channel();
    let session_id: u64 = rand::random();
    let joined = match resume_sid {
        Some(sid) => {
            let result = state
                .sfu
                .resume(
                    claims.video.room.clone(),
                    sid,
                    claims.sub.clone(),
                    sink,
                    session_id,
                )
                .await;
            if result.is_ok() {
                metrics::counter!("tchap_visio_sfu_resumes_total").increment(1);
            }
            result
        }
        None => state.sfu.join(request, sink, session_id).await,
    };
    let key = match joined {
        Ok(key) => Some(key),
        Err(JoinError::UnknownSession) => None,
        Err(e @ (JoinError::RoomFull(_) | JoinError::ServerFull | JoinError::Stopped)) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => return refuse(StatusCode::FORBIDDEN, e.to_string()),
    };
    let sfu = state.sfu.clone();
    let refresh = Refresher::new(state, claims);
    upgrade
        .max_message_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| session(socket, sfu, key, session_id, outgoing, refresh))
}

/// Fresh tokens for a connected participant (LiveKit's `refresh_token`), so that a full
/// reconnect after its join token expired still works: each one lives as long as the
/// one it replaces, and comes at half its lifetime (5 minutes for our 10-minute tokens).
/// None comes once the participant was removed or the meeting ended.
pub(crate) struct Refresher {
    state: SignalState,
    claims: Claims,
    lifetime_secs: i64,
    next: tokio::time::Instant,
}

impl Refresher {
    pub(crate) fn new(state: SignalState, claims: Claims) -> Self {
        let lifetime_secs =
            (claims.exp - claims.nbf.max(0)).clamp(10, crate::auth::token::MAX_TOKEN_LIFETIME_SECS);
        Self {
            next: tokio::time::Instant::now() + Self::interval(lifetime_secs),
            state,
            claims,
            lifetime_secs,
        }
    }

    fn interval(lifetime_secs: i64) -> Duration {
        Duration::from_secs((lifetime_secs / 2).max(5) as u64)
    }

    /// The next token, or `None` when the participant may no longer be in the room.
    pub(crate) async fn token(&mut self) -> Option<String> {
        self.next = tokio::time::Instant::now() + Self::interval(self.lifetime_secs);
        let access = self
            .state
            .rooms
            .room_access(&self.claims.video.room, &self.claims.sub)
            .await;
        if access != RoomAccess::Open {
            return None;
        }
        let now = crate::clock::now_ms().div_euclid(1000);
        self.claims.nbf = now;
        self.claims.exp = now + self.lifetime_secs;
        metrics::counter!("tchap_visio_tokens_refreshed_total").increment(1);
        Some(self.state.keys.issue(&self.claims))
    }
}

fn join_request(claims: &Claims, auto_subscribe: Option<bool>) -> JoinRequest {
    let name = if claims.name.is_empty() {
        claims.sub.clone()
    } else {
        claims.name.clone()
    };
    let sources: Vec<i32> = claims
        .video
        .can_publish_sources
        .iter()
        .filter_map(|s| track_source(s))
        .map(|s| s as i32)
        .collect();
    // Sources named but none known: nothing may be published (empty would allow all).
    let no_known_source = sources.is_empty() && !claims.video.can_publish_sources.is_empty();
    JoinRequest {
        room: claims.video.room.clone(),
        identity: claims.sub.clone(),
        name,
        metadata: claims.metadata.clone(),
        attributes: claims.attributes.clone().into_iter().collect(),
        can_publish: claims.video.publish_allowed() && !no_known_source,
        can_subscribe: claims.video.subscribe_allowed(),
        can_publish_data: claims.video.publish_data_allowed(),
        can_update_own_metadata: claims.video.update_own_metadata_allowed(),
        can_publish_sources: sources,
        auto_subscribe: auto_subscribe.unwrap_or(true),
        single_pc: false,
        publisher_offer: None,
    }
}

/// A `canPublishSources` entry as LiveKit's `TrackSource` (names as in its grants).
fn track_source(name: &str) -> Option<lk::TrackSource> {
    match name {
        "camera" => Some(lk::TrackSource::Camera),
        "microphone" => Some(lk::TrackSource::Microphone),
        "screen_share" => Some(lk::TrackSource::ScreenShare),
        "screen_share_audio" => Some(lk::TrackSource::ScreenShareAudio),
        _ => None,
    }
}

/// One participant's WebSocket. `key` is `None` when a resume found no session: the
/// client is told to reconnect from scratch.
async fn session(
    socket: WebSocket,
    sfu: SfuHandle,
    key: Option<ParticipantKey>,
    session_id: u64,
    mut outgoing: mpsc::Receiver<signal_response::Message>,
    mut refresh: Refresher,
) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let Some(key) = key else {
        let leave = signal_response::Message::Leave(lk::LeaveRequest {
            can_reconnect: true,
            reason: lk::DisconnectReason::StateMismatch as i32,
            action: lk::leave_request::Action::Reconnect as i32,
            ..Default::default()
        });
        let _ = ws_tx.send(encode(leave)).await;
        let _ = ws_tx.close().await;
        return;
    };
    let mut budget = SignalBudget::new(std::time::Instant::now());
    loop {
        tokio::select! {
            incoming = tokio::time::timeout(Duration::from_secs(60), ws_rx.next()) => {
                let frame = match incoming {
                    Ok(Some(Ok(frame))) => frame,
                    // Closed, broken, or silent for a minute: media may go on; the client resumes.
                    _ => break,
                };
                let bytes = match frame {
                    WsMessage::Binary(bytes) => bytes,
                    WsMessage::Close(_) => break,
                    // Text frames (JSON signalling) are not supported; pings are answered by axum.
                    _ => continue,
                };
                match budget.admit(std::time::Instant::now(), bytes.len()) {
                    Admit::Yes => {}
                    Admit::Drop => {
                        metrics::counter!("tchap_visio_signal_throttled_total").increment(1);
                        continue;
                    }
                    Admit::Disconnect => {
                        metrics::counter!("tchap_visio_signal_evicted_total", "reason" => "flood")
                            .increment(1);
                        tracing::warn!(key, "signalling flood: disconnected");
                        sfu.signal(key, signal_request::Message::Leave(lk::LeaveRequest::default()));
                        let _ = ws_tx.close().await;
                        return;
                    }
                }
                let message = match Engine::decode_request(&bytes) {
                    Ok(Some(message)) => message,
                    Ok(None) => continue,
                    Err(_) => {
                        metrics::counter!("tchap_visio_signal_bad_frames_total").increment(1);
                        continue;
                    }
                };
                match message {
                    // Pings are answered here, without a trip through the engine.
                    signal_request::Message::Ping(timestamp) => {
                        let pong = signal_response::Message::Pong(crate::clock::now_ms().max(timestamp));
                        if !send_within(&mut ws_tx, pong).await {
                            break;
                        }
                    }
                    signal_request::Message::PingReq(ping) => {
                        let pong = signal_response::Message::PongResp(lk::Pong {
                            last_ping_timestamp: ping.timestamp,
                            timestamp: crate::clock::now_ms(),
                        });
                        if !send_within(&mut ws_tx, pong).await {
                            break;
                        }
                    }
                    signal_request::Message::Leave(leave) => {
                        sfu.signal(key, signal_request::Message::Leave(leave));
                        let _ = ws_tx.close().await;
                        return;
                    }
                    other => sfu.signal(key, other),
                }
            }
            _ = tokio::time::sleep_until(refresh.next) => {
                if let Some(token) = refresh.token().await
                    && !send_within(&mut ws_tx, signal_response::Message::RefreshToken(token)).await
                {
                    break;
                }
            }
            message = outgoing.recv() => {
                let Some(message) = message else {
                    // The engine closed this session (left, replaced or removed).
                    let _ = ws_tx.close().await;
                    return;
                };
                if !send_within(&mut ws_tx, message).await {
                    break;
                }
            }
        }
    }
    sfu.signal_lost(key, session_id);
}

/// How long one message may take to leave: a client that does not read for this long is
/// gone as far as signalling goes (it may resume).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

async fn send_within(
    ws_tx: &mut futures::stream::SplitSink<WebSocket, WsMessage>,
    message: signal_response::Message,
) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws_tx.send(encode(message))).await,
        Ok(Ok(()))
    )
}

/// Signalling frames and bytes a client may send per second. An SDP exchange, trickled
/// candidates and track settings of a busy meeting stay far below; a client over the
/// budget has its frames dropped, and one that keeps at it is disconnected.
const SIGNAL_FRAMES_PER_SEC: f64 = 50.0;
const SIGNAL_FRAMES_BURST: f64 = 200.0;
const SIGNAL_BYTES_PER_SEC: f64 = 512.0 * 1024.0;
const SIGNAL_BYTES_BURST: f64 = 2.0 * 1024.0 * 1024.0;
/// Frames dropped in a row before the client is disconnected.
const SIGNAL_DROPS_TOLERATED: u32 = 500;

enum Admit {
    Yes,
    Drop,
    Disconnect,
}

struct SignalBudget {
    frames: TokenBucket,
    bytes: TokenBucket,
    dropped_in_a_row: u32,
}

impl SignalBudget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            frames: TokenBucket::new(SIGNAL_FRAMES_PER_SEC, SIGNAL_FRAMES_BURST, now),
            bytes: TokenBucket::new(SIGNAL_BYTES_PER_SEC, SIGNAL_BYTES_BURST, now),
            dropped_in_a_row: 0,
        }
    }

    fn admit(&mut self, now: std::time::Instant, len: usize) -> Admit {
        if self.frames.take(now, 1.0) && self.bytes.take(now, len as f64) {
            self.dropped_in_a_row = 0;
            return Admit::Yes;
        }
        self.dropped_in_a_row += 1;
        if self.dropped_in_a_row > SIGNAL_DROPS_TOLERATED {
            Admit::Disconnect
        } else {
            Admit::Drop
        }
    }
}

fn encode(message: signal_response::Message) -> WsMessage {
    let response = lk::SignalResponse {
        message: Some(message),
    };
    WsMessage::Binary(response.encode_to_vec().into())
}
