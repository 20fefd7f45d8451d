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
//! The caps are fitted under the process's descriptor limit (raised to its hard limit first).
//! hyper's header-read timeout closes a connection that has not sent a complete head within
//! [`limits::HTTP_HEADER_READ_TIMEOUT_SECS`], which also bounds how long a connection may sit
//! idle between requests; a request body must arrive within
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

/// The path of the agents' WebSocket link.
pub const AGENT_CONNECT_PATH: &str = "/api/shoal/v1/agent/connect";

/// A handler's hold on its request's connection (a request extension): `close` ends the
/// connection, e.g. when a streamed answer's client stopped reading.
#[derive(Clone)]
pub struct ConnectionHandle {
    shed: Arc<Notify>,
}

impl ConnectionHandle {
    pub fn close(&self) {
        self.shed.notify_one();
    }
}

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

/// The hosts a request may name: loopback always, plus every name and address the master
/// publishes (its listen address, hostname, advertised IP; later the addresses it writes to
/// ZooKeeper and puts in redirects).
#[derive(Clone, Debug, Default)]
pub struct HostList {
    names: BTreeSet<String>,
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
fn same_ip(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
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
fn host_part(host: &str) -> String {
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
fn authority_parts(authority: &str) -> (String, Option<&str>) {
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
fn content_type_allowed(headers: &HeaderMap) -> bool {
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

fn has_body(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || declared_length(req.headers()).is_some_and(|n| n > 0)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn is_state_changing(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// A refusal in the form its route answers errors: `{"error", "message"}` JSON on the native
/// API, plain text (as Mesos answers) elsewhere.
fn refuse(
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pool {
    General,
    Reserved,
    Link,
}

struct Slot {
    pool: Pool,
    /// Set while the connection waits for a request head: its place in the shedding order.
    waiting: Option<u64>,
    shed: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    slots: HashMap<u64, Slot>,
    /// Connections waiting for a head, oldest first, per pool (general, reserved).
    waiting: [BTreeSet<(u64, u64)>; 2],
    counts: [usize; 3],
    next_id: u64,
    next_seq: u64,
}

impl Table {
    fn pool_index(p: Pool) -> usize {
        match p {
            Pool::General => 0,
            Pool::Reserved => 1,
            Pool::Link => 2,
        }
    }

    fn set_waiting(&mut self, id: u64, waiting: bool) {
        let seq = self.next_seq;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.pool == Pool::Link {
            return;
        }
        let i = Table::pool_index(slot.pool);
        if let Some(old) = slot.waiting.take() {
            self.waiting[i].remove(&(old, id));
        }
        if waiting {
            slot.waiting = Some(seq);
            self.waiting[i].insert((seq, id));
            self.next_seq += 1;
        }
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        let i = Table::pool_index(slot.pool);
        if let Some(seq) = slot.waiting {
            self.waiting[i].remove(&(seq, id));
        }
        self.counts[i] -= 1;
        Some(slot)
    }

    /// Closes the connection of `pool` that has waited longest for a head, if any.
    fn shed_oldest(&mut self, pool: Pool) -> bool {
        let Some(&(_, id)) = self.waiting[Table::pool_index(pool)].iter().next() else {
            return false;
        };
        if let Some(slot) = self.remove(id) {
            slot.shed.notify_one();
        }
        true
    }
}

/// The live connections, by pool.
pub struct Connections {
    table: Mutex<Table>,
    max_general: usize,
    max_links: usize,
    shed_count: AtomicU64,
    /// Wakes a graceful shutdown waiting for connections to close.
    closed: Notify,
}

impl Connections {
    fn new(max_general: usize, max_links: usize) -> Connections {
        Connections {
            table: Mutex::new(Table::default()),
            max_general,
            max_links,
            shed_count: AtomicU64::new(0),
            closed: Notify::new(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Table> {
        self.table.lock()
    }

    /// Admits a new connection (shedding a waiting one at the cap), or `None` to close it.
    fn admit(&self) -> Option<(u64, Pool, Arc<Notify>)> {
        let mut t = self.lock();
        let pool = if t.counts[0] < self.max_general {
            Pool::General
        } else if t.shed_oldest(Pool::General) {
            self.shed_count.fetch_add(1, Ordering::Relaxed);
            Pool::General
        } else if t.counts[1] < limits::HTTP_RESERVED_CONNECTIONS {
            Pool::Reserved
        } else if t.shed_oldest(Pool::Reserved) {
            self.shed_count.fetch_add(1, Ordering::Relaxed);
            Pool::Reserved
        } else {
            return None;
        };
        let id = t.next_id;
        t.next_id += 1;
        let shed = Arc::new(Notify::new());
        t.slots.insert(
            id,
            Slot {
                pool,
                waiting: None,
                shed: shed.clone(),
            },
        );
        t.counts[Table::pool_index(pool)] += 1;
        t.set_waiting(id, true);
        Some((id, pool, shed))
    }

    fn begin_request(&self, id: u64) -> Option<Pool> {
        let mut t = self.lock();
        t.set_waiting(id, false);
        t.slots.get(&id).map(|s| s.pool)
    }

    fn end_request(&self, id: u64) {
        self.lock().set_waiting(id, true);
    }

    fn links(&self) -> usize {
        self.lock().counts[2]
    }

    /// The connection now carries an agent link: it moves to the links pool.
    fn upgraded(&self, id: u64) {
        let mut t = self.lock();
        let Some(slot) = t.slots.get_mut(&id) else {
            return;
        };
        let from = Table::pool_index(slot.pool);
        slot.pool = Pool::Link;
        if let Some(seq) = slot.waiting.take() {
            t.waiting[from].remove(&(seq, id));
        }
        t.counts[from] -= 1;
        t.counts[2] += 1;
    }

    fn close(&self, id: u64) {
        self.lock().remove(id);
        self.closed.notify_waiters();
    }

    /// Connections in the general and reserved pools (not agent links).
    fn http_count(&self) -> usize {
        let t = self.lock();
        t.counts[0] + t.counts[1]
    }
}

/// The caps for the general pool and the agent links, fitted under the descriptor limit
/// (raised to the hard limit first).
fn fit_caps(config: &HttpConfig) -> (usize, usize) {
    let limit = raise_nofile_limit();
    let budget = limit
        .saturating_sub(limits::FD_SPARE + limits::HTTP_RESERVED_CONNECTIONS)
        .max(2);
    let mut links = config.agent_links_max;
    let mut general = config
        .max_connections
        .unwrap_or(limits::HTTP_CONNECTIONS_MAX);
    if general + links > budget {
        if config.max_connections.is_some() && general < budget {
            links = budget - general;
        } else {
            links = links.min(budget * 2 / 3);
            general = general.min(budget - links).max(1);
        }
        // Only a cap the operator asked for is worth a warning; the defaults are meant to
        // shrink on a host with a low descriptor limit.
        if config.max_connections.is_some() {
            tracing::warn!(
                descriptor_limit = limit,
                max_connections = general,
                agent_links_max = links,
                "connection caps lowered to fit the descriptor limit"
            );
        } else {
            tracing::info!(
                descriptor_limit = limit,
                max_connections = general,
                agent_links_max = links,
                "connection caps fitted to the descriptor limit"
            );
        }
    }
    (general, links)
}

/// Raises the soft RLIMIT_NOFILE to the hard one; the soft limit after.
fn raise_nofile_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

/// A connection's socket; closing it (dropping, also after an upgrade) leaves the pools.
struct TrackedStream {
    inner: TcpStream,
    conns: Arc<Connections>,
    id: u64,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.conns.close(self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// ---------------------------------------------------------------- bodies in flight

/// Bytes of request bodies held, over every connection.
struct BodyBudget {
    in_flight: AtomicU64,
    max: u64,
}

impl BodyBudget {
    fn try_take(&self, n: u64) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }
}

/// What one request holds of the budget, given back when its response is done.
struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: AtomicU64,
}

impl Reservation {
    fn grow(&self, n: u64) -> bool {
        if self.budget.try_take(n) {
            self.bytes.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let n = *self.bytes.get_mut();
        self.budget.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("too many request bodies in flight")]
    OverBudget,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A request body with a deadline, counted against the budget beyond what it reserved.
struct GuardedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    reservation: Arc<Reservation>,
    /// Bytes covered by the reservation taken up front (the declared length).
    reserved: u64,
    seen: u64,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let before = this.seen;
                    this.seen += n;
                    let over = this.seen.saturating_sub(this.reserved.max(before));
                    if over > 0 && !this.reservation.grow(over) {
                        return Poll::Ready(Some(Err(BodyError::OverBudget)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request done (and gives back its body budget) when it
/// ends or is dropped.
struct TrackedBody {
    inner: Body,
    _done: RequestDone,
}

struct RequestDone {
    conns: Arc<Connections>,
    id: u64,
    _reservation: Option<Arc<Reservation>>,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.conns.end_request(self.id);
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- serving

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
        let resp = match self.check(pool, local, &req) {
            Some(refusal) => refusal,
            None => self.call(req, &mut done).await,
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.conns.upgraded(id);
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
        let path = req.uri().path();
        let headers = req.headers();
        let agent_link = path == AGENT_CONNECT_PATH;
        if pool == Some(Pool::Reserved) && path != "/health" && !agent_link {
            return Some(refuse(
                path,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the master is at its connection limit",
                true,
            ));
        }
        if agent_link && is_upgrade(headers) && self.conns.links() >= self.conns.max_links {
            return Some(refuse(
                path,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the master is at its agent link limit",
                true,
            ));
        }
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
            if !exempt && !self.config.hosts.accepts(host, local) {
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
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_buf_size(limits::HTTP_CONNECTION_BUFFER_BYTES);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before it was accepted: wait a
                // moment rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // No Nagle: watch entries and agent messages are small writes that must not wait for
        // the ACK of an earlier one.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let Some((id, _pool, shed)) = conns.admit() else {
            drop(stream);
            continue;
        };
        let local = stream.local_addr().ok().map(|a| a.ip());
        let io = TokioIo::new(TrackedStream {
            inner: stream,
            conns: conns.clone(),
            id,
        });
        let shared = shared.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let handle_shed = shed.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let shed = handle_shed.clone();
                async move { Ok::<_, Infallible>(shared.handle(id, local, peer, shed, req).await) }
            });
            let conn = builder.serve_connection(io, svc).with_upgrades();
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
        });
    }
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

    #[test]
    fn the_oldest_waiting_connection_is_shed_and_busy_ones_are_kept() {
        let c = Connections::new(2, 10);
        let (a, _, _) = c.admit().unwrap();
        let (b, _, _) = c.admit().unwrap();
        assert_eq!(c.begin_request(b), Some(Pool::General));
        // At the cap: `a` waits for a head, `b` is busy: `a` goes.
        let (d, pool, _) = c.admit().unwrap();
        assert_eq!(pool, Pool::General);
        assert!(!c.lock().slots.contains_key(&a));
        // Both busy now: the next goes to the reserved pool.
        c.begin_request(d);
        let (e, pool, _) = c.admit().unwrap();
        assert_eq!(pool, Pool::Reserved);
        c.upgraded(b);
        assert_eq!(c.links(), 1);
        c.end_request(b); // an upgraded link never waits again
        assert!(c.lock().waiting[0].is_empty());
        c.close(e);
        c.close(b);
        assert_eq!(c.http_count(), 1);
    }
}
