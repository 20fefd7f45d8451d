//! Batch jobs on the real `shoal master` and `shoal agent` (process executor): a diamond DAG
//! runs in dependency order (through `shoal job run --wait`), a flaky task succeeds on retry,
//! an always-failing task fails the job after its retries with its dependents skipped, bad job
//! files are refused with the field named and change nothing, and a job resumes after the
//! master is SIGKILLed twice: every task runs exactly once. A job of hundreds of short tasks
//! runs each once; a stopped job's running task is killed and the rest skipped. One job runs a
//! task in Docker (skipped, with a printed reason, only outside CI when `docker info` fails).
//! On a small agent: a high-priority job preempts a low-priority one, whose evicted tasks run
//! again afterwards; a team arriving in a full cell gets its guarantee by preemption while no
//! team exceeds its limit or falls below its guarantee; queued tasks start by priority.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use shoal_client::Client;
use shoal_tests::{start_fast_agent, unique, wait_until, AgentProc, MasterProc, FAST_MASTER_FLAGS};

/// A master and one agent (process executor), each on its own work dir.
struct JobCell {
    master: MasterProc,
    agent: AgentProc,
    client: Client,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Drop for JobCell {
    fn drop(&mut self) {
        self.agent.cleanup_tasks();
    }
}

async fn start_cell(name: &str) -> JobCell {
    start_cell_with(name, "process").await
}

async fn start_cell_with(name: &str, containerizers: &str) -> JobCell {
    start_cell_sized(name, containerizers, "cpus:4;mem:4096;ports:[32000-32100]").await
}

async fn start_cell_sized(name: &str, containerizers: &str, resources: &str) -> JobCell {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), FAST_MASTER_FLAGS);
    let hostname = unique(name);
    let agent = start_fast_agent(
        &master.addr,
        &dir.path().join("agent"),
        &hostname,
        containerizers,
        resources,
        &["--attributes", "zone:test"],
    );
    let client = master.client();
    if let Err(e) =
        shoal_tests::wait_agents_active(&client, &[&hostname], Duration::from_secs(20)).await
    {
        panic!("{e}; agent log:\n{}", agent.log());
    }
    JobCell {
        master,
        agent,
        client,
        http: reqwest::Client::new(),
        dir,
    }
}

impl JobCell {
    /// POSTs a job file (the body as is); the HTTP status and the JSON answer.
    async fn submit(&self, body: String) -> (u16, Json) {
        let url = format!("{}/api/shoal/v1/jobs", self.master.addr);
        shoal_tests::post_json(&self.http, &url, body).await
    }

    async fn job(&self, id: &str) -> Option<Json> {
        let url = format!("{}/api/shoal/v1/jobs/{id}", self.master.addr);
        shoal_tests::get_json(&self.http, &url).await
    }

    /// Waits until the job is no longer RUNNING; its record.
    async fn wait_job_end(&self, id: &str, deadline: Duration) -> Json {
        let until = Instant::now() + deadline;
        loop {
            if let Some(job) = self.job(id).await {
                if job["state"] != "RUNNING" {
                    return job;
                }
                assert!(
                    Instant::now() < until,
                    "job {id} still running after {deadline:?}: {job:#}\nagent log:\n{}",
                    self.agent.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `shoal job <args> --master <addr>`; exit code, stdout, stderr.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let run = tokio::process::Command::new(shoal_tests::shoal_bin())
            .arg("job")
            .args(args)
            .args(["--master", &self.master.addr])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(90), run)
            .await
            .expect("shoal job finished within 90 s")
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

fn task<'a>(job: &'a Json, name: &str) -> &'a Json {
    job["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {job:#}"))
}

/// A task running `shell` with small resources, as a TOML `[[tasks]]` table.
fn toml_task(name: &str, deps: &[&str], shell: &str) -> String {
    format!(
        "[[tasks]]\nname = \"{name}\"\ncommand = '''{shell}'''\nresources = \"cpus:0.1;mem:16\"\ndepends_on = {deps:?}\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_dag_runs_in_dependency_order() {
    let cell = start_cell("jobs-diamond").await;
    let log = cell.path("order.log");
    let body =
        |name: &str| format!("echo start-{name} >> {log}; sleep 0.3; echo end-{name} >> {log}");
    let file = format!(
        "name = \"diamond\"\n\n{}{}{}{}",
        toml_task("a", &[], &body("a")),
        toml_task("b", &["a"], &body("b")),
        toml_task("c", &["a"], &body("c")),
        toml_task("d", &["b", "c"], &body("d")),
    );
    let path = cell.path("diamond.toml");
    std::fs::write(&path, file).unwrap();

    // The plan places only `a` now.
    let (code, out, err) = cell.cli(&["plan", &path, "--json"]).await;
    assert_eq!(code, 0, "plan failed: {out}{err}");
    let plan: Json = serde_json::from_str(&out).unwrap();
    let planned: Vec<&str> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["plan"] == "place")
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["a"], "{plan:#}");
    assert!(
        cell.job("diamond").await.is_none(),
        "a plan submits nothing"
    );

