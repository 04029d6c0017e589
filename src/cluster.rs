//! Several nodes on one PostgreSQL database: this node's heartbeat in the `nodes` table,
//! the election of the one leader that runs the inbox worker, the outbound queue, the
//! webhooks and the bridge, and the relay that carries wake-ups between nodes.
//!
//! PostgreSQL gives every primitive. The leader holds an advisory lock on a connection
//! of its own; the lock goes with the connection, which dies with the process, and which
//! the server ends after three heartbeat intervals of silence (`idle_session_timeout`,
//! PostgreSQL 14+), so a stalled leader loses it too. Each new leader increments the
//! epoch of the `leadership` row; its workers check that epoch (the [`Fence`]) before each
//! claim and send, so a leader that wakes after another took over acts no more.
//!
//! A draining node (`node drain`, read from its row at each heartbeat, or SIGTERM) gives
//! up the leadership at once and bids no more until the drain ends.
//! Depends on the store; `app.rs` decides which workers a term runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgListener};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use crate::store::cluster::Fence;
use crate::store::cluster::{LEADER_LOCK_KEY, MISSED_HEARTBEATS, NodeBeat};
use crate::store::{Store, StoreError};

/// Why a cluster step failed; each is retried at the next poll.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The leadership's own connection could not be opened or used.
    #[error("leadership connection: {0}")]
    Connection(#[from] sqlx::Error),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// A query through the pool failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server cannot end a stalled leader's session.
    #[error(
        "PostgreSQL {0} cannot run a cluster: version 14 or later is needed (its idle_session_timeout ends a stalled leader's session); upgrade it, or remove the cluster section to run a single node"
    )]
    ServerTooOld(String),
}

/// Refuses a server older than PostgreSQL 14, on which a stalled leader would keep
/// the lock forever.
pub async fn check_server(store: &Store) -> Result<(), ClusterError> {
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(store.pool())
        .await
        .map_err(StoreError::from)?;
    match version.parse::<u32>() {
        Ok(number) if number >= 140_000 => Ok(()),
        _ => Err(ClusterError::ServerTooOld(version)),
    }
}

/// `check-config`'s line on the cluster: the server's version, who leads, which nodes
/// live. Tables not there yet (no node started) are said so, not an error.
pub async fn describe(store: &Store, node_id: &str) -> Result<String, ClusterError> {
    check_server(store).await?;
    let (Ok((epoch, leader)), Ok(nodes)) = (store.leadership().await, store.live_nodes().await)
    else {
        return Ok(format!(
            "cluster: node {node_id}; no cluster tables yet (the first node's start creates them)"
        ));
    };
    let live: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{} ({} participants{})",
                n.node_id,
                n.participants,
                if n.draining { ", draining" } else { "" }
            )
        })
        .collect();
    Ok(format!(
        "cluster: node {node_id}; leader: {} (epoch {epoch}); live nodes: {}",
        leader.as_deref().unwrap_or("none yet"),
        if live.is_empty() {
            "none".to_owned()
        } else {
            live.join(", ")
        }
    ))
}

/// One node's bid for the leadership: a dedicated connection, and the term it leads, if
/// any.
pub struct Candidate {
    uri: String,
    node_id: String,
    heartbeat: Duration,
    conn: Option<PgConnection>,
    fence: Option<Fence>,
    draining: Option<watch::Receiver<bool>>,
}

/// Whether this node drains: the heartbeat copies the mark of its `nodes` row in, and
/// SIGTERM sets it; the elections read it.
pub type DrainFlag = Arc<watch::Sender<bool>>;

/// A flag that is not draining.
pub fn drain_flag() -> DrainFlag {
    Arc::new(watch::channel(false).0)
}

