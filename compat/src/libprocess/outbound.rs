//! Sending libprocess messages: the master's own connection to each peer.
//!
//! As in libprocess, answers never go back on the connection a request came in on: the master
//! dials the address in the peer's UPID and keeps that connection open (libprocess's
//! `link()`), one per peer, writing each message as one `POST /<peer id>/<message name>`
//! (`3rdparty/libprocess/src/encoder.hpp`, `MessageEncoder`). Whatever the peer answers (202s)
//! is read and thrown away, as libprocess's `ignore_recv_data` does. When the connection
//! fails, closes, cannot be dialled, or the peer stops reading (its queue fills), the peer is
//! reported **once** as exited (libprocess's `exited(pid)`), and forgotten: a message to it
//! after that is refused until it is linked again.
//!
//! **Dial policy.** A UPID is the peer's own account of where it listens. By default the
//! master dials a UPID only when its IP is the IP the peer's request came from, so a message
//! cannot make the master connect somewhere else; [`DialPolicy::Advertised`] dials any UPID,
//! for frameworks behind NAT that advertise another address (`LIBPROCESS_ADVERTISE_IP`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::upid::Upid;
use crate::limits::{
    LIBPROCESS_CONNECT_TIMEOUT_SECS, LIBPROCESS_PEERS_MAX, LIBPROCESS_PEER_QUEUE_MAX,
    LIBPROCESS_WRITE_TIMEOUT_SECS,
};

/// Which UPIDs the master dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialPolicy {
    /// Only a UPID whose IP is the TCP peer IP its message came from (the default).
    #[default]
    PeerIpOnly,
    /// Any UPID, as its peer advertises it (frameworks behind NAT).
    Advertised,
}

/// How the outbound end behaves.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The master's own UPID: `Libprocess-From` and the `User-Agent` of every message. Drivers
    /// drop messages not from the UPID they detected (`MasterInfo.pid`).
    pub master: Upid,
    pub dial: DialPolicy,
    /// Messages queued per peer before it counts as not reading.
    pub peer_queue_max: usize,
    /// Peers linked at once.
    pub peers_max: usize,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
}

impl OutboundConfig {
    /// The defaults, with the limits of [`crate::limits`].
    pub fn new(master: Upid) -> OutboundConfig {
        OutboundConfig {
            master,
            dial: DialPolicy::default(),
            peer_queue_max: LIBPROCESS_PEER_QUEUE_MAX,
            peers_max: LIBPROCESS_PEERS_MAX,
            connect_timeout: Duration::from_secs(LIBPROCESS_CONNECT_TIMEOUT_SECS),
            write_timeout: Duration::from_secs(LIBPROCESS_WRITE_TIMEOUT_SECS),
        }
    }
}

/// Why a peer exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It could not be dialled (refused, unreachable, or no answer within the timeout).
    ConnectFailed(String),
    /// It closed the connection, or reading from it failed.
    Closed,
    /// Writing a message to it failed or took longer than the write timeout.
    WriteFailed(String),
    /// Its queue filled: it is not reading what it is sent.
    QueueFull,
}

/// A peer that is gone; reported once per link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub peer: Upid,
    pub reason: ExitReason,
}

/// Why a message or a link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    #[error("'{upid}' is not at {seen_from}, where its message came from; it is not dialled")]
    DialRefused { upid: Upid, seen_from: IpAddr },
    #[error("{0} libprocess peers are linked already")]
    TooManyPeers(usize),
    #[error("'{0}' is not linked (never, or it exited)")]
    NotLinked(Upid),
    #[error("'{0}' is not reading; it counts as exited")]
    QueueFull(Upid),
    #[error("a libprocess message name must be a protobuf type name, not '{0}'")]
    BadName(String),
}

/// One queued message, already written out as its request.
struct Frame(Bytes);

struct Peer {
    /// Which link this is: an exit of an older link to the same UPID must not remove a newer.
    link: u64,
    tx: mpsc::Sender<Frame>,
    /// Tells the peer's task to stop now and report the reason as the exit. Dropped (the
    /// peer unlinked), it tells nothing: the task writes what is queued and ends silently.
    stop: Option<oneshot::Sender<ExitReason>>,
}

struct Shared {
    config: OutboundConfig,
    peers: Mutex<HashMap<Upid, Peer>>,
    links: AtomicU64,
    exits: mpsc::Sender<Exited>,
}

