//! Services on the real `shoal master` and two `shoal agent`s (process executor) in different
//! zones: a service of 3 with a health check comes up through `shoal service run --wait`,
//! spread over the zones; an instance whose process is SIGKILLed is replaced; after a master
//! SIGKILL and restart exactly the same 3 tasks run (adopted, no duplicates); a rolling update
//! replaces every instance while sampled state never shows fewer than `count -
//! max_unavailable` healthy instances; scale up and down; stop. A failing health check gets
//! its task killed by the agent and the instance replaced; bad service files are refused
//! with 400 naming the field. A service of busybox httpd containers with a TCP check comes up
//! healthy (skipped, with a printed reason, only outside CI when `docker info` fails).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value as Json;
use shoal_tests::{
    hold_for, shoal_bin, start_fast_agent, unique, wait_until, AgentProc, MasterProc,
    FAST_MASTER_FLAGS,
};

/// A master and two agents (process executor), zones `a` and `b`.
struct ServiceCell {
    master: MasterProc,
    agents: Vec<AgentProc>,
    hosts: Vec<String>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for ServiceCell {
    fn drop(&mut self) {
        for a in &self.agents {
            a.cleanup_tasks();
        }
    }
}

async fn start_cell(name: &str) -> ServiceCell {
    start_cell_with(name, "process").await
}

async fn start_cell_with(name: &str, containerizers: &str) -> ServiceCell {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), FAST_MASTER_FLAGS);
    let mut agents = Vec::new();
    let mut hosts = Vec::new();
    for (i, zone) in ["a", "b"].iter().enumerate() {
        let hostname = unique(&format!("{name}-{zone}"));
        agents.push(start_fast_agent(
            &master.addr,
            &dir.path().join(format!("agent{i}")),
            &hostname,
            containerizers,
            &format!(
                "cpus:4;mem:4096;ports:[{}-{}]",
                33000 + i * 100,
                33099 + i * 100
            ),
            &["--attributes", &format!("zone:{zone}")],
        ));
        hosts.push(hostname);
    }
    let cell = ServiceCell {
        master,
        agents,
        hosts,
        http: reqwest::Client::new(),
        _dir: dir,
    };
    cell.wait_agents().await;
    cell
}

impl ServiceCell {
    async fn wait_agents(&self) {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        if let Err(e) =
            shoal_tests::wait_agents_active(&self.master.client(), &hosts, Duration::from_secs(20))
                .await
        {
            panic!("{e}; agent log:\n{}", self.agents[0].log());
        }
    }
}

impl ServiceCell {
    async fn post(&self, path: &str, body: String) -> (u16, Json) {
        let url = format!("{}{path}", self.master.addr);
        shoal_tests::post_json(&self.http, &url, body).await
    }

    async fn get(&self, path: &str) -> Option<Json> {
        let url = format!("{}{path}", self.master.addr);
        shoal_tests::get_json(&self.http, &url).await
    }

    async fn service(&self, id: &str) -> Option<Json> {
        self.get(&format!("/api/shoal/v1/services/{id}")).await
    }

    /// The service's live tasks in the cell: (task id, state, healthy).
    async fn live_tasks(&self, id: &str) -> Option<Vec<(String, String, Option<bool>)>> {
        let state = self.get("/api/shoal/v1/state").await?;
        Some(
            state["tasks"]
                .as_array()?
                .iter()
                .filter(|t| {
                    t["id"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with(&format!("{id}."))
                        && !matches!(
                            t["state"].as_str(),
                            Some(
                                "TASK_FINISHED"
                                    | "TASK_FAILED"
                                    | "TASK_KILLED"
                                    | "TASK_ERROR"
                                    | "TASK_DROPPED"
                                    | "TASK_GONE"
                                    | "TASK_GONE_BY_OPERATOR"
                            )
                        )
                })
                .map(|t| {
                    (
                        t["id"].as_str().unwrap_or("").to_string(),
                        t["state"].as_str().unwrap_or("").to_string(),
                        t["status"]["healthy"].as_bool(),
                    )
                })
                .collect(),
        )
    }

    async fn wait_settled(&self, id: &str, what: &str) -> Json {
        wait_until(what, Duration::from_secs(40), || async {
            self.service(id).await.is_some_and(|s| s["settled"] == true)
        })
        .await;
        self.service(id).await.unwrap()
    }

    /// Runs the `shoal` binary against the master; the exit code and stdout.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(shoal_bin())
            .args(args)
            .args(["--master", &self.master.addr])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGKILLs a process task's process group, found from the agents' executor records.
    fn kill9_task(&self, task_id: &str) {
        for a in &self.agents {
            let tasks = a.work_dir.join("state").join("process").join("tasks");
            for e in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
                let Ok(data) = std::fs::read(e.path().join("record.json")) else {
                    continue;
                };
                let rec: Json = serde_json::from_slice(&data).unwrap_or(Json::Null);
                if rec["task_id"] == task_id {
                    let pgid = rec["pgid"].as_i64().unwrap();
                    assert!(pgid > 1);
                    // SAFETY: kill(2) of the process group of a task this test started.
                    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
                    return;
                }
            }
        }
        panic!("no executor record of {task_id}");
    }
}

