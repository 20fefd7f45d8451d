//! Receiving libprocess messages: a request is a message when libprocess would take it for
//! one (`3rdparty/libprocess/src/process.cpp`, `libprocess()` and `parse()`):
//!
//! - it is a `POST` and carries `Libprocess-From` or a `User-Agent` starting `libprocess/`;
//! - the sender is `Libprocess-From` (trimmed), else the `User-Agent`'s text after
//!   `libprocess/`;
//! - the path is `/<process id>/<message name>`: the id percent-decoded, the name as is.
//!
//! It is answered `202 Accepted` (no body, the connection kept open) once the message is in
//! the inbound queue, or `404 Not Found` when no process has that id. libprocess answers a
//! peer whose `User-Agent` says `libprocess/` nothing at all (that peer ignores responses);
//! hyper answers every request, and a 202 is what libprocess gives every other sender, so
//! Shoal answers 202 to all. HTTP/1.1 pipelining (libmesos writes requests back to back)
//! is hyper's: requests on one connection are served, and answered, in order.
//!
//! Where Shoal differs, and why:
//! - a request that is not a message (no sender header) gets 404: libprocess takes it for an
//!   HTTP request to the process's endpoint of that name, which the master does not have;
//! - a sender that is not a UPID gets 400: libprocess delivers it with an empty UPID, which
//!   nothing can answer, so the framework would wait forever;
//! - a body over [`LIBPROCESS_MESSAGE_BYTES_MAX`] gets 413 (libprocess has no bound);
//! - when the queue stays full for [`LIBPROCESS_INBOUND_WAIT_SECS`] the message gets 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use axum::Router;
use tokio::sync::mpsc;

use super::upid::{Upid, UpidError};
use crate::limits::{
    LIBPROCESS_INBOUND_QUEUE_MAX, LIBPROCESS_INBOUND_WAIT_SECS, LIBPROCESS_MESSAGE_BYTES_MAX,
};

/// The header naming the sender of a libprocess message.
pub const LIBPROCESS_FROM: &str = "libprocess-from";
/// The `User-Agent` prefix of libprocess, followed by the sender's UPID.
pub const USER_AGENT_PREFIX: &str = "libprocess/";

/// One libprocess message, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who sent it, by its own account (`Libprocess-From`): where answers go.
    pub from: Upid,
    /// The TCP peer the request came from: what the dial policy compares `from` against.
    pub peer: SocketAddr,
    /// The message name: the protobuf type's full name, e.g. `mesos.scheduler.Call`.
    pub name: String,
    /// The serialized protobuf message.
    pub body: Bytes,
}

/// Why a request is not a deliverable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("not a libprocess message (no Libprocess-From or libprocess User-Agent)")]
    NotLibprocess,
    #[error("Failed to determine sender from request headers: {0}")]
    BadSender(UpidError),
    #[error("Request URL path must start with '/'")]
    BadPath,
    #[error("Failed to decode URL path: {0}")]
    BadPercentEncoding(String),
    #[error("no process '{0}'")]
    UnknownProcess(String),
}

impl InboundError {
    /// The status libprocess (or, where it has none, Shoal) answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::NotLibprocess | InboundError::UnknownProcess(_) => StatusCode::NOT_FOUND,
            InboundError::BadSender(_)
            | InboundError::BadPath
            | InboundError::BadPercentEncoding(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// What the head of a libprocess request says: sender, destination process and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: Upid,
    /// The destination process id, percent-decoded.
    pub to: String,
    pub name: String,
}

/// Whether libprocess takes the request for a message (`libprocess()` in process.cpp).
pub fn is_message(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::POST
        && (headers.contains_key(LIBPROCESS_FROM)
            || headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ua| ua.starts_with(USER_AGENT_PREFIX)))
}

