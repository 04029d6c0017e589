//! Bridge decisions against a real database (both dialects), with Matrix events fed by
//! hand and SFU events applied directly; what it queues is read back from the queue.

use figment::Figment;
use figment::providers::{Format, Yaml};

use super::names::level_in;
use super::sfu_events::handle_event;
use super::*;
use crate::sfu::EngineEvent;
use crate::store::testing::both_dialects;
use crate::store::{Store, rooms};

const ROOM: &str = "!room:localhost";

fn ctx() -> BridgeContext {
    let mut config: Config = Figment::new()
        .merge(Yaml::string(include_str!(
            "../../config/example-config.yaml"
        )))
        .extract()
        .expect("the example config parses");
    config.meetings.grace_period_secs = 60;
    config.meetings.widget = true;
    BridgeContext::from_config(&config, None, None)
}

fn message(event_id: &str, sender: &str, content: serde_json::Value) -> InboxEvent {
    let json = serde_json::json!({
        "type": "m.room.message", "event_id": event_id, "room_id": ROOM, "sender": sender,
        "origin_server_ts": 1, "content": content,
    });
    InboxEvent {
        seq: 1,
        event_id: event_id.into(),
        json: json.to_string(),
    }
}

fn text(event_id: &str, sender: &str, body: &str) -> InboxEvent {
    message(
        event_id,
        sender,
        serde_json::json!({"msgtype": "m.text", "body": body}),
    )
}

async fn feed(store: &Store, bridge: &Bridge, event: InboxEvent) {
    let mut tx = store.begin().await.expect("begin");
    bridge.handle(&event, &mut tx).await.expect("handle");
    tx.commit().await.expect("commit");
}

async fn sfu(store: &Store, ctx: &BridgeContext, event: EngineEvent, now: i64) {
    let mut tx = store.begin().await.expect("begin");
    handle_event(ctx, &mut tx, &event, now)
        .await
        .expect("handle");
    tx.commit().await.expect("commit");
}

/// Drains the queue: what the bridge asked of the homeserver, in order.
async fn queued(store: &Store) -> Vec<OutboundRequest> {
    let mut out = Vec::new();
    while let Some(row) = store.next_due_outbound(i64::MAX).await.expect("next") {
        out.push(serde_json::from_str(&row.request_json).expect("request"));
        store
            .mark_outbound_sent(row.id, "{}", None)
            .await
            .expect("sent");
    }
    out
}

fn bodies(requests: &[OutboundRequest]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| match r {
            OutboundRequest::Send { content, .. } => content["body"].as_str().map(str::to_owned),
            _ => None,
        })
        .collect()
}

async fn active(store: &Store) -> Option<Meeting> {
    let mut conn = store.pool().acquire().await.expect("conn");
    meetings::active_for_room(&mut conn, ROOM)
        .await
        .expect("get")
}

both_dialects!(
    one_meeting_per_room_with_a_link_notice_and_widget,
    |store: Store| async move {
        let bridge = Bridge {
            ctx: Arc::new(ctx()),
        };
        feed(
            &store,
            &bridge,
            text("$1", "@alice:localhost", "!visio Point hebdo"),
        )
        .await;
        let meeting = active(&store).await.expect("a meeting");
        assert_eq!(meeting.title, "Point hebdo");
        assert_eq!(meeting.creator.as_deref(), Some("@alice:localhost"));
        let requests = queued(&store).await;
        match &requests[0] {
            OutboundRequest::Send {
                content,
                in_thread_of,
                ..
            } => {
                assert!(
                    meeting.link_notice_id.is_some(),
                    "the meeting knows its link notice, its thread's root"
                );
                assert!(in_thread_of.is_none());
                assert!(
                    content["body"]
                        .as_str()
                        .expect("body")
                        .contains(&bridge.ctx.link(&meeting))
                );
                assert_eq!(content["m.mentions"], serde_json::json!({}));
            }
            other => panic!("expected the link notice, got {other:?}"),
        }
        assert!(requests.iter().any(|r| matches!(r, OutboundRequest::SetState { event_type, .. } if event_type == "im.vector.modular.widgets")));

        feed(
            &store,
            &bridge,
            text("$2", "@bob:localhost", "!visio Autre"),
        )
        .await;
        feed(&store, &bridge, text("$3", "@bob:localhost", "!visio lien")).await;
        let again = bodies(&queued(&store).await);
        assert_eq!(again.len(), 2);
        for body in &again {
            assert!(
                body.contains("déjà ouverte") && body.contains(&bridge.ctx.link(&meeting)),
                "{body}"
            );
        }
        // Strangers and our own ghosts start nothing.
        feed(
            &store,
            &bridge,
            text("$4", "@eve:elsewhere.org", "!visio Intrus"),
        )
        .await;
        feed(
            &store,
            &bridge,
            text("$5", "@visio_g1:localhost", "!visio fin"),
        )
        .await;
        let requests = queued(&store).await;
        assert_eq!(
            bodies(&requests).len(),
            1,
            "only the refusal for eve: {requests:?}"
        );
        assert_eq!(active(&store).await.map(|m| m.id), Some(meeting.id));
    }
);

