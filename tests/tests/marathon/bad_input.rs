//! Bad input on the v0 (libprocess) endpoints of a real master, and after each case a check
//! that the master still works: `/health` answers and mesos-go's v0 driver (v0sched)
//! registers and gets an offer.
//!
//! The bad bytes are our own, written on raw TCP connections: garbage bodies under every
//! message name the master reads, an unknown name, requests that are not libprocess messages
//! or whose sender is not a UPID, bodies over the message bound, calls for a framework sent
//! from another UPID, a SUBSCRIBE from a UPID nothing listens on, and connections that stall
//! halfway through a request head. What libprocess and the Mesos master do decides the
//! answers: a message is 202 once received, whatever becomes of it; what the process cannot
//! read is dropped.
//!
//! The master handles messages one at a time in the order they arrived, so a v0sched
//! registration sent after the bad messages is handled after them: once it is answered, the
//! bad ones have been acted on (or dropped), and what they changed is visible.
//!
//! Skipped (printed) outside CI when Go or mesos-go is missing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::{
    go_program, hold_for, spawn_v0sched, unique, wait_until, JsonSubscription, LineChild,
    MesosAgentSpec, MesosCell,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AGENT_RESOURCES: &str = "cpus:2;mem:512";
/// How long one answer, callback or command may take.
const EVENT: Duration = Duration::from_secs(20);
/// How long the master may take to act on what it was sent (or to forget a framework).
const SETTLE: Duration = Duration::from_secs(10);

/// The message names the master reads (`compat::v0::codec::names::INBOUND`), as text: the
/// test speaks the wire, not the crate.
const INBOUND: &[&str] = &[
    "mesos.scheduler.Call",
    "mesos.internal.RegisterFrameworkMessage",
    "mesos.internal.ReregisterFrameworkMessage",
    "mesos.internal.UnregisterFrameworkMessage",
    "mesos.internal.DeactivateFrameworkMessage",
    "mesos.internal.LaunchTasksMessage",
    "mesos.internal.KillTaskMessage",
    "mesos.internal.ReviveOffersMessage",
    "mesos.internal.StatusUpdateAcknowledgementMessage",
    "mesos.internal.ReconcileTasksMessage",
    "mesos.internal.ResourceRequestMessage",
    "mesos.internal.FrameworkToExecutorMessage",
];

/// Bodies that are no message the master reads: empty (every (re)registration requires its
/// FrameworkInfo), an invalid wire type, a varint longer than ten bytes, a length past the
/// end, a truncated varint, field number 0, stray fields, a SUBSCRIBE without its required
/// FrameworkInfo, and a FrameworkInfo without its required name. protobuf refuses all of
/// them, so libprocess drops them, whatever the name.
const GARBAGE: &[&[u8]] = &[
    &[],
    &[0x0f],
    &[0xff; 16],
    &[0x0a, 0x7f, 0x01],
    &[0x08],
    &[0x00, 0x00],
    b"\x12\x05hello\x1a\xff",
    &[0x10, 0x01, 0x1a, 0x00],
    &[0x0a, 0x02, 0x0a, 0x00],
];

/// The largest libprocess message body (`compat::limits::LIBPROCESS_MESSAGE_BYTES_MAX`).
const LIBPROCESS_MESSAGE_BYTES_MAX: usize = 4 << 20;
/// The master's `HTTP_HEADER_READ_TIMEOUT_SECS`: a connection without a complete request
/// head is closed after it (the reaper runs every second).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections that stall halfway through a request head.
const STALLED_CONNECTIONS: usize = 50;

/// Protobuf written by hand for the few messages these tests send (names and numbers from
/// Mesos's `scheduler.proto`, `messages.proto` and `mesos.proto`).
mod pb {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn tag(field: u32, wire: u8, out: &mut Vec<u8>) {
        varint((u64::from(field) << 3) | u64::from(wire), out);
    }

