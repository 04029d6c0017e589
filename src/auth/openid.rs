//! Matrix OpenID tokens (what the widget API's `get_openid` hands an Element client's
//! widget, and what Element Call sends its token service): verified at the user's own
//! homeserver (`/_matrix/federation/v1/openid/userinfo`), found by server discovery
//! (`.well-known/matrix/server`, then the `_matrix-fed._tcp` SRV record, then port 8448).
//! The answer is believed only for users of the server that was asked: a homeserver
//! vouches for its own users, never for another server's.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use ruma::{OwnedServerName, OwnedUserId, ServerName};
use serde::Deserialize;

/// Longest wait for one step of a verification.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client sends: the token and the server that issued it (as
/// `/openid/request_token` answers; `token_type` and `expires_in` are not needed).
#[derive(Debug, Clone, Deserialize)]
pub struct OpenIdToken {
    pub access_token: String,
    pub matrix_server_name: String,
}

/// Why a token identifies nobody.
#[derive(Debug, thiserror::Error)]
pub enum OpenIdError {
    /// The server name or the token is not usable as given.
    #[error("the OpenID token is malformed: {0}")]
    Malformed(&'static str),
    /// The homeserver said the token is unknown or expired.
    #[error("the homeserver does not know this OpenID token")]
    Rejected,
    /// The homeserver answered for a user of another server.
    #[error("the homeserver vouched for a user of another server")]
    WrongServer,
    /// The homeserver could not be found or reached.
    #[error("the homeserver cannot be reached to check the OpenID token: {0}")]
    Unreachable(String),
}

/// Verifies OpenID tokens. `local` is our homeserver: its tokens are checked at
/// `homeserver.address`, without discovery.
#[derive(Debug, Clone)]
pub struct OpenIdVerifier {
    http: reqwest::Client,
    local_server: OwnedServerName,
    local_address: String,
}

#[derive(Deserialize)]
struct UserInfo {
    sub: OwnedUserId,
}

#[derive(Deserialize)]
struct WellKnown {
    #[serde(rename = "m.server")]
    server: String,
}

impl OpenIdVerifier {
    pub fn new(local_server: OwnedServerName, local_address: &str) -> Self {
        crate::matrix::client::install_tls_provider();
        Self {
            http: reqwest::Client::builder()
                .timeout(STEP_TIMEOUT)
                .redirect(reqwest::redirect::Policy::limited(3))
                .build()
                .expect("a default HTTP client builds"),
            local_server,
            local_address: local_address.trim_end_matches('/').to_owned(),
        }
    }

    /// The Matrix user the token belongs to.
    pub async fn verify(&self, token: &OpenIdToken) -> Result<OwnedUserId, OpenIdError> {
        let server = ServerName::parse(token.matrix_server_name.as_str())
            .map_err(|_| OpenIdError::Malformed("matrix_server_name is not a server name"))?;
        if token.access_token.is_empty()
            || token.access_token.len() > 512
            || !token.access_token.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(OpenIdError::Malformed("access_token"));
        }
        let base = if server == self.local_server {
            self.local_address.clone()
        } else {
            self.discover(&server).await?
        };
        let url = format!("{base}/_matrix/federation/v1/openid/userinfo");
        let response = self
            .http
            .get(&url)
            .query(&[("access_token", token.access_token.as_str())])
            .send()
            .await
            .map_err(|e| OpenIdError::Unreachable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 | 404 => return Err(OpenIdError::Rejected),
            status => return Err(OpenIdError::Unreachable(format!("answered {status}"))),
        }
        let info: UserInfo = response
            .json()
            .await
            .map_err(|e| OpenIdError::Unreachable(e.without_url().to_string()))?;
        if info.sub.server_name() != server {
            tracing::warn!(asked = %server, vouched_for = %info.sub, "a homeserver vouched for another server's user");
            return Err(OpenIdError::WrongServer);
        }
        Ok(info.sub)
    }

    /// The base URL of `server`'s federation API (server discovery, simplified: an
    /// explicit port or IP literal is used as is; else `.well-known`, then SRV, then
    /// port 8448).
    async fn discover(&self, server: &ServerName) -> Result<String, OpenIdError> {
        if server.port().is_some() || server.is_ip_literal() {
            return Ok(format!("https://{server}"));
        }
        let host = server.host();
        let well_known = self
            .http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .send()
            .await;
        if let Ok(response) = well_known
            && response.status().is_success()
            && let Ok(found) = response.json::<WellKnown>().await
            && let Ok(delegated) = ServerName::parse(found.server.as_str())
        {
            return Ok(match delegated.port() {
                Some(_) => format!("https://{delegated}"),
                None => self.srv_or_default(delegated.host()).await,
            });
        }
        Ok(self.srv_or_default(host).await)
    }

    async fn srv_or_default(&self, host: &str) -> String {
        let resolver = match TokioResolver::builder_tokio() {
            Ok(builder) => builder.build(),
            Err(_) => return format!("https://{host}:8448"),
        };
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let lookup = tokio::time::timeout(
                STEP_TIMEOUT,
                resolver.srv_lookup(format!("{service}.{host}.")),
            )
            .await;
            if let Ok(Ok(records)) = lookup
                && let Some(best) = records
                    .iter()
                    .min_by_key(|r| (r.priority(), u16::MAX - r.weight()))
            {
                let target = best.target().to_utf8();
                return format!("https://{}:{}", target.trim_end_matches('.'), best.port());
            }
        }
        format!("https://{host}:8448")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn malformed_tokens_are_refused_before_any_request() {
        let verifier = OpenIdVerifier::new(
            ServerName::parse("localhost").expect("name"),
            "http://127.0.0.1:1",
        );
        for (token, server) in [
            ("", "localhost"),
            ("a b", "localhost"),
            ("ok", "not a server"),
        ] {
            let refused = verifier
                .verify(&OpenIdToken {
                    access_token: token.into(),
                    matrix_server_name: server.into(),
                })
                .await;
            assert!(
                matches!(refused, Err(OpenIdError::Malformed(_))),
                "{token:?} {server:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_explicit_port_or_address_needs_no_discovery() {
        let verifier = OpenIdVerifier::new(
            ServerName::parse("localhost").expect("name"),
            "http://127.0.0.1:1",
        );
        for (server, base) in [
            ("example.org:8449", "https://example.org:8449"),
            ("192.0.2.1", "https://192.0.2.1"),
        ] {
            let name = ServerName::parse(server).expect("name");
            assert_eq!(verifier.discover(&name).await.expect("a base"), base);
        }
    }
}
