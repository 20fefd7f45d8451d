//! The phases over HTTP against the real `shoal master` binary: (b) the C1M shape, with a
//! SIGKILL and a restart at the end, and the HTTP half of (d).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;
use shoal_client::Client;
use shoal_core::{Agent, AgentState, CommitMode, ConflictCheck, RejectReason, ResourceSet};

use crate::inproc::{reason_name, registration};
use crate::util::*;

/// Every master process started, so the watchdog can kill them before it exits.
pub static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

pub fn kill_all_children() {
    for pid in CHILDREN.lock().clone() {
        // SAFETY: plain kill(2) on a pid this process spawned.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// A `shoal master` process listening on 127.0.0.1 with a port it picked.
pub struct MasterProc {
    child: Option<Child>,
    pub addr: String,
    pub dir: PathBuf,
    bin: PathBuf,
    extra: Vec<String>,
}

impl MasterProc {
    /// Starts a master on `dir` and waits (at most `limit`) until it answers /health.
    /// Returns it and the time from spawn to ready (which includes loading the store).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        extra: &[String],
        limit: Duration,
    ) -> Result<(MasterProc, Duration)> {
        let mut m = MasterProc {
            child: None,
            addr: String::new(),
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            extra: extra.to_vec(),
        };
        let took = m.spawn(limit).await?;
        Ok((m, took))
    }

    async fn spawn(&mut self, limit: Duration) -> Result<Duration> {
        std::fs::create_dir_all(&self.dir)?;
        let addr_file = self.dir.join("master.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("master.log"))?;
        let started = Instant::now();
        let child = Command::new(&self.bin)
            .args(["master", "--listen", "127.0.0.1:0", "--work-dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .env("SHOAL_LOG", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        CHILDREN.lock().push(child.id());
        self.child = Some(child);
        let dl = Deadline::after(limit);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_string();
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the master exited ({status}) before it listened; its log:\n{}",
                    self.log_tail()
                );
            }
            dl.check("waiting for master.addr")
                .map_err(|e| anyhow!("{e}; master log:\n{}", self.log_tail()))?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.addr = format!("http://{addr}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.addr)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            dl.check("waiting for /health")?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(started.elapsed())
    }

    /// SIGKILL: nothing of the master's shutdown runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            CHILDREN.lock().retain(|p| *p != c.id());
        }
    }

    /// SIGKILL, then a new master on the same work dir. Returns the time to ready.
    pub async fn restart(&mut self, limit: Duration) -> Result<Duration> {
        self.kill9();
        self.spawn(limit).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Peak resident memory of the master (VmHWM), from /proc.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Registers `n` agents over HTTP, `concurrency` at a time; returns how long it took.
async fn register_http(
    client: &Client,
    n: usize,
    resources: &ResourceSet,
    concurrency: usize,
    dl: Deadline,
) -> Result<Duration> {
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let c = client.clone();
            let reg = registration(&format!("bench-agent-{i}"), resources);
            async move {
                within(
                    "registering an agent",
                    Duration::from_secs(30),
                    c.register_agent(&reg),
                )
                .await?
                .map(|_| ())
                .map_err(|e| anyhow!("registering an agent: {e}"))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    dl.check("registering agents")?;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(started.elapsed())
}

async fn stats(http: &reqwest::Client, addr: &str) -> Result<Json> {
    let r = within(
        "GET /stats",
        Duration::from_secs(30),
        http.get(format!("{addr}/api/shoal/v1/stats")).send(),
    )
    .await??;
    if !r.status().is_success() {
        bail!("GET /stats: {}", r.status());
    }
    Ok(r.json().await?)
}

fn num(v: &Json, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// (b) the C1M shape

pub struct ScaleB {
    pub agents: usize,
    pub jobs: usize,
    pub tasks_per_job: usize,
    pub clients: usize,
    pub claim: usize,
    /// Claims each client keeps in flight (it decides the next while earlier ones commit).
    pub inflight: usize,
}

/// Each agent fits 120 tasks; 1,000,000 tasks on 10,000 agents fill them to ~83 %.
const B_AGENT_RES: &str = "cpus:12;mem:12000";
const B_TASK_RES: &str = "cpus:0.1;mem:100";
/// Nomad's C1M (2016): 1,000,000 containers scheduled in under 5 minutes on a real
/// cluster, ~3,750 placements/s.
const NOMAD_RATE: f64 = 3_750.0;

#[derive(Default)]
struct ClientOut {
    claims: u64,
    attempted: u64,
    committed: u64,
    refreshes: u64,
    reasons: BTreeMap<String, u64>,
    /// Answers whose current_version was below the version the claim committed at.
    stale_answers: u64,
    /// A few committed task ids, to read back after the restart.
    sample: Vec<String>,
}

/// One agent in a client's local view: its id and how many more tasks fit, as far as the
/// client knows.
struct Slot {
    id: String,
    free: i64,
}

async fn local_view(client: &Client, cpu: i64, mem: i64) -> Result<(Vec<Slot>, u64)> {
    let mut state = within(
        "GET /state?tasks=false",
        Duration::from_secs(60),
        client.state_json(false),
    )
    .await?
    .map_err(|e| anyhow!("GET /state: {e}"))?;
    let version = state["version"].as_u64().unwrap_or(0);
    let agents: Vec<Agent> =
        serde_json::from_value(state["agents"].take()).context("decoding the agents")?;
    let view = agents
        .iter()
        .map(|a| Slot {
            id: a.id.to_string(),
            free: crate::inproc::free_slots(a, cpu, mem),
        })
        .collect();
    Ok((view, version))
}

/// A claim as `POST /claims` reads it, with each TaskInfo written from borrowed parts
/// (no `serde_json::Value` per task): the clients must not be what the benchmark measures.
#[derive(Serialize)]
struct BenchClaim<'a> {
    claim_id: String,
    role: &'a str,
    owner: String,
    snapshot_version: u64,
    mode: CommitMode,
    check: ConflictCheck,
    placements: Vec<BenchPlacement<'a>>,
}

#[derive(Serialize)]
struct BenchPlacement<'a> {
    agent_id: &'a str,
    task_info: BenchTaskInfo<'a>,
}

/// A Mesos `TaskInfo` running `true`; its fields in sorted order, so that its text is
/// canonical and the master keeps it as sent.
#[derive(Serialize)]
struct BenchTaskInfo<'a> {
    agent_id: IdRef<'a>,
    command: &'a RawValue,
    name: &'a str,
    resources: &'a RawValue,
    task_id: IdRef<'a>,
}

#[derive(Serialize)]
struct IdRef<'a> {
    value: &'a str,
}

/// Work of one client not yet placed: tasks of one job.
struct Batch {
    job: usize,
    tasks: Vec<usize>,
}

/// One scheduler client: takes jobs from the shared counter and places each job's tasks in
/// claims of `claim`, first fit on its local view from its own offset, with up to
/// `scale.inflight` claims in flight (it decides the next claim on its view while earlier
/// ones commit, as an Omega scheduler does). The view starts from a state read and is kept
/// up from the claim answers: a placement refused on an agent marks that agent full (the
/// client does not know by how much it is off) and the task is tried again; the view is read
/// again only when nothing fits in it and no claim is in flight.
#[allow(clippy::too_many_arguments)]
async fn client_b(
    addr: String,
    s: usize,
    scale: Arc<ScaleB>,
    next_job: Arc<AtomicUsize>,
    run: String,
    task: ResourceSet,
    dl: Deadline,
    placed: Arc<AtomicU64>,
) -> Result<ClientOut> {
    let client = Client::new(&addr).map_err(|e| anyhow!("{e}"))?;
    let (cpu, mem) = (task.scalar("cpus").0, task.scalar("mem").0);
    // What every TaskInfo of the run shares, written once.
    let resources = serde_json::value::to_raw_value(&shoal_client::resources_json(&task))?;
    let command =
        serde_json::value::to_raw_value(&serde_json::json!({"shell": true, "value": "true"}))?;
    let (mut view, mut version) = local_view(&client, cpu, mem).await?;
    if view.is_empty() {
        bail!("no agents");
    }
    let start = s * view.len() / scale.clients;
    let mut cursor = start;
    let mut out = ClientOut::default();
    // Tasks to place, oldest first: refused tasks go back to the front.
    let mut work: std::collections::VecDeque<Batch> = Default::default();
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut claim_no = 0u64;
    let mut jobs_left = true;
    loop {
        dl.check("scheduler client")?;
        // Decide claims while there is room in flight and work to do.
        while inflight.len() < scale.inflight.max(1) {
            if work.is_empty() && jobs_left {
                let job = next_job.fetch_add(1, Ordering::Relaxed);
                if job >= scale.jobs {
                    jobs_left = false;
                } else {
                    work.push_back(Batch {
                        job,
                        tasks: (0..scale.tasks_per_job).rev().collect(),
                    });
                }
            }
            let Some(batch) = work.front_mut() else {
                break;
            };
            let job = batch.job;
            // First fit from the cursor (the first agent that had room last time).
            let want = batch.tasks.len().min(scale.claim);
            let mut chosen: Vec<(usize, usize)> = Vec::with_capacity(want);
            let mut scanned = 0;
            let mut i = cursor;
            let mut first_with_room = None;
            while chosen.len() < want && scanned < view.len() {
                if view[i].free > 0 {
                    first_with_room.get_or_insert(i);
                    let fit = view[i].free.min((want - chosen.len()) as i64);
                    view[i].free -= fit;
                    for _ in 0..fit {
                        chosen.push((i, batch.tasks.pop().expect("pending task")));
                    }
                }
                i = (i + 1) % view.len();
                scanned += 1;
            }
            if batch.tasks.is_empty() {
                work.pop_front();
            }
            if let Some(f) = first_with_room {
                cursor = f;
            }
            if chosen.is_empty() {
                if !inflight.is_empty() {
                    break; // answers may say more about the view
                }
                out.refreshes += 1;
                if out.refreshes > 50 {
                    bail!(
                        "client {s}: nothing fits after {} state reads: the cell is full",
                        out.refreshes - 1
                    );
                }
                (view, version) = local_view(&client, cpu, mem).await?;
                cursor = start;
                continue;
            }
            claim_no += 1;
            let ids: Vec<String> = chosen
                .iter()
                .map(|&(_, k)| format!("{run}-j{job}-t{k}"))
                .collect();
            let req = BenchClaim {
                claim_id: format!("{run}-j{job}-s{s}-c{claim_no}"),
                role: "*",
                owner: format!("bench-client-{s}"),
                snapshot_version: version,
                mode: CommitMode::Incremental,
                check: ConflictCheck::Fine,
                placements: chosen
                    .iter()
                    .zip(&ids)
                    .map(|(&(i, _), id)| BenchPlacement {
                        agent_id: &view[i].id,
                        task_info: BenchTaskInfo {
                            agent_id: IdRef { value: "" },
                            command: &command,
                            name: id,
                            resources: &resources,
                            task_id: IdRef { value: id },
                        },
                    })
                    .collect(),
            };
            // Written now: the view it borrows from changes while the claim is in flight.
            let req = serde_json::value::to_raw_value(&req)?;
            let client = &client;
            inflight.push(async move {
                let answer = within(
                    "POST /claims",
                    Duration::from_secs(60),
                    client.claim_with(&req),
                )
                .await;
                (job, chosen, answer)
            });
        }
        let Some((job, chosen, answer)) = futures::StreamExt::next(&mut inflight).await else {
            if work.is_empty() && !jobs_left {
                return Ok(out);
            }
            continue;
        };
        let answer = answer?.map_err(|e| anyhow!("POST /claims: {e}"))?;
        out.claims += 1;
        out.attempted += chosen.len() as u64;
        if let Some(v) = answer.outcome.committed_version {
            if answer.current_version < v {
                out.stale_answers += 1;
            }
        }
        version = version.max(answer.current_version);
        if answer.outcome.placements.len() != chosen.len() {
            bail!(
                "the answer has {} placements, the claim {}",
                answer.outcome.placements.len(),
                chosen.len()
            );
        }
        let mut refused = Vec::new();
        for (o, &(i, k)) in answer.outcome.placements.iter().zip(&chosen) {
            if o.committed {
                out.committed += 1;
                if out.sample.len() < 64 && (k % 97 == 0) {
                    out.sample.push(o.task_id.to_string());
                }
            } else {
                *out.reasons.entry(reason_name(&o.rejected)).or_default() += 1;
                if let Some(
                    RejectReason::UnknownAgent
                    | RejectReason::AgentNotActive { .. }
                    | RejectReason::InsufficientResources { .. },
                ) = &o.rejected
                {
                    view[i].free = 0;
                }
                if let Some(RejectReason::DuplicateTaskId) = &o.rejected {
                    bail!("task {} was refused as a duplicate", o.task_id);
                }
                refused.push(k);
            }
        }
        if !refused.is_empty() {
            work.push_front(Batch {
                job,
                tasks: refused,
            });
        }
        placed.fetch_add(answer.outcome.committed_count() as u64, Ordering::Relaxed);
    }
}

pub fn phase_b(
    bin: &Path,
    dir: &Path,
    scale: ScaleB,
    extra: &[String],
    limit: Duration,
) -> Result<()> {
    let total = (scale.jobs * scale.tasks_per_job) as u64;
    title("(b) the C1M shape over HTTP: the real master binary, SIGKILL, restart");
    param(
        "master",
        format!(
            "{} master --listen 127.0.0.1:0 {}",
            bin.display(),
            extra.join(" ")
        ),
    );
    param(
        "agents",
        format!(
            "{} x {B_AGENT_RES} (120 tasks each), registered over HTTP, 64 at a time",
            int(scale.agents as u64)
        ),
    );
    param(
        "jobs",
        format!(
            "{} jobs x {} tasks = {} placements ({B_TASK_RES})",
            int(scale.jobs as u64),
            int(scale.tasks_per_job as u64),
            int(total)
        ),
    );
    param(
        "scheduler clients",
        format!(
            "{}, each its own shoal_client::Client, up to {} claims in flight each",
            scale.clients, scale.inflight
        ),
    );
    param(
        "claims",
        format!(
            "<= {} placements (a job's tasks split), incremental, fine",
            scale.claim
        ),
    );
    param(
        "decision",
        "first fit on a per-client view (one state read, then the claim answers)",
    );
    let rt = runtime()?;
    let r = rt.block_on(async {
        within(
            "phase (b)",
            limit,
            run_b(bin, dir, Arc::new(scale), extra, Deadline::after(limit)),
        )
        .await?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

async fn run_b(
    bin: &Path,
    dir: &Path,
    scale: Arc<ScaleB>,
    extra: &[String],
    dl: Deadline,
) -> Result<()> {
    let total = (scale.jobs * scale.tasks_per_job) as u64;
    let agent = ResourceSet::parse(B_AGENT_RES)?;
    let task = ResourceSet::parse(B_TASK_RES)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let (mut master, boot) = MasterProc::start(bin, dir, extra, Duration::from_secs(30)).await?;
    let client = Client::new(&master.addr).map_err(|e| anyhow!("{e}"))?;
    let reg = register_http(&client, scale.agents, &agent, 64, dl).await?;
    let s0 = stats(&http, &master.addr).await?;
    if num(&s0, "agents") != scale.agents as u64 {
        bail!(
            "the master has {} agents, wanted {}",
            num(&s0, "agents"),
            scale.agents
        );
    }

    let run = format!("b{}", std::process::id());
    let next_job = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let master_cpu0 = master.pid().and_then(cpu_time);
    let own_cpu0 = cpu_time(std::process::id());
    let started = Instant::now();
    let mut handles = Vec::new();
    for s in 0..scale.clients {
        handles.push(tokio::spawn(client_b(
            master.addr.clone(),
            s,
            scale.clone(),
            next_job.clone(),
            run.clone(),
            task.clone(),
            dl,
            placed.clone(),
        )));
    }
    // Progress on long runs, every 10 s.
    let progress = {
        let placed = placed.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let n = placed.load(Ordering::Relaxed);
                eprintln!(
                    "  ... (b) {} of {} placed, {:.0} s",
                    int(n),
                    int(total),
                    t.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut outs = Vec::new();
    let mut first_err = None;
    for h in handles {
        match within("scheduler clients", dl.remaining(), h).await {
            Ok(Ok(Ok(o))) => outs.push(o),
            Ok(Ok(Err(e))) | Err(e) => {
                first_err.get_or_insert(e);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(anyhow!("client task: {e}"));
            }
        }
    }
    progress.abort();
    let elapsed = started.elapsed();
    if let Some(e) = first_err {
        return Err(e.context(format!("master log:\n{}", master.log_tail())));
    }
    let mut t = ClientOut::default();
    for o in outs {
        t.claims += o.claims;
        t.attempted += o.attempted;
        t.committed += o.committed;
        t.refreshes += o.refreshes;
        t.stale_answers += o.stale_answers;
        for (k, v) in o.reasons {
            *t.reasons.entry(k).or_default() += v;
        }
        t.sample.extend(o.sample);
    }
    let master_cpu = master
        .pid()
        .and_then(cpu_time)
        .zip(master_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let own_cpu = cpu_time(std::process::id())
        .zip(own_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    let s1 = stats(&http, &master.addr).await?;
    let rss = master.peak_rss_mib();

    println!();
    figure("master start (empty store)", secs(boot), "spawn -> /health");
    figure(
        "agent registration (HTTP)",
        secs(reg),
        &format!("{} agents", rate(per_s(scale.agents as u64, reg))),
    );
    figure(
        "total time",
        secs(elapsed),
        &format!(
            "target <= 20 s for 1,000,000 -> {}",
            if total >= 1_000_000 {
                met(elapsed.as_secs_f64() <= 20.0)
            } else {
                "n/a at this scale"
            }
        ),
    );
    let r = per_s(t.committed, elapsed);
    figure(
        "placements/s",
        rate(r),
        &format!(
            "Nomad C1M reference ~{} (1M in < 5 min): {:.1}x",
            rate(NOMAD_RATE),
            r / NOMAD_RATE
        ),
    );
    figure(
        "time for 1,000,000 at this rate",
        secs(Duration::from_secs_f64(1e6 / r.max(1e-9))),
        "",
    );
    figure(
        "claims/s",
        rate(per_s(t.claims, elapsed)),
        &format!("{} claims", int(t.claims)),
    );
    let (groups, syncs) = (
        num(&s1, "commit_groups") - num(&s0, "commit_groups"),
        num(&s1, "syncs") - num(&s0, "syncs"),
    );
    figure(
        "commit groups / syncs",
        format!("{} / {}", int(groups), int(syncs)),
        &format!(
            "{:.0} placements per sync",
            t.committed as f64 / syncs.max(1) as f64
        ),
    );
    figure(
        "conflict fraction",
        pct((t.attempted - t.committed) as f64 / t.attempted.max(1) as f64),
        &format!(
            "{} rejected and retried; {} view re-reads",
            int(t.attempted - t.committed),
            t.refreshes
        ),
    );
    for (k, v) in &t.reasons {
        figure(&format!("rejections: {k}"), int(*v), "");
    }
    if t.stale_answers > 0 {
        figure(
            "answers older than their own commit",
            int(t.stale_answers),
            "current_version < committed_version",
        );
    }
    if let (Some(m), Some(o)) = (master_cpu, own_cpu) {
        let w = elapsed.as_secs_f64();
        figure(
            "CPU used while placing",
            format!("{:.1} + {:.1} s", m.as_secs_f64(), o.as_secs_f64()),
            &format!(
                "master + schedulers: {:.2} + {:.2} cores busy of the machine's",
                m.as_secs_f64() / w,
                o.as_secs_f64() / w
            ),
        );
    }
    if let Some(rss) = rss {
        figure("master peak RSS", format!("{rss:.0} MiB"), "");
    }
    if t.committed != total || num(&s1, "tasks") != total {
        bail!(
            "placed {} (the master counts {} tasks), wanted {total}",
            t.committed,
            num(&s1, "tasks")
        );
    }

    // SIGKILL, restart on the same work dir, and read everything back.
    let store_mib = std::fs::metadata(dir.join("shoal.redb"))
        .map(|m| m.len() as f64 / (1 << 20) as f64)
        .unwrap_or(0.0);
    let load = master
        .restart(dl.remaining().min(Duration::from_secs(600)))
        .await?;
    let s2 = stats(&http, &master.addr).await?;
    let tasks = num(&s2, "tasks");
    figure(
        "restart after SIGKILL (spawn -> /health)",
        secs(load),
        &format!("store {store_mib:.0} MiB; loads {} tasks", int(tasks)),
    );
    let client = Client::new(&master.addr).map_err(|e| anyhow!("{e}"))?;
    let mut missing = 0;
    for id in &t.sample {
        match within("GET /tasks/{id}", Duration::from_secs(30), client.task(id)).await? {
            Ok(task) if task.id.as_str() == id => {}
            _ => missing += 1,
        }
    }
    let ok = tasks == t.committed && missing == 0;
    figure(
        "placements readable after restart",
        format!("{} / {}", int(tasks), int(t.committed)),
        &format!(
            "{} sampled tasks read back, {missing} missing -> {}",
            t.sample.len(),
            if ok { "OK" } else { "FAILED" }
        ),
    );
    if !ok {
        bail!("after the restart the master has {tasks} tasks ({missing} of the sample missing), {} were committed", t.committed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// (d) snapshot over HTTP

pub fn phase_d_http(
    bin: &Path,
    dir: &Path,
    agents: usize,
    requests: usize,
    extra: &[String],
    limit: Duration,
) -> Result<()> {
    title("(d) snapshot time over HTTP: GET /api/shoal/v1/state?tasks=false");
    param(
        "agents",
        format!(
            "{} x {}, registered over HTTP",
            int(agents as u64),
            crate::inproc::AGENT_RES
        ),
    );
    param(
        "requests",
        format!("{requests}, one at a time, timed to the last byte of the body"),
    );
    let rt = runtime()?;
    let r = rt.block_on(async {
        within("phase (d) http", limit, async {
            let agent = ResourceSet::parse(crate::inproc::AGENT_RES)?;
            let (master, _) = MasterProc::start(bin, dir, extra, Duration::from_secs(30)).await?;
            let client = Client::new(&master.addr).map_err(|e| anyhow!("{e}"))?;
            register_http(&client, agents, &agent, 64, Deadline::after(limit)).await?;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let url = format!("{}/api/shoal/v1/state?tasks=false", master.addr);
            let mut times = Vec::new();
            let mut bytes = 0;
            for _ in 0..requests {
                let t = Instant::now();
                let r = http.get(&url).send().await?;
                if !r.status().is_success() {
                    bail!("GET state: {}", r.status());
                }
                let body = r.bytes().await?;
                times.push(t.elapsed().as_secs_f64());
                bytes = body.len();
                let v: Json = serde_json::from_slice(&body)?;
                let n = v["agents"].as_array().map(|a| a.len()).unwrap_or(0);
                if n != agents {
                    bail!("the state lists {n} agents, wanted {agents}");
                }
                if v["agents"][0]["state"] != serde_json::json!(AgentState::Active) {
                    bail!("unexpected agent state in {}", v["agents"][0]);
                }
            }
            let med = median(&mut times);
            println!();
            figure(
                "median GET state?tasks=false",
                ms(Duration::from_secs_f64(med)),
                &format!("{:.1} MiB body", bytes as f64 / (1 << 20) as f64),
            );
            anyhow::Ok(())
        })
        .await?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}
