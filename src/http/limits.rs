//! Rate limits on the public endpoints, per client address and per meeting, from
//! tower_governor (GCRA buckets). Refusals are Matrix-shaped: 429 `M_LIMIT_EXCEEDED`
//! with `retry_after_ms` and a `Retry-After` header. Behind a reverse proxy, the client
//! is the last `X-Forwarded-For` address, believed only from `rate_limits.trusted_proxies`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use governor::middleware::NoOpMiddleware;
use tokio_util::sync::CancellationToken;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

/// One limit: `burst` requests at once, then one more every `period`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub burst: u32,
    pub period: Duration,
}

/// Identity codes: 10 a minute from one address (the issue's figure).
pub const CODES_PER_IP: Quota = Quota {
    burst: 10,
    period: Duration::from_secs(6),
};
/// Joins: 30 at once, then one a second, from one address.
pub const JOINS_PER_IP: Quota = Quota {
    burst: 30,
    period: Duration::from_secs(1),
};
/// Long-polls and the page: 120 at once, then two a second.
pub const READS_PER_IP: Quota = Quota {
    burst: 120,
    period: Duration::from_millis(500),
};
/// Signalling connections (`/rtc`, its validation): 200 at once (a load test's room
/// from one host), then ten a second.
pub const RTC_PER_IP: Quota = Quota {
    burst: 200,
    period: Duration::from_millis(100),
};
/// Everything the page asks about one meeting (joins, codes, polls), from anywhere:
/// a forwarded link cannot flood one meeting's lobby or notices.
pub const PER_MEETING: Quota = Quota {
    burst: 300,
    period: Duration::from_millis(100),
};

/// The client's address.
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted_proxies: Arc<Vec<IpAddr>>,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        // Requests made in-process (tests) carry no peer: they share one bucket.
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        if !self.trusted_proxies.contains(&peer) {
            return Ok(peer);
        }
        Ok(req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok())
            .unwrap_or(peer))
    }
}

/// The meeting a page request is about: the slug in `/api/v1/meetings/{slug}/...` or
/// `/m/{slug}`.
#[derive(Debug, Clone, Copy)]
pub struct MeetingKey;

impl KeyExtractor for MeetingKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        let path = req.uri().path();
        let slug = path
            .strip_prefix("/api/v1/meetings/")
            .or_else(|| path.strip_prefix("/m/"))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        Ok(slug.chars().take(64).collect())
    }
}

pub type IpLimit = Arc<GovernorConfig<ClientIp, NoOpMiddleware<governor::clock::QuantaInstant>>>;
pub type MeetingLimit =
    Arc<GovernorConfig<MeetingKey, NoOpMiddleware<governor::clock::QuantaInstant>>>;

/// The limits in force, shared by the router's layers and the sweeper that forgets idle
/// keys.
#[derive(Debug, Clone)]
pub struct RateLimits {
    pub codes: IpLimit,
    pub joins: IpLimit,
    pub reads: IpLimit,
    pub rtc: IpLimit,
    pub per_meeting: MeetingLimit,
}

fn ip_limit(quota: Quota, trusted: &Arc<Vec<IpAddr>>) -> IpLimit {
    Arc::new(
        GovernorConfigBuilder::default()
            .period(quota.period)
            .burst_size(quota.burst)
            .key_extractor(ClientIp {
                trusted_proxies: trusted.clone(),
            })
            .finish()
            .expect("quotas are non-zero"),
    )
}

impl RateLimits {
    pub fn new(config: &crate::config::RateLimitsConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let trusted = Arc::new(config.trusted_proxies.clone());
        Some(Self {
            codes: ip_limit(CODES_PER_IP, &trusted),
            joins: ip_limit(JOINS_PER_IP, &trusted),
            reads: ip_limit(READS_PER_IP, &trusted),
            rtc: ip_limit(RTC_PER_IP, &trusted),
            per_meeting: Arc::new(
                GovernorConfigBuilder::default()
                    .period(PER_MEETING.period)
                    .burst_size(PER_MEETING.burst)
                    .key_extractor(MeetingKey)
                    .finish()
                    .expect("quotas are non-zero"),
            ),
        })
    }

