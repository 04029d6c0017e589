//! Outbound calls to the homeserver's client-server API as the application service:
//! the `as_token`, a `user_id` assertion for ghosts, ruma's request/response types,
//! and one error type that tells a retry apart from a final refusal.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

use ruma::UserId;
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::path_builder::VersionHistory;
use ruma::api::{
    AppserviceUserIdentity, IncomingResponseExt, MatrixVersion, OutgoingRequest,
    OutgoingRequestAppserviceExt, OutgoingRequestExt, SupportedVersions,
};

/// Why a call to the homeserver did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The homeserver could not be reached or did not answer in time.
    #[error("homeserver unreachable: {0}")]
    Unreachable(String),
    /// The homeserver answered with an error.
    #[error("homeserver answered {status} {errcode}: {error}")]
    Matrix {
        status: u16,
        errcode: String,
        error: String,
        retry_after: Option<Duration>,
    },
    /// The answer could not be understood.
    #[error("unexpected answer from the homeserver: {0}")]
    BadResponse(String),
    /// The request could not be built (an invalid identifier: a bug on our side).
    #[error("cannot build the request: {0}")]
    Build(String),
}

impl CallError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Matrix {
                status, errcode, ..
            } => *status >= 500 || *status == 429 || errcode == "M_LIMIT_EXCEEDED",
            Self::BadResponse(_) | Self::Build(_) => false,
        }
    }

    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Matrix { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// The wait the homeserver asked for, if it did (`retry_after_ms` or `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Matrix { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The application service's client for the homeserver.
#[derive(Clone, Debug)]
pub struct MatrixClient {
    http: reqwest::Client,
    base_url: String,
    as_token: String,
    versions: SupportedVersions,
    /// Who "the bot" is in calls made without `as_user`: the bot's user when it is not
    /// the registration's sender (so that it may `/sync`), else the sender itself.
    bot: Option<ruma::OwnedUserId>,
    /// A long-poll `/sync` waits up to 30 s on the server: its own, longer timeout.
    sync_http: reqwest::Client,
    /// `mode: bot`: `as_token` is the account's access token, and calls assert no user
    /// or device (the token is the bot's own).
    ordinary_account: bool,
}

impl MatrixClient {
    pub fn new(base_url: &str, as_token: &str) -> Self {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tchap-visio/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with static settings always builds");
        let sync_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(90))
            .user_agent(concat!("tchap-visio/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with static settings always builds");
        let versions = SupportedVersions {
            versions: BTreeSet::from([MatrixVersion::V1_11]),
            features: BTreeSet::new(),
        };
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            as_token: as_token.to_owned(),
            versions,
            bot: None,
            sync_http,
            ordinary_account: false,
        }
    }

    /// A client for an ordinary account (`mode: bot`), with its access token.
    pub fn for_account(base_url: &str, access_token: &str) -> Self {
        let mut client = Self::new(base_url, access_token);
        client.ordinary_account = true;
        client
    }

    /// Whether this client speaks as an ordinary account rather than an appservice.
    pub fn is_ordinary_account(&self) -> bool {
        self.ordinary_account
    }

    /// Calls made without `as_user` assert this user: the bot, when it is a user of the
    /// namespace rather than the registration's sender.
    pub fn with_bot(mut self, bot: ruma::OwnedUserId) -> Self {
        self.bot = Some(bot);
        self
    }

    /// A call the crypto core or the sync loop built themselves: method, path with its
    /// query, JSON body; as the bot (or `as_user`) and, for end-to-end encryption, as one
    /// of its devices (`device_id`, MSC4190/MSC4326). Returns the JSON answer.
    pub async fn call_json(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        as_user: Option<&UserId>,
        device_id: Option<&str>,
    ) -> Result<serde_json::Value, CallError> {
        let mut url = url::Url::parse(&format!("{}{}", self.base_url, path_and_query))
            .map_err(|e| CallError::Build(e.to_string()))?;
        if !self.ordinary_account {
            let mut query = url.query_pairs_mut();
            if let Some(user) = as_user.or(self.bot.as_deref()) {
                query.append_pair("user_id", user.as_str());
            }
            if let Some(device) = device_id {
                query.append_pair("device_id", device);
            }
        }
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| CallError::Build(e.to_string()))?;
        let long_poll = path_and_query.starts_with("/_matrix/client/v3/sync");
        let http = if long_poll {
            &self.sync_http
        } else {
            &self.http
        };
        let mut request = http.request(method, url);
        // An empty token: a call that needs none (the login).
        if !self.as_token.is_empty() {
            request = request.bearer_auth(&self.as_token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let (_, bytes) = send(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::BadResponse(e.to_string()))
    }

    /// One long-poll `/sync` (as the bot, as `device_id` when given) with `filter`;
    /// returns the answer and its `next_batch`.
    pub async fn sync(
        &self,
        filter: &str,
        since: Option<&str>,
        timeout: Duration,
        device_id: Option<&str>,
    ) -> Result<(serde_json::Value, String), CallError> {
        let mut path = format!(
            "/_matrix/client/v3/sync?timeout={}&filter={}",
            timeout.as_millis(),
            url_component(filter)
        );
        if let Some(since) = since {
            path.push_str("&since=");
            path.push_str(&url_component(since));
        }
        let answer = self.call_json("GET", &path, None, None, device_id).await?;
        let next = answer
            .get("next_batch")
            .and_then(|n| n.as_str())
            .ok_or_else(|| CallError::BadResponse("a sync answer without next_batch".into()))?
            .to_owned();
        Ok((answer, next))
    }

    /// Makes one client-server API call, as the bot (`as_user: None`) or as a ghost.
    pub async fn call<R>(
        &self,
        request: R,
        as_user: Option<&UserId>,
    ) -> Result<R::IncomingResponse, CallError>
    where
        R: OutgoingRequest<PathBuilder = VersionHistory>,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let http_request = if self.ordinary_account {
            request.try_into_http_request::<Vec<u8>>(
                &self.base_url,
                SendAccessToken::IfRequired(&self.as_token),
                Cow::Borrowed(&self.versions),
            )
        } else {
            let identity = match as_user.or(self.bot.as_deref()) {
                Some(user) => AppserviceUserIdentity::new(user),
                None => AppserviceUserIdentity::default(),
            };
            request.try_into_http_request_with_identity::<Vec<u8>>(
                &self.base_url,
                SendAccessToken::Appservice(&self.as_token),
                identity,
                Cow::Borrowed(&self.versions),
            )
        }
        .map_err(|e| CallError::Build(e.to_string()))?;
        let (parts, body) = http_request.into_parts();
        let request = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let (status, bytes) = send(request).await?;
        let http_response = http::Response::builder()
            .status(status)
            .body(bytes.as_slice())
            .map_err(|e| CallError::BadResponse(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_response)
            .map_err(|e| CallError::BadResponse(e.to_string()))
    }
}

/// Text as one component of a path or query (room ids, tokens, filters).
pub fn url_component(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Sends a request; the status and body of a success, else the homeserver's error
/// (with the wait it asked for, from `retry_after_ms` or `Retry-After`).
async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Vec<u8>), CallError> {
    let response = request
        .send()
        .await
        .map_err(|e| CallError::Unreachable(without_url(e)))?;
    let status = response.status();
    let retry_after_header = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| CallError::Unreachable(without_url(e)))?;
    if !status.is_success() {
        return Err(matrix_error(status.as_u16(), &bytes, retry_after_header));
    }
    Ok((status, bytes.to_vec()))
}

