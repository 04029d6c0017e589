//! LiveKit-format access tokens: HS256 JWTs whose `iss` names an API key and whose
//! claims carry the participant's identity (`sub`), name, metadata, attributes and a
//! `video` grant. We issue them at the join endpoint and check them at `/rtc`; tokens
//! made by LiveKit's own SDKs and CLI with a configured key are accepted too.
//!
//! Claim names follow LiveKit's `ClaimGrants` / `VideoGrant` in livekit/protocol
//! `auth/grants.go` (JSON tags such as `roomJoin`, `canPublishData`,
//! `canPublishSources`, `canUpdateOwnMetadata`), and the Python SDK's
//! `livekit-api/livekit/api/access_token.py` (`sub` = identity, `iss` = API key, `nbf`,
//! `exp`; only HS256; empty values left out). As there, `canPublish` and `canSubscribe`
//! default to true when absent and `canPublishData` to `canPublish`, so they are
//! tri-state here. Unknown claims are ignored, as LiveKit's tools add new ones over time.
//!
//! Depends on `ids` only.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::ParticipantIdentity;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 10;

/// Lifetime of the tokens the join endpoint issues, in seconds: long enough to connect;
/// a connected participant gets fresh ones (LiveKit's `refresh_token`) for reconnects.
pub const JOIN_TOKEN_TTL_SECS: i64 = 10 * 60;

/// Longest a token may still be valid when presented, whoever made it: tokens minted
/// with a configured API key by LiveKit's tools default to 6 hours.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 6 * 60 * 60;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts holding JSON of the expected shape.
    #[error("the access token is malformed: {0}")]
    Malformed(String),
    /// The header names an algorithm other than HS256 (`none` included).
    #[error("the access token uses algorithm `{0}`; only HS256 is accepted")]
    WrongAlgorithm(String),
    /// `iss` is missing or names an API key that is not configured.
    #[error("the access token's API key (iss) is not configured here")]
    UnknownKey,
    /// The signature was not made with the secret of the key `iss` names.
    #[error("the access token's signature does not match its API key")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("the access token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// `exp` is further away than [`MAX_TOKEN_LIFETIME_SECS`].
    #[error(
        "the access token is valid for too long (at most {MAX_TOKEN_LIFETIME_SECS} seconds from now)"
    )]
    TooLong,
    /// The token grants `roomJoin` but `sub` holds no usable identity.
    #[error("the access token grants roomJoin without an identity (sub)")]
    MissingIdentity,
}

/// What a token says. Field names are LiveKit's JWT claim names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key whose secret signed the token.
    #[serde(default, deserialize_with = "null_as_default")]
    pub iss: String,
    /// The participant's identity.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub sub: String,
    /// Not before, seconds since the Unix epoch; 0 when absent.
    #[serde(default, deserialize_with = "numeric_date_or_zero")]
    pub nbf: i64,
    /// Expiry, seconds since the Unix epoch. Required.
    #[serde(deserialize_with = "numeric_date")]
    pub exp: i64,
    /// Display name.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub name: String,
    /// Free text the participant's metadata starts with.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub metadata: String,
    /// Participant attributes (key/value) set at join.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub attributes: BTreeMap<String, String>,
    /// Participant kind (`standard`, `agent`, `egress`, ...); empty means standard.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub video: VideoGrant,
}

/// What the holder may do with rooms, as LiveKit's `VideoGrant`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VideoGrant {
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub room_create: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub room_list: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub room_record: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub room_admin: bool,
    /// May join the room named in `room`.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub room_join: bool,
    /// The room (our meeting id) the join and admin rights apply to.
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub room: String,
    /// Absent means true; see [`VideoGrant::publish_allowed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// Absent means true; see [`VideoGrant::subscribe_allowed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    /// Absent means `can_publish`; see [`VideoGrant::publish_data_allowed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// Track sources that may be published (`camera`, `microphone`, `screen_share`,
    /// `screen_share_audio`); empty means all.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub can_publish_sources: Vec<String>,
    /// Absent means false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub can_update_own_metadata: Option<bool>,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub ingress_admin: bool,
    /// Not shown to the other participants.
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub hidden: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub recorder: bool,
    #[serde(skip_serializing_if = "is_false", deserialize_with = "null_as_default")]
    pub agent: bool,
}

