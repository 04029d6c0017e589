//! The HTTP server (axum), the service's one HTTP surface: the appservice API, the
//! meeting page and its join endpoint, the bot API (`api`), LiveKit's signalling
//! (`signal::routes`, mounted here on its own sub-state), server-side chat, health and
//! metrics. `router()` is a plain function so handlers are tested without a socket.

pub mod access;
pub mod api;
pub mod appservice;
pub mod chat;
pub mod error;
pub mod join;
pub mod limits;
pub mod moderation;
pub mod server_chat;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use ruma::OwnedUserId;
use tokio::sync::{Notify, mpsc};
use tower_governor::GovernorLayer;

use crate::auth::SecretToken;
use crate::signal::{self, SignalState};
use crate::store::Store;
use error::MatrixError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hs_token: SecretToken,
    pub bot_user_id: OwnedUserId,
    pub max_body_bytes: usize,
    /// Wakes the inbox worker when a transaction is stored.
    pub inbox_wake: Arc<Notify>,
    pub metrics: PrometheusHandle,
    /// Base `ws(s)://` URL of the SFU handed to joining clients
    /// (see [`join::ws_base_url`]).
    pub public_ws_url: String,
    /// What the bot API needs besides.
    pub bot_api: api::BotApiContext,
    /// The SFU, the keys that sign the access tokens we issue (and that `/rtc` checks),
    /// and the stored meetings' say on which rooms may open.
    pub signal: SignalState,
    /// With `encryption.to_device: transactions`, the bot's device, whose to-device
    /// messages, device lists and key counts come with transactions.
    pub to_device_in_transactions: Option<crate::matrix::crypto::device::DeviceSlot>,
    /// Limits on the public endpoints; `None` with `rate_limits.enabled: false`.
    pub rate_limits: Option<limits::RateLimits>,
    /// Element Call's focus (`element_call.enabled`).
    pub focus: Option<Arc<crate::focus::Focus>>,
    /// In a cluster, this node's `cluster.node_id`: joins are answered with the URL of
    /// the node their room is placed on. `None` on a single node.
    pub cluster_node: Option<String>,
}

impl AppState {
    /// A database connection, or the 500 the page and bot APIs answer without one.
    pub(crate) async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, MatrixError> {
        self.store
            .pool()
            .acquire()
            .await
            .map_err(|e| MatrixError::internal(&e))
    }

    /// A database transaction, or that 500.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, MatrixError> {
        self.store
            .pool()
            .begin()
            .await
            .map_err(|e| MatrixError::internal(&e))
    }
}

impl FromRef<AppState> for SignalState {
    fn from_ref(state: &AppState) -> Self {
        state.signal.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let limits = state.rate_limits.clone();
    let by_ip = |router: Router<AppState>, limit: Option<&limits::IpLimit>| match limit {
        Some(limit) => router.route_layer(
            GovernorLayer::new(limit.clone()).error_handler(limits::too_many_requests),
        ),
        None => router,
    };
    let by_meeting = |router: Router<AppState>| match &limits {
        Some(limits) => router.route_layer(
            GovernorLayer::new(limits.per_meeting.clone()).error_handler(limits::too_many_requests),
        ),
        None => router,
    };
    let codes = by_ip(
        by_meeting(Router::new().route(
            "/api/v1/meetings/{slug}/verification",
            post(access::create_verification),
        )),
        limits.as_ref().map(|l| &l.codes),
    );
    let joins = by_ip(
        by_meeting(Router::new().route("/api/v1/meetings/{slug}/join", post(join::join))),
        limits.as_ref().map(|l| &l.joins),
    );
    let reads = by_ip(
        by_meeting(
            Router::new()
                .route(
                    "/api/v1/meetings/{slug}/verification/{id}",
                    get(access::verification),
                )
                .route(
                    "/api/v1/meetings/{slug}/lobby/{id}",
                    get(access::lobby).delete(access::leave_lobby),
                )
                .route("/m/{slug}", get(web::page)),
        ),
        limits.as_ref().map(|l| &l.reads),
    );
    // LiveKit's side of the surface, described in docs/signalling.md: signalling, and
    // chat with a LiveKit token; the bot API's OpenAPI document does not cover them.
    let rtc = by_ip(signal::routes(), limits.as_ref().map(|l| &l.rtc));
    // Element Call's token endpoints, limited as joins are; absent unless enabled, so
    // that Element Call falls back to another focus on their 404.
    let focus = match state.focus {
        Some(_) => by_ip(
            crate::focus::endpoints::public_routes(),
            limits.as_ref().map(|l| &l.joins),
        )
        .merge(crate::focus::endpoints::health_routes())
        .layer(crate::focus::endpoints::cors())
        .merge(crate::focus::endpoints::homeserver_routes()),
        None => Router::new(),
    };
    Router::new()
        .merge(focus)
        .merge(appservice_routes(state.hs_token.clone()))
        .merge(rtc)
        .merge(server_chat::routes())
        .merge(codes)
        .merge(joins)
        .merge(reads)
        // With a bearer token the bot API (by id), without one the page's info (by slug).
        .route("/api/v1/meetings/{slug}", get(api::get_meeting))
        .route("/api/v1/meetings/{slug}/summary", post(api::post_summary))
        .route("/api/v1/meetings/{slug}/chat", get(chat::history))
        .route(
            "/api/v1/rooms/{room_id}/meetings",
            get(api::list_room_meetings),
        )
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/api/v1/meetings/{slug}/lobby", get(moderation::waiting))
        .route("/api/v1/meetings/{slug}/moderation", post(moderation::act))
        .route(
            "/twirp/livekit.RoomService/{method}",
            post(moderation::room_service),
        )
        .route("/assets/{*path}", get(web::asset))
        .route("/health", get(health))
        .fallback(|| async { MatrixError::unrecognized() })
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        .with_state(state)
}

/// What `check-config` serves while the service itself is not running: the ping route
/// alone, which hands the transaction ids of the pings it receives to `pings`.
#[derive(Clone)]
pub struct PingOnlyState {
    pub hs_token: SecretToken,
    pub max_body_bytes: usize,
    pub pings: mpsc::UnboundedSender<String>,
}

/// Only the ping route, for `check-config` when the service itself is not running.
pub fn ping_only_router(state: PingOnlyState) -> Router {
    Router::new()
        .route("/_matrix/app/v1/ping", post(appservice::check_ping))
        .route_layer(axum::middleware::from_fn_with_state(
            state.hs_token.clone(),
            appservice::require_hs_token,
        ))
        .fallback(|| async { MatrixError::unrecognized() })
        .with_state(state)
}

fn appservice_routes(hs_token: SecretToken) -> Router<AppState> {
    Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn_id}",
            put(appservice::put_transaction),
        )
        .route(
            "/_matrix/app/v1/users/{user_id}",
            get(appservice::query_user),
        )
        .route("/_matrix/app/v1/rooms/{alias}", get(appservice::query_room))
        .route("/_matrix/app/v1/ping", post(appservice::ping))
        .route_layer(axum::middleware::from_fn_with_state(
            hs_token,
            appservice::require_hs_token,
        ))
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(state.store.pool()).await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ok" })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "status": "database unavailable" })),
            )
        }
    }
}

/// `/metrics` (Prometheus), on a listener of its own (`metrics.hostname`,
/// `metrics.port`): never on the public port, where it would tell anyone how many
/// meetings run and who is in them.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    StatusCode::OK,
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}

#[cfg(test)]
mod tests;
