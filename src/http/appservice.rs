//! The application service API the homeserver calls: transactions, user and room
//! queries, ping. Every route checks the `hs_token` first.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use super::error::MatrixError;
use super::{AppState, PingOnlyState};
use crate::auth::{SecretToken, bearer};
use crate::matrix::crypto::CryptoInput;
use crate::matrix::intake::{IntakeError, parse_transaction};
use crate::store::inbox::TransactionOutcome;

#[derive(Deserialize)]
pub struct TokenQuery {
    access_token: Option<String>,
}

/// Accepts `Authorization: Bearer <hs_token>` or the legacy `access_token` query
/// parameter; when both are sent both must match.
pub async fn require_hs_token(
    State(hs_token): State<SecretToken>,
    Query(query): Query<TokenQuery>,
    request: Request,
    next: Next,
) -> Result<Response, MatrixError> {
    let header = bearer(request.headers()).token();
    let presented: Vec<&str> = header
        .into_iter()
        .chain(query.access_token.as_deref())
        .collect();
    if presented.is_empty() {
        return Err(MatrixError::missing_token());
    }
    // Check every presented token (no short-circuit), so timing does not tell which failed.
    let all_match = presented
        .iter()
        .fold(true, |ok, token| hs_token.matches(token) & ok);
    if !all_match {
        return Err(MatrixError::forbidden());
    }
    if query.access_token.is_some() {
        // The spec still allows it, so it is accepted; but a query string lands in
        // proxies' access logs. Said once per process.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "the homeserver sends hs_token in the query string (access_token), where proxies log it; \
                 Synapse >= 1.81 sends it in the Authorization header: update it, or keep access logs off this path"
            );
        });
        metrics::counter!("tchap_visio_hs_token_in_query_total").increment(1);
    }
    Ok(next.run(request).await)
}

/// Reads a body up to `limit` bytes; over it, 413 `M_TOO_LARGE` without reading the rest.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, MatrixError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(MatrixError::too_large(limit));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| MatrixError::too_large(limit))
}

/// Parses a JSON body: 400 `M_NOT_JSON` when it is not JSON, `M_BAD_JSON` naming the
/// expected `shape` (e.g. `{name, browser_id}`) when it does not fit.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    shape: &str,
) -> Result<T, MatrixError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            MatrixError::bad_json(format!("the body does not fit {shape}: {e}"))
        } else {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                "the body is not valid JSON",
            )
        }
    })
}

pub async fn put_transaction(
    State(state): State<AppState>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, MatrixError> {
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let events = parse_transaction(&txn_id, &bytes).map_err(|e| match e {
        IntakeError::NotJson => {
            MatrixError::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", e.to_string())
        }
        IntakeError::BadJson(_) => {
            MatrixError::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string())
        }
    })?;
    // Where the bot's share of a command's latency starts (benches/bridge_latency.py).
    tracing::trace!(
        txn_id,
        first_event = events.first().map(|e| e.event_id.as_str()),
        "transaction received"
    );
    let crypto_input = state.to_device_in_transactions.as_ref().and_then(|slot| {
        let body: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let device = slot.get().map(|d| d.device_id.as_str());
        let input = CryptoInput::from_transaction(&body, state.bot_user_id.as_str(), device)?;
        Some(serde_json::to_string(&input).expect("crypto input always serialises"))
    });
    let outcome = state
        .store
        .store_transaction_with_crypto(&txn_id, &events, crypto_input.as_deref())
        .await
        .map_err(|e| MatrixError::internal(&e))?;
    if crypto_input.is_some()
        && let Some(device) = state
            .to_device_in_transactions
            .as_ref()
            .and_then(|s| s.get())
    {
        device.input_wake.notify_one();
    }
    match outcome {
        TransactionOutcome::Stored { new_events } | TransactionOutcome::ReusedId { new_events } => {
            if matches!(outcome, TransactionOutcome::ReusedId { .. }) {
                // Not an error of ours, but the homeserver numbers its transactions
                // again (Synapse on SQLite after a restart): worth an admin's notice.
                metrics::counter!("tchap_visio_transactions_reused_id_total").increment(1);
                tracing::warn!(
                    txn_id,
                    events = events.len(),
                    new_events,
                    "the homeserver reused a transaction id with other events \
                     (restarted?); processed as a new transaction"
                );
            } else {
                tracing::debug!(
                    txn_id,
                    events = events.len(),
                    new_events,
                    "transaction stored"
                );
            }
            metrics::counter!("tchap_visio_transactions_received_total").increment(1);
            metrics::counter!("tchap_visio_events_received_total").increment(new_events as u64);
            metrics::gauge!("tchap_visio_inbox_pending").increment(new_events as f64);
            state.inbox_wake.notify_one();
        }
        TransactionOutcome::Replay => {
            metrics::counter!("tchap_visio_transactions_replayed_total").increment(1);
            tracing::debug!(txn_id, "transaction replayed; nothing to do");
        }
    }
    Ok(Json(serde_json::json!({})))
}

pub async fn query_user(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    // Ghosts are registered by us before they are used, so the homeserver never needs
    // us to create one on demand: the bot and the ghosts we registered exist, no other.
    if user_id == state.bot_user_id.as_str() {
        return Ok(Json(serde_json::json!({})));
    }
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| MatrixError::internal(&crate::store::StoreError::from(e)))?;
    match crate::store::ghosts::display_name(&mut conn, &user_id).await {
        Ok(Some(_)) => Ok(Json(serde_json::json!({}))),
        Ok(None) => Err(MatrixError::not_found("User")),
        Err(e) => Err(MatrixError::internal(&e)),
    }
}

pub async fn query_room(
    Path(_alias): Path<String>,
) -> Result<Json<serde_json::Value>, MatrixError> {
    Err(MatrixError::not_found("Room alias"))
}

pub async fn ping(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, MatrixError> {
    ping_transaction_id(&headers, body, state.max_body_bytes).await?;
    Ok(Json(serde_json::json!({})))
}

/// The ping route of `check-config`'s stand-in: also reports the ping's transaction id.
pub async fn check_ping(
    State(state): State<PingOnlyState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, MatrixError> {
    if let Some(txn) = ping_transaction_id(&headers, body, state.max_body_bytes).await? {
        let _ = state.pings.send(txn);
    }
    Ok(Json(serde_json::json!({})))
}

/// Reads a ping's body (empty, or JSON with an optional `transaction_id`) and logs it.
async fn ping_transaction_id(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Option<String>, MatrixError> {
    let bytes = read_body(headers, body, limit).await?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "the body is not valid JSON",
        )
    })?;
    let txn = value.get("transaction_id").and_then(|t| t.as_str());
    if let Some(txn) = txn {
        tracing::info!(transaction_id = txn, "ping from the homeserver");
    }
    Ok(txn.map(str::to_owned))
}
