//! The in-process phases: (a) the commit path, (c) conflicts fine vs coarse, and the
//! in-process half of (d) snapshots. They drive `MasterCore` (the committer over a real redb
//! store, one write and one fsync per group) and the sans-IO `Cell` directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use shoal_core::{
    Agent, AgentId, AgentRegistration, AgentState, CellConfig, Claim, ClaimId, CommitMode,
    ConflictCheck, Placement, RejectReason, ResourceSet, TaskId, TaskSpec,
};
use shoal_master::committer::CommitConfig;
use shoal_master::{open_store, Committer, MasterCore, MemStore, Published, Store};
use shoal_sched::Command;
use shoal_sched::{Cell, Reply};

use crate::util::*;

/// Resources of one agent and one task in the in-process phases.
pub const AGENT_RES: &str = "cpus:32;mem:65536";
pub const TASK_RES: &str = "cpus:1;mem:1024";

/// An agent's registration (built through serde, so new optional fields keep their defaults).
pub fn registration(host: &str, resources: &ResourceSet) -> AgentRegistration {
    serde_json::from_value(json!({"hostname": host, "resources": resources}))
        .expect("a registration from plain fields")
}

/// How many tasks of `task` still fit on `agent` (scalars only; 0 unless active).
pub fn free_slots(agent: &Agent, cpu: i64, mem: i64) -> i64 {
    if agent.state != AgentState::Active {
        return 0;
    }
    let c = agent.total.scalar("cpus").0 - agent.allocated.scalar("cpus").0;
    let m = agent.total.scalar("mem").0 - agent.allocated.scalar("mem").0;
    (c / cpu).min(m / mem).max(0)
}

pub fn reason_name(r: &Option<RejectReason>) -> String {
    match r {
        None => "none".into(),
        Some(r) => serde_json::to_value(r)
            .ok()
            .and_then(|v| v["reason"].as_str().map(String::from))
            .unwrap_or_else(|| format!("{r:?}")),
    }
}

fn print_reasons(reasons: &BTreeMap<String, u64>) {
    if reasons.is_empty() {
        figure("rejections by reason", "none", "");
    }
    for (k, v) in reasons {
        figure(&format!("rejections: {k}"), int(*v), "");
    }
}

