//! End-to-end encryption: the one module that owns it. matrix-sdk-crypto's `OlmMachine`
//! (vodozemac underneath) with its SQLite crypto store, driven by the project itself:
//! the caller feeds it what the homeserver says (to-device events, device-list changes,
//! one-time-key counts), sends the HTTP calls it asks for and reports their answers.
//!
//! matrix-sdk-crypto 0.18 speaks ruma 0.16 while the rest of the crate speaks 0.17, so
//! ruma 0.16's types never leave this file: everything crosses its boundary as JSON
//! ([`serde_json::Value`]) and plain strings.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use matrix_sdk_crypto::types::requests::{AnyIncomingResponse, AnyOutgoingRequest};
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, MegolmError,
    OlmMachine, TrustRequirement,
};
use ruma16::api::client::keys::{claim_keys, get_keys, upload_keys, upload_signatures};
use ruma16::api::client::sync::sync_events::DeviceLists;
use ruma16::api::client::to_device::send_event_to_device;
use ruma16::api::{IncomingResponse, MatrixVersion, OutgoingRequest, SupportedVersions};
use ruma16::events::AnyToDeviceEvent;
use ruma16::serde::Raw;
use ruma16::{
    OneTimeKeyAlgorithm, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;

/// Why the crypto core could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot open the crypto store: {0}")]
    Open(String),
    #[error("the crypto store failed: {0}")]
    Store(String),
    #[error("`{0}` is not a valid Matrix identifier")]
    BadId(String),
    #[error("malformed input from the homeserver: {0}")]
    Malformed(String),
    #[error("cannot encrypt for {room}: {reason}")]
    Encrypt { room: String, reason: String },
}

/// Why an encrypted room event was not decrypted.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The room key has not arrived (yet): keep the event and try again when it does.
    #[error("the room key (session {session_id}) has not arrived{}", if *.withheld { "; its sender withheld it" } else { "" })]
    MissingKey { session_id: String, withheld: bool },
    /// Nothing will ever decrypt it (forged, corrupt, or from an unknown algorithm).
    #[error("cannot decrypt: {0}")]
    Undecryptable(String),
    #[error(transparent)]
    Store(#[from] CryptoError),
}

/// An HTTP call the machine needs made, as our client makes any other: method, path
/// (with its query), JSON body. `id` and `kind` come back with the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CryptoCall {
    pub id: String,
    pub kind: CallKind,
    pub method: &'static str,
    pub path: String,
    pub body: serde_json::Value,
}

/// Which endpoint a [`CryptoCall`] is for, so its answer is read with the right type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    KeysUpload,
    KeysQuery,
    KeysClaim,
    ToDevice,
    SignatureUpload,
    /// A call whose answer the machine does not track (cross-signing set-up).
    Untracked,
}

/// What the homeserver said that concerns encryption, from a `/sync` response or an
/// appservice transaction (MSC2409/MSC3202), in the spec's JSON shapes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct CryptoInput {
    /// To-device events (`to_device.events`).
    #[serde(default)]
    pub to_device: Vec<serde_json::Value>,
    /// Users whose devices changed (`device_lists.changed`).
    #[serde(default)]
    pub changed: Vec<String>,
    /// Users we no longer share a room with (`device_lists.left`).
    #[serde(default)]
    pub left: Vec<String>,
    /// `device_one_time_keys_count`: algorithm → keys left on the server.
    #[serde(default)]
    pub one_time_key_counts: BTreeMap<String, u64>,
    /// `device_unused_fallback_key_types`; `None` when the server did not say.
    #[serde(default)]
    pub unused_fallback_keys: Option<Vec<String>>,
}

/// A room key that arrived: events of this session that waited can be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrivedKey {
    pub room_id: String,
    pub session_id: String,
}

/// Who receives a room's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recipients {
    /// Every device of every member (matrix-nio and older clients do not cross-sign).
    #[default]
    AllDevices,
    /// Only devices their owner cross-signed (`encryption.exclude_insecure_devices`).
    CrossSignedOnly,
}

