//! `generate-registration`: random `as_token`/`hs_token` written into the config (in
//! place, keeping its comments) and into a registration file for the homeserver.

use std::path::Path;

use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;

use crate::config::{Config, ConfigError, is_placeholder_token};

/// Why the registration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Tokens exist already; replacing them breaks the running registration.
    #[error(
        "{0} already holds tokens; replacing them means re-registering with the homeserver. \
         Run again with --force to do so"
    )]
    TokensExist(String),
    #[error("{0} has no `appservice:` section")]
    NoAppserviceSection(String),
}

#[derive(Debug, Serialize)]
pub struct Registration {
    pub id: String,
    pub url: String,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    pub rate_limited: bool,
    pub namespaces: Namespaces,
    pub receive_ephemeral: bool,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    pub push_ephemeral_unstable: bool,
    /// Appservice users get devices without logging in (needed with MAS).
    #[serde(rename = "io.element.msc4190")]
    pub msc4190: bool,
    /// Device lists and one-time-key counts in transactions (`encryption.to_device:
    /// transactions` only).
    #[serde(
        rename = "org.matrix.msc3202",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub msc3202: bool,
    /// With `element_call.enabled`: the homeserver authenticates Element Call's
    /// `rtc/livekit/...` requests and forwards them here (MSC4512).
    #[serde(
        rename = "io.element.msc4512.proxy_prefix",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_prefix: Option<String>,
    #[serde(
        rename = "io.element.msc4512.proxy_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_url: Option<String>,
    /// With `element_call.enabled`: may ask whether a user is in a room the bot is not in
    /// (MSC4502).
    #[serde(
        rename = "io.element.msc4502.scopes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub msc4502_scopes: Vec<String>,
}

/// The path under `/_matrix/client/{version}/` that Synapse forwards to us (MSC4512
/// allows only this prefix and paths below it).
pub const MSC4512_PROXY_PREFIX: &str = "rtc/livekit";
/// The MSC4502 scope that lets the appservice ask `rooms/{roomId}/is_joined`.
pub const MSC4502_IS_JOINED_SCOPE: &str = "urn:matrix:client:io.element.msc4502:rooms:is_joined";

#[derive(Debug, Serialize)]
pub struct Namespaces {
    pub users: Vec<Namespace>,
    pub aliases: Vec<Namespace>,
    pub rooms: Vec<Namespace>,
}

#[derive(Debug, Serialize)]
pub struct Namespace {
    pub regex: String,
    pub exclusive: bool,
}

/// The registration for a config and a pair of tokens.
pub fn registration(config: &Config, as_token: &str, hs_token: &str) -> Registration {
    let element_call =
        config.element_call.enabled && config.mode == crate::config::Mode::Appservice;
    let domain = regex_escape(config.homeserver.domain.as_str());
    let (before, after) = config
        .appservice
        .username_template
        .split_once("{id}")
        .expect("validate() checked that the template contains {id}");
    Registration {
        id: config.appservice.id.clone(),
        url: config.appservice.address.to_string(),
        as_token: as_token.to_owned(),
        hs_token: hs_token.to_owned(),
        sender_localpart: config.sender_localpart().to_owned(),
        rate_limited: false,
        namespaces: Namespaces {
            users: vec![
                Namespace {
                    regex: format!(
                        "@{}.*{}:{domain}",
                        regex_escape(before),
                        regex_escape(after)
                    ),
                    exclusive: true,
                },
                Namespace {
                    regex: format!(
                        "@{}:{domain}",
                        regex_escape(&config.appservice.bot.username)
                    ),
                    exclusive: true,
                },
            ],
            aliases: vec![],
            rooms: vec![],
        },
        receive_ephemeral: true,
        push_ephemeral_unstable: true,
        msc4190: true,
        msc3202: config.encryption.enabled
            && config.encryption.to_device == crate::config::ToDeviceSource::Transactions,
        proxy_prefix: element_call.then(|| MSC4512_PROXY_PREFIX.to_owned()),
        proxy_url: element_call.then(|| {
            config
                .appservice
                .address
                .as_str()
                .trim_end_matches('/')
                .to_owned()
        }),
        msc4502_scopes: if element_call {
            vec![MSC4502_IS_JOINED_SCOPE.to_owned()]
        } else {
            Vec::new()
        },
    }
}

