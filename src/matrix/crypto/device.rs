//! The bot's device: created at first start (MSC4190, no login), its id kept in our
//! database, its keys in the crypto store. Makes the calls the crypto core asks for, as
//! that device, and feeds the core the encryption input stored by the sync loop or the
//! transaction intake. In a cluster every node has a device of its own (its crypto store
//! is local), all signed by the one cross-signing identity kept in the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use ruma::OwnedUserId;
use tokio::sync::Notify;

use super::{Crypto, CryptoCall, CryptoError, CryptoInput, Recipients};
use crate::config::Config;
use crate::matrix::client::{CallError, MatrixClient};
use crate::store::{self, Store, StoreError, crypto as stored};

/// Why the bot's device could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DeviceError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl DeviceError {
    /// Whether trying again later may succeed (the homeserver was away or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Call(e) => e.is_transient(),
            Self::Store(_) => true,
            Self::Crypto(_) => false,
        }
    }
}

/// Where the bot's device appears once it is ready (it needs the homeserver, which the
/// rest of the service can start without); `None` in the holder's place: encryption is
/// off.
pub type DeviceSlot = Arc<std::sync::OnceLock<Arc<BotDevice>>>;

/// The bot's device, shared by the workers that decrypt, encrypt and feed it.
pub struct BotDevice {
    pub crypto: Crypto,
    client: MatrixClient,
    pub store: Store,
    pub bot: OwnedUserId,
    pub device_id: String,
    /// The cluster node whose device this is (`None`: a single node): names its rows.
    pub node: Option<String>,
    pub recipients: Recipients,
    /// One caller at a time sends the core's requests: two would send a key query or a
    /// room key twice.
    calls: tokio::sync::Mutex<()>,
    /// Woken when encryption input was stored.
    pub input_wake: Arc<Notify>,
}

/// A new device id: never reused, so a lost crypto store never meets its old keys.
fn new_device_id() -> String {
    format!(
        "TV{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 8)
            .to_ascii_uppercase()
    )
}

