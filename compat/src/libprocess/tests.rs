//! The transport against real servers and sockets on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The scheduler's UPID of the inbound tests (nothing dials it).
const SCHEDULER: &str = "scheduler-5e4c1a7e-0b1d-4f55-8c1a-3d6f0e2b9a11@127.0.0.1:45678";

/// One request exactly as libmesos 1.11's `MessageEncoder` writes it to the master: an empty
/// `Host:`, no `Content-Type`, a chunked body.
fn libmesos_request(name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST /master/{name} HTTP/1.1\r\n\
         User-Agent: libprocess/{SCHEDULER}\r\n\
         Libprocess-From: {SCHEDULER}\r\n\
         Connection: Keep-Alive\r\n\
         Host: \r\n\
         Transfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// Reads from `stream` until `n` status lines have come, within the deadline.
async fn read_responses(stream: &mut TcpStream, n: usize) -> String {
    let mut text = String::new();
    let mut buf = vec![0u8; 8192];
    let read_all = async {
        while text.matches("HTTP/1.1 ").count() < n {
            let got = stream.read(&mut buf).await.expect("read responses");
            assert!(got > 0, "connection closed after {text:?}");
            text.push_str(&String::from_utf8_lossy(&buf[..got]));
        }
    };
    tokio::time::timeout(DEADLINE, read_all)
        .await
        .expect("responses within the deadline");
    text
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("within the deadline")
        .expect("queue open")
}

/// A router with the libprocess routes beside a route of the same prefix, as the master has
/// `/master/state` beside `/master/<message name>`.
fn master_router(inbound: &Inbound) -> Router {
    Router::new()
        .route("/master/state", axum::routing::get(|| async { "state" }))
        .merge(inbound.router())
}

fn name_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "mesos.scheduler.Call"
    } else {
        "mesos.internal.ReviveOffersMessage"
    }
}

