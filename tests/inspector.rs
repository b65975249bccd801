//! `/inspector`: the page and its assets are served with security headers at both
//! mount points, and `/inspector/dev-keys` does not exist outside dev mode.

mod common;

use common::*;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"), "{path}");
        let csp = header(&headers, "content-security-policy").expect("csp");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let html = String::from_utf8_lossy(&body);
        assert!(html.contains("<title>Realtime inspector</title>"), "{html}");
        // The page loads its script from this server, never from elsewhere.
        assert!(html.contains("src=\"/inspector/inspector.js\""), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    }
    let (status, headers, body) = s.http("GET", "/inspector/inspector.js", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/javascript; charset=utf-8"));
    assert!(String::from_utf8_lossy(&body).contains("phx_join"));
}

#[tokio::test]
async fn inspector_dev_keys_is_not_found_outside_dev_mode() {
    let s = Server::start().await;
    let (status, _, _) = s.http("GET", "/inspector/dev-keys", &[], b"").await;
    assert_eq!(status, 404);
}