/// The sending end of the libprocess transport. Cloning shares it.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
}

impl Outbound {
    /// An outbound end, and the queue exited peers are reported on (as deep as there can be
    /// peers, so a report never waits long).
    pub fn new(config: OutboundConfig) -> (Outbound, mpsc::Receiver<Exited>) {
        let (exits, rx) = mpsc::channel(config.peers_max.max(1));
        let shared = Arc::new(Shared {
            config,
            peers: Mutex::new(HashMap::new()),
            links: AtomicU64::new(0),
            exits,
        });
        (Outbound { shared }, rx)
    }

    /// The master's UPID messages are sent from.
    pub fn master(&self) -> &Upid {
        &self.shared.config.master
    }

    /// Links `peer`, whose message came from TCP peer IP `seen_from`: dials it now and keeps
    /// the connection. Linking a linked peer does nothing (its connection stays). Needs a
    /// tokio runtime.
    pub fn link(&self, peer: &Upid, seen_from: IpAddr) -> Result<(), OutboundError> {
        let config = &self.shared.config;
        if config.dial == DialPolicy::PeerIpOnly && IpAddr::V4(peer.ip()) != seen_from {
            return Err(OutboundError::DialRefused {
                upid: peer.clone(),
                seen_from,
            });
        }
        let mut peers = self.shared.peers.lock();
        if peers.contains_key(peer) {
            return Ok(());
        }
        if peers.len() >= config.peers_max {
            return Err(OutboundError::TooManyPeers(peers.len()));
        }
        let link = self.shared.links.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(config.peer_queue_max.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        peers.insert(
            peer.clone(),
            Peer {
                link,
                tx,
                stop: Some(stop_tx),
            },
        );
        drop(peers);
        let span = tracing::debug_span!("libprocess_peer", peer = %peer);
        tokio::spawn(
            run_peer(self.shared.clone(), peer.clone(), link, rx, stop_rx).instrument(span),
        );
        Ok(())
    }

    /// Forgets `peer`: what is queued to it is still written (a last `FrameworkErrorMessage`
    /// to a framework that failed over reaches it), then its connection closes, without an
    /// exit report. Sending to it is refused from now on, until it is linked again.
    pub fn unlink(&self, peer: &Upid) {
        // Dropping the entry closes the queue: the task drains it, then ends silently.
        self.shared.peers.lock().remove(peer);
    }

    /// Whether `peer` is linked (and has not exited).
    pub fn is_linked(&self, peer: &Upid) -> bool {
        self.shared.peers.lock().contains_key(peer)
    }

    /// Queues message `name` (a protobuf type's full name) with `body` to a linked `peer`. A
    /// peer whose queue is full is closed and reported as exited.
    pub fn send(&self, peer: &Upid, name: &str, body: &[u8]) -> Result<(), OutboundError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        {
            return Err(OutboundError::BadName(name.to_owned()));
        }
        let frame = Frame(encode_request(&self.shared.config.master, peer, name, body));
        let mut peers = self.shared.peers.lock();
        let Some(entry) = peers.get_mut(peer) else {
            return Err(OutboundError::NotLinked(peer.clone()));
        };
        match entry.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(stop) = entry.stop.take() {
                    let _ = stop.send(ExitReason::QueueFull);
                }
                peers.remove(peer);
                Err(OutboundError::QueueFull(peer.clone()))
            }
            // The task has ended and is reporting the exit; the entry goes with it.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(OutboundError::NotLinked(peer.clone()))
            }
        }
    }

    /// Peers linked now.
    pub fn peers(&self) -> usize {
        self.shared.peers.lock().len()
    }
}

