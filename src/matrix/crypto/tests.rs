//! The crypto core between machines that talk through a fake homeserver: a few maps that
//! answer the five key endpoints as the spec shapes them. The real homeserver is in the
//! integration tests; here the point is our JSON boundary and the machine's use.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Value, json};

use super::*;

const ROOM: &str = "!salon:agent.tchap.gouv.fr";
const BOT: &str = "@visio:agent.tchap.gouv.fr";
const ALICE: &str = "@alice:agent.tchap.gouv.fr";
const BRUNO: &str = "@bruno:agent.tchap.gouv.fr";

#[derive(Default)]
struct FakeHomeserver {
    device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    one_time_keys: HashMap<(String, String), VecDeque<(String, Value)>>,
    to_device: HashMap<(String, String), Vec<Value>>,
}

impl FakeHomeserver {
    fn answer(&mut self, user: &str, device: &str, call: &CryptoCall) -> Value {
        match call.kind {
            CallKind::KeysUpload => {
                if let Some(keys) = call.body.get("device_keys") {
                    self.device_keys
                        .entry(user.to_owned())
                        .or_default()
                        .insert(device.to_owned(), keys.clone());
                }
                let pool = self
                    .one_time_keys
                    .entry((user.to_owned(), device.to_owned()))
                    .or_default();
                if let Some(keys) = call.body.get("one_time_keys").and_then(|k| k.as_object()) {
                    pool.extend(keys.iter().map(|(id, key)| (id.clone(), key.clone())));
                }
                json!({"one_time_key_counts": {"signed_curve25519": pool.len()}})
            }
            CallKind::KeysQuery => {
                let mut found = serde_json::Map::new();
                for user in call.body["device_keys"].as_object().expect("users").keys() {
                    let devices = self.device_keys.get(user).cloned().unwrap_or_default();
                    found.insert(user.clone(), json!(devices));
                }
                json!({"device_keys": found, "failures": {}})
            }
            CallKind::KeysClaim => {
                let mut claimed = serde_json::Map::new();
                for (user, devices) in call.body["one_time_keys"].as_object().expect("users") {
                    let mut per_device = serde_json::Map::new();
                    for device in devices.as_object().expect("devices").keys() {
                        if let Some((id, key)) = self
                            .one_time_keys
                            .get_mut(&(user.clone(), device.clone()))
                            .and_then(|pool| pool.pop_front())
                        {
                            per_device.insert(device.clone(), json!({ id: key }));
                        }
                    }
                    claimed.insert(user.clone(), Value::Object(per_device));
                }
                json!({"one_time_keys": claimed, "failures": {}})
            }
            CallKind::ToDevice => {
                let event_type = call
                    .path
                    .split('/')
                    .rev()
                    .nth(1)
                    .expect("/sendToDevice/{type}/{txn}")
                    .to_owned();
                for (recipient, devices) in call.body["messages"].as_object().expect("messages") {
                    for (target, content) in devices.as_object().expect("devices") {
                        let targets: Vec<String> = if target == "*" {
                            self.device_keys
                                .get(recipient)
                                .map(|d| d.keys().cloned().collect())
                                .unwrap_or_default()
                        } else {
                            vec![target.clone()]
                        };
                        for target in targets {
                            self.to_device
                                .entry((recipient.clone(), target))
                                .or_default()
                                .push(json!({
                                    "type": event_type, "sender": user, "content": content,
                                }));
                        }
                    }
                }
                json!({})
            }
            CallKind::SignatureUpload | CallKind::Untracked => json!({"failures": {}}),
        }
    }

    /// What `/sync` would carry for this device now: its to-device events (taken) and
    /// its one-time-key count.
    fn sync(&mut self, user: &str, device: &str) -> CryptoInput {
        let key = (user.to_owned(), device.to_owned());
        let count = self.one_time_keys.get(&key).map_or(0, |p| p.len()) as u64;
        CryptoInput {
            to_device: self.to_device.remove(&key).unwrap_or_default(),
            one_time_key_counts: BTreeMap::from([("signed_curve25519".into(), count)]),
            ..Default::default()
        }
    }
}

struct Device {
    user: &'static str,
    crypto: Crypto,
}

impl Device {
    async fn new(user: &'static str, device: &str) -> Self {
        Self {
            user,
            crypto: Crypto::in_memory(user, device).await.expect("a device"),
        }
    }

    async fn make(&self, server: &mut FakeHomeserver, calls: &[CryptoCall]) {
        let device = self.crypto.device_id();
        for call in calls {
            let answer = server.answer(self.user, &device, call);
            self.crypto
                .mark_sent(call, &answer)
                .await
                .expect("marked sent");
        }
    }

