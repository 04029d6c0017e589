//! Transaction intake benchmark: events per second from `PUT /_matrix/app/v1/transactions`
//! over loopback HTTP to processed by the inbox worker, on SQLite and PostgreSQL.
//!
//! `cargo bench --bench intake` (PostgreSQL when `TCHAP_VISIO_TEST_POSTGRES_URL` points
//! at a server where databases can be created; `scripts/bench.sh` starts one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tchap_visio::auth::SecretToken;
use tchap_visio::auth::token::SfuKeys;
use tchap_visio::config::{Language, PermissionLevel};
use tchap_visio::http::{AppState, router};
use tchap_visio::matrix::bot::Bot;
use tchap_visio::matrix::inbox::InboxWorker;
use tchap_visio::sfu::{EngineConfig, SfuHandle};
use tchap_visio::signal::SignalState;
use tchap_visio::store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bench-hs-token-0123456789abcdef0123456789";
const TRANSACTIONS: usize = 400;
const EVENTS_PER_TRANSACTION: usize = 10;
const CONCURRENT_SENDERS: usize = 4;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = format!("sqlite://{}/bench.db", dir.path().display());
        run("SQLite", &sqlite).await;
        match std::env::var("TCHAP_VISIO_TEST_POSTGRES_URL") {
            Ok(admin) => {
                let url = fresh_postgres_database(&admin).await;
                run("PostgreSQL", &url).await;
            }
            Err(_) => println!("PostgreSQL: skipped (set TCHAP_VISIO_TEST_POSTGRES_URL)"),
        }
    });
}

async fn fresh_postgres_database(admin: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("tv_bench_{}", std::process::id());
    let pool = sqlx::AnyPool::connect(admin).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&pool)
    .await
    .expect("drop");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create");
    let mut url = url::Url::parse(admin).expect("url");
    url.set_path(&name);
    url.to_string()
}

/// The example config, for the parts of the state the intake does not use.
fn example_config() -> tchap_visio::config::Config {
    use figment::providers::Format;
    figment::Figment::new()
        .merge(figment::providers::Yaml::string(include_str!(
            "../config/example-config.yaml"
        )))
        .extract()
        .expect("the example config parses")
}

/// The signalling part of the state: an SFU on a loopback port, unused by the intake.
async fn signal_state(store: Store, shutdown: CancellationToken) -> SignalState {
    let config = EngineConfig {
        candidates: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        max_participants_per_room: 100,
        max_participants: 1000,
        ice_servers: Vec::new(),
    };
    let (sfu, _events, _task) = SfuHandle::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        config,
        1,
        shutdown,
    )
    .await
    .expect("an SFU on a loopback port");
    SignalState {
        sfu,
        keys: Arc::new(SfuKeys::generate()),
        rooms: Arc::new(tchap_visio::http::join::StoredMeetings {
            store,
            node_id: None,
        }),
    }
}

async fn run(label: &str, uri: &str) {
    let store = Store::open(uri, 8).await.expect("open store");
    let inbox_wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let bot = Bot {
        user_id: "@visio:localhost".try_into().expect("id"),
        ghost_prefix: "@visio_".into(),
        domain: ruma::server_name!("localhost").to_owned(),
        permissions: [("localhost".to_owned(), PermissionLevel::User)].into(),
        lang: Language::Fr,
        reads_encrypted: false,
    };
    let worker = tokio::spawn(
        InboxWorker {
            store: store.clone(),
            handler: bot,
            wake: inbox_wake.clone(),
            outbound_wake: Arc::new(Notify::new()),
            fence: None,
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    let state = AppState {
        store: store.clone(),
        hs_token: SecretToken::new(TOKEN),
        bot_user_id: "@visio:localhost".try_into().expect("id"),
        max_body_bytes: 10 << 20,
        inbox_wake,
        metrics: tchap_visio::observability::metrics_handle(),
        public_ws_url: "ws://127.0.0.1".into(),
        bot_api: tchap_visio::http::api::BotApiContext {
            outbound_wake: Arc::new(Notify::new()),
            bridge: Arc::new(tchap_visio::bridge::BridgeContext::from_config(
                &example_config(),
                None,
                None,
            )),
        },
        signal: signal_state(store.clone(), shutdown.clone()).await,
        to_device_in_transactions: None,
        rate_limits: None,
        focus: None,
        cluster_node: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });

    tchap_visio::matrix::client::install_tls_provider();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..CONCURRENT_SENDERS {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for t in (sender..TRANSACTIONS).step_by(CONCURRENT_SENDERS) {
                let events: Vec<_> = (0..EVENTS_PER_TRANSACTION)
                    .map(|e| {
                        serde_json::json!({
                            "type": "m.room.message", "event_id": format!("$bench-{t}-{e}"),
                            "room_id": "!bench:localhost", "sender": "@alice:localhost",
                            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "bonjour"}
                        })
                    })
                    .collect();
                let body = serde_json::json!({ "events": events });
                let sent = Instant::now();
                let response = client
                    .put(format!("http://{addr}/_matrix/app/v1/transactions/bench-{t}"))
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .expect("PUT");
                assert!(response.status().is_success(), "{}", response.status());
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for sender in senders {
        latencies.extend(sender.await.expect("sender"));
    }
    let accepted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while store.inbox_pending_count().await.expect("count") > 0 {
        assert!(Instant::now() < deadline, "inbox not drained within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let processed = started.elapsed();
    shutdown.cancel();
    let _ = worker.await;
    latencies.sort();
    let events = (TRANSACTIONS * EVENTS_PER_TRANSACTION) as f64;
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{label}: {TRANSACTIONS} transactions × {EVENTS_PER_TRANSACTION} events, {CONCURRENT_SENDERS} concurrent senders\n  \
         accepted (stored, 200): {:.0} events/s, PUT p50 {:.1} ms, p99 {:.1} ms\n  \
         PUT → processed:        {:.0} events/s ({:.2} s in all)",
        events / accepted.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        events / processed.as_secs_f64(),
        processed.as_secs_f64(),
    );
    store.close().await;
}
