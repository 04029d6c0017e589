//! The meeting page: the files `scripts/build-web.sh` builds into `web/dist/`, embedded
//! in release builds (read from disk in debug builds, so the page can be rebuilt without
//! recompiling). `/m/{slug}` always serves the same `index.html`; the page reads the slug
//! from its URL.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

#[derive(rust_embed::RustEmbed)]
#[folder = "web/dist/"]
#[allow_missing = true]
struct WebAssets;

/// Shown by debug builds when the page was not built (release builds refuse to compile
/// without it, see build.rs).
const NOT_BUILT: &str = "<!doctype html><html lang=\"fr\"><meta charset=\"utf-8\"><title>Visio</title>\
<body><h1>La page de réunion n’est pas construite</h1><p>Lancez <code>scripts/build-web.sh</code> puis rechargez.</p>\
<h2 lang=\"en\">The meeting page is not built</h2><p lang=\"en\">Run <code>scripts/build-web.sh</code>, then reload.</p></body></html>";

/// The page's Content-Security-Policy: everything from this server only, WebSockets to
/// the SFU address the join endpoint hands out.
fn content_security_policy(ws_origin: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         img-src 'self' data: blob:; media-src 'self' blob: mediastream:; \
         connect-src 'self' {ws_origin}; worker-src 'self' blob:; font-src 'self'; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
    )
}

/// `ws://host:port` of a WebSocket base URL, for the CSP.
fn ws_origin(public_ws_url: &str) -> String {
    match url::Url::parse(public_ws_url) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => String::new(),
    }
}

/// The origins the page may open WebSockets to: the SFU's public address, and in a
/// cluster every node's own URL, since the join answer may send it to any of them.
async fn ws_origins(state: &AppState) -> String {
    let mut origins = vec![ws_origin(&state.public_ws_url)];
    if state.cluster_node.is_some() {
        match state.store.node_urls().await {
            Ok(urls) => origins.extend(
                urls.iter()
                    .map(|url| ws_origin(&super::join::ws_base_url(url))),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes' URLs: the page may reach the public address only");
            }
        }
    }
    origins.retain(|origin| !origin.is_empty());
    origins.dedup();
    origins.join(" ")
}

pub async fn page(State(state): State<AppState>, Path(_slug): Path<String>) -> Response {
    let csp = content_security_policy(&ws_origins(&state).await);
    let (status, body) = match WebAssets::get("index.html") {
        Some(file) => (StatusCode::OK, file.data.into_owned()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            NOT_BUILT.as_bytes().to_vec(),
        ),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page changes with each release; its hashed assets never do.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static(
            "camera=(self), microphone=(self), display-capture=(self), speaker-selection=(self)",
        ),
    );
    response
}

pub async fn asset(Path(path): Path<String>) -> Response {
    let Some(file) = WebAssets::get(&format!("assets/{path}")) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let mut response = file.data.into_owned().into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_server() {
        let csp = content_security_policy(&ws_origin("wss://visio.example.gouv.fr"));
        assert!(
            csp.contains("connect-src 'self' wss://visio.example.gouv.fr;"),
            "{csp}"
        );
        assert!(csp.contains("default-src 'self'"));
        assert!(!csp.contains('*'));
    }
}
