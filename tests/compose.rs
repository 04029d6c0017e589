//! Consistency checks for the Docker set-up: `docker-compose.yml`, the files it
//! mounts from `docker/`, the `Dockerfile` and `config/example-config.yaml`.
//!
//! CI has no Docker engine, so the compose set-up is never started there; these
//! tests keep it from drifting away from the configuration format instead. They
//! only read files (YAML through `serde_yaml_ng`); nothing is started.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// The compose service that runs this binary.
const SERVICE: &str = "tchap-visio";
/// The compose service that runs the homeserver.
const SYNAPSE: &str = "synapse";
/// Prefix of the environment variables that override configuration keys.
const ENV_PREFIX: &str = "TCHAP_VISIO_";
/// Where the usage notes of docker-compose.yml (and docs/admin.md) tell
/// `generate-registration` to write the registration inside the container.
const REGISTRATION_IN_CONTAINER: &str = "/data/registration.yaml";
/// Synapse's configuration for the compose set-up, relative to the repository root.
const SYNAPSE_CONFIG: &str = "docker/synapse/homeserver.yaml";
/// The directory from which the postgres image runs initialisation scripts.
const POSTGRES_INITDB_DIR: &str = "/docker-entrypoint-initdb.d";

// ---------------------------------------------------------------------------
// Loading

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_yaml_ng::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

struct Files {
    compose: Value,
    config: Value,
}

fn files() -> Files {
    Files {
        compose: yaml("docker-compose.yml"),
        config: yaml("config/example-config.yaml"),
    }
}

// ---------------------------------------------------------------------------
// Reading compose services

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn service_names(compose: &Value) -> Vec<String> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has a `services` mapping")
        .keys()
        .map(|k| {
            k.as_str()
                .expect("service names in docker-compose.yml are strings")
                .to_owned()
        })
        .collect()
}

/// A scalar YAML value as the string compose would use.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A service's `environment`, in either the mapping or the `KEY=VALUE` list form.
fn environment(svc: &Value, name: &str) -> Vec<(String, String)> {
    match svc.get("environment") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let key = k
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("service `{name}`: environment key {k:?} is not a string")
                    })
                    .to_owned();
                let value = if v.is_null() {
                    String::new()
                } else {
                    scalar(v).unwrap_or_else(|| {
                        panic!("service `{name}`: environment value of {key} is not a scalar")
                    })
                };
                (key, value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let entry = item.as_str().unwrap_or_else(|| {
                    panic!("service `{name}`: environment entry {item:?} is not a string")
                });
                let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        Some(other) => {
            panic!("service `{name}`: `environment` is neither a mapping nor a list: {other:?}")
        }
    }
}

fn env_value(svc: &Value, name: &str, key: &str) -> Option<String> {
    environment(svc, name)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn require_env(svc: &Value, name: &str, key: &str) -> String {
    env_value(svc, name, key)
        .unwrap_or_else(|| panic!("service `{name}` in docker-compose.yml does not set {key}"))
}

/// A published port: `[host_ip:][host_port:]container_port[/protocol]` or the long form.
#[derive(Debug)]
struct Published {
    host: Option<u16>,
    container: u16,
    protocol: String,
}

fn parse_port(text: &str, service: &str) -> u16 {
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "service `{service}`: `{text}` in `ports` is not a single port number \
             (port ranges are not supported by this test)"
        )
    })
}

