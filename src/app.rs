//! Composition root: builds the store, the Matrix client, the workers and the HTTP server,
//! runs them, and shuts them down in order. Also the bodies of the `check-config` and
//! `migrate` commands, which need the same parts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ruma::api::client::appservice::request_ping;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::SecretToken;
use crate::auth::token::SfuKeys;
use crate::bridge::sfu_events::SfuEventWorker;
use crate::bridge::{self, Bridge, BridgeContext};
use crate::config::Config;
use crate::http::api::BotApiContext;
use crate::http::{self, AppState, PingOnlyState};
use crate::matrix::account;
use crate::matrix::bot::Bot;
use crate::matrix::client::{CallError, MatrixClient};
use crate::matrix::crypto::device::{BotDevice, DeviceSlot};
use crate::matrix::crypto::events::Decrypting;
use crate::matrix::crypto::worker::{CryptoWorker, SyncLoop};
use crate::matrix::inbox::InboxWorker;
use crate::matrix::queue::{self, OutboundRequest, OutboundWorker};
use crate::observability;
use crate::sfu::driver::EngineEvents;
use crate::sfu::{EngineConfig, SfuHandle};
use crate::signal::SignalState;
use crate::store::{Store, redact_uri};
use crate::webhooks::Webhooks;

/// Switches of `run` that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Store transactions but do not process them (maintenance, crash tests).
    pub hold_inbox: bool,
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.database.uri, config.database.max_connections)
        .await
        .with_context(|| format!("database.uri {}", redact_uri(&config.database.uri)))
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let store = match &config.cluster {
        None => open_store(&config).await?,
        Some(cluster) => Store::open_for_cluster(
            &config.database.uri,
            config.database.max_connections,
            cluster.heartbeat() * crate::store::cluster::MISSED_HEARTBEATS as u32,
        )
        .await
        .with_context(|| format!("database.uri {}", redact_uri(&config.database.uri)))?,
    };
    if config.cluster.is_some() {
        crate::cluster::check_server(&store).await?;
    }
    let metrics = observability::metrics_handle();
    let bot_mode = config.mode == crate::config::Mode::Bot;
    let (client, account_device) = if bot_mode {
        let session = account::session(&config, &store).await?;
        let client =
            MatrixClient::for_account(config.homeserver.address.as_str(), &session.access_token);
        (client, Some(session.device_id))
    } else {
        let client = MatrixClient::new(
            config.homeserver.address.as_str(),
            &config.appservice.as_token,
        );
        (client, None)
    };
    // As the registration's sender: the bot may not exist yet.
    let sender_client = client.clone();
    let client = if bot_mode || config.bot_is_sender() {
        client
    } else {
        client.with_bot(config.bot_user_id())
    };
    let bot_ready = Arc::new(AtomicBool::new(bot_registered(&config, &store).await?));
    let bot = Bot::from_config(&config);
    let shutdown = CancellationToken::new();
    // What the intake and the bridge signal, and what wakes the leader's workers: the
    // same on a single node; in a cluster, `cluster::WakeRelay` carries one to the
    // other across nodes.
    let inbox_wake = Arc::new(Notify::new());
    let outbound_wake = Arc::new(Notify::new());
    let (inbox_run, outbound_run) = match config.cluster {
        None => (inbox_wake.clone(), outbound_wake.clone()),
        Some(_) => (Arc::new(Notify::new()), Arc::new(Notify::new())),
    };
    let device_slot: Option<DeviceSlot> = config
        .encryption
        .enabled
        .then(|| Arc::new(std::sync::OnceLock::new()));
    // Whether this cluster node leads now, for its device's worker (the leader's workers
    // run per term and know it already).
    let leading = config
        .cluster
        .as_ref()
        .map(|_| Arc::new(AtomicBool::new(false)));

    metrics::gauge!("tchap_visio_inbox_pending").set(store.inbox_pending_count().await? as f64);
    queue_bot_profile(&store, &config).await?;
    crate::http::api::warn_about_legacy_tokens(&store).await?;

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (appservice.hostname / appservice.port): is another instance running?")
    })?;

    let mut workers = tokio::task::JoinSet::new();
    {
        let (config, store, client, account_device) = (
            config.clone(),
            store.clone(),
            client.clone(),
            account_device.clone(),
        );
        let (slot, ready, inbox_wake, leading, shutdown) = (
            device_slot.clone(),
            bot_ready.clone(),
            inbox_wake.clone(),
            leading.clone(),
            shutdown.clone(),
        );
        workers.spawn(async move {
            if !ready.load(Ordering::Acquire) {
                register_bot(&config, &store, &sender_client, &ready, &shutdown).await;
            }
            if let Some(slot) = slot
                && ready.load(Ordering::Acquire)
            {
                bring_up_device(
                    config,
                    store,
                    client,
                    account_device,
                    DeviceWiring {
                        slot,
                        inbox_wake,
                        leading,
                    },
                    shutdown,
                )
                .await;
            }
        });
    }
    if bot_mode {
        workers.spawn(
            account::AccountSync {
                client: client.clone(),
                store: store.clone(),
                bot: config.bot_user_id(),
                device: device_slot.clone(),
                inbox_wake: inbox_wake.clone(),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
    }
    // Webhook deliveries have their own worker: a slow receiver delays nothing else.
    // The bridge queues events through clones of `webhooks`, which share its wake-up.
    let webhooks = Webhooks::from_config(&config.webhooks);
    let (sfu, sfu_events, sfu_task) = start_sfu(&config, shutdown.clone()).await?;
    workers.spawn(async move {
        let _ = sfu_task.await;
    });
    let bridge = Arc::new(
        BridgeContext::from_config(&config, Some(sfu.clone()), Some(client.clone()))
            .with_webhooks(webhooks.clone())
            .with_store(store.clone()),
    );
    // A single node's open sessions are the previous run's. In a cluster, only those
    // this node's previous run reported: the others may be other nodes' live ones, and
    // a dead node's are the leader's (`cluster::DeadNodeSweep`).
    match &config.cluster {
        None => {
            let mut conn = store.pool().acquire().await?;
            bridge::recover(&mut conn, crate::clock::now_ms()).await?;
        }
        Some(cluster) => {
            let mut conn = store.pool().acquire().await?;
            let closed =
                crate::store::sessions::close_stale_of_node(&mut conn, &cluster.node_id).await?;
            if closed > 0 {
                tracing::info!(
                    sessions = closed,
                    "closed the sessions this node's previous run left open"
                );
            }
        }
    }
    let bot_api = BotApiContext {
        outbound_wake: outbound_wake.clone(),
        bridge: bridge.clone(),
    };
    let focus = config.element_call.enabled.then(|| {
        let delayed = crate::focus::delayed::DelayedLeaves::new(
            sfu.clone(),
            config.homeserver.domain.to_string(),
            config.homeserver.address.to_string(),
            (!bot_mode).then(|| config.appservice.as_token.clone()),
            shutdown.clone(),
        );
        tracing::info!(
            publish_servers = ?config.element_call.publishers(config.homeserver.domain.as_str()),
            "Element Call focus enabled (/get_token, /sfu/get, MSC4195)"
        );
        Arc::new(crate::focus::Focus::from_config(&config, delayed))
    });
    workers.spawn(
        SfuEventWorker {
            ctx: bridge.clone(),
            store: store.clone(),
            events: sfu_events,
            outbound_wake: outbound_wake.clone(),
            shutdown: shutdown.clone(),
            delayed_leaves: focus.as_ref().map(|f| f.delayed.clone()),
        }
        .run(),
    );
    if options.hold_inbox {
        tracing::warn!("--hold-inbox: transactions are stored but not processed");
    }
    let leader = LeaderWorkers {
        store: store.clone(),
        client,
        device: device_slot.clone(),
        relay_only: bot_mode,
        bot_ready: bot_ready.clone(),
        webhooks: webhooks.clone(),
        bridge: bridge.clone(),
        sweep_period: focus
            .is_some()
            .then(|| Duration::from_secs(config.element_call.membership_check_secs)),
        hold_inbox: options.hold_inbox,
        inbox_run: inbox_run.clone(),
        outbound_run: outbound_run.clone(),
        unplaced_effects_run: Arc::new(Notify::new()),
        dead_node_sweep: config.cluster.as_ref().map(|c| c.heartbeat()),
    };
    let drain_flag = crate::cluster::drain_flag();
    let drain = config.cluster.as_ref().map(|cluster| Drain {
        store: store.clone(),
        node_id: cluster.node_id.clone(),
        flag: drain_flag.clone(),
        sfu: sfu.clone(),
        timeout: cluster.drain_timeout(),
    });
    match &config.cluster {
        None => leader.spawn(&mut workers, shutdown.clone(), None),
        Some(cluster) => spawn_cluster(
            &mut workers,
            &config,
            cluster,
            ClusterParts {
                store: store.clone(),
                leader,
                leading: leading.expect("made when cluster is configured"),
                sfu: sfu.clone(),
                draining: drain_flag,
                bridge: bridge.clone(),
                wakes: [
                    inbox_wake.clone(),
                    outbound_wake.clone(),
                    inbox_run,
                    outbound_run,
                ],
            },
            &shutdown,
        ),
    }

    // One set of keys: the join endpoint signs with it, the SFU's /rtc checks with it.
    let sfu_keys = Arc::new(SfuKeys::from_config(
        &config.sfu.keys,
        &config.sfu.signing_key,
    ));
    if sfu_keys.is_generated() {
        tracing::info!("sfu.keys is empty: join tokens are signed with a key made for this run");
    }
    let state = AppState {
        store: store.clone(),
        // In `mode: bot` nobody may call the appservice API: a token nobody knows.
        hs_token: SecretToken::new(&if bot_mode {
            crate::matrix::registration::random_token()
        } else {
            config.appservice.hs_token.clone()
        }),
        bot_user_id: bot.user_id.clone(),
        max_body_bytes: config.appservice.max_body_bytes,
        inbox_wake,
        metrics: metrics.clone(),
        public_ws_url: http::join::ws_base_url(config.appservice.public_address.as_str()),
        bot_api,
        signal: SignalState {
            sfu,
            keys: sfu_keys,
            rooms: Arc::new(http::join::StoredMeetings {
                store: store.clone(),
                node_id: config.cluster.as_ref().map(|c| c.node_id.clone()),
            }),
        },
        rate_limits: http::limits::RateLimits::new(&config.rate_limits),
        to_device_in_transactions: device_slot
            .clone()
            .filter(|_| config.encryption.to_device == crate::config::ToDeviceSource::Transactions),
        focus,
        cluster_node: config.cluster.as_ref().map(|c| c.node_id.clone()),
    };
    tracing::info!(
        %addr,
        bot = %bot.user_id,
        homeserver = %config.homeserver.address,
        database = %redact_uri(&config.database.uri),
        startup_ms = started.elapsed().as_millis() as u64,
        "tchap-visio is running"
    );
    if config.metrics.enabled {
        let metrics_addr = config.metrics_addr();
        let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| {
                format!("cannot listen on {metrics_addr} (metrics.hostname / metrics.port): is another instance running?")
            })?;
        let stop = shutdown.clone();
        let router = http::metrics_router(metrics.clone());
        workers.spawn(async move {
            let served = axum::serve(metrics_listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
        tracing::info!(%metrics_addr, "metrics at /metrics");
    }
    let server_shutdown = shutdown.clone();
    if let Some(limits) = state.rate_limits.clone() {
        workers.spawn(limits.sweep(shutdown.clone()));
    }
    let router = http::router(state);
    // The peer's address is what the rate limits count by.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async move {
        if wait_for_signal().await == StopSignal::Terminate
            && let Some(drain) = drain
        {
            drain.run().await;
        }
        server_shutdown.cancel();
    });
    server.await.context("HTTP server failed")?;
    shutdown.cancel();
    // Workers stop between two steps; anything unfinished is still in the database.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if let Some(cluster) = &config.cluster
        && let Err(e) = store.node_stopped(&cluster.node_id).await
    {
        tracing::warn!(error = %e, "cannot record this node's stop; the others count it dead after three heartbeats");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The workers only the leader runs (on a single node: always): the inbox worker, the
/// outbound queue, the webhooks, and the bridge's SFU effects and membership sweep.
#[derive(Clone)]
struct LeaderWorkers {
    store: Store,
    client: MatrixClient,
    device: Option<DeviceSlot>,
    relay_only: bool,
    bot_ready: Arc<AtomicBool>,
    webhooks: Webhooks,
    bridge: Arc<BridgeContext>,
    /// The Element Call membership sweep's period, when the focus is on.
    sweep_period: Option<Duration>,
    hold_inbox: bool,
    inbox_run: Arc<Notify>,
    outbound_run: Arc<Notify>,
    /// In a cluster: what wakes the leader's effects worker (rooms placed nowhere).
    unplaced_effects_run: Arc<Notify>,
    /// In a cluster: how often the leader sweeps dead nodes' meetings.
    dead_node_sweep: Option<Duration>,
}

impl LeaderWorkers {
    /// Spawns them into `set`; they stop when `stop` is cancelled. `fence`: the
    /// cluster term they act for, checked before each claim and send.
    fn spawn(
        &self,
        set: &mut tokio::task::JoinSet<()>,
        stop: CancellationToken,
        fence: Option<crate::cluster::Fence>,
    ) {
        let mut webhooks = self.webhooks.worker(self.store.clone(), stop.clone());
        webhooks.fence = fence;
        set.spawn(webhooks.run());
        set.spawn(
            OutboundWorker {
                store: self.store.clone(),
                client: self.client.clone(),
                device: self.device.clone(),
                relay_only: self.relay_only,
                bot_ready: self.bot_ready.clone(),
                wake: self.outbound_run.clone(),
                fence,
                shutdown: stop.clone(),
            }
            .run(),
        );
        if let Some(mut effects) = self.bridge.effects_worker(self.store.clone(), stop.clone()) {
            if let Some(fence) = fence {
                // A cluster's leader applies the effects for rooms placed nowhere; each
                // node applies those for its own rooms (`spawn_cluster`).
                effects.fence = Some(fence);
                effects.target = crate::bridge::effects::EffectTarget::Unplaced;
                effects.wake = self.unplaced_effects_run.clone();
            }
            set.spawn(effects.run());
        }
        if let (Some(fence), Some(period)) = (fence, self.dead_node_sweep) {
            set.spawn(
                crate::cluster::DeadNodeSweep {
                    store: self.store.clone(),
                    period,
                    fence,
                    shutdown: stop.clone(),
                }
                .run(),
            );
        }
        if let Some(period) = self.sweep_period {
            set.spawn(
                crate::focus::sweep::MembershipSweep {
                    store: self.store.clone(),
                    view: self.bridge.access.view.clone(),
                    ctx: self.bridge.clone(),
                    outbound_wake: self.outbound_run.clone(),
                    period,
                    shutdown: stop.clone(),
                }
                .run(),
            );
        }
        if !self.hold_inbox {
            set.spawn(
                InboxWorker {
                    store: self.store.clone(),
                    handler: Decrypting::new(
                        Bridge {
                            ctx: self.bridge.clone(),
                        },
                        self.device.clone(),
                    ),
                    wake: self.inbox_run.clone(),
                    outbound_wake: self.outbound_run.clone(),
                    fence,
                    shutdown: stop,
                }
                .run(),
            );
        }
    }
}

/// What a cluster node's own tasks are built from.
struct ClusterParts {
    store: Store,
    leader: LeaderWorkers,
    /// Set while this node leads.
    leading: Arc<AtomicBool>,
    /// Whose load the heartbeat reports.
    sfu: SfuHandle,
    /// The drain mark the heartbeat reads and the elections follow.
    draining: crate::cluster::DrainFlag,
    /// Whose effects worker applies this node's rooms' effects.
    bridge: Arc<BridgeContext>,
    /// Inbox and outbound wake-ups: as the intake and the bridge signal them, then as
    /// the leader's workers wait for them.
    wakes: [Arc<Notify>; 4],
}

/// A cluster node's own tasks: its heartbeat, the relay of wake-ups between nodes, and
/// its bid for the leadership, whose terms run the [`LeaderWorkers`].
fn spawn_cluster(
    workers: &mut tokio::task::JoinSet<()>,
    config: &Config,
    cluster: &crate::config::ClusterConfig,
    parts: ClusterParts,
    shutdown: &CancellationToken,
) {
    let ClusterParts {
        store,
        leader,
        leading,
        sfu,
        draining,
        bridge,
        wakes: [inbox_produced, outbound_produced, inbox_run, outbound_run],
    } = parts;
    // This node's rooms' effects, whoever leads: the rows name the node, so no other
    // worker takes them, and no fence is needed.
    let effects_run = Arc::new(Notify::new());
    if let Some(mut effects) = bridge.effects_worker(store.clone(), shutdown.clone()) {
        effects.target = crate::bridge::effects::EffectTarget::Node(cluster.node_id.clone());
        effects.wake = effects_run.clone();
        workers.spawn(effects.run());
    }
    let node_url = cluster
        .node_url
        .as_ref()
        .map(|u| u.to_string())
        .expect("validate() requires cluster.node_url");
    tracing::info!(node = %cluster.node_id, %node_url, "cluster node: bidding for the leadership");
    let load_of = sfu;
    workers.spawn(
        crate::cluster::Heartbeat {
            store: store.clone(),
            node_id: cluster.node_id.clone(),
            node_url,
            interval: cluster.heartbeat(),
            load: Box::new(move || load_of.load()),
            draining: draining.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    workers.spawn(
        crate::cluster::WakeRelay {
            uri: config.database.uri.clone(),
            store: store.clone(),
            node_id: cluster.node_id.clone(),
            inbox_produced,
            outbound_produced,
            inbox_run,
            outbound_run,
            effects_run,
            unplaced_effects_run: leader.unplaced_effects_run.clone(),
            access_changed: bridge.access.changed.clone(),
            shutdown: shutdown.clone(),
        }
        .run(),
    );
    let candidate =
        crate::cluster::Candidate::new(&config.database.uri, &cluster.node_id, cluster.heartbeat())
            .with_drain(&draining);
    workers.spawn(crate::cluster::run_elections(
        candidate,
        shutdown.clone(),
        move |fence, term| {
            let (leader, leading) = (leader.clone(), leading.clone());
            async move {
                // Whatever earlier terms left undone is in the database: start from it.
                leader.inbox_run.notify_one();
                leader.outbound_run.notify_one();
                let _leading = LeadingFlag::raise(leading);
                // Events an earlier leader parked may wait for keys this node's device
                // already holds: its worker looks at once.
                if let Some(device) = leader.device.as_ref().and_then(|slot| slot.get()) {
                    device.input_wake.notify_one();
                }
                leader.unplaced_effects_run.notify_one();
                let mut set = tokio::task::JoinSet::new();
                leader.spawn(&mut set, term, Some(fence));
                while set.join_next().await.is_some() {}
            }
        },
    ));
}

/// Says that this node leads for as long as it lives: lowered when the term ends, even
/// when its workers are aborted.
struct LeadingFlag(Arc<AtomicBool>);

impl LeadingFlag {
    fn raise(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag)
    }
}

impl Drop for LeadingFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The addresses media may be sent to: the advertised IP when set (NAT, a public
/// address); the bound address when the media ports listen on one address only;
/// otherwise this machine's primary IPv4 address, for other machines, and loopback.
/// Clients on this machine reach either: WebRTC stacks gather no loopback candidates of
/// their own (Chromium unless `--allow-loopback-in-peer-connection`, LiveKit's native
/// SDKs), but on Linux their packets from the machine's other addresses to 127.0.0.1
/// arrive (tests/browser/loopback.test.mjs, tests/integration/test_demo.py).
pub fn media_candidates(config: &Config) -> Vec<SocketAddr> {
    let port = config.sfu.udp_port;
    if let Some(ip) = config.sfu.advertised_ip {
        return vec![SocketAddr::new(ip, port)];
    }
    if !config.sfu.bind_ip.is_unspecified() {
        return vec![SocketAddr::new(config.sfu.bind_ip, port)];
    }
    let mut candidates = Vec::new();
    if let Some(ip) = primary_ipv4() {
        candidates.push(SocketAddr::new(ip, port));
    }
    candidates.push(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port));
    candidates
}

/// The address the default route leaves from (a UDP `connect` sends nothing).
fn primary_ipv4() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// Binds the media port and starts the SFU driver.
async fn start_sfu(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(SfuHandle, EngineEvents, tokio::task::JoinHandle<()>)> {
    let engine_config = EngineConfig {
        candidates: media_candidates(config),
        max_participants_per_room: config.meetings.max_participants as usize,
        max_participants: config.sfu.max_participants as usize,
        ice_servers: config
            .sfu
            .ice_servers
            .iter()
            .map(|s| livekit_protocol::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
    };
    // ICE over TCP on the same addresses, for networks that block UDP.
    let (bind, tcp_bind) = config.media_bind_addrs();
    let candidates = format!("{:?}", engine_config.candidates);
    let shards = config.sfu.shard_count();
    let (handle, events, task) =
        SfuHandle::start(bind, Some(tcp_bind), engine_config, shards, shutdown).await?;
    tracing::info!(%bind, %tcp_bind, %candidates, shards, "media server listening");
    Ok((handle, events, task))
}

/// The signal that asks the service to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopSignal {
    /// Ctrl-C, a person at a terminal: stop now.
    Interrupt,
    /// A supervisor's stop (docker, systemd, Kubernetes): a cluster node drains first.
    Terminate,
}

async fn wait_for_signal() -> StopSignal {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler only fails outside a runtime");
    let signal = tokio::select! {
        _ = ctrl_c => StopSignal::Interrupt,
        _ = term.recv() => StopSignal::Terminate,
    };
    tracing::info!(?signal, "shutting down");
    signal
}

/// What a cluster node's SIGTERM needs to drain it.
struct Drain {
    store: Store,
    node_id: String,
    flag: crate::cluster::DrainFlag,
    sfu: SfuHandle,
    timeout: Duration,
}

impl Drain {
    /// Marks the node draining in the database, for placement and for its own
    /// heartbeat (which would otherwise read the mark back as cleared); false when the
    /// database did not take it (retried at each check, said once).
    async fn mark(&self, first: bool) -> bool {
        match self.store.set_draining(&self.node_id, true).await {
            Ok(rooms) => {
                tracing::info!(
                    rooms = rooms.unwrap_or(0),
                    "draining: no new meetings are placed here and another node leads; waiting for this node's participants to leave"
                );
                true
            }
            Err(e) => {
                if first {
                    tracing::warn!(error = %e, "cannot mark this node draining yet; retrying");
                }
                false
            }
        }
    }

    /// Drains the node: marks it so that placement skips it and its elections resign at
    /// once, then waits until none of its participants is left, `timeout` has passed,
    /// or a second signal comes. The HTTP server serves on meanwhile: its meetings go
    /// on, and joins for other meetings are sent to other nodes.
    async fn run(self) {
        self.flag.send_replace(true);
        let mut marked = self.mark(true).await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let again = wait_for_signal();
        tokio::pin!(again);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut again => {
                    tracing::warn!("a second signal: stopping without waiting for this node's participants");
                    return;
                }
            }
            if !marked {
                marked = self.mark(false).await;
            }
            let (participants, _) = self.sfu.load();
            if participants == 0 {
                tracing::info!("drained: no participant left on this node");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    participants,
                    timeout_secs = self.timeout.as_secs(),
                    "cluster.drain_timeout_secs passed: stopping; the participants left rejoin on another node"
                );
                return;
            }
        }
    }
}

/// Whether calls as the bot may be made now: it is the registration's sender, or it was
/// registered as a user of the namespace at an earlier start.
async fn bot_registered(config: &Config, store: &Store) -> anyhow::Result<bool> {
    if config.mode == crate::config::Mode::Bot || config.bot_is_sender() {
        return Ok(true);
    }
    let mut conn = store.pool().acquire().await?;
    Ok(crate::store::crypto::state(&mut conn, BOT_REGISTERED)
        .await?
        .is_some())
}

const BOT_REGISTERED: &str = "bot_registered";

/// Registers the bot as a user of the namespace (first start only; the homeserver
/// refuses calls made as the bot until it exists), retrying while the homeserver is
/// away or refuses (a registration it has not loaded yet), then sets `ready`.
async fn register_bot(
    config: &Config,
    store: &Store,
    client: &MatrixClient,
    ready: &AtomicBool,
    shutdown: &CancellationToken,
) {
    let request = OutboundRequest::RegisterGhost {
        localpart: config.appservice.bot.username.clone(),
    };
    let mut attempts = 0;
    loop {
        let wait = match queue::execute(client, &request, "").await {
            Ok(_) => {
                let recorded = async {
                    let mut conn = store.pool().acquire().await?;
                    crate::store::crypto::set_state(&mut conn, BOT_REGISTERED, "1").await
                }
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "cannot record the bot's registration; it is asked again at next start");
                }
                tracing::info!(bot = %config.bot_user_id(), "registered the bot");
                ready.store(true, Ordering::Release);
                return;
            }
            Err(e) if e.is_transient() => {
                attempts += 1;
                let wait = queue::backoff(attempts);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot register the bot yet; nothing is sent until then");
                wait
            }
            Err(e) => {
                tracing::error!(bot = %config.bot_user_id(), error = %e, "cannot register the bot: does the homeserver load this registration (its namespace holds the bot)? tchap-visio check-config tells; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Where the bot's device is published and whom its worker wakes.
struct DeviceWiring {
    slot: DeviceSlot,
    inbox_wake: Arc<Notify>,
    /// Set while this cluster node leads (`None`: a single node).
    leading: Option<Arc<AtomicBool>>,
}

/// Opens or creates the bot's device (retrying while the homeserver is away), checks
/// that its keys are on the server, then runs its workers: the one that feeds it and,
/// with `encryption.to_device: sync`, its `/sync`. In a cluster every node runs this for
/// its own device, leader or not, so that a new leader already holds the room keys.
async fn bring_up_device(
    config: Config,
    store: Store,
    client: MatrixClient,
    account_device: Option<String>,
    wiring: DeviceWiring,
    shutdown: CancellationToken,
) {
    let DeviceWiring {
        slot,
        inbox_wake,
        leading,
    } = wiring;
    let mut failures = 0;
    let device = loop {
        match BotDevice::start(
            &config,
            store.clone(),
            client.clone(),
            account_device.as_deref(),
        )
        .await
        {
            Ok(device) => break device,
            Err(e) => {
                failures += 1;
                let wait = queue::backoff(failures).max(Duration::from_secs(1));
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot set up the bot's device; encrypted rooms wait");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    if let Err(e) = device.flush().await {
        tracing::warn!(error = %e, "cannot upload the device's keys yet; retrying in the background");
    }
    // Tried again while the database or the homeserver is away (in a cluster, the other
    // nodes wait for this one's turn to end first).
    let mut attempts = 0;
    loop {
        match device.cross_sign(&config.encryption.passphrase).await {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempts < 5 => {
                attempts += 1;
                let wait = queue::backoff(attempts);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot cross-sign the bot's device yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot cross-sign the bot's device; clients show it as not verified by its owner");
                break;
            }
        }
    }
    match device.keys_on_server().await {
        Ok(true) => {
            metrics::gauge!("tchap_visio_device_keys_on_server").set(1.0);
            tracing::info!(device = %device.device_id, identity = %device.crypto.identity_keys().ed25519, "self-check: the bot's device keys are on the homeserver");
        }
        Ok(false) => {
            metrics::gauge!("tchap_visio_device_keys_on_server").set(0.0);
            tracing::error!(device = %device.device_id, "self-check failed: the homeserver does not hold our device's keys; nobody can encrypt for the bot");
        }
        Err(e) => tracing::warn!(error = %e, "self-check: cannot query our device's keys"),
    }
    let _ = slot.set(device.clone());
    inbox_wake.notify_one();
    let worker = CryptoWorker {
        device: device.clone(),
        inbox_wake,
        leading,
        shutdown: shutdown.clone(),
    };
    // In `mode: bot` the account's one sync brings the device's input.
    if account_device.is_none()
        && config.encryption.to_device == crate::config::ToDeviceSource::Sync
    {
        let sync = SyncLoop { device, shutdown };
        tokio::join!(worker.run(), sync.run());
    } else {
        worker.run().await;
    }
}

/// Queues the bot's display name and avatar from the config.
async fn queue_bot_profile(store: &Store, config: &Config) -> anyhow::Result<()> {
    let bot = config.bot_user_id();
    let mut tx = store.begin().await?;
    if !config.appservice.bot.displayname.is_empty() {
        let request = OutboundRequest::SetDisplayName {
            user_id: bot.clone(),
            displayname: config.appservice.bot.displayname.clone(),
        };
        queue::enqueue(&mut tx, &request).await?;
    }
    if !config.appservice.bot.avatar.is_empty() {
        let request = OutboundRequest::SetAvatar {
            user_id: bot,
            avatar_url: config.appservice.bot.avatar.as_str().into(),
        };
        queue::enqueue(&mut tx, &request).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Applies pending migrations and reports how many were applied.
pub async fn migrate(config: &Config) -> anyhow::Result<usize> {
    let store = Store::connect(&config.database.uri, config.database.max_connections)
        .await
        .with_context(|| format!("database.uri {}", redact_uri(&config.database.uri)))?;
    let applied = store.migrate().await?;
    store.close().await;
    Ok(applied)
}

/// `check-config`: the config is valid, the database opens, and the homeserver and this
/// service reach each other (the homeserver's appservice ping). Returns a report.
pub async fn check_config(
    config: &Config,
    registration: &std::path::Path,
) -> anyhow::Result<String> {
    let mut report = vec!["configuration: valid".to_owned()];
    if config.mode == crate::config::Mode::Bot {
        report.push(format!(
            "mode: bot, as {}: no registration, no ping; the service logs in at start",
            config.bot_account.user_id
        ));
        return Ok(report.join("\n"));
    }
    match std::fs::read_to_string(registration) {
        Ok(text) => {
            let missing = crate::matrix::registration::missing_keys(config, &text);
            if missing.is_empty() {
                report.push(format!(
                    "registration {}: has what this configuration needs",
                    registration.display()
                ));
            } else {
                bail!(
                    "{}\nregistration {} lacks, for this configuration: {}. Run generate-registration --force (or add them), give the homeserver the file and restart it{}",
                    report.join("\n"),
                    registration.display(),
                    missing.join(", "),
                    if config.encryption.to_device == crate::config::ToDeviceSource::Transactions {
                        "; the homeserver also needs experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true}"
                    } else {
                        ""
                    }
                );
            }
        }
        Err(_) => report.push(format!(
            "registration {}: not found here, not checked (-r names the homeserver's copy)",
            registration.display()
        )),
    }
    let store = Store::connect(&config.database.uri, 1)
        .await
        .with_context(|| format!("database.uri {}", redact_uri(&config.database.uri)))?;
    let cluster = match &config.cluster {
        Some(cluster) => Some(crate::cluster::describe(&store, &cluster.node_id).await),
        None => None,
    };
    store.close().await;
    report.push(format!(
        "database: reachable ({})",
        redact_uri(&config.database.uri)
    ));
    match cluster {
        Some(Ok(line)) => report.push(line),
        Some(Err(e)) => bail!("{}\n{e}", report.join("\n")),
        None => {}
    }

    // When the service is not running, answer the homeserver's ping ourselves.
    let addr = config.listen_addr();
    let shutdown = CancellationToken::new();
    let (ping_tx, mut ping_rx) = mpsc::unbounded_channel();
    let serving_ourselves = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            let state = PingOnlyState {
                hs_token: SecretToken::new(&config.appservice.hs_token),
                max_body_bytes: config.appservice.max_body_bytes,
                pings: ping_tx,
            };
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, http::ping_only_router(state))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
            true
        }
        Err(_) => false,
    };
    report.push(if serving_ourselves {
        format!("service: not running; answering the ping on {addr} for this check")
    } else {
        format!("service: something already listens on {addr} (the running service, presumably)")
    });

    let client = MatrixClient::new(
        config.homeserver.address.as_str(),
        &config.appservice.as_token,
    );
    let txn_id = format!("check-{}", ruma::TransactionId::new());
    let mut request = request_ping::v1::Request::new(config.appservice.id.clone());
    request.transaction_id = Some(txn_id.as_str().into());
    let result = client.call(request, None).await;
    shutdown.cancel();
    match result {
        Ok(response) => {
            report.push(format!(
                "homeserver ↔ service: ok, round trip {} ms",
                response.duration.as_millis()
            ));
            if serving_ourselves {
                match ping_rx.try_recv() {
                    Ok(seen) if seen == txn_id => {
                        report.push("ping received with the right hs_token".into())
                    }
                    _ => report
                        .push("warning: the homeserver's ping did not reach this check".into()),
                }
            }
            if config.element_call.enabled {
                report.push(rtc_advertisement(config, &client).await);
            }
            Ok(report.join("\n"))
        }
        Err(error) => bail!(
            "{}\n{}",
            report.join("\n"),
            explain_ping_error(config, &error)
        ),
    }
}

/// Whether the homeserver tells Element Call to use us (MSC4143's `rtc/transports`).
async fn rtc_advertisement(config: &Config, client: &MatrixClient) -> String {
    let ours = config
        .appservice
        .public_address
        .as_str()
        .trim_end_matches('/');
    let snippet = format!(
        "experimental_features: {{msc4143_enabled: true}} and matrix_rtc: {{transports: [{{type: livekit, livekit_service_url: \"{ours}\"}}]}} (docs/element-call.md)"
    );
    match client
        .call_json(
            "GET",
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            None,
            None,
            None,
        )
        .await
    {
        Ok(answer) => {
            let listed: Vec<String> = answer
                .get("rtc_transports")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .filter_map(|t| t.get("livekit_service_url")?.as_str())
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect();
            if listed.iter().any(|u| u == ours) {
                format!(
                    "element_call: the homeserver advertises this focus ({ours}) in rtc/transports"
                )
            } else if listed.is_empty() {
                format!(
                    "warning: element_call is enabled but the homeserver advertises no focus; give it {snippet}"
                )
            } else {
                format!(
                    "warning: element_call is enabled but the homeserver advertises {} rather than {ours}; give it {snippet}",
                    listed.join(", ")
                )
            }
        }
        Err(e) => format!(
            "warning: element_call is enabled but the homeserver's rtc/transports cannot be read ({e}); give it {snippet}"
        ),
    }
}

fn explain_ping_error(config: &Config, error: &CallError) -> String {
    let hs = &config.homeserver.address;
    let us = &config.appservice.address;
    match error {
        CallError::Unreachable(detail) => format!(
            "cannot reach the homeserver at {hs} ({detail}). Check homeserver.address and that the homeserver runs."
        ),
        CallError::Matrix { errcode, error, .. } => {
            let hint = match errcode.as_str() {
                "M_UNKNOWN_TOKEN" | "M_MISSING_TOKEN" => String::from(
                    "the homeserver does not know appservice.as_token. Add the registration file to its \
                     app_service_config_files and restart it (after every generate-registration).",
                ),
                "M_FORBIDDEN" => format!(
                    "the homeserver refused the ping: appservice.id `{}` must equal the registration's `id`.",
                    config.appservice.id
                ),
                "M_URL_NOT_SET" => {
                    "the registration has no `url`; set appservice.address and regenerate it."
                        .into()
                }
                "M_BAD_STATUS" => format!(
                    "the homeserver reached {us} but got an error: most often the registration's hs_token \
                     differs from appservice.hs_token (regenerate and restart the homeserver)."
                ),
                "M_CONNECTION_FAILED" => format!(
                    "the homeserver cannot connect to appservice.address {us}; it must be reachable from the homeserver."
                ),
                "M_CONNECTION_TIMEOUT" => {
                    format!("the homeserver timed out reaching appservice.address {us}.")
                }
                "M_UNRECOGNIZED" => {
                    "this homeserver does not support the appservice ping (Synapse ≥ 1.84 does)."
                        .into()
                }
                _ => "unexpected answer.".into(),
            };
            format!("ping failed: {errcode}: {error}\n{hint}")
        }
        other => format!("ping failed: {other}"),
    }
}

/// What `meeting create` made.
#[derive(Debug, Clone)]
pub struct CreatedMeeting {
    pub id: crate::ids::MeetingId,
    pub title: String,
    /// The join link, `<appservice.public_address>/m/<slug>`.
    pub link: String,
}

/// `meeting create`: stores a new scheduled meeting, tied to a Matrix room when one is
/// given, and returns its id and join link.
pub async fn create_meeting(
    config: &Config,
    title: &str,
    matrix_room: Option<&str>,
) -> anyhow::Result<CreatedMeeting> {
    let room = matrix_room
        .map(|room| {
            ruma::RoomId::parse(room)
                .map(|room| room.to_string())
                .with_context(|| format!("`{room}` is not a room id like !abc:example.org"))
        })
        .transpose()?;
    let meeting = crate::meeting::Meeting::new(title, room, None, crate::clock::now_ms())
        .context("--title")?;
    let store = open_store(config).await?;
    let mut conn = store.pool().acquire().await?;
    crate::store::meetings::create(&mut conn, &meeting).await?;
    drop(conn);
    store.close().await;
    tracing::info!(meeting = %meeting.id, "meeting created from the command line");
    Ok(CreatedMeeting {
        link: meeting.link(config.appservice.public_address.as_str()),
        id: meeting.id,
        title: meeting.title,
    })
}

/// What `api-token create` is asked for.
#[derive(Debug, Clone, Default)]
pub struct NewApiToken {
    pub name: String,
    /// `--room`, repeatable.
    pub rooms: Vec<String>,
    /// `--server`, repeatable: the rooms whose id ends with `:<server>`.
    pub servers: Vec<String>,
    pub all_rooms: bool,
    pub read_only: bool,
}

/// `api-token create`: a new bot API token; returns the token, which is stored only as
/// its SHA-256 and never shown again. A token without a scope is refused.
pub async fn create_api_token(config: &Config, new: &NewApiToken) -> anyhow::Result<String> {
    use crate::auth::api_token;
    let name = api_token::validate_name(&new.name).context("--name")?;
    let scope = api_token::TokenScope::new(&new.rooms, &new.servers, new.all_rooms)?;
    let token = api_token::generate();
    let id = api_token::generate_id();
    let store = open_store(config).await?;
    let mut conn = store.pool().acquire().await?;
    let created = crate::store::api_tokens::create(
        &mut conn,
        &crate::store::api_tokens::NewApiToken {
            name,
            id: &id,
            sha256_hex: &api_token::sha256_hex(&token),
            scope: &scope.to_stored(),
            read_only: new.read_only,
        },
        crate::clock::now_ms(),
    )
    .await?;
    drop(conn);
    store.close().await;
    if !created {
        bail!(
            "a token called `{name}` already exists; revoke it first (api-token revoke --name {name}) or pick another name"
        );
    }
    tracing::info!(token_name = name, token_id = %id, scope = %scope.describe(), read_only = new.read_only, "API token created");
    Ok(token)
}

/// `api-token list`: every token, revoked ones included (no secrets: there are none stored).
pub async fn list_api_tokens(
    config: &Config,
) -> anyhow::Result<Vec<crate::store::api_tokens::ApiTokenInfo>> {
    let store = open_store(config).await?;
    let mut conn = store.pool().acquire().await?;
    let tokens = crate::store::api_tokens::list(&mut conn).await?;
    drop(conn);
    store.close().await;
    Ok(tokens)
}

/// `api-token revoke`: the token stops working at once (every request looks it up).
pub async fn revoke_api_token(config: &Config, name: &str) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let mut conn = store.pool().acquire().await?;
    let revoked = crate::store::api_tokens::revoke(&mut conn, name, crate::clock::now_ms()).await?;
    drop(conn);
    store.close().await;
    if !revoked {
        bail!("no active token called `{name}` (see api-token list)");
    }
    Ok(())
}

/// `webhook test`: queues a `ping` event for every configured receiver; the running
/// service delivers it within a second. Returns the event id and the receivers.
pub async fn webhook_test(config: &Config) -> anyhow::Result<(String, Vec<String>)> {
    if config.webhooks.is_empty() {
        bail!(
            "no webhook is configured: add a `webhooks` entry ({{url, secret}}) to the config first"
        );
    }
    let webhooks = Webhooks::from_config(&config.webhooks);
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    let event = webhooks.enqueue_ping(&mut tx).await?;
    tx.commit().await?;
    store.close().await;
    Ok((
        event,
        config.webhooks.iter().map(|w| w.url.clone()).collect(),
    ))
}

/// `node drain` and `node undrain`: marks a cluster node draining or not in the
/// database. The running node reads the mark at its next heartbeat; placement, which
/// reads the table, follows it at once. `node`: this config's `cluster.node_id` unless
/// given. Returns the node's name and the rooms still placed on it.
pub async fn set_node_draining(
    config: &Config,
    node: Option<&str>,
    draining: bool,
) -> anyhow::Result<(String, i64)> {
    let node_id = match (node, &config.cluster) {
        (Some(node), _) => node.to_owned(),
        (None, Some(cluster)) => cluster.node_id.clone(),
        (None, None) => bail!(
            "this config has no cluster section: give the node's name with --node, or run the \
             command with that node's config"
        ),
    };
    if !config.database.uri.starts_with("postgres") {
        bail!(
            "nodes share a PostgreSQL database; database.uri is not one (SQLite runs a single node)"
        );
    }
    let store = open_store(config).await?;
    let rooms = store.set_draining(&node_id, draining).await;
    store.close().await;
    match rooms? {
        Some(rooms) => Ok((node_id, rooms)),
        None => bail!(
            "no node `{node_id}` has ever run on this database: check the name (check-config lists the live nodes) and database.uri"
        ),
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Yaml};

    use super::*;
    use crate::ids::MeetingSlug;
    use crate::meeting::MeetingState;
    use crate::store::meetings;

    fn config(database_uri: &str) -> Config {
        let mut config: Config = Figment::new()
            .merge(Yaml::string(include_str!("../config/example-config.yaml")))
            .extract()
            .expect("the example config parses");
        config.database.uri = database_uri.to_owned();
        config.appservice.public_address =
            crate::config::HttpUrl::parse("https://visio.example/").expect("url");
        config
    }

    #[test]
    fn media_candidates_follow_the_bound_and_advertised_addresses() {
        let mut config = config("sqlite::memory:");
        let port = config.sfu.udp_port;
        let loopback = SocketAddr::from(([127, 0, 0, 1], port));
        // All interfaces: loopback is always among the candidates.
        assert!(media_candidates(&config).contains(&loopback));
        // One address bound: only it, since nothing else listens.
        config.sfu.bind_ip = [127, 0, 0, 1].into();
        assert_eq!(media_candidates(&config), [loopback]);
        // An advertised address (NAT) wins over both.
        config.sfu.advertised_ip = Some([203, 0, 113, 7].into());
        assert_eq!(
            media_candidates(&config),
            [SocketAddr::from(([203, 0, 113, 7], port))]
        );
    }

    #[tokio::test]
    async fn meeting_create_stores_the_meeting_and_returns_its_link() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(&format!("sqlite://{}/cli.db", dir.path().display()));
        let created = create_meeting(&config, " Comité ", Some("!room:localhost"))
            .await
            .expect("created");
        assert_eq!(created.title, "Comité");
        let slug = created
            .link
            .strip_prefix("https://visio.example/m/")
            .expect("link under the public address");
        let slug = MeetingSlug::parse(slug).expect("a slug");

        let store = open_store(&config).await.expect("store");
        let mut conn = store.pool().acquire().await.expect("conn");
        let stored = meetings::get_by_slug(&mut conn, &slug)
            .await
            .expect("query")
            .expect("stored");
        assert_eq!(stored.id, created.id);
        assert_eq!(stored.matrix_room_id.as_deref(), Some("!room:localhost"));
        assert_eq!(
            (stored.state, stored.creator),
            (MeetingState::Scheduled, None)
        );

        let without_room = create_meeting(&config, "Sans salon", None)
            .await
            .expect("created");
        assert_ne!(without_room.id, created.id);
        assert_ne!(without_room.link, created.link);

        for (title, room) in [
            ("", None),
            ("ok", Some("#alias:localhost")),
            ("ok", Some("room")),
        ] {
            assert!(
                create_meeting(&config, title, room).await.is_err(),
                "{title:?} {room:?}"
            );
        }
    }

    #[tokio::test]
    async fn api_tokens_from_the_command_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(&format!("sqlite://{}/cli.db", dir.path().display()));
        let minutes = NewApiToken {
            name: "minutes".into(),
            rooms: vec!["!a:localhost".into()],
            read_only: true,
            ..NewApiToken::default()
        };
        let token = create_api_token(&config, &minutes).await.expect("created");
        assert!(token.starts_with(crate::auth::api_token::TOKEN_PREFIX));
        let again = create_api_token(&config, &minutes)
            .await
            .expect_err("name taken");
        assert!(again.to_string().contains("already exists"), "{again}");
        let bad_name = NewApiToken {
            name: "bad name".into(),
            ..minutes.clone()
        };
        assert!(create_api_token(&config, &bad_name).await.is_err());
        // No scope: refused, saying which options give one.
        let unscoped = NewApiToken {
            name: "unscoped".into(),
            ..NewApiToken::default()
        };
        let refused = create_api_token(&config, &unscoped)
            .await
            .expect_err("no scope");
        assert!(
            refused.to_string().contains("--room") && refused.to_string().contains("--all-rooms"),
            "{refused}"
        );
        let listed = list_api_tokens(&config).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].revoked_at),
            ("minutes", None)
        );
        assert!(listed[0].read_only);
        assert_eq!(listed[0].scope, r#"{"rooms":["!a:localhost"]}"#);
        // Only the hash is stored.
        let store = open_store(&config).await.expect("store");
        let stored: String = sqlx::query_scalar("SELECT token_sha256 FROM api_tokens")
            .fetch_one(store.pool())
            .await
            .expect("row");
        assert_eq!(stored, crate::auth::api_token::sha256_hex(&token));
        store.close().await;
        revoke_api_token(&config, "minutes").await.expect("revoked");
        assert!(revoke_api_token(&config, "minutes").await.is_err());
        assert!(
            list_api_tokens(&config).await.expect("list")[0]
                .revoked_at
                .is_some()
        );
        assert!(
            webhook_test(&config).await.is_err(),
            "no receiver configured"
        );
    }
}