impl BotDevice {
    /// Opens (or creates) the bot's device: the device id from our database, the keys
    /// from the crypto store. A crypto store that is missing or belongs to another
    /// device means the keys are gone: a new device replaces the old one (deleted at the
    /// homeserver), never the old id with new keys.
    ///
    /// `account_device`: in `mode: bot`, the device the account logged in with (the
    /// login made it; a lost store made the login take a new one).
    pub async fn start(
        config: &Config,
        store: Store,
        client: MatrixClient,
        account_device: Option<&str>,
    ) -> Result<Arc<Self>, DeviceError> {
        let bot = config.bot_user_id();
        let path = PathBuf::from(&config.encryption.store_path);
        let node = config.cluster.as_ref().map(|c| c.node_id.clone());
        let device_key = stored::per_node(stored::DEVICE_ID, node.as_deref());
        let mut conn = store.pool().acquire().await?;
        let mut known = stored::state(&mut conn, &device_key).await?;
        drop(conn);
        if let (None, Some(node)) = (&known, &node)
            && path.exists()
        {
            known = store.adopt_single_node_device(node).await?;
            if let Some(device) = &known {
                tracing::info!(device = %device, node = %node, "the single node's device is now this cluster node's");
            }
        }
        let (device_id, crypto) = match (account_device, known) {
            (Some(device), known) => {
                if known.as_deref() != Some(device) && path.exists() {
                    tracing::warn!(device, store = %path.display(), "the account's device changed; setting the old crypto store aside");
                    set_aside(&path);
                }
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        CryptoError::Open(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                let crypto =
                    Crypto::open(bot.as_str(), device, &path, &config.encryption.passphrase)
                        .await?;
                let mut conn = store.pool().acquire().await?;
                stored::set_state(&mut conn, &device_key, device).await?;
                (device.to_owned(), crypto)
            }
            (None, known) => match known {
                Some(device) if path.exists() => {
                    match Crypto::open(bot.as_str(), &device, &path, &config.encryption.passphrase)
                        .await
                    {
                        Ok(crypto) => (device, crypto),
                        Err(e) => {
                            tracing::error!(device = %device, error = %e, "the crypto store cannot be opened for our device; setting it aside and starting a new device");
                            set_aside(&path);
                            replace_device(
                                config,
                                &store,
                                &client,
                                &bot,
                                node.as_deref(),
                                Some(device),
                                &path,
                            )
                            .await?
                        }
                    }
                }
                Some(device) => {
                    tracing::warn!(device = %device, store = %path.display(), "the crypto store is missing: its keys are lost; a new device replaces the old one");
                    replace_device(
                        config,
                        &store,
                        &client,
                        &bot,
                        node.as_deref(),
                        Some(device),
                        &path,
                    )
                    .await?
                }
                None => {
                    if path.exists() {
                        tracing::warn!(store = %path.display(), "a crypto store without a device in the database; setting it aside");
                        set_aside(&path);
                    }
                    replace_device(config, &store, &client, &bot, node.as_deref(), None, &path)
                        .await?
                }
            },
        };
        let device = Arc::new(Self {
            crypto,
            client,
            store,
            bot,
            device_id,
            node,
            recipients: if config.encryption.exclude_insecure_devices {
                Recipients::CrossSignedOnly
            } else {
                Recipients::AllDevices
            },
            calls: tokio::sync::Mutex::new(()),
            input_wake: Arc::new(Notify::new()),
        });
        Ok(device)
    }

    /// The client the device's calls go through (as the bot).
    pub fn client(&self) -> &MatrixClient {
        &self.client
    }

    /// Makes one of the core's calls as this device and reports the answer.
    async fn make(&self, call: &CryptoCall) -> Result<(), DeviceError> {
        let answer = self
            .client
            .call_json(
                call.method,
                &call.path,
                Some(&call.body),
                None,
                Some(&self.device_id),
            )
            .await?;
        self.crypto.mark_sent(call, &answer).await?;
        Ok(())
    }

    /// Sends everything the core wants sent (key uploads, queries, to-device messages).
    pub async fn flush(&self) -> Result<(), DeviceError> {
        let _one_at_a_time = self.calls.lock().await;
        // A reply can make new requests (an upload after a count); a few rounds settle it.
        for _ in 0..4 {
            let calls = self.crypto.outgoing_calls().await?;
            if calls.is_empty() {
                return Ok(());
            }
            for call in &calls {
                self.make(call).await?;
            }
        }
        Ok(())
    }

    /// Shares the room key of `room` with `members`' devices, making the calls that
    /// takes; afterwards [`Crypto::encrypt`] may be called for the room.
    pub async fn share_room_key(
        &self,
        room: &str,
        members: &[String],
        rotation: super::Rotation,
    ) -> Result<(), DeviceError> {
        let _one_at_a_time = self.calls.lock().await;
        for _ in 0..8 {
            let calls = self
                .crypto
                .prepare_room(room, members, self.recipients, rotation)
                .await?;
            if calls.is_empty() {
                return Ok(());
            }
            for call in &calls {
                self.make(call).await?;
            }
        }
        Err(DeviceError::Crypto(CryptoError::Encrypt {
            room: room.to_owned(),
            reason: "the room key could not be shared after 8 rounds".into(),
        }))
    }

    /// Feeds stored encryption input to the core in arrival order, deleting each batch
    /// once taken (a crash in between feeds it again: harmless). Returns the sessions
    /// whose room key arrived.
    pub async fn feed_stored_input(&self) -> Result<Vec<String>, DeviceError> {
        let mut sessions = Vec::new();
        loop {
            let pending = self
                .store
                .pending_crypto_input(self.node.as_deref(), 50)
                .await?;
            if pending.is_empty() {
                return Ok(sessions);
            }
            for input in pending {
                match serde_json::from_str::<CryptoInput>(&input.json) {
                    Ok(parsed) => {
                        let keys = self.crypto.receive(&parsed).await?;
                        sessions.extend(keys.into_iter().map(|k| k.session_id));
                    }
                    Err(e) => {
                        tracing::warn!(seq = input.seq, error = %e, "skipping unreadable encryption input");
                    }
                }
                self.store.crypto_input_fed(input.seq).await?;
            }
        }
    }

    /// Makes sure the bot's device is signed by the bot's own cross-signing identity (so
    /// clients show it as verified by its owner): creates the identity at first start
    /// and keeps its private keys in our database, sealed with `passphrase`; a new
    /// device (the crypto store was lost) is signed with the kept keys, so the identity
    /// stays the same.
    ///
    /// In a cluster, nodes take turns (a lock in the database): the first creates the
    /// identity, the others find it kept and sign their own device with it.
    pub async fn cross_sign(&self, passphrase: &str) -> Result<(), DeviceError> {
        let lock = self.store.lock_cross_signing().await?;
        let signed = self.cross_sign_in_turn(passphrase).await;
        lock.release().await?;
        signed
    }

    async fn cross_sign_in_turn(&self, passphrase: &str) -> Result<(), DeviceError> {
        let mut conn = self.store.pool().acquire().await?;
        let kept = stored::state(&mut conn, stored::CROSS_SIGNING).await?;
        drop(conn);
        if self.crypto.has_cross_signing_keys().await {
            if kept.is_none() {
                self.keep_cross_signing(passphrase).await?;
            }
            return Ok(());
        }
        let _one_at_a_time = self.calls.lock().await;
        let calls = match &kept {
            Some(sealed) => {
                // The kept keys are checked against our identity as the server has it.
                self.crypto.track_own_user().await?;
                for call in self.crypto.outgoing_calls().await? {
                    self.make(&call).await?;
                }
                self.crypto.import_cross_signing(sealed, passphrase).await?
            }
            None => self.crypto.bootstrap_cross_signing().await?,
        };
        for call in &calls {
            self.make(call).await?;
        }
        drop(_one_at_a_time);
        if kept.is_none() {
            self.keep_cross_signing(passphrase).await?;
            tracing::info!("created the bot's cross-signing identity and signed its device");
        } else {
            tracing::info!(device = %self.device_id, "signed the new device with the kept cross-signing keys");
        }
        Ok(())
    }

    async fn keep_cross_signing(&self, passphrase: &str) -> Result<(), DeviceError> {
        if let Some(sealed) = self.crypto.export_cross_signing(passphrase).await? {
            let mut conn = self.store.pool().acquire().await?;
            stored::set_state(&mut conn, stored::CROSS_SIGNING, &sealed).await?;
        }
        Ok(())
    }

    /// Whether the homeserver holds our device's keys as we know them.
    pub async fn keys_on_server(&self) -> Result<bool, DeviceError> {
        let query = serde_json::json!({
            "device_keys": { self.bot.as_str(): [self.device_id] }
        });
        let answer = self
            .client
            .call_json(
                "POST",
                "/_matrix/client/v3/keys/query",
                Some(&query),
                None,
                Some(&self.device_id),
            )
            .await?;
        let ours = self.crypto.identity_keys();
        let key_id = format!("ed25519:{}", self.device_id);
        let on_server = answer
            .pointer(&format!(
                "/device_keys/{}/{}/keys",
                json_pointer_escape(self.bot.as_str()),
                json_pointer_escape(&self.device_id)
            ))
            .and_then(|keys| keys.get(&key_id))
            .and_then(|k| k.as_str());
        Ok(on_server == Some(ours.ed25519.as_str()))
    }

    /// The to-device long poll of `encryption.to_device: sync`: one `/sync` of the bot's
    /// device, filtered to encryption. Returns its `next_batch` and input.
    pub async fn sync_once(
        &self,
        since: Option<&str>,
        timeout: Duration,
    ) -> Result<(String, CryptoInput), DeviceError> {
        // Rooms, presence and account data are not wanted: the appservice receives the
        // rooms' events in its transactions.
        let filter = r#"{"room":{"rooms":[]},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;
        let (answer, next) = self
            .client
            .sync(filter, since, timeout, Some(&self.device_id))
            .await?;
        Ok((next, CryptoInput::from_sync(&answer)))
    }
}

/// Creates a device for the bot at the homeserver (MSC4190: no login, no access token),
/// records it, deletes the device it replaces, opens a fresh crypto store.
async fn replace_device(
    config: &Config,
    store: &Store,
    client: &MatrixClient,
    bot: &OwnedUserId,
    node: Option<&str>,
    old: Option<String>,
    path: &Path,
) -> Result<(String, Crypto), DeviceError> {
    let device_id = new_device_id();
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| CryptoError::Open(format!("cannot create {}: {e}", parent.display())))?;
    }
    let crypto = Crypto::open(
        bot.as_str(),
        &device_id,
        path,
        &config.encryption.passphrase,
    )
    .await?;
    let body = serde_json::json!({ "display_name": config.appservice.bot.displayname });
    client
        .call_json(
            "PUT",
            &format!("/_matrix/client/v3/devices/{device_id}"),
            Some(&body),
            None,
            None,
        )
        .await?;
    let mut conn = store.pool().acquire().await?;
    stored::set_state(
        &mut conn,
        &stored::per_node(stored::DEVICE_ID, node),
        &device_id,
    )
    .await?;
    drop(conn);
    tracing::info!(device = %device_id, node, "created the bot's device");
    if let Some(old) = old {
        match client
            .call_json(
                "DELETE",
                &format!("/_matrix/client/v3/devices/{old}"),
                Some(&serde_json::json!({})),
                None,
                None,
            )
            .await
        {
            Ok(_) | Err(CallError::Matrix { status: 404, .. }) => {
                tracing::info!(device = %old, "deleted the device whose keys were lost");
            }
            Err(e) => {
                tracing::warn!(device = %old, error = %e, "could not delete the device whose keys were lost; delete it by hand");
            }
        }
    }
    Ok((device_id, crypto))
}