    let (code, out, err) = cell.cli(&["run", &path, "--wait", "--json"]).await;
    assert_eq!(code, 0, "shoal job run --wait failed:\n{out}\n{err}");
    let job: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    for t in ["a", "b", "c", "d"] {
        assert_eq!(task(&job, t)["state"], "FINISHED", "{job:#}");
        assert_eq!(task(&job, t)["attempts"], 1, "{job:#}");
    }

    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("no '{l}' in {lines:?}"))
    };
    assert_eq!(lines.len(), 8, "each task ran once: {lines:?}");
    assert!(
        at("end-a") < at("start-b") && at("end-a") < at("start-c"),
        "{lines:?}"
    );
    assert!(
        at("end-b") < at("start-d") && at("end-c") < at("start-d"),
        "{lines:?}"
    );

    // Its output is readable through the master.
    let (code, out, err) = cell.cli(&["logs", "diamond", "d"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.is_empty(), "d writes to the log file only: {out:?}");
    // Submitting the same file again is idempotent.
    let (code, out, _) = cell.cli(&["run", &path]).await;
    assert_eq!(code, 0);
    assert!(out.contains("already submitted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_task_succeeds_on_retry() {
    let cell = start_cell("jobs-flaky").await;
    let marker = cell.path("flaky.marker");
    let spec = json!({
        "name": "flaky",
        "tasks": [{
            "name": "flaky",
            "command": format!("if [ -e {marker} ]; then echo second time lucky; else touch {marker}; exit 1; fi"),
            "resources": "cpus:0.1;mem:16",
            "retries": 2,
            "backoff": "200ms",
        }, {
            "name": "after",
            "command": "echo after",
            "resources": "cpus:0.1;mem:16",
            "depends_on": ["flaky"],
        }]
    });
    let (status, answer) = cell.submit(spec.to_string()).await;
    assert_eq!(status, 201, "{answer}");
    let job = cell.wait_job_end("flaky", Duration::from_secs(60)).await;
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    let flaky = task(&job, "flaky");
    assert_eq!(flaky["attempts"], 2, "{job:#}");
    assert_eq!(flaky["task_id"], "flaky.flaky.2");
    assert_eq!(task(&job, "after")["state"], "FINISHED");
    let first = cell.client.task("flaky.flaky.1").await.unwrap();
    assert_eq!(first.state.mesos_name(), "TASK_FAILED");
    let second = cell.client.task("flaky.flaky.2").await.unwrap();
    assert_eq!(second.state.mesos_name(), "TASK_FINISHED");
    let (code, out, _) = cell.cli(&["logs", "flaky", "flaky"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, "second time lucky\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_task_fails_the_job_after_its_retries_and_skips_its_dependents() {
    let cell = start_cell("jobs-failing").await;
    let file = format!(
        "name = \"failing\"\n\n{}retries = 2\nbackoff = \"100ms\"\n\n{}{}{}",
        toml_task("broken", &[], "echo no luck >&2; exit 3"),
        toml_task("mid", &["broken"], "echo mid"),
        toml_task("last", &["mid"], "echo last"),
        toml_task("other", &[], "echo independent"),
    );
    let (status, answer) = cell.submit(file).await;
    assert_eq!(status, 201, "{answer}");
    let job = cell.wait_job_end("failing", Duration::from_secs(60)).await;
    assert_eq!(job["state"], "FAILED", "{job:#}");
    assert!(
        job["message"].as_str().unwrap_or("").contains("broken"),
        "{job:#}"
    );
    let broken = task(&job, "broken");
    assert_eq!(broken["state"], "FAILED", "{job:#}");
    assert_eq!(broken["attempts"], 3, "1 attempt + 2 retries: {job:#}");
    let why = broken["message"].as_str().unwrap();
    assert!(why.contains("exit code 3"), "{why}");
    for name in ["mid", "last"] {
        let t = task(&job, name);
        assert_eq!(t["state"], "SKIPPED", "{job:#}");
        assert_eq!(t["attempts"], 0);
        let why = t["message"].as_str().unwrap_or("");
        assert!(why.contains("broken failed"), "{name}: {why}");
    }
    assert_eq!(task(&job, "other")["state"], "FINISHED", "{job:#}");

    // Exactly three attempts of `broken` are in the cell, and none of the skipped tasks.
    let state = cell.client.state().await.unwrap();
    let mut attempts: Vec<String> = state
        .tasks
        .iter()
        .filter(|t| t.id.as_str().starts_with("failing."))
        .map(|t| format!("{} {}", t.id, t.state.mesos_name()))
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        [
            "failing.broken.1 TASK_FAILED",
            "failing.broken.2 TASK_FAILED",
            "failing.broken.3 TASK_FAILED",
            "failing.other.1 TASK_FINISHED"
        ]
    );
    let (code, out, _) = cell.cli(&["status", "failing"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("dependency broken failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_job_files_are_refused_with_the_field_named_and_change_nothing() {
    let cell = start_cell("jobs-bad").await;
    let ok = |name: &str, deps: &[&str]| toml_task(name, deps, "true");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "cycle",
            format!("name = \"cyc\"\n{}{}{}", ok("a", &["b"]), ok("b", &["a"]), ok("c", &[])),
            "tasks[a].depends_on: dependency cycle: a -> b -> a",
        ),
        (
            "unknown dependency",
            format!("name = \"unknown\"\n{}", ok("a", &["nope"])),
            "tasks[a].depends_on: unknown task 'nope'",
        ),
        (
            "impossible resources",
            "name = \"huge\"\n[[tasks]]\nname = \"big\"\ncommand = \"true\"\nresources = \"cpus:64;mem:16\"\n".to_string(),
            "tasks[big].resources: cpus:64;mem:16 fits no agent",
        ),
        (
            "no agent matches",
            format!("name = \"nowhere\"\n{}constraints = [{{ attribute = \"zone\", value = \"mars\" }}]\n", ok("a", &[])),
            "tasks[a].constraints: no agent of the cell matches them",
        ),
        (
            "bad duration",
            format!("name = \"slow\"\n{}timeout = \"ten minutes\"\n", ok("a", &[])),
            "tasks[a].timeout: 'ten minutes'",
        ),
        (
            "unknown field",
            "name = \"typo\"\n[[tasks]]\nname = \"a\"\ncommand = \"true\"\nresources = \"cpus:0.1\"\ndependson = [\"b\"]\n".to_string(),
            "unknown field `dependson`",
        ),
        ("not TOML", "name = ".to_string(), "invalid job file"),
    ];
    let before = cell.client.state().await.unwrap().version;
    for (what, file, expected) in &cases {
        let (status, answer) = cell.submit(file.clone()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        let message = answer["message"].as_str().unwrap_or("");
        assert!(
            message.contains(expected),
            "{what}: {message:?} lacks {expected:?}"
        );
    }
    // Nothing changed: no job, no new version.
    let after = cell.client.state().await.unwrap().version;
    assert_eq!(before, after, "a refused job file commits nothing");
    let (code, out, _) = cell.cli(&["status", "--json"]).await;
    assert_eq!(code, 0);
    let list: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(list["jobs"], json!([]), "{list}");

    // The CLI refuses the cyclic file before asking the master, naming the cycle.
    let path = cell.path("cyclic.toml");
    std::fs::write(&path, &cases[0].1).unwrap();
    let (code, out, err) = cell.cli(&["run", &path]).await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_after_master_kill_9_and_runs_each_task_once() {
    let mut cell = start_cell("jobs-resume").await;
    let markers = cell.path("markers");
    // Each task appends its name first, then works a while: a task run twice leaves two lines.
    let body = format!("echo $SHOAL_JOB_TASK >> {markers}; sleep 1");
    let names = ["a", "b1", "b2", "b3", "c", "d"];
    let file = format!(
        "name = \"resume\"\n\n{}{}{}{}{}{}",
        toml_task("a", &[], &body),
        toml_task("b1", &["a"], &body),
        toml_task("b2", &["a"], &body),
        toml_task("b3", &["a"], &body),
        toml_task("c", &["b1", "b2", "b3"], &body),
        toml_task("d", &["c"], &body),
    );
    let (status, answer) = cell.submit(file).await;
    assert_eq!(status, 201, "{answer}");

    // Crash the master while the b's run, and again while c runs.
    for (running, finished) in [("b2", "a"), ("c", "b3")] {
        let c = &cell;
        wait_until(
            &format!("{running} running after {finished} finished"),
            Duration::from_secs(60),
            || async move {
                match c.job("resume").await {
                    Some(job) => {
                        task(&job, running)["state"] == "RUNNING"
                            && task(&job, finished)["state"] == "FINISHED"
                    }
                    None => false,
                }
            },
        )
        .await;
        cell.master.restart_same_addr();
        cell.client = cell.master.client();
    }

    let job = cell.wait_job_end("resume", Duration::from_secs(90)).await;
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    let lines = std::fs::read_to_string(&markers).unwrap();
    let mut seen: Vec<&str> = lines.lines().collect();
    seen.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(seen, want, "exactly one marker per task");
    for n in names {
        assert_eq!(task(&job, n)["attempts"], 1, "{job:#}");
    }
    let state = cell.client.state().await.unwrap();
    let ours = state
        .tasks
        .iter()
        .filter(|t| t.id.as_str().starts_with("resume."))
        .count();
    assert_eq!(ours, names.len(), "one attempt per task in the cell");
    shoal_tests::check_no_double_booking(&state).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_a_task_in_docker_with_its_environment_and_port() {
    if !shoal_tests::docker_enabled("a_job_runs_a_task_in_docker_with_its_environment_and_port") {
        return;
    }
    let cell = start_cell_with("jobs-docker", "docker,process").await;
    let file = r#"
name = "boxed"

[[tasks]]
name = "inside"
image = "local/busybox:latest"
command = "echo in=$SHOAL_JOB_TASK greeting=$GREETING port=$PORT_WEB"
resources = "cpus:0.1;mem:32"
env = { GREETING = "hi" }
ports = ["web"]
constraints = [{ attribute = "zone", value = "test" }]

[[tasks]]
name = "outside"
command = "echo after the container"
resources = "cpus:0.1;mem:16"
depends_on = ["inside"]
"#;
    let (status, answer) = cell.submit(file.to_string()).await;
    assert_eq!(status, 201, "{answer}");
    let job = cell.wait_job_end("boxed", Duration::from_secs(120)).await;
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    let (code, out, err) = cell.cli(&["logs", "boxed", "inside"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "in=inside greeting=hi port=32000\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_hundreds_of_short_tasks_runs_each_once() {
    let cell = start_cell("jobs-many").await;
    let markers = cell.path("many.markers");
    let n = 300;
    let mut tasks: Vec<Json> = (0..n)
        .map(|i| {
            json!({"name": format!("t{i}"), "command": format!("echo t{i} >> {markers}"),
                   "resources": "cpus:0.01;mem:1"})
        })
        .collect();
    tasks.push(
        json!({"name": "last", "command": format!("echo last >> {markers}"),
                      "resources": "cpus:0.01;mem:1", "depends_on": ["t0", format!("t{}", n - 1)]}),
    );
    let (status, answer) = cell
        .submit(json!({"name": "many", "tasks": tasks}).to_string())
        .await;
    assert_eq!(status, 201, "{answer}");
    let started = Instant::now();
    let job = cell.wait_job_end("many", Duration::from_secs(180)).await;
    assert_eq!(job["state"], "COMPLETE", "{}", job["counts"]);
    eprintln!("{} tasks in {:?}", n + 1, started.elapsed());
    let text = std::fs::read_to_string(&markers).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // `last` depends on t0 and the final task only: others may still run after it.
    let at = |l: &str| lines.iter().position(|x| *x == l).unwrap();
    let final_task = format!("t{}", n - 1);
    assert!(
        at("last") > at("t0") && at("last") > at(&final_task),
        "last runs after its dependencies"
    );
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), n + 1, "each task ran once");
    assert_eq!(text.lines().count(), n + 1, "each task ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_job_kills_its_running_task_and_skips_the_rest() {
    let cell = start_cell("jobs-stop").await;
    let file = format!(
        "name = \"stoppable\"\n\n{}{}",
        toml_task("long", &[], "sleep 600"),
        toml_task("next", &["long"], "echo never"),
    );
    let (status, answer) = cell.submit(file).await;
    assert_eq!(status, 201, "{answer}");
    let c = &cell;
    wait_until("long running", Duration::from_secs(30), || async move {
        c.client
            .task("stoppable.long.1")
            .await
            .is_ok_and(|t| t.state.mesos_name() == "TASK_RUNNING")
    })
    .await;
    let (code, out, err) = cell.cli(&["stop", "stoppable"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let job = cell.wait_job_end("stoppable", Duration::from_secs(5)).await;
    assert_eq!(job["state"], "STOPPED", "{job:#}");
    wait_until("long killed", Duration::from_secs(30), || async move {
        c.client
            .task("stoppable.long.1")
            .await
            .is_ok_and(|t| t.state.mesos_name() == "TASK_KILLED")
    })
    .await;
    let c = &cell;
    wait_until(
        "the records settle",
        Duration::from_secs(10),
        || async move {
            let job = c.job("stoppable").await.unwrap();
            task(&job, "long")["state"] == "FAILED" && task(&job, "next")["state"] == "SKIPPED"
        },
    )
    .await;
    let job = cell.job("stoppable").await.unwrap();
    assert_eq!(task(&job, "next")["message"], "job stopped");
    assert!(cell.client.task("stoppable.next.1").await.is_err());
    // Unknown jobs are 404.
    let (code, _, err) = cell.cli(&["stop", "nope"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("404"), "{err}");
}

/// A job file of `n` tasks running `shell` with `resources`, at `priority`, for `team`.
fn job_file(
    name: &str,
    team: &str,
    priority: u32,
    n: usize,
    shell: &str,
    resources: &str,
) -> String {
    let mut f = format!("name = \"{name}\"\nteam = \"{team}\"\npriority = {priority}\n\n");
    for i in 1..=n {
        f.push_str(&format!(
            "[[tasks]]\nname = \"t{i}\"\ncommand = '''{shell}'''\nresources = \"{resources}\"\n\n"
        ));
    }
    f
}

impl JobCell {
    /// Waits until `n` tasks of the job are RUNNING in its record.
    async fn wait_running(&self, job: &str, n: usize, deadline: Duration) {
        wait_until(
            &format!("{n} tasks of {job} running"),
            deadline,
            || async move {
                self.job(job).await.is_some_and(|j| {
                    j["tasks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|t| t["state"] == "RUNNING")
                        .count()
                        >= n
                })
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_job_preempts_low_priority_batch_work() {
    let cell = start_cell_sized("jobs-preempt", "process", "cpus:2;mem:256").await;
    let (status, answer) = cell
        .submit(job_file("low", "*", 10, 4, "sleep 3", "cpus:0.5;mem:16"))
        .await;
    assert_eq!(status, 201, "{answer}");
    cell.wait_running("low", 4, Duration::from_secs(30)).await;
    let (status, answer) = cell
        .submit(job_file("high", "*", 90, 2, "echo high", "cpus:0.5;mem:16"))
        .await;
    assert_eq!(status, 201, "{answer}");
    let high = cell.wait_job_end("high", Duration::from_secs(20)).await;
    assert_eq!(high["state"], "COMPLETE", "{high:#}");
    // Two low attempts were evicted: TASK_KILLED with the preemption's reason and message,
    // and they ran again without using a retry (the job has none).
    let low = cell.wait_job_end("low", Duration::from_secs(40)).await;
    assert_eq!(low["state"], "COMPLETE", "{low:#}");
    let mut evicted = 0;
    for t in low["tasks"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if t["attempts"] == 1 {
            continue;
        }
        evicted += 1;
        assert_eq!(t["attempts"], 2, "{t:#}");
        assert_eq!(t["preemptions"], 1, "{t:#}");
        let first = cell.client.task(&format!("low.{name}.1")).await.unwrap();
        assert_eq!(first.state.mesos_name(), "TASK_KILLED");
        assert_eq!(
            first.status.reason.as_deref(),
            Some("REASON_CONTAINER_PREEMPTED")
        );
        let m = first.status.message.clone().unwrap_or_default();
        assert!(
            m.contains("batch.high.") && m.contains("priority 90"),
            "{m}"
        );
        assert!(first.preempted_by.is_some());
    }
    assert_eq!(evicted, 2, "{low:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_arriving_in_a_full_cell_gets_its_guarantee_within_a_step() {
    let cell = start_cell_sized("jobs-guarantee", "process", "cpus:2;mem:256").await;
    let c = &cell.client;
    let res = |s: &str| shoal_core::ResourceSet::parse(s).unwrap();
    c.set_role("team-a", 1.0, &res("cpus:0.5"), Some(&res("cpus:2")))
        .await
        .unwrap();
    let (status, answer) = cell
        .submit(job_file("a", "team-a", 50, 4, "sleep 4", "cpus:0.5;mem:16"))
        .await;
    assert_eq!(status, 201, "{answer}");
    cell.wait_running("a", 4, Duration::from_secs(30)).await;
    // Team B: guaranteed 1 cpu and limited to it, at the same priority as A's work.
    c.set_role("team-b", 1.0, &res("cpus:1"), Some(&res("cpus:1")))
        .await
        .unwrap();
    let arrived = Instant::now();
    let (status, answer) = cell
        .submit(job_file("b", "team-b", 50, 3, "sleep 1", "cpus:0.5;mem:16"))
        .await;
    assert_eq!(status, 201, "{answer}");
    // Until both jobs end, poll the roles: no team past its limit, A not below its guarantee
    // while it has work.
    let mut got_guarantee: Option<Duration> = None;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let state = c.state().await.unwrap();
        let cpus = |role: &str| {
            state
                .roles
                .iter()
                .find(|r| r.name == role)
                .map(|r| r.consumed.scalar("cpus").as_f64())
                .unwrap_or(0.0)
        };
        let (a, b) = (cpus("team-a"), cpus("team-b"));
        assert!(a <= 2.0 && b <= 1.0, "past a limit: a {a}, b {b}");
        let a_done = cell.job("a").await.is_some_and(|j| j["state"] != "RUNNING");
        let b_done = cell.job("b").await.is_some_and(|j| j["state"] != "RUNNING");
        if got_guarantee.is_none() {
            assert!(a >= 0.5, "team A below its guarantee: {a}");
        }
        if b >= 1.0 && got_guarantee.is_none() {
            got_guarantee = Some(arrived.elapsed());
        }
        if a_done && b_done {
            break;
        }
        assert!(Instant::now() < until, "jobs did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The documented bound: one scheduler step (the submission wakes it), the commit and the
    // launch; the victims' kill grace does not delay B.
    let t = got_guarantee.expect("team B reached its guarantee");
    println!("team B reached its guarantee {t:?} after it arrived");
    assert!(t < Duration::from_secs(5), "{t:?}");
    let a = cell.job("a").await.unwrap();
    let b = cell.job("b").await.unwrap();
    assert_eq!(
        (&a["state"], &b["state"]),
        (&json!("COMPLETE"), &json!("COMPLETE"))
    );
    let preempted: u64 = a["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["preemptions"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(preempted, 2, "{a:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_start_highest_priority_first_when_the_cell_is_short() {
    let cell = start_cell_sized("jobs-priority", "process", "cpus:2;mem:256").await;
    // A blocker takes the whole cell; nothing may evict it (priority 1000).
    let (status, answer) = cell
        .submit(job_file(
            "blocker",
            "*",
            1000,
            1,
            "sleep 2",
            "cpus:2;mem:16",
        ))
        .await;
    assert_eq!(status, 201, "{answer}");
    cell.wait_running("blocker", 1, Duration::from_secs(30))
        .await;
    for (name, priority) in [("low", 10), ("high", 90)] {
        let (status, answer) = cell
            .submit(job_file(name, "*", priority, 2, "sleep 1", "cpus:1;mem:16"))
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let high = cell.wait_job_end("high", Duration::from_secs(30)).await;
    let low = cell.wait_job_end("low", Duration::from_secs(30)).await;
    assert_eq!(
        (&high["state"], &low["state"]),
        (&json!("COMPLETE"), &json!("COMPLETE"))
    );
    let times = |j: &Json, f: &str| -> Vec<u64> {
        j["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[f].as_u64().unwrap())
            .collect()
    };
    let high_started = times(&high, "started_at").into_iter().max().unwrap();
    let low_started = times(&low, "started_at").into_iter().min().unwrap();
    let high_finished = times(&high, "finished_at").into_iter().min().unwrap();
    assert!(
        high_started < low_started,
        "high started {high_started}, low {low_started}"
    );
    // The cell holds two of them: the low ones waited for a high one to end.
    assert!(
        low_started >= high_finished,
        "low started {low_started} before high ended {high_finished}"
    );
    for t in high["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(low["tasks"].as_array().unwrap())
    {
        assert_eq!(t["attempts"], 1, "nothing was preempted: {t:#}");
    }
}

/// A file under the repository's `examples/jobs/`.
fn example(name: &str) -> String {
    format!("{}/../examples/jobs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marathon_app_runs_as_a_job_and_unsupported_fields_are_named() {
    let cell = start_cell("jobs-marathon").await;
    let log = cell.path("hello.log");
    let app = json!({
        "id": "/imports/hello",
        "cmd": format!("echo $SHOAL_JOB_TASK port=$PORT_HTTP $GREETING >> {log}"),
        "cpus": 0.1, "mem": 16, "instances": 2,
        "env": {"GREETING": "hi"},
        "portDefinitions": [{"port": 0, "name": "http"}],
        "labels": {"owner": "web"},
        "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 1},
        "healthChecks": [], "user": null, "version": "2026-11-01T00:00:00.000Z"
    });
    let path = cell.path("app.json");
    std::fs::write(&path, app.to_string()).unwrap();
    let (code, out, err) = cell
        .cli(&["run", &path, "--format", "marathon", "--wait", "--json"])
        .await;
    assert_eq!(
        code, 0,
        "shoal job run --format marathon failed:\n{out}\n{err}"
    );
    assert!(err.contains("note: labels ignored"), "{err}");
    assert!(err.contains("note: upgradeStrategy ignored"), "{err}");
    let job: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            l.split(" port=").next().unwrap().to_string() + " " + l.rsplit(' ').next().unwrap()
        })
        .collect();
    lines.sort();
    assert_eq!(lines, ["imports-hello-0 hi", "imports-hello-1 hi"]);

    // Every unsupported field is named, and nothing is submitted.
    let bad = json!({
        "id": "bad", "cmd": "true",
        "healthChecks": [{"protocol": "HTTP", "path": "/"}],
        "container": {"type": "DOCKER", "volumes": [{"containerPath": "/data"}],
                      "docker": {"image": "local/busybox:latest"}},
        "fetch": [{"uri": "https://example.com/x.tgz"}]
    });
    let path = cell.path("bad.json");
    std::fs::write(&path, bad.to_string()).unwrap();
    let (code, _, err) = cell.cli(&["run", &path, "--format", "marathon"]).await;
    assert_ne!(code, 0);
    for field in ["healthChecks", "container.volumes", "fetch"] {
        assert!(
            err.contains(&format!("{field}: unsupported field")),
            "{field}: {err}"
        );
    }
    assert!(
        cell.job("bad").await.is_none(),
        "a refused import submits nothing"
    );

    // The shipped examples convert and plan.
    for (file, format) in [
        ("marathon-app.json", "marathon"),
        ("ecs-taskdef.json", "ecs"),
    ] {
        let (code, out, err) = cell
            .cli(&["plan", &example(file), "--format", format])
            .await;
        assert_eq!(code, 0, "{file}: {out}{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecs_task_definition_runs_its_containers_in_order_with_a_mapped_port() {
    if !shoal_tests::docker_enabled(
        "an_ecs_task_definition_runs_its_containers_in_order_with_a_mapped_port",
    ) {
        return;
    }
    let cell = start_cell_with("jobs-ecs", "docker,process").await;
    // `serve` answers one CGI request on its container port 8080 (bridge network, host port
    // picked by Shoal), then ends; `report` runs after it succeeded.
    let serve = "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho served $PORT_WEB\\ntouch /w/done\\n' > /w/cgi-bin/done && chmod +x /w/cgi-bin/done && httpd -p 8080 -h /w && until [ -f /w/done ]; do sleep 0.1; done; sleep 0.2";
    let def = json!({"taskDefinition": {
    "family": "etl", "networkMode": "bridge", "cpu": "256", "memory": "64",
    "revision": 1, "status": "ACTIVE",
    "containerDefinitions": [
        {"name": "serve", "image": "local/busybox:latest",
         "entryPoint": ["sh", "-c"], "command": [serve],
         "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "web"}]},
        {"name": "report", "image": "local/busybox:latest",
         "command": ["echo", "reported", "$STAGE"],
         "environment": [{"name": "STAGE", "value": "done"}],
         "dependsOn": [{"containerName": "serve", "condition": "SUCCESS"}],
         "logConfiguration": {"logDriver": "awslogs"}}
    ]}});
    let path = cell.path("taskdef.json");
    std::fs::write(&path, def.to_string()).unwrap();
    let (code, out, err) = cell.cli(&["run", &path, "--format", "ecs"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("logConfiguration ignored"), "{err}");

    // The container's port 8080 is reachable on the host port Shoal picked (the agent's
    // lowest, the only job of this cell).
    let until = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match cell
            .http
            .get("http://127.0.0.1:32000/cgi-bin/done")
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => break r.text().await.unwrap_or_default(),
            _ => {}
        }
        assert!(
            Instant::now() < until,
            "serve never answered on 127.0.0.1:32000: {:#}\nagent log:\n{}",
            cell.job("etl").await.unwrap_or_default(),
            cell.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.trim(), "served 32000");
    let job = cell.wait_job_end("etl", Duration::from_secs(60)).await;
    assert_eq!(job["state"], "COMPLETE", "{job:#}");
    let (code, out, err) = cell.cli(&["logs", "etl", "report"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "reported $STAGE\n",
        "exec-form words are not expanded by a shell"
    );
}
