//! Typed configuration: loading (YAML file + `TCHAP_VISIO_*` environment overrides),
//! defaults, and `validate()`, whose messages name the bad key and say how to fix it.
//! Split: `addr` (IP addresses read at load), `validate` (the checks), `tests`. Depends on
//! nothing else in the crate.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use ruma::OwnedServerName;
use serde::{Deserialize, Serialize};

mod addr;
pub use addr::HttpUrl;
mod validate;

/// Prefix of environment variables that override config keys (`TCHAP_VISIO_DATABASE__URI`).
pub const ENV_PREFIX: &str = "TCHAP_VISIO_";

/// Top-level keys; other `TCHAP_VISIO_*` variables (a test harness's, say) are not config.
const SECTIONS: &[&str] = &[
    "homeserver",
    "appservice",
    "database",
    "permissions",
    "sfu",
    "meetings",
    "language",
    "logging",
    "webhooks",
    "encryption",
    "mode",
    "bot_account",
    "metrics",
    "cluster",
];

/// Value the example config holds until `generate-registration` writes real tokens.
pub const TOKEN_PLACEHOLDER: &str = "This value is generated when generating the registration";

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or a key had the wrong type.
    #[error("cannot load the configuration: {0}")]
    Load(String),
    /// A key holds a value that cannot work; the message names the key and the fix.
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub homeserver: HomeserverConfig,
    pub appservice: AppserviceConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub permissions: BTreeMap<String, PermissionLevel>,
    #[serde(default)]
    pub sfu: SfuConfig,
    #[serde(default)]
    pub meetings: MeetingsConfig,
    #[serde(default)]
    pub language: Language,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Receivers of signed meeting events.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// End-to-end encryption (Tchap's rooms are encrypted by default).
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// How the service meets the homeserver: as an application service, or as an
    /// ordinary account where appservices are refused.
    #[serde(default)]
    pub mode: Mode,
    /// The account of `mode: bot`.
    #[serde(default)]
    pub bot_account: BotAccountConfig,
    /// Where `/metrics` is served: its own listener, never the public port.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Per-address and per-meeting limits on the public endpoints.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Element Call's focus: lk-jwt-service's endpoints and MSC4195's token endpoint.
    #[serde(default)]
    pub element_call: ElementCallConfig,
    /// Several nodes on one PostgreSQL database; absent: one node, as always.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// This node's place in a cluster (docs/admin.md, "Clustering").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster and stable across restarts (a
    /// container's hostname changes with each new container, so it is never guessed).
    #[serde(default)]
    pub node_id: String,
    /// This node's own base URL for signalling and media, where the load balancer's
    /// `appservice.public_address` is shared by all nodes.
    #[serde(default)]
    pub node_url: Option<HttpUrl>,
    /// Seconds between two heartbeats; a node missing three is dead, and a leader whose
    /// lock connection stays silent as long loses it.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Seconds SIGTERM waits for this node's participants to leave once it drains,
    /// before it stops anyway (they then rejoin on another node).
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
}

fn default_heartbeat_secs() -> u64 {
    2
}

fn default_drain_timeout_secs() -> u64 {
    600
}

impl ClusterConfig {
    /// Time between two heartbeats.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.heartbeat_secs)
    }

    /// How long SIGTERM waits for this node's meetings.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_timeout_secs)
    }
}

/// The service as a homeserver's MatrixRTC focus (docs/element-call.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ElementCallConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Servers whose users may publish; everyone else joined to the room only watches
    /// and listens. Empty means the homeserver's own domain.
    #[serde(default)]
    pub publish_servers: Vec<String>,
    /// Seconds a call token lets its holder connect; connected participants get fresh
    /// ones at half this.
    #[serde(default = "default_join_token_ttl_secs")]
    pub token_ttl_secs: i64,
    /// Post « Appel en cours » in the room (rooms the bot is in) and a summary in its
    /// thread when the call ends.
    #[serde(default = "default_true")]
    pub thread: bool,
    /// Seconds between checks that connected participants of calls in rooms the bot is
    /// not in are still members (MSC4502; in the bot's rooms a departure acts at once).
    #[serde(default = "default_membership_check_secs")]
    pub membership_check_secs: u64,
}

fn default_membership_check_secs() -> u64 {
    15
}

impl Default for ElementCallConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            publish_servers: Vec::new(),
            token_ttl_secs: default_join_token_ttl_secs(),
            thread: true,
            membership_check_secs: default_membership_check_secs(),
        }
    }
}