/// A random sender localpart: a user nobody sees, so that the bot itself may `/sync`.
pub fn random_sender_localpart() -> String {
    format!(
        "_tv_{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 12)
            .to_ascii_lowercase()
    )
}

/// What the homeserver's copy of the registration lacks for this configuration (the
/// keys each `encryption.to_device` mode needs, a sender that matches): one line each,
/// naming the key and its value. Empty: nothing is missing.
pub fn missing_keys(config: &Config, registration_yaml: &str) -> Vec<String> {
    let Ok(registration) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(registration_yaml)
    else {
        return vec!["the file is not YAML".into()];
    };
    let mut missing = Vec::new();
    let is_true = |key: &str| registration.get(key).and_then(|v| v.as_bool()) == Some(true);
    if registration
        .get("sender_localpart")
        .and_then(|v| v.as_str())
        != Some(config.sender_localpart())
    {
        missing.push(format!(
            "sender_localpart: {} (appservice.sender_localpart)",
            config.sender_localpart()
        ));
    }
    if config.encryption.enabled {
        let mut wanted = vec!["io.element.msc4190"];
        if config.encryption.to_device == crate::config::ToDeviceSource::Transactions {
            wanted.extend(["receive_ephemeral", "org.matrix.msc3202"]);
        }
        for key in wanted {
            if !is_true(key) {
                missing.push(format!("{key}: true"));
            }
        }
    }
    if config.element_call.enabled && config.mode == crate::config::Mode::Appservice {
        let text = |key: &str| {
            registration
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        if text("io.element.msc4512.proxy_prefix").as_deref() != Some(MSC4512_PROXY_PREFIX) {
            missing.push(format!(
                "io.element.msc4512.proxy_prefix: {MSC4512_PROXY_PREFIX} (element_call.enabled)"
            ));
        }
        if text("io.element.msc4512.proxy_url").is_none() {
            missing.push(format!(
                "io.element.msc4512.proxy_url: {} (element_call.enabled)",
                config.appservice.address.as_str().trim_end_matches('/')
            ));
        }
        let scoped = registration
            .get("io.element.msc4502.scopes")
            .and_then(|v| v.as_sequence())
            .is_some_and(|s| {
                s.iter()
                    .any(|v| v.as_str() == Some(MSC4502_IS_JOINED_SCOPE))
            });
        if !scoped {
            missing.push(format!(
                "io.element.msc4502.scopes: [\"{MSC4502_IS_JOINED_SCOPE}\"] (element_call.enabled)"
            ));
        }
    }
    missing
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A random token for `as_token`/`hs_token`: 64 alphanumerics, about 380 bits.
pub fn random_token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 64)
}

