//! Leadership and fencing against a real PostgreSQL: two "nodes" are two candidates on
//! connections of their own to one test database.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::*;
use crate::bridge::effects;
use crate::matrix::client::MatrixClient;
use crate::matrix::inbox::{EventHandler, InboxWorker};
use crate::matrix::queue::{self, OutboundRequest, OutboundWorker};
use crate::store::inbox::{InboxEvent, NewInboxEvent};
use crate::store::{Connection, testing};

/// The production interval: the takeover figures below are the ones an operator gets.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Polls `check` every 20 ms until it holds; fails after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
    }
}

/// Ends a backend from another connection, as a crash or a network cut would.
async fn kill_backend(store: &Store, pid: i32) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(store.pool())
        .await
        .expect("terminate");
    assert!(ended, "backend {pid} ended");
    // The signal is sent; the backend and its locks go a moment later.
    wait_until(Duration::from_secs(10), "the backend exits", || {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            )
            .bind(pid)
            .fetch_one(store.pool())
            .await
            .expect("activity")
        }
    })
    .await;
}

#[tokio::test]
async fn of_two_nodes_exactly_one_leads() {
    let db = testing::postgres().await;
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let fence = a.try_lead().await.expect("bid").expect("a leads");
    assert_eq!(fence.epoch, 1, "the first term");
    for _ in 0..3 {
        assert_eq!(b.try_lead().await.expect("bid"), None, "b waits");
        assert!(a.still_leads().await);
    }
    assert_eq!(
        db.store.leadership().await.expect("read"),
        (1, Some("a".to_owned()))
    );
    assert!(db.store.fence_holds(&fence).await.expect("check"));
    // Resigning hands over at b's next bid, in a new term.
    a.resign().await;
    let fence_b = b.try_lead().await.expect("bid").expect("b leads");
    assert_eq!(fence_b.epoch, 2);
    assert!(!db.store.fence_holds(&fence).await.expect("check"));
    assert!(db.store.fence_holds(&fence_b).await.expect("check"));
}

/// What each node's terms report to the test.
type Terms = mpsc::UnboundedSender<(&'static str, Fence, CancellationToken)>;

fn node(
    uri: &str,
    name: &'static str,
    terms: Terms,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_elections(
        Candidate::new(uri, name, HEARTBEAT),
        shutdown,
        move |fence, term| {
            let terms = terms.clone();
            async move {
                let _ = terms.send((name, fence, term.clone()));
                term.cancelled().await;
            }
        },
    ))
}

