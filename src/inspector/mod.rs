//! The inspector: one self-contained page (HTML, JS and CSS embedded in the
//! binary) that speaks the Phoenix protocol to this server, so a person can
//! join a topic, watch what arrives, broadcast and track presence.
//! Served at `/inspector` and `/realtime/v1/inspector`.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
use hyper::{Response, StatusCode};

use crate::http::{response, Body};

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/inspector.js");
const STYLE: &str = include_str!("assets/inspector.css");

/// Only this origin: scripts, styles and fetches from self, WebSocket to the same host.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The inspector's response for `path` (already stripped of `/realtime/v1`), or
/// `None` when the path is not the inspector's.
pub fn route(path: &str) -> Option<Response<Body>> {
    let (content_type, body) = match path {
        "/inspector" | "/inspector/" => ("text/html; charset=utf-8", PAGE),
        "/inspector/inspector.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/inspector/inspector.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut r = response(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    Some(r)
}
