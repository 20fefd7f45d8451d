//! Item 6 of the outsider probes, server side: connections and memory were unbounded
//! (`axum::serve` had no timeouts and no cap). Each test puts a bounded load on a master on
//! loopback and checks that `/health` answers within 1 s throughout (its p99 is printed) and
//! that the master's RSS grows by at most 256 MiB.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// RSS the master may grow by under each load.
const RSS_GROWTH_MAX_BYTES: u64 = 256 << 20;
/// `/health` must answer within this long, every time.
const HEALTH_WITHIN: Duration = Duration::from_secs(1);
/// An answer's head comes within this long.
const WITHIN_HEAD: Duration = Duration::from_secs(5);

/// A `shoal master` of its own (its pid is needed for RSS), optionally with a lower
/// descriptor limit.
pub(crate) struct Master {
    child: Child,
    pub(crate) addr: String,
    pub(crate) work_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Master {
    pub(crate) fn start(extra: &[&str], nofile: Option<u64>) -> Master {
        let tmp = tempfile::tempdir().unwrap();
        let work_dir = tmp.path().to_path_buf();
        let log = std::fs::File::create(work_dir.join("master.log")).unwrap();
        let mut cmd = Command::new(shoal_tests::shoal_bin());
        cmd.args(["master", "--listen", "127.0.0.1:0", "--work-dir"])
            .arg(&work_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn shoal master");
        let addr_file = work_dir.join("master.addr");
        let until = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    break a;
                }
            }
            if Instant::now() >= until || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("master did not start: {}", log_of(&work_dir));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Master {
            child,
            addr,
            work_dir,
            _tmp: tmp,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    pub(crate) fn log(&self) -> String {
        shoal_tests::tail(&log_of(&self.work_dir), 30)
    }

    /// Registers an agent without a live connection; its id.
    pub(crate) async fn agent(&self, resources: &str) -> String {
        let (status, v) = shoal_tests::post_json(
            &reqwest::Client::new(),
            &self.url("/api/shoal/v1/agents"),
            json!({"hostname": "h", "resources": resources}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "register: {v}");
        v["agent_id"].as_str().expect("agent_id").to_string()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("master.log")).unwrap_or_default()
}

/// A native claim of one task on `agent`, with a command of `command_bytes` bytes.
pub(crate) fn claim(id: &str, agent: &str, command_bytes: usize) -> serde_json::Value {
    json!({
        "claim_id": id,
        "snapshot_version": 0,
        "placements": [{"agent_id": agent, "task_info": {
            "name": id,
            "task_id": {"value": id},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.01}}],
            "command": {"value": format!("true {}", "x".repeat(command_bytes))},
        }}],
    })
}

/// Sends `request` on a fresh connection and reads the answer's status line and headers
/// (and as much of the body as arrives before `within`). `None` when nothing came in time.
pub(crate) async fn raw(addr: &str, request: &[u8], within: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(within, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request).await.ok()?;
        read_answer(&mut s).await
    })
    .await
    .ok()
    .flatten()
}

/// Reads one answer's head (and what follows of it until the connection pauses or closes).
pub(crate) async fn read_answer(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // Whatever of the body is already here (short answers come in one piece).
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut chunk)).await {
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Probes `/health` on a fresh connection every 20 ms until `stop`; every latency (a probe
/// that got no 200 within 2 s counts as 2 s).
fn probe_health(addr: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let answer = raw(&addr, request.as_bytes(), Duration::from_secs(2)).await;
            let took = match answer {
                Some((200, _)) => started.elapsed(),
                _ => Duration::from_secs(2),
            };
            latencies.push(took);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies
    })
}

/// Stops the prober; asserts every probe answered within [`HEALTH_WITHIN`] and prints p99.
async fn health_held(
    what: &str,
    stop: Arc<AtomicBool>,
    prober: tokio::task::JoinHandle<Vec<Duration>>,
    master: &Master,
) {
    stop.store(true, Ordering::Relaxed);
    let mut latencies = prober.await.unwrap();
    assert!(!latencies.is_empty());
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let max = *latencies.last().unwrap();
    println!(
        "{what}: /health p99 {:.1} ms, max {:.1} ms over {} probes",
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        latencies.len()
    );
    assert!(
        max < HEALTH_WITHIN,
        "{what}: /health took {max:?} (p99 {p99:?}); log:\n{}",
        master.log()
    );
}

fn rss_held(what: &str, master: &Master, before: u64, peak: u64) {
    println!(
        "{what}: master RSS {} MiB before, {} MiB at most under load (+{} MiB)",
        before >> 20,
        peak >> 20,
        peak.saturating_sub(before) >> 20
    );
    assert!(
        peak.saturating_sub(before) <= RSS_GROWTH_MAX_BYTES,
        "{what}: RSS grew by {} MiB; log:\n{}",
        peak.saturating_sub(before) >> 20,
        master.log()
    );
}

/// 1,000 connections that send half a request head and stall, against a master whose
/// descriptor limit is 600 (its default caps fit under it): before, they took every descriptor and `/health` timed out; now
/// the connection cap sits below the limit and the connection waiting longest for its head
/// is closed to admit a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_exhaust_connections() {
    // 1,000 half-sent requests against a limit of 600, or fewer where this process may not
    // open that many sockets.
    let room = raise_own_nofile().saturating_sub(200);
    let half_sent: usize = room.min(1_000);
    let nofile = (half_sent as u64 * 3 / 5).max(400);
    assert!(
        half_sent as u64 > nofile,
        "too few descriptors for this test: {room}"
    );
    let master = Master::start(&[], Some(nofile));
    let before = master.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_health(master.addr.clone(), stop.clone());
    let mut held = Vec::with_capacity(half_sent);
    let mut peak = before;
    let started = Instant::now();
    for i in 0..half_sent {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(&master.addr)).await
        else {
            continue; // the backlog is full: the flood itself is what is slowed
        };
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            .await;
        held.push(s);
        if i % 100 == 0 {
            peak = peak.max(master.rss_bytes());
        }
        // Bounded pace: the whole flood takes about 2 s.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Hold them all for a moment more.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        peak = peak.max(master.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} half-sent requests opened in {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    health_held("half-sent requests", stop, prober, &master).await;
    rss_held("half-sent requests", &master, before, peak);
    // A plain request still gets its answer.
    let v = shoal_tests::get_json(&reqwest::Client::new(), &master.url("/api/shoal/v1/stats"))
        .await
        .expect("stats");
    assert!(v["version"].is_u64());
}