    fn bytes(field: u32, data: &[u8], out: &mut Vec<u8>) {
        tag(field, 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn enumeration(field: u32, v: u64, out: &mut Vec<u8>) {
        tag(field, 0, out);
        varint(v, out);
    }

    /// `FrameworkID`, `TaskID`: `value = 1`.
    fn id(value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, value.as_bytes(), &mut out);
        out
    }

    /// `FrameworkInfo { user = 1, name = 2, failover_timeout = 4 }`.
    fn framework_info(name: &str, failover_timeout_secs: f64) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, b"", &mut out);
        bytes(2, name.as_bytes(), &mut out);
        tag(4, 1, &mut out);
        out.extend_from_slice(&failover_timeout_secs.to_le_bytes());
        out
    }

    const SUBSCRIBE: u64 = 1;
    const TEARDOWN: u64 = 2;
    const KILL: u64 = 6;

    /// `mesos.scheduler.Call { type = SUBSCRIBE, subscribe = 3 { framework_info = 1 } }`.
    pub fn subscribe_call(name: &str, failover_timeout_secs: f64) -> Vec<u8> {
        let mut sub = Vec::new();
        bytes(1, &framework_info(name, failover_timeout_secs), &mut sub);
        let mut out = Vec::new();
        enumeration(2, SUBSCRIBE, &mut out);
        bytes(3, &sub, &mut out);
        out
    }

    /// `RegisterFrameworkMessage { framework = 1 }`.
    pub fn register_framework(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, &framework_info(name, 0.0), &mut out);
        out
    }

    /// `mesos.scheduler.Call { framework_id = 1, type = KILL, kill = 6 { task_id = 1 } }`.
    pub fn kill_call(framework_id: &str, task_id: &str) -> Vec<u8> {
        let mut kill = Vec::new();
        bytes(1, &id(task_id), &mut kill);
        let mut out = Vec::new();
        bytes(1, &id(framework_id), &mut out);
        enumeration(2, KILL, &mut out);
        bytes(6, &kill, &mut out);
        out
    }

    /// `mesos.scheduler.Call { framework_id = 1, type = TEARDOWN }`.
    pub fn teardown_call(framework_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, &id(framework_id), &mut out);
        enumeration(2, TEARDOWN, &mut out);
        out
    }

    /// `KillTaskMessage { framework_id = 1, task_id = 2 }`.
    pub fn kill_task_message(framework_id: &str, task_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, &id(framework_id), &mut out);
        bytes(2, &id(task_id), &mut out);
        out
    }

    /// `UnregisterFrameworkMessage { framework_id = 1 }`.
    pub fn unregister_framework(framework_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(1, &id(framework_id), &mut out);
        out
    }
}

/// A libprocess message as libprocess frames it (`encoder.hpp`): the sender in
/// `Libprocess-From` and the `User-Agent`, kept alive, an empty `Host`, no `Content-Type`.
fn message(name: &str, from: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST /master/{name} HTTP/1.1\r\nUser-Agent: libprocess/{from}\r\n\
         Libprocess-From: {from}\r\nConnection: Keep-Alive\r\nHost: \r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// An HTTP answer read off a raw connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

/// A raw TCP connection to the master, written by hand.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(cell: &MesosCell) -> Raw {
        let stream = tokio::time::timeout(EVENT, TcpStream::connect(cell.master.host_port()))
            .await
            .expect("connect: timed out")
            .expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        tokio::time::timeout(EVENT, self.stream.write_all(bytes))
            .await
            .map_err(|_| "write: timed out".to_string())?
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill(&mut self, until: Instant) -> Result<bool, String> {
        let mut chunk = [0u8; 8192];
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
            Err(_) => Err("no answer in time".into()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// The next answer; `Err` when the connection ended first or nothing came within
    /// [`EVENT`].
    async fn reply(&mut self) -> Result<Reply, String> {
        let until = Instant::now() + EVENT;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill(until).await? {
                return Err("the connection closed".into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = match header("content-length") {
            Some(v) => v.parse().map_err(|_| format!("Content-Length {v:?}"))?,
            None if header("transfer-encoding").is_some() => {
                return Err(format!("a chunked answer is not expected: {head:?}"))
            }
            None => 0,
        };
        while self.buf.len() < head_end + length {
            if !self.fill(until).await? {
                return Err("the connection closed mid-answer".into());
            }
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).to_string();
        self.buf.drain(..head_end + length);
        Ok(Reply { status, body })
    }

    /// Writes a request and reads its answer.
    async fn exchange(&mut self, request: &[u8]) -> Result<Reply, String> {
        self.write(request).await?;
        self.reply().await
    }

    /// Whether the master closes the connection within `within` (whatever it sends first
    /// is read and dropped).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            match self.fill(until).await {
                Ok(true) => self.buf.clear(),
                Ok(false) => return true,
                Err(e) => return !e.starts_with("no answer"),
            }
        }
    }
}

/// Sends one message on `raw` and expects `status`.
async fn expect_status(raw: &mut Raw, request: &[u8], status: u16, what: &str, cell: &MesosCell) {
    match raw.exchange(request).await {
        Ok(r) if r.status == status => {}
        other => panic!("{what}: want {status}, got {other:?}\n{}", cell.logs(60, 0)),
    }
}

/// A listener standing in for a scheduler that was never started: it counts the
/// connections the master makes to it (it must make none) and reads and drops what they
/// carry.
struct Sink {
    port: u16,
    dials: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dials = Arc::new(AtomicUsize::new(0));
        let counted = dials.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        Sink { port, dials, task }
    }

    fn pid(&self, id: &str) -> String {
        format!("{id}@127.0.0.1:{}", self.port)
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (it was free a moment ago).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a: SocketAddr| a.port())
        .unwrap()
}