/// Resolves once the flag equals `wanted`; never, without a flag.
async fn until_drain_is(flag: &mut Option<watch::Receiver<bool>>, wanted: bool) {
    match flag {
        Some(rx) => {
            if rx.wait_for(|d| *d == wanted).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

impl Candidate {
    pub fn new(uri: &str, node_id: &str, heartbeat: Duration) -> Self {
        Self {
            uri: uri.to_owned(),
            node_id: node_id.to_owned(),
            heartbeat,
            conn: None,
            fence: None,
            draining: None,
        }
    }

    /// Makes the candidate follow `flag`: it resigns when the node starts draining and
    /// bids again only once the drain ends.
    pub fn with_drain(mut self, flag: &DrainFlag) -> Self {
        self.draining = Some(flag.subscribe());
        self
    }

    /// How long a query may take, and how long the lock connection may stay silent
    /// before the server ends it: three heartbeats, as for a node's liveness.
    fn patience(&self) -> Duration {
        self.heartbeat * MISSED_HEARTBEATS as u32
    }

    /// How often a candidate tries the lock and a leader checks it still holds it.
    pub fn poll_interval(&self) -> Duration {
        (self.heartbeat / 2).max(Duration::from_millis(100))
    }

    /// The current term's fence, while this candidate leads.
    pub fn fence(&self) -> Option<Fence> {
        self.fence
    }

    /// Tries once to take the lock; on success starts a new term (the epoch incremented)
    /// and returns its fence. `None`: another node leads.
    pub async fn try_lead(&mut self) -> Result<Option<Fence>, ClusterError> {
        if let Some(fence) = self.fence {
            return Ok(Some(fence));
        }
        let patience = self.patience();
        let attempt = async {
            if self.conn.is_none() {
                let mut conn = PgConnection::connect(&self.uri).await?;
                // Numbers and a name checked by the config, not outside input.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SET idle_session_timeout = {}; SET application_name = 'tchap-visio leadership {}'",
                    patience.as_millis(),
                    self.node_id
                )))
                .execute(&mut conn)
                .await?;
                self.conn = Some(conn);
            }
            let conn = self.conn.as_mut().expect("opened just above");
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK_KEY)
                .fetch_one(&mut *conn)
                .await?;
            if !locked {
                return Ok::<_, ClusterError>(None);
            }
            // One statement, so one transaction: the epoch moves and names its leader
            // together. It waits for leader transactions that still share-lock the row.
            let epoch: i64 = sqlx::query_scalar(
                "UPDATE leadership SET epoch = epoch + 1, node_id = $1, \
                 since = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
                 WHERE id = 1 RETURNING epoch",
            )
            .bind(&self.node_id)
            .fetch_one(&mut *conn)
            .await?;
            let lock_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await?;
            Ok(Some(Fence { epoch, lock_pid }))
        };
        // Twice the patience: the increment may wait as long as a stalled leader's
        // open transaction lives (the same three heartbeats), and giving up just then
        // would cost a poll.
        match tokio::time::timeout(patience * 2, attempt).await {
            Ok(Ok(fence)) => {
                self.fence = fence;
                Ok(fence)
            }
            Ok(Err(e)) => {
                // Whatever the connection held goes with it.
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(ClusterError::Timeout(patience * 2))
            }
        }
    }

    /// Whether this candidate still leads: its connection answers (which also restarts
    /// the server's idle clock), holds the lock, and the epoch is still its own.
    pub async fn still_leads(&mut self) -> bool {
        let patience = self.patience();
        let (Some(fence), Some(conn)) = (self.fence, self.conn.as_mut()) else {
            return false;
        };
        let check = sqlx::query_scalar::<_, bool>(
            "SELECT l.epoch = $1 AND EXISTS (SELECT 1 FROM pg_locks k \
                 WHERE k.locktype = 'advisory' AND k.granted AND k.pid = pg_backend_pid() \
                 AND k.classid::BIGINT = $2 AND k.objid::BIGINT = $3 AND k.objsubid = 1) \
             FROM leadership l WHERE l.id = 1",
        )
        .bind(fence.epoch)
        .bind(LEADER_LOCK_KEY >> 32)
        .bind(LEADER_LOCK_KEY & 0xffff_ffff)
        .fetch_one(conn);
        match tokio::time::timeout(patience, check).await {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                tracing::warn!(epoch = fence.epoch, "another node leads now");
                self.resign().await;
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(epoch = fence.epoch, error = %e, "the leadership connection is lost");
                self.resign().await;
                false
            }
            Err(_) => {
                tracing::warn!(
                    epoch = fence.epoch,
                    "the leadership connection does not answer"
                );
                self.resign().await;
                false
            }
        }
    }

    /// Gives the leadership up and closes the connection. The lock is released first,
    /// explicitly: the server frees a closed session's locks only once its backend
    /// has exited, a moment later.
    pub async fn resign(&mut self) {
        self.fence = None;
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            })
            .await;
        }
    }
}

