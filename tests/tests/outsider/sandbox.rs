//! Sandbox escape through ids: task ids Mesos refuses (`.`, `..`, `a/b/../c`) were accepted,
//! a task `..` ran in the agent's work dir, `/files` read the agent's own files through it, and
//! ids `a/b`, `a b` and `a_b` shared one sandbox. Also the unbounded names: a 100 KB role
//! (a job's or service's team) and a 1 MB claim owner were accepted.
//!
//! One master and one real agent (process executor) per test.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use shoal_client::{command_task, Client};
use shoal_core::{ResourceSet, TaskState};
use shoal_tests::{mesos_master_flags, unique, AgentProc, JsonSubscription, MasterProc};

/// How long one step of a Mesos scheduler exchange may take.
const STEP: Duration = Duration::from_secs(10);

struct Cell {
    master: MasterProc,
    agent: AgentProc,
    client: Client,
    http: reqwest::Client,
    agent_id: String,
    _dir: tempfile::TempDir,
}

async fn start_cell(name: &str) -> Cell {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), &mesos_master_flags());
    let hostname = unique(name);
    let agent = AgentProc::start(
        &master.addr,
        &dir.path().join("agent"),
        &[
            "--hostname",
            &hostname,
            "--containerizers",
            "process",
            "--heartbeat-interval",
            "200ms",
            "--status-retry",
            "200ms",
            "--kill-grace",
            "1s",
            "--resources",
            "cpus:4;mem:1024",
        ],
    );
    let client = master.client();
    let agent_id = shoal_tests::wait_agents_active(&client, &[&hostname], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}; the agent's log:\n{}", agent.log()))
        .remove(0);
    Cell {
        master,
        agent,
        client,
        http: reqwest::Client::new(),
        agent_id,
        _dir: dir,
    }
}

impl Cell {
    /// POSTs a claim of one-task placements on the agent: (status, body).
    async fn claim(
        &self,
        claim_id: &str,
        role: &str,
        owner: &str,
        tasks: &[(&str, &str)],
    ) -> (u16, Json) {
        let version = self.client.state().await.unwrap().version;
        let placements: Vec<Json> = tasks
            .iter()
            .map(|(id, shell)| {
                let t = command_task(
                    id,
                    id,
                    &ResourceSet::parse("cpus:0.1;mem:16").unwrap(),
                    shell,
                );
                json!({"agent_id": self.agent_id, "task_info": t})
            })
            .collect();
        let body = json!({
            "claim_id": claim_id, "role": role, "owner": owner, "snapshot_version": version,
            "mode": "all_or_nothing", "check": "fine", "placements": placements,
        });
        let resp = self
            .http
            .post(format!("{}/api/shoal/v1/claims", self.master.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Json::Null))
    }