/// Reads a request head as libprocess's `parse()` does.
pub fn parse_head(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Envelope, InboundError> {
    if !is_message(method, headers) {
        return Err(InboundError::NotLibprocess);
    }
    let from = sender(headers)?;
    let rest = path.strip_prefix('/').ok_or(InboundError::BadPath)?;
    let (to, name) = rest.split_once('/').unwrap_or((rest, ""));
    let to = percent_decode(to)?;
    Ok(Envelope {
        from,
        to,
        name: name.to_owned(),
    })
}

fn sender(headers: &HeaderMap) -> Result<Upid, InboundError> {
    // A header value that is not visible ASCII cannot hold a UPID; libprocess would read
    // garbage from it, Shoal refuses it like any other unreadable sender.
    let text = |v: &axum::http::HeaderValue| {
        v.to_str()
            .map(str::to_owned)
            .map_err(|_| InboundError::BadSender(UpidError::BadId))
    };
    let from = match headers.get(LIBPROCESS_FROM) {
        Some(v) => text(v)?,
        None => {
            let ua = headers
                .get(header::USER_AGENT)
                .map(text)
                .transpose()?
                .unwrap_or_default();
            match ua.find(USER_AGENT_PREFIX) {
                Some(i) => ua[i + USER_AGENT_PREFIX.len()..].to_owned(),
                None => return Err(InboundError::NotLibprocess),
            }
        }
    };
    from.parse::<Upid>().map_err(InboundError::BadSender)
}

/// Percent-decodes a path segment as stout's `http::decode`: `%XX` with two hex digits, `+`
/// left alone (it means a space only in query strings). The result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, InboundError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    InboundError::BadPercentEncoding(format!("malformed % escape in '{s}'"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| InboundError::BadPercentEncoding(format!("'{s}' is not UTF-8 once decoded")))
}

/// The receiving end of the libprocess transport: checks and reads messages and hands them to
/// a bounded queue, in the order each connection sent them.
#[derive(Clone)]
pub struct Inbound {
    /// The process ids messages may be addressed to (the master: `master`).
    processes: Arc<[String]>,
    tx: mpsc::Sender<Message>,
    body_bytes_max: usize,
    queue_wait: Duration,
}

impl Inbound {
    /// An inbound end for the given process ids, and the queue its messages arrive on
    /// ([`LIBPROCESS_INBOUND_QUEUE_MAX`] deep).
    pub fn new(processes: impl IntoIterator<Item = String>) -> (Inbound, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(LIBPROCESS_INBOUND_QUEUE_MAX);
        let inbound = Inbound {
            processes: processes.into_iter().collect(),
            tx,
            body_bytes_max: LIBPROCESS_MESSAGE_BYTES_MAX,
            queue_wait: Duration::from_secs(LIBPROCESS_INBOUND_WAIT_SECS),
        };
        (inbound, rx)
    }

    /// Serves one request from `peer`: reads it as a message and queues it (202), or refuses
    /// it with the status libprocess would give.
    pub async fn handle(&self, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
        let envelope = match parse_head(req.method(), req.uri().path(), req.headers()) {
            Ok(e) => e,
            Err(e) => return refuse(e.status(), &e.to_string()),
        };
        if !self.processes.contains(&envelope.to) {
            let e = InboundError::UnknownProcess(envelope.to);
            return refuse(e.status(), &e.to_string());
        }
        let body = match read_body(req.into_body(), self.body_bytes_max).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "a libprocess message is at most {} bytes",
                        self.body_bytes_max
                    ),
                );
            }
            Err(BodyError::Unreadable(e)) => {
                tracing::debug!(%peer, error = %e, "libprocess message body unreadable");
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "the message body could not be read",
                );
            }
        };
        let message = Message {
            from: envelope.from,
            peer,
            name: envelope.name,
            body,
        };
        match tokio::time::timeout(self.queue_wait, self.tx.send(message)).await {
            Ok(Ok(())) => accepted(),
            Ok(Err(_)) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no longer receiving messages",
            ),
            Err(_) => {
                tracing::warn!(%peer, "libprocess inbound queue full, message refused");
                refuse(StatusCode::SERVICE_UNAVAILABLE, "too many messages waiting")
            }
        }
    }

    /// A router that serves `POST /<process id>/<name>` for each process id through
    /// [`Inbound::handle`]; it needs `ConnectInfo<SocketAddr>` on every request (the master's
    /// accept loop and `into_make_service_with_connect_info` add it).
    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for process in self.processes.iter() {
            router = router.route(
                &format!("/{process}/{{*name}}"),
                axum::routing::post(serve).with_state(self.clone()),
            );
        }
        router
    }
}

