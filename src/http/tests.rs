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
        1,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("an SFU on a loopback port");
    SignalState {
        sfu,
        keys: Arc::new(sfu_keys()),
        rooms: Arc::new(join::StoredMeetings {
            store,
            node_id: None,
        }),
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
        cluster_node: None,
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

/// The state with Element Call's focus on (the test SFU; our homeserver `localhost`).
async fn focus_state(store: Store) -> AppState {
    let mut state = state(store).await;
    let delayed = crate::focus::delayed::DelayedLeaves::new(
        state.signal.sfu.clone(),
        "localhost".into(),
        "http://127.0.0.1:9".into(),
        None,
        tokio_util::sync::CancellationToken::new(),
    );
    state.focus = Some(Arc::new(crate::focus::Focus {
        publish_servers: vec!["localhost".into()],
        token_ttl_secs: 600,
        thread: true,
        own_server: "localhost".into(),
        delayed,
    }));
    state
}

async fn focus_call(
    store: &Store,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = router(focus_state(store.clone()).await)
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
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

both_dialects!(
    focus_endpoints_exist_only_when_enabled,
    |store: Store| async move {
        let post = Request::post("/get_token")
            .body(Body::from("{}"))
            .expect("req");
        let (got, body) = call(&store, post).await;
        // Element Call falls back to another focus on a 404.
        assert_eq!(
            (got, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED"))
        );
        let health = Request::get("/healthz").body(Body::empty()).expect("req");
        assert_eq!(focus_call(&store, health).await.0, StatusCode::OK);
    }
);

both_dialects!(
    focus_refuses_bad_bodies_with_cors_headers,
    |store: Store| async move {
        let preflight = Request::options("/get_token")
            .header("origin", "https://call.element.io")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Body::empty())
            .expect("req");
        let (got, headers, _) = focus_call(&store, preflight).await;
        assert!(got.is_success(), "{got}");
        assert_eq!(headers["access-control-allow-origin"], "*");
        let post = |uri: &str, body: &str| {
            Request::post(uri)
                .header("origin", "https://call.element.io")
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .expect("req")
        };
        for (uri, body, errcode) in [
            ("/get_token", "{not json", "M_NOT_JSON"),
            ("/get_token", "{}", "M_BAD_JSON"),
            (
                "/get_token",
                r#"{"room_id":"!r:localhost","slot_id":"m.call#ROOM","member":{"id":"m"}}"#,
                "M_BAD_JSON",
            ),
            (
                "/get_token",
                r#"{"room_id":"!r:localhost","slot_id":"m.call#ROOM","member":{"id":"m","claimed_user_id":"@a:localhost","claimed_device_id":"D"}}"#,
                "M_BAD_JSON",
            ),
            (
                "/get_token",
                r#"{"room_id":"!r:localhost","slot_id":"s","member":{"id":"m","claimed_user_id":"@a:localhost","claimed_device_id":"D"},"openid_token":{"access_token":"t","matrix_server_name":"localhost"},"delay_id":"syd_x"}"#,
                "M_BAD_JSON",
            ),
            ("/sfu/get", r#"{"device_id":"D"}"#, "M_BAD_JSON"),
            (
                "/sfu/get",
                r#"{"room":"!r:localhost","device_id":"D"}"#,
                "M_BAD_JSON",
            ),
            (
                "/delegate_delayed_leave",
                r#"{"room_id":"!r:localhost","slot_id":"s"}"#,
                "M_BAD_JSON",
            ),
        ] {
            let (got, headers, json) = focus_call(&store, post(uri, body)).await;
            assert_eq!(
                (got, json["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some(errcode)),
                "{uri} {body}: {json}"
            );
            assert_eq!(headers["access-control-allow-origin"], "*", "{uri}");
        }
        // A known path never answers 404: a wrong method is 405.
        let get = Request::get("/get_token").body(Body::empty()).expect("req");
        assert_eq!(
            focus_call(&store, get).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        // Nothing was made for refused requests.
        let mut conn = store.pool().acquire().await.expect("conn");
        assert!(
            crate::store::meetings::list_not_ended(&mut conn)
                .await
                .expect("list")
                .is_empty()
        );
    }
);

both_dialects!(
    msc4195_believes_only_the_homeserver,
    |store: Store| async move {
        let request = |auth: Option<&str>, body: &str| {
            let mut r = Request::post("/_matrix/client/v1/rtc/livekit/get_token")
                .header("x-matrix-user-identifier", "@alice:localhost")
                .header("content-type", "application/json");
            if let Some(auth) = auth {
                r = r.header("authorization", auth);
            }
            r.body(Body::from(body.to_owned())).expect("req")
        };
        let good = format!(
            r#"{{"url":"{TEST_WS_URL}","room_id":"!r:localhost","slot_id":"m.call#ROOM","member_id":"m1"}}"#
        );
        // Anyone could forge the user header: without our hs_token it is not read.
        for auth in [None, Some("Bearer not-the-hs-token"), Some("Basic abc")] {
            let (got, _, json) = focus_call(&store, request(auth, &good)).await;
            assert_eq!(got, StatusCode::UNAUTHORIZED, "{auth:?}: {json}");
        }
        let hs = format!("Bearer {TOKEN}");
        let wrong_url = r#"{"url":"wss://elsewhere.example","room_id":"!r:localhost","slot_id":"s","member_id":"m1"}"#;
        let (got, _, json) = focus_call(&store, request(Some(&hs), wrong_url)).await;
        assert_eq!(
            (got, json["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
        );
        let other_server = format!(
            r#"{{"server_name":"other.example","url":"{TEST_WS_URL}","room_id":"!r:localhost","slot_id":"s","member_id":"m1"}}"#
        );
        let (got, _, json) = focus_call(&store, request(Some(&hs), &other_server)).await;
        assert_eq!(
            (got, json["errcode"].as_str()),
            (StatusCode::BAD_GATEWAY, Some("M_UNKNOWN"))
        );
        let unstable =
            Request::post("/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token")
                .header("x-matrix-user-identifier", "@alice:localhost")
                .body(Body::from(good.clone()))
                .expect("req");
        assert_eq!(
            focus_call(&store, unstable).await.0,
            StatusCode::UNAUTHORIZED
        );
        // Without a homeserver client the membership cannot be told: refused, not granted.
        let (got, _, json) = focus_call(&store, request(Some(&hs), &good)).await;
        assert_eq!(
            (got, json["errcode"].as_str(), json["reason"].as_str()),
            (
                StatusCode::FORBIDDEN,
                Some("M_FORBIDDEN"),
                Some("membership_unknown")
            ),
            "{json}"
        );
    }
);

both_dialects!(
    focus_token_requests_are_limited_per_address_but_not_the_homeservers,
    |store: Store| async move {
        let mut state = focus_state(store.clone()).await;
        state.rate_limits = limits::RateLimits::new(&crate::config::RateLimitsConfig::default());
        let app = router(state);
        let from = |mut request: Request<Body>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(
                std::net::SocketAddr::from(([192, 0, 2, 7], 5555)),
            ));
            request
        };
        let mut statuses = Vec::new();
        for _ in 0..=limits::JOINS_PER_IP.burst {
            let request = from(
                Request::post("/get_token")
                    .body(Body::from("{}"))
                    .expect("req"),
            );
            statuses.push(app.clone().oneshot(request).await.expect("answer").status());
        }
        assert!(
            statuses[..statuses.len() - 1]
                .iter()
                .all(|s| *s == StatusCode::BAD_REQUEST),
            "{statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
        // The homeserver's proxy brings every user's requests from one address; it limits
        // them per user itself.
        for _ in 0..=limits::JOINS_PER_IP.burst {
            let request = from(
            Request::post("/_matrix/client/v1/rtc/livekit/get_token")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("x-matrix-user-identifier", "@alice:localhost")
                .body(Body::from(r#"{"url":"wss://elsewhere.example","room_id":"!r:localhost","slot_id":"s","member_id":"m"}"#))
                .expect("req"),
        );
            let status = app.clone().oneshot(request).await.expect("answer").status();
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }
);
