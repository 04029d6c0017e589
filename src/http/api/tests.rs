//! The bot API through the router (`tower::ServiceExt::oneshot`), on both dialects:
//! token checks, meetings by room and by id, summaries sanitised into the outbound
//! queue, and the OpenAPI document against the router.

use axum::body::Body;
use axum::http::Request;

use super::super::tests::call;
use super::*;
use crate::meeting::{ChatOrigin, Session};
use crate::store::testing::both_dialects;
use crate::store::{Store, chat, sessions};

const ROOM: &str = "!room:localhost";
const ROOM_PATH: &str = "%21room%3Alocalhost";

/// A token reaching every room, able to post.
async fn token(store: &Store, name: &str) -> String {
    let all = TokenScope::new(&[], &[], true).expect("all rooms");
    scoped_token(store, name, &all, false).await
}

async fn scoped_token(store: &Store, name: &str, scope: &TokenScope, read_only: bool) -> String {
    let token = api_token::generate();
    let mut conn = store.pool().acquire().await.expect("conn");
    assert!(
        api_tokens::create(
            &mut conn,
            &api_tokens::NewApiToken {
                name,
                id: &api_token::generate_id(),
                sha256_hex: &api_token::sha256_hex(&token),
                scope: &scope.to_stored(),
                read_only,
            },
            1
        )
        .await
        .expect("create")
    );
    token
}

async fn stored_meeting(store: &Store, title: &str, room: Option<&str>, at: i64) -> Meeting {
    let m = Meeting::new(title, room.map(str::to_owned), None, at).expect("valid");
    let mut conn = store.pool().acquire().await.expect("conn");
    meetings::create(&mut conn, &m).await.expect("create");
    m
}

fn get(path: &str, auth: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(Body::empty()).expect("request")
}

fn summary(id: &str, auth: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post(format!("/api/v1/meetings/{id}/summary"))
        .header("content-type", "application/json");
    if let Some(auth) = auth {
        builder = builder.header("authorization", auth);
    }
    builder.body(body.into()).expect("request")
}

async fn queued(store: &Store) -> Vec<serde_json::Value> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT request_json FROM outbound ORDER BY id")
        .fetch_all(store.pool())
        .await
        .expect("outbound");
    rows.iter()
        .map(|r| serde_json::from_str(r).expect("json"))
        .collect()
}