/// Writes 25 libmesos requests in one TCP write and checks 25 `202`s come back on that
/// connection and the 25 messages arrive in order; then that the connection still serves.
async fn pipelined(addr: SocketAddr, mut rx: mpsc::Receiver<Message>) {
    const N: usize = 25;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut wire = Vec::new();
    for i in 0..N {
        wire.extend(libmesos_request(name_of(i), format!("body {i}").as_bytes()));
    }
    stream.write_all(&wire).await.unwrap();
    let text = read_responses(&mut stream, N).await;
    assert_eq!(
        text.matches("HTTP/1.1 202 Accepted\r\n").count(),
        N,
        "{text}"
    );
    let local = stream.local_addr().unwrap();
    for i in 0..N {
        let m = next(&mut rx).await;
        assert_eq!(m.from.to_string(), SCHEDULER);
        assert_eq!(m.peer, local);
        assert_eq!(m.name, name_of(i));
        assert_eq!(m.body, Bytes::from(format!("body {i}")));
    }
    stream
        .write_all(&libmesos_request("mesos.scheduler.Call", b"last"))
        .await
        .unwrap();
    let text = read_responses(&mut stream, 1).await;
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert_eq!(next(&mut rx).await.body, Bytes::from_static(b"last"));
    // The route beside them still answers.
    stream
        .write_all(b"GET /master/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let text = read_responses(&mut stream, 1).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn pipelined_libmesos_requests_on_plain_axum() {
    let (inbound, rx) = Inbound::new(["master".to_owned()]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = master_router(&inbound).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    pipelined(addr, rx).await;
    server.abort();
}

#[tokio::test]
async fn pipelined_libmesos_requests_through_the_masters_accept_loop() {
    let (inbound, rx) = Inbound::new(["master".to_owned()]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shoal_master::serve(
        listener,
        master_router(&inbound),
        async move {
            let _ = stop_rx.await;
        },
    ));
    pipelined(addr, rx).await;
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(DEADLINE, server).await;
}

/// mesos-go's v0 messenger writes messages with Go's net/http: `Libprocess-From` only, Go's
/// `User-Agent`, a `Content-Type`, a `Content-Length` body and a real `Host`.
#[tokio::test]
async fn mesos_go_requests_through_the_masters_accept_loop() {
    let (inbound, mut rx) = Inbound::new(["master".to_owned()]);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shoal_master::serve(
        listener,
        master_router(&inbound),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = b"\x0a\x02\x0a\x00";
    let head = format!(
        "POST /master/mesos.internal.RegisterFrameworkMessage HTTP/1.1\r\n\
         Host: {addr}\r\n\
         User-Agent: Go-http-client/1.1\r\n\
         Content-Length: {}\r\n\
         Connection: Keep-Alive\r\n\
         Content-Type: application/x-protobuf\r\n\
         Libprocess-From: {SCHEDULER}\r\n\
         Accept-Encoding: gzip\r\n\r\n",
        body.len()
    );
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    stream.write_all(&wire).await.unwrap();
    let text = read_responses(&mut stream, 1).await;
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    let m = next(&mut rx).await;
    assert_eq!(m.name, "mesos.internal.RegisterFrameworkMessage");
    assert_eq!(m.from.to_string(), SCHEDULER);
    assert_eq!(&m.body[..], &body[..]);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(DEADLINE, server).await;
}

fn request(path: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut b = Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

#[tokio::test]
async fn refusals_as_libprocess() {
    let (inbound, mut rx) = Inbound::new(["master".to_owned()]);
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let from = [("Libprocess-From", SCHEDULER)];
    let status = |r: Response| r.status();
    type Response = axum::http::Response<Body>;

    // No such process.
    let r = inbound
        .handle(peer, request("/slave(1)/x", &from, Body::empty()))
        .await;
    assert_eq!(status(r), StatusCode::NOT_FOUND);
    // Not a message: no sender header at all.
    let r = inbound
        .handle(
            peer,
            request("/master/mesos.scheduler.Call", &[], Body::empty()),
        )
        .await;
    assert_eq!(status(r), StatusCode::NOT_FOUND);
    // A sender that is not a UPID.
    let r = inbound
        .handle(
            peer,
            request(
                "/master/mesos.scheduler.Call",
                &[("User-Agent", "libprocess/nonsense")],
                Body::empty(),
            ),
        )
        .await;
    assert_eq!(status(r), StatusCode::BAD_REQUEST);
    // Too large a body.
    let big = vec![0u8; crate::limits::LIBPROCESS_MESSAGE_BYTES_MAX + 1];
    let r = inbound
        .handle(
            peer,
            request("/master/mesos.scheduler.Call", &from, Body::from(big)),
        )
        .await;
    assert_eq!(status(r), StatusCode::PAYLOAD_TOO_LARGE);
    // A percent-encoded process id is decoded; an empty body is a message too.
    let r = inbound
        .handle(
            peer,
            request("/mas%74er/mesos.scheduler.Call", &from, Body::empty()),
        )
        .await;
    assert_eq!(status(r), StatusCode::ACCEPTED);
    let m = next(&mut rx).await;
    assert_eq!(m.name, "mesos.scheduler.Call");
    assert!(m.body.is_empty());
    assert_eq!(m.peer, peer);
    assert!(rx.try_recv().is_err(), "refused requests queue nothing");
    // The queue's reader gone: 503.
    drop(rx);
    let r = inbound
        .handle(peer, request("/master/x", &from, Body::empty()))
        .await;
    assert_eq!(status(r), StatusCode::SERVICE_UNAVAILABLE);
}

// ---------------------------------------------------------------- outbound

/// What the stand-in scheduler received.
#[derive(Debug)]
struct Received {
    id: String,
    name: String,
    headers: HeaderMap,
    peer: SocketAddr,
    body: Bytes,
}

/// An axum server standing in for a scheduler: records every message and answers 202.
async fn scheduler_server() -> (
    SocketAddr,
    mpsc::Receiver<Received>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let app = Router::new()
        .route(
            "/{id}/{name}",
            axum::routing::post(
                move |Path((id, name)): Path<(String, String)>,
                      ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx
                            .send(Received {
                                id,
                                name,
                                headers,
                                peer,
                                body,
                            })
                            .await;
                        StatusCode::ACCEPTED
                    }
                },
            ),
        )
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, rx, server)
}

fn master_upid() -> Upid {
    Upid::new("master", Ipv4Addr::LOCALHOST, 5050).unwrap()
}

fn upid_at(id: &str, addr: SocketAddr) -> Upid {
    Upid::new(id, Ipv4Addr::LOCALHOST, addr.port()).unwrap()
}

#[tokio::test]
async fn messages_go_in_order_on_one_kept_alive_connection() {
    let (addr, mut received, server) = scheduler_server().await;
    let (outbound, mut exits) = Outbound::new(OutboundConfig::new(master_upid()));
    let peer = upid_at("scheduler-1", addr);
    outbound.link(&peer, LOOPBACK).unwrap();
    assert!(outbound.is_linked(&peer));
    for i in 0..50u32 {
        outbound
            .send(
                &peer,
                "mesos.internal.StatusUpdateMessage",
                &i.to_be_bytes(),
            )
            .unwrap();
    }
    let mut conn = None;
    for i in 0..50u32 {
        let r = next(&mut received).await;
        assert_eq!(r.id, "scheduler-1");
        assert_eq!(r.name, "mesos.internal.StatusUpdateMessage");
        assert_eq!(r.body, Bytes::copy_from_slice(&i.to_be_bytes()));
        assert_eq!(r.headers["libprocess-from"], "master@127.0.0.1:5050");
        assert_eq!(r.headers["user-agent"], "libprocess/master@127.0.0.1:5050");
        assert_eq!(r.headers["connection"], "Keep-Alive");
        // Every message on the same connection.
        assert_eq!(*conn.get_or_insert(r.peer), r.peer);
    }
    // An empty body is a message too.
    outbound
        .send(&peer, "mesos.internal.FrameworkErrorMessage", b"")
        .unwrap();
    let r = next(&mut received).await;
    assert!(r.body.is_empty());
    assert_eq!(Some(r.peer), conn);
    // The stand-in stops: the connection closes, and the peer is reported exited once.
    server.abort();
    let exited = next(&mut exits).await;
    assert_eq!(exited.peer, peer);
    assert_eq!(exited.reason, ExitReason::Closed);
    assert!(!outbound.is_linked(&peer));
    assert_eq!(
        outbound.send(&peer, "mesos.internal.FrameworkErrorMessage", b""),
        Err(OutboundError::NotLinked(peer.clone()))
    );
    assert!(exits.try_recv().is_err(), "reported once");
}

#[tokio::test]
async fn a_peer_that_cannot_be_dialled_exits() {
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (outbound, mut exits) = Outbound::new(OutboundConfig::new(master_upid()));
    let peer = upid_at("scheduler-2", addr);
    outbound.link(&peer, LOOPBACK).unwrap();
    let exited = next(&mut exits).await;
    assert_eq!(exited.peer, peer);
    assert!(
        matches!(exited.reason, ExitReason::ConnectFailed(_)),
        "{exited:?}"
    );
    assert!(!outbound.is_linked(&peer));
    assert_eq!(outbound.peers(), 0);
}

#[tokio::test]
async fn a_peer_that_closes_after_reading_exits() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (outbound, mut exits) = Outbound::new(OutboundConfig::new(master_upid()));
    let peer = upid_at("scheduler-3", addr);
    outbound.link(&peer, LOOPBACK).unwrap();
    outbound.send(&peer, "mesos.internal.X", b"one").unwrap();
    let (mut conn, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"one") {
        let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    assert!(
        text.starts_with("POST /scheduler-3/mesos.internal.X HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nContent-Length: 3\r\n\r\none"), "{text}");
    drop(conn);
    let exited = next(&mut exits).await;
    assert_eq!(exited.reason, ExitReason::Closed);
}

#[tokio::test]
async fn the_dial_policy_and_the_peer_bound() {
    let (addr, _received, _server) = scheduler_server().await;
    let mut config = OutboundConfig::new(master_upid());
    config.peers_max = 1;
    let (outbound, _exits) = Outbound::new(config.clone());
    let peer = upid_at("scheduler-4", addr);
    // A UPID at another address than its message came from is not dialled by default.
    let elsewhere: IpAddr = "10.1.2.3".parse().unwrap();
    assert!(matches!(
        outbound.link(&peer, elsewhere),
        Err(OutboundError::DialRefused { .. })
    ));
    assert!(!outbound.is_linked(&peer));
    outbound.link(&peer, LOOPBACK).unwrap();
    // Linking again keeps the one link.
    outbound.link(&peer, LOOPBACK).unwrap();
    assert_eq!(outbound.peers(), 1);
    let other = upid_at("scheduler-5", addr);
    assert_eq!(
        outbound.link(&other, LOOPBACK),
        Err(OutboundError::TooManyPeers(1))
    );
    assert!(matches!(
        outbound.send(&peer, "bad name/with slash", b""),
        Err(OutboundError::BadName(_))
    ));

    // With advertised addresses allowed (NAT), the UPID is dialled as it is.
    config.dial = DialPolicy::Advertised;
    let (nat, _nat_exits) = Outbound::new(config);
    nat.link(&peer, elsewhere).unwrap();
    assert!(nat.is_linked(&peer));
}

#[tokio::test]
async fn unlinking_flushes_then_closes_without_a_report() {
    let (addr, mut received, _server) = scheduler_server().await;
    let (outbound, mut exits) = Outbound::new(OutboundConfig::new(master_upid()));
    let peer = upid_at("scheduler-6", addr);
    outbound.link(&peer, LOOPBACK).unwrap();
    // Queued and unlinked at once: what was queued still goes out.
    for body in [&b"a"[..], b"b", b"c"] {
        outbound.send(&peer, "mesos.internal.X", body).unwrap();
    }
    outbound.unlink(&peer);
    assert!(!outbound.is_linked(&peer));
    assert_eq!(
        outbound.send(&peer, "mesos.internal.X", b"late"),
        Err(OutboundError::NotLinked(peer.clone()))
    );
    let first = next(&mut received).await;
    assert_eq!(first.body, Bytes::from_static(b"a"));
    assert_eq!(next(&mut received).await.body, Bytes::from_static(b"b"));
    assert_eq!(next(&mut received).await.body, Bytes::from_static(b"c"));
    // Linked again, it gets a new connection.
    outbound.link(&peer, LOOPBACK).unwrap();
    outbound.send(&peer, "mesos.internal.X", b"d").unwrap();
    let again = next(&mut received).await;
    assert_eq!(again.body, Bytes::from_static(b"d"));
    assert_ne!(again.peer, first.peer);
    assert!(exits.try_recv().is_err(), "an unlink is not an exit");
}

#[tokio::test]
async fn a_peer_that_does_not_read_fills_its_queue_and_exits() {
    // A listener that never accepts: the connection is made (the backlog), nothing is read.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = OutboundConfig::new(master_upid());
    config.peer_queue_max = 2;
    let (outbound, mut exits) = Outbound::new(config);
    let peer = upid_at("scheduler-7", addr);
    outbound.link(&peer, LOOPBACK).unwrap();
    let body = vec![0u8; 1 << 20];
    let mut refused = None;
    for _ in 0..10_000 {
        match outbound.send(&peer, "mesos.internal.X", &body) {
            Ok(()) => tokio::task::yield_now().await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(OutboundError::QueueFull(peer.clone())));
    let exited = next(&mut exits).await;
    assert_eq!(exited.reason, ExitReason::QueueFull);
    assert!(!outbound.is_linked(&peer));
    assert!(exits.try_recv().is_err(), "reported once");
    drop(listener);
}
