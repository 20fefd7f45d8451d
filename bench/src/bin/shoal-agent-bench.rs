//! `shoal-agent-bench`: how fast the agent launches tasks, next to a baseline measured in the
//! same run.
//!
//! Not a timed test: it prints figures, with the baseline and the target beside each.
//!
//! ```text
//! cargo build -p shoal -p shoal-bench --bin shoal-agent-bench
//! target/debug/shoal-agent-bench --smoke        # tiny scale, < 60 s in a debug build
//! target/release/shoal-agent-bench              # the full scale (build with --release)
//! shoal-agent-bench [--smoke] [--shoal-bin PATH] [--only docker,process] [--keep-work-dir]
//!                   [--process-tasks N] [--claim-size N] [--process-isolation cgroups|none]
//! ```
//!
//! A real `shoal master` and `shoal agent` run on loopback (fast timers), their work dirs on
//! the disk of the target dir (never tmpfs: fsyncs are part of the path).
//!
//! 1. **Docker launch latency**: interleaved runs of (a) a claim of one Docker task
//!    (`sleep 30` on `local/busybox:latest`), timed from the POST until the watch stream shows
//!    TASK_RUNNING, then killed; and (b) the same container config created and started with
//!    bollard directly, timed until `start` returns (and until `inspect` says running).
//!    dockerd's create+start varies by tens of milliseconds from one run to the next, more
//!    than Shoal adds, so a difference of two medians is noise. The agent therefore logs, per
//!    task, how long its own create+start took (`docker_us` on its "docker task running"
//!    line), and Shoal's added time is computed per run: (POST → TASK_RUNNING in the watch)
//!    − (the agent's create+start of that very container). The baseline (b) shows that the
//!    agent's Docker calls cost what plain bollard calls cost.
//!    Skipped with a reason when dockerd does not answer, unless `CI=true` (then it fails).
//! 2. **Process tasks per second**: N `true` tasks claimed on one agent (claims of 100),
//!    timed from the first POST until every task was seen TASK_RUNNING (or ended) in the watch;
//!    the baseline spawns and waits N `sh -c true` from this process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[path = "../util.rs"]
#[allow(dead_code)]
mod util;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use shoal_client::{command_task, ClaimRequest, Client, PlacementRequest};
use shoal_core::{AgentState, CommitMode, ConflictCheck, ResourceSet, TaskState};
use shoal_sched::Event;
use shoal_tests::{AgentProc, MasterProc};
use tokio::sync::mpsc;

const IMAGE: &str = "local/busybox:latest";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The resources of the Docker task (its container gets the same limits in the baseline).
const DOCKER_TASK_RES: &str = "cpus:0.1;mem:32";
const DOCKER_CMD: &str = "sleep 30";
const PROCESS_TASK_RES: &str = "cpus:0.1;mem:16";
const AGENT_RES: &str = "cpus:256;mem:65536;ports:[31000-31100]";
/// Placements per claim in phase 2 (default of `--claim-size`).
const CLAIM_SIZE: usize = 100;
const TARGET_ADDED_MS: f64 = 10.0;
const TARGET_TASKS_PER_S: f64 = 100.0;
/// A pause after each measured launch (and its kill), so that one's teardown in dockerd does
/// not land on the next.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(
    name = "shoal-agent-bench",
    about = "Shoal's agent benchmark: figures next to a baseline measured in the same run"
)]
struct Args {
    /// A tiny scale that finishes in under a minute in a debug build.
    #[arg(long)]
    smoke: bool,
    /// The `shoal` binary. Default: $SHOAL_BIN, else the one next to this binary, else
    /// target/release/shoal or target/debug/shoal.
    #[arg(long = "shoal-bin")]
    shoal_bin: Option<PathBuf>,
    /// Phases to run, comma-separated: docker, process.
    #[arg(long, value_delimiter = ',', default_value = "docker,process")]
    only: Vec<String>,
    /// Keep the run's work dir (master and agent logs, the agent's journal).
    #[arg(long = "keep-work-dir")]
    keep_work_dir: bool,
    /// Process tasks in phase 2 (default: 100 with --smoke, else 500).
    #[arg(long = "process-tasks")]
    process_tasks: Option<usize>,
    /// Placements per claim in phase 2 (one claim = one LAUNCH message to the agent).
    #[arg(long = "claim-size", default_value_t = CLAIM_SIZE)]
    claim_size: usize,
    /// The agent's `--process-isolation`: cgroups (limits where the host allows) or none.
    #[arg(long = "process-isolation", default_value = "cgroups", value_parser = ["cgroups", "none"])]
    process_isolation: String,
}

