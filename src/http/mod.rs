//! The HTTP server (axum): the appservice API, the meeting page and its join endpoint,
//! the bot API (`api`), health and metrics. `router()` is a plain function so handlers
//! are tested without a socket.

pub mod api;
pub mod appservice;
pub mod chat;
pub mod error;
pub mod join;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use ruma::OwnedUserId;
use tokio::sync::{Notify, mpsc};

use crate::auth::SecretToken;
use crate::auth::token::SfuKeys;
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
    pub metrics: Option<PrometheusHandle>,
    /// Receives the transaction ids of pings (used by `check-config`).
    pub pings: Option<mpsc::UnboundedSender<String>>,
    /// Keys that sign the access tokens we issue (and that the SFU checks).
    pub sfu_keys: Arc<SfuKeys>,
    /// Base `ws(s)://` URL of the SFU handed to joining clients
    /// (see [`join::ws_base_url`]).
    pub public_ws_url: String,
    /// What the bot API needs besides.
    pub bot_api: api::BotApiContext,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(appservice_routes(state.clone()))
        .route("/api/v1/meetings/{slug}/join", post(join::join))
        // With a bearer token the bot API (by id), without one the page's info (by slug).
        .route("/api/v1/meetings/{slug}", get(api::get_meeting))
        .route("/api/v1/meetings/{slug}/summary", post(api::post_summary))
        .route("/api/v1/meetings/{slug}/chat", get(chat::history))
        .route(
            "/api/v1/rooms/{room_id}/meetings",
            get(api::list_room_meetings),
        )
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/m/{slug}", get(web::page))
        .route("/assets/{*path}", get(web::asset))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { MatrixError::unrecognized() })
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed() })
        .with_state(state)
}

/// Only the ping route, for `check-config` when the service itself is not running.
pub fn ping_only_router(state: AppState) -> Router {
    Router::new()
        .route("/_matrix/app/v1/ping", post(appservice::ping))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            appservice::require_hs_token,
        ))
        .fallback(|| async { MatrixError::unrecognized() })
        .with_state(state)
}

fn appservice_routes(state: AppState) -> Router<AppState> {
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
            state,
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

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => MatrixError::unrecognized().into_response(),
    }
}

#[cfg(test)]
mod tests;