/// How a room wants its keys rotated (`m.room.encryption`'s `rotation_period_ms` and
/// `rotation_period_msgs`; the spec's defaults when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub period: Duration,
    pub messages: u64,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(7 * 24 * 3600),
            messages: 100,
        }
    }
}

impl Rotation {
    /// From the content of `m.room.encryption`.
    pub fn from_encryption_event(content: &serde_json::Value) -> Self {
        let default = Self::default();
        Self {
            period: content
                .get("rotation_period_ms")
                .and_then(|v| v.as_u64())
                .map_or(default.period, Duration::from_millis),
            messages: content
                .get("rotation_period_msgs")
                .and_then(|v| v.as_u64())
                .unwrap_or(default.messages),
        }
    }
}

/// The device's identity keys, base64 as the spec writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityKeys {
    pub ed25519: String,
    pub curve25519: String,
}

/// One device's end-to-end encryption.
pub struct Crypto {
    machine: OlmMachine,
}

/// Paths and bodies are built by ruma for this base and read back without it.
const BASE: &str = "https://homeserver.invalid";

fn versions() -> SupportedVersions {
    SupportedVersions {
        versions: [MatrixVersion::V1_11].into(),
        features: Default::default(),
    }
}

fn user_id(raw: &str) -> Result<OwnedUserId, CryptoError> {
    UserId::parse(raw).map_err(|_| CryptoError::BadId(raw.to_owned()))
}

fn room_id(raw: &str) -> Result<OwnedRoomId, CryptoError> {
    RoomId::parse(raw).map_err(|_| CryptoError::BadId(raw.to_owned()))
}

fn store_err(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Store(e.to_string())
}

/// Turns one of ruma's typed requests into our plain call (the token is the client's
/// business, so ruma is given a dummy one and its header is dropped).
macro_rules! call {
    ($id:expr, $kind:expr, $request:expr) => {{
        let http = $request
            .try_into_http_request::<Vec<u8>>(
                BASE,
                ruma16::api::auth_scheme::SendAccessToken::Always("unused"),
                Cow::Owned(versions()),
            )
            .map_err(|e| CryptoError::Malformed(format!("cannot build a request: {e}")))?;
        let path = http
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let body = if http.body().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_slice(http.body())
                .map_err(|e| CryptoError::Malformed(format!("request body: {e}")))?
        };
        CryptoCall {
            id: $id,
            kind: $kind,
            method: method_name(http.method()),
            path,
            body,
        }
    }};
}

fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "POST",
    }
}

/// Reads an answer as the endpoint's typed response.
fn response<R: IncomingResponse>(body: &serde_json::Value) -> Result<R, CryptoError> {
    let bytes = serde_json::to_vec(body).expect("a JSON value always serialises");
    let http = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(bytes)
        .expect("a static response always builds");
    R::try_from_http_response(http)
        .map_err(|e| CryptoError::Malformed(format!("unexpected answer: {e}")))
}

impl Crypto {
    /// Opens the device's crypto store (SQLite, encrypted with `passphrase`), creating
    /// the device's keys on first use. Refuses a store made for another user or device:
    /// a device id is never reused with new keys.
    pub async fn open(
        user: &str,
        device: &str,
        store_path: &Path,
        passphrase: &str,
    ) -> Result<Self, CryptoError> {
        let store = matrix_sdk_sqlite::SqliteCryptoStore::open(store_path, Some(passphrase))
            .await
            .map_err(|e| CryptoError::Open(e.to_string()))?;
        let machine = OlmMachine::with_store(&user_id(user)?, device.into(), store, None)
            .await
            .map_err(|e| CryptoError::Open(e.to_string()))?;
        Ok(Self { machine })
    }

    /// A device whose keys live in memory only (tests).
    pub async fn in_memory(user: &str, device: &str) -> Result<Self, CryptoError> {
        Ok(Self {
            machine: OlmMachine::new(&user_id(user)?, device.into()).await,
        })
    }

    pub fn device_id(&self) -> String {
        self.machine.device_id().to_string()
    }

    pub fn identity_keys(&self) -> IdentityKeys {
        let keys = self.machine.identity_keys();
        IdentityKeys {
            ed25519: keys.ed25519.to_base64(),
            curve25519: keys.curve25519.to_base64(),
        }
    }