    /// Makes every call the machine wants until it wants none (bounded).
    async fn settle(&self, server: &mut FakeHomeserver) {
        for _ in 0..10 {
            let calls = self.crypto.outgoing_calls().await.expect("calls");
            if calls.is_empty() {
                return;
            }
            self.make(server, &calls).await;
        }
        panic!("{} never settles", self.user);
    }

    async fn sync(&self, server: &mut FakeHomeserver) -> Vec<ArrivedKey> {
        let input = server.sync(self.user, &self.crypto.device_id());
        self.crypto.receive(&input).await.expect("received")
    }

    /// Shares the room key with `members`, making the calls it needs (bounded).
    async fn share(&self, server: &mut FakeHomeserver, members: &[&str]) {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        for _ in 0..10 {
            let calls = self
                .crypto
                .prepare_room(ROOM, &members, Recipients::AllDevices, Rotation::default())
                .await
                .expect("prepared");
            if calls.is_empty() {
                return;
            }
            self.make(server, &calls).await;
        }
        panic!("sharing never ends");
    }

    async fn encrypted_event(&self, event_id: &str, body: &str) -> Value {
        let content = self
            .crypto
            .encrypt(
                ROOM,
                "m.room.message",
                &json!({"msgtype": "m.text", "body": body}),
            )
            .await
            .expect("encrypted");
        json!({
            "type": "m.room.encrypted", "event_id": event_id, "sender": self.user,
            "origin_server_ts": 1_764_000_000_000u64, "room_id": ROOM, "content": content,
        })
    }
}

/// The bot and Alice with their keys uploaded.
async fn two_devices(server: &mut FakeHomeserver) -> (Device, Device) {
    let bot = Device::new(BOT, "VISIOBOT").await;
    let alice = Device::new(ALICE, "ALICEPHONE").await;
    bot.settle(server).await;
    alice.settle(server).await;
    (bot, alice)
}

#[tokio::test]
async fn what_the_bot_encrypts_a_member_decrypts_and_back() {
    let mut server = FakeHomeserver::default();
    let (bot, alice) = two_devices(&mut server).await;

    bot.share(&mut server, &[BOT, ALICE]).await;
    alice.sync(&mut server).await;
    let event = bot.encrypted_event("$link", "Rejoindre la visio").await;
    assert_eq!(
        event["content"]["algorithm"], "m.megolm.v1.aes-sha2",
        "the server only sees ciphertext: {event}"
    );
    assert!(!event.to_string().contains("Rejoindre"));
    let clear = alice.crypto.decrypt(ROOM, &event).await.expect("decrypted");
    assert_eq!(clear["type"], "m.room.message");
    assert_eq!(clear["content"]["body"], "Rejoindre la visio");
    assert_eq!(
        (&clear["event_id"], &clear["sender"]),
        (&json!("$link"), &json!(BOT)),
        "the envelope is kept"
    );

    alice.share(&mut server, &[BOT, ALICE]).await;
    bot.sync(&mut server).await;
    let command = alice.encrypted_event("$cmd", "!visio Point hebdo").await;
    let clear = bot.crypto.decrypt(ROOM, &command).await.expect("decrypted");
    assert_eq!(clear["content"]["body"], "!visio Point hebdo");
}

#[tokio::test]
async fn a_zero_one_time_key_count_makes_the_device_upload_more() {
    let mut server = FakeHomeserver::default();
    let bot = Device::new(BOT, "VISIOBOT").await;
    bot.settle(&mut server).await;
    let stocked = server.sync(BOT, "VISIOBOT");
    assert!(stocked.one_time_key_counts["signed_curve25519"] > 0);
    bot.crypto.receive(&stocked).await.expect("received");
    assert!(
        bot.crypto.outgoing_calls().await.expect("calls").is_empty(),
        "nothing to upload while the server has keys"
    );

    let empty = CryptoInput {
        one_time_key_counts: BTreeMap::from([("signed_curve25519".into(), 0)]),
        ..Default::default()
    };
    bot.crypto.receive(&empty).await.expect("received");
    let calls = bot.crypto.outgoing_calls().await.expect("calls");
    let upload = calls
        .iter()
        .find(|c| c.kind == CallKind::KeysUpload)
        .expect("a keys upload");
    assert_eq!(
        (upload.method, upload.path.as_str()),
        ("POST", "/_matrix/client/v3/keys/upload")
    );
    assert!(
        upload.body["one_time_keys"]
            .as_object()
            .is_some_and(|k| !k.is_empty()),
        "{}",
        upload.body
    );
}

