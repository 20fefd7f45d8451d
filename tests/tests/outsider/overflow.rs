//! Issue 11, item 1: the commit thread died on arithmetic overflow and the master kept saying
//! it was healthy. Two agents of `cpus:1e12` registered through the native API; a role
//! claims the largest amount, then 0.001 cpu more: that claim gets a clean 400 naming the
//! resource, the master goes on committing, and `/health` stays 200.

use std::time::Duration;

use serde_json::{json, Value};
use shoal_tests::{unique, wait_until, MasterProc};

async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = http.post(url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn health(http: &reqwest::Client, master: &str) -> (u16, String) {
    let resp = http.get(format!("{master}/health")).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

async fn version(http: &reqwest::Client, master: &str) -> u64 {
    let state: Value = http
        .get(format!("{master}/api/shoal/v1/state?tasks=false"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    state["version"].as_u64().unwrap()
}

fn claim(id: &str, role: &str, version: u64, agent: &str, task: &str, cpus: f64) -> Value {
    json!({
        "claim_id": id,
        "role": role,
        "snapshot_version": version,
        "placements": [{"agent_id": agent, "task_info": {
            "name": task,
            "task_id": {"value": task},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}}],
        }}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_thread_dies_on_arithmetic_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(dir.path(), &[]);
    let m = master.addr.clone();
    let http = reqwest::Client::new();
    wait_until("the master answers", Duration::from_secs(20), || async {
        http.get(format!("{m}/health")).send().await.is_ok()
    })
    .await;

    let mut agents = Vec::new();
    for name in ["big-a", "big-b"] {
        let (status, body) = post(
            &http,
            &format!("{m}/api/shoal/v1/agents"),
            json!({"hostname": unique(name), "resources": "cpus:1e12;mem:1024"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        agents.push(body["agent_id"].as_str().unwrap().to_string());
    }

    // The role takes the largest amount there is: all of one agent.
    let v = version(&http, &m).await;
    let (status, body) = post(
        &http,
        &format!("{m}/api/shoal/v1/claims"),
        claim("all", "web", v, &agents[0], "all-of-a", 1e12),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // 0.001 cpu more in that role: a clean 400 that names the resource.
    let v = version(&http, &m).await;
    let (status, body) = post(
        &http,
        &format!("{m}/api/shoal/v1/claims"),
        claim("more", "web", v, &agents[1], "a-little-more", 0.001),
    )
    .await;
    println!("0.001 cpu more: {status} {body}");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("cpus"),
        "{body}"
    );
    let (status, text) = health(&http, &m).await;
    assert_eq!((status, text.as_str()), (200, "OK"));

    // The master still commits: a later valid claim (another role) on the other agent.
    let v = version(&http, &m).await;
    let (status, body) = post(
        &http,
        &format!("{m}/api/shoal/v1/claims"),
        claim("later", "db", v, &agents[1], "later", 1.0),
    )
    .await;
    println!("a later claim: {status} {body}");
    assert_eq!(status, 200, "{body}");
    assert!(body["committed_version"].as_u64().is_some(), "{body}");
    let (status, text) = health(&http, &m).await;
    println!("/health: {status} {text}");
    assert_eq!((status, text.as_str()), (200, "OK"));
}