/// Moves an unusable crypto store out of the way (kept for an administrator to inspect;
/// never used again).
fn set_aside(path: &Path) {
    let aside = path.with_extension(format!("lost-{}", crate::clock::now_ms()));
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(error = %e, "cannot move the unusable crypto store aside");
    }
}

fn json_pointer_escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// The strings of a JSON list (user ids); nothing for anything else.
fn string_list(value: Option<&serde_json::Value>) -> Vec<String> {
    value
        .and_then(|v| v.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl CryptoInput {
    /// The encryption fields of a `/sync` response.
    pub fn from_sync(sync: &serde_json::Value) -> Self {
        let strings = |pointer: &str| string_list(sync.pointer(pointer));
        Self {
            to_device: sync
                .pointer("/to_device/events")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default(),
            changed: strings("/device_lists/changed"),
            left: strings("/device_lists/left"),
            one_time_key_counts: sync
                .get("device_one_time_keys_count")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            unused_fallback_keys: sync
                .get("device_unused_fallback_key_types")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        }
    }

    /// The MSC2409/MSC3202 fields of an appservice transaction that concern `user`'s
    /// `device` (any of its devices while the device is not known yet: the bot has one);
    /// `None` when there are none.
    pub fn from_transaction(
        body: &serde_json::Value,
        user: &str,
        device: Option<&str>,
    ) -> Option<Self> {
        let for_us = |e: &serde_json::Value| {
            e.get("to_user_id").and_then(|u| u.as_str()) == Some(user)
                && device.is_none_or(|d| e.get("to_device_id").and_then(|v| v.as_str()) == Some(d))
        };
        let to_device: Vec<serde_json::Value> = body
            .get("de.sorunome.msc2409.to_device")
            .or_else(|| body.get("to_device"))
            .and_then(|v| v.as_array())
            .map(|events| events.iter().filter(|e| for_us(e)).cloned().collect())
            .unwrap_or_default();
        let lists = body
            .get("org.matrix.msc3202.device_lists")
            .or_else(|| body.get("device_lists"));
        let strings = |key: &str| string_list(lists.and_then(|l| l.get(key)));
        let ours = |key: &str| {
            let devices = body.get(key).and_then(|v| v.get(user))?;
            match device {
                Some(device) => devices.get(device).cloned(),
                None => devices.as_object()?.values().next().cloned(),
            }
        };
        let input = Self {
            to_device,
            changed: strings("changed"),
            left: strings("left"),
            one_time_key_counts: ours("org.matrix.msc3202.device_one_time_keys_count")
                .or_else(|| ours("org.matrix.msc3202.device_one_time_key_counts"))
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            unused_fallback_keys: ours("org.matrix.msc3202.device_unused_fallback_key_types")
                .and_then(|v| serde_json::from_value(v).ok()),
        };
        (input != Self::default()).then_some(input)
    }
}

/// Stores a sync response's encryption input for `node`'s device together with its
/// `next_batch`, in one database transaction: either both are kept or neither.
pub async fn store_sync_batch(
    store: &Store,
    node: Option<&str>,
    next_batch: &str,
    input: &CryptoInput,
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    if *input != CryptoInput::default() {
        let json = serde_json::to_string(input).expect("crypto input always serialises");
        stored::push_input(&mut tx, node, &json).await?;
    }
    stored::set_state(
        &mut tx,
        &stored::per_node(stored::SYNC_TOKEN, node),
        next_batch,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The sync token where `node`'s device's to-device stream stands.
pub async fn sync_token(store: &Store, node: Option<&str>) -> Result<Option<String>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    store::crypto::state(&mut conn, &stored::per_node(stored::SYNC_TOKEN, node)).await
}