impl VideoGrant {
    /// May publish tracks (LiveKit's `GetCanPublish`: absent means yes).
    pub fn publish_allowed(&self) -> bool {
        self.can_publish.unwrap_or(true)
    }

    /// May publish tracks from `source` (`camera`, `microphone`, `screen_share`, ...).
    pub fn source_allowed(&self, source: &str) -> bool {
        self.publish_allowed()
            && (self.can_publish_sources.is_empty()
                || self.can_publish_sources.iter().any(|s| s == source))
    }

    /// May subscribe to others' tracks (absent means yes).
    pub fn subscribe_allowed(&self) -> bool {
        self.can_subscribe.unwrap_or(true)
    }

    /// May send data packets, chat included (absent means whatever `canPublish` says).
    pub fn publish_data_allowed(&self) -> bool {
        self.can_publish_data
            .unwrap_or_else(|| self.publish_allowed())
    }

    /// May change its own name, metadata and attributes (absent means no).
    pub fn update_own_metadata_allowed(&self) -> bool {
        self.can_update_own_metadata.unwrap_or(false)
    }
}

impl Claims {
    /// The claims of a participant joining `room`: may publish, subscribe and send
    /// data, valid from `now_ms` for `ttl_secs`.
    pub fn participant(
        identity: &ParticipantIdentity,
        name: &str,
        room: &str,
        now_ms: i64,
        ttl_secs: i64,
    ) -> Self {
        let now = now_ms.div_euclid(1000);
        Self {
            sub: identity.as_str().to_owned(),
            name: name.to_owned(),
            nbf: now,
            exp: now.saturating_add(ttl_secs),
            video: VideoGrant {
                room_join: true,
                room: room.to_owned(),
                can_publish: Some(true),
                can_subscribe: Some(true),
                can_publish_data: Some(true),
                // What the page publishes; renames and its own attributes (a raised
                // hand), within the SFU's limits. Metadata stays the server's.
                can_publish_sources: ["camera", "microphone", "screen_share", "screen_share_audio"]
                    .map(String::from)
                    .to_vec(),
                can_update_own_metadata: Some(true),
                ..VideoGrant::default()
            },
            ..Self::default()
        }
    }

    /// The identity in `sub`, when it is one.
    pub fn identity(&self) -> Option<ParticipantIdentity> {
        ParticipantIdentity::parse(&self.sub).ok()
    }
}

/// Whether the claims let their holder join the LiveKit room `room`.
pub fn can_join(claims: &Claims, room: &str) -> bool {
    claims.video.room_join && !room.is_empty() && claims.video.room == room
}

/// Signs `claims` with HS256 as API key `api_key` (which goes into `iss`).
pub fn issue(api_key: &str, secret: &str, claims: &Claims) -> String {
    let claims = Claims {
        iss: api_key.to_owned(),
        ..claims.clone()
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 takes a key of any length and Claims serialise to JSON without fail")
}

/// Checks a token against the configured keys (API key → secret) at time `now_ms`
/// (milliseconds since the Unix epoch) and returns its claims. In order: the shape, the
/// algorithm (HS256 only), the key named by `iss`, the signature, `exp` and `nbf` with
/// [`LEEWAY_SECS`] of slack, and an identity when the token grants `roomJoin`.
pub fn verify(
    token: &str,
    keys: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<Claims, TokenError> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, payload, _signature] = parts[..] else {
        return Err(TokenError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let header: serde_json::Value = decode_json_part(header, "header")?;
    match header.get("alg").and_then(|alg| alg.as_str()) {
        Some("HS256") => {}
        Some(other) => return Err(TokenError::WrongAlgorithm(truncate(other, 32))),
        None => return Err(TokenError::WrongAlgorithm("(none given)".into())),
    }
    let unverified: serde_json::Value = decode_json_part(payload, "payload")?;
    let secret = unverified
        .get("iss")
        .and_then(|iss| iss.as_str())
        .and_then(|iss| keys.get(iss))
        .ok_or(TokenError::UnknownKey)?;

    let mut validation = Validation::new(Algorithm::HS256);
    // Times are checked below against `now_ms`; audiences are not used by LiveKit.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(
        token.trim(),
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm("not HS256".into()),
        _ => TokenError::Malformed(e.to_string()),
    })?
    .claims;

    let now = now_ms.div_euclid(1000);
    if claims.exp.saturating_add(LEEWAY_SECS) < now {
        return Err(TokenError::Expired);
    }
    if claims.nbf.saturating_sub(LEEWAY_SECS) > now {
        return Err(TokenError::NotYetValid);
    }
    if claims.exp.saturating_sub(now) > MAX_TOKEN_LIFETIME_SECS + LEEWAY_SECS {
        return Err(TokenError::TooLong);
    }
    if claims.video.room_join && claims.identity().is_none() {
        return Err(TokenError::MissingIdentity);
    }
    Ok(claims)
}

