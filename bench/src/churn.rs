//! Phase (e): churn. A steady number of live tasks, each claimed, set RUNNING and then
//! FINISHED, for many lifecycles; at every tenth the master's memory (this process's RSS:
//! the master runs in process) and its store's size on disk, which must stay flat.
//!
//! In process, as phase (a): `MasterCore` over a real redb store in the work dir, agents
//! registered through the committer, no agent links.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use shoal_core::{
    AgentId, Claim, ClaimId, CommitMode, ConflictCheck, ResourceSet, StatusInfo, TaskId, TaskState,
};
use shoal_master::agents::AgentTimers;
use shoal_master::committer::CommitConfig;
use shoal_master::{open_store, MasterCore};
use shoal_sched::{Command, Reply};

use crate::inproc::{free_slots, placement, register_agents};
use crate::util::*;

/// An agent of this phase: room for 1,024 tasks of [`TASK_RES`].
const AGENT_RES: &str = "cpus:1024;mem:1048576";
const TASK_RES: &str = "cpus:1;mem:1024";
/// The claims' owner.
const OWNER: &str = "churn";
/// Log entries the master keeps (`--log-retain`): small, so the change log is bounded too.
const LOG_RETAIN: u64 = 10_000;
/// The allowance on top of 5 % in `--smoke` (a debug build's and the allocator's noise is
/// large next to a small cell).
const SMOKE_RSS_SLACK: u64 = 16 << 20;
const SMOKE_STORE_SLACK: u64 = 1 << 20;

pub struct ScaleE {
    pub agents: usize,
    /// Live (claimed, not yet finished) tasks kept at any time.
    pub live: usize,
    /// Task lifecycles (claim → RUNNING → FINISHED) in all.
    pub lifecycles: u64,
    /// Concurrent workers; each keeps `live / workers` tasks live.
    pub workers: usize,
    /// Placements per claim.
    pub claim: usize,
    /// `--smoke`: growth past the tolerance fails the phase (for CI).
    pub smoke: bool,
    /// The phase's time limit (registration included); past it the phase fails.
    pub limit: Duration,
}

/// The master's commit configuration for this phase. Retention (garbage collection of
/// terminal tasks and claims) is set here, and nowhere else.
// The struct update stays for the fields `CommitConfig` is gaining (retention).
#[allow(clippy::needless_update)]
fn churn_commit_config(smoke: bool) -> CommitConfig {
    // Smoke: keep 100 completed tasks per owner and a tenth of the log, collected every
    // 100 ms, so that the cell reaches its steady state within the warm-up tenth of its
    // 50,000 lifecycles; full: the defaults (1,000 completed tasks, every second).
    if smoke {
        CommitConfig {
            log_retain_entries: LOG_RETAIN / 10,
            retention: shoal_core::gc::Retention {
                completed_tasks_per_owner: 100,
                ..Default::default()
            },
            collect_interval: std::time::Duration::from_millis(100),
        }
    } else {
        CommitConfig {
            log_retain_entries: LOG_RETAIN,
            ..Default::default()
        }
    }
}

/// What is measured at one checkpoint.
#[derive(Clone, Copy)]
struct Checkpoint {
    done: u64,
    rss: u64,
    store_len: u64,
    store_blocks: u64,
    tasks: usize,
    claims: usize,
    /// Lifecycles per second since the previous checkpoint.
    rate: f64,
}

/// This process's resident set (VmRSS), in bytes.
fn rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// The store file's length and its allocated bytes (`du`: 512-byte blocks).
fn store_size(path: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.len(), m.blocks() * 512))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `value` against `base` as a signed percentage.
fn growth(value: u64, base: u64) -> f64 {
    (value as f64 - base as f64) / (base as f64).max(1.0)
}

