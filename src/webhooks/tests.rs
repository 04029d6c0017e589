//! Signature, backoff, queueing, and the worker against real HTTP receivers on
//! loopback (one that fails first, one that hangs, one that works).

use std::sync::Mutex;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;
use crate::store::testing::both_dialects;

const SECRET: &str = "whsec-test-0123456789abcdef0123456789";

#[test]
fn signature_matches_an_independent_hmac() {
    // Computed with Python's hmac module over "1700000000.<body>".
    assert_eq!(
        signature_header(SECRET.as_bytes(), 1_700_000_000, r#"{"id":"evt_1"}"#),
        "t=1700000000,v1=3d1a1c9100b00b02e9a9fb3524e8eca22f1cb99350792d5b03f86f9bc7e29c08"
    );
}

#[test]
fn backoff_doubles_from_one_second_to_five_minutes() {
    let secs: Vec<u64> = (1..=12)
        .map(|n| backoff(FIRST_RETRY, n).as_secs())
        .collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(backoff(FIRST_RETRY, 0), FIRST_RETRY);
    assert_eq!(backoff(FIRST_RETRY, i64::MAX), MAX_RETRY);
    let total: u64 = (1..MAX_ATTEMPTS)
        .map(|n| backoff(FIRST_RETRY, n).as_secs())
        .sum();
    assert!(
        (3000..7200).contains(&total),
        "about an hour of retries: {total} s"
    );
}

#[test]
fn kinds_have_their_names() {
    let names: Vec<&str> = WebhookKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "meeting.started",
            "participant.joined",
            "participant.left",
            "chat.message",
            "meeting.ended",
            "ping"
        ]
    );
}

#[test]
fn event_data_never_holds_identities() {
    use crate::meeting::{ChatOrigin, attendance};
    let m = meeting();
    let session = Session {
        meeting_id: m.id.clone(),
        sid: "PA_1".into(),
        identity: "browser-7f3a-x1".into(),
        attendee_key: "browser-7f3a".into(),
        display_name: "Zoé".into(),
        matrix_user_id: Some("@zoe:localhost".into()),
        joined_at: 1_000,
        left_at: Some(61_000),
        last_seen_at: 61_000,
    };
    let joined = participant_data(&session);
    assert_eq!(
        joined,
        serde_json::json!({"sid": "PA_1", "name": "Zoé", "matrix_user_id": "@zoe:localhost",
                           "joined_at": 1_000, "left_at": 61_000})
    );
    assert!(!joined.to_string().contains("browser-7f3a"));
    let message = ChatMessage {
        meeting_id: m.id.clone(),
        message_id: "m1".into(),
        origin: ChatOrigin::Matrix,
        sender_identity: Some("browser-7f3a-x1".into()),
        sender_name: "Zoé".into(),
        matrix_user_id: None,
        body: "bonjour".into(),
        sent_at: 5,
    };
    let chat = chat_data(&message);
    assert_eq!(
        (chat["origin"].as_str(), chat["body"].as_str()),
        (Some("matrix"), Some("bonjour"))
    );
    assert!(!chat.to_string().contains("browser-7f3a"));
    let mut ended = m.clone();
    ended.started_at = Some(1_000);
    ended.ended_at = Some(91_000);
    ended.peak_participants = 2;
    // The session left at 61 s; the 30 s after it (the grace period) are not counted.
    let data = ended_data(&ended, 61_000, &attendance(&[session], 100_000), 3);
    assert_eq!(data["duration_ms"], 60_000);
    assert_eq!(data["chat_messages"], 3);
    assert_eq!(data["attendance"][0]["present_ms"], 60_000);
    assert!(!data.to_string().contains("browser-7f3a"));
    assert_eq!(
        ended_data(&m, 0, &[], 0)["duration_ms"],
        serde_json::Value::Null
    );
}

fn hooks(urls: &[&str]) -> Webhooks {
    Webhooks::from_config(
        &urls
            .iter()
            .map(|url| WebhookConfig {
                url: (*url).into(),
                secret: SECRET.into(),
            })
            .collect::<Vec<_>>(),
    )
}