/// Makes ring rustls's process-wide crypto provider (reqwest is built without one, to
/// avoid compiling a second crypto library); later calls are no-ops.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// reqwest's errors print the URL, which for appservice calls can carry `user_id`; keep
/// the kind of failure only.
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn matrix_error(status: u16, body: &[u8], retry_after_header: Option<Duration>) -> CallError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        errcode: Option<String>,
        error: Option<String>,
        retry_after_ms: Option<u64>,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (errcode, error, retry_after_ms) = match parsed {
        Some(b) => (b.errcode, b.error, b.retry_after_ms),
        None => (None, None, None),
    };
    CallError::Matrix {
        status,
        errcode: errcode.unwrap_or_else(|| "M_UNKNOWN".into()),
        error: error
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()),
        retry_after: retry_after_ms
            .map(Duration::from_millis)
            .or(retry_after_header),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_transient_and_carry_their_wait() {
        let err = matrix_error(
            429,
            br#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":1500}"#,
            None,
        );
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        let err = matrix_error(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn refusals_are_final_and_outages_are_not() {
        let err = matrix_error(403, br#"{"errcode":"M_FORBIDDEN","error":"no"}"#, None);
        assert!(!err.is_transient());
        assert_eq!(err.errcode(), Some("M_FORBIDDEN"));
        assert!(matrix_error(502, b"<html>bad gateway</html>", None).is_transient());
        assert!(CallError::Unreachable("refused".into()).is_transient());
    }
}
