//! The inspector: one self-contained page (HTML, JS and CSS embedded in the
//! binary) that speaks the Phoenix protocol (vsn 2.0.0) to this server, so a person can
//! list the live channels, join a topic, watch what arrives, broadcast and track presence.
//! Served at `/inspector` and `/realtime/v1/inspector`; the page refers to its assets
//! and to the API by relative paths, so it works under either mount point.
//!
//! `GET /inspector/dev-keys` hands the development keys to the page, and only in
//! development mode, on a server bound to a loopback address, to a request naming a
//! loopback host (a page of another site cannot read it: no CORS header, and a DNS
//! rebinding name is not a loopback host). Anywhere else it is 404, as if absent.

use std::net::IpAddr;

use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, HOST, LOCATION, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{HeaderMap, Response, StatusCode, Uri};
use serde_json::json;

use crate::app::App;
use crate::http::{empty, json_error, response, Body};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/inspector.js");
const STYLE: &str = include_str!("assets/inspector.css");

/// Only this origin: scripts, styles and fetches from self; the WebSocket only to the
/// host the page was loaded from (added per request, see [`csp`]).
const CSP_BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The inspector's response for `path` (already stripped of `/realtime/v1`), or
/// `None` when the path is not the inspector's.
pub fn route(app: &App, uri: &Uri, headers: &HeaderMap, path: &str) -> Option<Response<Body>> {
    let (content_type, body) = match path {
        "/inspector" => ("text/html; charset=utf-8", PAGE),
        // Relative asset paths resolve against the directory: send `/inspector/` to
        // `/inspector` (relative, so the `/realtime/v1` mount keeps its prefix).
        "/inspector/" => return Some(redirect_to_page(uri)),
        "/inspector/inspector.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/inspector/inspector.css" => ("text/css; charset=utf-8", STYLE),
        "/inspector/dev-keys" => return Some(dev_keys(app, headers)),
        _ => return None,
    };
    let mut r = response(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&csp(headers)) {
        h.insert(CONTENT_SECURITY_POLICY, v);
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(r)
}

/// The CSP for a request: [`CSP_BASE`] plus `connect-src 'self'` and, when the `Host`
/// header is a plain host\[:port\], `ws://` and `wss://` to that host only.
fn csp(headers: &HeaderMap) -> String {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| plain_host(h));
    match host {
        Some(h) => format!("{CSP_BASE}; connect-src 'self' ws://{h} wss://{h}"),
        None => format!("{CSP_BASE}; connect-src 'self'"),
    }
}

/// A host name or address with an optional port, nothing that could end a CSP source.
fn plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 262
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn redirect_to_page(uri: &Uri) -> Response<Body> {
    let location = match uri.query() {
        Some(q) => format!("../inspector?{q}"),
        None => "../inspector".to_owned(),
    };
    let mut r = empty(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// `{"anon": …, "service_role": …}` in development mode, for a loopback request to a
/// loopback-bound server; 404 otherwise. No CORS header (unlike the API).
fn dev_keys(app: &App, headers: &HeaderMap) -> Response<Body> {
    let host = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let keys = app
        .config
        .dev_keys
        .as_ref()
        .filter(|_| app.config.host.is_loopback() && loopback_host(host));
    let mut r = match keys {
        Some(k) => response(
            StatusCode::OK,
            "application/json",
            json!({"anon": k.anon, "service_role": k.service_role}).to_string(),
        ),
        None => json_error(StatusCode::NOT_FOUND, "message", "Not Found"),
    };
    let h = r.headers_mut();
    h.remove(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `localhost`, a loopback address, either with a port: what a browser on this machine
/// sends, and what a DNS-rebinding page cannot.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_port() {
        for h in [
            "localhost",
            "LOCALHOST:4000",
            "127.0.0.1",
            "127.0.0.1:4000",
            "[::1]",
            "[::1]:4000",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "",
            "example.com",
            "127.0.0.1.evil.com:4000",
            "10.0.0.1:4000",
            "[::2]:1",
            "localhost.evil",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn csp_names_the_request_host_for_websockets_and_nothing_else() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:4000"));
        let c = csp(&h);
        assert!(
            c.ends_with("connect-src 'self' ws://127.0.0.1:4000 wss://127.0.0.1:4000"),
            "{c}"
        );
        h.insert(HOST, HeaderValue::from_static("a; script-src *"));
        assert!(csp(&h).ends_with("connect-src 'self'"));
    }
}
