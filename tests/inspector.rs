//! `/inspector`: the page and its assets are served with security headers at both
//! mount points and refer to each other by relative paths; `/inspector/dev-keys` hands
//! out the development keys only in development mode, to a loopback request on a
//! loopback-bound server, and is 404 everywhere else. What the page does in a browser is
//! tested in `tests/js/test/inspector.test.mjs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use common::*;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `GET path` with the given `Host` header (the harness' `http` always sends 127.0.0.1).
async fn get_with_host(
    port: u16,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("http timeout")
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("http head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn inspector_page_is_html_with_security_headers() {
    let s = Server::start().await;
    for path in ["/inspector", "/realtime/v1/inspector"] {
        let (status, headers, body) = s.http("GET", path, &[], b"").await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header(&headers, "x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"), "{path}");
        let csp = header(&headers, "content-security-policy").expect("csp");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("style-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        // WebSockets only to the host the page came from, not to any host.
        assert!(
            csp.contains("connect-src 'self' ws://127.0.0.1 wss://127.0.0.1"),
            "{csp}"
        );
        assert!(!csp.contains(" ws: ") && !csp.contains(" wss:;"), "{csp}");
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("<title>Realtime inspector</title>"), "{html}");
        // Assets by relative path (so a proxy mounting only /realtime/v1 serves them),
        // never from elsewhere, and no inline script or style.
        assert!(
            html.contains("<script src=\"inspector/inspector.js\" defer></script>"),
            "{html}"
        );
        assert!(html.contains("href=\"inspector/inspector.css\""), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<style") && !html.contains(" style="),
            "{html}"
        );
        for asset in ["/inspector/inspector.js", "/inspector/inspector.css"] {
            let prefixed = format!("{}{asset}", path.trim_end_matches("/inspector"));
            let (status, _, _) = s.http("GET", &prefixed, &[], b"").await;
            assert_eq!(status, 200, "{prefixed}");
        }
    }
    let (status, headers, body) = s.http("GET", "/inspector/inspector.js", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/javascript; charset=utf-8"));
    let js = String::from_utf8_lossy(&body);
    assert!(
        js.contains("vsn=2.0.0") && js.contains("phx_join"),
        "the page speaks vsn 2"
    );
    for sink in [
        ".innerHTML",
        ".outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(
            !js.contains(sink),
            "the page never inserts HTML or evaluates text: {sink}"
        );
    }
    let (status, headers, _) = s.http("GET", "/inspector/inspector.css", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/css; charset=utf-8"));
}

#[tokio::test]
async fn inspector_with_a_trailing_slash_redirects_relatively_keeping_the_query() {
    let s = Server::start().await;
    for path in ["/inspector/", "/realtime/v1/inspector/"] {
        let (status, headers, _) = s
            .http("GET", &format!("{path}?topic=room%3A1&private=true"), &[], b"")
            .await;
        assert_eq!(status, 301, "{path}");
        assert_eq!(
            header(&headers, "location"),
            Some("../inspector?topic=room%3A1&private=true"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn inspector_dev_keys_is_not_found_outside_dev_mode() {
    let s = Server::start().await;
    for path in ["/inspector/dev-keys", "/realtime/v1/inspector/dev-keys"] {
        let (status, _, body) = s.http("GET", path, &[], b"").await;
        assert_eq!(status, 404, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("eyJ"), "{path}");
    }
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("stdout line in time")
        .unwrap()
        .expect("a line")
}

/// A server started with no JWT configuration at all, and the keys it printed.
async fn dev_mode_server(host: &str) -> (Child, u16, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtime"))
        .env_clear()
        .env("PORT", "0")
        .env("HOST", host)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_line(&mut lines).await;
    let port = first.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap();
    let (mut anon, mut service) = (String::new(), String::new());
    for _ in 0..3 {
        let l = next_line(&mut lines).await;
        if let Some(k) = l.strip_prefix("ANON_KEY=") {
            anon = k.to_owned();
        } else if let Some(k) = l.strip_prefix("SERVICE_ROLE_KEY=") {
            service = k.to_owned();
        }
    }
    assert!(!anon.is_empty() && !service.is_empty(), "dev mode printed its keys");
    (child, port, anon, service)
}

#[tokio::test]
async fn inspector_dev_keys_are_the_printed_keys_for_a_loopback_request_in_dev_mode() {
    let (_child, port, anon, service) = dev_mode_server("127.0.0.1").await;
    for host in ["127.0.0.1", "localhost:1234", "[::1]:4000"] {
        for path in ["/inspector/dev-keys", "/realtime/v1/inspector/dev-keys"] {
            let (status, headers, body) = get_with_host(port, path, host, &[]).await;
            assert_eq!(status, 200, "{host} {path}");
            let keys: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(keys["anon"], anon.as_str());
            assert_eq!(keys["service_role"], service.as_str());
            // No CORS: a page of another origin cannot read it.
            assert_eq!(header(&headers, "access-control-allow-origin"), None, "{headers:?}");
            assert_eq!(header(&headers, "cache-control"), Some("no-store"));
        }
    }
    // A DNS-rebinding name pointing at us is not a loopback Host.
    for host in ["evil.example", "evil.example:4000", "127.0.0.1.evil.example"] {
        let (status, headers, body) = get_with_host(port, "/inspector/dev-keys", host, &[]).await;
        assert_eq!(status, 404, "{host}");
        assert!(!String::from_utf8_lossy(&body).contains("eyJ"), "{host}");
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
    }
    // The keys do what their roles may: the service key lists channels, anon may not.
    let (status, _, _) = get_with_host(
        port,
        "/api/channels",
        "127.0.0.1",
        &[("authorization", &format!("Bearer {service}"))],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = get_with_host(
        port,
        "/api/channels",
        "127.0.0.1",
        &[("authorization", &format!("Bearer {anon}"))],
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn inspector_dev_keys_are_not_served_by_a_dev_mode_server_listening_beyond_loopback() {
    let (_child, port, _, _) = dev_mode_server("0.0.0.0").await;
    let (status, _, body) = get_with_host(port, "/inspector/dev-keys", "127.0.0.1", &[]).await;
    assert_eq!(status, 404);
    assert!(!String::from_utf8_lossy(&body).contains("eyJ"));
}

#[tokio::test]
async fn inspector_dev_keys_with_the_public_dev_secret_are_signed_with_it() {
    let s = Server::start_with(&[("JWT_SECRET", realtime::cli::DEV_JWT_SECRET)]).await;
    let (status, _, body) = s.http("GET", "/inspector/dev-keys", &[], b"").await;
    assert_eq!(status, 200);
    let keys: Value = serde_json::from_slice(&body).unwrap();
    let service = keys["service_role"].as_str().unwrap();
    let (status, _, _) = s
        .http(
            "GET",
            "/api/channels",
            &[("authorization", &format!("Bearer {service}"))],
            b"",
        )
        .await;
    assert_eq!(status, 200, "the service key is accepted as service_role");
    let anon = keys["anon"].as_str().unwrap();
    let (status, _, _) = s
        .http(
            "GET",
            "/api/channels",
            &[("authorization", &format!("Bearer {anon}"))],
            b"",
        )
        .await;
    assert_eq!(status, 403, "the anon key is anon");
}