    /// Feeds what the homeserver said. Feeding the same input again is harmless (the
    /// machine de-duplicates to-device messages and keys), which is what lets the caller
    /// store the input with its events and feed it at least once across crashes.
    /// Returns the room keys that arrived.
    pub async fn receive(&self, input: &CryptoInput) -> Result<Vec<ArrivedKey>, CryptoError> {
        let to_device_events: Vec<Raw<AnyToDeviceEvent>> = input
            .to_device
            .iter()
            .map(|event| {
                Raw::from_json(
                    serde_json::value::to_raw_value(event).expect("a JSON value always serialises"),
                )
            })
            .collect();
        let mut changed_devices = DeviceLists::new();
        changed_devices.changed = input
            .changed
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        changed_devices.left = input
            .left
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .collect();
        let one_time_keys_counts: BTreeMap<OneTimeKeyAlgorithm, UInt> = input
            .one_time_key_counts
            .iter()
            .map(|(algorithm, count)| {
                (
                    OneTimeKeyAlgorithm::from(algorithm.as_str()),
                    UInt::new_saturating(*count),
                )
            })
            .collect();
        let fallback: Option<Vec<OneTimeKeyAlgorithm>> =
            input.unused_fallback_keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|k| OneTimeKeyAlgorithm::from(k.as_str()))
                    .collect()
            });
        let (_events, keys) = self
            .machine
            .receive_sync_changes(
                EncryptionSyncChanges {
                    to_device_events,
                    changed_devices: &changed_devices,
                    one_time_keys_counts: &one_time_keys_counts,
                    unused_fallback_keys: fallback.as_deref(),
                    next_batch_token: None,
                },
                &decryption_settings(),
            )
            .await
            .map_err(store_err)?;
        Ok(keys
            .into_iter()
            .map(|key| ArrivedKey {
                room_id: key.room_id.to_string(),
                session_id: key.session_id,
            })
            .collect())
    }

    /// The calls the machine wants made now (keys to upload, devices to query,
    /// to-device messages to send). Report each answer with [`Self::mark_sent`].
    pub async fn outgoing_calls(&self) -> Result<Vec<CryptoCall>, CryptoError> {
        let mut calls = Vec::new();
        for request in self.machine.outgoing_requests().await.map_err(store_err)? {
            let id = request.request_id().to_string();
            match request.request() {
                AnyOutgoingRequest::KeysUpload(r) => {
                    calls.push(call!(id, CallKind::KeysUpload, r.clone()))
                }
                AnyOutgoingRequest::KeysQuery(r) => {
                    let mut query = get_keys::v3::Request::new();
                    query.device_keys = r.device_keys.clone();
                    query.timeout = r.timeout;
                    calls.push(call!(id, CallKind::KeysQuery, query))
                }
                AnyOutgoingRequest::KeysClaim(r) => {
                    calls.push(call!(id, CallKind::KeysClaim, r.clone()))
                }
                AnyOutgoingRequest::ToDeviceRequest(r) => {
                    calls.push(to_device_call(r)?);
                }
                AnyOutgoingRequest::SignatureUpload(r) => {
                    calls.push(call!(id, CallKind::SignatureUpload, r.clone()))
                }
                // In-room verification is not something a bot starts; nothing to send.
                AnyOutgoingRequest::RoomMessage(_) => {}
            }
        }
        Ok(calls)
    }

    /// Reports the homeserver's answer to a call.
    pub async fn mark_sent(
        &self,
        call: &CryptoCall,
        answer: &serde_json::Value,
    ) -> Result<(), CryptoError> {
        let id: OwnedTransactionId = call.id.as_str().into();
        let result = match call.kind {
            CallKind::KeysUpload => {
                let r: upload_keys::v3::Response = response(answer)?;
                self.machine
                    .mark_request_as_sent(&id, AnyIncomingResponse::KeysUpload(&r))
                    .await
            }
            CallKind::KeysQuery => {
                let r: get_keys::v3::Response = response(answer)?;
                self.machine
                    .mark_request_as_sent(&id, AnyIncomingResponse::KeysQuery(&r))
                    .await
            }
            CallKind::KeysClaim => {
                let r: claim_keys::v3::Response = response(answer)?;
                self.machine
                    .mark_request_as_sent(&id, AnyIncomingResponse::KeysClaim(&r))
                    .await
            }
            CallKind::ToDevice => {
                let r: send_event_to_device::v3::Response = response(answer)?;
                self.machine
                    .mark_request_as_sent(&id, AnyIncomingResponse::ToDevice(&r))
                    .await
            }
            CallKind::SignatureUpload => {
                let r: upload_signatures::v3::Response = response(answer)?;
                self.machine
                    .mark_request_as_sent(&id, AnyIncomingResponse::SignatureUpload(&r))
                    .await
            }
            CallKind::Untracked => Ok(()),
        };
        result.map_err(store_err)
    }

    /// Makes sure every device of `members` can read what we encrypt next in `room`:
    /// returns the calls to make first (key queries, one-time-key claims, the room key
    /// itself as to-device messages), in order; when they are done (each reported with
    /// [`Self::mark_sent`]), call this again until it returns nothing, then
    /// [`Self::encrypt`]. A member who left is left out: the session is rotated so that
    /// they cannot read what follows.
    pub async fn prepare_room(
        &self,
        room: &str,
        members: &[String],
        recipients: Recipients,
        rotation: Rotation,
    ) -> Result<Vec<CryptoCall>, CryptoError> {
        let room = room_id(room)?;
        let members: Vec<OwnedUserId> = members
            .iter()
            .filter_map(|m| UserId::parse(m).ok())
            .collect();
        // Plain slices of references: an iterator built by a closure makes the future
        // not `Send` for every lifetime, which spawned workers need.
        let member_refs: Vec<&UserId> = members.iter().map(|m| &**m).collect();
        self.machine
            .update_tracked_users(member_refs.clone())
            .await
            .map_err(store_err)?;
        // Devices must be known before sessions can be claimed with them.
        let queries: Vec<CryptoCall> = self
            .outgoing_calls()
            .await?
            .into_iter()
            .filter(|c| matches!(c.kind, CallKind::KeysQuery | CallKind::KeysUpload))
            .collect();
        if !queries.is_empty() {
            return Ok(queries);
        }
        if let Some((id, claim)) = self
            .machine
            .get_missing_sessions(member_refs.clone().into_iter())
            .await
            .map_err(store_err)?
        {
            return Ok(vec![call!(id.to_string(), CallKind::KeysClaim, claim)]);
        }
        let settings = EncryptionSettings {
            rotation_period: rotation.period,
            rotation_period_msgs: rotation.messages,
            sharing_strategy: match recipients {
                Recipients::AllDevices => CollectStrategy::AllDevices,
                Recipients::CrossSignedOnly => CollectStrategy::IdentityBasedStrategy,
            },
            ..Default::default()
        };
        let shares = self
            .machine
            .share_room_key(&room, member_refs.clone().into_iter(), settings)
            .await
            .map_err(|e| CryptoError::Encrypt {
                room: room.to_string(),
                reason: e.to_string(),
            })?;
        shares.iter().map(|r| to_device_call(r)).collect()
    }

    /// Encrypts an event's content for `room` (after [`Self::prepare_room`]); returns
    /// the `m.room.encrypted` content to send.
    pub async fn encrypt(
        &self,
        room: &str,
        event_type: &str,
        content: &serde_json::Value,
    ) -> Result<serde_json::Value, CryptoError> {
        let room = room_id(room)?;
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(content).expect("a JSON value always serialises"),
        );
        let encrypted = self
            .machine
            .encrypt_room_event_raw(&room, event_type, &raw)
            .await
            .map_err(|e| CryptoError::Encrypt {
                room: room.to_string(),
                reason: e.to_string(),
            })?;
        serde_json::from_str(encrypted.content.json().get()).map_err(|e| CryptoError::Encrypt {
            room: room.to_string(),
            reason: e.to_string(),
        })
    }

    /// Decrypts an `m.room.encrypted` event of `room` (the whole event as received);
    /// returns the clear event (`type`, `content`, with the original's `event_id`,
    /// `sender`, `origin_server_ts` and `room_id`).
    pub async fn decrypt(
        &self,
        room: &str,
        event: &serde_json::Value,
    ) -> Result<serde_json::Value, DecryptError> {
        let room = room_id(room)?;
        let raw = Raw::from_json(
            serde_json::value::to_raw_value(event).expect("a JSON value always serialises"),
        );
        match self
            .machine
            .decrypt_room_event(&raw, &room, &decryption_settings())
            .await
        {
            Ok(decrypted) => {
                let mut clear: serde_json::Value =
                    serde_json::from_str(decrypted.event.json().get())
                        .map_err(|e| DecryptError::Undecryptable(e.to_string()))?;
                if let (Some(clear), Some(original)) = (clear.as_object_mut(), event.as_object()) {
                    for key in [
                        "event_id",
                        "sender",
                        "origin_server_ts",
                        "room_id",
                        "unsigned",
                    ] {
                        if let Some(value) = original.get(key) {
                            clear.entry(key).or_insert_with(|| value.clone());
                        }
                    }
                }
                Ok(clear)
            }
            Err(MegolmError::MissingRoomKey(withheld)) => Err(DecryptError::MissingKey {
                session_id: event
                    .pointer("/content/session_id")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                withheld: withheld.is_some(),
            }),
            Err(MegolmError::Store(e)) => Err(DecryptError::Store(store_err(e))),
            Err(e) => Err(DecryptError::Undecryptable(e.to_string())),
        }
    }
}