#[tokio::test]
async fn an_event_whose_key_is_late_decrypts_when_the_key_arrives() {
    let mut server = FakeHomeserver::default();
    let (bot, alice) = two_devices(&mut server).await;
    alice.share(&mut server, &[BOT, ALICE]).await;
    let command = alice.encrypted_event("$early", "!visio").await;

    let Err(DecryptError::MissingKey {
        session_id,
        withheld,
    }) = bot.crypto.decrypt(ROOM, &command).await
    else {
        panic!("no key yet");
    };
    assert!(!withheld);
    assert_eq!(
        session_id,
        command["content"]["session_id"].as_str().expect("session")
    );

    let arrived = bot.sync(&mut server).await;
    assert!(
        arrived
            .iter()
            .any(|k| k.room_id == ROOM && k.session_id == session_id),
        "the arrival names the parked event's session: {arrived:?}"
    );
    let clear = bot
        .crypto
        .decrypt(ROOM, &command)
        .await
        .expect("now decrypted");
    assert_eq!(clear["content"]["body"], "!visio");
}

#[tokio::test]
async fn the_same_batch_fed_twice_still_decrypts() {
    let mut server = FakeHomeserver::default();
    let (bot, alice) = two_devices(&mut server).await;
    alice.share(&mut server, &[BOT, ALICE]).await;
    let batch = server.sync(BOT, "VISIOBOT");
    assert!(
        !batch.to_device.is_empty(),
        "the room key travels to-device"
    );
    bot.crypto.receive(&batch).await.expect("first time");
    bot.crypto
        .receive(&batch)
        .await
        .expect("again, as after a crash");
    let command = alice.encrypted_event("$1", "!visio statut").await;
    let clear = bot.crypto.decrypt(ROOM, &command).await.expect("decrypted");
    assert_eq!(clear["content"]["body"], "!visio statut");
}

#[tokio::test]
async fn a_member_who_left_cannot_read_the_next_message() {
    let mut server = FakeHomeserver::default();
    let (bot, alice) = two_devices(&mut server).await;
    let bruno = Device::new(BRUNO, "BRUNOLAPTOP").await;
    bruno.settle(&mut server).await;

    bot.share(&mut server, &[BOT, ALICE, BRUNO]).await;
    alice.sync(&mut server).await;
    bruno.sync(&mut server).await;
    let before = bot.encrypted_event("$1", "avant").await;
    assert!(bruno.crypto.decrypt(ROOM, &before).await.is_ok());

    bot.share(&mut server, &[BOT, ALICE]).await;
    alice.sync(&mut server).await;
    bruno.sync(&mut server).await;
    let after = bot.encrypted_event("$2", "après").await;
    assert_ne!(
        before["content"]["session_id"], after["content"]["session_id"],
        "the session rotated when Bruno left"
    );
    assert!(matches!(
        bruno.crypto.decrypt(ROOM, &after).await,
        Err(DecryptError::MissingKey { .. })
    ));
    let clear = alice
        .crypto
        .decrypt(ROOM, &after)
        .await
        .expect("Alice still reads");
    assert_eq!(clear["content"]["body"], "après");
}

#[tokio::test]
async fn a_forged_event_is_undecryptable_not_a_missing_key() {
    let bot = Crypto::in_memory(BOT, "VISIOBOT").await.expect("device");
    let forged = json!({
        "type": "m.room.encrypted", "event_id": "$x", "sender": ALICE,
        "origin_server_ts": 1, "room_id": ROOM,
        "content": {"algorithm": "m.olm.v9", "ciphertext": "nope"},
    });
    assert!(matches!(
        bot.decrypt(ROOM, &forged).await,
        Err(DecryptError::Undecryptable(_))
    ));
}

#[tokio::test]
async fn the_store_keeps_the_device_and_refuses_another_one() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("crypto");
    let first = Crypto::open(BOT, "VISIOBOT", &path, "phrase")
        .await
        .expect("created");
    let keys = first.identity_keys();
    drop(first);
    let again = Crypto::open(BOT, "VISIOBOT", &path, "phrase")
        .await
        .expect("reopened");
    assert_eq!(again.identity_keys(), keys, "same identity across restarts");
    drop(again);
    assert!(matches!(
        Crypto::open(BOT, "OTHERDEVICE", &path, "phrase").await,
        Err(CryptoError::Open(_))
    ));
}