/// Raises this process's soft descriptor limit to its hard one; the soft limit after.
fn raise_own_nofile() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        let raised = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
}

/// 30 uploads that announce 63 MiB and stall: before, all of them were read into memory
/// (2.2 GB); now the bodies in flight are capped (128 MiB), the rest are answered 503 with
/// `Retry-After` at once, and the budget comes back when the stalled connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_memory() {
    const UPLOADS: usize = 30;
    const DECLARED: usize = 63 << 20;
    let master = Master::start(&[], None);
    let before = master.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_health(master.addr.clone(), stop.clone());
    let head = format!(
        "POST /api/shoal/v1/claims HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n",
        master.addr
    );
    let filler = vec![b' '; 1 << 20];
    let mut stalled = Vec::new();
    let mut refused = 0;
    let mut peak = before;
    for _ in 0..UPLOADS {
        let mut s = TcpStream::connect(&master.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        // A refused upload is answered before its body is read.
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&probe[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
                refused += 1;
                continue;
            }
            _ => {}
        }
        // Admitted: send all but the last MiB, then stall.
        let mut sent = 0;
        while sent + filler.len() < DECLARED {
            if tokio::time::timeout(Duration::from_secs(5), s.write_all(&filler))
                .await
                .map(|r| r.is_err())
                .unwrap_or(true)
            {
                break;
            }
            sent += filler.len();
        }
        stalled.push(s);
        peak = peak.max(master.rss_bytes());
        if peak.saturating_sub(before) > RSS_GROWTH_MAX_BYTES {
            break; // already over: no need to load the machine further
        }
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        peak = peak.max(master.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "stalled uploads: {} held, {refused} refused with 503",
        stalled.len()
    );
    health_held("stalled uploads", stop, prober, &master).await;
    rss_held("stalled uploads", &master, before, peak);
    assert!(
        refused >= UPLOADS - 3,
        "only {refused} uploads were refused"
    );
    // The stalled ones go away: their budget is returned and a large upload is read again.
    drop(stalled);
    let agent = master.agent("cpus:4;mem:1024").await;
    let http = reqwest::Client::new();
    let mut body = claim("after-stall", &agent, 0).to_string();
    body.push_str(&" ".repeat(60 << 20));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (s, _) =
            shoal_tests::post_json(&http, &master.url("/api/shoal/v1/claims"), body.clone()).await;
        if s != 503 || Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{}", master.log());
}

/// 40 watch streams that never read while 120 large entries commit: before, every stream
/// buffered its lines without bound and any number of streams could open; now streams
/// beyond `--max-watchers` get 503, each buffers at most 256 KiB, and a stream whose client
/// makes no room for 10 s is dropped (its place freed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_watchers_hold_memory() {
    const WATCHERS: usize = 40;
    const ENTRIES: usize = 120;
    const COMMAND_BYTES: usize = 250_000;
    let master = Master::start(&["--max-watchers", "40"], None);
    let agent = master.agent("cpus:1000;mem:100000").await;
    let before = master.rss_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe_health(master.addr.clone(), stop.clone());
    let watch = format!(
        "GET /api/shoal/v1/watch?from=1 HTTP/1.1\r\nHost: {}\r\n\r\n",
        master.addr
    );
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut s = TcpStream::connect(&master.addr).await.unwrap();
        s.write_all(watch.as_bytes()).await.unwrap();
        // Read the answer's head (so the stream is counted), and then nothing more.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(WITHIN_HEAD, s.read(&mut byte))
                .await
                .expect("watch answer")
                .unwrap();
            assert!(n > 0, "watch closed: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        watchers.push(s);
    }
    // One more than the cap is refused (once the others are counted).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let extra = raw(&master.addr, watch.as_bytes(), Duration::from_secs(2)).await;
        if matches!(extra, Some((503, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "watcher {} was not refused: {extra:?}",
            WATCHERS + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let mut peak = before;
    for i in 0..ENTRIES {
        let (status, v) = shoal_tests::post_json(
            &http,
            &master.url("/api/shoal/v1/claims"),
            claim(&format!("big-{i}"), &agent, COMMAND_BYTES).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        if i % 10 == 0 {
            peak = peak.max(master.rss_bytes());
            if peak.saturating_sub(before) > RSS_GROWTH_MAX_BYTES {
                break; // already over: no need to load the machine further
            }
        }
    }
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        peak = peak.max(master.rss_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent streams are dropped: a new one is admitted though none of them was closed.
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(20);
    loop {
        let again = raw(&master.addr, watch.as_bytes(), Duration::from_secs(2)).await;
        if matches!(again, Some((200, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled watchers were not dropped: {again:?}"
        );
        peak = peak.max(master.rss_bytes());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "never-reading watchers: a new watcher was admitted {:.1} s after the last commit",
        waiting.elapsed().as_secs_f64()
    );
    peak = peak.max(master.rss_bytes());
    health_held("never-reading watchers", stop, prober, &master).await;
    rss_held("never-reading watchers", &master, before, peak);
    drop(watchers);
}