/// Writes fresh tokens into the config file and the registration file.
pub fn generate(
    config_path: &Path,
    registration_path: &Path,
    force: bool,
) -> Result<Registration, RegistrationError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| RegistrationError::Io { path, source }
    };
    let text = std::fs::read_to_string(config_path).map_err(io_err(config_path))?;
    let config = Config::load(config_path)?;
    config.validate_except_tokens()?;
    if !force {
        let file_has_tokens = ["as_token", "hs_token"]
            .iter()
            .any(|key| token_in_text(&text, key).is_some_and(|t| !is_placeholder_token(&t)));
        if file_has_tokens {
            return Err(RegistrationError::TokensExist(
                config_path.display().to_string(),
            ));
        }
        if registration_path.exists() {
            let existing =
                std::fs::read_to_string(registration_path).map_err(io_err(registration_path))?;
            if token_in_text(&existing, "as_token").is_some_and(|t| !is_placeholder_token(&t)) {
                return Err(RegistrationError::TokensExist(
                    registration_path.display().to_string(),
                ));
            }
        }
    }
    let (as_token, hs_token) = (random_token(), random_token());
    let no_section = || RegistrationError::NoAppserviceSection(config_path.display().to_string());
    let mut updated =
        set_in_section(&text, "appservice", "as_token", &as_token).ok_or_else(no_section)?;
    updated =
        set_in_section(&updated, "appservice", "hs_token", &hs_token).ok_or_else(no_section)?;
    let mut config = config;
    // The bot may /sync only if it is not the sender; a sender already chosen stays.
    if config.bot_is_sender() {
        config.appservice.sender_localpart = random_sender_localpart();
        updated = set_in_section(
            &updated,
            "appservice",
            "sender_localpart",
            &config.appservice.sender_localpart,
        )
        .ok_or_else(no_section)?;
    }
    // Never replaced: the crypto store and the exported keys are encrypted with it.
    if is_placeholder_token(&config.encryption.passphrase) {
        config.encryption.passphrase = random_token();
        updated = set_in_section(
            &updated,
            "encryption",
            "passphrase",
            &config.encryption.passphrase,
        )
        .ok_or_else(no_section)?;
    }
    let registration = registration(&config, &as_token, &hs_token);
    if let Some(parent) = registration_path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let yaml = serde_yaml_ng::to_string(&registration).expect("registration always serialises");
    let header = "# Generated by `tchap-visio generate-registration`; add this file to the homeserver's\n\
                  # app_service_config_files and restart it. Keep it secret: it holds both tokens.\n";
    write_private(registration_path, &format!("{header}{yaml}"))
        .map_err(io_err(registration_path))?;
    write_private(config_path, &updated).map_err(io_err(config_path))?;
    Ok(registration)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The value of the first `key:` line in the `appservice:` section, if any.
fn token_in_text(text: &str, key: &str) -> Option<String> {
    let (_, index) = find_key_line(text, "appservice", key)?;
    let line = text.lines().nth(index)?;
    let value = line.split_once(':')?.1.trim();
    Some(value.trim_matches(|c| c == '"' || c == '\'').to_owned())
}

/// Index of the `section:` line and of its `key:` line (direct child).
fn find_key_line(text: &str, section: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let header = format!("{section}:");
    let start = lines.iter().position(|l| l.trim_end() == header)?;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if !line.is_empty() && !line.starts_with(char::is_whitespace) && !trimmed.starts_with('#') {
            break; // next top-level section
        }
        if trimmed
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
        {
            return Some((start, i));
        }
    }
    None
}

