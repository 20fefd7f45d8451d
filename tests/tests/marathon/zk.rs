//! ZooKeeper master detection, as a v0 framework given `--master zk://host:port/path` does it:
//! mesos-go's v0 detector (`api/v0/detector/zoo`) run against `shoal master --zk`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shoal_tests::{go_program, test_zk, unique, MasterProc};

/// The detector's process, killed when dropped, and the lines it printed.
struct Detector {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Detector {
    fn start(bin: &std::path::Path, url: &str) -> Detector {
        let mut child = Command::new(bin)
            .args(["-deadline", "120s", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn zkdetect");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Detector {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that is not `skip` (the detector repeats a leader when the membership
    /// changes under it), within `within`.
    fn next_other_than(&mut self, skip: &str, within: Duration, what: &str) -> String {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    assert!(!l.starts_with("FAIL"), "{what}: the detector failed: {l}");
                    if l != skip {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{what}: no new leader line within {within:?}; the detector printed {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The line the detector prints for `master`: `MASTER <pid> <id> <hostname> <port> <ip> <version>`.
fn expect_master(line: &str, master: &MasterProc, what: &str) {
    let port = master.addr.rsplit(':').next().unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 7, "{what}: {line}");
    assert_eq!(f[0], "MASTER", "{what}: {line}");
    assert_eq!(
        f[1],
        format!("master@127.0.0.1:{port}"),
        "{what}: the UPID ({line})"
    );
    assert!(
        !f[2].is_empty() && !f[3].is_empty(),
        "{what}: id and hostname ({line})"
    );
    assert_eq!(f[4], port, "{what}: the port ({line})");
    assert_eq!(
        f[5], "127.0.0.1",
        "{what}: ip, read back from network byte order ({line})"
    );
    let v: Vec<u32> = f[6].split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        v >= vec![1, 5, 0],
        "{what}: Marathon needs a version of at least 1.5.0 ({line})"
    );
}

/// Waits until `master` has published itself in ZooKeeper `times` times (its log says so).
fn published(master: &MasterProc, times: usize) {
    let until = Instant::now() + Duration::from_secs(20);
    while master.log().matches("in ZooKeeper at").count() < times {
        assert!(
            Instant::now() < until,
            "not published in ZooKeeper:\n{}",
            master.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// mesos-go's v0 detector finds the master `shoal master --zk` publishes; a second master
/// waits behind it (lowest sequence leads); a master stopped cleanly is gone at once and the
/// detector follows the next; a master killed with SIGKILL is gone within the ZooKeeper session
/// timeout; a master started again is found again.
#[test]
fn a_mesos_go_detector_follows_the_master_through_zookeeper() {
    let test = "a_mesos_go_detector_follows_the_master_through_zookeeper";
    let Some(servers) = test_zk(test) else { return };
    let Some(bin) = go_program(test, "zkdetect") else {
        return;
    };
    let url = format!("zk://{servers}/{}", unique("shoal-zk"));
    let dir = tempfile::tempdir().unwrap();
    let zk_args = ["--zk", url.as_str(), "--zk-session-timeout", "4s"];
    let mut first = MasterProc::start(&dir.path().join("m1"), &zk_args);
    let mut detector = Detector::start(&bin, &url);
    let line = detector.next_other_than("NONE", Duration::from_secs(30), "the first master");
    expect_master(&line, &first, "the first master");

    let mut second = MasterProc::start(&dir.path().join("m2"), &zk_args);
    // Its node is there once it says so (it binds, then publishes).
    published(&second, 1);
    // A clean stop withdraws the node before the process exits: the second leads at once,
    // well before the session timeout.
    first.terminate();
    let stopped = Instant::now();
    let next = detector.next_other_than(&line, Duration::from_secs(10), "after a clean stop");
    expect_master(&next, &second, "after a clean stop");
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "the stopped master's node stayed {:?} (its session timeout is 4 s)",
        stopped.elapsed()
    );

    // SIGKILL: nothing withdraws; ZooKeeper ends the session after its timeout.
    second.kill9();
    let none = detector.next_other_than(&next, Duration::from_secs(20), "after SIGKILL");
    assert_eq!(none, "NONE", "after SIGKILL");

    // The killed master comes back (same store, a new port) and leads again.
    second.restart();
    let back = detector.next_other_than("NONE", Duration::from_secs(30), "after the restart");
    expect_master(&back, &second, "after the restart");
}

/// A `--zk` that Mesos would refuse (no path, `/`, credentials, another scheme, a host list
/// with a hole) stops `shoal master` before it starts: a clear message, exit 2, no work dir.
#[test]
fn a_bad_zk_url_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bad) in [
        "zk://127.0.0.1:2181",
        "zk://127.0.0.1:2181/",
        "zk://user:secret@127.0.0.1:2181/mesos",
        "http://127.0.0.1:2181/mesos",
        "zk://a:1,,b:2/mesos",
    ]
    .into_iter()
    .enumerate()
    {
        let work_dir = dir.path().join(format!("m{i}"));
        let out = Command::new(shoal_tests::shoal_bin())
            .args(["master", "--listen", "127.0.0.1:0", "--work-dir"])
            .arg(&work_dir)
            .args(["--zk", bad])
            .output()
            .expect("run shoal master");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("invalid ZooKeeper URL"), "{bad}: {stderr}");
        assert!(!work_dir.exists(), "{bad}: the master made its work dir");
    }
}