fn service_file(name: &str, count: u32, version: &str) -> String {
    format!(
        r#"name = "{name}"
count = {count}
spread_by = "zone"

[task]
command = "while true; do sleep 1; done"
resources = "cpus:0.1;mem:16"
ports = ["http"]
env = {{ VERSION = "{version}" }}

[health_check]
type = "command"
command = "test -n \"$PORT_HTTP\""
interval = "200ms"
timeout = "2s"
grace_period = "5s"

[restart]
backoff = "200ms"

[update]
max_surge = 1
max_unavailable = 1
"#
    )
}

fn ids(tasks: &[(String, String, Option<bool>)]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.0.clone()).collect()
}

fn available(tasks: &[(String, String, Option<bool>)]) -> usize {
    tasks
        .iter()
        .filter(|t| t.1 == "TASK_RUNNING" && t.2 == Some(true))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_keeps_count_through_a_crash_a_master_restart_and_a_rolling_update() {
    let mut cell = start_cell("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let name = "web";
    let file = dir.path().join("web.toml");
    std::fs::write(&file, service_file(name, 3, "1")).unwrap();

    // 1. `shoal service run --wait` returns once 3 healthy instances run.
    let (code, out, err) =
        cell.cli(&["service", "run", file.to_str().unwrap(), "--wait", "--json"]);
    assert_eq!(code, 0, "shoal service run --wait failed:\n{out}\n{err}");
    let svc: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(svc["counts"]["available"], 3, "{svc}");
    let tasks = cell.live_tasks(name).await.unwrap();
    assert_eq!(
        available(&tasks),
        3,
        "healthy is in the state's task JSON: {tasks:?}"
    );
    // Spread over the zones: two in one, one in the other.
    let zones: Vec<String> = svc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["hostname"].as_str().unwrap().to_string())
        .collect();
    let in_a = zones.iter().filter(|h| h.contains("-a-")).count();
    assert!(in_a == 1 || in_a == 2, "spread over zones: {zones:?}");

    // 2. A crashed instance is replaced.
    let victim = tasks[0].0.clone();
    cell.kill9_task(&victim);
    wait_until(
        "the crashed instance replaced",
        Duration::from_secs(30),
        || async {
            cell.live_tasks(name).await.is_some_and(|t| {
                available(&t) == 3 && t.len() == 3 && !t.iter().any(|x| x.0 == victim)
            })
        },
    )
    .await;
    let before = ids(&cell.live_tasks(name).await.unwrap());

    // 3. Master SIGKILL and restart: the same 3 tasks, adopted, nothing started twice.
    cell.master.restart_same_addr();
    cell.wait_agents().await;
    let svc = cell
        .wait_settled(name, "the service settled after the restart")
        .await;
    assert_eq!(svc["counts"]["instances"], 3);
    // The scheduler has time to do something wrong: the same instances throughout.
    hold_for(
        "the same instances after the master restart",
        Duration::from_millis(1500),
        || async {
            let after = cell.live_tasks(name).await.map(|t| ids(&t));
            match after {
                Some(after) if after == before => Ok(()),
                after => Err(format!("{before:?} became {after:?}")),
            }
        },
    )
    .await;

    // 4. A rolling update (a changed env): every instance replaced; sampled state never shows
    //    fewer than count - max_unavailable = 2 healthy instances.
    let (status, answer) = cell
        .post("/api/shoal/v1/services", service_file(name, 3, "2"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], true);
    let mut min_available = usize::MAX;
    let mut max_live = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let tasks = cell.live_tasks(name).await.unwrap();
        min_available = min_available.min(available(&tasks));
        max_live = max_live.max(tasks.len());
        let svc = cell.service(name).await.unwrap();
        if svc["settled"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update did not finish: {svc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("rolling update: at least {min_available} healthy, at most {max_live} tasks");
    assert!(
        min_available >= 2,
        "{min_available} healthy during the update"
    );
    assert!(
        max_live <= 4,
        "{max_live} tasks during the update (surge 1)"
    );
    let updated = ids(&cell.live_tasks(name).await.unwrap());
    assert_eq!(updated.len(), 3);
    assert!(updated.is_disjoint(&before), "every instance replaced");
    let svc = cell.service(name).await.unwrap();
    assert_eq!(svc["spec_version"], 2);
    // The same file again changes nothing.
    let (status, answer) = cell
        .post("/api/shoal/v1/services", service_file(name, 3, "2"))
        .await;
    assert_eq!(
        (status, answer["changed"].clone()),
        (200, Json::Bool(false))
    );

    // 5. Scale up and down, and stop.
    let (code, out, err) = cell.cli(&["service", "scale", name, "5", "--wait", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(available(&cell.live_tasks(name).await.unwrap()), 5);
    let (code, _, err) = cell.cli(&["service", "scale", name, "2", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(cell.live_tasks(name).await.unwrap().len(), 2);
    let (code, out, _) = cell.cli(&["service", "status", "--json"]);
    assert_eq!(code, 0);
    let list: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(list["services"][0]["count"], 2);
    let (code, _, err) = cell.cli(&["service", "stop", name, "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(cell.live_tasks(name).await.unwrap().is_empty());
    assert_eq!(cell.service(name).await.unwrap()["state"], "STOPPED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_gets_the_task_killed_and_replaced_and_bad_files_are_refused() {
    let cell = start_cell("svc-hc").await;
    let file = r#"
name = "sick"
count = 1
[task]
command = "while true; do sleep 1; done"
resources = "cpus:0.1;mem:16"
[health_check]
type = "command"
command = "false"
interval = "200ms"
grace_period = "0s"
max_consecutive_failures = 2
[restart]
backoff = "100ms"
"#;
    let (status, answer) = cell.post("/api/shoal/v1/services", file.into()).await;
    assert_eq!(status, 201, "{answer}");
    // The agent kills the first task after two failed checks; the instance comes back as the
    // next generation.
    wait_until(
        "the unhealthy task killed and replaced",
        Duration::from_secs(30),
        || async {
            cell.service("sick")
                .await
                .is_some_and(|s| s["instances"][0]["generation"].as_u64().unwrap_or(0) >= 2)
        },
    )
    .await;
    let first = cell.get("/api/shoal/v1/tasks/sick.0.1").await.unwrap();
    assert_eq!(first["state"], "TASK_KILLED", "{first}");
    let message = first["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("consecutive failed health checks"),
        "{first}"
    );

    // Bad files: 400, the field named, nothing changes.
    let cases = [
        (
            "name = \"bad\"\n[task]\ncommand = \"x\"\nresources = \"cpus:1\"\n[health_check]\ntype = \"http\"\n",
            "health_check.port",
        ),
        (
            "name = \"bad\"\n[task]\ncommand = \"x\"\nresources = \"cpus:999;mem:1\"\n",
            "task.resources",
        ),
        (
            "name = \"bad\"\ncolour = \"red\"\n[task]\ncommand = \"x\"\nresources = \"cpus:1\"\n",
            "colour",
        ),
        (
            "name = \"bad\"\n[task]\ncommand = \"x\"\nresources = \"cpus:1\"\n[update]\nmax_surge = 0\nmax_unavailable = 0\n",
            "update",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = cell.post("/api/shoal/v1/services", body.into()).await;
        assert_eq!(status, 400, "{answer}");
        let message = answer["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{field} not in {message}");
    }
    let list = cell.get("/api/shoal/v1/services").await.unwrap();
    assert_eq!(list["services"].as_array().unwrap().len(), 1, "{list}");
    let (status, _) = cell
        .post("/api/shoal/v1/services/nope/scale", "{\"count\": 2}".into())
        .await;
    assert_eq!(status, 404);
    let (status, _) = cell
        .post(
            "/api/shoal/v1/services/sick/scale",
            "{\"count\": -1}".into(),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_runs_in_docker_with_a_tcp_health_check() {
    if !shoal_tests::docker_enabled("a_service_runs_in_docker_with_a_tcp_health_check") {
        return;
    }
    let cell = start_cell_with("svc-docker", "docker,process").await;
    let file = r#"
name = "httpd"
count = 2
[task]
image = "local/busybox:latest"
command = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -h /www -p 127.0.0.1:$PORT_HTTP"
resources = "cpus:0.1;mem:32"
ports = ["http"]
[health_check]
type = "tcp"
interval = "200ms"
grace_period = "5s"
"#;
    let (status, answer) = cell.post("/api/shoal/v1/services", file.into()).await;
    assert_eq!(status, 201, "{answer}");
    let svc = cell.wait_settled("httpd", "2 healthy containers").await;
    assert_eq!(svc["counts"]["available"], 2, "{svc}");
    let tasks = cell.live_tasks("httpd").await.unwrap();
    assert_eq!(available(&tasks), 2, "{tasks:?}");
    let (status, _) = cell
        .post("/api/shoal/v1/services/httpd/stop", String::new())
        .await;
    assert_eq!(status, 202);
    cell.wait_settled("httpd", "the containers stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marathon_app_runs_as_a_service_with_its_health_check() {
    let cell = start_cell("svc-marathon").await;
    let app = serde_json::json!({
        "id": "/shop/cart", "cmd": "while true; do sleep 1; done",
        "cpus": 0.1, "mem": 16, "instances": 2,
        "portDefinitions": [{"port": 0, "name": "http"}],
        "healthChecks": [{"protocol": "COMMAND", "command": {"value": "test -n \"$PORT_HTTP\""},
                          "gracePeriodSeconds": 5, "intervalSeconds": 0.2, "timeoutSeconds": 2}],
        "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5},
        "constraints": [["zone", "GROUP_BY"]],
        "labels": {"HAPROXY_GROUP": "external"}, "version": "2026-11-01T00:00:00.000Z"
    });
    let path = cell._dir.path().join("cart.json");
    std::fs::write(&path, app.to_string()).unwrap();
    let path = path.to_string_lossy().into_owned();
    let (code, out, err) = cell.cli(&[
        "service",
        "run",
        &path,
        "--format",
        "marathon",
        "--wait",
        "--timeout",
        "40s",
        "--json",
    ]);
    assert_eq!(
        code, 0,
        "shoal service run --format marathon failed:\n{out}\n{err}"
    );
    assert!(err.contains("note: labels ignored"), "{err}");
    let tasks = cell.live_tasks("shop-cart").await.unwrap();
    assert_eq!(available(&tasks), 2, "{tasks:?}");
    let service = cell.service("shop-cart").await.unwrap();
    assert_eq!(service["spec"]["spread_by"], "zone", "{service:#}");
    assert_eq!(
        service["spec"]["update"]["max_unavailable"], 1,
        "{service:#}"
    );

    // What a service cannot do is named, and nothing is submitted.
    let bad = serde_json::json!({"id": "bad", "cmd": "true",
        "healthChecks": [{"protocol": "HTTPS"}], "container": {"volumes": [{"containerPath": "/d"}]}});
    std::fs::write(cell._dir.path().join("bad.json"), bad.to_string()).unwrap();
    let bad_path = cell
        ._dir
        .path()
        .join("bad.json")
        .to_string_lossy()
        .into_owned();
    let (code, _, err) = cell.cli(&["service", "run", &bad_path, "--format", "marathon"]);
    assert_ne!(code, 0);
    for field in ["healthChecks[0].protocol", "container.volumes"] {
        assert!(
            err.contains(&format!("{field}: unsupported field")),
            "{field}: {err}"
        );
    }
    assert!(cell.service("bad").await.is_none());
    let (code, _, err) = cell.cli(&["service", "stop", "shop-cart", "--wait"]);
    assert_eq!(code, 0, "{err}");
}