    /// `GET /files/{op}?path=/agents/<agent>/tasks/<rest>` through the master: (status, body).
    async fn files(&self, op: &str, rest: &str) -> (u16, Json) {
        let path = format!("/agents/{}/tasks/{rest}", self.agent_id);
        let url = reqwest::Url::parse_with_params(
            &format!("{}/files/{op}", self.master.addr),
            &[("path", path.as_str())],
        )
        .unwrap();
        let resp = self.http.get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Json::Null))
    }

    async fn wait_running(&self, id: &str) {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let t = self.client.task(id).await.unwrap();
            if t.state == TaskState::Running {
                return;
            }
            assert!(
                !t.state.is_terminal() && Instant::now() < until,
                "task {id} is {:?} ({:?}); agent log:\n{}",
                t.state,
                t.status,
                self.agent.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `<task>/<file>`, read through the master, is `200` and contains `needle`.
    async fn wait_file(&self, task: &str, file: &str, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.files("read", &format!("{task}/{file}")).await;
            let data = body["data"].as_str().unwrap_or("").to_string();
            if status == 200 && data.contains(needle) {
                return data;
            }
            assert!(
                Instant::now() < until,
                "{task}/{file} never held {needle:?}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The start of a long answer, for a failure message.
fn head(text: &str) -> String {
    text.chars().take(200).collect()
}

#[tokio::test]
async fn claims_with_task_ids_dot_dotdot_or_slashes_get_400_and_change_nothing() {
    let cell = start_cell("ids-dots").await;
    let before = cell.client.state().await.unwrap();
    for (i, id) in ["..", ".", "a/b/../c", "a/b", "a\\b"].iter().enumerate() {
        let (status, body) = cell
            .claim(&format!("c{i}"), "*", "outsider", &[(id, "sleep 20")])
            .await;
        assert_eq!(status, 400, "task id {id:?}: {body}");
        assert!(body.to_string().contains("task id"), "{id:?}: {body}");
    }
    let after = cell.client.state().await.unwrap();
    assert_eq!(
        after.version, before.version,
        "a refused claim changed the cell"
    );
    assert!(after.tasks.is_empty(), "{:?}", after.tasks);
    // No sandbox was made either (a task `.` or `..` once ran in the agent's own dirs).
    let sandboxes = cell.agent.work_dir.join("sandboxes");
    let made: Vec<_> = std::fs::read_dir(&sandboxes).unwrap().flatten().collect();
    assert!(made.is_empty(), "{made:?}");
}

#[tokio::test]
async fn files_read_of_the_agents_own_files_through_dotdot_gets_400() {
    let cell = start_cell("ids-files").await;
    let (status, body) = cell
        .claim(
            "c1",
            "*",
            "outsider",
            &[("t1", "ln -s ../.. up; echo ready; sleep 20")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    cell.wait_running("t1").await;
    cell.wait_file("t1", "stdout", "ready").await;
    // The agent's id, its journal and the process executor's record of t1 (with its
    // environment): through a task id `..`, through `..` in the path, through a symlink.
    let record = "state/process/tasks/t1/record.json";
    assert!(cell.agent.work_dir.join(record).exists());
    let secret = cell.agent_id.clone();
    for rest in [
        "../state/agent_id".to_string(),
        "../state/journal.jsonl".to_string(),
        format!("../{record}"),
        "t1/../../state/agent_id".to_string(),
        format!("t1/../../{record}"),
        "t1/up/state/agent_id".to_string(),
        "t1/up".to_string(),
        "./sandboxes/t1/stdout".to_string(),
    ] {
        for op in ["read", "browse"] {
            let (status, body) = cell.files(op, &rest).await;
            assert_eq!(status, 400, "{op} tasks/{rest}: {body}");
            assert!(
                !body.to_string().contains(&secret),
                "{op} tasks/{rest}: {body}"
            );
        }
    }
    // A task the cell does not have: 404; the task's own files still read.
    assert_eq!(cell.files("read", "t2/stdout").await.0, 404);
    assert_eq!(cell.files("read", "t1/nothing").await.0, 404);
    assert_eq!(cell.files("browse", "t1").await.0, 200);
    assert_eq!(cell.files("read", "t1/stdout").await.0, 200);
}

#[tokio::test]
async fn task_ids_a_underscore_b_and_its_look_alikes_get_distinct_sandboxes() {
    let cell = start_cell("ids-share").await;
    // `a/b` is refused now; `a b` is a valid Mesos id that earlier versions also named `a_b`.
    let u = unique("x");
    let (plain, spaced, slashed) = (format!("a_b-{u}"), format!("a b-{u}"), format!("a/b-{u}"));
    let write = |id: &str| format!("echo 'I am {id}' >> who; sleep 20");
    let (status, body) = cell
        .claim(
            "c2",
            "*",
            "o",
            &[(&plain, &write(&plain)), (&spaced, &write(&spaced))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for id in [&plain, &spaced] {
        cell.wait_running(id).await;
    }
    let mine = cell.wait_file(&plain, "who", &plain).await;
    let theirs = cell.wait_file(&spaced, "who", &spaced).await;
    assert_eq!(mine.trim(), format!("I am {plain}"), "shared sandbox");
    assert_eq!(theirs.trim(), format!("I am {spaced}"), "shared sandbox");
    let sandboxes = cell.agent.work_dir.join("sandboxes");
    assert!(sandboxes.join(&plain).is_dir());
    assert!(sandboxes.join(format!("a%20b-{u}")).is_dir());
    let (status, body) = cell.claim("c1", "*", "o", &[(&slashed, "sleep 20")]).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_100kb_role_and_a_1mb_claim_owner_get_400() {
    let cell = start_cell("ids-names").await;
    let before = cell.client.state().await.unwrap().version;
    let role = "r".repeat(100 << 10);
    let (status, body) = cell.claim("c1", &role, "o", &[("t1", "true")]).await;
    assert_eq!(status, 400, "{}", head(&body.to_string()));
    assert!(body.to_string().contains("role name"));
    let owner = "o".repeat(1 << 20);
    let (status, body) = cell.claim("c2", "*", &owner, &[("t2", "true")]).await;
    assert_eq!(status, 400, "{}", head(&body.to_string()));
    assert!(body.to_string().contains("claim owner"));
    // A job's and a service's team is a role.
    let job = json!({"name": "j1", "team": role, "tasks": [{"name": "x", "resources": "cpus:0.1;mem:16", "command": "true"}]});
    let service = json!({"name": "s1", "team": role, "count": 1, "task": {"resources": "cpus:0.1;mem:16", "command": "true"}});
    for (what, body) in [("jobs", job), ("services", service)] {
        let resp = cell
            .http
            .post(format!("{}/api/shoal/v1/{what}", cell.master.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 400, "{what}: {}", head(&text));
        assert!(
            text.contains("team") && text.len() < 4_000,
            "{what}: {}",
            head(&text)
        );
    }
    assert_eq!(cell.client.state().await.unwrap().version, before);
}

#[tokio::test]
async fn mesos_framework_task_and_executor_ids_mesos_refuses_are_refused() {
    let cell = start_cell("ids-mesos").await;
    for id in ["..", "a/b"] {
        let info = json!({"user": "o", "name": "o", "id": {"value": id}});
        let err = JsonSubscription::subscribe(&cell.master.addr, info, STEP)
            .await
            .err()
            .unwrap_or_else(|| panic!("framework id {id:?} subscribed"));
        assert!(
            err.contains("answered 400") && err.contains("framework id"),
            "{err}"
        );
    }
    let mut sub =
        JsonSubscription::subscribe(&cell.master.addr, json!({"user": "o", "name": "o"}), STEP)
            .await
            .unwrap();
    let offers = sub.wait_for("OFFERS", STEP).await.unwrap();
    let offer = &offers["offers"]["offers"][0];
    let role = offer["resources"][0]["allocation_info"]["role"]
        .as_str()
        .unwrap_or("*");
    let scalar = |name: &str, value: f64| json!({"name": name, "type": "SCALAR", "scalar": {"value": value}, "role": "*", "allocation_info": {"role": role}});
    let task = |id: &str| {
        json!({"name": id, "task_id": {"value": id}, "agent_id": offer["agent_id"],
            "resources": [scalar("cpus", 0.1), scalar("mem", 16.0)],
            "command": {"value": "sleep 20", "shell": true}})
    };
    let mut with_executor = task("e1");
    with_executor["executor"] =
        json!({"executor_id": {"value": ".."}, "command": {"value": "sleep 20"}});
    let call = json!({"type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task(".."), task("a/b/../c"), with_executor]}}],
    }});
    let (status, body) = sub.call(call).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let mut errors = std::collections::BTreeMap::new();
    while errors.len() < 3 {
        let update = sub.wait_for("UPDATE", STEP).await.unwrap();
        let s = &update["update"]["status"];
        let id = s["task_id"]["value"].as_str().unwrap().to_string();
        assert_eq!(s["state"], "TASK_ERROR", "{update}");
        errors.insert(id, s["message"].as_str().unwrap_or("").to_string());
    }
    assert!(errors[".."].contains("task id"), "{errors:?}");
    assert!(errors["a/b/../c"].contains("task id"), "{errors:?}");
    assert!(errors["e1"].contains("executor id"), "{errors:?}");
    assert!(cell.client.state().await.unwrap().tasks.is_empty());
}
