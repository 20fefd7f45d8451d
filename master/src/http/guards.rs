//! The cross-site guards every request passes (`Host`, `Origin`, `Content-Type`) and the
//! libprocess exemptions from them; see the module doc of [`super`].

use super::*;

/// The hosts a request may name: loopback always, plus every name and address the master
/// publishes (its listen address, hostname, advertised IP; later the addresses it writes to
/// ZooKeeper and puts in redirects).
#[derive(Clone, Debug, Default)]
pub struct HostList {
    pub(super) names: BTreeSet<String>,
}

impl HostList {
    /// Adds a name or address (a port, if given, is ignored).
    pub fn add(&mut self, host: &str) {
        let h = host_part(host);
        if !h.is_empty() {
            self.names.insert(h);
        }
    }

    /// Whether `host` (a `Host` header or an authority, port optional) names this master;
    /// `local` is the address the connection reached.
    pub fn accepts(&self, host: &str, local: Option<IpAddr>) -> bool {
        let h = host_part(host);
        if h.is_empty() {
            return false;
        }
        if h == "localhost" || h.ends_with(".localhost") || self.names.contains(&h) {
            return true;
        }
        match h.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || Some(ip) == local || same_ip(Some(ip), local),
            Err(_) => false,
        }
    }
}

/// An IPv4 address and its IPv6-mapped form are the same address.
pub(super) fn same_ip(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    matches!((a, b), (Some(a), Some(b)) if canon(a) == canon(b))
}

/// The host of `host[:port]` or `[v6]:port`, lowercased, without a trailing dot or brackets.
pub(super) fn host_part(host: &str) -> String {
    let host = host.trim();
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() > 1 {
        host // a bare IPv6 address
    } else {
        host.split(':').next().unwrap_or("")
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// `host` and the port as written (`None` when absent) of an authority.
pub(super) fn authority_parts(authority: &str) -> (String, Option<&str>) {
    let a = authority.trim();
    let port = if let Some(i) = a.rfind(']') {
        a[i + 1..].strip_prefix(':')
    } else if a.matches(':').count() == 1 {
        a.split(':').nth(1)
    } else {
        None
    };
    (host_part(a), port.filter(|p| !p.is_empty()))
}

/// Whether a request is from libmesos (exempt from the `Host` and `Content-Type` rules).
pub fn is_libprocess(headers: &HeaderMap) -> bool {
    headers.contains_key("libprocess-from")
        || headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("libprocess/"))
}

/// Whether a request's `Origin`, if any, is the master's own: same host and port as its
/// `Host`. A request without `Origin` is not a browser's cross-site request.
pub fn origin_allowed(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "same-origin" || site == "none" {
            return true;
        }
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null" and anything else opaque
    };
    let (o_host, mut o_port) = authority_parts(authority);
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    if o_port == Some(default) {
        o_port = None;
    }
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (h_host, mut h_port) = authority_parts(host);
    if h_port == Some(default) {
        h_port = None;
    }
    !o_host.is_empty() && o_host == h_host && o_port == h_port
}

/// The media types a request body may have.
pub(super) fn content_type_allowed(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/json" | "application/x-protobuf" | "application/toml"
    )
}

pub(super) fn has_body(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || declared_length(req.headers()).is_some_and(|n| n > 0)
}

pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn is_state_changing(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A refusal in the form its route answers errors: `{"error", "message"}` JSON on the native
/// API, plain text (as Mesos answers) elsewhere.
pub(super) fn refuse(
    path: &str,
    status: StatusCode,
    kind: &str,
    message: &str,
    close: bool,
) -> Response<Body> {
    let native = path.starts_with("/api/shoal/") || path == "/health";
    let (body, content_type) = if native {
        (
            serde_json::json!({"error": kind, "message": message}).to_string(),
            "application/json",
        )
    } else {
        (message.to_string(), "text/plain; charset=utf-8")
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

// ---------------------------------------------------------------- connection pools

/// A cross-site request, refused: an unknown `Host` (421), a state-changing request or an
/// upgrade from another `Origin` (403), a body of a media type the master does not read
/// (415). libprocess requests are exempt from the `Content-Type` rule, and from the `Host`
/// rule when their `Host` is empty.
pub(super) fn cross_site(
    hosts: &HostList,
    local: Option<IpAddr>,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let path = req.uri().path();
    let headers = req.headers();
    let libprocess = is_libprocess(headers);
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    if let Some(host) = host {
        // libmesos sends an empty `Host:`; a browser always names one, so a page that
        // rebound a name to us cannot pass as libprocess by adding its header.
        let exempt = libprocess && host.trim().is_empty();
        if !exempt && !hosts.accepts(host, local) {
            return Some(refuse(
                path,
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected",
                &format!("this master does not serve host '{host}'"),
                false,
            ));
        }
    }
    if (is_state_changing(req.method()) || is_upgrade(headers)) && !origin_allowed(headers) {
        return Some(refuse(
            path,
            StatusCode::FORBIDDEN,
            "forbidden",
            "cross-origin requests are refused",
            false,
        ));
    }
    if !libprocess && has_body(req) && !content_type_allowed(headers) {
        return Some(refuse(
            path,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!(
                "Expecting 'Content-Type' of application/json or application/x-protobuf \
                 (application/toml for job and service files), got '{}'",
                headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            ),
            true,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts_accept_loopback_published_and_reached_addresses() {
        let mut hosts = HostList::default();
        hosts.add("master.example:5050");
        hosts.add("10.0.0.5");
        let local = Some("192.168.1.9".parse().unwrap());
        for ok in [
            "localhost:5050",
            "LOCALHOST",
            "ui.localhost",
            "127.0.0.1:1",
            "[::1]:5050",
            "master.example",
            "master.example.:80",
            "10.0.0.5:5050",
            "192.168.1.9:5050",
        ] {
            assert!(hosts.accepts(ok, local), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:5050",
            "",
            "10.0.0.6",
            "master.example.evil",
        ] {
            assert!(!hosts.accepts(bad, local), "{bad}");
        }
    }

    #[test]
    fn origin_must_match_host() {
        assert!(origin_allowed(&headers(&[("host", "127.0.0.1:5050")])));
        assert!(origin_allowed(&headers(&[
            ("host", "127.0.0.1:5050"),
            ("origin", "http://127.0.0.1:5050")
        ])));
        assert!(origin_allowed(&headers(&[
            ("host", "master.example"),
            ("origin", "https://master.example")
        ])));
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:3000",
            "file://",
        ] {
            assert!(
                !origin_allowed(&headers(&[("host", "127.0.0.1:5050"), ("origin", bad)])),
                "{bad}"
            );
        }
        assert!(!origin_allowed(&headers(&[("origin", "http://a")])));
    }

    #[test]
    fn libprocess_and_content_types() {
        assert!(is_libprocess(&headers(&[(
            "libprocess-from",
            "scheduler-1@10.0.0.1:5051"
        )])));
        assert!(is_libprocess(&headers(&[(
            "user-agent",
            "libprocess/1.11"
        )])));
        assert!(!is_libprocess(&headers(&[("user-agent", "curl/8")])));
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/x-protobuf",
            "application/toml",
        ] {
            assert!(
                content_type_allowed(&headers(&[("content-type", ok)])),
                "{ok}"
            );
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert!(
                !content_type_allowed(&headers(&[("content-type", bad)])),
                "{bad}"
            );
        }
        assert!(!content_type_allowed(&HeaderMap::new()));
    }
}