fn member(event_id: &str, user: &str, content: serde_json::Value) -> InboxEvent {
    let json = serde_json::json!({
        "type": "m.room.member", "event_id": event_id, "room_id": ROOM, "sender": user,
        "state_key": user, "origin_server_ts": 1, "content": content,
    });
    InboxEvent {
        seq: 1,
        event_id: event_id.into(),
        json: json.to_string(),
    }
}

both_dialects!(
    notices_name_the_starter_by_their_display_name_in_the_room,
    |store: Store| async move {
        let bridge = Bridge {
            ctx: Arc::new(ctx()),
        };
        let alice = "@alice:localhost";
        feed(
            &store,
            &bridge,
            member(
                "$m1",
                alice,
                serde_json::json!({"membership": "join", "displayname": "Alice Martin"}),
            ),
        )
        .await;
        feed(&store, &bridge, text("$1", alice, "!visio Point")).await;
        let requests = queued(&store).await;
        let OutboundRequest::Send { content, .. } = &requests[0] else {
            panic!("expected the link notice, got {requests:?}");
        };
        let body = content["body"].as_str().expect("body");
        assert!(
            body.contains("« Point » lancée par Alice Martin\n"),
            "{body}"
        );
        let html = content["formatted_body"].as_str().expect("html");
        assert!(
            html.contains(r#"<a href="https://matrix.to/#/@alice:localhost">Alice Martin</a>"#),
            "{html}"
        );
        // A new name in the room is used from then on; one that left has no name.
        feed(
            &store,
            &bridge,
            member(
                "$m2",
                alice,
                serde_json::json!({"membership": "join", "displayname": "Alice M."}),
            ),
        )
        .await;
        feed(&store, &bridge, text("$2", alice, "!visio fin")).await;
        let after = bodies(&queued(&store).await);
        assert!(
            after.iter().any(|b| b.contains("à la demande de Alice M.")),
            "{after:?}"
        );
        feed(
            &store,
            &bridge,
            member("$m3", alice, serde_json::json!({"membership": "leave"})),
        )
        .await;
        feed(&store, &bridge, text("$3", alice, "!visio")).await;
        let requests = queued(&store).await;
        let OutboundRequest::Send { content, .. } = &requests[0] else {
            panic!("expected the link notice, got {requests:?}");
        };
        let body = content["body"].as_str().expect("body");
        assert!(body.contains("lancée par @alice:localhost"), "{body}");
    }
);

both_dialects!(
    ending_needs_the_creator_or_the_power_level,
    |store: Store| async move {
        let ctx = Arc::new(ctx());
        let bridge = Bridge { ctx: ctx.clone() };
        feed(&store, &bridge, text("$1", "@alice:localhost", "!visio")).await;
        {
            let mut conn = store.pool().acquire().await.expect("conn");
            let levels =
                r#"{"users": {"@alice:localhost": 100, "@mod:localhost": 50}, "users_default": 0}"#;
            rooms::set_power_levels(&mut conn, ROOM, levels)
                .await
                .expect("levels");
        }
        queued(&store).await;
        feed(&store, &bridge, text("$2", "@bob:localhost", "!visio fin")).await;
        let refusal = bodies(&queued(&store).await);
        assert!(
            refusal[0].contains("niveau 50") && refusal[0].contains("La visio continue"),
            "{refusal:?}"
        );
        assert!(active(&store).await.is_some());
        feed(&store, &bridge, text("$3", "@mod:localhost", "!visio end")).await;
        assert!(active(&store).await.is_none(), "a moderator ends it");
        let after = bodies(&queued(&store).await);
        assert!(
            after
                .iter()
                .any(|b| b.contains("terminée à la demande de @mod:localhost")),
            "{after:?}"
        );
        assert!(
            after.iter().any(|b| b.contains("personne ne l’a rejointe")),
            "{after:?}"
        );
    }
);

both_dialects!(
    sfu_events_make_attendance_thread_chat_and_a_summary,
    |store: Store| async move {
        let ctx = Arc::new(ctx());
        let bridge = Bridge { ctx: ctx.clone() };
        feed(
            &store,
            &bridge,
            text("$1", "@alice:localhost", "!visio Revue"),
        )
        .await;
        let meeting = active(&store).await.expect("meeting");
        queued(&store).await;
        let room = meeting.id.to_string();
        let joined = |sid: &str, identity: &str, name: &str| EngineEvent::ParticipantJoined {
            room: room.clone(),
            sid: sid.into(),
            identity: identity.into(),
            name: name.into(),
        };
        sfu(&store, &ctx, joined("PA_a", "browsera-x1", "Agathe"), 1_000).await;
        sfu(&store, &ctx, joined("PA_a", "browsera-x1", "Agathe"), 1_000).await; // seen twice
        sfu(&store, &ctx, joined("PA_b", "browserb-y1", "Bruno"), 2_000).await;
        let chat = EngineEvent::Chat {
            room: room.clone(),
            id: "m1".into(),
            sender_sid: "PA_a".into(),
            sender_identity: "browsera-x1".into(),
            sender_name: "Agathe".into(),
            text: "bonjour".into(),
            timestamp_ms: 3_000,
        };
        sfu(&store, &ctx, chat.clone(), 3_000).await;
        sfu(&store, &ctx, chat, 3_000).await; // the same message again: mirrored once
        let requests = queued(&store).await;
        let first_join = requests.iter().filter(|r| matches!(r, OutboundRequest::Send { content, in_thread_of: Some(_), as_user: None, .. } if content["body"].as_str().is_some_and(|b| b.contains("a rejoint")))).count();
        assert_eq!(first_join, 1, "one first-join notice: {requests:?}");
        let ghost = ctx.ghosts.guest("browsera");
        let kinds: Vec<&str> = requests
            .iter()
            .map(|r| match r {
                OutboundRequest::RegisterGhost { .. } => "register",
                OutboundRequest::SetDisplayName {
                    user_id,
                    displayname,
                } => {
                    assert_eq!(
                        (user_id, displayname.as_str()),
                        (&ghost, "Agathe (invité·e)")
                    );
                    "name"
                }
                OutboundRequest::Invite { user_id, .. } => {
                    assert_eq!(user_id, &ghost);
                    "invite"
                }
                OutboundRequest::Join {
                    as_user: Some(u), ..
                } => {
                    assert_eq!(u, &ghost);
                    "join"
                }
                OutboundRequest::Send {
                    as_user: Some(u),
                    in_thread_of: Some(_),
                    content,
                    attribution,
                    ..
                } => {
                    assert_eq!((u, content["body"].as_str()), (&ghost, Some("bonjour")));
                    // Should the ghost be refused, the bot says who spoke.
                    let speaker = attribution.as_ref().map(|a| a.name.as_str());
                    assert_eq!(speaker, Some("Agathe (invité·e)"));
                    "chat"
                }
                _ => "other",
            })
            .filter(|k| *k != "other")
            .collect();
        assert_eq!(kinds, ["register", "name", "invite", "join", "chat"]);

        // Both leave; Agathe comes back from the same browser, and leaves again.
        let left = |sid: &str| EngineEvent::ParticipantLeft {
            room: room.clone(),
            sid: sid.into(),
            identity: String::new(),
        };
        sfu(&store, &ctx, left("PA_a"), 10_000).await;
        sfu(&store, &ctx, left("PA_b"), 12_000).await;
        sfu(
            &store,
            &ctx,
            joined("PA_a2", "browsera-x2", "Agathe"),
            20_000,
        )
        .await;
        sfu(&store, &ctx, left("PA_a2"), 30_000).await;
        let mut conn = store.pool().acquire().await.expect("conn");
        let stored = meetings::get_by_id(&mut conn, &meeting.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            (stored.state, stored.peak_participants, stored.empty_since),
            (MeetingState::Running, 2, Some(30_000))
        );
        assert!(
            due_for_end(&mut conn, &ctx, 30_000 + 59_999)
                .await
                .expect("due")
                .is_empty()
        );
        let due = due_for_end(&mut conn, &ctx, 30_000 + 60_000)
            .await
            .expect("due");
        assert_eq!(due.len(), 1);
        assert!(
            end_meeting(&ctx, &mut conn, &due[0], 90_000)
                .await
                .expect("end")
        );
        assert!(
            !end_meeting(&ctx, &mut conn, &due[0], 90_001)
                .await
                .expect("end"),
            "ends once"
        );
        drop(conn);
        let summary = bodies(&queued(&store).await);
        let thread = summary
            .iter()
            .find(|b| b.starts_with("Compte rendu"))
            .expect("a summary");
        // Agathe: 1 s..10 s and 20 s..30 s = 19 s; Bruno: 2 s..12 s = 10 s.
        assert!(thread.contains("• Agathe (invité·e) — 19 s"), "{thread}");
        assert!(thread.contains("• Bruno (invité·e) — 10 s"), "{thread}");
        // First join 1 s, last leave 30 s: the grace period until the end (90 s) is not
        // meeting time.
        assert!(thread.contains("Durée\u{202f}: 29 s"), "{thread}");
        let line = summary
            .iter()
            .find(|b| b.starts_with("Visio « Revue » terminée"))
            .expect("the room's line");
        assert!(line.contains("terminée : 29 s,"), "{line}");
        assert!(
            thread.contains("Messages dans la discussion : 1"),
            "{thread}"
        );
        // After the end, SFU events change nothing.
        sfu(&store, &ctx, joined("PA_late", "late-z", "Late"), 100_000).await;
        assert!(queued(&store).await.is_empty());
    }
);

both_dialects!(
    a_restart_closes_sessions_and_rearms_the_grace_period,
    |store: Store| async move {
        let ctx = Arc::new(ctx());
        let bridge = Bridge { ctx: ctx.clone() };
        feed(&store, &bridge, text("$1", "@alice:localhost", "!visio")).await;
        let meeting = active(&store).await.expect("meeting");
        sfu(
            &store,
            &ctx,
            EngineEvent::ParticipantJoined {
                room: meeting.id.to_string(),
                sid: "PA_a".into(),
                identity: "b-1".into(),
                name: "A".into(),
            },
            1_000,
        )
        .await;
        let mut conn = store.pool().acquire().await.expect("conn");
        sessions::touch_open(&mut conn, 5_000).await.expect("touch");
        // The service dies here; at the next start:
        recover(&mut conn, 50_000).await.expect("recover");
        let listed = sessions::list_for_meeting(&mut conn, &meeting.id)
            .await
            .expect("list");
        assert_eq!(
            listed[0].left_at,
            Some(5_000),
            "closed when last seen alive"
        );
        let stored = meetings::get_by_id(&mut conn, &meeting.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            stored.empty_since,
            Some(50_000),
            "a whole grace period to come back"
        );
        assert!(
            due_for_end(&mut conn, &ctx, 109_999)
                .await
                .expect("due")
                .is_empty()
        );
        assert_eq!(
            due_for_end(&mut conn, &ctx, 110_000)
                .await
                .expect("due")
                .len(),
            1
        );
    }
);

#[test]
fn power_levels_are_read_like_the_spec_says() {
    let user = UserId::parse("@a:localhost").expect("id");
    assert_eq!(
        level_in(&serde_json::json!({"users": {"@a:localhost": 50}}), &user),
        50
    );
    assert_eq!(
        level_in(&serde_json::json!({"users_default": 10}), &user),
        10
    );
    assert_eq!(
        level_in(&serde_json::json!({"users": {"@a:localhost": "75"}}), &user),
        75
    );
    assert_eq!(level_in(&serde_json::json!({}), &user), 0);
}

both_dialects!(
    thread_chat_is_kept_while_nobody_is_in_the_meeting,
    |store: Store| async move {
        // No SFU here, as when the meeting's room does not exist yet: nobody is in.
        let bridge = Bridge {
            ctx: Arc::new(ctx()),
        };
        feed(&store, &bridge, text("$1", "@alice:localhost", "!visio")).await;
        let meeting = active(&store).await.expect("a meeting");
        {
            let mut conn = store.pool().acquire().await.expect("conn");
            meetings::link_notice_sent_as(&mut conn, &meeting.id, "$root")
                .await
                .expect("root");
        }
        let in_thread = |id: &str, body: &str| {
            message(
                id,
                "@bob:localhost",
                serde_json::json!({
                    "msgtype": "m.text", "body": body,
                    "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"},
                }),
            )
        };
        feed(&store, &bridge, in_thread("$t1", "Je serai en retard")).await;
        feed(&store, &bridge, in_thread("$t1", "Je serai en retard")).await; // redelivered
        let stored = {
            let mut conn = store.pool().acquire().await.expect("conn");
            chat::list_for_meeting(&mut conn, &meeting.id)
                .await
                .expect("chat")
        };
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(stored[0].message_id, "$t1");
        assert_eq!(stored[0].origin, ChatOrigin::Matrix);
        assert_eq!(stored[0].body, "Je serai en retard");
        assert_eq!(stored[0].sender_name, "bob");
        assert_eq!(stored[0].matrix_user_id.as_deref(), Some("@bob:localhost"));

        // Once the meeting has ended, the thread is the room's again.
        feed(
            &store,
            &bridge,
            text("$2", "@alice:localhost", "!visio fin"),
        )
        .await;
        assert!(active(&store).await.is_none());
        feed(&store, &bridge, in_thread("$t2", "Merci à tous")).await;
        let mut conn = store.pool().acquire().await.expect("conn");
        let count = chat::count_for_meeting(&mut conn, &meeting.id)
            .await
            .expect("count");
        assert_eq!(count, 1);
    }
);