/// Registers `n` agents through the committer, all submitted at once so they group-commit.
/// Returns their ids by index.
pub async fn register_agents(
    committer: &Committer,
    n: usize,
    resources: &ResourceSet,
    limit: Duration,
) -> Result<Vec<AgentId>> {
    let futs = (0..n).map(|i| {
        let c = committer.clone();
        let reg = registration(&format!("bench-agent-{i}"), resources);
        async move { c.submit(Command::RegisterAgent(reg)).await }
    });
    let replies = within("registering agents", limit, futures::future::join_all(futs)).await?;
    replies
        .into_iter()
        .map(|r| match r {
            Ok(Reply::Agent { agent_id }) => Ok(agent_id),
            Ok(other) => Err(anyhow!("unexpected reply to a registration: {other:?}")),
            Err(e) => Err(anyhow!("registration failed: {e}")),
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Counters {
    groups: u64,
    commands: u64,
    syncs: u64,
}

fn counters(p: &Published) -> Counters {
    let s = &p.stats;
    Counters {
        groups: s.groups.load(Ordering::Relaxed),
        commands: s.commands.load(Ordering::Relaxed),
        syncs: s.syncs.load(Ordering::Relaxed),
    }
}

pub(crate) fn placement(task_id: String, agent: &AgentId, res: &ResourceSet) -> Placement {
    Placement {
        task_id: TaskId::new(task_id),
        name: String::new(),
        agent_id: agent.clone(),
        resources: res.clone(),
        spec: TaskSpec::empty(),
    }
}

fn claim(
    id: String,
    snapshot_version: u64,
    check: ConflictCheck,
    placements: Vec<Placement>,
) -> Claim {
    Claim {
        priority: 0,
        evictions: vec![],
        id: ClaimId::new(id),
        role: "*".into(),
        owner: "shoal-bench".into(),
        snapshot_version,
        mode: CommitMode::Incremental,
        check,
        placements,
    }
}

// ---------------------------------------------------------------------------------------
// (a) the commit path

pub struct ScaleA {
    pub agents: usize,
    pub placements: u64,
    pub schedulers: usize,
    pub claim: usize,
}

#[derive(Default)]
struct SchedOut {
    claims: u64,
    attempted: u64,
    committed: u64,
    reasons: BTreeMap<String, u64>,
    /// Agent index of every committed placement, in commit order.
    stream: Vec<u32>,
}

/// One scheduler of phase (a): claims of `claim` tasks, decided first-fit on a snapshot taken
/// once per claim, starting at its own offset; rejected tasks are retried on a fresh snapshot.
#[allow(clippy::too_many_arguments)]
async fn scheduler_a(
    core: MasterCore,
    ids: Arc<Vec<AgentId>>,
    s: usize,
    nsched: usize,
    next: Arc<AtomicU64>,
    total: u64,
    claim_size: usize,
    task: ResourceSet,
    dl: Deadline,
) -> Result<SchedOut> {
    let (cpu, mem) = (task.scalar("cpus").0, task.scalar("mem").0);
    let n = ids.len();
    let start = s * n / nsched;
    let mut out = SchedOut::default();
    let mut retry: Vec<u64> = Vec::new();
    loop {
        dl.check("scheduler")?;
        let mut batch: Vec<u64> = retry.drain(..retry.len().min(claim_size)).collect();
        while batch.len() < claim_size {
            let k = next.fetch_add(1, Ordering::Relaxed);
            if k >= total {
                break;
            }
            batch.push(k);
        }
        if batch.is_empty() {
            return Ok(out);
        }
        let snap = core.published.snapshot();
        let mut placements = Vec::with_capacity(batch.len());
        let mut chosen: Vec<(u32, u64)> = Vec::with_capacity(batch.len());
        let mut scanned = 0;
        let mut i = start;
        while chosen.len() < batch.len() && scanned < n {
            if let Some(a) = snap.agent(&ids[i]) {
                let fit = free_slots(a, cpu, mem).min((batch.len() - chosen.len()) as i64);
                for _ in 0..fit {
                    let k = batch[chosen.len()];
                    placements.push(placement(format!("a-{k}"), &ids[i], &task));
                    chosen.push((i as u32, k));
                }
            }
            i = (i + 1) % n;
            scanned += 1;
        }
        if placements.is_empty() {
            bail!(
                "scheduler {s}: the cell is full with {} tasks unplaced",
                batch.len()
            );
        }
        retry.extend(batch[chosen.len()..].iter().copied());
        out.claims += 1;
        out.attempted += placements.len() as u64;
        let c = claim(
            format!("a-{s}-{}", out.claims),
            snap.version(),
            ConflictCheck::Fine,
            placements,
        );
        drop(snap);
        let reply = within(
            "a claim",
            Duration::from_secs(60),
            core.committer.submit(Command::Claim(c)),
        )
        .await?
        .map_err(|e| anyhow!("claim failed: {e}"))?;
        let Reply::Claim { outcome } = reply else {
            bail!("unexpected reply to a claim")
        };
        for (o, (idx, k)) in outcome.placements.iter().zip(chosen) {
            if o.committed {
                out.committed += 1;
                out.stream.push(idx);
            } else {
                *out.reasons.entry(reason_name(&o.rejected)).or_default() += 1;
                retry.push(k);
            }
        }
    }
}

/// The placement stream as claims of `claim_size` (fresh task ids), for the replays.
fn replay_claims(
    prefix: &str,
    stream: &[u32],
    ids: &[AgentId],
    claim_size: usize,
    task: &ResourceSet,
    version: u64,
) -> Vec<Command> {
    stream
        .chunks(claim_size)
        .enumerate()
        .map(|(c, chunk)| {
            let placements = chunk
                .iter()
                .enumerate()
                .map(|(j, &idx)| {
                    placement(
                        format!("{prefix}-{}", c * claim_size + j),
                        &ids[idx as usize],
                        task,
                    )
                })
                .collect();
            Command::Claim(claim(
                format!("{prefix}-c{c}"),
                version,
                ConflictCheck::Fine,
                placements,
            ))
        })
        .collect()
}

fn committed_of(reply: &Reply) -> u64 {
    match reply {
        Reply::Claim { outcome } => outcome.committed_count() as u64,
        _ => 0,
    }
}

/// The sans-IO core alone: `Cell::commit` over the stream, no store, no threads. With
/// `snapshot_every = Some(k)`, a snapshot (`Cell::clone`) is taken after every `k` claims and
/// held until the next, as the committer publishes one per group: the cost of copy-on-write.
fn replay_core(
    n_agents: usize,
    stream: &[u32],
    claim_size: usize,
    agent: &ResourceSet,
    task: &ResourceSet,
    snapshot_every: Option<usize>,
) -> Result<(Duration, u64)> {
    let mut cell = Cell::new(CellConfig {
        cell_id: Arc::from("bench-core"),
    });
    let mut ids = Vec::with_capacity(n_agents);
    for i in 0..n_agents {
        let (_, reply) = cell
            .commit(
                1,
                &Command::RegisterAgent(registration(&format!("bench-agent-{i}"), agent)),
            )
            .map_err(|e| anyhow!("register: {e}"))?;
        let Reply::Agent { agent_id } = reply else {
            bail!("unexpected reply")
        };
        ids.push(agent_id);
    }
    let commands = replay_claims("core", stream, &ids, claim_size, task, cell.version());
    let started = Instant::now();
    let mut committed = 0;
    let mut held = None;
    for (i, c) in commands.iter().enumerate() {
        let (_, reply) = cell.commit(2, c).map_err(|e| anyhow!("claim: {e}"))?;
        committed += committed_of(&reply);
        if let Some(k) = snapshot_every {
            if (i + 1) % k == 0 {
                held = Some(cell.clone());
            }
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(&cell);
    drop(held);
    Ok((elapsed, committed))
}

/// The commit path to replay through: the bare committer thread, or a whole `MasterCore`
/// (the committer plus the agent hub's background loops).
#[derive(Clone, Copy, PartialEq)]
enum CommitPath {
    BareCommitter,
    MasterCore,
}

/// The committer over `store`, fed the stream's claims by `nsub` submitters (no deciding).
#[allow(clippy::too_many_arguments)]
async fn replay_committer(
    path: CommitPath,
    store: Arc<dyn Store>,
    n_agents: usize,
    stream: &[u32],
    scale: &ScaleA,
    agent: &ResourceSet,
    task: &ResourceSet,
    dl: Deadline,
) -> Result<(Duration, u64, u64)> {
    let mut _core = None;
    let (committer, published) = match path {
        CommitPath::BareCommitter => {
            let cell = shoal_master::load_cell(store.as_ref())?;
            let (c, p, _thread) = shoal_master::committer::start(
                cell,
                store,
                shoal_core::clock::SystemClock::shared(),
                CommitConfig::default(),
            );
            (c, p)
        }
        CommitPath::MasterCore => {
            let core = MasterCore::start(store)?;
            let pair = (core.committer.clone(), core.published.clone());
            _core = Some(core);
            pair
        }
    };
    let ids = register_agents(&committer, n_agents, agent, dl.remaining()).await?;
    let version = published.snapshot().version();
    let commands = replay_claims("rp", stream, &ids, scale.claim, task, version);
    let mut shares: Vec<Vec<Command>> = (0..scale.schedulers).map(|_| Vec::new()).collect();
    for (i, c) in commands.into_iter().enumerate() {
        shares[i % scale.schedulers].push(c);
    }
    let before = counters(&published);
    let started = Instant::now();
    let mut handles = Vec::new();
    for share in shares {
        let committer = committer.clone();
        handles.push(tokio::spawn(async move {
            let mut committed = 0;
            for c in share {
                let reply = committer
                    .submit(c)
                    .await
                    .map_err(|e| anyhow!("replayed claim: {e}"))?;
                committed += committed_of(&reply);
            }
            anyhow::Ok(committed)
        }));
    }
    let mut committed = 0;
    for h in handles {
        committed += within("replay", dl.remaining(), h).await???;
    }
    let elapsed = started.elapsed();
    let syncs = counters(&published).syncs - before.syncs;
    Ok((elapsed, committed, syncs))
}

pub fn phase_a(dir: &Path, scale: &ScaleA, limit: Duration) -> Result<()> {
    title("(a) commit path, in process: MasterCore (redb + fsync per group) with concurrent schedulers");
    param(
        "agents",
        format!(
            "{} x {AGENT_RES} (registered through the committer, all at once)",
            int(scale.agents as u64)
        ),
    );
    param(
        "placements",
        format!("{} x {TASK_RES}", int(scale.placements)),
    );
    param(
        "schedulers",
        format!(
            "{} tokio tasks, claims of {} placements",
            scale.schedulers, scale.claim
        ),
    );
    param(
        "decision",
        "first fit on a snapshot taken once per claim, from offset s x agents/schedulers",
    );
    param(
        "claims",
        "incremental, fine conflict check; rejected placements retried on a fresh snapshot",
    );
    let rt = runtime()?;
    let r = rt.block_on(async {
        within(
            "phase (a)",
            limit,
            run_a(dir, scale, Deadline::after(limit)),
        )
        .await?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

async fn run_a(dir: &Path, scale: &ScaleA, dl: Deadline) -> Result<()> {
    let agent = ResourceSet::parse(AGENT_RES)?;
    let task = ResourceSet::parse(TASK_RES)?;
    let core = MasterCore::start(open_store(
        &dir.join("a"),
        shoal_core::clock::SystemClock::shared(),
    )?)?;

    let c0 = counters(&core.published);
    let started = Instant::now();
    let ids =
        Arc::new(register_agents(&core.committer, scale.agents, &agent, dl.remaining()).await?);
    let reg = started.elapsed();
    let c1 = counters(&core.published);

    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = (
        cpu_time(std::process::id()),
        thread_cpu_time("shoal-committer"),
    );
    let started = Instant::now();
    let mut handles = Vec::new();
    for s in 0..scale.schedulers {
        handles.push(tokio::spawn(scheduler_a(
            core.clone(),
            ids.clone(),
            s,
            scale.schedulers,
            next.clone(),
            scale.placements,
            scale.claim,
            task.clone(),
            dl,
        )));
    }
    let mut total = SchedOut::default();
    for h in handles {
        let o = within("schedulers", dl.remaining(), h)
            .await?
            .context("scheduler task")??;
        total.claims += o.claims;
        total.attempted += o.attempted;
        total.committed += o.committed;
        for (k, v) in o.reasons {
            *total.reasons.entry(k).or_default() += v;
        }
        total.stream.extend(o.stream);
    }
    let elapsed = started.elapsed();
    let cpu1 = (
        cpu_time(std::process::id()),
        thread_cpu_time("shoal-committer"),
    );
    let c2 = counters(&core.published);
    let snap = core.published.snapshot();
    if snap.task_count() as u64 != scale.placements || total.committed != scale.placements {
        bail!(
            "placed {} (cell holds {} tasks), wanted {}",
            total.committed,
            snap.task_count(),
            scale.placements
        );
    }
    snap.check_invariants()
        .map_err(|e| anyhow!("invariant broken after the run: {e}"))?;
    drop(snap);
    drop(core);

    println!();
    figure(
        "agent registration",
        secs(reg),
        &format!("{} agents", rate(per_s(scale.agents as u64, reg))),
    );
    figure(
        "  commit groups / syncs",
        format!(
            "{} / {}",
            int(c1.groups - c0.groups),
            int(c1.syncs - c0.syncs)
        ),
        "",
    );
    figure("placement time", secs(elapsed), "");
    let shoal_rate = per_s(total.committed, elapsed);
    figure(
        "placements/s",
        rate(shoal_rate),
        "all 8 schedulers, decide + commit + fsync",
    );
    figure(
        "claims/s",
        rate(per_s(total.claims, elapsed)),
        &format!("{} claims", int(total.claims)),
    );
    let (groups, syncs, cmds) = (
        c2.groups - c1.groups,
        c2.syncs - c1.syncs,
        c2.commands - c1.commands,
    );
    figure(
        "commit groups",
        int(groups),
        &format!("{:.1} claims per group", cmds as f64 / groups.max(1) as f64),
    );
    figure(
        "syncs (fsync)",
        int(syncs),
        &format!(
            "{:.0} placements per sync",
            total.committed as f64 / syncs.max(1) as f64
        ),
    );
    let rejected = total.attempted - total.committed;
    figure(
        "conflict fraction",
        pct(rejected as f64 / total.attempted.max(1) as f64),
        &format!(
            "{} of {} placements rejected, retried",
            int(rejected),
            int(total.attempted)
        ),
    );
    print_reasons(&total.reasons);
    if let (Some(p0), Some(p1), Some(c0), Some(c1)) = (cpu0.0, cpu1.0, cpu0.1, cpu1.1) {
        let w = elapsed.as_secs_f64();
        let (all, committer) = ((p1 - p0).as_secs_f64(), (c1 - c0).as_secs_f64());
        figure(
            "CPU used while placing",
            format!("{all:.1} s"),
            &format!("{:.2} cores busy; the committer thread {committer:.1} s = {:.0} % of the wall time", all / w, committer / w * 100.0),
        );
    }

    // Where the time goes: the same placement stream through less and less of the path.
    println!();
    println!(
        "  where the time goes (the same {} placements, replayed; no deciding):",
        int(total.committed)
    );
    let (core_t, core_n) = replay_core(
        scale.agents,
        &total.stream,
        scale.claim,
        &agent,
        &task,
        None,
    )?;
    let core_rate = per_s(core_n, core_t);
    figure(
        "  sans-IO core: Cell::commit loop",
        rate(core_rate),
        &format!("{} (claims of {}, no store)", secs(core_t), scale.claim),
    );
    let per_group = ((c2.commands - c1.commands) as f64 / (c2.groups - c1.groups).max(1) as f64)
        .round()
        .max(1.0) as usize;
    let (cow_t, cow_n) = replay_core(
        scale.agents,
        &total.stream,
        scale.claim,
        &agent,
        &task,
        Some(per_group),
    )?;
    figure(
        &format!("  + a snapshot held every {per_group} claims"),
        rate(per_s(cow_n, cow_t)),
        &format!(
            "{} (Cell::clone per group, as the committer publishes)",
            secs(cow_t)
        ),
    );
    let mut replays = vec![("core", core_n), ("core + snapshots", cow_n)];
    for (label, path, mem) in [
        (
            "  bare committer + in-memory store",
            CommitPath::BareCommitter,
            true,
        ),
        (
            "  bare committer + redb + fsync",
            CommitPath::BareCommitter,
            false,
        ),
        (
            "  MasterCore (+ agent hub) + redb + fsync",
            CommitPath::MasterCore,
            false,
        ),
    ] {
        let store: Arc<dyn Store> = if mem {
            Arc::new(MemStore::new())
        } else {
            open_store(
                &dir.join(format!("a-replay-{}", replays.len())),
                shoal_core::clock::SystemClock::shared(),
            )?
        };
        let (t, n, syncs) = replay_committer(
            path,
            store,
            scale.agents,
            &total.stream,
            scale,
            &agent,
            &task,
            dl,
        )
        .await?;
        figure(
            label,
            rate(per_s(n, t)),
            &format!("{} ({} groups)", secs(t), int(syncs)),
        );
        replays.push((label.trim(), n));
    }
    figure(
        "  + 8 deciding schedulers (the run above)",
        rate(shoal_rate),
        &secs(elapsed),
    );
    for (what, n) in replays {
        if n != total.committed {
            println!(
                "  WARNING: the {what} replay committed {n} of {} placements",
                total.committed
            );
        }
    }

    // Baseline: a plain array of capacities, one thread, the same stream.
    let (base_rate, base_placed) = baseline(scale.agents, &total.stream);
    println!();
    figure(
        "BASELINE: plain-array fit-and-subtract",
        rate(base_rate),
        "1 thread, f64 cpus/mem per agent, same stream",
    );
    if base_placed != total.committed {
        println!(
            "  WARNING: the baseline placed {base_placed} of {}",
            total.committed
        );
    }
    let ratio = base_rate / shoal_rate;
    figure(
        "baseline / shoal",
        format!("{ratio:.1}x"),
        &format!("target: within 3x -> {}", met(ratio <= 3.0)),
    );
    figure(
        "baseline / sans-IO core",
        format!("{:.1}x", base_rate / core_rate),
        "",
    );
    Ok(())
}

/// Fit-and-subtract over `Vec<(f64, f64)>`, repeated until it has run for ≥ 200 ms.
fn baseline(n_agents: usize, stream: &[u32]) -> (f64, u64) {
    let mut reps = 0u64;
    let mut placed = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(200) || reps == 0 {
        let mut caps = vec![(32.0f64, 65536.0f64); n_agents];
        placed = 0;
        for &i in std::hint::black_box(stream) {
            let c = &mut caps[i as usize];
            if c.0 >= 1.0 && c.1 >= 1024.0 {
                c.0 -= 1.0;
                c.1 -= 1024.0;
                placed += 1;
            }
        }
        std::hint::black_box(&caps);
        reps += 1;
    }
    (per_s(reps * stream.len() as u64, started.elapsed()), placed)
}

// ---------------------------------------------------------------------------------------
// (c) conflicts, fine vs coarse

pub struct ScaleC {
    pub agents: usize,
    pub rounds: usize,
    pub schedulers: usize,
    pub claim: usize,
    /// Each placement goes to a random agent among the first `window` that fit.
    pub window: usize,
}

#[derive(Default)]
struct ConflictOut {
    claims: u64,
    attempted: u64,
    rejected: u64,
    claims_with_conflict: u64,
    reasons: BTreeMap<String, u64>,
    fill_before: f64,
    fill_after: f64,
    elapsed: Duration,
}

pub fn phase_c(dir: &Path, scale: &ScaleC, limit: Duration) -> Result<()> {
    title(
        "(c) conflict fraction, fine vs coarse: stale snapshots, overlapping choices, in process",
    );
    param(
        "agents",
        format!(
            "{} x {AGENT_RES}, ~60 % full (random fill per agent, same seed for both)",
            int(scale.agents as u64)
        ),
    );
    param(
        "schedulers",
        format!(
            "{}, {} claims each, {} placements per claim ({TASK_RES})",
            scale.schedulers, scale.rounds, scale.claim
        ),
    );
    param(
        "decision",
        format!(
            "snapshot per claim; each placement on a random agent among the first {} that fit",
            scale.window
        ),
    );
    param(
        "claims",
        "incremental; no retries; the same seeds for fine and coarse",
    );
    let mut results = Vec::new();
    for check in [ConflictCheck::Fine, ConflictCheck::Coarse] {
        let rt = runtime()?;
        let name = if check == ConflictCheck::Fine {
            "fine"
        } else {
            "coarse"
        };
        let r = rt.block_on(async {
            within(
                "phase (c)",
                limit / 2,
                run_c(
                    &dir.join(format!("c-{name}")),
                    scale,
                    check,
                    Deadline::after(limit / 2),
                ),
            )
            .await?
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        results.push((name, r?));
    }
    println!();
    println!(
        "  {:<8} {:>8} {:>11} {:>9} {:>16} {:>18} {:>22} {:>12}",
        "check",
        "claims",
        "placements",
        "rejected",
        "conflicts/claim",
        "rejected fraction",
        "claims with conflicts",
        "fill"
    );
    for (name, o) in &results {
        println!(
            "  {:<8} {:>8} {:>11} {:>9} {:>16.2} {:>18} {:>22} {:>12}",
            name,
            int(o.claims),
            int(o.attempted),
            int(o.rejected),
            o.rejected as f64 / o.claims.max(1) as f64,
            pct(o.rejected as f64 / o.attempted.max(1) as f64),
            pct(o.claims_with_conflict as f64 / o.claims.max(1) as f64),
            format!(
                "{:.0}->{:.0} %",
                o.fill_before * 100.0,
                o.fill_after * 100.0
            ),
        );
    }
    for (name, o) in &results {
        let reasons: Vec<String> = o
            .reasons
            .iter()
            .map(|(k, v)| format!("{k}: {}", int(*v)))
            .collect();
        println!(
            "  {name:<8} rejections by reason: {}; {} in {}",
            if reasons.is_empty() {
                "none".into()
            } else {
                reasons.join(", ")
            },
            int(o.claims),
            secs(o.elapsed)
        );
    }
    Ok(())
}

async fn run_c(
    dir: &Path,
    scale: &ScaleC,
    check: ConflictCheck,
    dl: Deadline,
) -> Result<ConflictOut> {
    let agent = ResourceSet::parse(AGENT_RES)?;
    let task = ResourceSet::parse(TASK_RES)?;
    let (cpu, mem) = (task.scalar("cpus").0, task.scalar("mem").0);
    let slots = (agent.scalar("cpus").0 / cpu).min(agent.scalar("mem").0 / mem);
    let core = MasterCore::start(open_store(dir, shoal_core::clock::SystemClock::shared())?)?;
    let ids =
        Arc::new(register_agents(&core.committer, scale.agents, &agent, dl.remaining()).await?);

    // Fill to ~60 %: agent i holds round(slots x U(0.2, 1.0)) tasks. Same seed in both modes.
    let mut rng = Rng::new(42);
    let mut fill: Vec<(usize, u64)> = Vec::new();
    for i in 0..ids.len() {
        let k = (slots as f64 * (0.2 + 0.8 * rng.unit())).round() as u64;
        fill.push((i, k));
    }
    let version = core.published.snapshot().version();
    let mut commands = Vec::new();
    let mut placements = Vec::new();
    let mut n = 0u64;
    for (i, k) in fill {
        for _ in 0..k {
            placements.push(placement(format!("fill-{n}"), &ids[i], &task));
            n += 1;
            if placements.len() == 1000 {
                commands.push(Command::Claim(claim(
                    format!("fill-c{}", commands.len()),
                    version,
                    ConflictCheck::Fine,
                    std::mem::take(&mut placements),
                )));
            }
        }
    }
    if !placements.is_empty() {
        commands.push(Command::Claim(claim(
            format!("fill-c{}", commands.len()),
            version,
            ConflictCheck::Fine,
            placements,
        )));
    }
    let futs = commands.into_iter().map(|c| core.committer.submit(c));
    let mut filled = 0;
    for r in within("prefill", dl.remaining(), futures::future::join_all(futs)).await? {
        filled += committed_of(&r.map_err(|e| anyhow!("prefill: {e}"))?);
    }
    if filled != n {
        bail!("prefill committed {filled} of {n}");
    }
    let capacity = (slots as u64 * ids.len() as u64) as f64;
    let fill_before = filled as f64 / capacity;

    let started = Instant::now();
    let mut handles = Vec::new();
    for s in 0..scale.schedulers {
        let (core, ids, task) = (core.clone(), ids.clone(), task.clone());
        let (rounds, size, window) = (scale.rounds, scale.claim, scale.window);
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + s as u64);
            let mut out = ConflictOut::default();
            for round in 0..rounds {
                dl.check("conflict scheduler")?;
                let snap = core.published.snapshot();
                // The first `window` agents with room, and their room on this snapshot.
                let mut cands: Vec<(usize, i64)> = Vec::with_capacity(window);
                let mut i = 0;
                let mut placements = Vec::with_capacity(size);
                while placements.len() < size {
                    cands.retain(|c| c.1 > 0);
                    while cands.len() < window && i < ids.len() {
                        let free = snap
                            .agent(&ids[i])
                            .map(|a| free_slots(a, cpu, mem))
                            .unwrap_or(0);
                        if free > 0 {
                            cands.push((i, free));
                        }
                        i += 1;
                    }
                    if cands.is_empty() {
                        break;
                    }
                    let pick = rng.below(cands.len());
                    cands[pick].1 -= 1;
                    placements.push(placement(
                        format!("x-{s}-{round}-{}", placements.len()),
                        &ids[cands[pick].0],
                        &task,
                    ));
                }
                if placements.is_empty() {
                    bail!("scheduler {s}: the cell is full");
                }
                let attempted = placements.len() as u64;
                let c = claim(format!("x-{s}-{round}"), snap.version(), check, placements);
                drop(snap);
                let reply = within(
                    "a claim",
                    Duration::from_secs(60),
                    core.committer.submit(Command::Claim(c)),
                )
                .await?
                .map_err(|e| anyhow!("claim failed: {e}"))?;
                let Reply::Claim { outcome } = reply else {
                    bail!("unexpected reply")
                };
                let rejected = outcome.placements.iter().filter(|p| !p.committed).count() as u64;
                for p in outcome.placements.iter().filter(|p| !p.committed) {
                    *out.reasons.entry(reason_name(&p.rejected)).or_default() += 1;
                }
                out.claims += 1;
                out.attempted += attempted;
                out.rejected += rejected;
                out.claims_with_conflict += (rejected > 0) as u64;
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = ConflictOut::default();
    for h in handles {
        let o = within("conflict schedulers", dl.remaining(), h)
            .await??
            .map_err(|e| anyhow!("{e}"))?;
        total.claims += o.claims;
        total.attempted += o.attempted;
        total.rejected += o.rejected;
        total.claims_with_conflict += o.claims_with_conflict;
        for (k, v) in o.reasons {
            *total.reasons.entry(k).or_default() += v;
        }
    }
    total.elapsed = started.elapsed();
    total.fill_before = fill_before;
    total.fill_after = core.published.snapshot().task_count() as f64 / capacity;
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// (d) snapshots, in process

/// Median per-call time of `f`, in ns: `batches` batches of `per_batch` calls.
fn per_call_ns(batches: usize, per_batch: usize, mut f: impl FnMut()) -> f64 {
    let mut v = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        v.push(t.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    median(&mut v)
}

pub fn phase_d_inproc(dir: &Path, agents: usize, limit: Duration) -> Result<()> {
    title("(d) snapshot time, in process");
    param(
        "agents",
        format!(
            "{} x {AGENT_RES}, registered through the committer",
            int(agents as u64)
        ),
    );
    param(
        "method",
        "median over 200 batches of 1,000 calls (per-call time = batch / 1,000)",
    );
    let rt = runtime()?;
    let r = rt.block_on(async {
        within("phase (d)", limit, async {
            let agent = ResourceSet::parse(AGENT_RES)?;
            let core = MasterCore::start(open_store(
                &dir.join("d"),
                shoal_core::clock::SystemClock::shared(),
            )?)?;
            register_agents(&core.committer, agents, &agent, limit).await?;
            let published = core.published.clone();
            let snap_ns = per_call_ns(200, 1000, || {
                std::hint::black_box(published.snapshot());
            });
            let cell = published.snapshot();
            if cell.agent_count() != agents {
                bail!(
                    "the snapshot holds {} agents, wanted {agents}",
                    cell.agent_count()
                );
            }
            let clone_ns = per_call_ns(200, 1000, || {
                std::hint::black_box(Cell::clone(&cell));
            });
            let mut deep = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let v: Vec<Agent> = cell.agents().cloned().collect();
                std::hint::black_box(&v);
                deep.push(t.elapsed().as_nanos() as f64);
            }
            let deep_ns = median(&mut deep);
            println!();
            figure(
                "published.snapshot() (Arc load)",
                ns(snap_ns),
                &format!("target <= 1 ms -> {}", met(snap_ns <= 1e6)),
            );
            figure(
                "Cell::clone() (persistent maps)",
                ns(clone_ns),
                &format!("target <= 1 ms -> {}", met(clone_ns <= 1e6)),
            );
            figure(
                "for contrast: deep copy of the agents",
                ms(Duration::from_nanos(deep_ns as u64)),
                "Vec<Agent> clone, median of 20",
            );
            anyhow::Ok(())
        })
        .await?
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}
