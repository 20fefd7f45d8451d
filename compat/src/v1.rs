//! The Mesos v1 scheduler HTTP API, `POST /api/v1/scheduler`: content negotiation, calls
//! read straight into the typed `Call` (JSON or protobuf), one session per event stream
//! (`Mesos-Stream-Id`), events written as RecordIO records with heartbeats, and Mesos's
//! statuses and texts for what is refused. What a call means is the framework model's
//! (`crate::frameworks`); this layer only speaks the wire format.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use prost::Message as _;
use shoal_proto::mesos::v1::scheduler::{call, event, Call, Event};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;

use crate::error::CompatError;
use crate::frameworks::{bare_event, call_type, error_event, SessionId};
use crate::limits;
use crate::shell::{Compat, EventSink};
use crate::zk::MasterAddress;

/// The encodings of the v1 API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }
}

/// The session id a stream id that names no open stream maps to: never handed out, so the
/// model refuses the call as coming from another session.
const NO_STREAM: SessionId = SessionId(0);

pub(crate) fn router() -> Router<Arc<Compat>> {
    Router::new().route("/api/v1/scheduler", axum::routing::post(scheduler))
}

/// Encodes an event as one RecordIO record.
pub(crate) fn record(encoding: Encoding, event: &Event) -> Option<Bytes> {
    let bytes = match encoding {
        Encoding::Json => serde_json::to_vec(&shoal_proto::json::to_json_value(event)).ok()?,
        Encoding::Protobuf => event.encode_to_vec(),
    };
    Some(shoal_proto::recordio::encode(&bytes))
}

/// A v1 event stream: the response body's channel, in the encoding the framework accepts.
struct V1Sink {
    tx: mpsc::Sender<Bytes>,
    encoding: Encoding,
    /// Ends the stream (with an ERROR first when it carries a message); taken once.
    stop: Mutex<Option<oneshot::Sender<Option<String>>>>,
}

impl EventSink for V1Sink {
    fn send(&self, event: &Event) -> bool {
        let Some(r) = record(self.encoding, event) else {
            return false;
        };
        let sent = self.tx.try_send(r).is_ok();
        // As Mesos: a HEARTBEAT right after SUBSCRIBED.
        if sent && event.r#type == Some(event::Type::Subscribed as i32) {
            if let Some(h) = record(self.encoding, &bare_event(event::Type::Heartbeat)) {
                let _ = self.tx.try_send(h);
            }
        }
        sent
    }

    fn close(&self, error: Option<String>) {
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(error);
        }
    }

    /// Fewer than [`limits::OFFERS_WITHHELD_EVENTS_UNREAD`] events wait in its buffer.
    fn reads(&self) -> bool {
        self.tx.max_capacity() - self.tx.capacity() < limits::OFFERS_WITHHELD_EVENTS_UNREAD
    }
}

/// The call, or why it is refused.
fn parse_call(headers: &HeaderMap, body: &Bytes) -> Result<(Call, Encoding), CompatError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = if ct.starts_with("application/json") {
        Encoding::Json
    } else if ct.starts_with("application/x-protobuf") {
        Encoding::Protobuf
    } else {
        return Err(CompatError::UnsupportedMediaType(format!(
            "Expecting 'Content-Type' of application/json or application/x-protobuf, got '{ct}'"
        )));
    };
    let call: Call = match encoding {
        Encoding::Json => shoal_proto::json::from_json_slice(body)
            .map_err(|e| CompatError::Invalid(format!("Failed to parse body into Call: {e}")))?,
        Encoding::Protobuf => Call::decode(body.as_ref())
            .map_err(|e| CompatError::Invalid(format!("Failed to parse body into Call: {e}")))?,
    };
    Ok((call, encoding))
}