struct Scale {
    docker_runs: usize,
    process_tasks: usize,
    /// The whole run, from the cell's start to the last figure.
    run_limit: Duration,
}

fn main() {
    let args = Args::parse();
    for o in &args.only {
        if o != "docker" && o != "process" {
            eprintln!("error: --only: unknown phase '{o}' (use docker, process)");
            std::process::exit(2);
        }
    }
    let bin = match find_shoal_bin(args.shoal_bin.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    // shoal_tests::{MasterProc, AgentProc} run `$SHOAL_BIN`; set before any thread starts.
    std::env::set_var("SHOAL_BIN", &bin);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args, bin)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn find_shoal_bin(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        anyhow::ensure!(p.is_file(), "--shoal-bin {} does not exist", p.display());
        return Ok(p.canonicalize()?);
    }
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(p.is_file(), "$SHOAL_BIN {} does not exist", p.display());
        return Ok(p.canonicalize()?);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("shoal"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    candidates.push(target.join("release").join("shoal"));
    candidates.push(target.join("debug").join("shoal"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!("no shoal binary found (tried {candidates:?}); build it with `cargo build -p shoal` or pass --shoal-bin")
}

/// The directory for work dirs: next to this binary (in the target dir, on a real disk).
fn work_parent() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
}

async fn run(args: Args, bin: PathBuf) -> Result<()> {
    let started = Instant::now();
    let scale = if args.smoke {
        Scale {
            docker_runs: 5,
            process_tasks: 100,
            run_limit: Duration::from_secs(50),
        }
    } else {
        Scale {
            docker_runs: 40,
            process_tasks: 500,
            run_limit: Duration::from_secs(600),
        }
    };
    let run_until = started + scale.run_limit;
    let want_docker = args.only.iter().any(|o| o == "docker");
    let want_process = args.only.iter().any(|o| o == "process");

    util::header("shoal-agent-bench", args.smoke, &bin);

    // Docker: answering or not decides phase 1 (and the agent's executors).
    let docker = if want_docker {
        match connect_docker().await {
            Ok((d, version)) => {
                param("dockerd", version);
                Some(d)
            }
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    bail!("dockerd does not answer on {DOCKER_SOCKET} and CI=true: {e:#}");
                }
                println!("\nskipping (1) Docker launch latency: dockerd does not answer on {DOCKER_SOCKET}: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let dir = tempfile::Builder::new()
        .prefix("shoal-agent-bench-")
        .tempdir_in(work_parent())
        .context("creating the work dir")?;
    param("work dir", dir.path().display());
    let sync = fdatasync_median(dir.path())?;
    param("fdatasync on the work dir's disk (median of 20)", ms(sync));

    param("agent --process-isolation", &args.process_isolation);
    let mut cell = Cell::start(dir.path(), docker.is_some(), &args.process_isolation).await?;
    param("cell started in", ms(started.elapsed()));

    let result = async {
        if let Some(d) = &docker {
            docker_phase(&mut cell, d, scale.docker_runs, run_until).await?;
        }
        if want_process {
            let n = args.process_tasks.unwrap_or(scale.process_tasks).max(1);
            process_phase(&mut cell, n, args.claim_size.max(1), run_until).await?;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Some(d) = &docker {
        cleanup_docker(d, &cell).await;
    }
    if result.is_err() {
        let log = cell.agent.log();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        eprintln!("the agent's log (last 30 lines):\n{}", tail.join("\n"));
    }
    drop(cell);
    if args.keep_work_dir {
        let kept = dir.keep();
        param("work dir kept", kept.display());
    }
    println!();
    param("total time", ms(started.elapsed()));
    result
}

async fn connect_docker() -> Result<(Docker, String)> {
    let probe = async {
        let d = Docker::connect_with_unix(DOCKER_SOCKET, 30, bollard::API_DEFAULT_VERSION)?
            .negotiate_version()
            .await?;
        let v = d.version().await?;
        d.inspect_image(IMAGE)
            .await
            .with_context(|| format!("image {IMAGE} (build it with scripts/busybox-image)"))?;
        let info = d.info().await?;
        let driver = info.driver.unwrap_or_default();
        Ok::<_, anyhow::Error>((
            d,
            format!(
                "{} (API {}, storage driver {driver})",
                v.version.unwrap_or_default(),
                v.api_version.unwrap_or_default()
            ),
        ))
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(r) => r,
        Err(_) => bail!("no answer within 5 s"),
    }
}

/// A master and one agent on loopback, with a watch on the master.
struct Cell {
    master: MasterProc,
    agent: AgentProc,
    client: Client,
    agent_id: String,
    /// Names containers and tasks of this run apart from older ones.
    prefix: String,
    watch: Watcher,
}

impl Cell {
    async fn start(dir: &Path, docker: bool, process_isolation: &str) -> Result<Cell> {
        let master = MasterProc::start(
            &dir.join("master"),
            &[
                "--agent-heartbeat-interval",
                "200ms",
                // As in the tests: an agent loop kept busy by a large launch shows up as a
                // disconnect (counted at the end of phase 2).
                "--agent-ping-timeout",
                "2s",
                "--agent-unreachable-timeout",
                "60s",
                "--kill-grace",
                "200ms",
            ],
        );
        let client = master.client();
        let prefix = format!(
            "ab{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
                & 0xffffff
        );
        let hostname = format!("{prefix}-agent");
        let agent = AgentProc::start(
            &master.addr,
            &dir.join("agent"),
            &[
                "--hostname",
                &hostname,
                "--containerizers",
                if docker { "docker,process" } else { "process" },
                "--heartbeat-interval",
                "200ms",
                "--status-retry",
                "200ms",
                "--reregister-backoff-max",
                "200ms",
                "--kill-grace",
                "200ms",
                "--process-isolation",
                process_isolation,
                "--resources",
                AGENT_RES,
            ],
        );
        let until = Instant::now() + Duration::from_secs(20);
        let agent_id = loop {
            if let Ok(st) = client.state().await {
                if let Some(a) = st
                    .agents
                    .iter()
                    .find(|a| a.hostname == hostname && a.state == AgentState::Active)
                {
                    break a.id.as_str().to_string();
                }
            }
            if Instant::now() > until {
                bail!(
                    "the agent did not become active within 20 s; its log:\n{}",
                    agent.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let watch = Watcher::start(&client).await?;
        Ok(Cell {
            master,
            agent,
            client,
            agent_id,
            prefix,
            watch,
        })
    }

    async fn claim(&self, claim_id: &str, tasks: Vec<serde_json::Value>) -> Result<()> {
        let claim = ClaimRequest {
            claim_id: claim_id.to_string(),
            role: "*".into(),
            owner: "shoal-agent-bench".into(),
            snapshot_version: self.watch.version(),
            mode: CommitMode::AllOrNothing,
            check: ConflictCheck::Fine,
            priority: 0,
            evictions: Vec::new(),
            placements: tasks
                .into_iter()
                .map(|t| PlacementRequest::new(self.agent_id.clone(), &t))
                .collect(),
        };
        let answer = self.client.claim(&claim).await?;
        anyhow::ensure!(
            answer.outcome.committed_version.is_some(),
            "claim {claim_id} was not committed: first refused placement {:?}",
            answer.outcome.placements.iter().find(|p| !p.committed)
        );
        Ok(())
    }
}

/// Task states as the watch stream delivers them, with the instant each line arrived.
struct Watcher {
    rx: mpsc::UnboundedReceiver<(String, TaskState, Instant)>,
    version: Arc<AtomicU64>,
    seen: HashMap<String, Vec<(TaskState, Instant)>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Watcher {
    async fn start(client: &Client) -> Result<Watcher> {
        let current = client.state().await?.version;
        let stream = client.watch(current + 1).await?;
        let version = Arc::new(AtomicU64::new(current));
        let (tx, rx) = mpsc::unbounded_channel();
        let v = version.clone();
        let handle = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(entry)) = stream.next().await {
                let at = Instant::now();
                for ev in entry.events {
                    match ev {
                        Event::ClaimCommitted { tasks, .. } => {
                            for t in tasks {
                                let _ = tx.send((t.id.as_str().to_string(), t.state, at));
                            }
                        }
                        Event::TaskStatusChanged { task_id, state, .. } => {
                            let _ = tx.send((task_id.as_str().to_string(), state, at));
                        }
                        _ => {}
                    }
                }
                v.store(entry.version, Ordering::Release);
            }
        });
        Ok(Watcher {
            rx,
            version,
            seen: HashMap::new(),
            handle,
        })
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// When the task was first seen in a state matching `pred`.
    fn first(&self, task: &str, pred: impl Fn(TaskState) -> bool) -> Option<(TaskState, Instant)> {
        self.seen
            .get(task)
            .and_then(|h| h.iter().find(|(s, _)| pred(*s)).copied())
    }

    /// Takes what the stream delivered until `done` holds; fails at `until`.
    async fn wait(
        &mut self,
        what: &str,
        until: Instant,
        done: impl Fn(&Watcher) -> bool,
    ) -> Result<()> {
        loop {
            if done(self) {
                return Ok(());
            }
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some((t, s, at))) => {
                    self.seen.entry(t).or_default().push((s, at));
                    while let Ok((t, s, at)) = self.rx.try_recv() {
                        self.seen.entry(t).or_default().push((s, at));
                    }
                }
                Ok(None) => bail!("the watch stream ended while waiting for {what}"),
                Err(_) => bail!("timed out waiting for {what}"),
            }
        }
    }
}

fn docker_task(id: &str) -> Result<serde_json::Value> {
    let mut t = command_task(id, id, &ResourceSet::parse(DOCKER_TASK_RES)?, DOCKER_CMD);
    t["container"] = json!({"type": "DOCKER", "docker": {"image": IMAGE, "network": "BRIDGE"}});
    Ok(t)
}

/// The container the Docker executor creates for [`docker_task`], minus Shoal's labels.
fn baseline_body() -> ContainerCreateBody {
    let mem = 32i64 * 1024 * 1024;
    ContainerCreateBody {
        image: Some(IMAGE.into()),
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![DOCKER_CMD.into()]),
        labels: Some(HashMap::from([(
            "shoal-agent-bench".to_string(),
            std::process::id().to_string(),
        )])),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(HostConfig {
            network_mode: Some("bridge".into()),
            memory: Some(mem),
            memory_swap: Some(mem),
            nano_cpus: Some(100_000_000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct ShoalRun {
    id: String,
    /// Wall clock at the POST, to place the agent's log lines.
    wall0: SystemTime,
    total: Duration,
    answered: Duration,
    starting: Option<Duration>,
    kill: Duration,
}

async fn shoal_docker_run(cell: &mut Cell, id: &str, run_until: Instant) -> Result<ShoalRun> {
    let task = docker_task(id)?;
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    cell.claim(&format!("{id}-claim"), vec![task]).await?;
    let answered = t0.elapsed();
    let until = (t0 + Duration::from_secs(30)).min(run_until);
    let wanted = |s: TaskState| s == TaskState::Running || s.is_terminal();
    cell.watch
        .wait(&format!("{id} to be TASK_RUNNING"), until, |w| {
            w.first(id, wanted).is_some()
        })
        .await?;
    let (state, at) = cell.watch.first(id, wanted).expect("waited for it");
    if state != TaskState::Running {
        let t = cell.client.task(id).await?;
        bail!(
            "{id} ended as {} before running: {:?}",
            state.mesos_name(),
            t.status
        );
    }
    let total = at - t0;
    let starting = cell
        .watch
        .first(id, |s| s == TaskState::Starting)
        .map(|(_, s)| s - t0);

    let k0 = Instant::now();
    cell.client.kill(id).await?;
    let until = (k0 + Duration::from_secs(15)).min(run_until);
    cell.watch
        .wait(&format!("{id} to end after the kill"), until, |w| {
            w.first(id, |s| s.is_terminal()).is_some()
        })
        .await?;
    let (_, ended) = cell
        .watch
        .first(id, |s| s.is_terminal())
        .expect("waited for it");
    Ok(ShoalRun {
        id: id.to_string(),
        wall0,
        total,
        answered,
        starting,
        kill: ended - k0,
    })
}

struct BaselineRun {
    started: Duration,
    running: Duration,
}

async fn baseline_docker_run(
    docker: &Docker,
    name: &str,
    run_until: Instant,
) -> Result<BaselineRun> {
    let body = baseline_body();
    let opts = CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let t0 = Instant::now();
    let created = docker
        .create_container(Some(opts), body)
        .await
        .context("docker create")?;
    let res = async {
        docker
            .start_container(&created.id, None)
            .await
            .context("docker start")?;
        let started = t0.elapsed();
        let until = (Instant::now() + Duration::from_secs(10)).min(run_until);
        loop {
            let i = docker
                .inspect_container(&created.id, None)
                .await
                .context("docker inspect")?;
            if i.state.as_ref().and_then(|s| s.running) == Some(true) {
                break;
            }
            if Instant::now() > until {
                bail!(
                    "container {name} not running 10 s after its start: {:?}",
                    i.state
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(BaselineRun {
            started,
            running: t0.elapsed(),
        })
    }
    .await;
    // Stopped like Shoal's (killed, then waited for), and removed at the end like Shoal's, so
    // that Docker's teardown work weighs the same on the runs that follow either.
    docker
        .kill_container(&created.id, None)
        .await
        .context("docker kill")?;
    let until = (Instant::now() + Duration::from_secs(10)).min(run_until);
    loop {
        let i = docker
            .inspect_container(&created.id, None)
            .await
            .context("docker inspect")?;
        if i.state.as_ref().and_then(|s| s.running) != Some(true) || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    res
}

async fn docker_phase(
    cell: &mut Cell,
    docker: &Docker,
    runs: usize,
    run_until: Instant,
) -> Result<()> {
    title(&format!("(1) Docker launch latency: {runs} interleaved runs (+1 warm-up each), {DOCKER_CMD:?} on {IMAGE}"));
    param(
        "task resources (baseline: the same limits)",
        DOCKER_TASK_RES,
    );
    let mut shoal = Vec::new();
    let mut base = Vec::new();
    for i in 0..=runs {
        let id = format!("{}-d{i}", cell.prefix);
        let name = format!("shoal-agent-bench-{}-{i}", cell.prefix);
        // Alternate which goes first, so neither always runs right after a container removal.
        let (s, b) = if i % 2 == 0 {
            let s = shoal_docker_run(cell, &id, run_until).await?;
            tokio::time::sleep(SETTLE).await;
            (s, baseline_docker_run(docker, &name, run_until).await?)
        } else {
            let b = baseline_docker_run(docker, &name, run_until).await?;
            tokio::time::sleep(SETTLE).await;
            (shoal_docker_run(cell, &id, run_until).await?, b)
        };
        if i > 0 {
            shoal.push(s);
            base.push(b);
        }
        tokio::time::sleep(SETTLE).await;
    }
    // The agent's own create+start of each run's container, from its log.
    let log = agent_log_lines(&cell.agent.log(), "docker task running");
    let mut agent_docker = Vec::new();
    let mut added = Vec::new();
    for r in &shoal {
        let us = log
            .get(&r.id)
            .and_then(|(_, line)| log_field(line, "docker_us"))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros);
        if let Some(d) = us {
            agent_docker.push(d);
            added.push(r.total.saturating_sub(d));
        }
    }
    anyhow::ensure!(
        added.len() == shoal.len(),
        "the agent logged its Docker create+start time for {} of {} runs",
        added.len(),
        shoal.len()
    );

    let total: Vec<Duration> = shoal.iter().map(|r| r.total).collect();
    let b_start: Vec<Duration> = base.iter().map(|r| r.started).collect();
    let b_run: Vec<Duration> = base.iter().map(|r| r.running).collect();
    let paired: Vec<f64> = shoal
        .iter()
        .zip(&base)
        .map(|(s, b)| s.total.as_secs_f64() - b.started.as_secs_f64())
        .collect();
    figure(
        "Shoal: POST claim -> TASK_RUNNING in watch",
        dist(&total),
        "",
    );
    figure(
        "baseline: bollard create+start returned",
        dist(&b_start),
        "",
    );
    figure("baseline: ... + inspect says Running", dist(&b_run), "");
    figure(
        "agent: its own create+start (same runs as Shoal)",
        dist(&agent_docker),
        "(agent log, docker_us)",
    );
    let verdict = if med(&added).as_secs_f64() * 1e3 <= TARGET_ADDED_MS {
        "meets"
    } else {
        "misses"
    };
    figure(
        "added by Shoal, per run: total - agent's create+start",
        dist(&added),
        &format!("target median <= {TARGET_ADDED_MS} ms: {verdict}"),
    );
    let diff = med(&total).as_secs_f64() - med(&b_start).as_secs_f64();
    figure(
        "for comparison: median - median baseline",
        format!("{:.1} ms", diff * 1e3),
        "(dockerd's run-to-run variance dominates)",
    );
    figure(
        "for comparison: median of paired differences",
        format!("{:.1} ms", median_f64(&paired) * 1e3),
        "",
    );
    println!("  where Shoal's time goes (medians):");
    figure(
        "  POST claim -> answer (committed, fsynced)",
        ms(med(&shoal.iter().map(|r| r.answered).collect::<Vec<_>>())),
        "",
    );
    let starting: Vec<Duration> = shoal.iter().filter_map(|r| r.starting).collect();
    if !starting.is_empty() {
        figure(
            "  POST claim -> TASK_STARTING in watch",
            ms(med(&starting)),
            "",
        );
        let st_run: Vec<Duration> = shoal
            .iter()
            .filter_map(|r| r.starting.map(|s| r.total.saturating_sub(s)))
            .collect();
        figure(
            "  TASK_STARTING -> TASK_RUNNING in watch",
            ms(med(&st_run)),
            "",
        );
    }
    let mut to_agent = Vec::new();
    let mut report = Vec::new();
    for r in &shoal {
        if let Some(at) = log
            .get(&r.id)
            .and_then(|(t, _)| t.duration_since(r.wall0).ok())
        {
            to_agent.push(at);
            report.push(r.total.saturating_sub(at));
        }
    }
    if !to_agent.is_empty() {
        figure(
            "  POST claim -> agent log: container started",
            ms(med(&to_agent)),
            "(wall clock, log timestamps)",
        );
        figure(
            "  container started -> TASK_RUNNING in watch",
            ms(med(&report)),
            "(WS, master commit and fsync, watch)",
        );
    }
    let before: Vec<Duration> = to_agent
        .iter()
        .zip(&agent_docker)
        .map(|(at, d)| at.saturating_sub(*d))
        .collect();
    if before.len() == to_agent.len() && !before.is_empty() {
        figure(
            "  POST claim -> agent calls docker create",
            ms(med(&before)),
            "(log time - docker_us)",
        );
    }
    figure(
        "  kill -> TASK_KILLED (grace 200 ms)",
        ms(med(&shoal.iter().map(|r| r.kill).collect::<Vec<_>>())),
        "",
    );
    Ok(())
}

async fn process_phase(
    cell: &mut Cell,
    n: usize,
    claim_size: usize,
    run_until: Instant,
) -> Result<()> {
    title(&format!("(2) process tasks started per second by one agent: {n} `true` tasks, claims of {claim_size}"));
    param("task resources", PROCESS_TASK_RES);
    let res = ResourceSet::parse(PROCESS_TASK_RES)?;
    let ids: Vec<String> = (0..n).map(|i| format!("{}-p{i}", cell.prefix)).collect();
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    for (k, chunk) in ids.chunks(claim_size).enumerate() {
        let tasks = chunk
            .iter()
            .map(|id| command_task(id, id, &res, "true"))
            .collect();
        cell.claim(&format!("{}-pclaim{k}", cell.prefix), tasks)
            .await?;
    }
    let answered = t0.elapsed();
    let until = (t0 + Duration::from_secs(if n <= 100 { 30 } else { 120 })).min(run_until);
    let up = |s: TaskState| s == TaskState::Running || s.is_terminal();
    let ids_ref = &ids;
    cell.watch
        .wait(
            &format!("{n} tasks to be TASK_RUNNING or ended"),
            until,
            |w| ids_ref.iter().all(|id| w.first(id, up).is_some()),
        )
        .await?;
    let running_at = ids
        .iter()
        .filter_map(|id| cell.watch.first(id, up))
        .map(|(_, at)| at)
        .max()
        .expect("n > 0");
    let start_all = ids
        .iter()
        .filter_map(|id| cell.watch.first(id, |s| s == TaskState::Starting))
        .map(|(_, at)| at)
        .max();
    let shoal_time = running_at - t0;
    // Then until all ended (information: the journal and the master also carry FINISHED).
    let ended_wait = cell
        .watch
        .wait(
            &format!("{n} tasks to end"),
            (Instant::now() + Duration::from_secs(60)).min(run_until),
            |w| {
                ids_ref
                    .iter()
                    .all(|id| w.first(id, |s| s.is_terminal()).is_some())
            },
        )
        .await;
    let saw_running = ids
        .iter()
        .filter(|id| cell.watch.first(id, |s| s == TaskState::Running).is_some())
        .count();
    let finished = ids
        .iter()
        .filter(|id| cell.watch.first(id, |s| s == TaskState::Finished).is_some())
        .count();

    // Baseline: spawn + wait, one after the other, from this process.
    let b0 = Instant::now();
    for _ in 0..n {
        let st = std::process::Command::new("sh")
            .args(["-c", "true"])
            .status()
            .context("sh -c true")?;
        anyhow::ensure!(st.success(), "sh -c true: {st}");
        anyhow::ensure!(
            Instant::now() < run_until,
            "the run's time limit passed in the baseline"
        );
    }
    let base_time = b0.elapsed();

    let shoal_rate = n as f64 / shoal_time.as_secs_f64();
    let verdict = if shoal_rate >= TARGET_TASKS_PER_S {
        "meets"
    } else {
        "misses"
    };
    figure(
        "Shoal: first POST -> all TASK_RUNNING/ended",
        rate(shoal_rate),
        &format!(
            "{} for {n}; target >= {TARGET_TASKS_PER_S}/s: {verdict}",
            ms(shoal_time)
        ),
    );
    figure(
        "baseline: spawn+wait `sh -c true`, sequential",
        rate(n as f64 / base_time.as_secs_f64()),
        &format!("{} for {n}", ms(base_time)),
    );
    println!("  where Shoal's time goes:");
    figure("  all claims answered", ms(answered), "");
    let first_running = ids
        .iter()
        .filter_map(|id| cell.watch.first(id, |s| s == TaskState::Running))
        .map(|(_, at)| at)
        .min();
    if let Some(f) = first_running {
        figure("  first TASK_RUNNING in watch", ms(f - t0), "");
    }
    if let Some(s) = start_all {
        figure("  all TASK_STARTING in watch", ms(s - t0), "");
    }
    let log = agent_log_lines(&cell.agent.log(), "process task running");
    let spawned: Vec<Duration> = ids
        .iter()
        .filter_map(|id| log.get(id))
        .filter_map(|(t, _)| t.duration_since(wall0).ok())
        .collect();
    if spawned.len() == n {
        figure(
            "  agent log: all processes started",
            ms(*spawned.iter().max().expect("n > 0")),
            "(wall clock, log timestamps)",
        );
    }
    figure("  all TASK_RUNNING/ended in watch", ms(shoal_time), "");
    match ended_wait {
        Ok(()) => {
            let end = ids
                .iter()
                .filter_map(|id| cell.watch.first(id, |s| s.is_terminal()))
                .map(|(_, at)| at)
                .max()
                .expect("n > 0");
            figure("  all ended in watch", ms(end - t0), "");
        }
        Err(e) => figure("  all ended in watch", "n/a", &format!("{e:#}")),
    }
    figure(
        "  master: agent silent past the ping timeout",
        cell.master
            .log()
            .matches("agent silent past the ping timeout")
            .count(),
        "(times; ping timeout 2 s, heartbeats every 200 ms)",
    );
    figure(
        "  TASK_RUNNING seen / TASK_FINISHED",
        format!("{saw_running} / {finished}"),
        &format!("of {n}"),
    );
    Ok(())
}

/// Removes the baseline's containers and the agent's containers of this run.
async fn cleanup_docker(docker: &Docker, cell: &Cell) {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("shoal-agent-bench={}", std::process::id())],
    )]);
    let mut ids = Vec::new();
    if let Ok(list) = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    {
        ids.extend(list.into_iter().filter_map(|c| c.id));
    }
    let filters = HashMap::from([("label".to_string(), vec!["shoal.managed=true".to_string()])]);
    let root = cell.agent.work_dir.to_string_lossy().to_string();
    if let Ok(list) = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    {
        ids.extend(
            list.into_iter()
                .filter(|c| {
                    c.labels
                        .as_ref()
                        .and_then(|l| l.get("shoal.sandbox"))
                        .is_some_and(|s| s.starts_with(&root))
                })
                .filter_map(|c| c.id),
        );
    }
    for id in ids {
        let rm = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            docker.remove_container(&id, Some(rm)),
        )
        .await;
    }
}

fn fdatasync_median(dir: &Path) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        f.write_all(&[b'x'; 100])?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(med(&times))
}

// ---- the agent's log ----

/// For each log line with `message`, by its `task_id` field: its timestamp (the agent logs
/// RFC 3339 UTC timestamps, possibly with ANSI colours) and the line without colours.
fn agent_log_lines(log: &str, message: &str) -> HashMap<String, (SystemTime, String)> {
    let mut out = HashMap::new();
    for line in log.lines().filter(|l| l.contains(message)) {
        let line = strip_ansi(line);
        let Some(ts) = line.split_whitespace().next().and_then(parse_rfc3339) else {
            continue;
        };
        let Some(id) = log_field(&line, "task_id") else {
            continue;
        };
        out.entry(id.to_string()).or_insert((ts, line.clone()));
    }
    out
}

/// The value of ` name=value` in a log line (quotes trimmed).
fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.split_once(&format!(" {name}="))?.1;
    Some(rest.split_whitespace().next()?.trim_matches('"'))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2025-11-25T12:10:00.123456Z` → a `SystemTime` (UTC only).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

// ---- output and statistics ----

fn title(text: &str) {
    println!();
    println!("{text}");
    println!("{}", "-".repeat(text.chars().count()));
}

fn param(name: &str, value: impl std::fmt::Display) {
    println!("  {name:<50} {value}");
}

fn figure(name: &str, value: impl std::fmt::Display, note: &str) {
    let value = value.to_string();
    if note.is_empty() {
        println!("  {name:<50} {value:>24}");
    } else {
        println!("  {name:<50} {value:>24}  {note}");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn rate(per_s: f64) -> String {
    format!("{per_s:.0}/s")
}

/// Nearest-rank percentile (`p` in 0..=1) of unsorted durations.
fn pctl(xs: &[Duration], p: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn med(xs: &[Duration]) -> Duration {
    pctl(xs, 0.5)
}

fn median_f64(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len().div_ceil(2) - 1]
}

/// `median X ms, p90 Y ms`.
fn dist(xs: &[Duration]) -> String {
    format!("{} (p90 {})", ms(med(xs)), ms(pctl(xs, 0.9)))
}

/// mimalloc: the commit path allocates many small, short-lived records; glibc's allocator
/// spent a third of the commit loop consolidating free chunks (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
