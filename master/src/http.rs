//! The master's HTTP server: the accept loop, the connection pools and the request guards
//! that every route (native, jobs, services, agents and the Mesos routes of `shoal-compat`)
//! passes through.
//!
//! **Connections.** Each accepted connection is in one of three pools:
//! - *general*: up to `max_connections`. At the cap, the connection that has waited longest
//!   for a request head (one that has not finished sending its head, or is idle between
//!   requests) is closed to make room; a connection with a request in flight is never shed.
//! - *reserved*: when every general connection has a request in flight, up to
//!   [`limits::HTTP_RESERVED_CONNECTIONS`] more are accepted, and they serve only `/health`
//!   and the agent link upgrade (anything else gets 503), so a flood of slow requests cannot
//!   take `/health` or agents down.
//! - *agent links*: a connection upgraded to an agent's WebSocket leaves the other pools and
//!   counts against `agent_links_max` (a cell has up to 10,000 agents); links are never shed.
//!
//! - *libprocess links*: a connection whose request is a libprocess message (a v0 framework's
//!   own connection for everything it sends) joins the links pool too: libprocess does not
//!   resend what a closed connection lost, so it is never shed nor timed out while idle.
//!
//! The caps are fitted under the process's descriptor limit (raised to its hard limit first).
//! A reaper closes a connection that has not sent a complete head within
//! [`limits::HTTP_HEADER_READ_TIMEOUT_SECS`], which also bounds how long a connection may sit
//! idle between requests (links excepted); a request body must arrive within
//! [`limits::HTTP_BODY_READ_TIMEOUT_SECS`]. Every request carries two extensions: its
//! connection's peer address (axum's `ConnectInfo<SocketAddr>`: where an agent's link comes
//! from) and a [`ConnectionHandle`].
//!
//! **Bodies in flight.** Every request reserves its declared `Content-Length` (a chunked body
//! reserves as it arrives) against [`limits::REQUEST_BODY_BYTES_IN_FLIGHT_MAX`] until its
//! response is done; a request that does not fit is answered 503 with `Retry-After` at once
//! (it does not wait), so stalled uploads cannot hold memory without bound.
//!
//! **Cross-site requests.** A browser page on another site must not drive the master:
//! - an unknown `Host` gets 421 (DNS rebinding): accepted are loopback names and addresses,
//!   the address the connection reached, and the names and addresses the master publishes
//!   ([`HostList`]);
//! - a state-changing request (POST, PUT, DELETE, PATCH) or a WebSocket upgrade whose
//!   `Origin` is not the master's own gets 403; a request without `Origin` (curl, the CLI,
//!   agents, frameworks) is not a browser's cross-site request and passes;
//! - a request body must be `application/json` or `application/x-protobuf` (what the Mesos
//!   v1 API accepts), or `application/toml` (job and service files); anything else gets 415,
//!   so a cross-site "simple" request (`text/plain`, forms) is never read.
//!
//! libprocess requests (`Libprocess-From`, or `User-Agent: libprocess/…`) are exempt from the
//! `Content-Type` rule, and from the `Host` rule when their `Host` is empty: libmesos sends an
//! empty `Host:` and no `Content-Type` (a browser cannot send an empty `Host`).

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::limits;

mod body;
mod guards;
mod pools;

use body::*;
use guards::*;
pub use guards::{is_libprocess, origin_allowed, HostList};
use pools::*;
pub use pools::{ConnectionHandle, Connections};

/// The path of the agents' WebSocket link.
pub const AGENT_CONNECT_PATH: &str = "/api/shoal/v1/agent/connect";

/// How the server treats connections and requests.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Connections in the general pool; `None` fits it under the descriptor limit.
    pub max_connections: Option<usize>,
    /// Agent links (upgraded connections) at most.
    pub agent_links_max: usize,
    /// Names and addresses a request's `Host` may carry (besides loopback and the address
    /// the connection reached).
    pub hosts: HostList,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Bytes of request bodies held at once, over every connection.
    pub body_bytes_in_flight_max: u64,
}