#[tokio::test]
async fn when_the_leader_dies_the_other_node_takes_over_within_10_s_in_a_new_epoch() {
    let db = testing::postgres().await;
    let (terms, mut started) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let mut a = node(&db.uri, "a", terms.clone(), shutdown.clone());
    let first = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("a leads within 10 s")
        .expect("a term");
    assert_eq!((first.0, first.1.epoch), ("a", 1));
    let b = node(&db.uri, "b", terms.clone(), shutdown.clone());
    // b bids for a while and gets nothing.
    let mut polls = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..4 {
        polls.tick().await;
        assert!(started.try_recv().is_err(), "b must not lead beside a");
    }

    // SIGKILL: the process and its connections vanish.
    a.abort();
    let _ = (&mut a).await;
    let killed = Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("b leads within 10 s")
        .expect("b's term");
    assert_eq!(second.0, "b");
    assert!(second.1.epoch > first.1.epoch, "a new epoch");
    assert!(killed.elapsed() < Duration::from_secs(10));
    assert!(
        !db.store.fence_holds(&first.1).await.expect("check"),
        "a's term is over"
    );

    // The lock connection breaks (the server ends it): b's term ends, its workers are
    // told to stop, and a term with a higher epoch starts within 10 s.
    kill_backend(&db.store, second.1.lock_pid).await;
    let broken = Instant::now();
    let took = wait_until(Duration::from_secs(10), "b's term ends", || {
        let term = second.2.clone();
        async move { term.is_cancelled() }
    })
    .await;
    assert!(took < Duration::from_secs(10));
    let third = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("a new term within 10 s")
        .expect("a term");
    assert!(third.1.epoch > second.1.epoch, "a new epoch");
    assert!(broken.elapsed() < Duration::from_secs(10));
    assert_eq!(
        db.store.leadership().await.expect("read"),
        (third.1.epoch, Some("b".to_owned())),
        "b, the only node left, leads again"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
}

/// The next term any node starts, within 10 s.
async fn next_term(
    started: &mut mpsc::UnboundedReceiver<(&'static str, Fence, CancellationToken)>,
) -> (&'static str, Fence, CancellationToken) {
    tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("a term within 10 s")
        .expect("a term")
}

#[tokio::test]
async fn a_draining_leader_hands_over_at_once_and_bids_again_once_the_drain_ends() {
    let db = testing::postgres().await;
    let (terms, mut started) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let drain_a = drain_flag();
    let a = {
        let terms: Terms = terms.clone();
        tokio::spawn(run_elections(
            Candidate::new(&db.uri, "a", HEARTBEAT).with_drain(&drain_a),
            shutdown.clone(),
            move |fence, term| {
                let terms = terms.clone();
                async move {
                    let _ = terms.send(("a", fence, term.clone()));
                    term.cancelled().await;
                }
            },
        ))
    };
    let first = next_term(&mut started).await;
    assert_eq!(first.0, "a");
    let b_stop = shutdown.child_token();
    let b = node(&db.uri, "b", terms.clone(), b_stop.clone());

    drain_a.send_replace(true);
    let drained = Instant::now();
    wait_until(Duration::from_secs(1), "a's term ends", || {
        let term = first.2.clone();
        async move { term.is_cancelled() }
    })
    .await;
    // b's next bid, half a heartbeat later, wins.
    let second = next_term(&mut started).await;
    assert_eq!(second.0, "b");
    assert!(
        drained.elapsed() < HEARTBEAT * 2,
        "b leads {:?} after a drains",
        drained.elapsed()
    );
    assert!(!db.store.fence_holds(&first.1).await.expect("check"));

    // b stops; a drains still and does not bid.
    b_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
    assert!(
        tokio::time::timeout(HEARTBEAT * 2, started.recv())
            .await
            .is_err(),
        "a draining node never leads"
    );
    assert_eq!(db.store.leadership().await.expect("read").0, second.1.epoch);

    // The drain ends: a bids again and leads.
    drain_a.send_replace(false);
    let third = next_term(&mut started).await;
    assert_eq!(third.0, "a");
    assert!(third.1.epoch > second.1.epoch);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
}

#[tokio::test]
async fn a_stalled_leader_loses_the_lock_and_its_fence_once_another_took_over() {
    let db = testing::postgres().await;
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let stale = a.try_lead().await.expect("bid").expect("a leads");
    // a stalls (SIGSTOP, a long pause): it sends nothing on its lock connection, which
    // the server ends after three heartbeat intervals; b's bids then win.
    let stalled = Instant::now();
    let mut polls = tokio::time::interval(b.poll_interval());
    let fence_b = loop {
        polls.tick().await;
        if let Ok(Some(fence)) = b.try_lead().await {
            break fence;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(10),
            "b did not take over within 10 s"
        );
    };
    assert!(
        stalled.elapsed() >= HEARTBEAT * 3 - Duration::from_millis(100),
        "the server waited three intervals, not {:?}",
        stalled.elapsed()
    );
    assert!(fence_b.epoch > stale.epoch);
    // a wakes: its fence is refused and it learns it no longer leads.
    assert!(!db.store.fence_holds(&stale).await.expect("check"));
    assert!(!a.still_leads().await);
    assert!(db.store.fence_holds(&fence_b).await.expect("check"));
}

/// A homeserver that answers every request and remembers its paths.
async fn fake_homeserver() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let recorded = recorded.clone();
        async move {
            recorded
                .lock()
                .expect("not poisoned")
                .push(uri.path().to_owned());
            axum::Json(serde_json::json!({"event_id": "$sent", "room_id": "!r:localhost"}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn outbound_worker(store: &Store, homeserver: &str, fence: Fence) -> OutboundWorker {
    OutboundWorker {
        store: store.clone(),
        client: MatrixClient::new(homeserver, "as_token"),
        device: None,
        relay_only: false,
        bot_ready: Arc::new(true.into()),
        wake: Arc::new(Notify::new()),
        fence: Some(fence),
        shutdown: CancellationToken::new(),
    }
}

async fn queue_message(store: &Store, body: &str) -> String {
    let request = OutboundRequest::Send {
        room_id: "!r:localhost".try_into().expect("room id"),
        as_user: None,
        event_type: "m.room.message".into(),
        content: serde_json::json!({"msgtype": "m.notice", "body": body}),
        in_thread_of: None,
        attribution: None,
    };
    let mut tx = store.begin().await.expect("begin");
    let id = queue::enqueue(&mut tx, &request).await.expect("enqueue");
    tx.commit().await.expect("commit");
    sqlx::query_scalar("SELECT txn_id FROM outbound WHERE id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("txn id")
}

#[tokio::test]
async fn a_send_with_a_stale_epoch_is_refused_and_the_next_leader_sends_it_with_its_txn_id() {
    let db = testing::postgres().await;
    let store = db.store.clone();
    let (homeserver, seen) = fake_homeserver().await;
    let sent = || seen.lock().expect("not poisoned").clone();
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let fence_a = a.try_lead().await.expect("bid").expect("a leads");

    // While a leads, its worker sends.
    let txn_1 = queue_message(&store, "un").await;
    let worker = outbound_worker(&store, &homeserver, fence_a);
    let stop = worker.shutdown.clone();
    let running = tokio::spawn(worker.run());
    wait_until(Duration::from_secs(10), "the first send", || {
        let store = store.clone();
        async move { store.outbound_pending_count().await.expect("count") == 0 }
    })
    .await;
    stop.cancel();
    running.await.expect("worker ends");
    assert_eq!(sent().len(), 1);
    assert!(sent()[0].ends_with(&txn_1), "{:?}", sent());

    // a stalls; its lock connection ends; b takes over.
    kill_backend(&store, fence_a.lock_pid).await;
    let fence_b = b.try_lead().await.expect("bid").expect("b leads");
    assert!(fence_b.epoch > fence_a.epoch);

    // a wakes with work queued: it sends nothing and its term ends.
    let txn_2 = queue_message(&store, "deux").await;
    let worker = outbound_worker(&store, &homeserver, fence_a);
    let term = worker.shutdown.clone();
    let running = tokio::spawn(worker.run());
    wait_until(Duration::from_secs(10), "a's term ends", || {
        let term = term.clone();
        async move { term.is_cancelled() }
    })
    .await;
    running.await.expect("worker ends");
    assert_eq!(sent().len(), 1, "nothing sent under a stale epoch");
    assert_eq!(store.outbound_pending_count().await.expect("count"), 1);

    // b's worker sends it, with the transaction id fixed at enqueue.
    let worker = outbound_worker(&store, &homeserver, fence_b);
    let stop = worker.shutdown.clone();
    let running = tokio::spawn(worker.run());
    wait_until(Duration::from_secs(10), "b's send", || {
        let store = store.clone();
        async move { store.outbound_pending_count().await.expect("count") == 0 }
    })
    .await;
    stop.cancel();
    running.await.expect("worker ends");
    assert_eq!(sent().len(), 2);
    assert!(sent()[1].ends_with(&txn_2), "{:?}", sent());
}

/// Counts the events it handles.
#[derive(Clone, Default)]
struct Counting(Arc<Mutex<Vec<String>>>);

impl EventHandler for Counting {
    async fn handle(&self, event: &InboxEvent, _conn: &mut Connection) -> Result<(), StoreError> {
        self.0
            .lock()
            .expect("not poisoned")
            .push(event.event_id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn an_inbox_batch_under_a_stale_epoch_commits_nothing() {
    let db = testing::postgres().await;
    let store = db.store.clone();
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let fence_a = a.try_lead().await.expect("bid").expect("a leads");
    let event = |id: &str| NewInboxEvent {
        event_id: id.into(),
        room_id: Some("!r:localhost".into()),
        json: format!(r#"{{"event_id":"{id}"}}"#),
    };
    store
        .store_transaction("t1", &[event("$one")])
        .await
        .expect("intake");
    let worker = |fence: Fence, handler: Counting| InboxWorker {
        store: store.clone(),
        handler,
        wake: Arc::new(Notify::new()),
        outbound_wake: Arc::new(Notify::new()),
        fence: Some(fence),
        shutdown: CancellationToken::new(),
    };
    let handled_a = Counting::default();
    let inbox_a = worker(fence_a, handled_a.clone());
    assert_eq!(inbox_a.process_batch().await.expect("batch"), 1);

    // Any node takes transactions; a lost the lock and b leads.
    store
        .store_transaction("t2", &[event("$two")])
        .await
        .expect("intake");
    kill_backend(&store, fence_a.lock_pid).await;
    let fence_b = b.try_lead().await.expect("bid").expect("b leads");
    assert_eq!(inbox_a.process_batch().await.expect("batch"), 0);
    assert!(inbox_a.shutdown.is_cancelled(), "a's term ends");
    assert_eq!(store.inbox_pending_count().await.expect("count"), 1);

    let handled_b = Counting::default();
    let inbox_b = worker(fence_b, handled_b.clone());
    assert_eq!(inbox_b.process_batch().await.expect("batch"), 1);
    assert_eq!(*handled_b.0.lock().expect("not poisoned"), ["$two"]);
    assert_eq!(
        handled_a.0.lock().expect("not poisoned").as_slice(),
        ["$one"],
        "nothing from the stale term got through"
    );
    assert_eq!(store.inbox_pending_count().await.expect("count"), 0);
}

#[tokio::test]
async fn a_new_term_waits_for_the_old_terms_open_batch() {
    // The epoch moves only once a batch that checked the old one has committed, so no
    // batch of the old term commits after the new term starts.
    let db = testing::postgres().await;
    let store = db.store.clone();
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let fence_a = a.try_lead().await.expect("bid").expect("a leads");
    let mut tx = store.begin().await.expect("begin");
    assert!(
        crate::store::cluster::fence_holds(&mut tx, &fence_a)
            .await
            .expect("check")
    );
    a.resign().await;
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let bid = tokio::spawn(async move { (b.try_lead().await, b) });
    // The bid is blocked on the open batch's share lock.
    let mut polls = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..5 {
        polls.tick().await;
        assert!(!bid.is_finished(), "the epoch moved under an open batch");
    }
    tx.commit().await.expect("commit");
    let (won, _b) = tokio::time::timeout(Duration::from_secs(10), bid)
        .await
        .expect("the bid ends once the batch committed")
        .expect("task");
    assert!(won.expect("bid").expect("b leads").epoch > fence_a.epoch);
}

#[test]
fn cpu_is_read_from_proc() {
    let mut meter = CpuMeter::new();
    // Some work between two readings, so the figure is a real one.
    let mut x = 0u64;
    for i in 0..2_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    assert!(x != 1);
    let permille = meter.permille().expect("Linux has /proc/self/stat");
    assert!((0..=100_000).contains(&permille), "{permille}");
}

#[tokio::test]
async fn webhooks_and_sfu_effects_under_a_stale_epoch_do_nothing() {
    let db = testing::postgres().await;
    let store = db.store.clone();
    let (receiver, seen) = fake_homeserver().await;
    let mut a = Candidate::new(&db.uri, "a", HEARTBEAT);
    let mut b = Candidate::new(&db.uri, "b", HEARTBEAT);
    let stale = a.try_lead().await.expect("bid").expect("a leads");
    kill_backend(&store, stale.lock_pid).await;
    let current = b.try_lead().await.expect("bid").expect("b leads");

    let webhooks = crate::webhooks::Webhooks::from_config(&[crate::config::WebhookConfig {
        url: format!("{receiver}/hooks"),
        secret: "s".repeat(40),
    }]);
    let mut tx = store.begin().await.expect("begin");
    webhooks.enqueue_ping(&mut tx).await.expect("queued");
    tx.commit().await.expect("commit");

    let term = CancellationToken::new();
    let mut worker = webhooks.worker(store.clone(), term.clone());
    worker.fence = Some(stale);
    let running = tokio::spawn(worker.run());
    wait_until(Duration::from_secs(10), "a's webhook worker stops", || {
        let term = term.clone();
        async move { term.is_cancelled() }
    })
    .await;
    running.await.expect("worker ends");
    assert!(
        seen.lock().expect("not poisoned").is_empty(),
        "nothing delivered"
    );

    let stop = CancellationToken::new();
    let mut worker = webhooks.worker(store.clone(), stop.clone());
    worker.fence = Some(current);
    let running = tokio::spawn(worker.run());
    wait_until(Duration::from_secs(10), "b delivers", || {
        let seen = seen.clone();
        async move { !seen.lock().expect("not poisoned").is_empty() }
    })
    .await;
    stop.cancel();
    running.await.expect("worker ends");

    let mut tx = store.begin().await.expect("begin");
    effects::enqueue(
        &mut tx,
        &effects::SfuEffect::CloseRoom {
            meeting: "m1".into(),
        },
    )
    .await
    .expect("queued");
    tx.commit().await.expect("commit");
    let rooms = Arc::new(CountingRooms::default());
    let mut worker = effects::SfuEffectsWorker::new(
        store.clone(),
        rooms.clone(),
        Arc::new(Notify::new()),
        CancellationToken::new(),
    );
    worker.fence = Some(stale);
    assert_eq!(worker.apply_pending().await.expect("round"), 0);
    assert!(worker.shutdown.is_cancelled(), "a's term ends");
    assert_eq!(rooms.0.load(Ordering::SeqCst), 0, "nothing applied");
    worker.fence = Some(current);
    assert_eq!(worker.apply_pending().await.expect("round"), 1);
    assert_eq!(rooms.0.load(Ordering::SeqCst), 1, "b applies it");
}

/// An SFU that counts the effects it receives.
#[derive(Default)]
struct CountingRooms(AtomicUsize);

impl effects::MeetingRooms for Arc<CountingRooms> {
    async fn inject_chat(&self, _: String, _: String, _: String, _: String) -> bool {
        self.0.fetch_add(1, Ordering::SeqCst);
        true
    }
    async fn close_room(&self, _: String) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst);
        0
    }
    async fn remove_identity(&self, _: String, _: String, _: String) -> bool {
        self.0.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[tokio::test]
async fn check_config_describes_the_cluster() {
    let db = testing::postgres_unmigrated().await;
    let line = describe(&db.store, "n1").await.expect("describe");
    assert!(line.contains("no cluster tables yet"), "{line}");
    db.store.migrate().await.expect("migrate");
    let line = describe(&db.store, "n1").await.expect("describe");
    assert!(
        line.contains("leader: none yet") && line.contains("live nodes: none"),
        "{line}"
    );
    let mut n2 = Candidate::new(&db.uri, "n2", HEARTBEAT);
    n2.try_lead().await.expect("bid").expect("n2 leads");
    db.store
        .node_started(&crate::store::cluster::NodeBeat {
            node_id: "n2".into(),
            node_url: "http://n2:29330".into(),
            heartbeat_ms: 2000,
            participants: 7,
            rooms: 2,
            cpu_permille: Some(120),
        })
        .await
        .expect("beat");
    let line = describe(&db.store, "n1").await.expect("describe");
    assert_eq!(
        line,
        "cluster: node n1; leader: n2 (epoch 1); live nodes: n2 (7 participants)"
    );
}

/// An SFU that records what each effect asked, in order.
#[derive(Default)]
struct RecordingRooms(Mutex<Vec<String>>);

impl effects::MeetingRooms for Arc<RecordingRooms> {
    async fn inject_chat(&self, room: String, id: String, _: String, _: String) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("{room} chat {id}"));
        true
    }
    async fn close_room(&self, room: String) -> usize {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("{room} close"));
        0
    }
    async fn remove_identity(&self, room: String, identity: String, _: String) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("{room} remove {identity}"));
        true
    }
}

async fn register(store: &Store, node: &str, participants: i64) {
    store
        .node_started(&crate::store::cluster::NodeBeat {
            node_id: node.into(),
            node_url: format!("http://{node}.internal"),
            heartbeat_ms: HEARTBEAT.as_millis() as i64,
            participants,
            rooms: 0,
            cpu_permille: None,
        })
        .await
        .expect("node");
}

async fn new_meeting(store: &Store, title: &str) -> String {
    let m = crate::meeting::Meeting::new(title, None, None, crate::clock::now_ms())
        .expect("valid title");
    let mut conn = store.pool().acquire().await.expect("conn");
    crate::store::meetings::create(&mut conn, &m)
        .await
        .expect("create");
    m.id.as_str().to_owned()
}

/// One node's effects worker and its relay, as `app::spawn_cluster` wires them; the
/// worker's own poll is 30 s, so effects applied sooner came through `NOTIFY`.
fn effects_node(
    db: &testing::TestDb,
    node: &str,
    target: effects::EffectTarget,
    shutdown: &CancellationToken,
) -> Arc<RecordingRooms> {
    let rooms = Arc::new(RecordingRooms::default());
    let (effects_run, unplaced_effects_run) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let mut worker = effects::SfuEffectsWorker::new(
        db.store.clone(),
        rooms.clone(),
        match target {
            effects::EffectTarget::Unplaced => unplaced_effects_run.clone(),
            _ => effects_run.clone(),
        },
        shutdown.clone(),
    );
    worker.target = target;
    tokio::spawn(worker.run());
    tokio::spawn(
        WakeRelay {
            uri: db.uri.clone(),
            store: db.store.clone(),
            node_id: node.into(),
            inbox_produced: Arc::new(Notify::new()),
            outbound_produced: Arc::new(Notify::new()),
            inbox_run: Arc::new(Notify::new()),
            outbound_run: Arc::new(Notify::new()),
            effects_run,
            unplaced_effects_run,
            access_changed: Arc::new(Notify::new()),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    rooms
}

#[tokio::test]
async fn effects_reach_the_node_hosting_the_room_once_in_order_woken_by_notify() {
    let db = testing::postgres().await;
    let store = db.store.clone();
    register(&store, "a", 0).await;
    register(&store, "b", 10).await;
    let on_a = new_meeting(&store, "Sur A").await;
    assert_eq!(
        store
            .place_room(&on_a)
            .await
            .expect("place")
            .expect("node")
            .node_id,
        "a"
    );
    register(&store, "a", 20).await;
    let on_b = new_meeting(&store, "Sur B").await;
    assert_eq!(
        store
            .place_room(&on_b)
            .await
            .expect("place")
            .expect("node")
            .node_id,
        "b"
    );
    let nowhere = new_meeting(&store, "Nulle part").await;

    let shutdown = CancellationToken::new();
    let a = effects_node(&db, "a", effects::EffectTarget::Node("a".into()), &shutdown);
    let b = effects_node(&db, "b", effects::EffectTarget::Node("b".into()), &shutdown);
    // The leader's worker, on b.
    let leader = effects_node(&db, "b", effects::EffectTarget::Unplaced, &shutdown);
    wait_until(Duration::from_secs(10), "three relays listen", || {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN%tchap_visio_access%'",
            )
            .fetch_one(store.pool())
            .await
            .expect("activity")
                >= 3
        }
    })
    .await;

    let mut expected = std::collections::HashMap::new();
    for round in 0..4 {
        let mut tx = store.begin().await.expect("begin");
        for meeting in [&on_a, &on_b, &nowhere] {
            let effect = if round < 3 {
                effects::SfuEffect::InjectChat {
                    meeting: meeting.clone(),
                    message_id: format!("$m{round}"),
                    author: "Alice".into(),
                    text: "bonjour".into(),
                }
            } else {
                effects::SfuEffect::RemoveParticipant {
                    meeting: meeting.clone(),
                    identity: "guest-1".into(),
                    why: "removed".into(),
                }
            };
            effects::enqueue(&mut tx, &effect).await.expect("queued");
            let line = match round {
                3 => format!("{meeting} remove guest-1"),
                _ => format!("{meeting} chat $m{round}"),
            };
            expected
                .entry(meeting.clone())
                .or_insert_with(Vec::new)
                .push(line);
        }
        tx.commit().await.expect("commit");
    }
    let took = wait_until(Duration::from_secs(10), "every effect applied", || {
        let (a, b, leader) = (a.clone(), b.clone(), leader.clone());
        async move {
            [a, b, leader]
                .iter()
                .all(|r| r.0.lock().expect("not poisoned").len() >= 4)
        }
    })
    .await;
    assert!(took < Duration::from_secs(5), "woken, not polled: {took:?}");
    for (rooms, meeting) in [(&a, &on_a), (&b, &on_b), (&leader, &nowhere)] {
        assert_eq!(
            *rooms.0.lock().expect("not poisoned"),
            expected[meeting],
            "{meeting}: its effects only, once each, in order"
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn a_dead_nodes_sessions_close_when_it_was_last_alive_and_its_meeting_waits_for_a_rejoin() {
    use crate::store::sessions;
    let db = testing::postgres().await;
    let store = db.store.clone();
    register(&store, "a", 0).await;
    register(&store, "b", 10).await;
    let orphan = new_meeting(&store, "Orpheline").await;
    let alive = new_meeting(&store, "Vivante").await;
    let mut conn = store.pool().acquire().await.expect("conn");
    for (meeting, sid, node) in [
        (&orphan, "PA_1", "a"),
        (&orphan, "PA_2", "a"),
        (&alive, "PA_3", "b"),
    ] {
        let id = crate::ids::MeetingId::parse(meeting).expect("id");
        let session = crate::meeting::Session {
            meeting_id: id.clone(),
            sid: sid.into(),
            identity: format!("{sid}-x"),
            attendee_key: sid.into(),
            display_name: sid.into(),
            matrix_user_id: None,
            joined_at: 1_000,
            left_at: None,
            last_seen_at: 1_000,
        };
        assert!(
            sessions::open_on(&mut conn, &session, Some(node))
                .await
                .expect("open")
        );
        crate::store::meetings::set_state(
            &mut conn,
            &id,
            crate::meeting::MeetingState::Running,
            1_000,
        )
        .await
        .expect("running");
    }
    // A live node touches its own sessions only.
    assert_eq!(
        sessions::touch_open_on(&mut conn, 2_000, Some("b"))
            .await
            .expect("touch"),
        1
    );
    assert_eq!(
        store
            .orphan_dead_nodes_meetings(3_000)
            .await
            .expect("sweep"),
        Vec::<String>::new()
    );
    let last_alive: i64 = sqlx::query_scalar(
        "UPDATE nodes SET heartbeat_at = heartbeat_at - 10 * heartbeat_ms \
         WHERE node_id = 'a' RETURNING heartbeat_at",
    )
    .fetch_one(store.pool())
    .await
    .expect("silence a");
    assert_eq!(
        store
            .orphan_dead_nodes_meetings(4_000)
            .await
            .expect("sweep"),
        vec![orphan.clone()]
    );
    assert_eq!(
        store
            .orphan_dead_nodes_meetings(5_000)
            .await
            .expect("sweep"),
        Vec::<String>::new(),
        "once"
    );
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT sid, left_at FROM participant_sessions ORDER BY sid")
            .fetch_all(store.pool())
            .await
            .expect("sessions");
    assert_eq!(
        rows,
        vec![
            ("PA_1".into(), Some(last_alive)),
            ("PA_2".into(), Some(last_alive)),
            ("PA_3".into(), None),
        ]
    );
    let empty: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT id, empty_since FROM meetings ORDER BY empty_since NULLS LAST")
            .fetch_all(store.pool())
            .await
            .expect("meetings");
    assert_eq!(
        empty,
        vec![(orphan, Some(4_000)), (alive, None)],
        "grace for the orphan"
    );
}