impl ElementCallConfig {
    /// The servers whose users may publish (the homeserver's own when none are set).
    pub fn publishers(&self, own: &str) -> Vec<String> {
        if self.publish_servers.is_empty() {
            vec![own.to_owned()]
        } else {
            self.publish_servers.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (its last address);
    /// from anyone else the header is ignored, so it cannot be forged.
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The address `/metrics` listens on: loopback by default (or a private network the
    /// collector reaches).
    #[serde(default = "default_hostname", deserialize_with = "addr::listen_ip")]
    pub hostname: IpAddr,
    #[serde(default = "default_metrics_port")]
    pub port: u16,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hostname: default_hostname(),
            port: default_metrics_port(),
        }
    }
}

fn default_metrics_port() -> u16 {
    29331
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Registered with the homeserver (`generate-registration`): transactions push
    /// events, ghosts speak for meeting guests.
    #[default]
    Appservice,
    /// An ordinary account that logs in and runs `/sync`; the bot speaks for guests.
    Bot,
}

/// The ordinary account of `mode: bot`: a password (the service logs in, keeping its
/// device across restarts), or an access token with its device.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BotAccountConfig {
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub access_token: String,
    #[serde(default)]
    pub device_id: String,
}

// Neither the password nor the token reaches a log through `{:?}`.
impl std::fmt::Debug for BotAccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("BotAccountConfig")
            .field("user_id", &self.user_id)
            .field("password", &hidden(&self.password))
            .field("access_token", &hidden(&self.access_token))
            .field("device_id", &self.device_id)
            .finish()
    }
}

/// Where the bot device's encryption input (to-device messages, device-list changes,
/// one-time-key counts) comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToDeviceSource {
    /// The bot's device runs its own `/sync`, filtered to encryption: nothing is lost
    /// while the service is down.
    #[default]
    Sync,
    /// Appservice transactions (MSC2409/MSC3202): Synapse drops the to-device messages
    /// of transactions that failed or were caught up (element-hq/synapse#14710).
    Transactions,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Read and write encrypted rooms; `false`: the bot says once that it cannot.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub to_device: ToDeviceSource,
    /// Encrypts the crypto store and the exported cross-signing keys. Written by
    /// `generate-registration`; never change it once the service has started.
    #[serde(default)]
    pub passphrase: String,
    /// Share room keys only with devices their owner cross-signed.
    #[serde(default)]
    pub exclude_insecure_devices: bool,
    /// The crypto store (a directory holding matrix-sdk-crypto's SQLite database): the
    /// bot device's keys. Keep it on a persistent volume; never restore it from a backup.
    #[serde(default = "default_crypto_store")]
    pub store_path: String,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            to_device: ToDeviceSource::default(),
            passphrase: String::new(),
            exclude_insecure_devices: false,
            store_path: default_crypto_store(),
        }
    }
}

// The passphrase never reaches a log through `{:?}`.
impl std::fmt::Debug for EncryptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionConfig")
            .field("enabled", &self.enabled)
            .field("to_device", &self.to_device)
            .field("passphrase", &"***")
            .field("exclude_insecure_devices", &self.exclude_insecure_devices)
            .field("store_path", &self.store_path)
            .finish()
    }
}

fn default_true() -> bool {
    true
}

fn default_crypto_store() -> String {
    "data/crypto-store".into()
}

/// One webhook receiver.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// Key of the HMAC-SHA256 signature; the receiver knows it too.
    pub secret: String,
}

/// Shortest webhook secret accepted (as for `sfu.keys`: 256 bits in hex).
pub const WEBHOOK_SECRET_MIN_LEN: usize = 32;

// The secret never reaches a log through `{:?}`.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"***")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeserverConfig {
    /// Base URL of the homeserver's client-server API.
    pub address: HttpUrl,
    /// The homeserver's server name.
    #[serde(deserialize_with = "addr::server_name")]
    pub domain: OwnedServerName,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    #[serde(default = "default_id")]
    pub id: String,
    /// URL the homeserver uses to reach us.
    pub address: HttpUrl,
    /// The local address the HTTP server listens on; `localhost` reads as 127.0.0.1.
    #[serde(default = "default_hostname", deserialize_with = "addr::listen_ip")]
    pub hostname: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Public base URL of join links.
    pub public_address: HttpUrl,
    pub as_token: String,
    pub hs_token: String,
    #[serde(default = "default_username_template")]
    pub username_template: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The registration's `sender_localpart`: a user of ours nobody sees, since Synapse
    /// refuses `/sync` to it. Written by `generate-registration`; empty (older installs):
    /// the bot's username.
    #[serde(default)]
    pub sender_localpart: String,
    #[serde(default)]
    pub bot: BotConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    #[serde(default = "default_bot_username")]
    pub username: String,
    #[serde(default = "default_bot_displayname")]
    pub displayname: String,
    #[serde(default)]
    pub avatar: String,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            username: default_bot_username(),
            displayname: default_bot_displayname(),
            avatar: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_database_uri")]
    pub uri: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            uri: default_database_uri(),
            max_connections: default_max_connections(),
        }
    }
}