#[test]
fn rotation_follows_the_rooms_encryption_event() {
    let rotation = Rotation::from_encryption_event(&json!({
        "algorithm": "m.megolm.v1.aes-sha2", "rotation_period_ms": 3_600_000,
        "rotation_period_msgs": 20,
    }));
    assert_eq!(
        rotation,
        Rotation {
            period: Duration::from_secs(3600),
            messages: 20
        }
    );
    assert_eq!(
        Rotation::from_encryption_event(&json!({"algorithm": "m.megolm.v1.aes-sha2"})),
        Rotation::default()
    );
}

#[tokio::test]
async fn cross_signing_keys_are_sealed_with_the_passphrase() {
    let bot = Crypto::in_memory("@visio:localhost", "TVBOT")
        .await
        .expect("machine");
    assert!(!bot.has_cross_signing_keys().await);
    assert!(
        bot.export_cross_signing("a passphrase of some length")
            .await
            .expect("export")
            .is_none(),
        "nothing to export before the identity exists"
    );
    let calls = bot.bootstrap_cross_signing().await.expect("bootstrap");
    let paths: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert!(
        paths.contains(&"/_matrix/client/v3/keys/device_signing/upload"),
        "{paths:?}"
    );
    assert!(
        calls
            .last()
            .is_some_and(|c| c.path.ends_with("/keys/signatures/upload")),
        "the device's signature goes last: {paths:?}"
    );
    assert!(bot.has_cross_signing_keys().await);
    let sealed = bot
        .export_cross_signing("a passphrase of some length")
        .await
        .expect("export")
        .expect("keys");
    let master = calls
        .iter()
        .find_map(|c| c.body.get("master_key"))
        .expect("the master key is uploaded");
    let public = master["keys"]
        .as_object()
        .expect("keys")
        .values()
        .next()
        .expect("one key");
    assert!(!sealed.contains(public.as_str().expect("base64")));
    let other = Crypto::in_memory("@visio:localhost", "TVNEW")
        .await
        .expect("machine");
    let err = other
        .import_cross_signing(&sealed, "another passphrase entirely")
        .await
        .expect_err("wrong passphrase");
    assert!(err.to_string().contains("cross-signing"), "{err}");
}

#[test]
fn encryption_input_is_read_from_sync_responses_and_transactions() {
    let sync = json!({
        "next_batch": "s1",
        "to_device": {"events": [{"type": "m.room.encrypted", "sender": "@a:x", "content": {}}]},
        "device_lists": {"changed": ["@a:x"], "left": ["@b:x"]},
        "device_one_time_keys_count": {"signed_curve25519": 12},
        "device_unused_fallback_key_types": ["signed_curve25519"],
    });
    let input = CryptoInput::from_sync(&sync);
    assert_eq!(input.to_device.len(), 1);
    assert_eq!(input.changed, ["@a:x"]);
    assert_eq!(input.left, ["@b:x"]);
    assert_eq!(input.one_time_key_counts["signed_curve25519"], 12);
    assert_eq!(
        input.unused_fallback_keys.as_deref(),
        Some(&["signed_curve25519".to_owned()][..])
    );
    assert_eq!(
        CryptoInput::from_sync(&json!({"next_batch": "s2"})),
        CryptoInput::default()
    );

    let transaction = json!({
        "events": [],
        "de.sorunome.msc2409.to_device": [
            {"type": "m.room.encrypted", "sender": "@a:x", "to_user_id": "@visio:x", "to_device_id": "TVBOT", "content": {}},
            {"type": "m.room.encrypted", "sender": "@a:x", "to_user_id": "@visio_g1:x", "to_device_id": "G", "content": {}},
            {"type": "m.room.encrypted", "sender": "@a:x", "to_user_id": "@visio:x", "to_device_id": "OLD", "content": {}},
        ],
        "org.matrix.msc3202.device_lists": {"changed": ["@a:x"], "left": []},
        "org.matrix.msc3202.device_one_time_keys_count": {"@visio:x": {"TVBOT": {"signed_curve25519": 3}}},
    });
    let ours =
        CryptoInput::from_transaction(&transaction, "@visio:x", Some("TVBOT")).expect("input");
    assert_eq!(ours.to_device.len(), 1, "only our device's messages");
    assert_eq!(ours.changed, ["@a:x"]);
    assert_eq!(ours.one_time_key_counts["signed_curve25519"], 3);
    let before_the_device =
        CryptoInput::from_transaction(&transaction, "@visio:x", None).expect("input");
    assert_eq!(
        before_the_device.to_device.len(),
        2,
        "the bot's user, any device"
    );
    assert_eq!(
        CryptoInput::from_transaction(&json!({"events": []}), "@visio:x", Some("TVBOT")),
        None
    );
}