enum BodyError {
    TooLarge,
    Unreadable(axum::Error),
}

/// Reads a whole body, chunked or with a Content-Length alike (hyper has decoded the framing),
/// stopping as soon as it grows past `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Bytes, BodyError> {
    use tokio_stream::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Unreadable)?;
        if buf.len().saturating_add(chunk.len()) > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn serve(
    State(inbound): State<Inbound>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    inbound.handle(peer, req).await
}

fn accepted() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp
}

fn refuse(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(text.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const PID: &str = "scheduler-1@127.0.0.1:4000";

    #[test]
    fn recognises_messages_as_libprocess() {
        let post = Method::POST;
        assert!(is_message(&post, &headers(&[("Libprocess-From", PID)])));
        assert!(is_message(
            &post,
            &headers(&[("User-Agent", "libprocess/x@1.2.3.4:5")])
        ));
        assert!(!is_message(
            &post,
            &headers(&[("User-Agent", "curl/8 libprocess/")])
        ));
        assert!(!is_message(
            &Method::GET,
            &headers(&[("Libprocess-From", PID)])
        ));
        assert!(!is_message(&post, &headers(&[])));
    }

    #[test]
    fn parses_sender_destination_and_name() {
        let e = parse_head(
            &Method::POST,
            "/master/mesos.scheduler.Call",
            &headers(&[("Libprocess-From", &format!("  {PID} "))]),
        )
        .unwrap();
        assert_eq!(e.from.to_string(), PID);
        assert_eq!(e.to, "master");
        assert_eq!(e.name, "mesos.scheduler.Call");
        // The sender from the User-Agent when there is no Libprocess-From.
        let e = parse_head(
            &Method::POST,
            "/mast%65r/mesos.internal.RegisterFrameworkMessage",
            &headers(&[("User-Agent", &format!("libprocess/{PID}"))]),
        )
        .unwrap();
        assert_eq!(e.from.to_string(), PID);
        assert_eq!(e.to, "master");
        assert_eq!(e.name, "mesos.internal.RegisterFrameworkMessage");
        // Libprocess-From wins over the User-Agent.
        let e = parse_head(
            &Method::POST,
            "/master",
            &headers(&[
                ("User-Agent", "libprocess/other@10.0.0.1:1"),
                ("Libprocess-From", PID),
            ]),
        )
        .unwrap();
        assert_eq!(e.from.to_string(), PID);
        assert_eq!(e.name, "");
    }

    #[test]
    fn refuses_what_libprocess_cannot_deliver() {
        let from = headers(&[("Libprocess-From", PID)]);
        assert_eq!(
            parse_head(&Method::POST, "/master/x", &headers(&[])),
            Err(InboundError::NotLibprocess)
        );
        assert!(matches!(
            parse_head(
                &Method::POST,
                "/master/x",
                &headers(&[("Libprocess-From", "nope")])
            ),
            Err(InboundError::BadSender(_))
        ));
        assert!(matches!(
            parse_head(&Method::POST, "/ma%zzster/x", &from),
            Err(InboundError::BadPercentEncoding(_))
        ));
        assert!(matches!(
            parse_head(&Method::POST, "/ma%ff/x", &from),
            Err(InboundError::BadPercentEncoding(_))
        ));
        assert!(matches!(
            parse_head(&Method::POST, "/ma%4", &from),
            Err(InboundError::BadPercentEncoding(_))
        ));
        assert_eq!(
            parse_head(&Method::POST, "master/x", &from),
            Err(InboundError::BadPath)
        );
        assert_eq!(InboundError::NotLibprocess.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            InboundError::UnknownProcess("x".into()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn percent_decoding_never_panics() {
        for s in ["%", "%%", "%%%", "%e", "a%", "%C3%A9", "\u{e9}%"] {
            let _ = percent_decode(s);
        }
        assert_eq!(percent_decode("%C3%A9+").unwrap(), "\u{e9}+");
    }
}