fn meeting() -> Meeting {
    Meeting::new("Point hebdo", Some("!r:localhost".into()), None, 1).expect("valid")
}

both_dialects!(events_are_queued_per_receiver, |store: Store| async move {
    let m = meeting();
    let mut tx = store.begin().await.expect("begin");
    Webhooks::none()
        .enqueue(
            &mut tx,
            WebhookKind::MeetingStarted,
            &m,
            serde_json::json!({}),
        )
        .await
        .expect("enqueue");
    let webhooks = hooks(&["http://a.example/h", "http://b.example/h"]);
    webhooks
        .enqueue(
            &mut tx,
            WebhookKind::ParticipantJoined,
            &m,
            serde_json::json!({"name": "Zoé"}),
        )
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(store.webhook_pending_count().await.expect("count"), 2);
    let rows = store
        .due_webhook_deliveries("http://a.example/h", now_ms(), 10)
        .await
        .expect("due");
    let body: serde_json::Value = serde_json::from_str(&rows[0].body).expect("json");
    assert_eq!(body["type"], "participant.joined");
    assert_eq!(body["meeting"]["id"], m.id.as_str());
    assert_eq!(body["meeting"]["room_id"], "!r:localhost");
    assert_eq!(body["meeting"]["state"], "scheduled");
    assert_eq!(body["data"]["name"], "Zoé");
    assert!(!rows[0].body.contains(m.slug.expose()), "never the slug");
    let all = store
        .webhook_deliveries_of(body["id"].as_str().expect("id"))
        .await
        .expect("rows");
    assert_eq!(all.len(), 2);
    assert_ne!(all[0].id, all[1].id, "one delivery id per receiver");
    assert_eq!(all[0].body, all[1].body, "one body for every receiver");

    // A rolled-back transaction queues nothing.
    let mut tx = store.begin().await.expect("begin");
    webhooks
        .enqueue(
            &mut tx,
            WebhookKind::MeetingEnded,
            &m,
            serde_json::json!({}),
        )
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(store.webhook_pending_count().await.expect("count"), 2);
});

/// A request as a receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    event: String,
    delivery: String,
    body: String,
    at: Instant,
}

/// Checks the signature as a receiver would (see docs/admin.md).
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((t, v1)) = sig
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let Ok(t) = t.parse::<i64>() else {
        return false;
    };
    let fresh = (now_ms() / 1000 - t).abs() < 300;
    let expected = signature_header(
        SECRET.as_bytes(),
        t,
        std::str::from_utf8(body).unwrap_or(""),
    );
    fresh && expected.ends_with(&format!("v1={v1}"))
}

/// How a test receiver answers its n-th request (0-based).
type Behaviour = fn(usize) -> (StatusCode, Duration);

async fn receiver(behaviour: Behaviour) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                assert!(verify(&headers, &body), "bad signature: {headers:?}");
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let n = {
                    let mut log = log.lock().expect("lock");
                    log.push(Seen {
                        event: header(EVENT_HEADER),
                        delivery: header(DELIVERY_HEADER),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        at: Instant::now(),
                    });
                    log.len() - 1
                };
                let (status, delay) = behaviour(n);
                tokio::time::sleep(delay).await;
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

