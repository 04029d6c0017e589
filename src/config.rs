//! Typed configuration: loading (YAML file + `TCHAP_VISIO_*` environment overrides),
//! defaults, and `validate()`, whose messages name the bad key and say how to fix it.
//! Depends on nothing else in the crate.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::{Deserialize, Serialize};

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
    pub address: String,
    /// The homeserver's server name.
    pub domain: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceConfig {
    #[serde(default = "default_id")]
    pub id: String,
    /// URL the homeserver uses to reach us.
    pub address: String,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Public base URL of join links.
    pub public_address: String,
    pub as_token: String,
    pub hs_token: String,
    #[serde(default = "default_username_template")]
    pub username_template: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
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
    #[serde(default = "default_media_bind_ip")]
    pub bind_ip: String,
    #[serde(default)]
    pub advertised_ip: String,
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
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            udp_port: default_udp_port(),
            tcp_port: default_tcp_port(),
            bind_ip: default_media_bind_ip(),
            advertised_ip: String::new(),
            ice_servers: Vec::new(),
            keys: BTreeMap::new(),
            signing_key: String::new(),
            max_participants: default_node_participants(),
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
fn default_hostname() -> String {
    "127.0.0.1".into()
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

fn default_media_bind_ip() -> String {
    "0.0.0.0".into()
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
        if is_remote_http(&self.appservice.public_address) {
            warnings.push(format!(
                "appservice.public_address `{}` is plain http on a non-loopback host: join tokens and the page's traffic travel unencrypted; serve it over https behind a reverse proxy",
                redact_url(&self.appservice.public_address)
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

    /// Checks every value that cannot work, naming the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_except_tokens()?;
        for (key, token) in [
            ("appservice.as_token", &self.appservice.as_token),
            ("appservice.hs_token", &self.appservice.hs_token),
        ] {
            if is_placeholder_token(token) {
                return Err(invalid(
                    key,
                    "still holds its placeholder: run generate-registration first \
                     (tchap-visio generate-registration -c config.yaml -r registration.yaml)",
                ));
            }
            if token.len() < 32 {
                return Err(invalid(
                    key,
                    "is shorter than 32 characters; run generate-registration --force for a strong token",
                ));
            }
        }
        if self.appservice.as_token == self.appservice.hs_token {
            return Err(invalid(
                "appservice.hs_token",
                "must differ from appservice.as_token; run generate-registration --force",
            ));
        }
        Ok(())
    }

    /// Everything `validate` checks except the tokens, which `generate-registration` is
    /// about to write.
    pub fn validate_except_tokens(&self) -> Result<(), ConfigError> {
        check_http_url("homeserver.address", &self.homeserver.address)?;
        if ruma::ServerName::parse(&self.homeserver.domain).is_err() {
            return Err(invalid(
                "homeserver.domain",
                format!(
                    "`{}` is not a valid server name; use the part after the colon in your user IDs, e.g. `tchap.gouv.fr`",
                    self.homeserver.domain
                ),
            ));
        }
        let appservice = &self.appservice;
        if appservice.id.trim().is_empty() {
            return Err(invalid(
                "appservice.id",
                "is empty; use a unique name such as `tchap-visio`",
            ));
        }
        check_http_url("appservice.address", &appservice.address)?;
        check_http_url("appservice.public_address", &appservice.public_address)?;
        if appservice.hostname.parse::<IpAddr>().is_err() && appservice.hostname != "localhost" {
            return Err(invalid(
                "appservice.hostname",
                format!(
                    "`{}` is not an IP address; use 127.0.0.1 (local only) or 0.0.0.0 (all interfaces)",
                    appservice.hostname
                ),
            ));
        }
        if appservice.port == 0 {
            return Err(invalid(
                "appservice.port",
                "must be a port between 1 and 65535",
            ));
        }
        if !appservice.username_template.contains("{id}") {
            return Err(invalid(
                "appservice.username_template",
                "must contain `{id}`, e.g. `visio_{id}`",
            ));
        }
        let template_localpart = appservice.username_template.replace("{id}", "x");
        if ruma::UserId::parse(format!("@{template_localpart}:{}", self.homeserver.domain)).is_err()
        {
            return Err(invalid(
                "appservice.username_template",
                "makes invalid user IDs; use lowercase letters, digits, `_`, `-`, `.` around `{id}`",
            ));
        }
        if appservice.max_body_bytes < 1024 {
            return Err(invalid(
                "appservice.max_body_bytes",
                "is below 1024 bytes; homeserver transactions would be refused (default 10485760)",
            ));
        }
        if ruma::UserId::parse(format!(
            "@{}:{}",
            appservice.bot.username, self.homeserver.domain
        ))
        .is_err()
        {
            return Err(invalid(
                "appservice.bot.username",
                format!(
                    "`{}` is not a valid localpart; use lowercase letters, digits, `_`, `-`, `.`",
                    appservice.bot.username
                ),
            ));
        }
        if appservice
            .bot
            .username
            .starts_with(&appservice.username_template.replace("{id}", ""))
        {
            return Err(invalid(
                "appservice.bot.username",
                "falls inside the ghost users' namespace (appservice.username_template); pick another name",
            ));
        }
        if !appservice.bot.avatar.is_empty() && !appservice.bot.avatar.starts_with("mxc://") {
            return Err(invalid(
                "appservice.bot.avatar",
                "must be an mxc:// URI (upload the image to your homeserver first) or empty",
            ));
        }
        let uri = &self.database.uri;
        if !(uri.starts_with("sqlite:")
            || uri.starts_with("postgres://")
            || uri.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.uri",
                "must start with sqlite:// (e.g. sqlite://data/tchap-visio.db) or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        for key in self.permissions.keys() {
            let ok = key == "*"
                || (key.starts_with('@') && ruma::UserId::parse(key).is_ok())
                || (!key.starts_with('@') && ruma::ServerName::parse(key).is_ok());
            if !ok {
                return Err(invalid(
                    "permissions",
                    format!(
                        "`{key}` is neither `*`, a server name nor a user ID like @alice:example.org"
                    ),
                ));
            }
        }
        if self.sfu.bind_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "sfu.bind_ip",
                format!(
                    "`{}` is not an IP address; use 0.0.0.0 (all interfaces) or 127.0.0.1 (this machine only)",
                    self.sfu.bind_ip
                ),
            ));
        }
        if !self.sfu.advertised_ip.is_empty() && self.sfu.advertised_ip.parse::<IpAddr>().is_err() {
            return Err(invalid(
                "sfu.advertised_ip",
                format!(
                    "`{}` is not an IP address; leave it empty or give the public IP",
                    self.sfu.advertised_ip
                ),
            ));
        }
        if self.sfu.udp_port == 0 || self.sfu.tcp_port == 0 {
            return Err(invalid(
                "sfu.udp_port",
                "sfu.udp_port and sfu.tcp_port must be between 1 and 65535",
            ));
        }
        for server in &self.sfu.ice_servers {
            if server.urls.is_empty()
                || server.urls.iter().any(|u| {
                    !(u.starts_with("stun:") || u.starts_with("turn:") || u.starts_with("turns:"))
                })
            {
                return Err(invalid(
                    "sfu.ice_servers",
                    "every entry needs `urls` starting with stun:, turn: or turns:",
                ));
            }
        }
        for (name, secret) in &self.sfu.keys {
            if secret.len() < 32 {
                return Err(invalid(
                    "sfu.keys",
                    format!(
                        "the secret of key `{name}` is shorter than 32 characters; use e.g. `openssl rand -hex 32`"
                    ),
                ));
            }
        }
        if !self.sfu.signing_key.is_empty() && !self.sfu.keys.contains_key(&self.sfu.signing_key) {
            return Err(invalid(
                "sfu.signing_key",
                format!(
                    "`{}` is not one of the keys in sfu.keys; name the newest of them",
                    self.sfu.signing_key
                ),
            ));
        }
        if self.sfu.signing_key.is_empty() && self.sfu.keys.len() > 1 {
            return Err(invalid(
                "sfu.signing_key",
                "several keys are set in sfu.keys: name the newest, which signs the tokens we issue (the others still verify theirs until they expire)",
            ));
        }
        if self.sfu.max_participants == 0 {
            return Err(invalid("sfu.max_participants", "must be at least 1"));
        }
        if jiff::tz::TimeZone::get(&self.meetings.timezone).is_err() {
            return Err(invalid(
                "meetings.timezone",
                format!(
                    "`{}` is not a known time zone; use an IANA name such as Europe/Paris",
                    self.meetings.timezone
                ),
            ));
        }
        if self.meetings.max_participants == 0 {
            return Err(invalid("meetings.max_participants", "must be at least 1"));
        }
        let mut urls = std::collections::BTreeSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            let n = i + 1;
            match url::Url::parse(&hook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        "webhooks",
                        format!(
                            "entry {n}: url `{}` is not an http(s) URL, e.g. https://bot.example.gouv.fr/hooks/visio",
                            redact_url(&hook.url)
                        ),
                    ));
                }
            }
            if !urls.insert(hook.url.as_str()) {
                return Err(invalid(
                    "webhooks",
                    format!(
                        "entry {n}: url `{}` is listed twice; keep one entry per receiver",
                        redact_url(&hook.url)
                    ),
                ));
            }
            // The message names the entry, never the secret.
            if hook.secret.trim().len() < WEBHOOK_SECRET_MIN_LEN {
                return Err(invalid(
                    "webhooks",
                    format!(
                        "entry {n} ({}): secret is shorter than {WEBHOOK_SECRET_MIN_LEN} characters; use e.g. `openssl rand -hex 32` and give the receiver the same value",
                        redact_url(&hook.url)
                    ),
                ));
            }
            if hook.secret.contains("change-me") {
                return Err(invalid(
                    "webhooks",
                    format!(
                        "entry {n} ({}): secret is still the example's placeholder; use the output of `openssl rand -hex 32` and give the receiver the same value",
                        redact_url(&hook.url)
                    ),
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid(
                "logging.level",
                format!(
                    "`{}` is not a level; use error, warn, info, debug or trace",
                    self.logging.level
                ),
            ));
        }
        Ok(())
    }

    /// The permission map in force: the configured one, or the homeserver's own users.
    pub fn effective_permissions(&self) -> BTreeMap<String, PermissionLevel> {
        if self.permissions.is_empty() {
            BTreeMap::from([(self.homeserver.domain.clone(), PermissionLevel::User)])
        } else {
            self.permissions.clone()
        }
    }

    /// Fully-qualified user ID of the bot.
    pub fn bot_user_id(&self) -> ruma::OwnedUserId {
        ruma::UserId::parse(format!(
            "@{}:{}",
            self.appservice.bot.username, self.homeserver.domain
        ))
        .expect("validate() checked that the bot username makes a valid user ID")
    }
}