    /// Forgets buckets that are full again, every minute, until shut down: memory stays
    /// bounded by the clients of the last minute.
    pub async fn sweep(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = shutdown.cancelled() => return,
            }
            for limit in [&self.codes, &self.joins, &self.reads, &self.rtc] {
                limit.limiter().retain_recent();
            }
            self.per_meeting.limiter().retain_recent();
        }
    }
}

/// The 429 every limit answers.
pub fn too_many_requests(error: GovernorError) -> Response<Body> {
    let wait_secs = match error {
        GovernorError::TooManyRequests { wait_time, .. } => wait_time.max(1),
        other => {
            tracing::error!(error = %other, "rate limit failed");
            return Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"errcode":"M_UNKNOWN","error":"Internal error; try again"}"#,
                ))
                .expect("a static response");
        }
    };
    metrics::counter!("tchap_visio_rate_limited_total").increment(1);
    let body = serde_json::json!({
        "errcode": "M_LIMIT_EXCEEDED",
        "error": "Too many requests; try again later",
        "retry_after_ms": wait_secs * 1000,
    });
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, wait_secs.to_string())
        .body(Body::from(body.to_string()))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt as _;
    use tower_governor::GovernorLayer;

    use super::*;

    fn request(path: &str, peer: &str, forwarded: Option<&str>) -> Request<Body> {
        let mut request = Request::post(path).body(Body::empty()).expect("request");
        request.extensions_mut().insert(ConnectInfo(
            format!("{peer}:5555")
                .parse::<SocketAddr>()
                .expect("address"),
        ));
        if let Some(forwarded) = forwarded {
            request
                .headers_mut()
                .insert("x-forwarded-for", forwarded.parse().expect("header"));
        }
        request
    }

    #[tokio::test]
    async fn the_eleventh_code_in_a_minute_from_one_address_gets_429_with_retry_after() {
        let limits = RateLimits::new(&crate::config::RateLimitsConfig::default()).expect("on");
        let app = Router::new()
            .route(
                "/api/v1/meetings/{slug}/verification",
                post(|| async { "ok" }),
            )
            .route_layer(GovernorLayer::new(limits.codes.clone()).error_handler(too_many_requests));
        let path = "/api/v1/meetings/abc/verification";
        for i in 0..CODES_PER_IP.burst {
            let response = app
                .clone()
                .oneshot(request(path, "192.0.2.1", None))
                .await
                .expect("answer");
            assert_eq!(response.status(), StatusCode::OK, "request {i}");
        }
        let refused = app
            .clone()
            .oneshot(request(path, "192.0.2.1", None))
            .await
            .expect("answer");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = refused.headers()[header::RETRY_AFTER]
            .to_str()
            .expect("text")
            .parse()
            .expect("seconds");
        assert!((1..=6).contains(&retry), "{retry}");
        let body = axum::body::to_bytes(refused.into_body(), 1024)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
        // Another address has its own bucket.
        let other = app
            .oneshot(request(path, "192.0.2.2", None))
            .await
            .expect("answer");
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let extractor = ClientIp {
            trusted_proxies: Arc::new(vec!["10.0.0.1".parse().expect("ip")]),
        };
        let key = |peer, forwarded| {
            extractor
                .extract(&request("/", peer, forwarded))
                .expect("a key")
                .to_string()
        };
        assert_eq!(
            key("10.0.0.1", Some("198.51.100.7, 203.0.113.9")),
            "203.0.113.9"
        );
        assert_eq!(key("10.0.0.1", None), "10.0.0.1");
        assert_eq!(key("192.0.2.1", Some("203.0.113.9")), "192.0.2.1");
        let meeting = MeetingKey
            .extract(&request("/api/v1/meetings/slug123/join", "192.0.2.1", None))
            .expect("key");
        assert_eq!(meeting, "slug123");
    }
}