/// The API keys (name → secret) that sign and check access tokens. Never empty: without
/// configured keys, one random key lives as long as the process.
#[derive(Clone)]
pub struct SfuKeys {
    keys: BTreeMap<String, String>,
    /// The name of the key that signs (a key of `keys`).
    signing: String,
    generated: bool,
}

impl SfuKeys {
    /// The configured keys (`sfu.keys`) with `signing` (`sfu.signing_key`, validated to
    /// name one of them; empty for the only key), or one random key when there are none.
    pub fn from_config(configured: &BTreeMap<String, String>, signing: &str) -> Self {
        let Some((only, _)) = configured.first_key_value() else {
            return Self::generate();
        };
        let signing = if configured.contains_key(signing) {
            signing.to_owned()
        } else {
            // validate() requires a signing key when there are several.
            only.clone()
        };
        Self {
            keys: configured.clone(),
            signing,
            generated: false,
        }
    }

    /// One random key (`tchap-visio-<random>`, 256-bit hex secret) that only this process
    /// knows: fine for our own join tokens, but outside tools cannot mint tokens.
    pub fn generate() -> Self {
        use rand::Rng;
        let mut rng = rand::rng();
        let name = format!("tchap-visio-{}", hex::encode(rng.random::<[u8; 6]>()));
        let secret = hex::encode(rng.random::<[u8; 32]>());
        Self {
            keys: BTreeMap::from([(name.clone(), secret)]),
            signing: name,
            generated: true,
        }
    }

    /// Every key, for checking tokens.
    pub fn keys(&self) -> &BTreeMap<String, String> {
        &self.keys
    }

    /// Whether these keys were made at start because none were configured.
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// The key that signs the tokens we issue (`sfu.signing_key`, the newest).
    pub fn signing_key(&self) -> (&str, &str) {
        let secret = self
            .keys
            .get(&self.signing)
            .expect("the signing key is always one of the keys: from_config picks it among them");
        (&self.signing, secret)
    }

    /// Signs `claims` with the signing key.
    pub fn issue(&self, claims: &Claims) -> String {
        let (name, secret) = self.signing_key();
        issue(name, secret, claims)
    }

    /// Checks a token against every key; see [`verify`].
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        verify(token, &self.keys, now_ms)
    }
}

impl fmt::Debug for SfuKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SfuKeys")
            .field("names", &self.keys.keys().collect::<Vec<_>>())
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `null` reads as the default, as Go's `encoding/json` (LiveKit's server) treats it.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A JWT NumericDate: seconds, integer or not (RFC 7519 §2), truncated to whole seconds.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !value.is_finite() {
        return Err(serde::de::Error::custom("a NumericDate must be finite"));
    }
    // `as` saturates at the i64 bounds, which the leeway arithmetic then tolerates.
    Ok(value as i64)
}