impl Crypto {
    /// Whether this device holds the private cross-signing keys of its user.
    pub async fn has_cross_signing_keys(&self) -> bool {
        self.machine.cross_signing_status().await.is_complete()
    }

    /// Creates the bot's cross-signing identity (master, self-signing and user-signing
    /// keys) and signs this device with it: the calls to make, in order. The homeserver
    /// takes a first identity without interactive authentication (MSC3967), and an
    /// appservice's replacement too (MSC4190).
    pub async fn bootstrap_cross_signing(&self) -> Result<Vec<CryptoCall>, CryptoError> {
        let requests = self
            .machine
            .bootstrap_cross_signing(false)
            .await
            .map_err(store_err)?;
        let mut calls = Vec::new();
        if let Some(upload) = &requests.upload_keys_req
            && let AnyOutgoingRequest::KeysUpload(r) = upload.request()
        {
            calls.push(call!(
                upload.request_id().to_string(),
                CallKind::KeysUpload,
                r.clone()
            ));
        }
        let keys = &requests.upload_signing_keys_req;
        let to_json = |key: &Option<matrix_sdk_crypto::types::CrossSigningKey>| {
            key.as_ref()
                .map(|k| serde_json::to_value(k).expect("a key always serialises"))
        };
        let mut body = serde_json::Map::new();
        for (name, key) in [
            ("master_key", to_json(&keys.master_key)),
            ("self_signing_key", to_json(&keys.self_signing_key)),
            ("user_signing_key", to_json(&keys.user_signing_key)),
        ] {
            if let Some(key) = key {
                body.insert(name.into(), key);
            }
        }
        calls.push(CryptoCall {
            id: "cross-signing-keys".into(),
            kind: CallKind::Untracked,
            method: "POST",
            path: "/_matrix/client/v3/keys/device_signing/upload".into(),
            body: body.into(),
        });
        calls.push(call!(
            "cross-signing-signatures".to_owned(),
            CallKind::Untracked,
            requests.upload_signatures_req.clone()
        ));
        Ok(calls)
    }