both_dialects!(
    missing_wrong_and_revoked_tokens_are_refused,
    |store: Store| async move {
        let good = token(&store, "minutes").await;
        let revoked = token(&store, "old").await;
        let mut conn = store.pool().acquire().await.expect("conn");
        api_tokens::revoke(&mut conn, "old", 2)
            .await
            .expect("revoke");
        drop(conn);
        let m = stored_meeting(&store, "Point", Some(ROOM), 1).await;
        let id = m.id.as_str();
        let body = r#"{"markdown":"hello"}"#;
        let cases: [(Option<String>, &str); 7] = [
            (None, "M_MISSING_TOKEN"),
            (Some("Bearer wrong".into()), "M_UNKNOWN_TOKEN"),
            (Some("Bearer ".into()), "M_UNKNOWN_TOKEN"),
            (Some(format!("Basic {good}")), "M_UNKNOWN_TOKEN"),
            (Some(good.clone()), "M_UNKNOWN_TOKEN"),
            (Some(format!("Bearer {revoked}")), "M_UNKNOWN_TOKEN"),
            (
                Some(format!("Bearer {}", api_token::sha256_hex(&good))),
                "M_UNKNOWN_TOKEN",
            ),
        ];
        for (auth, errcode) in cases {
            let auth = auth.as_deref();
            let requests = [
                get(&format!("/api/v1/rooms/{ROOM_PATH}/meetings"), auth),
                summary(id, auth, body),
            ];
            for request in requests {
                let what = format!("{} {} {auth:?}", request.method(), request.uri());
                let (status, json) = call(&store, request).await;
                assert_eq!(
                    (status, json["errcode"].as_str()),
                    (StatusCode::UNAUTHORIZED, Some(errcode)),
                    "{what}"
                );
            }
            if auth.is_some() {
                let (status, json) =
                    call(&store, get(&format!("/api/v1/meetings/{id}"), auth)).await;
                assert_eq!(
                    (status, json["errcode"].as_str()),
                    (StatusCode::UNAUTHORIZED, Some(errcode))
                );
            }
        }
        assert!(
            queued(&store).await.is_empty(),
            "nothing queued without a token"
        );
        let (status, _) = call(
            &store,
            get(
                &format!("/api/v1/rooms/{ROOM_PATH}/meetings"),
                Some(&format!("bearer {good}")),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
        let mut conn = store.pool().acquire().await.expect("conn");
        let listed = api_tokens::list(&mut conn).await.expect("list");
        assert!(listed[0].name == "minutes" && listed[0].last_used_at.is_some());
    }
);

both_dialects!(meetings_are_listed_by_room, |store: Store| async move {
    let auth = format!("Bearer {}", token(&store, "bot").await);
    let old = stored_meeting(&store, "Ancienne", Some(ROOM), 100).await;
    let new = stored_meeting(&store, "Nouvelle", Some(ROOM), 200).await;
    stored_meeting(&store, "Ailleurs", Some("!other:localhost"), 150).await;
    let (status, json) = call(
        &store,
        get(&format!("/api/v1/rooms/{ROOM_PATH}/meetings"), Some(&auth)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let listed = json["meetings"].as_array().expect("list");
    let ids: Vec<&str> = listed
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [new.id.as_str(), old.id.as_str()]);
    assert_eq!(listed[0]["title"], "Nouvelle");
    assert_eq!(listed[0]["room_id"], ROOM);
    assert_eq!(listed[0]["state"], "scheduled");
    let text = json.to_string();
    assert!(
        !text.contains(new.slug.expose()) && !text.contains(old.slug.expose()),
        "no slug in bot answers"
    );
    let (status, json) = call(
        &store,
        get("/api/v1/rooms/%21nobody%3Alocalhost/meetings", Some(&auth)),
    )
    .await;
    assert_eq!(
        (status, json["meetings"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let (status, json) = call(
        &store,
        get("/api/v1/rooms/not-a-room/meetings", Some(&auth)),
    )
    .await;
    assert_eq!(
        (status, json["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM"))
    );
});

both_dialects!(
    a_meeting_with_attendance_and_chat,
    |store: Store| async move {
        let auth = format!("Bearer {}", token(&store, "bot").await);
        let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
        let mut conn = store.pool().acquire().await.expect("conn");
        let session = |sid: &str, key: &str, name: &str, joined: i64, left: i64| Session {
            meeting_id: m.id.clone(),
            sid: sid.into(),
            identity: format!("{key}-x"),
            attendee_key: key.into(),
            display_name: name.into(),
            matrix_user_id: None,
            joined_at: joined,
            left_at: Some(left),
            last_seen_at: left,
        };
        for s in [
            session("PA_1", "zoe", "Zoé", 1_000, 61_000),
            session("PA_2", "zoe", "Zoé", 121_000, 181_000),
            session("PA_3", "bob", "Bob", 2_000, 32_000),
        ] {
            sessions::open(&mut conn, &s).await.expect("open");
        }
        chat::insert(
            &mut conn,
            &ChatMessage {
                meeting_id: m.id.clone(),
                message_id: "msg-1".into(),
                origin: ChatOrigin::Meeting,
                sender_identity: Some("zoe-x".into()),
                sender_name: "Zoé".into(),
                matrix_user_id: None,
                body: "Bonjour <b>tous</b>".into(),
                sent_at: 5_000,
            },
        )
        .await
        .expect("chat");
        drop(conn);

        let (status, json) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", m.id), Some(&auth)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["id"], m.id.as_str());
        assert_eq!(json["title"], "Comité");
        let attendance = json["attendance"].as_array().expect("attendance");
        assert_eq!(attendance.len(), 2);
        assert_eq!(attendance[0]["name"], "Zoé");
        assert_eq!(attendance[0]["present_ms"], 120_000);
        assert_eq!(attendance[0]["intervals"][1]["joined_at"], 121_000);
        assert_eq!(attendance[1]["name"], "Bob");
        assert_eq!(attendance[1]["present_ms"], 30_000);
        assert_eq!(json["chat"][0]["body"], "Bonjour <b>tous</b>");
        assert_eq!(json["chat"][0]["origin"], "meeting");
        assert!(!json.to_string().contains(m.slug.expose()));

        // With a token the key is an id: a slug is not found, an unknown id neither.
        for key in [m.slug.expose(), "aaaaaaaaaaaa", "x"] {
            let (status, json) =
                call(&store, get(&format!("/api/v1/meetings/{key}"), Some(&auth))).await;
            assert_eq!(
                (status, json["errcode"].as_str()),
                (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
                "{key}"
            );
        }
        // Without a token it is still the page's lookup by slug, which the id does not open.
        let (status, json) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", m.slug.expose()), None),
        )
        .await;
        assert_eq!(
            (status, &json["title"]),
            (StatusCode::OK, &serde_json::json!("Comité"))
        );
        assert!(json.get("attendance").is_none());
        let (status, _) = call(&store, get(&format!("/api/v1/meetings/{}", m.id), None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
);

both_dialects!(
    summaries_are_sanitised_into_the_thread,
    |store: Store| async move {
        let auth = format!("Bearer {}", token(&store, "bot").await);
        let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
        let mut conn = store.pool().acquire().await.expect("conn");
        meetings::link_notice_sent_as(&mut conn, &m.id, "$root")
            .await
            .expect("root");
        let link_notice = meetings::get_by_id(&mut conn, &m.id)
            .await
            .expect("read")
            .and_then(|m| m.link_notice_id)
            .expect("a link notice");
        drop(conn);
        let markdown = "# Décisions\n\n<script>alert('x')</script>\n\n<iframe src=\"https://evil.example\"></iframe>\n\n<p onclick=\"alert(1)\">Cliquez</p>\n\n- [doc](https://example.org)\n- [piège](javascript:alert(1))";
        let body = serde_json::json!({ "markdown": markdown }).to_string();
        let (status, json) = call(&store, summary(m.id.as_str(), Some(&auth), body)).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (StatusCode::ACCEPTED, Some("queued")),
            "{json}"
        );
        let queued = queued(&store).await;
        // The ghost is registered, named, invited and joined first, in the room's order.
        let kinds: Vec<&str> = queued
            .iter()
            .map(|r| r["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(kinds.last(), Some(&"send"), "{kinds:?}");
        assert!(
            kinds.contains(&"register_ghost") && kinds.contains(&"invite"),
            "{kinds:?}"
        );
        let named = queued
            .iter()
            .find(|r| r["kind"] == "set_display_name")
            .expect("named");
        assert_eq!(named["displayname"], "Compte-rendu (bot)", "shown as a bot");
        let send = queued.last().expect("send");
        assert_eq!(send["room_id"], ROOM);
        assert_eq!(
            send["as_user"], named["user_id"],
            "posted by the named ghost"
        );
        assert_eq!(
            send["in_thread_of"], link_notice,
            "in the meeting's thread, the one its link notice starts"
        );
        let content = &send["content"];
        assert_eq!(content["msgtype"], "m.notice");
        assert_eq!(content["format"], "org.matrix.custom.html");
        let html = content["formatted_body"].as_str().expect("html");
        let plain = content["body"].as_str().expect("body");
        for bad in ["<script", "<iframe", "onclick", "javascript:", "alert"] {
            assert!(!html.contains(bad), "{bad} in {html}");
            assert!(!plain.contains(bad), "{bad} in {plain}");
        }
        assert!(html.contains("<h1>Décisions</h1>"), "{html}");
        assert!(html.contains("<p>Cliquez</p>"), "{html}");
        assert!(
            html.contains("<a href=\"https://example.org\" rel=\"noopener\">doc</a>"),
            "{html}"
        );
        assert!(plain.starts_with("Décisions"), "{plain}");

        let (status, _) = call(
            &store,
            summary(
                m.id.as_str(),
                Some(&auth),
                r#"{"markdown":"ok","author":"Transcripteur"}"#,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let queued_now = self::queued(&store).await;
        let other = queued_now
            .iter()
            .rev()
            .find(|r| r["kind"] == "set_display_name")
            .expect("named");
        assert_eq!(other["displayname"], "Transcripteur (bot)");
        assert_ne!(other["user_id"], named["user_id"], "one ghost per author");
        assert_eq!(
            queued_now.last().expect("send")["as_user"],
            other["user_id"]
        );
    }
);

both_dialects!(bad_summaries_are_refused, |store: Store| async move {
    let auth = format!("Bearer {}", token(&store, "bot").await);
    let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
    let no_room = stored_meeting(&store, "Admin", None, 1).await;
    let id = m.id.as_str();
    let oversize = serde_json::json!({ "markdown": "x".repeat(SUMMARY_BODY_LIMIT) }).to_string();
    // Under the body limit, over the rendered limit: every `<` becomes `&lt;` in HTML.
    let heavy = serde_json::json!({ "markdown": "<".repeat(40_000) }).to_string();
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (id, "{nope".into(), StatusCode::BAD_REQUEST, "M_NOT_JSON"),
        (id, "{}".into(), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (
            id,
            r#"{"markdown": 5}"#.into(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            id,
            r#"{"markdown": "  "}"#.into(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            id,
            r#"{"markdown": "<script>x</script>"}"#.into(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (
            id,
            r#"{"markdown": "ok", "author": "a\nb"}"#.into(),
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        ),
        (id, oversize, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        (id, heavy, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        (
            "aaaaaaaaaaaa",
            r#"{"markdown":"ok"}"#.into(),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            m.slug.expose(),
            r#"{"markdown":"ok"}"#.into(),
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        ),
        (
            no_room.id.as_str(),
            r#"{"markdown":"ok"}"#.into(),
            StatusCode::CONFLICT,
            "M_BAD_STATE",
        ),
    ];
    for (key, body, status, errcode) in cases {
        let (got, json) = call(&store, summary(key, Some(&auth), body.clone())).await;
        assert_eq!(
            (got, json["errcode"].as_str()),
            (status, Some(errcode)),
            "{body:.60}"
        );
        assert!(json["error"].is_string());
    }
    assert!(
        queued(&store).await.is_empty(),
        "nothing queued by refused requests"
    );
});

/// Paths with their parameter names blanked: `/a/{x}/b` → `/a/{}/b`.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// `(METHOD, path)` of every `/api/` route the router declares, read from its source so
/// that a new route cannot be added without this test noticing.
fn declared_api_routes() -> Vec<(String, String)> {
    let source = include_str!("../mod.rs");
    let mut routes = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let call: String = rest
            .chars()
            .take_while(|c| *c != ';')
            .collect::<String>()
            .split("\n        .")
            .next()
            .unwrap_or_default()
            // Routes of a nested router are indented deeper: cut at the next one.
            .split(".route(")
            .next()
            .unwrap_or_default()
            .to_owned();
        let Some(path) = call.split('"').nth(1) else {
            continue;
        };
        if !path.starts_with("/api/") {
            continue;
        }
        for method in ["get", "post", "put", "delete", "patch"] {
            if call.contains(&format!("{method}(")) {
                routes.push((method.to_owned(), shape(path)));
            }
        }
    }
    routes
}

#[test]
fn the_openapi_document_describes_every_api_route() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(move |method| (method.clone(), shape(path)))
        })
        .collect();
    let declared = declared_api_routes();
    assert!(
        declared.len() >= 5,
        "routes found in the router: {declared:?}"
    );
    for route in &declared {
        assert!(
            documented.contains(route),
            "{route:?} is not in docs/openapi.json"
        );
    }
    for route in &documented {
        assert!(
            declared.contains(route),
            "{route:?} is documented but not routed"
        );
    }
    // Every $ref points at something.
    let text = OPENAPI_JSON;
    for reference in text.split("\"$ref\": \"#/").skip(1) {
        let pointer = format!("/{}", reference.split('"').next().expect("ref"));
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

both_dialects!(the_openapi_document_is_served, |store: Store| async move {
    let (status, json) = call(&store, get("/api/v1/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["info"]["title"], "tchap-visio HTTP API");
});

both_dialects!(
    the_default_author_follows_the_language,
    |store: Store| async move {
        use figment::providers::{Format, Yaml};
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let auth = format!("Bearer {}", token(&store, "bot").await);
        let m = stored_meeting(&store, "Board", Some(ROOM), 1).await;
        let mut config: crate::config::Config = figment::Figment::new()
            .merge(Yaml::string(include_str!(
                "../../../config/example-config.yaml"
            )))
            .extract()
            .expect("the example config parses");
        config.language = crate::config::Language::En;
        let mut state = crate::http::tests::state(store.clone()).await;
        state.bot_api.bridge = Arc::new(BridgeContext::from_config(&config, None, None));
        let response = crate::http::router(state)
            .oneshot(summary(
                m.id.as_str(),
                Some(&auth),
                r#"{"markdown":"done"}"#,
            ))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(status, StatusCode::ACCEPTED, "{bytes:?}");
        let named = queued(&store)
            .await
            .into_iter()
            .find(|r| r["kind"] == "set_display_name")
            .expect("named");
        assert_eq!(named["displayname"], "Meeting notes (bot)");
    }
);

const ROOM_B: &str = "!b:elsewhere.org";

fn room_path(room: &str) -> String {
    let encoded = room.replace('!', "%21").replace(':', "%3A");
    format!("/api/v1/rooms/{encoded}/meetings")
}

async fn assert_forbidden(store: &Store, request: Request<Body>) {
    let what = format!("{} {}", request.method(), request.uri());
    let (status, json) = call(store, request).await;
    assert_eq!(
        (status, json["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{what}: {json}"
    );
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
}

both_dialects!(
    tokens_reach_only_the_rooms_of_their_scope,
    |store: Store| async move {
        let in_a = stored_meeting(&store, "A", Some(ROOM), 1).await;
        let in_b = stored_meeting(&store, "B", Some(ROOM_B), 2).await;
        let roomless = stored_meeting(&store, "Sans salon", None, 3).await;
        let scope = |rooms: &[&str], servers: &[&str], all: bool| {
            let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            TokenScope::new(&owned(rooms), &owned(servers), all).expect("scope")
        };
        let room_a = format!(
            "Bearer {}",
            scoped_token(&store, "room-a", &scope(&[ROOM], &[], false), false).await
        );
        let server_b = format!(
            "Bearer {}",
            scoped_token(
                &store,
                "server-b",
                &scope(&[], &["elsewhere.org"], false),
                false
            )
            .await
        );
        let all = format!("Bearer {}", token(&store, "all").await);
        let body = r#"{"markdown":"Relevé de décisions"}"#;

        // Room A's token: room A only, for every call.
        let (status, json) = call(&store, get(&room_path(ROOM), Some(&room_a))).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["meetings"][0]["id"], in_a.id.as_str());
        let (status, _) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", in_a.id), Some(&room_a)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&store, summary(in_a.id.as_str(), Some(&room_a), body)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let queued_for_a = queued(&store).await.len();
        assert_forbidden(&store, get(&room_path(ROOM_B), Some(&room_a))).await;
        // Even a room with no meeting: the answer says nothing about the room.
        assert_forbidden(
            &store,
            get("/api/v1/rooms/%21empty%3Alocalhost/meetings", Some(&room_a)),
        )
        .await;
        for m in [&in_b, &roomless] {
            assert_forbidden(
                &store,
                get(&format!("/api/v1/meetings/{}", m.id), Some(&room_a)),
            )
            .await;
            assert_forbidden(&store, summary(m.id.as_str(), Some(&room_a), body)).await;
        }
        // Out of scope is refused before the body is looked at.
        assert_forbidden(&store, summary(in_b.id.as_str(), Some(&room_a), "{nope")).await;
        assert_eq!(
            queued(&store).await.len(),
            queued_for_a,
            "nothing queued out of scope"
        );

        // A server's token: the rooms whose id ends with it.
        let (status, json) = call(&store, get(&room_path(ROOM_B), Some(&server_b))).await;
        assert_eq!(
            (status, json["meetings"][0]["id"].as_str()),
            (StatusCode::OK, Some(in_b.id.as_str()))
        );
        assert_forbidden(&store, get(&room_path(ROOM), Some(&server_b))).await;
        assert_forbidden(
            &store,
            get(&format!("/api/v1/meetings/{}", in_a.id), Some(&server_b)),
        )
        .await;

        // All rooms: meetings without a room too.
        let (status, json) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", roomless.id), Some(&all)),
        )
        .await;
        assert_eq!(
            (status, json["title"].as_str()),
            (StatusCode::OK, Some("Sans salon"))
        );
        let (status, _) = call(&store, get(&room_path(ROOM_B), Some(&all))).await;
        assert_eq!(status, StatusCode::OK);
    }
);

both_dialects!(
    read_only_tokens_read_and_never_post,
    |store: Store| async move {
        let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
        let scope = TokenScope::new(&[ROOM.to_owned()], &[], false).expect("scope");
        let reader = format!(
            "Bearer {}",
            scoped_token(&store, "reader", &scope, true).await
        );
        let (status, _) = call(
            &store,
            get(
                &format!("/api/v1/rooms/{ROOM_PATH}/meetings"),
                Some(&reader),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", m.id), Some(&reader)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        for body in [
            r#"{"markdown":"ok"}"#,
            r#"{"markdown":"ok","author":"Autre"}"#,
            "{nope",
        ] {
            assert_forbidden(&store, summary(m.id.as_str(), Some(&reader), body)).await;
        }
        assert!(
            queued(&store).await.is_empty(),
            "a read-only token queued nothing"
        );
    }
);

both_dialects!(
    each_token_and_author_has_its_own_ghost,
    |store: Store| async move {
        let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
        let first = format!("Bearer {}", token(&store, "first").await);
        let second = format!("Bearer {}", token(&store, "second").await);
        let mut posters = Vec::new();
        for (auth, author) in [
            (&first, "Compte-rendu"),
            (&second, "Compte-rendu"),
            (&first, "compte-rendu"),
            (&first, "Autre"),
        ] {
            let body = serde_json::json!({ "markdown": "ok", "author": author }).to_string();
            let (status, json) = call(&store, summary(m.id.as_str(), Some(auth), body)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{json}");
            let send = queued(&store).await.pop().expect("send");
            posters.push(send["as_user"].as_str().expect("ghost").to_owned());
        }
        assert_ne!(posters[0], posters[1], "two tokens never share a ghost");
        assert_eq!(posters[0], posters[2], "one ghost per token and author");
        assert_ne!(posters[0], posters[3]);
        let names: Vec<String> = queued(&store)
            .await
            .into_iter()
            .filter(|r| r["kind"] == "set_display_name")
            .map(|r| r["displayname"].as_str().expect("name").to_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(" (bot)")), "{names:?}");
    }
);

both_dialects!(
    room_ids_are_checked_as_documented,
    |store: Store| async move {
        let auth = format!("Bearer {}", token(&store, "bot").await);
        // Room version 12 ids have no server part; any `!` and printable ASCII is a room id.
        for ok in [
            "%21abcDEF_-09",
            "%21a",
            "%21room%3Alocalhost%3A8448",
            &format!("%21{}", "x".repeat(254)),
        ] {
            let (status, json) = call(
                &store,
                get(&format!("/api/v1/rooms/{ok}/meetings"), Some(&auth)),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{ok}: {json}");
        }
        for bad in [
            "0",
            "%21",
            "room",
            "%21a%0Ab",
            "%21a%20b",
            "%21%C3%A9",
            &format!("%21{}", "x".repeat(255)),
        ] {
            let (status, json) = call(
                &store,
                get(&format!("/api/v1/rooms/{bad}/meetings"), Some(&auth)),
            )
            .await;
            assert_eq!(
                (status, json["errcode"].as_str()),
                (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
                "{bad}"
            );
        }
    }
);

/// Log lines written while the returned guard lives, for tests on the audit log.
fn capture_logs() -> (
    Arc<std::sync::Mutex<Vec<u8>>>,
    tracing::subscriber::DefaultGuard,
) {
    #[derive(Clone)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Buffer(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

both_dialects!(
    reads_are_audit_logged_without_the_token,
    |store: Store| async move {
        let m = stored_meeting(&store, "Comité", Some(ROOM), 1).await;
        let secret = token(&store, "audited-bot").await;
        let auth = format!("Bearer {secret}");
        let mut conn = store.pool().acquire().await.expect("conn");
        let id = api_tokens::list(&mut conn).await.expect("list")[0]
            .id
            .clone();
        drop(conn);
        let (buffer, guard) = capture_logs();
        let (status, _) = call(
            &store,
            get(&format!("/api/v1/rooms/{ROOM_PATH}/meetings"), Some(&auth)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(
            &store,
            get(&format!("/api/v1/meetings/{}", m.id), Some(&auth)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        drop(guard);
        let logs = String::from_utf8(buffer.lock().expect("logs").clone()).expect("utf-8");
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("bot API read"))
            .collect();
        assert_eq!(lines.len(), 2, "{logs}");
        for line in &lines {
            assert!(line.contains("INFO"), "{line}");
            assert!(
                line.contains("token_name=audited-bot") && line.contains(&format!("token_id={id}")),
                "{line}"
            );
        }
        assert!(
            lines[0].contains(ROOM) && lines[0].contains("count=1"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(m.id.as_str()) && lines[1].contains("chat_messages=0"),
            "{}",
            lines[1]
        );
        assert!(!logs.contains(&secret), "the token never reaches the log");
    }
);

both_dialects!(
    tokens_made_before_scopes_are_warned_about_at_start,
    |store: Store| async move {
        let scoped = token(&store, "scoped").await;
        let legacy = api_token::generate();
        let mut conn = store.pool().acquire().await.expect("conn");
        // As migration 0007 leaves a token made before it.
        assert!(
            api_tokens::create(
                &mut conn,
                &api_tokens::NewApiToken {
                    name: "old-bot",
                    id: "0123456789abcdef",
                    sha256_hex: &api_token::sha256_hex(&legacy),
                    scope: r#"{"all_rooms":true,"legacy":true}"#,
                    read_only: false,
                },
                1
            )
            .await
            .expect("create")
        );
        drop(conn);
        let (buffer, guard) = capture_logs();
        warn_about_legacy_tokens(&store).await.expect("warned");
        drop(guard);
        let logs = String::from_utf8(buffer.lock().expect("logs").clone()).expect("utf-8");
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one warning, for the legacy token only: {logs}"
        );
        assert!(
            lines[0].contains("WARN")
                && lines[0].contains("token_name=old-bot")
                && lines[0].contains("made before scopes")
                && lines[0].contains("--room"),
            "{logs}"
        );
        assert!(!logs.contains(&legacy) && !logs.contains(&scoped));
        // It still works everywhere, as before the upgrade.
        let m = stored_meeting(&store, "Ailleurs", Some(ROOM_B), 1).await;
        let (status, _) = call(
            &store,
            get(
                &format!("/api/v1/meetings/{}", m.id),
                Some(&format!("Bearer {legacy}")),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
);