fn numeric_date_or_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    match Option::<f64>::deserialize(deserializer)? {
        None => Ok(0),
        Some(value) if value.is_finite() => Ok(value as i64),
        Some(_) => Err(serde::de::Error::custom("a NumericDate must be finite")),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn decode_json_part(part: &str, what: &str) -> Result<serde_json::Value, TokenError> {
    let bytes = base64url_decode(part)
        .ok_or_else(|| TokenError::Malformed(format!("the {what} is not base64url")))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed(format!("the {what} is not JSON")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(TokenError::Malformed(format!(
            "the {what} is not a JSON object"
        )))
    }
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use; `None` for anything else. Used to
/// read the header before trusting anything, so an `alg` this crate's `Header` cannot
/// represent (`none`) is refused by name.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "APIkey1";
    const SECRET: &str = "secret-of-at-least-thirty-two-characters-0123";
    const NOW_MS: i64 = 1_750_000_000_000;
    const NOW: i64 = NOW_MS / 1000;

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY.to_owned(), SECRET.to_owned()),
            (
                "other".to_owned(),
                "another-secret-0123456789abcdef0123".to_owned(),
            ),
        ])
    }

    fn identity() -> ParticipantIdentity {
        ParticipantIdentity::parse("alice-abc").expect("valid")
    }

    fn participant() -> Claims {
        Claims::participant(&identity(), "Alice", "room12345678", NOW_MS, 3600)
    }

    fn base64url_encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header, payload and signature, for the shapes libraries refuse
    /// to make.
    fn raw_token(header: &serde_json::Value, payload: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{sig}",
            base64url_encode(header.to_string().as_bytes()),
            base64url_encode(payload.to_string().as_bytes())
        )
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(
                base64url_decode(&base64url_encode(&bytes)).as_deref(),
                Some(&bytes[..])
            );
        }
        assert_eq!(base64url_decode("a+b/"), None);
        assert_eq!(base64url_decode("abcde"), None);
        assert_eq!(base64url_decode("YQ=="), None);
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_claims() {
        let token = issue(KEY, SECRET, &participant());
        let claims = verify(&token, &keys(), NOW_MS).expect("valid");
        assert_eq!(claims.iss, KEY);
        assert_eq!(claims.sub, "alice-abc");
        assert_eq!(claims.name, "Alice");
        assert_eq!((claims.nbf, claims.exp), (NOW, NOW + 3600));
        assert_eq!(claims.identity(), Some(identity()));
        assert!(can_join(&claims, "room12345678"));
        assert!(!can_join(&claims, "another-room"));
        assert!(claims.video.publish_allowed());
        assert!(claims.video.subscribe_allowed());
        assert!(claims.video.publish_data_allowed());
        assert!(claims.video.update_own_metadata_allowed());
        assert!(claims.video.source_allowed("screen_share"));
        assert_eq!(
            claims,
            Claims {
                iss: KEY.into(),
                ..participant()
            }
        );
    }

    #[test]
    fn issued_tokens_use_livekit_claim_names() {
        let token = issue(KEY, SECRET, &participant());
        let payload = token.split('.').nth(1).expect("payload");
        let json: serde_json::Value =
            serde_json::from_slice(&base64url_decode(payload).expect("b64")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "iss": KEY, "sub": "alice-abc", "name": "Alice", "nbf": NOW, "exp": NOW + 3600,
                "video": {
                    "roomJoin": true, "room": "room12345678",
                    "canPublish": true, "canSubscribe": true, "canPublishData": true,
                    "canPublishSources": ["camera", "microphone", "screen_share", "screen_share_audio"],
                    "canUpdateOwnMetadata": true
                }
            })
        );
    }

    #[test]
    fn a_token_made_the_way_livekit_sdks_make_it_is_accepted() {
        // As livekit-api's AccessToken.to_jwt: header {"alg":"HS256"} only (jose's
        // SignJWT), camelCase grants, empty values left out, plus claims we do not use.
        let header = Header {
            typ: None,
            ..Header::new(Algorithm::HS256)
        };
        let payload = serde_json::json!({
            "name": "Agent Smith",
            "kind": "agent",
            "metadata": "{\"role\":\"transcriber\"}",
            "attributes": {"lang": "fr"},
            "video": {
                "roomJoin": true, "room": "room12345678", "canPublish": false,
                "canSubscribe": true, "canPublishSources": ["microphone"],
                "hidden": true, "futureGrant": 7, "destinationRoom": "x"
            },
            "sip": {"admin": false, "call": false},
            "roomConfig": {"maxParticipants": 4},
            "sha256": "abc",
            "sub": "agent-1",
            "iss": KEY,
            "nbf": NOW - 5,
            "exp": NOW + 21600,
        });
        let token = jsonwebtoken::encode(
            &header,
            &payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert!(token.starts_with("eyJhbGciOiJIUzI1NiJ9."), "{token}");
        let claims = verify(&token, &keys(), NOW_MS).expect("accepted");
        assert_eq!(claims.sub, "agent-1");
        assert_eq!(claims.kind, "agent");
        assert_eq!(
            claims.attributes.get("lang").map(String::as_str),
            Some("fr")
        );
        assert!(can_join(&claims, "room12345678"));
        assert!(claims.video.hidden);
        assert!(!claims.video.publish_allowed());
        assert!(
            !claims.video.source_allowed("microphone"),
            "canPublish false wins"
        );
        assert!(!claims.video.publish_data_allowed(), "follows canPublish");
        assert!(claims.video.subscribe_allowed());
    }

    #[test]
    fn absent_grants_default_as_livekit_does() {
        let grant = VideoGrant::default();
        assert!(grant.publish_allowed() && grant.subscribe_allowed());
        assert!(grant.publish_data_allowed());
        assert!(!grant.update_own_metadata_allowed());
        let sources = VideoGrant {
            can_publish_sources: vec!["camera".into()],
            ..VideoGrant::default()
        };
        assert!(sources.source_allowed("camera"));
        assert!(!sources.source_allowed("screen_share"));
    }

    #[test]
    fn nulls_and_fractional_dates_are_tolerated() {
        let payload = serde_json::json!({
            "iss": KEY, "sub": "bob", "exp": (NOW + 60) as f64 + 0.5, "nbf": null,
            "name": null, "attributes": null,
            "video": {"roomJoin": true, "room": "r", "hidden": null, "canPublish": null}
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        let claims = verify(&token, &keys(), NOW_MS).expect("accepted");
        assert_eq!((claims.nbf, claims.exp), (0, NOW + 60));
        assert!(claims.video.publish_allowed());
    }

    #[test]
    fn expiry_and_not_before_are_checked_with_leeway() {
        let mut claims = participant();
        claims.exp = NOW - LEEWAY_SECS - 1;
        claims.nbf = NOW - 7200;
        let token = issue(KEY, SECRET, &claims);
        assert_eq!(verify(&token, &keys(), NOW_MS), Err(TokenError::Expired));
        claims.exp = NOW - LEEWAY_SECS + 1;
        let token = issue(KEY, SECRET, &claims);
        assert!(verify(&token, &keys(), NOW_MS).is_ok(), "within leeway");

        let mut claims = participant();
        claims.nbf = NOW + LEEWAY_SECS + 5;
        let token = issue(KEY, SECRET, &claims);
        assert_eq!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::NotYetValid)
        );
        claims.nbf = NOW + LEEWAY_SECS - 1;
        let token = issue(KEY, SECRET, &claims);
        assert!(verify(&token, &keys(), NOW_MS).is_ok(), "within leeway");

        // A token minted elsewhere for a year, or with no end: refused.
        let mut claims = participant();
        for exp in [NOW + 365 * 24 * 3600, i64::MAX] {
            claims.exp = exp;
            let token = issue(KEY, SECRET, &claims);
            assert_eq!(verify(&token, &keys(), NOW_MS), Err(TokenError::TooLong));
        }
        claims.exp = NOW + MAX_TOKEN_LIFETIME_SECS;
        let token = issue(KEY, SECRET, &claims);
        assert!(verify(&token, &keys(), NOW_MS).is_ok(), "as long as ours");

        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": KEY, "sub": "a", "video": {}}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert!(matches!(
            verify(&no_exp, &keys(), NOW_MS),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_keys_and_wrong_secrets_are_refused() {
        let token = issue("nobody", SECRET, &participant());
        assert_eq!(verify(&token, &keys(), NOW_MS), Err(TokenError::UnknownKey));
        let token = issue(KEY, "a-different-secret-0123456789abcdef", &participant());
        assert_eq!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::BadSignature)
        );
        // Signed with another configured key's secret but naming this one.
        let token = issue(KEY, &keys()["other"], &participant());
        assert_eq!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::BadSignature)
        );
        // The payload changed after signing.
        let token = issue(KEY, SECRET, &participant());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = serde_json::json!({
            "iss": KEY, "sub": "mallory", "exp": NOW + 60,
            "video": {"roomJoin": true, "room": "room12345678", "roomAdmin": true}
        });
        parts[1] = base64url_encode(forged.to_string().as_bytes());
        assert_eq!(
            verify(&parts.join("."), &keys(), NOW_MS),
            Err(TokenError::BadSignature)
        );
        let no_iss = raw_token(
            &serde_json::json!({"alg": "HS256"}),
            &serde_json::json!({"sub": "a", "exp": NOW + 60}),
            "AAAA",
        );
        assert_eq!(
            verify(&no_iss, &keys(), NOW_MS),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn other_algorithms_are_refused_by_name() {
        let payload = serde_json::json!({
            "iss": KEY, "sub": "a", "exp": NOW + 60, "video": {"roomJoin": true, "room": "r"}
        });
        for alg in ["none", "None", "RS256", "ES256", "HS512"] {
            let token = raw_token(&serde_json::json!({"alg": alg, "typ": "JWT"}), &payload, "");
            assert_eq!(
                verify(&token, &keys(), NOW_MS),
                Err(TokenError::WrongAlgorithm(alg.into())),
                "{alg}"
            );
        }
        // A real HS512 signature with the right secret is still refused.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert_eq!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::WrongAlgorithm("HS512".into()))
        );
        let no_alg = raw_token(&serde_json::json!({"typ": "JWT"}), &payload, "");
        assert!(matches!(
            verify(&no_alg, &keys(), NOW_MS),
            Err(TokenError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let good = issue(KEY, SECRET, &participant());
        let (head, rest) = good.split_once('.').expect("parts");
        let cases = [
            String::new(),
            "abc".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!!.???.###".into(),
            format!("{head}.{rest}.extra"),
            format!("{}.{rest}", base64url_encode(b"not json")),
            format!("{}.{rest}", base64url_encode(b"[1,2]")),
            format!("{head}.{}.sig", base64url_encode(b"{\"iss\":")),
            format!("{head}.e30"),
            "\u{0}.\u{1}.\u{2}".into(),
        ];
        for token in cases {
            assert!(
                matches!(
                    verify(&token, &keys(), NOW_MS),
                    Err(TokenError::Malformed(_) | TokenError::UnknownKey)
                ),
                "{token:?}"
            );
        }
        // Well signed, but a claim of the wrong type.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": KEY, "sub": "a", "exp": "tomorrow"}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert!(matches!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn room_join_needs_an_identity() {
        let mut claims = participant();
        claims.sub = String::new();
        let token = issue(KEY, SECRET, &claims);
        assert_eq!(
            verify(&token, &keys(), NOW_MS),
            Err(TokenError::MissingIdentity)
        );
        // Without roomJoin (a server-side token) no identity is needed, and it joins nothing.
        claims.video = VideoGrant {
            room_list: true,
            ..VideoGrant::default()
        };
        let token = issue(KEY, SECRET, &claims);
        let verified = verify(&token, &keys(), NOW_MS).expect("valid");
        assert!(!can_join(&verified, "room12345678"));
        assert!(!can_join(&verified, ""));
    }

    #[test]
    fn sfu_keys_sign_with_the_named_key_and_hide_secrets() {
        let configured = SfuKeys::from_config(&keys(), KEY);
        assert!(!configured.is_generated());
        assert_eq!(configured.signing_key().0, KEY);
        // The newest key signs once named, whatever its name's order; the older still verifies.
        let newest = keys().into_keys().find(|k| k != KEY).expect("a second key");
        let rotated = SfuKeys::from_config(&keys(), &newest);
        assert_eq!(rotated.signing_key().0, newest);
        let old_token = configured.issue(&participant());
        assert!(rotated.verify(&old_token, NOW_MS).is_ok());
        let token = configured.issue(&participant());
        assert_eq!(configured.verify(&token, NOW_MS).expect("valid").iss, KEY);
        assert!(!format!("{configured:?}").contains(SECRET));

        let generated = SfuKeys::from_config(&BTreeMap::new(), "");
        assert!(generated.is_generated());
        assert_eq!(generated.keys().len(), 1);
        let (name, secret) = generated.signing_key();
        assert!(name.starts_with("tchap-visio-"));
        assert_eq!(secret.len(), 64);
        assert_ne!(SfuKeys::generate().signing_key().1, secret);
        let token = generated.issue(&participant());
        assert!(generated.verify(&token, NOW_MS).is_ok());
        assert_eq!(
            configured.verify(&token, NOW_MS),
            Err(TokenError::UnknownKey)
        );
    }
}
