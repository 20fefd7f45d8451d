//! Item 7 of the outsider probes: a browser page on any site could drive a master on the
//! operator's machine (a cross-origin `text/plain` POST committed a claim, a foreign `Host`
//! was served, a cross-origin WebSocket upgrade to the agent endpoint was accepted).

use std::time::Duration;

use crate::connections::{claim, raw, Master};

const WITHIN: Duration = Duration::from_secs(5);

/// A request with the given extra header lines and body, `Connection: close`.
fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("Connection: close\r\n\r\n");
    r.push_str(body);
    r.into_bytes()
}

async fn status_of(master: &Master, req: Vec<u8>) -> (u16, String) {
    raw(&master.addr, &req, WITHIN)
        .await
        .unwrap_or_else(|| panic!("no answer; log:\n{}", master.log()))
}

async fn committed(master: &Master, claim_id: &str) -> bool {
    shoal_tests::get_json(
        &reqwest::Client::new(),
        &master.url(&format!("/api/shoal/v1/claims/{claim_id}")),
    )
    .await
    .is_some()
}

fn host(master: &Master) -> String {
    format!("Host: {}", master.addr)
}

/// A cross-origin "simple" request (`text/plain`, no preflight) carrying a claim: 415, and
/// nothing is committed.
#[tokio::test]
async fn cross_site_text_plain_claim_is_refused() {
    let master = Master::start(&[], None);
    let agent = master.agent("cpus:4;mem:1024").await;
    let body = claim("plain", &agent, 0).to_string();
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &[&host(&master), "Content-Type: text/plain;charset=UTF-8"],
            &body,
        ),
    )
    .await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(!committed(&master, "plain").await);
    // The same claim as JSON commits.
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &[&host(&master), "Content-Type: application/json"],
            &body,
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(committed(&master, "plain").await);
}

/// A state-changing request from a foreign `Origin`: 403, nothing committed; from the
/// master's own origin it is served.
#[tokio::test]
async fn cross_site_foreign_origin_is_refused() {
    let master = Master::start(&[], None);
    let agent = master.agent("cpus:4;mem:1024").await;
    for origin in ["Origin: http://evil.example", "Origin: null"] {
        let (status, text) = status_of(
            &master,
            request(
                "POST",
                "/api/shoal/v1/claims",
                &[&host(&master), "Content-Type: application/json", origin],
                &claim("foreign", &agent, 0).to_string(),
            ),
        )
        .await;
        assert_eq!(status, 403, "{origin}: {text}");
    }
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/tasks/nope/kill",
            &[&host(&master), "Origin: http://evil.example"],
            "",
        ),
    )
    .await;
    assert_eq!(status, 403, "kill: {text}");
    assert!(!committed(&master, "foreign").await);
    let own = format!("Origin: http://{}", master.addr);
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &[&host(&master), "Content-Type: application/json", &own],
            &claim("own", &agent, 0).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(committed(&master, "own").await);
}

/// DNS rebinding: a `Host` the master does not publish gets 421; loopback names pass.
#[tokio::test]
async fn cross_site_unknown_host_is_refused() {
    let master = Master::start(&[], None);
    let agent = master.agent("cpus:4;mem:1024").await;
    let port = master.addr.rsplit(':').next().unwrap().to_string();
    for h in [
        "Host: evil.example".to_string(),
        format!("Host: evil.example:{port}"),
    ] {
        let (status, text) =
            status_of(&master, request("GET", "/api/shoal/v1/state", &[&h], "")).await;
        assert_eq!(status, 421, "{h}: {text}");
        let (status, text) = status_of(&master, request("GET", "/master/state", &[&h], "")).await;
        assert_eq!(status, 421, "{h}: {text}");
    }
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &["Host: evil.example", "Content-Type: application/json"],
            &claim("rebound", &agent, 0).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 421, "{text}");
    assert!(!committed(&master, "rebound").await);
    for h in [
        format!("Host: localhost:{port}"),
        format!("Host: 127.0.0.1:{port}"),
    ] {
        let (status, text) =
            status_of(&master, request("GET", "/api/shoal/v1/state", &[&h], "")).await;
        assert_eq!(status, 200, "{h}: {text}");
    }
}

/// A WebSocket upgrade to the agent endpoint from a foreign `Origin` is refused; the same
/// upgrade without `Origin` (as agents send it) or from the master's own origin is accepted.
#[tokio::test]
async fn cross_site_agent_link_checks_origin() {
    let master = Master::start(&[], None);
    let upgrade = |origin: Option<String>| {
        let mut headers = vec![
            host(&master),
            "Upgrade: websocket".to_string(),
            "Connection: Upgrade".to_string(),
            "Sec-WebSocket-Version: 13".to_string(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_string(),
        ];
        headers.extend(origin);
        let mut r = String::from("GET /api/shoal/v1/agent/connect HTTP/1.1\r\n");
        for h in headers {
            r.push_str(&h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    let (status, text) =
        status_of(&master, upgrade(Some("Origin: http://evil.example".into()))).await;
    assert_eq!(status, 403, "{text}");
    let (status, text) = status_of(&master, upgrade(None)).await;
    assert_eq!(status, 101, "{text}");
    let (status, text) = status_of(
        &master,
        upgrade(Some(format!("Origin: http://{}", master.addr))),
    )
    .await;
    assert_eq!(status, 101, "{text}");
}

/// libmesos sends an empty `Host:` and no `Content-Type`: its requests are exempt from the
/// `Content-Type` rule, and from the `Host` rule when `Host` is empty (a request without
/// `Origin` is not a cross-site one).
#[tokio::test]
async fn cross_site_libprocess_requests_pass() {
    let master = Master::start(&[], None);
    let agent = master.agent("cpus:4;mem:1024").await;
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &["Host:", "Libprocess-From: scheduler(1)@127.0.0.1:9"],
            &claim("libprocess", &agent, 0).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(committed(&master, "libprocess").await);
    let (status, text) = status_of(
        &master,
        request(
            "GET",
            "/master/state",
            &["Host:", "User-Agent: libprocess/scheduler(1)@127.0.0.1:9"],
            "",
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // A named foreign Host is refused even with the libprocess marks (a rebound page could
    // add them), and without the marks an empty Host is refused too.
    let (status, text) = status_of(
        &master,
        request(
            "POST",
            "/api/shoal/v1/claims",
            &[
                "Host: evil.example",
                "Libprocess-From: scheduler(1)@127.0.0.1:9",
            ],
            &claim("rebound", &agent, 0).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 421, "{text}");
    assert!(!committed(&master, "rebound").await);
    let (status, text) = status_of(&master, request("GET", "/master/state", &["Host:"], "")).await;
    assert_eq!(status, 421, "{text}");
}
