//! IP addresses, http(s) URLs and the server name read at load, so that the rest of the
//! crate gets `IpAddr`s, [`HttpUrl`]s and an `OwnedServerName`. A bad value
//! fails the load with the key's path (figment adds it) and the same advice `validate()`
//! gives for other keys.

use std::net::{IpAddr, Ipv4Addr};

use ruma::OwnedServerName;
use serde::{Deserialize, Deserializer, Serializer, de};

/// An http(s) URL with a host (`homeserver.address`, `appservice.address`,
/// `appservice.public_address`), checked at load. Read as a base: without the trailing
/// slash, so that paths are appended with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        match url::Url::parse(raw) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
            }
            _ => Err(format!(
                "`{raw}` is not an http(s) URL, e.g. http://127.0.0.1:8008"
            )),
        }
    }

    /// The URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(de::Error::custom)
    }
}

impl serde::Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// `homeserver.domain`: a Matrix server name.
pub(super) fn server_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedServerName, D::Error> {
    let raw = String::deserialize(deserializer)?;
    OwnedServerName::try_from(raw.trim()).map_err(|_| {
        de::Error::custom(format!(
            "`{raw}` is not a valid server name; use the part after the colon in your user IDs, e.g. `tchap.gouv.fr`"
        ))
    })
}

/// `appservice.hostname`: an IP address, or `localhost` for 127.0.0.1.
pub(super) fn listen_ip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let raw = String::deserialize(deserializer)?;
    parse_listen_ip(&raw).map_err(de::Error::custom)
}

/// `sfu.bind_ip`: an IP address.
pub(super) fn media_bind_ip<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<IpAddr, D::Error> {
    let raw = String::deserialize(deserializer)?;
    parse_media_bind_ip(&raw).map_err(de::Error::custom)
}

/// `sfu.advertised_ip`: an IP address, or empty for none.
pub(super) fn advertised_ip<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    let raw = Option::<String>::deserialize(deserializer)?.unwrap_or_default();
    parse_advertised_ip(&raw).map_err(de::Error::custom)
}

/// Writes `None` as the file spells it: an empty string.
pub(super) fn serialize_optional_ip<S: Serializer>(
    ip: &Option<IpAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match ip {
        Some(ip) => serializer.collect_str(ip),
        None => serializer.serialize_str(""),
    }
}

fn parse_listen_ip(raw: &str) -> Result<IpAddr, String> {
    let raw = raw.trim();
    if raw == "localhost" {
        return Ok(Ipv4Addr::LOCALHOST.into());
    }
    raw.parse().map_err(|_| {
        format!(
            "`{raw}` is not an IP address; use 127.0.0.1 (local only) or 0.0.0.0 (all interfaces)"
        )
    })
}

fn parse_media_bind_ip(raw: &str) -> Result<IpAddr, String> {
    let raw = raw.trim();
    raw.parse().map_err(|_| {
        format!(
            "`{raw}` is not an IP address; use 0.0.0.0 (all interfaces) or 127.0.0.1 (this machine only)"
        )
    })
}

fn parse_advertised_ip(raw: &str) -> Result<Option<IpAddr>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| format!("`{raw}` is not an IP address; leave it empty or give the public IP"))
}