fn check_http_url(key: &'static str, value: &str) -> Result<(), ConfigError> {
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        _ => Err(invalid(
            key,
            format!("`{value}` is not an http(s) URL, e.g. http://127.0.0.1:8008"),
        )),
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
mod tests {
    #[test]
    fn urls_are_redacted_and_plain_http_is_warned_about() {
        assert_eq!(
            redact_url("https://user:pw@bot.example/hooks/visio?token=abc"),
            "https://bot.example/…"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:9000/"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(redact_url("nope"), "(not a URL)");
        let mut config = with_tokens(example());
        config.appservice.public_address = "http://visio.example.gouv.fr".into();
        config.webhooks = vec![WebhookConfig {
            url: "http://bot.example/hooks?token=s3cret".into(),
            secret: "0123456789abcdef0123456789abcdef".into(),
        }];
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().all(|w| !w.contains("s3cret")),
            "{warnings:?}"
        );
        config.appservice.public_address = "http://127.0.0.1:29330".into();
        config.webhooks[0].url = "https://bot.example/hooks".into();
        assert!(config.warnings().is_empty());
        // The example's placeholder secret is refused, and the message hides the URL's secrets.
        config.webhooks[0] = WebhookConfig {
            url: "https://bot.example/hooks?token=s3cret".into(),
            secret: "change-me-to-the-output-of-openssl-rand-hex-32".into(),
        };
        let err = config
            .validate()
            .expect_err("placeholder secret")
            .to_string();
        assert!(
            err.contains("placeholder") && !err.contains("s3cret"),
            "{err}"
        );
    }

    use super::*;

    const EXAMPLE: &str = include_str!("../config/example-config.yaml");

    fn example() -> Config {
        Figment::new()
            .merge(Yaml::string(EXAMPLE))
            .extract()
            .expect("the example config parses")
    }

    fn with_tokens(mut config: Config) -> Config {
        config.appservice.as_token = "a".repeat(64);
        config.appservice.hs_token = "b".repeat(64);
        config
    }

    #[test]
    fn example_config_is_valid_once_tokens_are_generated() {
        let config = example();
        config.validate_except_tokens().expect("valid");
        let err = config.validate().expect_err("placeholders refused");
        assert!(
            err.to_string().contains("run generate-registration first"),
            "{err}"
        );
        with_tokens(config).validate().expect("valid with tokens");
    }

    #[test]
    fn errors_name_the_key() {
        let mut config = with_tokens(example());
        config.homeserver.address = "localhost:8008".into();
        let err = config.validate().expect_err("bad url").to_string();
        assert!(err.contains("homeserver.address"), "{err}");

        let mut config = with_tokens(example());
        config.database.uri = "mysql://x".into();
        assert!(
            config
                .validate()
                .expect_err("bad db")
                .to_string()
                .contains("database.uri")
        );

        let mut config = with_tokens(example());
        config.appservice.username_template = "visio".into();
        assert!(
            config
                .validate()
                .expect_err("no id")
                .to_string()
                .contains("{id}")
        );

        let mut config = with_tokens(example());
        config
            .permissions
            .insert("not a server!".into(), PermissionLevel::User);
        assert!(
            config
                .validate()
                .expect_err("bad key")
                .to_string()
                .contains("permissions")
        );

        // Several SFU keys: the one that signs must be named, and be one of them.
        let mut config = with_tokens(example());
        let secret = "0123456789abcdef0123456789abcdef".to_owned();
        config.sfu.keys = [
            ("old".to_owned(), secret.clone()),
            ("new".to_owned(), secret),
        ]
        .into();
        let err = config.validate().expect_err("no signing key").to_string();
        assert!(
            err.contains("sfu.signing_key") && err.contains("newest"),
            "{err}"
        );
        config.sfu.signing_key = "newer".into();
        let err = config
            .validate()
            .expect_err("unknown signing key")
            .to_string();
        assert!(
            err.contains("sfu.signing_key") && err.contains("newer"),
            "{err}"
        );
        config.sfu.signing_key = "new".into();
        config.validate().expect("named key");

        let mut config = with_tokens(example());
        config.sfu.bind_ip = "localhost".into();
        let err = config.validate().expect_err("bad bind ip").to_string();
        assert!(
            err.contains("sfu.bind_ip") && err.contains("127.0.0.1"),
            "{err}"
        );
    }

    #[test]
    fn webhooks_are_checked_without_showing_secrets() {
        let secret = "s3cret-".repeat(6);
        let hook = |url: &str, secret: &str| WebhookConfig {
            url: url.into(),
            secret: secret.into(),
        };
        let mut config = with_tokens(example());
        config.webhooks = vec![hook("https://bot.example/hook", &secret)];
        config.validate().expect("valid");
        assert!(!format!("{config:?}").contains("s3cret"));

        let cases = [
            (
                vec![hook("ftp://bot.example/hook", &secret)],
                "entry 1: url",
            ),
            (vec![hook("bot.example/hook", &secret)], "entry 1: url"),
            (
                vec![
                    hook("https://a.example/h", &secret),
                    hook("https://a.example/h", &secret),
                ],
                "entry 2: url `https://a.example/…` is listed twice",
            ),
            (
                vec![hook("https://a.example/h", "short-s3cret")],
                "entry 1 (https://a.example/…): secret is shorter",
            ),
        ];
        for (hooks, expected) in cases {
            let mut config = with_tokens(example());
            config.webhooks = hooks;
            let err = config.validate().expect_err("invalid").to_string();
            assert!(
                err.contains("`webhooks`") && err.contains(expected),
                "{err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let yaml = format!("{EXAMPLE}\nsurprise: 1\n");
        let err = Figment::new()
            .merge(Yaml::string(&yaml))
            .extract::<Config>()
            .expect_err("unknown key");
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn empty_permissions_mean_own_domain() {
        let mut config = example();
        config.permissions.clear();
        let map = config.effective_permissions();
        assert_eq!(map.get("localhost"), Some(&PermissionLevel::User));
        assert_eq!(map.len(), 1);
    }
}
