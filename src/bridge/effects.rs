//! The SFU outbox: what the bridge decides to do to a meeting's SFU room (show a Matrix
//! message in its chat, close it) is stored as a row in the decision's own database
//! transaction, and applied by one worker after that transaction commits, each row
//! once. A batch that rolls back and is retried thus leaves no trace in the meeting, and
//! no appservice transaction waits behind the SFU.
//!
//! Applying an effect cannot fail for good: a room the SFU no longer has (everyone left,
//! or the service restarted) makes the effect moot, and it is done all the same. A row
//! applied but not yet marked done (the database failed in between) is remembered by id
//! in memory, so the worker does not apply it twice; after a restart the SFU has no
//! rooms, so applying it again does nothing either.
//!
//! In a cluster each node runs a worker for the rooms it hosts (the row names the node,
//! [`crate::store::sfu_effects`]) and the leader one for rooms placed nowhere; the
//! insert's trigger wakes the right one through `LISTEN/NOTIFY` (`cluster::WakeRelay`).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::sfu::SfuHandle;
pub use crate::store::sfu_effects::EffectTarget;
use crate::store::{self, Connection, Store, StoreError};

/// An effect on a meeting's SFU room, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SfuEffect {
    /// Show a message from the Matrix room in the meeting chat, as the server
    /// participant, under its author's name; `message_id` (the Matrix event id) is its
    /// stream id, so a page that loaded the stored chat shows it once.
    InjectChat {
        meeting: String,
        message_id: String,
        author: String,
        text: String,
    },
    /// End the meeting's room: participants are told the meeting is over and removed.
    CloseRoom { meeting: String },
    /// Take one participant out (a moderator, a departure from the room, a stricter
    /// level); its tokens were revoked in the same transaction.
    RemoveParticipant {
        meeting: String,
        identity: String,
        why: String,
    },
    /// Mute one participant's track of a source (`lk::TrackSource` as a number): a
    /// moderator's mute asked of a node that does not host the room.
    MuteSource {
        meeting: String,
        identity: String,
        source: i32,
    },
}

impl SfuEffect {
    /// The SFU room it acts on: a meeting's id, or a call's LiveKit room name.
    pub fn room(&self) -> &str {
        match self {
            Self::InjectChat { meeting, .. }
            | Self::CloseRoom { meeting }
            | Self::RemoveParticipant { meeting, .. }
            | Self::MuteSource { meeting, .. } => meeting,
        }
    }
}

/// Stores an effect for the node hosting its room now, inside the caller's database
/// transaction.
pub async fn enqueue(conn: &mut Connection, effect: &SfuEffect) -> Result<i64, StoreError> {
    let host = store::sfu_effects::host(conn, effect.room()).await?;
    enqueue_on(conn, host.as_deref(), effect).await
}

/// Stores an effect for `node`'s SFU: for a caller that read the host before the
/// transaction forgot it (a meeting's end drops its placement).
pub async fn enqueue_on(
    conn: &mut Connection,
    node: Option<&str>,
    effect: &SfuEffect,
) -> Result<i64, StoreError> {
    let json = serde_json::to_string(effect).expect("SfuEffect always serialises");
    store::sfu_effects::enqueue(conn, node, &json).await
}

/// Where effects land: the SFU, or a fake in tests.
pub trait MeetingRooms: Send + Sync + 'static {
    /// Sends chat into a room; false when the SFU has no such room.
    fn inject_chat(
        &self,
        room: String,
        id: String,
        author: String,
        text: String,
    ) -> impl Future<Output = bool> + Send;
    /// Closes a room; how many participants it had.
    fn close_room(&self, room: String) -> impl Future<Output = usize> + Send;
    /// Removes one participant; false when it was not there.
    fn remove_identity(
        &self,
        room: String,
        identity: String,
        why: String,
    ) -> impl Future<Output = bool> + Send;
    /// Mutes one participant's track of `source`; false when there was none.
    fn mute_source(
        &self,
        _room: String,
        _identity: String,
        _source: i32,
    ) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