/// What a user may do with the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PermissionLevel {
    /// Ignored: invites are refused, commands get a refusal.
    None,
    /// May invite the bot and start meetings.
    User,
    /// May also end any meeting.
    Admin,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub credential: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SfuConfig {
    #[serde(default = "default_udp_port")]
    pub udp_port: u16,
    #[serde(default = "default_tcp_port")]
    pub tcp_port: u16,
    /// The address the media ports listen on: all interfaces by default.
    #[serde(
        default = "default_media_bind_ip",
        deserialize_with = "addr::media_bind_ip"
    )]
    pub bind_ip: IpAddr,
    /// The address announced to clients (NAT); empty in the file: none.
    #[serde(
        default,
        deserialize_with = "addr::advertised_ip",
        serialize_with = "addr::serialize_optional_ip"
    )]
    pub advertised_ip: Option<IpAddr>,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// The key of `keys` that signs the tokens we issue (the newest); required when
    /// there are several.
    #[serde(default)]
    pub signing_key: String,
    #[serde(default = "default_node_participants")]
    pub max_participants: u32,
    /// Media engines, each a thread with its own UDP port (`udp_port`, `udp_port + 1`,
    /// ...); 0: one per core.
    #[serde(default)]
    pub shards: u32,
}

impl SfuConfig {
    /// The shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(crate::sfu::shards::MAX_SHARDS),
            n => n as usize,
        }
    }
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            udp_port: default_udp_port(),
            tcp_port: default_tcp_port(),
            bind_ip: default_media_bind_ip(),
            advertised_ip: None,
            ice_servers: Vec::new(),
            keys: BTreeMap::new(),
            signing_key: String::new(),
            max_participants: default_node_participants(),
            shards: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingsConfig {
    #[serde(default = "default_grace_period_secs")]
    pub grace_period_secs: u64,
    #[serde(default = "default_max_participants")]
    pub max_participants: u32,
    /// Least room power level that may end a meeting (its creator always may).
    #[serde(default = "default_end_power_level")]
    pub end_power_level: i64,
    /// Also set an `im.vector.modular.widgets` widget in the room (Element clients).
    #[serde(default)]
    pub widget: bool,
    /// Mirror the room's main timeline into the meeting chat while a meeting runs (the
    /// meeting's thread is always mirrored).
    #[serde(default)]
    pub mirror_room_timeline: bool,
    /// IANA time zone of the times in notices and summaries.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Access level of new meetings started from a room: `public`, `trusted` or
    /// `members` (moderators change it with `!visio accès`).
    #[serde(default)]
    pub default_access: crate::meeting::AccessLevel,
    /// Servers whose users never enter a meeting of a room whose Tchap access rule is
    /// `restricted` (Tchap's externs: `agent.externe.tchap.gouv.fr`).
    #[serde(default)]
    pub external_servers: Vec<String>,
    /// Seconds a join token lets its holder connect; connected participants get fresh
    /// ones at half this (LiveKit's `refresh_token`).
    #[serde(default = "default_join_token_ttl_secs")]
    pub join_token_ttl_secs: i64,
}

fn default_join_token_ttl_secs() -> i64 {
    crate::auth::token::JOIN_TOKEN_TTL_SECS
}

impl Default for MeetingsConfig {
    fn default() -> Self {
        Self {
            grace_period_secs: default_grace_period_secs(),
            max_participants: default_max_participants(),
            end_power_level: default_end_power_level(),
            widget: false,
            mirror_room_timeline: false,
            timezone: default_timezone(),
            default_access: crate::meeting::AccessLevel::default(),
            external_servers: Vec::new(),
            join_token_ttl_secs: default_join_token_ttl_secs(),
        }
    }
}

fn default_end_power_level() -> i64 {
    50
}

fn default_timezone() -> String {
    "Europe/Paris".into()
}

/// Language of every text users see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Fr,
    En,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub json: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            json: false,
        }
    }
}