/// The frameworks `/master/frameworks` lists.
async fn frameworks(cell: &MesosCell) -> Vec<Json> {
    let url = format!("{}/master/frameworks", cell.master.addr);
    let body: Json = reqwest::get(&url)
        .await
        .expect("/master/frameworks")
        .json()
        .await
        .expect("/master/frameworks is JSON");
    body["frameworks"].as_array().cloned().unwrap_or_default()
}

fn ids(frameworks: &[Json]) -> Vec<String> {
    let mut ids: Vec<String> = frameworks
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

async fn health(cell: &MesosCell) -> u16 {
    let url = format!("{}/health", cell.master.addr);
    match tokio::time::timeout(EVENT, reqwest::get(&url)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

/// A cell of one agent for `name`, and the v0sched binary; `None` (printed) when Go or
/// mesos-go is missing outside CI.
async fn setup(test: &str, name: &str) -> Option<(MesosCell, PathBuf)> {
    let bin = tokio::task::block_in_place(|| go_program(test, "v0sched"))?;
    let cell = MesosCell::start(name, &[], &[MesosAgentSpec::process(AGENT_RESOURCES)])
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    Some((cell, bin))
}

/// A v0 framework registered (v0sched), with an offer for the agent taken; its framework id
/// and the offer's id.
fn register_v0(bin: &std::path::Path, cell: &MesosCell, name: &str) -> (LineChild, String, String) {
    let log_dir = cell.dir.path().join("frameworks");
    let mut fw = spawn_v0sched(bin, cell.master.host_port(), name, &[], &log_dir);
    let reg = fw.wait_for("the registered callback", EVENT, |j| {
        j["event"] == "registered"
    });
    let framework_id = reg["framework_id"].as_str().unwrap_or("").to_string();
    assert!(!framework_id.is_empty(), "{reg}\n{}", fw.transcript());
    let agent = cell.agent_ids[0].as_str();
    let offers = fw.wait_for("an offer", EVENT, |j| {
        j["event"] == "offers"
            && j["offers"]
                .as_array()
                .is_some_and(|os| os.iter().any(|o| o["agent_id"] == agent))
    });
    let offer = offers["offers"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["agent_id"] == agent))
        .and_then(|o| o["id"].as_str())
        .unwrap_or("")
        .to_string();
    (fw, framework_id, offer)
}

/// The driver stops, unregistering its framework, and exits 0.
fn stop_v0(mut fw: LineChild) {
    fw.command("stop", EVENT);
    let status = fw.wait_exit(EVENT);
    assert!(
        status.is_some_and(|s| s.success()),
        "v0sched exited {status:?}\n{}",
        fw.transcript()
    );
}

/// The master still works: `/health` answers 200, and a v0 framework registers, gets an
/// offer and unregisters. The frameworks listed while it is registered are `before` and it;
/// returns its framework id.
async fn master_still_works(cell: &MesosCell, bin: &std::path::Path, before: &[String]) -> String {
    assert_eq!(health(cell).await, 200, "/health\n{}", cell.logs(80, 0));
    let name = unique("still-works");
    let (fw, framework_id, _) = tokio::task::block_in_place(|| register_v0(bin, cell, &name));
    let mut want: Vec<String> = before.to_vec();
    want.push(framework_id.clone());
    want.sort();
    assert_eq!(
        ids(&frameworks(cell).await),
        want,
        "the frameworks once v0sched registered (the bad input was handled before it)\n{}",
        cell.logs(80, 0)
    );
    tokio::task::block_in_place(|| stop_v0(fw));
    framework_id
}

/// Garbage under every name the master reads, and a name it does not know: each is
/// received (202), as libprocess receives any message, and dropped; no framework comes of
/// it and the sender is never dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_every_v0_message_name_is_received_and_dropped() {
    let test = "garbage_under_every_v0_message_name_is_received_and_dropped";
    let Some((cell, bin)) = setup(test, "v0-garbage").await else {
        return;
    };
    let before = ids(&frameworks(&cell).await);
    let sink = Sink::start().await;
    let from = sink.pid(&unique("scheduler-garbage"));
    let mut raw = Raw::connect(&cell).await;
    for name in INBOUND {
        for (i, body) in GARBAGE.iter().enumerate() {
            let what = format!("garbage #{i} as {name}");
            expect_status(&mut raw, &message(name, &from, body), 202, &what, &cell).await;
        }
    }
    // Not a message the master has a handler for: libprocess drops it after receiving it.
    expect_status(
        &mut raw,
        &message(
            "mesos.internal.NoSuchMessage",
            &from,
            &pb::register_framework("no-such"),
        ),
        202,
        "an unknown message name",
        &cell,
    )
    .await;
    // The same connection still carries messages: garbage does not break a link.
    expect_status(
        &mut raw,
        &message(INBOUND[0], &from, GARBAGE[0]),
        202,
        "after",
        &cell,
    )
    .await;

    let fid = master_still_works(&cell, &bin, &before).await;
    assert_eq!(sink.dials(), 0, "the master dialled the garbage's sender");
    wait_until("the v0sched framework to go", SETTLE, || async {
        ids(&frameworks(&cell).await) == before
    })
    .await;
    eprintln!(
        "{} garbage messages dropped; v0sched registered as {fid} after them",
        INBOUND.len() * GARBAGE.len()
    );
}

/// Requests the master cannot take for messages: no libprocess sender (404: an HTTP request
/// for an endpoint the master lacks, as libprocess answers it), a sender that is not a UPID
/// (400, nothing dialled), a body over the message bound (413; the connection answers on or
/// is closed). None of them changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_deliverable_messages_are_refused() {
    let test = "requests_that_are_not_deliverable_messages_are_refused";
    let Some((cell, bin)) = setup(test, "v0-refused").await else {
        return;
    };
    let before = ids(&frameworks(&cell).await);
    let sink = Sink::start().await;
    let body = pb::subscribe_call(&unique("refused"), 0.0);

    // No Libprocess-From, and a User-Agent that is not libprocess's.
    let mut raw = Raw::connect(&cell).await;
    let plain = |ua: &str| {
        let mut out = format!(
            "POST /master/mesos.scheduler.Call HTTP/1.1\r\nHost: {}\r\nUser-Agent: {ua}\r\n\
             Content-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            cell.master.host_port(),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    };
    for ua in [
        "curl/8.5.0",
        "Go-http-client/1.1",
        "not-libprocess/x@127.0.0.1:1",
    ] {
        expect_status(
            &mut raw,
            &plain(ua),
            404,
            &format!("User-Agent {ua}"),
            &cell,
        )
        .await;
    }

    // Senders that are not UPIDs; the last is a UPID's form at the sink, 300 bytes long.
    let long_id = "s".repeat(300 - format!("@127.0.0.1:{}", sink.port).len());
    let long = sink.pid(&long_id);
    assert_eq!(long.len(), 300);
    for from in ["nonsense", "a@b", "x@1.2.3.4:99999", long.as_str()] {
        let what = format!("Libprocess-From {from:?}");
        let mut raw = Raw::connect(&cell).await;
        expect_status(
            &mut raw,
            &message("mesos.scheduler.Call", from, &body),
            400,
            &what,
            &cell,
        )
        .await;
    }

    // Bodies over the bound, with a Content-Length and chunked (as libprocess sends).
    let from = sink.pid(&unique("scheduler-big"));
    let big = vec![0u8; LIBPROCESS_MESSAGE_BYTES_MAX + 1];
    let mut raw = Raw::connect(&cell).await;
    let mut request = message("mesos.scheduler.Call", &from, &big);
    oversized(&mut raw, &request, &cell, &from, "with a Content-Length").await;
    request = format!(
        "POST /master/mesos.scheduler.Call HTTP/1.1\r\nUser-Agent: libprocess/{from}\r\n\
         Libprocess-From: {from}\r\nConnection: Keep-Alive\r\nHost: \r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in big.chunks(64 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut raw = Raw::connect(&cell).await;
    oversized(&mut raw, &request, &cell, &from, "chunked").await;

    master_still_works(&cell, &bin, &before).await;
    assert_eq!(sink.dials(), 0, "the master dialled a refused sender");
}

/// An oversized message gets 413; then the connection either answers the next message or
/// is closed, and does not hang.
async fn oversized(raw: &mut Raw, request: &[u8], cell: &MesosCell, from: &str, what: &str) {
    // The master may answer before the whole body is written and close: a failed write is
    // fine as long as the 413 came.
    let written = raw.write(request).await;
    match raw.reply().await {
        Ok(r) if r.status == 413 => {}
        other => panic!(
            "a body over {LIBPROCESS_MESSAGE_BYTES_MAX} bytes ({what}, write {written:?}): want 413, got {other:?}\n{}",
            cell.logs(60, 0)
        ),
    }
    match raw
        .exchange(&message("mesos.scheduler.Call", from, GARBAGE[0]))
        .await
    {
        Ok(r) => {
            assert_eq!(
                r.status, 202,
                "the next message after a 413 ({what}): {}",
                r.body
            );
            eprintln!("after a 413 ({what}): the connection carries the next message");
        }
        Err(e) => {
            assert!(
                !e.starts_with("no answer"),
                "after a 413 ({what}) the connection neither answers nor closes: {e}"
            );
            eprintln!("after a 413 ({what}): the connection is closed ({e})");
        }
    }
}

/// Well-formed calls for a registered framework, sent from another UPID: the master acts
/// only on calls from the framework's own UPID (`framework->pid() == from`), so the KILL and
/// the TEARDOWN (as a Call and as the legacy messages) are dropped: the task keeps running
/// and the framework stays registered and usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_a_framework_from_another_upid_are_dropped() {
    let test = "calls_for_a_framework_from_another_upid_are_dropped";
    let Some((cell, bin)) = setup(test, "v0-other-pid").await else {
        return;
    };
    let agent = cell.agent_ids[0].clone();
    let task = unique("v0-victim");
    let (mut fw, framework_id) = tokio::task::block_in_place(|| {
        let (mut fw, framework_id, offer) = register_v0(&bin, &cell, &unique("victim"));
        fw.command(&format!("launch {task} {offer} cmd sleep 60"), EVENT);
        fw.wait_for(&format!("{task} running"), EVENT, |j| {
            j["event"] == "status" && j["task_id"] == task.as_str() && j["state"] == "TASK_RUNNING"
        });
        (fw, framework_id)
    });

    let sink = Sink::start().await;
    let other = sink.pid("scheduler-other");
    let mut raw = Raw::connect(&cell).await;
    let bad: [(&str, Vec<u8>); 4] = [
        ("mesos.scheduler.Call", pb::kill_call(&framework_id, &task)),
        (
            "mesos.internal.KillTaskMessage",
            pb::kill_task_message(&framework_id, &task),
        ),
        ("mesos.scheduler.Call", pb::teardown_call(&framework_id)),
        (
            "mesos.internal.UnregisterFrameworkMessage",
            pb::unregister_framework(&framework_id),
        ),
    ];
    for (name, body) in &bad {
        expect_status(&mut raw, &message(name, &other, body), 202, name, &cell).await;
    }

    // The framework's own reconciliation is handled after them: its answer means they were.
    tokio::task::block_in_place(|| {
        fw.command(&format!("reconcile {task} {agent}"), EVENT);
        let j = fw.wait_for("the reconciliation", EVENT, |j| {
            j["event"] == "status"
                && j["task_id"] == task.as_str()
                && j["reason"] == "REASON_RECONCILIATION"
        });
        assert_eq!(j["state"], "TASK_RUNNING", "{j}\n{}", fw.transcript());
    });
    let client = cell.master.client();
    hold_for(
        "the task running, the framework registered",
        Duration::from_secs(1),
        || async {
            let t = client.task(&task).await.map_err(|e| e.to_string())?;
            if t.state != shoal_core::TaskState::Running {
                return Err(format!("task {task} is {:?}", t.state));
            }
            let fs = frameworks(&cell).await;
            match fs.iter().find(|f| f["id"] == framework_id.as_str()) {
                Some(f) if f["active"] == true => Ok(()),
                Some(f) => Err(format!("framework inactive: {f}")),
                None => Err(format!("framework {framework_id} gone")),
            }
        },
    )
    .await;
    assert_eq!(sink.dials(), 0, "the master dialled the other UPID");

    // The framework is still the one in charge: its own KILL is carried out.
    tokio::task::block_in_place(|| {
        fw.command(&format!("kill {task}"), EVENT);
        let j = fw.wait_for(&format!("{task} killed"), EVENT, |j| {
            j["event"] == "status"
                && j["task_id"] == task.as_str()
                && !matches!(
                    j["state"].as_str(),
                    Some("TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING")
                )
        });
        assert_eq!(j["state"], "TASK_KILLED", "{j}\n{}", fw.transcript());
        assert!(
            !fw.seen().iter().any(|j| j["event"] == "error"),
            "the driver got an error\n{}",
            fw.transcript()
        );
        stop_v0(fw);
    });
    let before: Vec<String> = Vec::new();
    wait_until("the framework to unregister", SETTLE, || async {
        ids(&frameworks(&cell).await) == before
    })
    .await;
    master_still_works(&cell, &bin, &before).await;
}

/// A SUBSCRIBE whose UPID names a port nothing listens on: the master cannot link to the
/// scheduler, and no framework is left behind once the dial failed (with no failover
/// timeout, and with one: a framework that was never told its id cannot come back for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_from_a_upid_nobody_listens_on_leaves_no_framework() {
    let test = "a_subscribe_from_a_upid_nobody_listens_on_leaves_no_framework";
    let Some((cell, bin)) = setup(test, "v0-dead-upid").await else {
        return;
    };
    let before = ids(&frameworks(&cell).await);
    let mut names = Vec::new();
    for failover_timeout in [0.0, 300.0] {
        let name = unique("unreachable");
        let from = format!("scheduler-{}@127.0.0.1:{}", unique("dead"), dead_port());
        let mut raw = Raw::connect(&cell).await;
        let body = pb::subscribe_call(&name, failover_timeout);
        expect_status(
            &mut raw,
            &message("mesos.scheduler.Call", &from, &body),
            202,
            &name,
            &cell,
        )
        .await;
        names.push(name);
    }
    let named = |fs: &[Json]| -> Vec<Json> {
        fs.iter()
            .filter(|f| names.iter().any(|n| f["name"] == n.as_str()))
            .cloned()
            .collect()
    };
    // v0sched's registration is handled after the two SUBSCRIBEs: once it is answered, they
    // have been too, and their dials are under way.
    assert_eq!(health(&cell).await, 200, "/health\n{}", cell.logs(80, 0));
    let (fw, framework_id, _) =
        tokio::task::block_in_place(|| register_v0(&bin, &cell, &unique("after-dead")));
    let mut left = Vec::new();
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        left = named(&frameworks(&cell).await);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        left.is_empty(),
        "frameworks left behind {SETTLE:?} after their dial failed: {left:?}\n{}",
        cell.logs(60, 0)
    );
    let mut want = before.clone();
    want.push(framework_id);
    want.sort();
    assert_eq!(ids(&frameworks(&cell).await), want, "{}", cell.logs(60, 0));
    tokio::task::block_in_place(|| stop_v0(fw));
}