/// One message as libprocess's `MessageEncoder` writes it, with a `Content-Length` body and
/// the peer's address as `Host` (libprocess receivers ignore `Host`; Go's net/http, under
/// mesos-go, requires one).
pub fn encode_request(from: &Upid, to: &Upid, name: &str, body: &[u8]) -> Bytes {
    let mut head = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "POST /{}/{} HTTP/1.1\r\n\
         User-Agent: libprocess/{from}\r\n\
         Libprocess-From: {from}\r\n\
         Connection: Keep-Alive\r\n\
         Host: {}\r\n\
         Content-Length: {}\r\n\r\n",
        percent_encode(to.id()),
        percent_encode(name),
        to.addr(),
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Percent-encodes a path segment: everything but RFC 3986's unreserved and sub-delimiter
/// characters, `:` and `@` (so `slave(1)` and `scheduler-<uuid>` stay as they are).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A peer's connection: dials, then writes each queued message while reading (and dropping)
/// what the peer answers, until the connection ends, the peer is unlinked, or it is stopped.
async fn run_peer(
    shared: Arc<Shared>,
    peer: Upid,
    link: u64,
    mut rx: mpsc::Receiver<Frame>,
    mut stop: oneshot::Receiver<ExitReason>,
) {
    // A stop sender dropped (the peer unlinked) disables that branch: the connection goes
    // on writing what is queued, and ends when the queue is empty and closed.
    let reason = tokio::select! {
        r = connection(&shared.config, &peer, &mut rx) => r,
        Ok(reason) = &mut stop => Some(reason),
    };
    let Some(reason) = reason else {
        return;
    };
    // Report only a link that is still this one's: one unlinked while it flushed is not the
    // caller's any more, and one whose queue filled was removed by `send`, which wants the
    // report.
    let ours = {
        let mut peers = shared.peers.lock();
        let ours = peers.get(&peer).is_some_and(|p| p.link == link);
        if ours {
            peers.remove(&peer);
        }
        ours
    };
    if !ours && reason != ExitReason::QueueFull {
        tracing::debug!(?reason, "unlinked libprocess peer closed");
        return;
    }
    tracing::debug!(?reason, "libprocess peer exited");
    // The queue is as deep as there can be peers; a consumer gone means nobody listens.
    let _ = shared.exits.send(Exited { peer, reason }).await;
}

/// Dials and serves the connection; `None` when the queue's sender is gone (unlinked), else
/// why the peer exited.
async fn connection(
    config: &OutboundConfig,
    peer: &Upid,
    rx: &mut mpsc::Receiver<Frame>,
) -> Option<ExitReason> {
    let stream =
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(peer.addr())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Some(ExitReason::ConnectFailed(e.to_string())),
            Err(_) => return Some(ExitReason::ConnectFailed("connect timed out".into())),
        };
    // Messages are small and each must go out at once, not wait for an earlier one's ACK.
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let drain = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::pin!(drain);
    loop {
        let frame = tokio::select! {
            () = &mut drain => return Some(ExitReason::Closed),
            f = rx.recv() => match f {
                Some(f) => f,
                None => {
                    // Unlinked and all written: close our side and read the peer's last
                    // answers until it closes too. Closing a socket with answers unread
                    // resets it, and a reset can discard what the peer had not read yet.
                    let _ = write.shutdown().await;
                    let _ = tokio::time::timeout(config.write_timeout, &mut drain).await;
                    return None;
                }
            },
        };
        // Keep reading answers while writing, or a peer blocked on writing its answers
        // would stop reading our requests.
        let written = tokio::select! {
            () = &mut drain => return Some(ExitReason::Closed),
            w = tokio::time::timeout(config.write_timeout, write.write_all(&frame.0)) => w,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Some(ExitReason::WriteFailed(e.to_string())),
            Err(_) => return Some(ExitReason::WriteFailed("write timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn writes_requests_as_libprocess() {
        let master = Upid::new("master", Ipv4Addr::new(10, 0, 0, 5), 5050).unwrap();
        let to: Upid = "scheduler-1@10.0.0.9:4000".parse().unwrap();
        let req = encode_request(
            &master,
            &to,
            "mesos.internal.FrameworkErrorMessage",
            b"\x12\x01x",
        );
        assert_eq!(
            &req[..],
            &b"POST /scheduler-1/mesos.internal.FrameworkErrorMessage HTTP/1.1\r\n\
               User-Agent: libprocess/master@10.0.0.5:5050\r\n\
               Libprocess-From: master@10.0.0.5:5050\r\n\
               Connection: Keep-Alive\r\n\
               Host: 10.0.0.9:4000\r\n\
               Content-Length: 3\r\n\r\n\x12\x01x"[..]
        );
        assert_eq!(percent_encode("slave(1)"), "slave(1)");
        assert_eq!(percent_encode("a/b c%"), "a%2Fb%20c%25");
    }
}