fn default_id() -> String {
    "tchap-visio".into()
}
fn default_hostname() -> IpAddr {
    Ipv4Addr::LOCALHOST.into()
}
fn default_port() -> u16 {
    29330
}
fn default_username_template() -> String {
    "visio_{id}".into()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_bot_username() -> String {
    "visio".into()
}
fn default_bot_displayname() -> String {
    "Visio".into()
}
fn default_database_uri() -> String {
    "sqlite://data/tchap-visio.db".into()
}
fn default_max_connections() -> u32 {
    5
}
fn default_udp_port() -> u16 {
    7882
}
fn default_tcp_port() -> u16 {
    7881
}

fn default_media_bind_ip() -> IpAddr {
    Ipv4Addr::UNSPECIFIED.into()
}
fn default_node_participants() -> u32 {
    1000
}
fn default_grace_period_secs() -> u64 {
    120
}
fn default_max_participants() -> u32 {
    100
}
fn default_log_level() -> String {
    "info".into()
}

/// Whether a token still holds a value that `generate-registration` is meant to replace.
pub fn is_placeholder_token(token: &str) -> bool {
    let token = token.trim();
    token.is_empty() || token == TOKEN_PLACEHOLDER || token.eq_ignore_ascii_case("generate")
}

impl Config {
    /// Reads the YAML file, then applies `TCHAP_VISIO_<SECTION>__<KEY>` overrides.
    /// Does not validate: callers decide whether placeholder tokens are acceptable.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Load(format!(
                "{} does not exist; copy config/example-config.yaml there and edit it",
                path.display()
            )));
        }
        Figment::new()
            .merge(Yaml::file_exact(path))
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| {
                        let section = key.as_str().split("__").next().unwrap_or_default();
                        SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
                    })
                    .split("__"),
            )
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// Loads and validates in one step, as `run` needs.
    pub fn load_valid(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::load(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Values that work but put someone at risk, to log as warnings at start: plain
    /// `http://` where tokens, chat or signed events travel to another machine.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if is_remote_http(self.appservice.public_address.as_str()) {
            warnings.push(format!(
                "appservice.public_address `{}` is plain http on a non-loopback host: join tokens and the page's traffic travel unencrypted; serve it over https behind a reverse proxy",
                redact_url(self.appservice.public_address.as_str())
            ));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if is_remote_http(&hook.url) {
                warnings.push(format!(
                    "webhooks entry {} ({}) is plain http on a non-loopback host: meeting chat and attendance travel unencrypted; use https",
                    i + 1,
                    redact_url(&hook.url)
                ));
            }
        }
        warnings
    }

    /// The address `/metrics` listens on (`metrics.hostname`, `metrics.port`).
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.metrics.hostname, self.metrics.port)
    }

    /// The address the HTTP server listens on (`appservice.hostname`, `appservice.port`).
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.appservice.hostname, self.appservice.port)
    }

    /// The addresses the media ports listen on: UDP, then ICE over TCP (`sfu.bind_ip`,
    /// `sfu.udp_port`, `sfu.tcp_port`).
    pub fn media_bind_addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::new(self.sfu.bind_ip, self.sfu.udp_port),
            SocketAddr::new(self.sfu.bind_ip, self.sfu.tcp_port),
        )
    }

    /// The permission map in force: the configured one, or the homeserver's own users.
    pub fn effective_permissions(&self) -> BTreeMap<String, PermissionLevel> {
        if self.permissions.is_empty() {
            BTreeMap::from([(self.homeserver.domain.to_string(), PermissionLevel::User)])
        } else {
            self.permissions.clone()
        }
    }

    /// The registration's `sender_localpart` in force.
    pub fn sender_localpart(&self) -> &str {
        let sender = self.appservice.sender_localpart.trim();
        if is_placeholder_token(sender) {
            &self.appservice.bot.username
        } else {
            sender
        }
    }

    /// Whether the bot is the appservice's sender, rather than a user of its namespace.
    pub fn bot_is_sender(&self) -> bool {
        self.mode == Mode::Appservice && self.sender_localpart() == self.appservice.bot.username
    }

    /// Fully-qualified user ID of the bot.
    pub fn bot_user_id(&self) -> ruma::OwnedUserId {
        if self.mode == Mode::Bot {
            return ruma::UserId::parse(self.bot_account.user_id.trim())
                .expect("validate() checked bot_account.user_id");
        }
        ruma::UserId::parse(format!(
            "@{}:{}",
            self.appservice.bot.username, self.homeserver.domain
        ))
        .expect("validate() checked that the bot username makes a valid user ID")
    }
}

/// A URL as logs and messages may show it: scheme, host and port, never the path, query
/// or user info, which may hold credentials (webhook receivers often carry a token).
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("?");
            let elided =
                url.path().len() > 1 || url.query().is_some() || !url.username().is_empty();
            match url.port() {
                Some(port) => format!(
                    "{}://{host}:{port}{}",
                    url.scheme(),
                    if elided { "/…" } else { "" }
                ),
                None => format!(
                    "{}://{host}{}",
                    url.scheme(),
                    if elided { "/…" } else { "" }
                ),
            }
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// `http://` to a host other than this machine's loopback.
fn is_remote_http(raw: &str) -> bool {
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d != "localhost",
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests;