    /// The private cross-signing keys, encrypted with `passphrase` (to keep in our
    /// database, where a lost crypto store cannot take them along); `None` before
    /// [`Self::bootstrap_cross_signing`].
    pub async fn export_cross_signing(
        &self,
        passphrase: &str,
    ) -> Result<Option<String>, CryptoError> {
        let Some(export) = self
            .machine
            .export_cross_signing_keys()
            .await
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let keys = serde_json::json!({
            "master_key": export.master_key,
            "self_signing_key": export.self_signing_key,
            "user_signing_key": export.user_signing_key,
        });
        let cipher = matrix_sdk_store_encryption::StoreCipher::new().map_err(store_err)?;
        let sealed = serde_json::json!({
            "cipher": base64_encode(&cipher.export(passphrase).map_err(store_err)?),
            "keys": base64_encode(&cipher.encrypt_value(&keys).map_err(store_err)?),
        });
        Ok(Some(sealed.to_string()))
    }

    /// Takes back the cross-signing keys [`Self::export_cross_signing`] sealed, and
    /// signs this device with them: returns the signature upload to make. Our own
    /// identity must be known first (a key query for our user, see
    /// [`Self::track_own_user`]).
    pub async fn import_cross_signing(
        &self,
        sealed: &str,
        passphrase: &str,
    ) -> Result<Vec<CryptoCall>, CryptoError> {
        let sealed: serde_json::Value =
            serde_json::from_str(sealed).map_err(|e| CryptoError::Malformed(e.to_string()))?;
        let field = |name: &str| {
            sealed
                .get(name)
                .and_then(|v| v.as_str())
                .and_then(base64_decode)
                .ok_or_else(|| CryptoError::Malformed(format!("the kept keys lack `{name}`")))
        };
        let cipher =
            matrix_sdk_store_encryption::StoreCipher::import(passphrase, &field("cipher")?)
                .map_err(|e| CryptoError::Open(format!("the kept cross-signing keys: {e}")))?;
        let keys: serde_json::Value = cipher
            .decrypt_value(&field("keys")?)
            .map_err(|e| CryptoError::Open(format!("the kept cross-signing keys: {e}")))?;
        let seed = |name: &str| keys.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let export = matrix_sdk_crypto::store::types::CrossSigningKeyExport {
            master_key: seed("master_key"),
            self_signing_key: seed("self_signing_key"),
            user_signing_key: seed("user_signing_key"),
        };
        self.machine
            .import_cross_signing_keys(export)
            .await
            .map_err(|e| CryptoError::Open(format!("cannot import the cross-signing keys: {e}")))?;
        let own = self
            .machine
            .get_device(self.machine.user_id(), self.machine.device_id(), None)
            .await
            .map_err(store_err)?
            .ok_or_else(|| CryptoError::Store("our own device is not in the store".into()))?;
        let signature = own
            .verify()
            .await
            .map_err(|e| CryptoError::Store(format!("cannot sign our device: {e}")))?;
        Ok(vec![call!(
            "own-device-signature".to_owned(),
            CallKind::Untracked,
            signature
        )])
    }

