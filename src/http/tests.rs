//! Handler tests without a socket (`tower::ServiceExt::oneshot`), against a real SQLite
//! and PostgreSQL store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

use super::*;
use crate::auth::token::SfuKeys;
use crate::store::testing::both_dialects;

const TOKEN: &str = "hs-token-for-tests-0123456789abcdef";
/// The SFU key of the test state, and the URL it hands out.
pub(super) const TEST_SFU_KEY: &str = "test-key";
pub(super) const TEST_WS_URL: &str = "ws://127.0.0.1:29330";

pub(super) fn sfu_keys() -> SfuKeys {
    SfuKeys::from_config(
        &[(
            TEST_SFU_KEY.to_owned(),
            "test-secret-0123456789abcdef0123".to_owned(),
        )]
        .into(),
        TEST_SFU_KEY,
    )
}

/// The bridge as the example config makes it (French).
fn bridge_context() -> crate::bridge::BridgeContext {
    use figment::providers::{Format, Yaml};
    let config: crate::config::Config = figment::Figment::new()
        .merge(Yaml::string(include_str!(
            "../../config/example-config.yaml"
        )))
        .extract()
        .expect("the example config parses");
    crate::bridge::BridgeContext::from_config(&config, None, None)
}

/// The signalling state of tests: a real SFU on a loopback port of its own (it stops
/// with the test's runtime).
pub(super) async fn signal_state(store: Store) -> SignalState {
    let config = crate::sfu::EngineConfig {
        candidates: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9))],
        max_participants_per_room: 100,
        max_participants: 1000,
        ice_servers: Vec::new(),
    };
    let (sfu, _events, _task) = crate::sfu::SfuHandle::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        config,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("an SFU on a loopback port");
    SignalState {
        sfu,
        keys: Arc::new(sfu_keys()),
        rooms: Arc::new(join::StoredMeetings { store }),
    }
}

pub(super) async fn state(store: Store) -> AppState {
    AppState {
        signal: signal_state(store.clone()).await,
        store,
        hs_token: SecretToken::new(TOKEN),
        bot_user_id: "@visio:localhost".try_into().expect("id"),
        max_body_bytes: 4096,
        inbox_wake: Arc::new(Notify::new()),
        metrics: crate::observability::metrics_handle(),
        public_ws_url: TEST_WS_URL.into(),
        bot_api: api::BotApiContext {
            outbound_wake: Arc::new(Notify::new()),
            bridge: Arc::new(bridge_context()),
        },
        to_device_in_transactions: None,
        rate_limits: None,
        focus: None,
    }
}

pub(super) async fn call(store: &Store, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let (status, _, json) = call_with_headers(store, request).await;
    (status, json)
}