pub fn phase_e(dir: &Path, scale: &ScaleE) -> Result<()> {
    let limit = scale.limit;
    let config = churn_commit_config(scale.smoke);
    title("(e) churn, in process: steady live tasks, claimed, RUNNING, FINISHED, over and over");
    param(
        "agents",
        format!(
            "{} x {AGENT_RES} (registered through the committer, no links)",
            int(scale.agents as u64)
        ),
    );
    param(
        "live tasks",
        format!(
            "{} x {TASK_RES}, kept by {} workers",
            int(scale.live as u64),
            scale.workers
        ),
    );
    param(
        "lifecycles",
        format!(
            "{} (claims of {} placements, owner \"{OWNER}\"; then RUNNING, then FINISHED)",
            int(scale.lifecycles),
            scale.claim
        ),
    );
    param(
        "master",
        format!(
            "MasterCore over redb, --log-retain {}, {} completed tasks kept, collected every {:?}",
            int(config.log_retain_entries),
            int(config.retention.completed_tasks_per_owner as u64),
            config.collect_interval
        ),
    );
    param("time limit", format!("{limit:?}"));
    param(
        "checkpoints",
        "every tenth; baseline: the first (after the warm-up tenth)",
    );
    let rt = runtime()?;
    let r = rt.block_on(async {
        within(
            "phase (e)",
            limit,
            run_e(&dir.join("e"), scale, Deadline::after(limit)),
        )
        .await?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

async fn run_e(dir: &Path, scale: &ScaleE, dl: Deadline) -> Result<()> {
    if scale.workers == 0 || scale.live < scale.workers || scale.lifecycles < 10 {
        bail!("phase (e): bad scale");
    }
    let agent = ResourceSet::parse(AGENT_RES)?;
    let task = ResourceSet::parse(TASK_RES)?;
    let store = open_store(dir, shoal_core::clock::SystemClock::shared())?;
    let store_path: PathBuf = dir.join("shoal.redb");
    // No agent connects: keep the hub from marking them unreachable in a long run.
    let timers = AgentTimers {
        unreachable_after: Duration::from_secs(24 * 3600),
        gone_after: Duration::from_secs(48 * 3600),
        ..Default::default()
    };
    let core = MasterCore::start_with(
        store,
        churn_commit_config(scale.smoke),
        timers,
        shoal_core::clock::SystemClock::shared(),
    )?;
    let ids =
        Arc::new(register_agents(&core.committer, scale.agents, &agent, dl.remaining()).await?);
    let (rss0, (len0, _)) = (rss()?, store_size(&store_path)?);
    param(
        "after registration",
        format!("RSS {}, store {}", mib(rss0), mib(len0)),
    );

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..scale.workers {
        let per = scale.live / scale.workers + usize::from(w < scale.live % scale.workers);
        handles.push(tokio::spawn(worker(
            core.clone(),
            ids.clone(),
            w,
            per,
            scale.claim.min(per).max(1),
            next.clone(),
            done.clone(),
            scale.lifecycles,
            task.clone(),
            dl,
        )));
    }

    // Checkpoints, every tenth, while the workers run.
    println!();
    println!(
        "  {:>12} {:>11} {:>12} {:>14} {:>9} {:>11} {:>14}",
        "lifecycles", "RSS", "store file", "store on disk", "tasks", "claims", "lifecycles/s"
    );
    let tenth = scale.lifecycles / 10;
    let started = Instant::now();
    let mut last = (0u64, started);
    let mut points: Vec<Checkpoint> = Vec::new();
    while points.len() < 10 {
        if let Some(h) = handles.iter_mut().find(|h| h.is_finished()) {
            // A worker ends only when all is claimed, or on an error: surface the error now.
            let r = h.await?;
            r?;
            handles.retain(|h| !h.is_finished());
        }
        let d = done.load(Ordering::Relaxed);
        let want = tenth * (points.len() as u64 + 1);
        if d < want {
            dl.check(&format!(
                "phase (e) at {} of {} lifecycles",
                int(d),
                int(scale.lifecycles)
            ))?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let now = Instant::now();
        let snap = core.published.snapshot();
        let (store_len, store_blocks) = store_size(&store_path)?;
        let p = Checkpoint {
            done: d,
            rss: rss()?,
            store_len,
            store_blocks,
            tasks: snap.task_count(),
            claims: snap.claims().count(),
            rate: per_s(d - last.0, now - last.1),
        };
        drop(snap);
        last = (d, now);
        println!(
            "  {:>12} {:>11} {:>12} {:>14} {:>9} {:>11} {:>14}",
            int(p.done),
            mib(p.rss),
            mib(p.store_len),
            mib(p.store_blocks),
            int(p.tasks as u64),
            int(p.claims as u64),
            rate(p.rate)
        );
        points.push(p);
    }
    for h in handles {
        within("churn workers", dl.remaining(), h).await???;
    }
    let elapsed = started.elapsed();
    summary(scale, &points, elapsed)
}

/// The figures next to the baseline (the first checkpoint), and in `--smoke` the check.
fn summary(scale: &ScaleE, points: &[Checkpoint], elapsed: Duration) -> Result<()> {
    let (base, end) = (points[0], points[points.len() - 1]);
    let later = &points[1..];
    println!();
    figure(
        "churn: lifecycles",
        rate(per_s(end.done, elapsed)),
        &format!("{} in {}", int(end.done), secs(elapsed)),
    );
    let worst_rss = later.iter().map(|p| p.rss).max().unwrap_or(base.rss);
    let worst_store = later
        .iter()
        .map(|p| p.store_len)
        .max()
        .unwrap_or(base.store_len);
    figure(
        "BASELINE: RSS after the warm-up tenth",
        mib(base.rss),
        &format!("at {} lifecycles", int(base.done)),
    );
    figure(
        "RSS at the end",
        mib(end.rss),
        &format!("{:+.1} % vs baseline", growth(end.rss, base.rss) * 100.0),
    );
    figure(
        "RSS, highest later checkpoint",
        mib(worst_rss),
        &format!(
            "{:+.1} %; target: within 5 % at every checkpoint -> {}",
            growth(worst_rss, base.rss) * 100.0,
            met(growth(worst_rss, base.rss) <= 0.05)
        ),
    );
    figure(
        "BASELINE: store file after the warm-up",
        mib(base.store_len),
        &format!("{} on disk", mib(base.store_blocks)),
    );
    figure(
        "store file at the end",
        mib(end.store_len),
        &format!(
            "{:+.1} % vs baseline; {} on disk",
            growth(end.store_len, base.store_len) * 100.0,
            mib(end.store_blocks)
        ),
    );
    figure(
        "store file, largest later checkpoint",
        mib(worst_store),
        &format!(
            "{:+.1} %; target: within 5 % at every checkpoint -> {}",
            growth(worst_store, base.store_len) * 100.0,
            met(growth(worst_store, base.store_len) <= 0.05)
        ),
    );
    figure(
        "tasks in the cell: warm-up -> end",
        format!("{} -> {}", int(base.tasks as u64), int(end.tasks as u64)),
        &format!("live: {}", int(scale.live as u64)),
    );
    figure(
        "claims in the cell: warm-up -> end",
        format!("{} -> {}", int(base.claims as u64), int(end.claims as u64)),
        "",
    );
    figure(
        "BASELINE: lifecycles/s, first tenth",
        rate(base.rate),
        "(includes the warm-up)",
    );
    let fall = 1.0 - end.rate / base.rate.max(1e-9);
    figure(
        "lifecycles/s, last tenth",
        rate(end.rate),
        &format!(
            "{:+.1} %; target: fall <= 10 % -> {}",
            -fall * 100.0,
            met(fall <= 0.10)
        ),
    );
    if scale.smoke {
        let rss_max = base.rss + base.rss / 20 + SMOKE_RSS_SLACK;
        let store_max = base.store_len + base.store_len / 20 + SMOKE_STORE_SLACK;
        param(
            "smoke tolerance (last vs warm-up checkpoint)",
            format!(
                "RSS 5 % + {} (<= {}), store 5 % + {} (<= {})",
                mib(SMOKE_RSS_SLACK),
                mib(rss_max),
                mib(SMOKE_STORE_SLACK),
                mib(store_max)
            ),
        );
        let mut grew = Vec::new();
        if end.rss > rss_max {
            grew.push(format!("RSS {} -> {}", mib(base.rss), mib(end.rss)));
        }
        if end.store_len > store_max {
            grew.push(format!(
                "store {} -> {}",
                mib(base.store_len),
                mib(end.store_len)
            ));
        }
        if !grew.is_empty() {
            bail!(
                "the master is not flat under churn: {} (tasks {} -> {}, claims {} -> {})",
                grew.join(", "),
                int(base.tasks as u64),
                int(end.tasks as u64),
                int(base.claims as u64),
                int(end.claims as u64)
            );
        }
        param("smoke flatness check", "passed");
    }
    Ok(())
}

/// One worker: keeps `live` tasks of its own live. Each round claims `claim` new tasks,
/// sets them RUNNING, and finishes its oldest until `live` are left; at the end it finishes
/// the rest. Counts each FINISHED in `done`.
#[allow(clippy::too_many_arguments)]
async fn worker(
    core: MasterCore,
    ids: Arc<Vec<AgentId>>,
    w: usize,
    live: usize,
    claim_size: usize,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    total: u64,
    task: ResourceSet,
    dl: Deadline,
) -> Result<()> {
    let (cpu, mem) = (task.scalar("cpus").0, task.scalar("mem").0);
    let n = ids.len();
    let mut cursor = w % n;
    let mut mine: VecDeque<TaskId> = VecDeque::with_capacity(live + claim_size);
    let mut claims = 0u64;
    loop {
        dl.check("churn worker")?;
        let first = next.fetch_add(claim_size as u64, Ordering::Relaxed);
        let batch: Vec<u64> = (first..(first + claim_size as u64).min(total)).collect();
        if !batch.is_empty() {
            let snap = core.published.snapshot();
            let mut placements = Vec::with_capacity(batch.len());
            let mut scanned = 0;
            while placements.len() < batch.len() && scanned < n {
                if let Some(a) = snap.agent(&ids[cursor]) {
                    let fit = free_slots(a, cpu, mem).min((batch.len() - placements.len()) as i64);
                    for _ in 0..fit {
                        let k = batch[placements.len()];
                        placements.push(placement(format!("churn-{k}"), &ids[cursor], &task));
                    }
                }
                cursor = (cursor + 1) % n;
                scanned += 1;
            }
            if placements.len() < batch.len() {
                bail!("worker {w}: no agent has room for {} tasks", batch.len());
            }
            claims += 1;
            let c = Claim {
                priority: 0,
                evictions: vec![],
                id: ClaimId::new(format!("churn-{w}-{claims}")),
                role: "*".into(),
                owner: OWNER.into(),
                snapshot_version: snap.version(),
                mode: CommitMode::Incremental,
                check: ConflictCheck::Fine,
                placements,
            };
            drop(snap);
            let reply = submit(&core, Command::Claim(c)).await?;
            let Reply::Claim { outcome } = reply else {
                bail!("unexpected reply to a claim")
            };
            if outcome.committed_count() != batch.len() {
                bail!(
                    "worker {w}: a claim committed {} of {} placements",
                    outcome.committed_count(),
                    batch.len()
                );
            }
            let new: Vec<TaskId> = batch
                .iter()
                .map(|k| TaskId::new(format!("churn-{k}")))
                .collect();
            futures::future::try_join_all(
                new.iter()
                    .map(|t| submit(&core, status(t, TaskState::Running))),
            )
            .await?;
            mine.extend(new);
        }
        // Finish the oldest down to `live` (all of them once nothing is left to claim).
        let keep = if batch.is_empty() { 0 } else { live };
        let old: Vec<TaskId> = (0..mine.len().saturating_sub(keep))
            .filter_map(|_| mine.pop_front())
            .collect();
        futures::future::try_join_all(
            old.iter()
                .map(|t| submit(&core, status(t, TaskState::Finished))),
        )
        .await?;
        done.fetch_add(old.len() as u64, Ordering::Relaxed);
        if batch.is_empty() {
            return Ok(());
        }
    }
}

fn status(task_id: &TaskId, state: TaskState) -> Command {
    Command::UpdateTaskStatus {
        task_id: task_id.clone(),
        state,
        status: StatusInfo::default(),
    }
}

async fn submit(core: &MasterCore, c: Command) -> Result<Reply> {
    within(
        "a churn command",
        Duration::from_secs(60),
        core.committer.submit(c),
    )
    .await?
    .map_err(|e| anyhow!("churn command failed: {e}"))
}