fn parse_short_port(spec: &str, service: &str) -> Published {
    let (mapping, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let (host, container) = match mapping.rsplit_once(':') {
        // `rest` is `host_port` or `host_ip:host_port` (an IPv6 host_ip is bracketed).
        Some((rest, container)) => {
            let host = rest.rsplit_once(':').map_or(rest, |(_, port)| port);
            (Some(host).filter(|h| !h.is_empty()), container)
        }
        None => (None, mapping),
    };
    Published {
        host: host.map(|h| parse_port(h, service)),
        container: parse_port(container, service),
        protocol: protocol.to_ascii_lowercase(),
    }
}

fn published_ports(svc: &Value, name: &str) -> Vec<Published> {
    let Some(ports) = svc.get("ports") else {
        return Vec::new();
    };
    ports
        .as_sequence()
        .unwrap_or_else(|| panic!("service `{name}`: `ports` is not a list"))
        .iter()
        .map(|port| match port {
            Value::Mapping(_) => Published {
                host: port
                    .get("published")
                    .and_then(scalar)
                    .map(|p| parse_port(&p, name)),
                container: port
                    .get("target")
                    .and_then(scalar)
                    .map(|p| parse_port(&p, name))
                    .unwrap_or_else(|| {
                        panic!("service `{name}`: a long-form port has no `target`")
                    }),
                protocol: port
                    .get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("tcp")
                    .to_ascii_lowercase(),
            },
            other => {
                let spec = scalar(other).unwrap_or_else(|| {
                    panic!("service `{name}`: port entry {other:?} is not a scalar")
                });
                parse_short_port(&spec, name)
            }
        })
        .collect()
}

/// A volume entry; `bind` when `source` is a path on the host.
#[derive(Debug)]
struct Mount {
    source: String,
    target: String,
    bind: bool,
}

fn mounts(svc: &Value, name: &str) -> Vec<Mount> {
    let Some(volumes) = svc.get("volumes") else {
        return Vec::new();
    };
    volumes
        .as_sequence()
        .unwrap_or_else(|| panic!("service `{name}`: `volumes` is not a list"))
        .iter()
        .map(|volume| match volume {
            Value::String(spec) => {
                let mut parts = spec.split(':');
                let first = parts.next().unwrap_or_default();
                match parts.next() {
                    Some(target) => Mount {
                        bind: first.starts_with('.')
                            || first.starts_with('/')
                            || first.starts_with('~'),
                        source: first.to_owned(),
                        target: target.to_owned(),
                    },
                    // An anonymous volume: only a container path.
                    None => Mount {
                        source: String::new(),
                        target: first.to_owned(),
                        bind: false,
                    },
                }
            }
            Value::Mapping(_) => Mount {
                source: volume
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                target: volume
                    .get("target")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("service `{name}`: a long-form volume has no `target`")
                    })
                    .to_owned(),
                bind: volume.get("type").and_then(Value::as_str) == Some("bind"),
            },
            other => {
                panic!("service `{name}`: volume entry {other:?} is neither a string nor a mapping")
            }
        })
        .collect()
}

/// A host path relative to the repository root, without `./` and trailing `/`.
fn normalise(path: &str) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    path.trim_end_matches('/').to_owned()
}