/// Runs `lead` for each term this node leads, until `shutdown`. `lead` gets the term's
/// fence and a token cancelled when the term ends (lost lock, a refused fence, shutdown);
/// its future must end soon after. A term's workers may cancel the token themselves when
/// their fence is refused.
pub async fn run_elections<F, Fut>(
    mut candidate: Candidate,
    shutdown: CancellationToken,
    mut lead: F,
) where
    F: FnMut(Fence, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let poll = candidate.poll_interval();
    let mut draining = candidate.draining.take();
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        if draining.as_ref().is_some_and(|d| *d.borrow()) {
            tokio::select! {
                _ = until_drain_is(&mut draining, false) => {
                    tracing::info!("this node no longer drains: it bids for the leadership again");
                }
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        match candidate.try_lead().await {
            Ok(Some(fence)) => {
                failures = 0;
                tracing::info!(epoch = fence.epoch, "this node leads the cluster");
                metrics::gauge!("tchap_visio_cluster_leader").set(1.0);
                let term = shutdown.child_token();
                let mut workers = tokio::spawn(lead(fence, term.clone()));
                let mut ended = false;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {
                            if !candidate.still_leads().await {
                                break;
                            }
                        }
                        _ = term.cancelled() => break,
                        _ = until_drain_is(&mut draining, true) => {
                            tracing::info!(epoch = fence.epoch, "this node drains: it gives up the leadership");
                            break;
                        }
                        _ = &mut workers => {
                            ended = true;
                            break;
                        }
                    }
                }
                term.cancel();
                if !ended
                    && tokio::time::timeout(Duration::from_secs(10), &mut workers)
                        .await
                        .is_err()
                {
                    tracing::warn!("the leader's workers did not stop within 10 s; aborted");
                    workers.abort();
                }
                candidate.resign().await;
                metrics::gauge!("tchap_visio_cluster_leader").set(0.0);
                if !shutdown.is_cancelled() {
                    tracing::warn!(
                        epoch = fence.epoch,
                        "this node no longer leads; its workers stopped"
                    );
                }
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                // Once per outage, then quietly: the poll goes on.
                if failures == 1 {
                    tracing::warn!(error = %e, "cannot bid for the leadership; retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    candidate.resign().await;
}

/// What a node needs to report its heartbeat.
pub struct Heartbeat {
    pub store: Store,
    pub node_id: String,
    pub node_url: String,
    pub interval: Duration,
    /// Participants connected and rooms open on this node.
    pub load: Box<dyn Fn() -> (usize, usize) + Send + Sync>,
    /// Set from the node's row at each heartbeat (`node drain`, `node undrain`).
    pub draining: DrainFlag,
    pub shutdown: CancellationToken,
}

impl Heartbeat {
    fn beat(&self, cpu_permille: Option<i64>) -> NodeBeat {
        let (participants, rooms) = (self.load)();
        NodeBeat {
            node_id: self.node_id.clone(),
            node_url: self.node_url.clone(),
            heartbeat_ms: self.interval.as_millis() as i64,
            participants: participants as i64,
            rooms: rooms as i64,
            cpu_permille,
        }
    }

    /// Registers the node, then beats every interval until shutdown.
    pub async fn run(self) {
        let mut cpu = CpuMeter::new();
        if let Err(e) = self.store.node_started(&self.beat(None)).await {
            tracing::warn!(error = %e, "cannot register this node; retrying at the next heartbeat");
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            match self.store.node_heartbeat(&self.beat(cpu.permille())).await {
                Ok(draining) => {
                    if failing {
                        failing = false;
                        tracing::info!("heartbeats recorded again");
                    }
                    self.follow_drain_mark(draining);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot record this node's heartbeat; others will count it dead");
                }
                Err(_) => {}
            }
        }
    }
}

impl Heartbeat {
    fn follow_drain_mark(&self, draining: bool) {
        let changed = self
            .draining
            .send_if_modified(|d| std::mem::replace(d, draining) != draining);
        if changed && draining {
            tracing::warn!(
                "this node is marked draining: no new meetings are placed here; those here run until they end"
            );
        } else if changed {
            tracing::info!("this node's drain is cleared: new meetings may be placed here again");
        }
    }
}

/// The process's CPU use between two readings of `/proc/self/stat`.
struct CpuMeter {
    last: Option<(u64, std::time::Instant)>,
}

/// `/proc`'s clock ticks per second (USER_HZ), fixed at 100 by the kernel's ABI.
const USER_HZ: u64 = 100;

impl CpuMeter {
    fn new() -> Self {
        Self {
            last: cpu_ticks().map(|t| (t, std::time::Instant::now())),
        }
    }

    /// Per mille of one core since the previous reading; `None` without `/proc`.
    fn permille(&mut self) -> Option<i64> {
        let now = (cpu_ticks()?, std::time::Instant::now());
        let previous = self.last.replace(now)?;
        let elapsed = now.1.duration_since(previous.1).as_secs_f64();
        (elapsed > 0.0).then(|| {
            let used = now.0.saturating_sub(previous.0) as f64 / USER_HZ as f64;
            (used / elapsed * 1000.0).round() as i64
        })
    }
}

/// utime + stime of this process, in ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The channels of the cross-node wake-ups.
const INBOX_CHANNEL: &str = "tchap_visio_inbox";
const OUTBOUND_CHANNEL: &str = "tchap_visio_outbound";
/// Sent by `sfu_effects`' insert trigger at commit; the payload names the node the
/// effect is for, '' for the leader (migration 0015).
const EFFECTS_CHANNEL: &str = "tchap_visio_effects";
/// Sent by the lobby's, the identity codes' and the meetings' triggers at commit.
const ACCESS_CHANNEL: &str = "tchap_visio_access";

/// Carries wake-ups between nodes: what this node's intake and bridge signal locally
/// (`inbox_produced`, `outbound_produced`) is sent with `NOTIFY`, and every node's
/// `NOTIFY` wakes the leader's workers here (`inbox_run`, `outbound_run`). A lost
/// notification costs only latency: the workers also poll.
///
/// The SFU effects and access decisions need no producer side: their tables' triggers
/// notify at commit. An effect wakes the worker of the node it names (`effects_run`),
/// or the leader's (`unplaced_effects_run`); an access change wakes this node's long
/// polls (`access_changed`).
pub struct WakeRelay {
    pub uri: String,
    pub store: Store,
    pub node_id: String,
    pub inbox_produced: Arc<Notify>,
    pub outbound_produced: Arc<Notify>,
    pub inbox_run: Arc<Notify>,
    pub outbound_run: Arc<Notify>,
    pub effects_run: Arc<Notify>,
    pub unplaced_effects_run: Arc<Notify>,
    pub access_changed: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl WakeRelay {
    pub async fn run(self) {
        let mut failures: u32 = 0;
        while !self.shutdown.is_cancelled() {
            if let Err(e) = self.relay().await {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(error = %e, "cross-node wake-ups interrupted; retrying (workers still poll)");
                }
            }
            // Anything may have been missed while the listener was away.
            self.inbox_run.notify_one();
            self.outbound_run.notify_one();
            self.effects_run.notify_one();
            self.unplaced_effects_run.notify_one();
            self.access_changed.notify_waiters();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn relay(&self) -> Result<(), ClusterError> {
        let mut listener = PgListener::connect(&self.uri).await?;
        listener
            .listen_all([
                INBOX_CHANNEL,
                OUTBOUND_CHANNEL,
                EFFECTS_CHANNEL,
                ACCESS_CHANNEL,
            ])
            .await?;
        loop {
            tokio::select! {
                _ = self.inbox_produced.notified() => self.notify(INBOX_CHANNEL).await?,
                _ = self.outbound_produced.notified() => self.notify(OUTBOUND_CHANNEL).await?,
                received = listener.recv() => {
                    let received = received?;
                    match received.channel() {
                        INBOX_CHANNEL => self.inbox_run.notify_one(),
                        OUTBOUND_CHANNEL => self.outbound_run.notify_one(),
                        EFFECTS_CHANNEL if received.payload().is_empty() => {
                            self.unplaced_effects_run.notify_one()
                        }
                        EFFECTS_CHANNEL if received.payload() == self.node_id => {
                            self.effects_run.notify_one()
                        }
                        ACCESS_CHANNEL => self.access_changed.notify_waiters(),
                        _ => {}
                    }
                }
                _ = self.shutdown.cancelled() => return Ok(()),
            }
        }
    }

    async fn notify(&self, channel: &str) -> Result<(), ClusterError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(self.store.pool())
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }
}

/// The leader's sweep of dead nodes' meetings, every heartbeat: their open sessions
/// close when the node was last alive, and a meeting left empty starts its grace period
/// (its participants' pages rejoin on a live node meanwhile).
pub struct DeadNodeSweep {
    pub store: Store,
    pub period: Duration,
    pub fence: Fence,
    pub shutdown: CancellationToken,
}

impl DeadNodeSweep {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            match self.sweep().await {
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "cannot sweep dead nodes' meetings; retrying"),
            }
        }
    }

    async fn sweep(&self) -> Result<(), StoreError> {
        if !self.store.fence_holds(&self.fence).await? {
            self.shutdown.cancel();
            return Ok(());
        }
        let orphaned = self
            .store
            .orphan_dead_nodes_meetings(crate::clock::now_ms())
            .await?;
        for meeting in orphaned {
            metrics::counter!("tchap_visio_cluster_meetings_orphaned_total").increment(1);
            tracing::warn!(
                meeting,
                "meeting orphaned by a dead node: its sessions closed"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