/// Closed sessions in the database, all meetings together.
async fn closed_sessions(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM participant_sessions WHERE left_at IS NOT NULL")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

fn flood_join(room: &str, identity: &str) -> crate::sfu::JoinRequest {
    crate::sfu::JoinRequest {
        room: room.to_owned(),
        identity: identity.to_owned(),
        name: identity.to_owned(),
        metadata: String::new(),
        attributes: HashMap::new(),
        can_publish: false,
        can_subscribe: true,
        can_publish_data: true,
        can_update_own_metadata: false,
        can_publish_sources: Vec::new(),
        auto_subscribe: false,
        single_pc: false,
        publisher_offer: None,
    }
}

both_dialects!(
    a_flood_of_sfu_events_is_recorded_exactly,
    |store: Store| async move {
        const MEETINGS: usize = 110;
        const PER_MEETING: usize = 10;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let config = crate::sfu::EngineConfig {
            candidates: vec!["127.0.0.1:9".parse().expect("address")],
            max_participants_per_room: PER_MEETING,
            max_participants: MEETINGS * PER_MEETING,
            ice_servers: Vec::new(),
        };
        let bind = "127.0.0.1:0".parse().expect("address");
        let (sfu, events, _driver) = SfuHandle::start(bind, None, config, 1, shutdown.clone())
            .await
            .expect("the SFU starts");
        let mut meetings_made = Vec::new();
        {
            let mut conn = store.pool().acquire().await.expect("conn");
            for i in 0..MEETINGS {
                let meeting =
                    Meeting::new(&format!("Flood {i}"), None, None, now_ms()).expect("meeting");
                meetings::create(&mut conn, &meeting).await.expect("create");
                meetings_made.push(meeting);
            }
        }
        // Every meeting fills and ends before the bridge reads anything: twice as many
        // joins and leaves as the channel holds wait for it.
        for meeting in &meetings_made {
            for p in 0..PER_MEETING {
                let (sink, _) = crate::sfu::driver::signal_channel();
                let identity = format!("b{p}-{}", meeting.id);
                sfu.join(flood_join(meeting.id.as_str(), &identity), sink, 1)
                    .await
                    .expect("admitted");
            }
            assert_eq!(sfu.close_room(meeting.id.to_string()).await, PER_MEETING);
        }
        let ctx = Arc::new(ctx());
        let worker = tokio::spawn(
            crate::bridge::sfu_events::SfuEventWorker {
                ctx: ctx.clone(),
                store: store.clone(),
                events,
                outbound_wake: Arc::new(tokio::sync::Notify::new()),
                shutdown: shutdown.clone(),
                delayed_leaves: None,
            }
            .run(),
        );
        let total = (MEETINGS * PER_MEETING) as i64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while closed_sessions(&store).await < total {
            assert!(
                Instant::now() < deadline,
                "only {} of {total} sessions closed",
                closed_sessions(&store).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        worker.await.expect("the worker stops");
        let mut conn = store.pool().acquire().await.expect("conn");
        for meeting in &meetings_made {
            let all = sessions::list_for_meeting(&mut conn, &meeting.id)
                .await
                .expect("sessions");
            assert_eq!(all.len(), PER_MEETING, "one session per participant");
            assert!(all.iter().all(|s| s.left_at.is_some()), "everyone left");
            let attendees = meeting::attendance(&all, i64::MAX / 4);
            let mut keys: Vec<String> = attendees.into_iter().map(|a| a.attendee_key).collect();
            keys.sort();
            let mut expected: Vec<String> = (0..PER_MEETING)
                .map(|p| attendee_key(&format!("b{p}-{}", meeting.id)))
                .collect();
            expected.sort();
            assert_eq!(keys, expected, "attendance of {}", meeting.id);
        }
    }
);

/// Handles events with the bridge, then fails its batch once: after the bridge decided
/// everything, before the transaction commits.
struct FailsOnceBeforeCommit {
    bridge: Bridge,
    armed: std::sync::atomic::AtomicBool,
}

impl EventHandler for FailsOnceBeforeCommit {
    async fn prepare(&self, batch: &[InboxEvent]) {
        self.bridge.prepare(batch).await;
    }

    async fn handle(&self, event: &InboxEvent, conn: &mut Connection) -> Result<(), StoreError> {
        self.bridge.handle(event, conn).await?;
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Corrupt {
                table: "inbox",
                detail: "fault injected before the commit".into(),
            });
        }
        Ok(())
    }

    fn committed(&self) {
        self.bridge.committed();
    }
}

/// An SFU that records the effects it receives.
#[derive(Default)]
struct FakeRooms {
    chat: Mutex<Vec<(String, String, String, String)>>,
    closed: Mutex<Vec<String>>,
    removed: Mutex<Vec<(String, String)>>,
}

impl effects::MeetingRooms for Arc<FakeRooms> {
    async fn inject_chat(&self, room: String, id: String, author: String, text: String) -> bool {
        self.chat
            .lock()
            .expect("no panic while holding the lock")
            .push((room, id, author, text));
        true
    }

    async fn close_room(&self, room: String) -> usize {
        self.closed
            .lock()
            .expect("no panic while holding the lock")
            .push(room);
        1
    }

    async fn remove_identity(&self, room: String, identity: String, _why: String) -> bool {
        self.removed
            .lock()
            .expect("no panic while holding the lock")
            .push((room, identity));
        true
    }
}

both_dialects!(
    a_batch_retried_after_a_failure_puts_its_chat_into_the_meeting_once,
    |store: Store| async move {
        let ctx = Arc::new(ctx());
        let bridge = Bridge { ctx: ctx.clone() };
        feed(&store, &bridge, text("$1", "@alice:localhost", "!visio")).await;
        let meeting = active(&store).await.expect("a meeting");
        {
            let mut conn = store.pool().acquire().await.expect("conn");
            meetings::link_notice_sent_as(&mut conn, &meeting.id, "$root")
                .await
                .expect("root");
        }
        let reply = message(
            "$t1",
            "@bob:localhost",
            serde_json::json!({
                "msgtype": "m.text", "body": "Je serai en retard",
                "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"},
            }),
        );
        store
            .store_transaction(
                "txn1",
                &[crate::store::inbox::NewInboxEvent {
                    event_id: reply.event_id.clone(),
                    room_id: Some(ROOM.into()),
                    json: reply.json.clone(),
                }],
            )
            .await
            .expect("stored");
        let inbox = crate::matrix::inbox::InboxWorker {
            store: store.clone(),
            handler: FailsOnceBeforeCommit {
                bridge: Bridge { ctx: ctx.clone() },
                armed: true.into(),
            },
            wake: Arc::new(Notify::new()),
            outbound_wake: Arc::new(Notify::new()),
            fence: None,
            shutdown: CancellationToken::new(),
        };
        let rooms = Arc::new(FakeRooms::default());
        let mut worker = effects::SfuEffectsWorker::new(
            store.clone(),
            rooms.clone(),
            Arc::new(Notify::new()),
            CancellationToken::new(),
        );
        assert!(inbox.process_batch().await.is_err(), "the fault fires");
        assert_eq!(worker.apply_pending().await.expect("apply"), 0);
        assert!(
            rooms.chat.lock().expect("lock").is_empty(),
            "nothing before a commit"
        );
        assert_eq!(inbox.process_batch().await.expect("the retry"), 1);
        assert_eq!(worker.apply_pending().await.expect("apply"), 1);
        assert_eq!(
            worker.apply_pending().await.expect("apply"),
            0,
            "applied once"
        );
        assert_eq!(
            *rooms.chat.lock().expect("lock"),
            vec![(
                meeting.id.to_string(),
                "$t1".to_owned(),
                "bob".to_owned(),
                "Je serai en retard".to_owned()
            )]
        );
        let mut conn = store.pool().acquire().await.expect("conn");
        let stored = chat::list_for_meeting(&mut conn, &meeting.id)
            .await
            .expect("chat");
        assert_eq!(stored.len(), 1, "{stored:?}");
        drop(conn);

        // Ending the meeting closes its room, once, after the commit.
        feed(
            &store,
            &bridge,
            text("$2", "@alice:localhost", "!visio fin"),
        )
        .await;
        assert!(rooms.closed.lock().expect("lock").is_empty());
        assert_eq!(worker.apply_pending().await.expect("apply"), 1);
        assert_eq!(
            *rooms.closed.lock().expect("lock"),
            vec![meeting.id.to_string()]
        );
    }
);