both_dialects!(
    receivers_are_independent_and_retried_with_the_same_id,
    |store: Store| async move {
        let (flaky_url, flaky) = receiver(|n| {
            let status = if n == 0 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::NO_CONTENT
            };
            (status, Duration::ZERO)
        })
        .await;
        // Hangs past the attempt timeout every time.
        let (stuck_url, stuck) = receiver(|_| (StatusCode::OK, Duration::from_secs(30))).await;
        let (good_url, good) = receiver(|_| (StatusCode::OK, Duration::ZERO)).await;
        let webhooks = hooks(&[&flaky_url, &stuck_url, &good_url]);
        let shutdown = CancellationToken::new();
        let mut worker = webhooks.worker(store.clone(), shutdown.clone());
        worker.first_retry = Duration::from_millis(200);
        worker.timeout = Duration::from_secs(2);
        let task = tokio::spawn(worker.run());

        let m = meeting();
        let kinds = [
            WebhookKind::MeetingStarted,
            WebhookKind::ParticipantJoined,
            WebhookKind::ChatMessage,
            WebhookKind::ParticipantLeft,
            WebhookKind::MeetingEnded,
        ];
        let started = Instant::now();
        for kind in kinds {
            let mut tx = store.begin().await.expect("begin");
            webhooks
                .enqueue(&mut tx, kind, &m, serde_json::json!({}))
                .await
                .expect("enqueue");
            tx.commit().await.expect("commit");
            webhooks.wake();
        }

        // The working receiver gets all five while the stuck one still holds its
        // first attempts (the timeout is 2 s), using only its own slots.
        wait_until(
            "five deliveries to the good receiver",
            Duration::from_secs(5),
            || {
                let n = good.lock().expect("lock").len();
                async move { n == 5 }
            },
        )
        .await;
        let good_seen = good.lock().expect("lock").clone();
        assert!(
            good_seen
                .iter()
                .all(|s| s.at - started < Duration::from_secs(2)),
            "the stuck receiver delayed the good one"
        );
        assert_eq!(
            stuck.lock().expect("lock").len(),
            PER_RECEIVER_SLOTS,
            "a receiver has a fixed number of slots"
        );
        let mut events: Vec<&str> = good_seen.iter().map(|s| s.event.as_str()).collect();
        events.sort();
        let mut expected: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        expected.sort();
        assert_eq!(events, expected, "each event once");

        // The flaky receiver refused its first request: it gets that delivery again,
        // with the same id and body, and every other one once.
        wait_until("the flaky receiver's retry", Duration::from_secs(5), || {
            let n = flaky.lock().expect("lock").len();
            async move { n == 6 }
        })
        .await;
        let flaky_seen = flaky.lock().expect("lock").clone();
        let first = &flaky_seen[0];
        let again: Vec<&Seen> = flaky_seen
            .iter()
            .filter(|s| s.delivery == first.delivery)
            .collect();
        assert_eq!(again.len(), 2, "{flaky_seen:?}");
        assert_eq!(again[1].body, first.body);
        assert!(
            again[1].at - first.at >= Duration::from_millis(150),
            "backoff"
        );
        let ids: HashSet<&str> = flaky_seen.iter().map(|s| s.delivery.as_str()).collect();
        assert_eq!(ids.len(), 5);

        // The stuck receiver's attempts time out and are rescheduled, failure recorded.
        wait_until("recorded timeouts", Duration::from_secs(6), || {
            let store = store.clone();
            let url = stuck_url.clone();
            async move {
                store
                    .due_webhook_deliveries(&url, i64::MAX, 10)
                    .await
                    .map(|rows| {
                        rows.iter()
                            .any(|r| r.attempts >= 1 && r.last_error.is_some())
                    })
                    .unwrap_or(false)
            }
        })
        .await;
        // Everything else was delivered; only the stuck receiver's five are pending.
        wait_until(
            "only the stuck receiver pending",
            Duration::from_secs(5),
            || {
                let store = store.clone();
                async move { store.webhook_pending_count().await.unwrap_or(-1) == 5 }
            },
        )
        .await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the worker stops")
            .expect("no panic");
    }
);

both_dialects!(
    deliveries_to_removed_receivers_fail_with_a_reason,
    |store: Store| async move {
        let old = hooks(&["http://127.0.0.1:9/gone"]);
        let mut tx = store.begin().await.expect("begin");
        let event = old.enqueue_ping(&mut tx).await.expect("ping");
        tx.commit().await.expect("commit");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(
            Webhooks::none()
                .worker(store.clone(), shutdown.clone())
                .run(),
        );
        wait_until("the delivery given up", Duration::from_secs(5), || {
            let store = store.clone();
            let event = event.clone();
            async move {
                store
                    .webhook_deliveries_of(&event)
                    .await
                    .map(|rows| rows.first().is_some_and(|r| r.state == "failed"))
                    .unwrap_or(false)
            }
        })
        .await;
        let rows = store.webhook_deliveries_of(&event).await.expect("rows");
        assert_eq!(
            rows[0].last_error.as_deref(),
            Some("receiver no longer in the configuration")
        );
        shutdown.cancel();
        task.await.expect("stops");
    }
);