impl HttpConfig {
    /// The defaults for a master that listens on `listen`: the listen address and the
    /// machine's hostname are accepted hosts.
    pub fn new(listen: SocketAddr) -> HttpConfig {
        let mut hosts = HostList::default();
        if !listen.ip().is_unspecified() {
            hosts.add(&listen.ip().to_string());
        }
        if let Some(h) = machine_hostname() {
            hosts.add(&h);
        }
        HttpConfig {
            max_connections: None,
            agent_links_max: limits::AGENT_LINKS_MAX,
            hosts,
            header_read_timeout: Duration::from_secs(limits::HTTP_HEADER_READ_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(limits::HTTP_BODY_READ_TIMEOUT_SECS),
            body_bytes_in_flight_max: limits::REQUEST_BODY_BYTES_IN_FLIGHT_MAX,
        }
    }
}

/// The machine's hostname, as `gethostname(2)` gives it.
pub fn machine_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // (or truncates, which the search for NUL below handles).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// What every connection's requests share.
struct Shared {
    router: Router,
    conns: Arc<Connections>,
    budget: Arc<BodyBudget>,
    config: HttpConfig,
}

impl Shared {
    async fn handle(
        self: Arc<Self>,
        id: u64,
        local: Option<IpAddr>,
        peer: SocketAddr,
        shed: Arc<Notify>,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        req.extensions_mut().insert(ConnectionHandle { shed });
        req.extensions_mut().insert(ConnectInfo(peer));
        let pool = self.conns.begin_request(id);
        let mut done = RequestDone {
            conns: self.conns.clone(),
            id,
            _reservation: None,
        };
        let libprocess = is_libprocess(req.headers());
        let resp = match self.check(pool, local, &req) {
            Some(refusal) => refusal,
            None => {
                // A libprocess peer keeps one connection open for all its messages and does
                // not resend what a closed one lost: the connection becomes a link.
                if libprocess {
                    self.conns.linked(id);
                }
                self.call(req, &mut done).await
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.conns.linked(id);
        }
        resp.map(|inner| Body::new(TrackedBody { inner, _done: done }))
    }

    /// The guards, in order: pool, `Host`, `Origin`, `Content-Type`; the refusal, if any.
    fn check(
        &self,
        pool: Option<Pool>,
        local: Option<IpAddr>,
        req: &Request<Incoming>,
    ) -> Option<Response<Body>> {
        self.over_capacity(pool, req)
            .or_else(|| cross_site(&self.config.hosts, local, req))
    }

    /// A request the connection's pool does not serve: the reserved pool serves only
    /// `/health` and the agent link, and agent links stop at their cap.
    fn over_capacity(&self, pool: Option<Pool>, req: &Request<Incoming>) -> Option<Response<Body>> {
        let path = req.uri().path();
        let headers = req.headers();
        let agent_link = path == AGENT_CONNECT_PATH;
        let libprocess = is_libprocess(headers);
        if pool == Some(Pool::Reserved) && path != "/health" && !agent_link && !libprocess {
            return Some(refuse(
                path,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the master is at its connection limit",
                true,
            ));
        }
        let new_link =
            (agent_link && is_upgrade(headers)) || (libprocess && pool != Some(Pool::Link));
        if new_link && self.conns.links() >= self.conns.max_links {
            return Some(refuse(
                path,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the master is at its link limit (agents and libprocess peers)",
                true,
            ));
        }
        None
    }

    async fn call(&self, req: Request<Incoming>, done: &mut RequestDone) -> Response<Body> {
        let declared = declared_length(req.headers())
            .unwrap_or(0)
            .min(limits::REQUEST_BODY_BYTES_MAX as u64 + 1);
        let reservation = Arc::new(Reservation {
            budget: self.budget.clone(),
            bytes: AtomicU64::new(0),
        });
        if declared > 0 && !reservation.grow(declared) {
            return refuse(
                req.uri().path(),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "too many request bodies in flight: try again shortly",
                true,
            );
        }
        done._reservation = Some(reservation.clone());
        let timeout = self.config.body_read_timeout;
        let req = req.map(|inner| {
            Body::new(GuardedBody {
                inner,
                deadline: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                reservation,
                reserved: declared,
                seen: 0,
            })
        });
        let mut router = self.router.clone();
        match tower_service::Service::call(&mut router, req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// The next connection, with Nagle off: watch entries and agent messages are small writes
/// that must not wait for the ACK of an earlier one. A failed accept (out of descriptors, a
/// connection reset before it was accepted) waits a moment rather than spin.
async fn accept_next(listener: &tokio::net::TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one admitted connection (`io`, from `peer`), each request through
/// [`Shared::handle`], upgrades allowed, until it ends, is shed, or the server stops (then
/// gracefully: the request in flight finishes).
async fn serve_connection(
    shared: Arc<Shared>,
    builder: Arc<hyper::server::conn::http1::Builder>,
    io: TrackedStream,
    peer: SocketAddr,
    shed: Arc<Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = io.id;
    let local = io.inner.local_addr().ok().map(|a| a.ip());
    let handle_shed = shed.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let shed = handle_shed.clone();
        async move { Ok::<_, Infallible>(shared.handle(id, local, peer, shed, req).await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = shed.notified() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Closes every connection that has waited longer than `timeout` for a request head (a
/// head not finished, or none since its last answer); links are exempt. Runs until aborted.
async fn reap_waiting(conns: Arc<Connections>, timeout: Duration) {
    let period = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(deadline) = tokio::time::Instant::now().checked_sub(timeout) else {
            continue;
        };
        let reaped = conns.lock().reap_waiting(deadline);
        if reaped > 0 {
            tracing::debug!(
                connections = reaped,
                "closed connections that sent no request head in time"
            );
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish for up to [`limits::HTTP_SHUTDOWN_GRACE_SECS`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::MasterError> {
    let (max_general, max_links) = fit_caps(&config);
    tracing::info!(
        max_connections = max_general,
        agent_links_max = max_links,
        "serving HTTP"
    );
    let conns = Arc::new(Connections::new(max_general, max_links));
    let shared = Arc::new(Shared {
        router,
        conns: conns.clone(),
        budget: Arc::new(BodyBudget {
            in_flight: AtomicU64::new(0),
            max: config.body_bytes_in_flight_max,
        }),
        config,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header-read timeout is the reaper's (below), not hyper's: hyper's would also close
    // a libprocess link that is idle between two messages.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits::HTTP_CONNECTION_BUFFER_BYTES);
    let reaper = tokio::spawn(reap_waiting(
        conns.clone(),
        shared.config.header_read_timeout,
    ));
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            a = accept_next(&listener) => a,
            _ = &mut shutdown => break,
        };
        let Some((id, _pool, shed)) = conns.admit() else {
            drop(stream);
            continue;
        };
        let io = TrackedStream {
            inner: stream,
            conns: conns.clone(),
            id,
        };
        let stop = stop_rx.clone();
        tokio::spawn(serve_connection(
            shared.clone(),
            builder.clone(),
            io,
            peer,
            shed,
            stop,
        ));
    }
    reaper.abort();
    let _ = stop_tx.send(true);
    let drained = async {
        while conns.http_count() > 0 {
            conns.closed.notified().await;
        }
    };
    let grace = Duration::from_secs(limits::HTTP_SHUTDOWN_GRACE_SECS);
    let _ = tokio::time::timeout(grace, drained).await;
    Ok(())
}
