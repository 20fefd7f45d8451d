//! Issue 11, item 8: a store IO failure was permanent. redb latches an IO error (here a full
//! disk): every later transaction failed, writes got 503 until a restart while `/health` said
//! OK. The master's work dir is a small tmpfs, filled on purpose: claims get 503 with a clear
//! message and `/health` 503; once the space is freed claims commit again without a restart,
//! and every claim acknowledged before is still there, also after a restart of the master.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::{unique, wait_until, MasterProc};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir`; `None` (with the reason printed) outside CI
    /// when mounting is not allowed here.
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "mounting a tmpfs must work in CI: {why}"
                );
                eprintln!("skipping store_io_failure_is_permanent: cannot mount a tmpfs ({why})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 4096] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = http.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn health(http: &reqwest::Client, master: &str) -> (u16, String) {
    match http.get(format!("{master}/health")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A claim of one small task whose TaskInfo carries 32 KiB, so the store grows quickly.
fn claim(id: &str, agent: &str) -> Value {
    json!({
        "claim_id": id,
        "snapshot_version": 0,
        "placements": [{"agent_id": agent, "task_info": {
            "name": id,
            "task_id": {"value": id},
            "command": {"value": format!("echo {}", "x".repeat(32 << 10))},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.001}}],
        }}],
    })
}

async fn claim_exists(http: &reqwest::Client, master: &str, id: &str) -> bool {
    let resp = http
        .get(format!("{master}/api/shoal/v1/claims/{id}"))
        .send()
        .await
        .unwrap();
    resp.status().as_u16() == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_io_failure_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(dir.path(), 24) else {
        return;
    };
    let work = dir.path().join("master");
    let mut master = MasterProc::start(&work, &[]);
    let m = master.addr.clone();
    let http = reqwest::Client::new();
    wait_until("the master answers", Duration::from_secs(20), || async {
        health(&http, &m).await.0 == 200
    })
    .await;
    let (status, body) = post(
        &http,
        &format!("{m}/api/shoal/v1/agents"),
        &json!({"hostname": unique("full"), "resources": "cpus:1000;mem:1024"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let agent = body["agent_id"].as_str().unwrap().to_string();

    // Claims acknowledged before the disk fills.
    let url = format!("{m}/api/shoal/v1/claims");
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        let (status, body) = post(&http, &url, &claim(&id, &agent)).await;
        assert_eq!(status, 200, "{body}");
        acked.push(id);
    }

    // The disk fills: claims are refused with 503 once the store cannot write (a few may
    // still fit in pages the store had), and `/health` says why.
    let filler = dir.path().join("filler");
    let filled = fill(&filler);
    let started = Instant::now();
    let mut refusal = None;
    for i in 0..400 {
        let id = format!("full-{i}");
        let (status, body) = post(&http, &url, &claim(&id, &agent)).await;
        match status {
            200 => acked.push(id),
            503 => {
                refusal = Some(body);
                break;
            }
            _ => panic!("claim {id}: {status} {body}"),
        }
    }
    let refusal = refusal.unwrap_or_else(|| {
        panic!(
            "no claim was refused on a full disk ({filled} bytes filled)\n{}",
            master.log()
        )
    });
    println!(
        "disk full ({filled} bytes filled): {} claims acknowledged, then 503 {refusal} after {:?}",
        acked.len(),
        started.elapsed()
    );
    let message = refusal["message"].as_str().unwrap_or_default();
    assert!(message.contains("store"), "{refusal}");
    let (status, text) = health(&http, &m).await;
    println!("/health while full: {status} {text}");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("store is failing"), "{text}");
    let (status, body) = post(&http, &url, &claim("still-full", &agent)).await;
    assert_eq!(status, 503, "{body}");

    // Space freed: the master reopens the store by itself and commits again.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_until(
        "/health 200 after the space is freed",
        Duration::from_secs(20),
        || async { health(&http, &m).await.0 == 200 },
    )
    .await;
    let (status, body) = post(&http, &url, &claim("after", &agent)).await;
    println!(
        "space freed: /health 200 after {:?}; a claim: {status}",
        freed.elapsed()
    );
    assert_eq!(status, 200, "{body}");
    acked.push("after".into());
    for id in &acked {
        assert!(
            claim_exists(&http, &m, id).await,
            "acknowledged claim {id} lost"
        );
    }

    // And after a restart of the master.
    master.restart();
    let m = master.addr.clone();
    wait_until(
        "the restarted master answers",
        Duration::from_secs(20),
        || async { health(&http, &m).await.0 == 200 },
    )
    .await;
    for id in &acked {
        assert!(
            claim_exists(&http, &m, id).await,
            "acknowledged claim {id} lost after a restart"
        );
    }
}