/// Maps `path` from the `from` side of the bind mounts to the other side, using the
/// most specific mount. `host_to_container` picks the direction.
fn map_through(mounts: &[Mount], path: &str, host_to_container: bool) -> Option<String> {
    let path = if host_to_container {
        normalise(path)
    } else {
        path.to_owned()
    };
    mounts
        .iter()
        .filter(|m| m.bind)
        .filter_map(|m| {
            let (from, to) = if host_to_container {
                (
                    normalise(&m.source),
                    m.target.trim_end_matches('/').to_owned(),
                )
            } else {
                (
                    m.target.trim_end_matches('/').to_owned(),
                    normalise(&m.source),
                )
            };
            let rest = path.strip_prefix(from.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| (from.len(), format!("{to}{rest}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, mapped)| mapped)
}

/// `depends_on` as (service, condition), in either the list or the mapping form.
fn depends_on(svc: &Value, name: &str) -> Vec<(String, Option<String>)> {
    match svc.get("depends_on") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let dep = item.as_str().unwrap_or_else(|| {
                    panic!("service `{name}`: depends_on entry {item:?} is not a string")
                });
                (dep.to_owned(), None)
            })
            .collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| {
                let dep = k.as_str().unwrap_or_else(|| {
                    panic!("service `{name}`: depends_on key {k:?} is not a string")
                });
                let condition = v
                    .get("condition")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                (dep.to_owned(), condition)
            })
            .collect(),
        Some(other) => {
            panic!("service `{name}`: `depends_on` is neither a list nor a mapping: {other:?}")
        }
    }
}

/// The entrypoint and command of a service, joined into one string.
fn command_line(svc: &Value) -> String {
    ["entrypoint", "command"]
        .iter()
        .filter_map(|key| svc.get(*key))
        .flat_map(|value| match value {
            Value::Sequence(items) => items.iter().filter_map(scalar).collect::<Vec<_>>(),
            other => scalar(other).into_iter().collect(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// URLs (hand-parsed: values may hold compose `${VAR:-default}` interpolations)

#[derive(Debug)]
struct Url {
    scheme: String,
    user: String,
    password: String,
    host: String,
    port: Option<u16>,
    /// The path without its leading `/` and without the query string.
    path: String,
}

fn parse_url(url: &str, what: &str) -> Url {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{what} = `{url}` is not a URL"));
    let host_start = rest.rfind('@').map_or(0, |at| at + 1);
    let authority_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| host_start + i);
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (
            host,
            Some(
                port.parse()
                    .unwrap_or_else(|_| panic!("{what} = `{url}`: `{port}` is not a port number")),
            ),
        ),
        None => (host_port, None),
    };
    let path = tail.strip_prefix('/').unwrap_or(tail);
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    Url {
        scheme: scheme.to_owned(),
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// The example config and the compose overrides

fn env_var_for(path: &[&str]) -> String {
    let upper: Vec<String> = path.iter().map(|s| s.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", upper.join("__"))
}

fn config_lookup<'a>(config: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(config, |node, key| node.get(*key))
}

/// The value tchap-visio runs with in compose: the environment override of the
/// `tchap-visio` service when there is one, else the example config's value.
fn effective(files: &Files, path: &[&str]) -> String {
    let svc = service(&files.compose, SERVICE);
    if let Some(value) = env_value(svc, SERVICE, &env_var_for(path)) {
        return value;
    }
    config_lookup(&files.config, path)
        .and_then(scalar)
        .unwrap_or_else(|| {
            panic!(
                "config/example-config.yaml has no scalar `{}`",
                path.join(".")
            )
        })
}

fn effective_port(files: &Files, path: &[&str]) -> u16 {
    let text = effective(files, path);
    text.parse()
        .unwrap_or_else(|_| panic!("`{}` = `{text}` is not a port number", path.join(".")))
}

fn config_port(config: &Value, path: &[&str]) -> u16 {
    let value = config_lookup(config, path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| {
            panic!(
                "config/example-config.yaml has no numeric `{}`",
                path.join(".")
            )
        });
    u16::try_from(value)
        .unwrap_or_else(|_| panic!("`{}` = {value} is not a port number", path.join(".")))
}

// ---------------------------------------------------------------------------
// PostgreSQL initialisation scripts

/// The text of every script the postgres service mounts into its init directory.
fn init_scripts(svc: &Value, name: &str) -> String {
    let mut text = String::new();
    for mount in mounts(svc, name) {
        if !mount.bind || !mount.target.starts_with(POSTGRES_INITDB_DIR) {
            continue;
        }
        let path: PathBuf = root().join(normalise(&mount.source));
        if path.is_dir() {
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
            for entry in entries {
                let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
                text += &std::fs::read_to_string(entry.path())
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", entry.path().display()));
            }
        } else {
            text += &std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("cannot read {} (mounted by `{name}`): {e}", path.display())
            });
        }
    }
    text
}

/// Checks that `user`/`password`/`database` can log in to the postgres service:
/// either they are the image's own POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB, or
/// a mounted init script creates them, reading the password from the service's
/// environment.
fn assert_postgres_provides(
    files: &Files,
    pg_name: &str,
    user: &str,
    password: &str,
    database: &str,
    who: &str,
) {
    let pg = service(&files.compose, pg_name);
    let image = pg.get("image").and_then(Value::as_str).unwrap_or_default();
    assert!(
        image.starts_with("postgres"),
        "{who} points at service `{pg_name}`, whose image `{image}` is not PostgreSQL"
    );
    let pg_user = env_value(pg, pg_name, "POSTGRES_USER").unwrap_or_else(|| "postgres".to_owned());
    let pg_db = env_value(pg, pg_name, "POSTGRES_DB").unwrap_or_else(|| pg_user.clone());
    let scripts = init_scripts(pg, pg_name).to_lowercase();

    if user == pg_user {
        let pg_password = require_env(pg, pg_name, "POSTGRES_PASSWORD");
        assert_eq!(
            password, pg_password,
            "{who} logs in as `{user}` with a password different from POSTGRES_PASSWORD of service `{pg_name}`"
        );
    } else {
        assert!(
            scripts.contains(&format!("create user {}", user.to_lowercase()))
                || scripts.contains(&format!("create role {}", user.to_lowercase())),
            "{who} logs in as `{user}`, but no init script mounted into {POSTGRES_INITDB_DIR} \
             of service `{pg_name}` creates that role"
        );
        let source = environment(pg, pg_name)
            .into_iter()
            .find(|(k, v)| v == password && k != "POSTGRES_PASSWORD")
            .map(|(k, _)| k)
            .unwrap_or_else(|| {
                panic!(
                    "{who} uses the password `{password}`, which is not the value of any environment \
                     variable of service `{pg_name}` (the init script must set the same password)"
                )
            });
        let source = source.to_lowercase();
        assert!(
            scripts.contains(&format!("${source}")) || scripts.contains(&format!("${{{source}")),
            "service `{pg_name}` sets {} to {who}'s password, but no init script reads it",
            source.to_uppercase()
        );
    }
    if database != pg_db {
        assert!(
            scripts.contains(&format!("create database {}", database.to_lowercase())),
            "{who} uses database `{database}`, but neither POSTGRES_DB of service `{pg_name}` \
             nor an init script mounted into {POSTGRES_INITDB_DIR} creates it"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn compose_publishes_the_configured_ports() {
    let files = files();
    let svc = service(&files.compose, SERVICE);
    let published = published_ports(svc, SERVICE);

    let http = effective_port(&files, &["appservice", "port"]);
    assert!(
        published
            .iter()
            .any(|p| p.container == http && p.protocol == "tcp"),
        "service `{SERVICE}` must publish the HTTP port {http}/tcp (appservice.port); it publishes {published:?}"
    );

    // Media ports must keep their number on the host: the SFU announces them.
    for (path, protocol) in [(["sfu", "tcp_port"], "tcp"), (["sfu", "udp_port"], "udp")] {
        let port = effective_port(&files, &path);
        assert!(
            published
                .iter()
                .any(|p| p.container == port && p.host == Some(port) && p.protocol == protocol),
            "service `{SERVICE}` must publish {port}/{protocol} ({}) on the same host port; it publishes {published:?}",
            path.join(".")
        );
    }
    // Each shard listens on its own UDP port, from sfu.udp_port up.
    let udp = effective_port(&files, &["sfu", "udp_port"]);
    let shards: u16 = effective(&files, &["sfu", "shards"])
        .parse()
        .expect("sfu.shards is a number");
    assert!(
        shards > 0,
        "service `{SERVICE}` must set sfu.shards (0 means one per core, and the ports to publish depend on it)"
    );
    for port in udp..udp + shards {
        assert!(
            published
                .iter()
                .any(|p| p.container == port && p.host == Some(port) && p.protocol == "udp"),
            "service `{SERVICE}` runs {shards} shards: it must publish {port}/udp on the same host port; it publishes {published:?}"
        );
    }
}

#[test]
fn compose_environment_overrides_existing_config_keys() {
    let files = files();
    let mut overrides = 0;
    for name in service_names(&files.compose) {
        let svc = service(&files.compose, &name);
        for (key, _) in environment(svc, &name) {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            assert!(
                path.iter().all(|segment| !segment.is_empty()),
                "{key} (service `{name}`) is not of the form {ENV_PREFIX}<SECTION>__<KEY>"
            );
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            assert!(
                config_lookup(&files.config, &path).is_some(),
                "{key} (service `{name}`) overrides `{}`, which config/example-config.yaml does not have",
                path.join(".")
            );
            overrides += 1;
        }
    }
    assert!(
        overrides > 0,
        "docker-compose.yml sets no {ENV_PREFIX}* variable at all"
    );
}

#[test]
fn compose_database_uri_points_at_the_postgres_service() {
    let files = files();
    let svc = service(&files.compose, SERVICE);
    let var = env_var_for(&["database", "uri"]);
    let uri = require_env(svc, SERVICE, &var);
    let url = parse_url(&uri, &var);
    assert!(
        url.scheme == "postgres" || url.scheme == "postgresql",
        "{var} = `{uri}` must be a postgres:// URI"
    );
    assert!(
        service_names(&files.compose).contains(&url.host),
        "{var} = `{uri}`: host `{}` is not a service of docker-compose.yml",
        url.host
    );
    assert!(!url.user.is_empty(), "{var} = `{uri}` names no user");
    assert!(!url.path.is_empty(), "{var} = `{uri}` names no database");
    assert_postgres_provides(&files, &url.host, &url.user, &url.password, &url.path, &var);
    assert!(
        depends_on(svc, SERVICE)
            .iter()
            .any(|(dep, condition)| *dep == url.host
                && condition.as_deref() == Some("service_healthy")),
        "service `{SERVICE}` must depend on `{}` with `condition: service_healthy`",
        url.host
    );
}

#[test]
fn synapse_loads_the_registration_that_tchap_visio_writes() {
    let files = files();
    let compose_text = read("docker-compose.yml");
    assert!(
        compose_text.contains(&format!("-r {REGISTRATION_IN_CONTAINER}")),
        "the usage notes of docker-compose.yml must run generate-registration with -r {REGISTRATION_IN_CONTAINER}"
    );

    let visio = service(&files.compose, SERVICE);
    let registration_on_host =
        map_through(&mounts(visio, SERVICE), REGISTRATION_IN_CONTAINER, false).unwrap_or_else(
            || panic!("no bind mount of service `{SERVICE}` holds {REGISTRATION_IN_CONTAINER}"),
        );

    let synapse = service(&files.compose, SYNAPSE);
    let synapse_mounts = mounts(synapse, SYNAPSE);
    let config_in_container = map_through(&synapse_mounts, SYNAPSE_CONFIG, true)
        .unwrap_or_else(|| panic!("service `{SYNAPSE}` does not mount {SYNAPSE_CONFIG}"));
    assert!(
        command_line(synapse).contains(&config_in_container),
        "service `{SYNAPSE}` mounts {SYNAPSE_CONFIG} at {config_in_container}, \
         but its entrypoint/command does not pass that path"
    );

    let homeserver = yaml(SYNAPSE_CONFIG);
    let appservice_files: Vec<&str> = homeserver
        .get("app_service_config_files")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no app_service_config_files list"))
        .iter()
        .map(|f| {
            f.as_str().unwrap_or_else(|| {
                panic!("{SYNAPSE_CONFIG}: app_service_config_files entry {f:?} is not a string")
            })
        })
        .collect();
    let on_host: Vec<Option<String>> = appservice_files
        .iter()
        .map(|f| map_through(&synapse_mounts, f, false))
        .collect();
    assert!(
        on_host
            .iter()
            .flatten()
            .any(|host| *host == registration_on_host),
        "{SYNAPSE_CONFIG} loads {appservice_files:?}, which service `{SYNAPSE}` maps to host paths {on_host:?}; \
         none is {registration_on_host}, where `{SERVICE}` writes {REGISTRATION_IN_CONTAINER}"
    );
}

#[test]
fn synapse_config_matches_compose() {
    let files = files();
    let homeserver = yaml(SYNAPSE_CONFIG);
    let names = service_names(&files.compose);

    // Same server name on both sides.
    let server_name = homeserver
        .get("server_name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no server_name"));
    let domain = effective(&files, &["homeserver", "domain"]);
    assert_eq!(
        domain, server_name,
        "homeserver.domain of `{SERVICE}` must equal server_name in {SYNAPSE_CONFIG}"
    );

    // tchap-visio reaches a Synapse listener through the compose network.
    let var = env_var_for(&["homeserver", "address"]);
    let address = parse_url(
        &require_env(service(&files.compose, SERVICE), SERVICE, &var),
        &var,
    );
    assert_eq!(
        address.host, SYNAPSE,
        "{var} must point at the `{SYNAPSE}` service"
    );
    let listener_ports: Vec<u64> = homeserver
        .get("listeners")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no listeners"))
        .iter()
        .filter_map(|l| l.get("port").and_then(Value::as_u64))
        .collect();
    let port = address
        .port
        .unwrap_or(if address.scheme == "https" { 443 } else { 80 });
    assert!(
        listener_ports.contains(&u64::from(port)),
        "{var} uses port {port}, but {SYNAPSE_CONFIG} listens on {listener_ports:?}"
    );

    // Synapse reaches tchap-visio through the compose network, on all interfaces.
    let var = env_var_for(&["appservice", "address"]);
    let address = parse_url(
        &require_env(service(&files.compose, SERVICE), SERVICE, &var),
        &var,
    );
    assert_eq!(
        address.host, SERVICE,
        "{var} must point at the `{SERVICE}` service"
    );
    let http = effective_port(&files, &["appservice", "port"]);
    assert_eq!(
        address.port,
        Some(http),
        "{var} must name appservice.port ({http}) explicitly"
    );
    let hostname = effective(&files, &["appservice", "hostname"]);
    assert!(
        !["127.0.0.1", "localhost", "::1"].contains(&hostname.as_str()),
        "appservice.hostname of `{SERVICE}` is {hostname}: in a container the HTTP server must \
         listen on all interfaces (0.0.0.0) for Synapse and the published port to reach it"
    );

    // Synapse's database is the postgres service.
    let database = homeserver
        .get("database")
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no database section"));
    assert_eq!(
        database.get("name").and_then(Value::as_str),
        Some("psycopg2"),
        "{SYNAPSE_CONFIG} must use PostgreSQL (database.name: psycopg2)"
    );
    let args = database
        .get("args")
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no database.args"));
    let arg = |key: &str| args.get(key).and_then(scalar);
    let host = arg("host").unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no database.args.host"));
    assert!(
        names.contains(&host),
        "database.args.host `{host}` in {SYNAPSE_CONFIG} is not a service of docker-compose.yml"
    );
    let user = arg("user").unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no database.args.user"));
    let password = arg("password").unwrap_or_default();
    let dbname = arg("database")
        .or_else(|| arg("dbname"))
        .unwrap_or_else(|| panic!("{SYNAPSE_CONFIG} has no database.args.database"));
    assert_postgres_provides(&files, &host, &user, &password, &dbname, SYNAPSE_CONFIG);
}

#[test]
fn healthy_dependencies_have_healthchecks() {
    let files = files();
    let names = service_names(&files.compose);
    for name in &names {
        for (dep, condition) in depends_on(service(&files.compose, name), name) {
            assert!(
                names.contains(&dep),
                "service `{name}` depends on `{dep}`, which is not a service"
            );
            if condition.as_deref() == Some("service_healthy") {
                let healthcheck = service(&files.compose, &dep).get("healthcheck");
                assert!(
                    healthcheck
                        .is_some_and(|h| h.get("disable").and_then(Value::as_bool) != Some(true)),
                    "service `{name}` waits for `{dep}` to be healthy, but `{dep}` has no healthcheck"
                );
            }
        }
    }
    let visio_deps = depends_on(service(&files.compose, SERVICE), SERVICE);
    assert!(
        visio_deps
            .iter()
            .any(|(dep, condition)| dep == SYNAPSE
                && condition.as_deref() == Some("service_healthy")),
        "service `{SERVICE}` must wait for `{SYNAPSE}` to be healthy; it depends on {visio_deps:?}"
    );
}

#[test]
fn dockerfile_exposes_the_configured_ports() {
    let files = files();
    let dockerfile = read("Dockerfile");
    let exposed: Vec<(u16, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter_map(|line| {
            let (instruction, args) = line.split_once(char::is_whitespace)?;
            instruction.eq_ignore_ascii_case("EXPOSE").then_some(args)
        })
        .flat_map(str::split_whitespace)
        .map(|spec| {
            let (port, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
            let port = port
                .parse()
                .unwrap_or_else(|_| panic!("Dockerfile: EXPOSE `{spec}` is not a port"));
            (port, protocol.to_ascii_lowercase())
        })
        .collect();

    for (path, protocol) in [
        (["appservice", "port"], "tcp"),
        (["sfu", "tcp_port"], "tcp"),
        (["sfu", "udp_port"], "udp"),
    ] {
        let port = config_port(&files.config, &path);
        assert!(
            exposed
                .iter()
                .any(|(p, proto)| *p == port && proto == protocol),
            "the Dockerfile must EXPOSE {port}/{protocol} ({} in config/example-config.yaml); it exposes {exposed:?}",
            path.join(".")
        );
    }
}

// ---------------------------------------------------------------------------
// The two-node variant: docker-compose.cluster.yml and docker/nginx/cluster.conf

/// A compose value with its `${VAR:-default}` replaced by the default.
fn with_default(value: &str) -> String {
    match value.find("${") {
        Some(start) => {
            let end = value[start..].find('}').expect("a closed ${…}") + start;
            let inner = &value[start + 2..end];
            let default = inner.split_once(":-").map_or("", |(_, d)| d);
            format!("{}{default}{}", &value[..start], &value[end + 1..])
        }
        None => value.to_owned(),
    }
}

/// `(listen port, upstream)` pairs, and `(upstream, servers)` pairs.
type NginxRoutes = (Vec<(u16, String)>, Vec<(String, Vec<String>)>);

/// The nginx upstream each `listen` port of the load balancer proxies to, and each
/// upstream's servers. A light reading of the one file we write, not an nginx parser.
fn nginx_routes(conf: &str) -> NginxRoutes {
    let words: Vec<&str> = conf
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split_whitespace())
        .collect();
    let mut listens = Vec::new();
    let mut upstreams = Vec::new();
    let mut i = 0;
    while i < words.len() {
        match words[i] {
            "listen" => {
                let port = words[i + 1].trim_end_matches(';').parse().expect("a port");
                let pass = words[i..]
                    .iter()
                    .position(|w| *w == "proxy_pass")
                    .map(|p| words[i + p + 1].trim_end_matches(';'))
                    .expect("a proxy_pass after each listen");
                listens.push((port, pass.trim_start_matches("http://").to_owned()));
            }
            "upstream" => {
                let name = words[i + 1].to_owned();
                let end = words[i..].iter().position(|w| *w == "}").expect("closed") + i;
                let servers = (i..end)
                    .filter(|&j| words[j] == "server")
                    .map(|j| words[j + 1].trim_end_matches(';').to_owned())
                    .collect();
                upstreams.push((name, servers));
            }
            _ => {}
        }
        i += 1;
    }
    (listens, upstreams)
}

#[test]
fn the_cluster_variant_gives_each_node_its_own_id_url_ports_and_store_behind_the_balancer() {
    let mut compose = yaml("docker-compose.cluster.yml");
    compose.apply_merge().expect("the YAML merge keys resolve");
    let config = yaml("config/example-config.yaml");
    let (listens, upstreams) = nginx_routes(&read("docker/nginx/cluster.conf"));
    let upstream = |name: &str| -> Vec<String> {
        upstreams
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no upstream {name} in docker/nginx/cluster.conf"))
    };
    let http_port = config_port(&config, &["appservice", "port"]);
    let nodes = ["visio-1", "visio-2"];
    let shared = |key: &str| -> Vec<String> {
        nodes
            .iter()
            .map(|n| require_env(service(&compose, n), n, key))
            .collect()
    };
    for key in [
        "TCHAP_VISIO_DATABASE__URI",
        "TCHAP_VISIO_APPSERVICE__PUBLIC_ADDRESS",
        "TCHAP_VISIO_APPSERVICE__ADDRESS",
    ] {
        let values = shared(key);
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "{key} differs between nodes: {values:?}"
        );
    }
    // The homeserver sends to the balancer's shared port, which reaches every node.
    let address = parse_url(
        &shared("TCHAP_VISIO_APPSERVICE__ADDRESS")[0],
        "appservice.address",
    );
    assert_eq!(address.host, "lb");
    let port = address.port.expect("appservice.address names a port");
    let pass = &listens
        .iter()
        .find(|(p, _)| *p == port)
        .expect("the balancer listens there")
        .1;
    let mut servers = upstream(pass);
    servers.sort();
    assert_eq!(servers, nodes.map(|n| format!("{n}:{http_port}")));

    let mut seen_ports = Vec::new();
    let mut seen = Vec::new();
    for node in nodes {
        let svc = service(&compose, node);
        let id = require_env(svc, node, "TCHAP_VISIO_CLUSTER__NODE_ID");
        let store = require_env(svc, node, "TCHAP_VISIO_ENCRYPTION__STORE_PATH");
        let url = with_default(&require_env(svc, node, "TCHAP_VISIO_CLUSTER__NODE_URL"));
        seen.push((id.clone(), store.clone(), url.clone()));
        assert_eq!(id, node, "node_id is the service's name");
        // The node's own URL reaches that node alone, through the balancer.
        let own = parse_url(&url, "cluster.node_url")
            .port
            .expect("node_url names a port");
        let pass = &listens
            .iter()
            .find(|(p, _)| *p == own)
            .unwrap_or_else(|| panic!("{node}: the balancer does not listen on {own}"))
            .1;
        assert_eq!(
            upstream(pass),
            [format!("{node}:{http_port}")],
            "{node}'s node_url"
        );
        let lb = published_ports(service(&compose, "lb"), "lb");
        assert!(
            lb.iter().any(|p| p.container == own),
            "the balancer publishes {own}"
        );
        // Media ports of its own, published with their number.
        let published = published_ports(svc, node);
        let shards: u16 = require_env(svc, node, "TCHAP_VISIO_SFU__SHARDS")
            .parse()
            .expect("shards");
        let udp: u16 = require_env(svc, node, "TCHAP_VISIO_SFU__UDP_PORT")
            .parse()
            .expect("udp");
        let tcp: u16 = require_env(svc, node, "TCHAP_VISIO_SFU__TCP_PORT")
            .parse()
            .expect("tcp");
        for (port, protocol) in (udp..udp + shards)
            .map(|p| (p, "udp"))
            .chain([(tcp, "tcp")])
        {
            assert!(
                published
                    .iter()
                    .any(|p| p.container == port && p.host == Some(port) && p.protocol == protocol),
                "{node} must publish {port}/{protocol} on the same host port: {published:?}"
            );
            assert!(
                !seen_ports.contains(&(port, protocol)),
                "{port}/{protocol} used twice"
            );
            seen_ports.push((port, protocol));
        }
        // SIGTERM drains for up to 600 s: compose must wait longer before SIGKILL.
        let grace = scalar(svc.get("stop_grace_period").expect("stop_grace_period")).unwrap();
        let minutes: u64 = grace.trim_end_matches('m').parse().expect("minutes");
        assert!(minutes * 60 > 600, "{node}: stop_grace_period {grace}");
    }
    assert!(
        seen[0].0 != seen[1].0 && seen[0].1 != seen[1].1 && seen[0].2 != seen[1].2,
        "{seen:?}"
    );
}
