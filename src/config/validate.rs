//! `validate()`: every value that cannot work, refused with a message that names the
//! key and says how to fix it. IP addresses and the server name are already checked at load (`addr`).

use super::{
    Config, ConfigError, WEBHOOK_SECRET_MIN_LEN, invalid, is_placeholder_token, redact_url,
};

impl Config {
    /// Checks every value that cannot work, naming the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_except_tokens()?;
        if self.mode == super::Mode::Bot {
            return self.validate_bot_account();
        }
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
        if self.encryption.enabled && is_placeholder_token(&self.encryption.passphrase) {
            return Err(invalid(
                "encryption.passphrase",
                "is empty: run generate-registration, which writes one, or set 32 random characters \
                 (openssl rand -hex 32); or set encryption.enabled: false to stay out of encrypted rooms",
            ));
        }
        if self.encryption.enabled
            && self.encryption.to_device == super::ToDeviceSource::Sync
            && self.bot_is_sender()
        {
            return Err(invalid(
                "appservice.sender_localpart",
                "is the bot's own username, and Synapse refuses /sync to an appservice's sender, \
                 which encryption.to_device: sync needs. Run generate-registration --force (it writes \
                 a random sender and keeps the bot as a user of the namespace), give the homeserver \
                 the new registration and restart it (docs/admin.md, \"Encrypted rooms\"); or set \
                 encryption.to_device: transactions",
            ));
        }
        if self.appservice.as_token == self.appservice.hs_token {
            return Err(invalid(
                "appservice.hs_token",
                "must differ from appservice.as_token; run generate-registration --force",
            ));
        }
        Ok(())
    }

    /// `mode: bot`: an account to log in with; the appservice's tokens are not used.
    fn validate_bot_account(&self) -> Result<(), ConfigError> {
        let account = &self.bot_account;
        let Ok(user) = ruma::UserId::parse(account.user_id.trim()) else {
            return Err(invalid(
                "bot_account.user_id",
                format!(
                    "`{}` is not a user ID; mode: bot needs the bot's account, e.g. @visio:agent.tchap.gouv.fr",
                    account.user_id
                ),
            ));
        };
        if user.server_name() != self.homeserver.domain {
            return Err(invalid(
                "bot_account.user_id",
                format!(
                    "`{user}` is not on homeserver.domain `{}`; the bot logs in to that homeserver",
                    self.homeserver.domain
                ),
            ));
        }
        let by_password = !account.password.is_empty();
        let by_token = !account.access_token.is_empty();
        if by_password == by_token {
            return Err(invalid(
                "bot_account.password",
                "set either bot_account.password (the service logs in and keeps its device) or \
                 bot_account.access_token with bot_account.device_id, not both",
            ));
        }
        if by_token && account.device_id.trim().is_empty() {
            return Err(invalid(
                "bot_account.device_id",
                "is required with bot_account.access_token: the device the token belongs to (its keys are the bot's)",
            ));
        }
        if self.encryption.enabled && is_placeholder_token(&self.encryption.passphrase) {
            return Err(invalid(
                "encryption.passphrase",
                "is empty: set 32 random characters (openssl rand -hex 32), or encryption.enabled: false",
            ));
        }
        Ok(())
    }

    /// `cluster`: PostgreSQL, a stable node name, this node's own URL.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        if self.database.uri.starts_with("sqlite:") {
            return Err(invalid(
                "cluster",
                "needs PostgreSQL, but database.uri is SQLite, which serves one node only: set \
                 database.uri to postgres://… (the same database for every node), or remove the \
                 cluster section to run a single node",
            ));
        }
        if self.mode == super::Mode::Bot {
            return Err(invalid(
                "cluster",
                "works with mode: appservice only (every node takes the homeserver's \
                 transactions); remove the cluster section to run mode: bot on a single node",
            ));
        }
        let id = cluster.node_id.trim();
        if id.is_empty() {
            return Err(invalid(
                "cluster.node_id",
                "is required with cluster: a name unique to this node and the same at every \
                 restart, e.g. visio-1 (not a container's hostname, which changes)",
            ));
        }
        if id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "cluster.node_id",
                format!(
                    "`{id}` may hold only letters, digits, `.`, `_` and `-`, 64 at most, e.g. visio-1"
                ),
            ));
        }
        let Some(node_url) = &cluster.node_url else {
            return Err(invalid(
                "cluster.node_url",
                "is required with cluster: this node's own base URL, e.g. http://10.0.0.11:29330 \
                 (appservice.public_address stays the load balancer's, shared by all nodes)",
            ));
        };
        if node_url == &self.appservice.public_address {
            return Err(invalid(
                "cluster.node_url",
                "is appservice.public_address, the load balancer's address shared by all nodes; \
                 give this node's own base URL, e.g. http://10.0.0.11:29330",
            ));
        }
        if self.encryption.enabled && self.encryption.to_device != super::ToDeviceSource::Sync {
            return Err(invalid(
                "encryption.to_device",
                "must be `sync` with cluster: each node has a bot device of its own (its crypto \
                 store is local), and only its own /sync brings that device's room keys; \
                 appservice transactions reach whichever node the load balancer picks. Set \
                 encryption.to_device: sync (docs/admin.md, \"Clustering\"), or \
                 encryption.enabled: false to stay out of encrypted rooms",
            ));
        }
        if !(1..=30).contains(&cluster.heartbeat_secs) {
            return Err(invalid(
                "cluster.heartbeat_secs",
                "must be between 1 and 30 seconds (2 is the default; a node missing three is dead)",
            ));
        }
        if cluster.drain_timeout_secs > 86_400 {
            return Err(invalid(
                "cluster.drain_timeout_secs",
                "must be at most 86400 seconds (one day; 600 is the default, 0 stops at once): \
                 how long SIGTERM waits for this node's meetings",
            ));
        }
        Ok(())
    }

    /// Everything `validate` checks except the tokens, which `generate-registration` is
    /// about to write.
    pub fn validate_except_tokens(&self) -> Result<(), ConfigError> {
        let appservice = &self.appservice;
        if appservice.id.trim().is_empty() {
            return Err(invalid(
                "appservice.id",
                "is empty; use a unique name such as `tchap-visio`",
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
        let sender = self.sender_localpart();
        if ruma::UserId::parse(format!("@{sender}:{}", self.homeserver.domain)).is_err() {
            return Err(invalid(
                "appservice.sender_localpart",
                format!("`{sender}` is not a valid localpart; run generate-registration --force"),
            ));
        }
        if self.encryption.enabled && self.encryption.store_path.trim().is_empty() {
            return Err(invalid(
                "encryption.store_path",
                "is empty; use a directory on a persistent volume, e.g. data/crypto-store",
            ));
        }
        if self.encryption.enabled
            && !is_placeholder_token(&self.encryption.passphrase)
            && self.encryption.passphrase.len() < 16
        {
            return Err(invalid(
                "encryption.passphrase",
                "is shorter than 16 characters; it protects the bot's keys (openssl rand -hex 32). \
                 Change it only before the first start: the crypto store is encrypted with it",
            ));
        }
        if self.metrics.enabled && self.metrics.port == 0 {
            return Err(invalid(
                "metrics.port",
                "must be a port between 1 and 65535",
            ));
        }
        if self.metrics.enabled && self.metrics.port == appservice.port {
            return Err(invalid(
                "metrics.port",
                "is appservice.port: /metrics gets a listener of its own, never the public one; pick another port (default 29331)",
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
        if self.sfu.udp_port == 0 || self.sfu.tcp_port == 0 {
            return Err(invalid(
                "sfu.udp_port",
                "sfu.udp_port and sfu.tcp_port must be between 1 and 65535",
            ));
        }
        if self.sfu.shards as usize > crate::sfu::shards::MAX_SHARDS {
            return Err(invalid(
                "sfu.shards",
                format!(
                    "must be between 1 and {} (or 0: one per core)",
                    crate::sfu::shards::MAX_SHARDS
                ),
            ));
        }
        if usize::from(self.sfu.udp_port) + self.sfu.shard_count() - 1 > usize::from(u16::MAX) {
            return Err(invalid(
                "sfu.udp_port",
                format!(
                    "each shard listens on its own UDP port from sfu.udp_port up: {} + {} shards runs past 65535; lower sfu.udp_port or sfu.shards",
                    self.sfu.udp_port,
                    self.sfu.shard_count()
                ),
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
        if let Some(bad) = self
            .meetings
            .external_servers
            .iter()
            .find(|s| ruma::ServerName::parse(s.as_str()).is_err())
        {
            return Err(invalid(
                "meetings.external_servers",
                format!(
                    "`{bad}` is not a server name; list server names such as agent.externe.tchap.gouv.fr"
                ),
            ));
        }
        if !(20..=crate::auth::token::MAX_TOKEN_LIFETIME_SECS)
            .contains(&self.meetings.join_token_ttl_secs)
        {
            return Err(invalid(
                "meetings.join_token_ttl_secs",
                format!(
                    "must be between 20 and {} seconds (600 is the default)",
                    crate::auth::token::MAX_TOKEN_LIFETIME_SECS
                ),
            ));
        }
        if self.meetings.max_participants == 0 {
            return Err(invalid("meetings.max_participants", "must be at least 1"));
        }
        if let Some(bad) = self
            .element_call
            .publish_servers
            .iter()
            .find(|s| ruma::ServerName::parse(s.as_str()).is_err())
        {
            return Err(invalid(
                "element_call.publish_servers",
                format!(
                    "`{bad}` is not a server name; list server names such as agent.tchap.gouv.fr \
                     (leave it empty for this homeserver's own users only)"
                ),
            ));
        }
        if !(1..=3600).contains(&self.element_call.membership_check_secs) {
            return Err(invalid(
                "element_call.membership_check_secs",
                "must be between 1 and 3600 seconds (15 is the default)",
            ));
        }
        if !(20..=crate::auth::token::MAX_TOKEN_LIFETIME_SECS)
            .contains(&self.element_call.token_ttl_secs)
        {
            return Err(invalid(
                "element_call.token_ttl_secs",
                format!(
                    "must be between 20 and {} seconds (600 is the default)",
                    crate::auth::token::MAX_TOKEN_LIFETIME_SECS
                ),
            ));
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
        self.validate_cluster()?;
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
}