/// A peer opens [`STALLED_CONNECTIONS`] connections, sends half a request head on each and
/// stalls. The master keeps serving v0 (v0sched registers and gets an offer), v1 (a JSON
/// subscription gets SUBSCRIBED and an offer) and `/health`; it closes the stalled
/// connections after its header-read timeout, while a libprocess link that sent a complete
/// message and then went quiet is exempt and still carries messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stalled_mid_head_do_not_stop_v0_or_v1() {
    let test = "connections_stalled_mid_head_do_not_stop_v0_or_v1";
    let Some((cell, bin)) = setup(test, "v0-stalled").await else {
        return;
    };
    let sink = Sink::start().await;
    let from = sink.pid(&unique("scheduler-quiet"));
    let mut link = Raw::connect(&cell).await;
    expect_status(
        &mut link,
        &message(INBOUND[0], &from, GARBAGE[0]),
        202,
        "the link's message",
        &cell,
    )
    .await;

    let stalled_at = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..STALLED_CONNECTIONS {
        let mut raw = Raw::connect(&cell).await;
        let half: &[u8] = if i % 2 == 0 {
            b"POST /master/mesos.scheduler.Call HTTP/1.1\r\nLibprocess-Fr"
        } else {
            b"GET /master/frameworks HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc"
        };
        raw.write(half)
            .await
            .unwrap_or_else(|e| panic!("stalled #{i}: {e}"));
        stalled.push(raw);
    }

    assert_eq!(health(&cell).await, 200, "/health with stalled connections");
    let (fw, _, _) = tokio::task::block_in_place(|| register_v0(&bin, &cell, &unique("beside")));
    let info = serde_json::json!({"user": "", "name": unique("v1-beside")});
    let mut v1 = JsonSubscription::subscribe(&cell.master.addr, info, EVENT)
        .await
        .unwrap_or_else(|e| panic!("v1 SUBSCRIBE with stalled connections: {e}"));
    // The v0 framework holds the agent's offer; the v1 one gets it once v0sched is gone.
    tokio::task::block_in_place(|| stop_v0(fw));
    v1.wait_for("OFFERS", EVENT)
        .await
        .unwrap_or_else(|e| panic!("v1 with stalled connections: {e}"));
    let (status, body) = v1
        .call(serde_json::json!({"type": "TEARDOWN"}))
        .await
        .unwrap_or_else(|e| panic!("TEARDOWN: {e}"));
    assert_eq!(status, 202, "TEARDOWN: {body}");
    let served_in = stalled_at.elapsed();
    assert!(
        served_in < HEADER_READ_TIMEOUT,
        "v0 and v1 took {served_in:?}: the stalled connections were reaped before they were tested"
    );

    // The reaper closes the stalled connections (it runs every second)...
    let reap_by = HEADER_READ_TIMEOUT + Duration::from_secs(5);
    for (i, raw) in stalled.iter_mut().enumerate() {
        let left = reap_by.saturating_sub(stalled_at.elapsed());
        assert!(
            raw.closed_within(left).await,
            "stalled connection #{i} still open {:?} after it stalled",
            stalled_at.elapsed()
        );
    }
    // ...and not the link, idle as long.
    expect_status(
        &mut link,
        &message(INBOUND[0], &from, GARBAGE[0]),
        202,
        "the quiet link",
        &cell,
    )
    .await;
    assert_eq!(sink.dials(), 0, "the master dialled the link's sender");
}