/// [`call`], with the response's headers.
pub(super) async fn call_with_headers(
    store: &Store,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = router(state(store.clone()).await)
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn txn(
    id: &str,
    auth: Option<&str>,
    query_token: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let uri = match query_token {
        Some(t) => format!("/_matrix/app/v1/transactions/{id}?access_token={t}"),
        None => format!("/_matrix/app/v1/transactions/{id}"),
    };
    let mut builder = Request::put(uri).header("content-type", "application/json");
    if let Some(token) = auth {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(body.into()).expect("request")
}

const ONE_EVENT: &str = r#"{"events":[{"type":"m.room.message","event_id":"$e1","room_id":"!r:localhost","sender":"@a:localhost","origin_server_ts":1,"content":{"msgtype":"m.text","body":"hi"}}]}"#;

async fn stored(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

both_dialects!(
    auth_is_checked_before_anything_is_stored,
    |store: Store| async move {
        let cases = [
            (None, None, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
            (Some("wrong"), None, StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            (None, Some("wrong"), StatusCode::FORBIDDEN, "M_FORBIDDEN"),
            (
                Some(TOKEN),
                Some("wrong"),
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
            ),
            (
                Some("wrong"),
                Some(TOKEN),
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
            ),
        ];
        for (header, query, status, errcode) in cases {
            let (got, body) = call(&store, txn("t", header, query, ONE_EVENT)).await;
            assert_eq!(
                (got, body["errcode"].as_str()),
                (status, Some(errcode)),
                "{header:?} {query:?}"
            );
        }
        assert_eq!(stored(&store).await, 0);
        for (header, query) in [
            (Some(TOKEN), None),
            (None, Some(TOKEN)),
            (Some(TOKEN), Some(TOKEN)),
        ] {
            let (got, _) = call(&store, txn("t", header, query, ONE_EVENT)).await;
            assert_eq!(got, StatusCode::OK);
        }
        assert_eq!(stored(&store).await, 1);
    }
);

both_dialects!(
    bad_bodies_get_matrix_errors_and_store_nothing,
    |store: Store| async move {
        let oversize = format!(r#"{{"events":[],"pad":"{}"}}"#, "x".repeat(5000));
        let cases: [(&str, String, StatusCode, &str); 4] = [
            (
                "a",
                "{not json".into(),
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
            ),
            (
                "b",
                r#"{"evnts":[]}"#.into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            (
                "c",
                r#"{"events":[{"type":"x"}]}"#.into(),
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
            ),
            ("d", oversize, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        ];
        for (id, body, status, errcode) in cases {
            let (got, json) = call(&store, txn(id, Some(TOKEN), None, body)).await;
            assert_eq!(
                (got, json["errcode"].as_str()),
                (status, Some(errcode)),
                "{id}"
            );
        }
        assert_eq!(stored(&store).await, 0);
        // A refused transaction id can be sent again once valid.
        let (got, _) = call(&store, txn("a", Some(TOKEN), None, ONE_EVENT)).await;
        assert_eq!(got, StatusCode::OK);
        assert_eq!(stored(&store).await, 1);
    }
);

both_dialects!(
    replays_are_acknowledged_and_ignored,
    |store: Store| async move {
        for _ in 0..20 {
            let (got, body) = call(&store, txn("same", Some(TOKEN), None, ONE_EVENT)).await;
            assert_eq!((got, body), (StatusCode::OK, serde_json::json!({})));
        }
        assert_eq!(stored(&store).await, 1);
    }
);

both_dialects!(
    a_reused_txn_id_with_other_events_is_processed,
    |store: Store| async move {
        // Synapse on SQLite after a restart: txn id 1 again, now with a new command.
        let (got, _) = call(&store, txn("1", Some(TOKEN), None, ONE_EVENT)).await;
        assert_eq!(got, StatusCode::OK);
        let after_restart = ONE_EVENT.replace("$e1", "$e2").replace("hi", "!visio");
        for _ in 0..3 {
            let (got, body) =
                call(&store, txn("1", Some(TOKEN), None, after_restart.clone())).await;
            assert_eq!((got, body), (StatusCode::OK, serde_json::json!({})));
        }
        let pending = store.pending_inbox(10).await.expect("pending");
        let ids: Vec<_> = pending.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["$e1", "$e2"]);
        assert!(pending[1].json.contains("!visio"));
    }
);

both_dialects!(unknown_routes_and_methods, |store: Store| async move {
    let (got, body) = call(
        &store,
        Request::get("/nowhere").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(
        (got, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED"))
    );
    let req = Request::get("/_matrix/app/v1/unknown")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("req");
    let (got, body) = call(&store, req).await;
    assert_eq!(
        (got, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED"))
    );
    let req = Request::get("/_matrix/app/v1/transactions/t")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("req");
    let (got, body) = call(&store, req).await;
    assert_eq!(
        (got, body["errcode"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("M_UNRECOGNIZED"))
    );
});

both_dialects!(queries_and_ping, |store: Store| async move {
    let get = |uri: &str| {
        Request::get(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("req")
    };
    let (got, _) = call(&store, get("/_matrix/app/v1/users/@visio:localhost")).await;
    assert_eq!(got, StatusCode::OK);
    let (got, body) = call(&store, get("/_matrix/app/v1/users/@someone:localhost")).await;
    assert_eq!(
        (got, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    // A ghost we registered exists.
    let mut conn = store.pool().acquire().await.expect("conn");
    crate::store::ghosts::put(&mut conn, "@visio_g1:localhost", "Zoé (invité·e)", 1)
        .await
        .expect("put");
    drop(conn);
    let (got, _) = call(&store, get("/_matrix/app/v1/users/@visio_g1:localhost")).await;
    assert_eq!(got, StatusCode::OK);
    let (got, _) = call(&store, get("/_matrix/app/v1/rooms/%23a:localhost")).await;
    assert_eq!(got, StatusCode::NOT_FOUND);
    let ping = Request::post("/_matrix/app/v1/ping")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(r#"{"transaction_id":"x"}"#))
        .expect("req");
    assert_eq!(call(&store, ping).await.0, StatusCode::OK);
    let (got, body) = call(
        &store,
        Request::get("/health").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!((got, body["status"].as_str()), (StatusCode::OK, Some("ok")));
});