fn accepts(headers: &HeaderMap, fallback: Encoding) -> Option<Encoding> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(fallback);
    };
    let mut out = None;
    for part in accept
        .split(',')
        .map(|p| p.split(';').next().unwrap_or("").trim())
    {
        match part {
            "application/json" => return Some(Encoding::Json),
            "application/x-protobuf" => return Some(Encoding::Protobuf),
            "*/*" | "application/*" => out = Some(fallback),
            _ => {}
        }
    }
    out
}

/// The master as the framework reached it (the `Host` of its SUBSCRIBE): SUBSCRIBED's
/// `master_info` when no address is configured. `ip` is 0.0.0.0 when `Host` is a name.
fn reached_at(headers: &HeaderMap) -> MasterAddress {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:5050");
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().unwrap_or(5050)),
        None => (host.to_string(), 5050),
    };
    MasterAddress {
        id: String::new(),
        ip: hostname.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        port,
        hostname,
    }
}

async fn scheduler(State(c): State<Arc<Compat>>, headers: HeaderMap, body: Bytes) -> Response {
    let (call, encoding) = match parse_call(&headers, &body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if call_type(&call) == call::Type::Subscribe {
        if headers.contains_key("mesos-stream-id") {
            return CompatError::Invalid(
                "Subscribe calls should not include the 'Mesos-Stream-Id' header".into(),
            )
            .into_response();
        }
        let Some(enc) = accepts(&headers, encoding) else {
            return CompatError::NotAcceptable(
                "Expecting 'Accept' to allow application/json or application/x-protobuf".into(),
            )
            .into_response();
        };
        return subscribe(c, &call, enc, &reached_at(&headers));
    }
    let session = headers
        .get("mesos-stream-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| c.streams.lock().get(s).copied().unwrap_or(NO_STREAM));
    match c.call(session, call).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The answer to a SUBSCRIBE of a framework this master removed (TEARDOWN, or its failover
/// timeout passed): as Mesos, a stream with one ERROR event, then closed.
fn removed_framework(encoding: Encoding) -> Response {
    let event = error_event(&CompatError::Removed.to_string());
    let body = record(encoding, &event).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.content_type())
        // Mesos names the stream before it refuses the subscription.
        .header("Mesos-Stream-Id", uuid::Uuid::new_v4().to_string())
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn subscribe(c: Arc<Compat>, call: &Call, encoding: Encoding, host: &MasterAddress) -> Response {
    let stream_id = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = mpsc::channel::<Bytes>(limits::EVENT_BUFFER);
    let (stop_tx, mut stop_rx) = oneshot::channel::<Option<String>>();
    let sink = Arc::new(V1Sink {
        tx: tx.clone(),
        encoding,
        stop: Mutex::new(Some(stop_tx)),
    });
    let session = c.open_session(sink);
    // A v1 re-subscription always takes over (`force`).
    if let Err(e) = c.subscribe(session, call, true, Some(host)) {
        let c2 = c.clone();
        tokio::spawn(async move { c2.session_ended(session).await });
        return match e {
            CompatError::Removed => removed_framework(encoding),
            CompatError::Unavailable(_) => {
                let mut r = e.into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                r
            }
            e => e.into_response(),
        };
    }
    c.streams.lock().insert(stream_id.clone(), session);
    let c2 = c.clone();
    tokio::spawn(async move {
        // Heartbeats until the stream closes; then the session has ended.
        let mut tick = tokio::time::interval(c2.heartbeat_interval());
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(r) = record(encoding, &bare_event(event::Type::Heartbeat)) {
                        if tx.send(r).await.is_err() { break; }
                    }
                }
                _ = tx.closed() => break,
                // A newer subscription took over (an ERROR, then the stream ends, as Mesos
                // does), or the framework was removed (the stream just ends).
                stop = &mut stop_rx => {
                    if let Ok(Some(message)) = stop {
                        if let Some(r) = record(encoding, &error_event(&message)) {
                            let _ = tx.send(r).await;
                        }
                    }
                    break;
                }
            }
        }
        drop(tx);
        c2.session_ended(session).await;
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::io::Error>),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.content_type())
        .header("Mesos-Stream-Id", stream_id)
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
