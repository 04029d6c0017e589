//! The configuration's loading and validation, key by key.

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
    config.appservice.public_address = HttpUrl::parse("http://visio.example.gouv.fr").expect("url");
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
    config.appservice.public_address = HttpUrl::parse("http://127.0.0.1:29330").expect("url");
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

const EXAMPLE: &str = include_str!("../../config/example-config.yaml");

fn example() -> Config {
    Figment::new()
        .merge(Yaml::string(EXAMPLE))
        .extract()
        .expect("the example config parses")
}

/// What `generate-registration` writes: tokens, a sender that is not the bot, a
/// passphrase.
fn with_tokens(mut config: Config) -> Config {
    config.appservice.as_token = "a".repeat(64);
    config.appservice.hs_token = "b".repeat(64);
    config.appservice.sender_localpart = "_tv_abcdefabcdef".into();
    config.encryption.passphrase = "c".repeat(64);
    config
}

#[test]
fn encryption_needs_a_passphrase_and_a_sender_that_is_not_the_bot() {
    let mut config = with_tokens(example());
    config.encryption.passphrase = String::new();
    let err = config.validate().expect_err("no passphrase").to_string();
    assert!(
        err.contains("encryption.passphrase") && err.contains("generate-registration"),
        "{err}"
    );
    config.encryption.enabled = false;
    config
        .validate()
        .expect("no passphrase needed without encryption");

    // An install from before: the bot is the sender, which may not /sync.
    let mut config = with_tokens(example());
    config.appservice.sender_localpart = String::new();
    assert!(config.bot_is_sender());
    let err = config
        .validate()
        .expect_err("sync as the sender")
        .to_string();
    assert!(
        err.contains("appservice.sender_localpart")
            && err.contains("generate-registration --force")
            && err.contains("encryption.to_device: transactions"),
        "{err}"
    );
    config.encryption.to_device = crate::config::ToDeviceSource::Transactions;
    config.validate().expect("transactions need no sync");

    let mut config = with_tokens(example());
    config.encryption.passphrase = "short".into();
    let err = config.validate().expect_err("short").to_string();
    assert!(err.contains("encryption.passphrase"), "{err}");
    assert!(
        !format!("{:?}", with_tokens(example()).encryption).contains("cccc"),
        "the passphrase never reaches a log"
    );
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
    let err = load_example_with("homeserver: {address: 'localhost:8008'}").expect_err("bad url");
    assert!(
        err.contains("homeserver.address") && err.contains("http://127.0.0.1:8008"),
        "{err}"
    );
    let err = load_example_with("appservice: {public_address: 'ftp://visio.example'}")
        .expect_err("not http");
    assert!(err.contains("appservice.public_address"), "{err}");
    let config =
        load_example_with("appservice: {public_address: 'https://visio.example/'}").expect("valid");
    assert_eq!(
        config.appservice.public_address.as_str(),
        "https://visio.example",
        "read as a base, without the trailing slash"
    );

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
}

/// Loads the example with `overrides` (YAML) merged over it.
fn load_example_with(overrides: &str) -> Result<Config, String> {
    Figment::new()
        .merge(Yaml::string(EXAMPLE))
        .merge(Yaml::string(overrides))
        .extract()
        .map_err(|e| e.to_string())
}

#[test]
fn the_server_name_is_read_at_load_and_errors_name_the_key() {
    let err = load_example_with("homeserver: {domain: 'tchap gouv fr'}").expect_err("bad domain");
    assert!(
        err.contains("homeserver.domain") && err.contains("after the colon"),
        "{err}"
    );
    let config = load_example_with("homeserver: {domain: agent.tchap.gouv.fr}").expect("valid");
    assert_eq!(config.homeserver.domain.as_str(), "agent.tchap.gouv.fr");
}