    /// Asks the machine to query our own user's devices and identity (so that kept
    /// cross-signing keys can be checked against it).
    pub async fn track_own_user(&self) -> Result<(), CryptoError> {
        let own = self.machine.user_id().to_owned();
        self.machine
            .mark_all_tracked_users_as_dirty()
            .await
            .map_err(store_err)?;
        self.machine
            .update_tracked_users([own.as_ref()])
            .await
            .map_err(store_err)
    }

    /// Whether the room key of `session_id` in `room` has arrived.
    pub async fn has_room_key(&self, room: &str, session_id: &str) -> Result<bool, CryptoError> {
        let room = room_id(room)?;
        Ok(self
            .machine
            .store()
            .get_inbound_group_session(&room, session_id)
            .await
            .map_err(store_err)?
            .is_some())
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .ok()
}

fn decryption_settings() -> DecryptionSettings {
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

fn to_device_call(
    request: &matrix_sdk_crypto::types::requests::ToDeviceRequest,
) -> Result<CryptoCall, CryptoError> {
    let id = request.txn_id.to_string();
    let send = send_event_to_device::v3::Request::new_raw(
        request.event_type.clone(),
        request.txn_id.clone(),
        request.messages.clone(),
    );
    Ok(call!(id, CallKind::ToDevice, send))
}

pub mod device;
pub mod events;
pub mod outbound;
pub mod worker;

#[cfg(test)]
mod tests;
