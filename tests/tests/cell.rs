//! The cell core through the real `shoal master` binary: concurrent native schedulers over
//! HTTP, SIGKILL mid-stream, restart, and the native API's answers to bad input.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use shoal_client::{command_task, ClaimRequest, Client, ClientError, PlacementRequest};
use shoal_core::{AgentRegistration, CommitMode, ConflictCheck, ResourceSet, TaskState};
use shoal_tests::{wait_until, MasterProc};

fn registration(host: &str, resources: &str) -> AgentRegistration {
    AgentRegistration {
        agent_id: None,
        hostname: host.into(),
        port: 0,
        attributes: Default::default(),
        domain: None,
        resources: ResourceSet::parse(resources).unwrap(),
    }
}

fn claim(
    id: &str,
    version: u64,
    mode: CommitMode,
    placements: Vec<(String, String, &str)>,
) -> ClaimRequest<'static> {
    ClaimRequest {
        claim_id: id.into(),
        role: "*".into(),
        owner: "test".into(),
        snapshot_version: version,
        mode,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: placements
            .into_iter()
            .map(|(agent, task, res)| {
                PlacementRequest::new(
                    agent,
                    &command_task(&task, &task, &ResourceSet::parse(res).unwrap(), "true"),
                )
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_claims_survive_sigkill_and_watch_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = MasterProc::start(dir.path(), &[]);
    let client = master.client();
    let mut agents = Vec::new();
    for i in 0..10 {
        agents.push(
            client
                .register_agent(&registration(&format!("h{i}"), "cpus:4;mem:4096"))
                .await
                .unwrap()
                .to_string(),
        );
    }

    // Four schedulers claim concurrently; the master is SIGKILLed while they do.
    let mut handles = Vec::new();
    for s in 0..4 {
        let client = master.client();
        let agents = agents.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..10_000 {
                let version = match client.state().await {
                    Ok(st) => st.version,
                    Err(_) => break,
                };
                let placements = (0..2)
                    .map(|k| {
                        (
                            agents[(n * 3 + k + s) % agents.len()].clone(),
                            format!("s{s}-n{n}-k{k}"),
                            "cpus:0.01;mem:1",
                        )
                    })
                    .collect();
                match client
                    .claim(&claim(
                        &format!("c-s{s}-n{n}"),
                        version,
                        CommitMode::AllOrNothing,
                        placements,
                    ))
                    .await
                {
                    Ok(a) => {
                        if a.outcome.committed_version.is_some() {
                            acked.push(a.outcome)
                        }
                    }
                    Err(_) => break, // the master died under us: unacknowledged, may or may not be there
                }
            }
            acked
        }));
    }
    wait_until("some claims to commit", Duration::from_secs(30), || {
        let c = client.clone();
        async move {
            c.state()
                .await
                .map(|s| s.tasks.len() >= 100)
                .unwrap_or(false)
        }
    })
    .await;
    master.kill9();
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    assert!(
        acked.len() >= 50,
        "only {} claims acknowledged",
        acked.len()
    );

    master.restart();
    let client = master.client();
    let state = client.state().await.unwrap();
    let tasks: HashMap<_, _> = state
        .tasks
        .iter()
        .map(|t| (t.id.to_string(), t.clone()))
        .collect();
    for outcome in &acked {
        for p in &outcome.placements {
            let t = tasks
                .get(p.task_id.as_str())
                .unwrap_or_else(|| panic!("acknowledged task {} lost", p.task_id));
            assert_eq!(t.agent_id, p.agent_id);
        }
    }
    // No resource double-booked: the core's own invariant check on the reloaded state.
    let version = state.version;
    state
        .clone()
        .into_cell()
        .check_invariants()
        .expect("no over-commit after restart");

    // The watch resumes across the restart from any retained version.
    let stream = client.watch(1).await.unwrap();
    futures::pin_mut!(stream);
    let mut last = 0;
    while last < version {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        assert_eq!(
            e.version,
            last + 1,
            "watch must deliver consecutive versions"
        );
        last = e.version;
    }
    // And it follows new commits live.
    let one = claim(
        "after-restart",
        version,
        CommitMode::AllOrNothing,
        vec![(agents[0].clone(), "late".into(), "cpus:0.01")],
    );
    client.claim(&one).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("live entry")
        .unwrap()
        .unwrap();
    assert_eq!(e.version, version + 1);
    println!(
        "{} acknowledged claims kept across SIGKILL; watch resumed at version {version}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_commit_atomically_idempotently_and_within_quota() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(dir.path(), &["--log-retain", "4"]);
    let client = master.client();
    let a = client
        .register_agent(&registration("a", "cpus:2;mem:1024;ports:[31000-31001]"))
        .await
        .unwrap()
        .to_string();
    let v = client.state().await.unwrap().version;

    // A gang that does not fit commits nothing.
    let gang = claim(
        "gang",
        v,
        CommitMode::AllOrNothing,
        vec![
            (a.clone(), "g1".into(), "cpus:1.5"),
            (a.clone(), "g2".into(), "cpus:1"),
        ],
    );
    let ans = client.claim(&gang).await.unwrap();
    assert_eq!(ans.outcome.committed_version, None);
    assert!(ans.outcome.placements.iter().all(|p| !p.committed));
    assert!(client.state().await.unwrap().tasks.is_empty());

    // Incremental commits what fits; resubmitting the id returns the original outcome.
    let inc = claim(
        "inc",
        v,
        CommitMode::Incremental,
        vec![
            (a.clone(), "i1".into(), "cpus:1.5;ports:[31000-31000]"),
            (a.clone(), "i2".into(), "cpus:1"),
        ],
    );
    let first = client.claim(&inc).await.unwrap();
    assert_eq!(first.outcome.committed_count(), 1);
    let again = client.claim(&inc).await.unwrap();
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(client.state().await.unwrap().tasks.len(), 1);

    // A duplicate task id is rejected with that reason.
    let dup = claim(
        "dup",
        v,
        CommitMode::Incremental,
        vec![(a.clone(), "i1".into(), "cpus:0.1")],
    );
    let ans = client.claim(&dup).await.unwrap();
    assert_eq!(
        serde_json::to_value(&ans.outcome.placements[0].rejected).unwrap()["reason"],
        "duplicate_task_id"
    );

    // Coarse-grained: the agent moved since version v, so even a fitting placement is refused.
    let mut coarse = claim(
        "coarse",
        v,
        CommitMode::Incremental,
        vec![(a.clone(), "c1".into(), "cpus:0.1")],
    );
    coarse.check = ConflictCheck::Coarse;
    let ans = client.claim(&coarse).await.unwrap();
    assert_eq!(
        serde_json::to_value(&ans.outcome.placements[0].rejected).unwrap()["reason"],
        "agent_version_moved"
    );

    // Quota: a role's limit is enforced on the commit path, with the reason.
    client
        .set_role(
            "team-a",
            2.0,
            &ResourceSet::new(),
            Some(&ResourceSet::parse("cpus:0.2").unwrap()),
        )
        .await
        .unwrap();
    let mut over = claim(
        "over",
        client.state().await.unwrap().version,
        CommitMode::Incremental,
        vec![(a.clone(), "q1".into(), "cpus:0.3")],
    );
    over.role = "team-a".into();
    let ans = client.claim(&over).await.unwrap();
    assert_eq!(
        serde_json::to_value(&ans.outcome.placements[0].rejected).unwrap()["reason"],
        "quota_limit"
    );

    // A task reaching a terminal state frees its resources once; kill of a live task works.
    client
        .task_status(&a, "i1", TaskState::Running, &Default::default())
        .await
        .unwrap();
    client.kill("i1").await.unwrap();
    assert_eq!(client.task("i1").await.unwrap().state, TaskState::Killing);
    client
        .task_status(&a, "i1", TaskState::Killed, &Default::default())
        .await
        .unwrap();
    client
        .task_status(&a, "i1", TaskState::Killed, &Default::default())
        .await
        .unwrap(); // at-least-once duplicate
    let agent = client.agent(&a).await.unwrap();
    assert!(
        agent.allocated.is_empty(),
        "resources freed: {}",
        agent.allocated
    );
    // An illegal transition is refused and changes nothing.
    let err = client
        .task_status(&a, "i1", TaskState::Running, &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 409, .. }), "{err}");

    // With --log-retain 4, an old version is compacted away: 410, and the client re-snapshots.
    for i in 0..12 {
        client
            .set_role("churn", 1.0 + i as f64, &ResourceSet::new(), None)
            .await
            .unwrap();
    }
    assert!(matches!(
        client.watch(1).await.err(),
        Some(ClientError::Gone(1))
    ));
    let floor = client.state().await.unwrap().log_floor;
    assert!(client.watch(floor).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(dir.path(), &[]);
    let client = master.client();
    let a = client
        .register_agent(&registration("a", "cpus:1;mem:128"))
        .await
        .unwrap()
        .to_string();
    let before = client.state().await.unwrap().version;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", master.addr);

    let cases: Vec<(&str, &str, serde_json::Value, u16)> = vec![
        (
            "POST",
            "/api/shoal/v1/claims",
            json!("not json at all"),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "x"}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "", "snapshot_version": 0, "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}]}}]}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "y", "snapshot_version": 0, "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": -1}}]}}]}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "z", "snapshot_version": 99999, "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}]}}]}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "empty", "snapshot_version": 0, "placements": []}),
            400,
        ),
        // Preemption: an unknown victim, evictions in an incremental claim, a priority out
        // of range.
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "ev1", "snapshot_version": 0, "priority": 10, "evictions": ["nope"], "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}]}}]}),
            404,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "ev2", "snapshot_version": 0, "mode": "incremental", "evictions": ["nope"], "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}]}}]}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/claims",
            json!({"claim_id": "ev3", "snapshot_version": 0, "priority": 1001, "placements": [
            {"agent_id": a, "task_info": {"task_id": {"value": "t"}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}]}}]}),
            400,
        ),
        ("POST", "/api/shoal/v1/tasks/nope/kill", json!(null), 404),
        ("GET", "/api/shoal/v1/tasks/nope", json!(null), 404),
        ("GET", "/api/shoal/v1/agents/nope", json!(null), 404),
        (
            "POST",
            "/api/shoal/v1/agents",
            json!({"hostname": "", "resources": "cpus:1"}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/agents",
            json!({"hostname": "h", "resources": "cpus:x"}),
            400,
        ),
        (
            "POST",
            "/api/shoal/v1/agents/nope/status",
            json!({"task_id": "t", "state": "TASK_RUNNING"}),
            404,
        ),
        ("PUT", "/api/shoal/v1/roles/r", json!({"weight": -1}), 400),
        (
            "PUT",
            "/api/shoal/v1/roles/r",
            json!({"quota": {"guarantee": "cpus:4", "limit": "cpus:2"}}),
            400,
        ),
        ("GET", "/api/shoal/v1/watch?from=0", json!(null), 410),
    ];
    for (method, path, body, want) in cases {
        let req = match method {
            "GET" => http.get(url(path)),
            "PUT" => http.put(url(path)).json(&body),
            _ if body.is_string() => http
                .post(url(path))
                .header("Content-Type", "application/json")
                .body(body.as_str().unwrap().to_string()),
            _ => http.post(url(path)).json(&body),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{method} {path} {body}: {text}");
        if want != 410 || !text.is_empty() {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path}: error body is JSON: {text}"));
            assert!(
                v["message"]
                    .as_str()
                    .map(|m| !m.is_empty())
                    .unwrap_or(false),
                "{path}: {text}"
            );
        }
    }
    // An oversized claim is refused before anything is decided.
    let many: Vec<_> = (0..10_001)
        .map(|i| json!({"agent_id": a, "task_info": {"task_id": {"value": format!("t{i}")}, "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.001}}]}}))
        .collect();
    let resp = http
        .post(url("/api/shoal/v1/claims"))
        .json(&json!({"claim_id": "big", "snapshot_version": 0, "placements": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let after = client.state().await.unwrap();
    assert_eq!(after.version, before, "bad input changed nothing");
    assert!(after.tasks.is_empty());
    let _ = Client::new(&master.addr).unwrap();
}

/// `shoal quota set|list`: a team's weight, guarantee and limit reach the cell, the limit is
/// enforced on claims, and a bad role name or resource text is refused with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_cli_sets_and_lists_team_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(dir.path(), &[]);
    let url = if master.addr.starts_with("http") {
        master.addr.clone()
    } else {
        format!("http://{}", master.addr)
    };
    let shoal = |args: &[&str]| {
        std::process::Command::new(shoal_tests::shoal_bin())
            .args(args)
            .args(["--master", &url])
            .output()
            .expect("run shoal")
    };
    let out = shoal(&[
        "quota",
        "set",
        "team-a",
        "--weight",
        "2",
        "--guarantee",
        "cpus:1",
        "--limit",
        "cpus:2;mem:512",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = shoal(&["quota", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let roles: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "team-a")
        .expect("team-a listed");
    assert_eq!(a["weight"], json!(2.0));
    assert_eq!(a["quota"]["limit"], json!("cpus:2;mem:512"));
    assert_eq!(a["quota"]["guarantee"], json!("cpus:1"));
    assert_eq!(a["preemptible"], json!(true));
    let out = shoal(&["quota", "set", "team-c", "--preemptible", "false", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["name"], "team-c", "{c}");
    assert_eq!(c["preemptible"], json!(false), "{c}");
    let table = shoal(&["quota", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("team-a") && table.contains("PREEMPTIBLE"),
        "{table}"
    );
    let c = table.lines().find(|l| l.starts_with("team-c")).unwrap();
    assert!(c.contains(" no "), "{c}");

    // The limit holds on the commit path: 3 cpus for team-a do not commit.
    let client = master.client();
    let agent = client
        .register_agent(&registration("q", "cpus:4;mem:4096"))
        .await
        .unwrap()
        .to_string();
    let v = client.state().await.unwrap().version;
    let mut over = claim(
        "over-limit",
        v,
        CommitMode::Incremental,
        vec![(agent.clone(), "q1".into(), "cpus:3")],
    );
    over.role = "team-a".into();
    let ans = client.claim(&over).await.unwrap();
    assert_eq!(ans.outcome.committed_version, None, "{ans:?}");

    // Bad input: refused, nothing changed.
    let before = client.state().await.unwrap().version;
    let out = shoal(&["quota", "set", "bad;name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid role name"));
    let out = shoal(&["quota", "set", "team-b", "--limit", "cpus:-1"]);
    assert!(!out.status.success());
    assert_eq!(client.state().await.unwrap().version, before);
}