// Moved from `matrix::bot`: the dispatcher answers help, hints and refusals.
both_dialects!(
    commands_get_replies_and_ours_are_ignored,
    |store: Store| async move {
        let bridge = Bridge {
            ctx: Arc::new(ctx()),
        };
        feed(
            &store,
            &bridge,
            text("$msg", "@alice:localhost", "!visio aide"),
        )
        .await;
        feed(
            &store,
            &bridge,
            text("$msg", "@visio:localhost", "!visio aide"),
        )
        .await;
        feed(
            &store,
            &bridge,
            text("$msg", "@visio_guest:localhost", "!visio aide"),
        )
        .await;
        feed(&store, &bridge, text("$msg", "@alice:localhost", "bonjour")).await;
        feed(
            &store,
            &bridge,
            text("$msg", "@alice:localhost", "!visio aied"),
        )
        .await;
        feed(
            &store,
            &bridge,
            text("$msg", "@eve:elsewhere.org", "!visio aide"),
        )
        .await;
        let requests = queued(&store).await;
        let bodies: Vec<_> = requests
            .iter()
            .map(|r| match r {
                OutboundRequest::Send { content, .. } => content.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(bodies.len(), 3, "{bodies:?}");
        assert!(
            bodies[0]["body"]
                .as_str()
                .expect("body")
                .starts_with("Commandes")
        );
        assert_eq!(
            bodies[0]["m.relates_to"]["m.in_reply_to"]["event_id"],
            "$msg"
        );
        assert_eq!(bodies[0]["msgtype"], "m.notice");
        assert!(
            bodies[1]["body"]
                .as_str()
                .expect("body")
                .contains("« aied »")
        );
        assert!(
            bodies[1]["body"]
                .as_str()
                .expect("body")
                .contains("!visio aide")
        );
        assert!(
            bodies[2]["body"]
                .as_str()
                .expect("body")
                .contains("pas le droit")
        );
    }
);

/// Two cluster nodes' meeting timers finding the same meeting due at once: it ends once
/// (one summary), and its room is closed on the node that hosted it, although the end
/// forgets the placement.
#[tokio::test]
async fn two_nodes_end_a_meeting_once_and_close_its_room_on_its_host() {
    let db = crate::store::testing::postgres().await;
    let store = db.store.clone();
    let mut hosting = ctx();
    hosting.node_id = Some("a".into());
    let ctx = Arc::new(hosting);
    let bridge = Bridge { ctx: ctx.clone() };
    feed(&store, &bridge, text("$1", "@alice:localhost", "!visio")).await;
    let meeting = active(&store).await.expect("meeting");
    store
        .node_started(&crate::store::cluster::NodeBeat {
            node_id: "a".into(),
            node_url: "http://a.internal".into(),
            heartbeat_ms: 60_000,
            participants: 0,
            rooms: 0,
            cpu_permille: None,
        })
        .await
        .expect("node");
    let placed = store
        .place_room(meeting.id.as_str())
        .await
        .expect("place")
        .expect("a live node");
    assert_eq!(placed.node_id, "a");
    let room = meeting.id.to_string();
    sfu(
        &store,
        &ctx,
        EngineEvent::ParticipantJoined {
            room: room.clone(),
            sid: "PA_a".into(),
            identity: "b-1".into(),
            name: "A".into(),
        },
        1_000,
    )
    .await;
    let node: Option<String> =
        sqlx::query_scalar("SELECT node_id FROM participant_sessions WHERE sid = 'PA_a'")
            .fetch_one(store.pool())
            .await
            .expect("session");
    assert_eq!(node.as_deref(), Some("a"), "the session is a's");
    queued(&store).await;
    let ends = (0..2)
        .map(|_| {
            let (store, ctx, meeting) = (store.clone(), ctx.clone(), meeting.clone());
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                let ended = end_meeting(&ctx, &mut tx, &meeting, 90_000)
                    .await
                    .expect("end");
                tx.commit().await.expect("commit");
                ended
            })
        })
        .collect::<Vec<_>>();
    let mut ended = Vec::new();
    for end in ends {
        ended.push(end.await.expect("task"));
    }
    ended.sort();
    assert_eq!(ended, [false, true], "one of the two ends it");
    let summaries = bodies(&queued(&store).await)
        .into_iter()
        .filter(|b| b.contains("Compte rendu dans le fil"))
        .count();
    assert_eq!(summaries, 1, "one summary line in the room");
    let closes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT effect_json, node_id FROM sfu_effects WHERE effect_json LIKE '%close_room%'",
    )
    .fetch_all(store.pool())
    .await
    .expect("effects");
    assert_eq!(closes.len(), 1, "one close: {closes:?}");
    assert_eq!(
        closes[0].1.as_deref(),
        Some("a"),
        "for the node that hosted it"
    );
}