#[test]
fn ip_addresses_are_read_at_load_and_errors_name_the_key() {
    let err = load_example_with("sfu: {bind_ip: localhost}").expect_err("bad bind ip");
    assert!(
        err.contains("sfu.bind_ip") && err.contains("127.0.0.1"),
        "{err}"
    );
    let err = load_example_with("appservice: {hostname: visio.example}").expect_err("bad hostname");
    assert!(
        err.contains("appservice.hostname") && err.contains("0.0.0.0"),
        "{err}"
    );
    let err = load_example_with("sfu: {advertised_ip: 203.0.113}").expect_err("bad advertised ip");
    assert!(
        err.contains("sfu.advertised_ip") && err.contains("public IP"),
        "{err}"
    );

    let config = example();
    assert_eq!(
        config.listen_addr(),
        SocketAddr::from(([127, 0, 0, 1], 29330))
    );
    assert_eq!(config.sfu.advertised_ip, None, "empty means none");
    let (udp, tcp) = config.media_bind_addrs();
    assert_eq!(udp, SocketAddr::from(([0, 0, 0, 0], config.sfu.udp_port)));
    assert_eq!(tcp, SocketAddr::from(([0, 0, 0, 0], config.sfu.tcp_port)));
    let config = load_example_with(
        "appservice: {hostname: localhost}\nsfu: {bind_ip: '::1', advertised_ip: 203.0.113.7}",
    )
    .expect("valid addresses");
    assert_eq!(config.appservice.hostname, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(config.sfu.bind_ip, "::1".parse::<IpAddr>().expect("ip"));
    assert_eq!(
        config.sfu.advertised_ip,
        Some(IpAddr::from([203, 0, 113, 7]))
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

#[test]
fn metrics_get_a_listener_of_their_own() {
    let mut config = with_tokens(example());
    assert_eq!(config.metrics_addr().to_string(), "127.0.0.1:29331");
    config.metrics.port = config.appservice.port;
    let err = config.validate().expect_err("same port").to_string();
    assert!(err.contains("metrics.port") && err.contains("own"), "{err}");
    config.metrics.enabled = false;
    config.validate().expect("no listener, no clash");
}

#[test]
fn shards_are_bounded_and_their_ports_fit() {
    let mut config = with_tokens(example());
    assert_eq!(config.sfu.shards, 0, "the example runs one shard per core");
    assert!(config.sfu.shard_count() >= 1);
    config.sfu.shards = 65;
    let err = config.validate().expect_err("too many shards").to_string();
    assert!(err.contains("sfu.shards") && err.contains("64"), "{err}");
    config.sfu.shards = 4;
    config.sfu.udp_port = 65_534;
    let err = config.validate().expect_err("ports past 65535").to_string();
    assert!(
        err.contains("sfu.udp_port") && err.contains("65535"),
        "{err}"
    );
    config.sfu.udp_port = 65_532;
    config.validate().expect("65532..=65535 for four shards");
}

#[test]
fn a_cluster_needs_postgresql_a_node_id_and_a_node_url() {
    let yaml = "database: {uri: 'postgres://visio@db/visio'}\n\
                cluster: {node_id: visio-1, node_url: 'http://10.0.0.11:29330/'}";
    let config = with_tokens(load_example_with(yaml).expect("loads"));
    config.validate().expect("a valid cluster node");
    let cluster = config.cluster.clone().expect("cluster section");
    assert_eq!(cluster.heartbeat_secs, 2, "the default");
    assert_eq!(
        cluster.node_url.map(|u| u.to_string()).as_deref(),
        Some("http://10.0.0.11:29330")
    );

    // SQLite stays single-node.
    let mut sqlite = config.clone();
    sqlite.database.uri = "sqlite://data/tchap-visio.db".into();
    let err = sqlite
        .validate()
        .expect_err("cluster on SQLite")
        .to_string();
    assert!(
        err.contains("`cluster`") && err.contains("postgres://") && err.contains("remove"),
        "{err}"
    );
    // Without the section, SQLite is fine as always.
    sqlite.cluster = None;
    sqlite.validate().expect("single node on SQLite");

    let err = with_tokens(
        load_example_with("database: {uri: 'postgres://db/v'}\ncluster: {node_url: 'http://n1'}")
            .expect("loads"),
    )
    .validate()
    .expect_err("no node_id")
    .to_string();
    assert!(
        err.contains("cluster.node_id") && err.contains("required"),
        "{err}"
    );

    let mut bad = config.clone();
    if let Some(c) = bad.cluster.as_mut() {
        c.node_id = "visio 1".into();
    }
    let err = bad.validate().expect_err("a space").to_string();
    assert!(err.contains("cluster.node_id"), "{err}");

    let mut bad = config.clone();
    if let Some(c) = bad.cluster.as_mut() {
        c.node_url = None;
    }
    let err = bad.validate().expect_err("no node_url").to_string();
    assert!(err.contains("cluster.node_url"), "{err}");
    if let Some(c) = bad.cluster.as_mut() {
        c.node_url = Some(config.appservice.public_address.clone());
    }
    let err = bad.validate().expect_err("the load balancer").to_string();
    assert!(
        err.contains("cluster.node_url") && err.contains("load balancer"),
        "{err}"
    );

    let mut bad = config.clone();
    if let Some(c) = bad.cluster.as_mut() {
        c.heartbeat_secs = 0;
    }
    let err = bad.validate().expect_err("no heartbeat").to_string();
    assert!(err.contains("cluster.heartbeat_secs"), "{err}");

    assert_eq!(
        config.cluster.as_ref().map(|c| c.drain_timeout_secs),
        Some(600),
        "the default"
    );
    let mut bad = config.clone();
    if let Some(c) = bad.cluster.as_mut() {
        c.drain_timeout_secs = 86_401;
    }
    let err = bad.validate().expect_err("a drain past a day").to_string();
    assert!(err.contains("cluster.drain_timeout_secs"), "{err}");

    let mut bad = config.clone();
    bad.mode = Mode::Bot;
    bad.bot_account.user_id = format!("@visio:{}", bad.homeserver.domain);
    bad.bot_account.password = "p".into();
    let err = bad.validate().expect_err("bot mode").to_string();
    assert!(err.contains("`cluster`") && err.contains("mode"), "{err}");

    // A node_url that is not a URL fails the load, naming the key.
    let err =
        load_example_with("cluster: {node_id: a, node_url: 'n1:29330'}").expect_err("not a URL");
    assert!(err.contains("node_url"), "{err}");
}

#[test]
fn a_cluster_takes_each_node_s_to_device_messages_from_its_own_sync() {
    let yaml = "database: {uri: 'postgres://visio@db/visio'}\n\
                cluster: {node_id: visio-1, node_url: 'http://10.0.0.11:29330/'}\n\
                encryption: {to_device: transactions}";
    let config = with_tokens(load_example_with(yaml).expect("loads"));
    let err = config
        .validate()
        .expect_err("transactions with cluster")
        .to_string();
    assert!(
        err.contains("encryption.to_device")
            && err.contains("to_device: sync")
            && err.contains("cluster"),
        "{err}"
    );
    // Either fix is accepted: the node's own sync, or no encryption at all.
    let mut synced = config.clone();
    synced.encryption.to_device = ToDeviceSource::Sync;
    synced.validate().expect("sync with cluster");
    let mut clear = config.clone();
    clear.encryption.enabled = false;
    clear.validate().expect("no encryption, nothing to receive");
    // A single node may take them from transactions.
    let mut single = config;
    single.cluster = None;
    single.validate().expect("transactions on a single node");
}