/// Replaces (or adds) `key: "value"` in `section`, keeping everything else. A missing
/// `encryption:` section is added at the end; a missing `appservice:` one is an error
/// (`None`): the file is not a configuration.
fn set_in_section(text: &str, section: &str, key: &str, value: &str) -> Option<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = format!("{section}:");
    match find_key_line(text, section, key) {
        Some((_, index)) => {
            let indent: String = lines[index]
                .chars()
                .take_while(|c| c.is_whitespace())
                .collect();
            lines[index] = format!("{indent}{key}: \"{value}\"");
        }
        None => match lines.iter().position(|l| l.trim_end() == header) {
            Some(start) => lines.insert(start + 1, format!("  {key}: \"{value}\"")),
            None if section != "appservice" => {
                lines.push(header);
                lines.push(format!("  {key}: \"{value}\""));
            }
            None => return None,
        },
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/example-config.yaml");

    #[test]
    fn writes_tokens_into_both_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("dir");
        let config_path = dir.path().join("config.yaml");
        let registration_path = dir.path().join("registration.yaml");
        std::fs::write(&config_path, EXAMPLE).expect("write");
        let reg = generate(&config_path, &registration_path, false).expect("generate");
        let config = Config::load(&config_path).expect("load");
        config.validate().expect("valid after generation");
        assert_eq!(config.appservice.as_token, reg.as_token);
        assert_eq!(config.appservice.hs_token, reg.hs_token);
        let written = std::fs::read_to_string(&config_path).expect("read");
        // Comments survive.
        assert_eq!(
            written
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count(),
            EXAMPLE
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
        );
        let registration: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&registration_path).expect("read"))
                .expect("yaml");
        assert_eq!(
            registration["as_token"].as_str(),
            Some(reg.as_token.as_str())
        );
        let sender = registration["sender_localpart"].as_str().expect("a sender");
        assert!(sender.starts_with("_tv_") && sender.len() == 16, "{sender}");
        assert_eq!(config.sender_localpart(), sender);
        assert!(config.encryption.passphrase.len() >= 32);
        assert_eq!(registration["rate_limited"].as_bool(), Some(false));
        assert_eq!(registration["io.element.msc4190"].as_bool(), Some(true));
        assert_eq!(
            registration["namespaces"]["users"][0]["regex"].as_str(),
            Some("@visio_.*:localhost")
        );

        let err = generate(&config_path, &registration_path, false).expect_err("tokens exist");
        assert!(err.to_string().contains("--force"), "{err}");
        let again = generate(&config_path, &registration_path, true).expect("forced");
        assert_ne!(again.as_token, reg.as_token);
        // The sender and the passphrase stay: the keys are encrypted with it.
        let reloaded = Config::load(&config_path).expect("load");
        assert_eq!(again.sender_localpart, sender);
        assert_eq!(reloaded.encryption.passphrase, config.encryption.passphrase);
    }

    #[test]
    fn the_example_registration_matches_the_example_config_and_holds_no_secret() {
        let example: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../../registration.yaml")).expect("yaml");
        let config: Config = serde_yaml_ng::from_str(EXAMPLE).expect("example");
        let generated = serde_yaml_ng::to_value(registration(&config, "a", "b")).expect("yaml");
        for key in [
            "id",
            "url",
            "rate_limited",
            "namespaces",
            "receive_ephemeral",
            "io.element.msc4190",
        ] {
            assert_eq!(example[key], generated[key], "{key}");
        }
        for key in ["as_token", "hs_token"] {
            assert!(
                is_placeholder_token(example[key].as_str().expect("a token")),
                "{key} holds a real value"
            );
        }
    }

    #[test]
    fn missing_registration_keys_are_named_per_mode() {
        let mut config: Config = serde_yaml_ng::from_str(EXAMPLE).expect("example");
        config.appservice.sender_localpart = "_tv_abc".into();
        let complete = serde_yaml_ng::to_string(&registration(&config, "a", "b")).expect("yaml");
        assert_eq!(missing_keys(&config, &complete), Vec::<String>::new());
        config.encryption.to_device = crate::config::ToDeviceSource::Transactions;
        assert_eq!(
            missing_keys(&config, &complete),
            ["org.matrix.msc3202: true"],
            "transactions need MSC3202"
        );
        let old = complete
            .replace("_tv_abc", "visio")
            .replace("io.element.msc4190: true", "");
        let missing = missing_keys(&config, &old);
        assert!(
            missing
                .iter()
                .any(|m| m.starts_with("sender_localpart: _tv_abc")),
            "{missing:?}"
        );
        assert!(
            missing.contains(&"io.element.msc4190: true".to_owned()),
            "{missing:?}"
        );
        assert_eq!(
            missing_keys(&config, "{[not yaml"),
            ["the file is not YAML"]
        );
    }

    #[test]
    fn ghost_namespace_regex_matches_template_users_only() {
        let mut config: Config = serde_yaml_ng::from_str(EXAMPLE).expect("example");
        config.homeserver.domain = "tchap.gouv.fr".try_into().expect("a server name");
        let reg = registration(&config, "a", "b");
        assert_eq!(reg.namespaces.users[0].regex, r"@visio_.*:tchap\.gouv\.fr");
        assert_eq!(reg.namespaces.users[1].regex, r"@visio:tchap\.gouv\.fr");
    }
}