impl MeetingRooms for SfuHandle {
    async fn inject_chat(&self, room: String, id: String, author: String, text: String) -> bool {
        SfuHandle::inject_chat(self, room, Some(id), author, text).await
    }

    async fn close_room(&self, room: String) -> usize {
        SfuHandle::close_room(self, room).await
    }

    async fn remove_identity(&self, room: String, identity: String, why: String) -> bool {
        SfuHandle::remove_identity(self, room, identity, why).await
    }

    async fn mute_source(&self, room: String, identity: String, source: i32) -> bool {
        SfuHandle::mute_track(self, room, identity, None, Some(source), true)
            .await
            .is_some()
    }
}

/// Applies stored effects in order, after their transactions committed.
pub struct SfuEffectsWorker<R> {
    pub store: Store,
    pub rooms: R,
    /// Woken after a transaction that stored effects committed.
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// In a cluster, the leader's term: checked before each round of effects, and a
    /// refusal ends the term (cancels `shutdown`). `None`: a single node, or a node's
    /// own rooms (only that node applies them, whoever leads).
    pub fence: Option<crate::store::cluster::Fence>,
    /// Which rows this worker applies.
    pub target: EffectTarget,
    /// Applied, but not yet recorded as done.
    applied: BTreeSet<i64>,
}

impl<R: MeetingRooms> SfuEffectsWorker<R> {
    pub fn new(store: Store, rooms: R, wake: Arc<Notify>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            rooms,
            wake,
            shutdown,
            fence: None,
            target: EffectTarget::All,
            applied: BTreeSet::new(),
        }
    }

    pub async fn run(mut self) {
        loop {
            let wait = match self.apply_pending().await {
                Ok(0) => Duration::from_secs(30),
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the SFU outbox; retrying in 1 s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                // A safety net: the wake-up after each commit is the normal path.
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Applies the effects waiting now, oldest first; returns how many it applied.
    pub async fn apply_pending(&mut self) -> Result<usize, StoreError> {
        if let Some(fence) = &self.fence
            && !self.store.fence_holds(fence).await?
        {
            tracing::warn!(
                epoch = fence.epoch,
                "another node leads now; this node applies no more SFU effects"
            );
            self.shutdown.cancel();
            return Ok(0);
        }
        let pending = self.store.pending_sfu_effects(&self.target, 100).await?;
        let mut applied = 0;
        for (id, json) in pending {
            if self.applied.insert(id) {
                match serde_json::from_str::<SfuEffect>(&json) {
                    Ok(effect) => {
                        self.apply(&effect).await;
                        applied += 1;
                    }
                    Err(e) => {
                        tracing::error!(id, error = %e, "unreadable SFU effect; skipping it")
                    }
                }
            }
            self.store.mark_sfu_effect_done(id).await?;
            self.applied.remove(&id);
        }
        Ok(applied)
    }

    async fn apply(&self, effect: &SfuEffect) {
        match effect {
            SfuEffect::InjectChat {
                meeting,
                message_id,
                author,
                text,
            } => {
                let live = self
                    .rooms
                    .inject_chat(
                        meeting.clone(),
                        message_id.clone(),
                        author.clone(),
                        text.clone(),
                    )
                    .await;
                // Nobody in the meeting: whoever joins later loads the stored chat.
                if live {
                    metrics::counter!("tchap_visio_chat_mirrored_total", "direction" => "to_meeting")
                        .increment(1);
                }
            }
            SfuEffect::CloseRoom { meeting } => {
                let removed = self.rooms.close_room(meeting.clone()).await;
                tracing::debug!(meeting, removed, "meeting room closed");
            }
            SfuEffect::RemoveParticipant {
                meeting,
                identity,
                why,
            } => {
                let removed = self
                    .rooms
                    .remove_identity(meeting.clone(), identity.clone(), why.clone())
                    .await;
                tracing::info!(meeting, identity, why, removed, "participant removed");
            }
            SfuEffect::MuteSource {
                meeting,
                identity,
                source,
            } => {
                let muted = self
                    .rooms
                    .mute_source(meeting.clone(), identity.clone(), *source)
                    .await;
                tracing::info!(meeting, identity, source, muted, "track muted");
            }
        }
    }
}
