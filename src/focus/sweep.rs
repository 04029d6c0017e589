//! Departures from rooms the bot is not in: the homeserver sends us no membership events
//! there, so every connected call participant's membership is asked again (MSC4502's
//! `is_joined`) on a period, and whoever left is taken out of the call, as the bridge
//! does at once in rooms the bot is in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::membership::{Joined, RoomView};
use crate::bridge::BridgeContext;
use crate::bridge::access::{RemovalReason, remove_participant};
use crate::store::{Store, StoreError, access as stored, meetings, sessions};

pub struct MembershipSweep {
    pub store: Store,
    pub view: Arc<RoomView>,
    pub ctx: Arc<BridgeContext>,
    pub outbound_wake: Arc<tokio::sync::Notify>,
    pub period: Duration,
    pub shutdown: CancellationToken,
}

impl MembershipSweep {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "cannot check call participants' memberships; next round later");
                    }
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn sweep(&self) -> Result<(), StoreError> {
        // Read first, then ask the homeserver with no connection held: SQLite's pool may
        // hold one connection only, which the removals below need.
        let mut present = Vec::new();
        {
            let mut conn = self.store.pool().acquire().await?;
            for call in meetings::live_calls_outside_bot_rooms(&mut conn).await? {
                let users: BTreeSet<String> = sessions::list_for_meeting(&mut conn, &call.id)
                    .await?
                    .into_iter()
                    .filter(|s| s.left_at.is_none())
                    .filter_map(|s| s.matrix_user_id)
                    .collect();
                present.push((call, users));
            }
        }
        for (call, users) in present {
            let Some(room) = call.call_room_id.clone() else {
                continue;
            };
            for user in users {
                match self.view.joined(&room, &user).await {
                    Ok(Joined::No) => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "membership sweep: lookup failed");
                        continue;
                    }
                }
                let mut tx = self.store.begin().await?;
                for grant in stored::live_grants(&mut tx, call.id.as_str()).await? {
                    if grant.user_id.as_deref() == Some(user.as_str()) {
                        tracing::info!(call = %call.id, %user, "out of the room; out of the call too");
                        remove_participant(
                            &mut tx,
                            &call,
                            &grant.identity,
                            RemovalReason::LeftRoom,
                            crate::clock::now_ms(),
                        )
                        .await?;
                    }
                }
                tx.commit().await?;
                self.ctx.effects_committed();
                self.outbound_wake.notify_one();
            }
        }
        Ok(())
    }
}
