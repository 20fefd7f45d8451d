//! `shoal-offer-bench`: how fast offers reach a Mesos framework once resources free up, and
//! the offer → ACCEPT(LAUNCH) → TASK_RUNNING round trip next to a native claim of the same
//! task, measured in the same run.
//!
//! Not a timed test: it prints figures, with the baseline and the target beside each.
//!
//! ```text
//! cargo build -p shoal -p shoal-bench --bin shoal-offer-bench
//! target/debug/shoal-offer-bench --smoke        # a few runs, seconds in a debug build
//! target/release/shoal-offer-bench              # the full scale (build with --release)
//! shoal-offer-bench [--smoke] [--runs N] [--shoal-bin PATH]
//! ```
//!
//! A real `shoal master` and one `shoal agent` (process executor, `cpus:2;mem:256`) run on
//! loopback. The master's `--allocation-interval` is 10 s, so an offer that arrives within
//! milliseconds can only come from the allocation round that freed resources trigger. The
//! bench is the framework: it subscribes to `POST /api/v1/scheduler` (JSON, RecordIO), and a
//! reader task stamps every event with the instant it arrived; a second task stamps every
//! entry of the native watch (`GET /api/shoal/v1/watch`) the same way. One run:
//!
//! 1. The framework holds an offer for the whole agent. It ACCEPTs it with one LAUNCH of
//!    `sleep 600` (cpus 1, mem 128) and `refuse_seconds: 3600`: the other half of the agent is
//!    refused (Mesos's refused-offer filter: that half alone is not offered again).
//!    **Offer round trip** = from sending the ACCEPT until the UPDATE TASK_RUNNING arrives.
//! 2. A native claim (`POST /api/shoal/v1/claims`) of the same task on the other half.
//!    **Native round trip** = from sending the claim until the watch shows TASK_RUNNING.
//!    Then the native task is killed; what it frees is still within the filter: no offer.
//! 3. The framework KILLs its task. The master commits TASK_KILLED; the whole agent is free,
//!    more than the filter refused, so it is offered again. **Offer latency** = from the
//!    arrival of the watch entry carrying TASK_KILLED (the moment the commit is visible to
//!    watchers) until the OFFERS event with the agent's resources arrives at the framework.
//!    The baseline beside it: the same commit's UPDATE TASK_KILLED at the framework (the
//!    delivery floor, without an allocation round and the hold's commit).
//!
//! Then the v1 framework is torn down, and a v0 framework (a small libprocess scheduler in the
//! bench, [`v0`]) subscribes to the same master and repeats step 1 and 3 for as many runs:
//! **v0 round trip** = from writing the ACCEPT (`mesos.scheduler.Call` on the framework's own
//! connection) with one LAUNCH of the same task until the StatusUpdateMessage TASK_RUNNING
//! arrives (acknowledged, as every update, with its uuid); then a KILL and the
//! acknowledged TASK_KILLED, and the next offer for the whole agent, so each run starts clean.
//! The three round trips (v0, v1, native) are printed side by side.

#[path = "../util.rs"]
#[allow(dead_code)]
mod util;

#[path = "shoal-offer-bench/v0.rs"]
mod v0;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value as Json};
use shoal_client::{command_task, ClaimRequest, Client, PlacementRequest};
use shoal_core::{CommitMode, ConflictCheck, ResourceSet, TaskState};
use shoal_sched::Event;
use shoal_tests::{wait_agents_active, JsonCaller, JsonSubscription, MasterProc};
use tokio::sync::mpsc;
use util::{figure, loadavg, met, ms, param, title};
use v0::V0Framework;

const AGENT_RES: &str = "cpus:2;mem:256";
const TASK_RES: &str = "cpus:1;mem:128";
const TASK_CMD: &str = "sleep 600";
/// Far above every figure here: fast offers can only come from allocation on change.
const ALLOCATION_INTERVAL: &str = "10s";
const TARGET_OFFER_MS: f64 = 5.0;
/// What an ACCEPT refuses of the offer it does not use: the rest of the run.
const REFUSE_SECONDS: f64 = 3600.0;
/// How long one step of a run may take.
const STEP: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(
    name = "shoal-offer-bench",
    about = "Offers after resources free up, and offer vs native launch round trips"
)]
struct Args {
    /// A few runs, for CI (seconds in a debug build).
    #[arg(long)]
    smoke: bool,
    /// Runs (default: 5 with --smoke, 40 otherwise).
    #[arg(long)]
    runs: Option<usize>,
    /// The `shoal` binary. Default: $SHOAL_BIN, else the one next to this binary.
    #[arg(long = "shoal-bin")]
    shoal_bin: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let bin = match find_shoal_bin(args.shoal_bin.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    // shoal_tests::{MasterProc, AgentProc} run `$SHOAL_BIN`; set before any thread starts.
    std::env::set_var("SHOAL_BIN", &bin);
    let rt = util::runtime().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args, bin)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn find_shoal_bin(arg: Option<&Path>) -> Result<PathBuf> {
    let candidate = match (arg, std::env::var_os("SHOAL_BIN")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => std::env::current_exe()?
            .parent()
            .context("the binary has no directory")?
            .join("shoal"),
    };
    anyhow::ensure!(
        candidate.is_file(),
        "no shoal binary at {} (build it with `cargo build -p shoal`, or pass --shoal-bin)",
        candidate.display()
    );
    Ok(candidate.canonicalize()?)
}

/// What one stream delivered, stamped on arrival.
type Stamped<T> = (Instant, T);

/// The FrameworkInfo both frameworks subscribe with (v1 JSON).
fn framework_info() -> Json {
    json!({"user": "bench", "name": "shoal-offer-bench", "roles": ["*"],
           "capabilities": [{"type": "MULTI_ROLE"}]})
}

/// A framework on the v1 scheduler API: a reader task stamps events as they arrive.
struct Framework {
    caller: JsonCaller,
    events: mpsc::UnboundedReceiver<Stamped<Json>>,
    /// Events read while waiting for another one, kept for a later `wait`.
    unclaimed: Vec<Stamped<Json>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Framework {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Framework {
    async fn subscribe(master: &str) -> Result<Framework> {
        let sub = JsonSubscription::subscribe(master, framework_info(), STEP)
            .await
            .map_err(anyhow::Error::msg)?;
        let caller = sub.caller();
        let (events, reader) = sub.stamped_events();
        Ok(Framework {
            caller,
            events,
            unclaimed: Vec::new(),
            reader,
        })
    }

    async fn call(&self, call: Json) -> Result<()> {
        let ty = call["type"].clone();
        match self.caller.call(call).await.map_err(anyhow::Error::msg)? {
            (202, _) => Ok(()),
            (status, body) => bail!("{ty} answered {status}: {body}"),
        }
    }

    /// The first event matching `pred`, read before or now (UPDATEs are acknowledged as they
    /// are read; events that do not match are kept for later).
    async fn wait(&mut self, what: &str, pred: impl Fn(&Json) -> bool) -> Result<Stamped<Json>> {
        if let Some(i) = self.unclaimed.iter().position(|(_, e)| pred(e)) {
            return Ok(self.unclaimed.remove(i));
        }
        let until = Instant::now() + STEP;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let (at, e) = tokio::time::timeout(left, self.events.recv())
                .await
                .with_context(|| format!("timed out waiting for {what}"))?
                .with_context(|| format!("the event stream ended waiting for {what}"))?;
            if e["type"] == "UPDATE" {
                let s = &e["update"]["status"];
                if s["uuid"].is_string() {
                    self.call(json!({"type": "ACKNOWLEDGE", "acknowledge": {
                        "agent_id": s["agent_id"], "task_id": s["task_id"], "uuid": s["uuid"]}}))
                        .await?;
                }
            }
            if pred(&e) {
                return Ok((at, e));
            }
            if matches!(e["type"].as_str(), Some("UPDATE" | "OFFERS")) {
                self.unclaimed.push((at, e));
            }
        }
    }

    async fn wait_update(&mut self, task: &str, state: TaskState) -> Result<Instant> {
        let (at, _) = self
            .wait(&format!("UPDATE {task} {}", state.mesos_name()), |e| {
                let s = &e["update"]["status"];
                e["type"] == "UPDATE"
                    && s["task_id"]["value"] == task
                    && s["state"] == state.mesos_name()
            })
            .await?;
        Ok(at)
    }

    /// The next OFFERS event with an offer for the whole agent; that offer.
    async fn wait_full_offer(&mut self, total_cpus: f64) -> Result<Stamped<Json>> {
        let full = |o: &Json| {
            o["resources"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .filter(|r| r["name"] == "cpus")
                        .filter_map(|r| r["scalar"]["value"].as_f64())
                        .sum::<f64>()
                })
                .unwrap_or(0.0)
                >= total_cpus
        };
        let (at, e) = self
            .wait("an offer for the whole agent", |e| {
                e["type"] == "OFFERS"
                    && e["offers"]["offers"]
                        .as_array()
                        .is_some_and(|os| os.iter().any(full))
            })
            .await?;
        let offer = e["offers"]["offers"]
            .as_array()
            .and_then(|os| os.iter().find(|o| full(o)))
            .cloned()
            .expect("matched above");
        Ok((at, offer))
    }
}

/// One watch entry as the bench keeps it: arrival, version, the task states it carries.
type WatchEntry = (Instant, u64, Vec<(String, TaskState)>);

/// The native watch: task states, stamped on arrival.
struct Watch {
    rx: mpsc::UnboundedReceiver<WatchEntry>,
    version: u64,
    seen: HashMap<(String, TaskState), Instant>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Watch {
    async fn start(client: &Client) -> Result<Watch> {
        let version = client.state().await?.version;
        let stream = client.watch(version + 1).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(entry)) = stream.next().await {
                let at = Instant::now();
                let mut states = Vec::new();
                for ev in entry.events {
                    match ev {
                        Event::ClaimCommitted { tasks, .. } => {
                            states.extend(tasks.into_iter().map(|t| (t.id.to_string(), t.state)))
                        }
                        Event::TaskStatusChanged { task_id, state, .. } => {
                            states.push((task_id.to_string(), state))
                        }
                        _ => {}
                    }
                }
                if tx.send((at, entry.version, states)).is_err() {
                    return;
                }
            }
        });
        Ok(Watch {
            rx,
            version,
            seen: HashMap::new(),
            handle,
        })
    }

    /// When the watch delivered `task` in `state`, waiting for it if need be.
    async fn wait(&mut self, task: &str, state: TaskState) -> Result<Instant> {
        let key = (task.to_string(), state);
        let until = Instant::now() + STEP;
        loop {
            if let Some(at) = self.seen.get(&key) {
                return Ok(*at);
            }
            let left = until.saturating_duration_since(Instant::now());
            let (at, version, states) = tokio::time::timeout(left, self.rx.recv())
                .await
                .with_context(|| format!("watch: timed out waiting for {task} {state:?}"))?
                .context("the watch ended")?;
            self.version = version;
            for (t, s) in states {
                self.seen.entry((t, s)).or_insert(at);
            }
        }
    }
}

/// One run's figures, in milliseconds (signed: two streams may deliver one commit in either
/// order).
struct Run {
    /// Watch entry with the terminal state → OFFERS at the framework.
    commit_to_offer: f64,
    /// UPDATE with the terminal state → OFFERS, both on the framework's stream.
    update_to_offer: f64,
    /// Watch entry with the terminal state → UPDATE at the framework (no allocation).
    commit_to_update: f64,
    /// ACCEPT sent → UPDATE TASK_RUNNING at the framework.
    offer_launch: f64,
    /// ACCEPT sent → TASK_RUNNING in the native watch.
    offer_launch_watch: f64,
    /// Native claim sent → TASK_RUNNING in the native watch.
    native_launch: f64,
}

/// `b - a` in milliseconds, signed.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64() * 1e3
    } else {
        -((a - b).as_secs_f64() * 1e3)
    }
}

async fn one_run(
    i: usize,
    fw: &mut Framework,
    watch: &mut Watch,
    client: &Client,
    agent_id: &str,
    offer: Json,
) -> Result<(Run, Json)> {
    let res = ResourceSet::parse(TASK_RES)?;
    // 1. Offer → ACCEPT(LAUNCH) → TASK_RUNNING.
    let fw_task = format!("ob-f{i}");
    let mut task = command_task(&fw_task, &fw_task, &res, TASK_CMD);
    task["agent_id"] = offer["agent_id"].clone();
    let accepted = Instant::now();
    fw.call(json!({"type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
        "filters": {"refuse_seconds": REFUSE_SECONDS},
    }}))
    .await?;
    let offer_running = fw.wait_update(&fw_task, TaskState::Running).await?;
    let offer_running_watch = watch.wait(&fw_task, TaskState::Running).await?;

    // 2. The same task, claimed natively on the other half of the agent.
    let native_task = format!("ob-n{i}");
    let claim = ClaimRequest {
        claim_id: format!("{native_task}-claim"),
        role: "*".into(),
        owner: "shoal-offer-bench".into(),
        snapshot_version: watch.version,
        mode: CommitMode::AllOrNothing,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: vec![PlacementRequest::new(
            agent_id.to_string(),
            &command_task(&native_task, &native_task, &res, TASK_CMD),
        )],
    };
    let claimed = Instant::now();
    let answer = client.claim(&claim).await?;
    if answer.outcome.committed_version.is_none() {
        bail!(
            "native claim {native_task} not committed: {:?}",
            answer.outcome
        );
    }
    let native_running = watch.wait(&native_task, TaskState::Running).await?;
    client.kill(&native_task).await?;
    watch.wait(&native_task, TaskState::Killed).await?;

    // 3. The framework's task ends: the whole agent is offered again.
    fw.call(json!({"type": "KILL", "kill": {"task_id": {"value": fw_task}, "agent_id": {"value": agent_id}}}))
        .await?;
    let (offered_at, next) = fw.wait_full_offer(2.0).await?;
    let committed_at = watch.wait(&fw_task, TaskState::Killed).await?;
    let updated_at = fw.wait_update(&fw_task, TaskState::Killed).await?;
    fw.unclaimed.clear();
    let run = Run {
        commit_to_offer: ms_between(committed_at, offered_at),
        update_to_offer: ms_between(updated_at, offered_at),
        commit_to_update: ms_between(committed_at, updated_at),
        offer_launch: ms_between(accepted, offer_running),
        offer_launch_watch: ms_between(accepted, offer_running_watch),
        native_launch: ms_between(claimed, native_running),
    };
    Ok((run, next))
}

/// One v0 run: ACCEPT(LAUNCH) → StatusUpdateMessage TASK_RUNNING, in milliseconds, then the
/// task killed and the next offer for the whole agent.
async fn one_v0_run(
    i: usize,
    fw: &mut V0Framework,
    offer: shoal_proto::mesos::v1::Offer,
) -> Result<(f64, shoal_proto::mesos::v1::Offer)> {
    use shoal_proto::mesos::v1::TaskState as V1State;
    let res = ResourceSet::parse(TASK_RES)?;
    let task = format!("ob-v0-{i}");
    let info = v0::task_info(command_task(&task, &task, &res, TASK_CMD))?;
    let accepted = Instant::now();
    fw.accept(&offer, info, REFUSE_SECONDS).await?;
    let running = fw.wait_update(&task, V1State::TaskRunning).await?;
    fw.kill(&task, &offer.agent_id).await?;
    fw.wait_update(&task, V1State::TaskKilled).await?;
    let (_, next) = fw.wait_full_offer(2.0).await?;
    fw.unclaimed.clear();
    Ok((ms_between(accepted, running), next))
}

async fn run(args: Args, bin: PathBuf) -> Result<()> {
    let started = Instant::now();
    let runs = args.runs.unwrap_or(if args.smoke { 5 } else { 40 });
    util::header("shoal-offer-bench", args.smoke, &bin);
    param("runs", runs);
    param("master --allocation-interval", ALLOCATION_INTERVAL);

    let work = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("shoal-offer-bench-")
        .tempdir_in(work)?;
    let master = MasterProc::start(
        &dir.path().join("master"),
        &[
            "--agent-heartbeat-interval",
            "200ms",
            "--agent-ping-timeout",
            "10s",
            "--agent-unreachable-timeout",
            "60s",
            "--kill-grace",
            "200ms",
            "--allocation-interval",
            ALLOCATION_INTERVAL,
        ],
    );
    let hostname = format!("offer-bench-{}", std::process::id());
    let agent = shoal_tests::start_mesos_agent(
        &master.addr,
        &dir.path().join("agent"),
        &hostname,
        shoal_tests::MesosAgentSpec::process(AGENT_RES),
    );
    let client = master.client();
    let agent_id = wait_agents_active(&client, &[&hostname], Duration::from_secs(20))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?
        .remove(0);
    param("cell started in", ms(started.elapsed()));

    let mut watch = Watch::start(&client).await?;
    let mut fw = Framework::subscribe(&master.addr).await?;
    let (_, mut offer) = fw.wait_full_offer(2.0).await?;
    let mut results = Vec::new();
    for i in 0..runs {
        match one_run(i, &mut fw, &mut watch, &client, &agent_id, offer).await {
            Ok((r, next)) => {
                results.push(r);
                offer = next;
            }
            Err(e) => {
                let state = client.state_json(true).await.unwrap_or_default();
                eprintln!(
                    "run {i} failed: {e:#}\n----- state -----\n{state:#}\n----- master log (end) -----\n{}",
                    shoal_tests::tail(&master.log(), 60)
                );
                return Err(e);
            }
        }
    }

    // The v1 framework leaves (its last offer goes back), and a v0 framework takes its place.
    fw.call(json!({"type": "TEARDOWN"})).await?;
    drop(fw);
    let mut v0_fw = V0Framework::subscribe(&master.addr, framework_info(), STEP).await?;
    let (_, mut v0_offer) = v0_fw.wait_full_offer(2.0).await?;
    let mut v0_launch = Vec::new();
    for i in 0..runs {
        match one_v0_run(i, &mut v0_fw, v0_offer).await {
            Ok((r, next)) => {
                v0_launch.push(r);
                v0_offer = next;
            }
            Err(e) => {
                let state = client.state_json(true).await.unwrap_or_default();
                eprintln!(
                    "v0 run {i} failed: {e:#}\n----- state -----\n{state:#}\n----- master log (end) -----\n{}",
                    shoal_tests::tail(&master.log(), 60)
                );
                return Err(e);
            }
        }
    }

    let pick = |f: fn(&Run) -> f64| -> Vec<f64> { results.iter().map(f).collect() };
    let line = |name: &str, xs: &[f64], note: &str| {
        figure(
            name,
            format!("{:.3} / {:.3} ms", pctl(xs, 0.5), pctl(xs, 0.9)),
            note,
        )
    };
    let commit_to_offer = pick(|r| r.commit_to_offer);
    title(&format!(
        "(a) resources freed → OFFERS at the framework, median / p90 ({} runs)",
        results.len()
    ));
    line(
        "commit (watch) → OFFERS",
        &commit_to_offer,
        &format!(
            "target ≤ {TARGET_OFFER_MS} ms median: {}",
            met(pctl(&commit_to_offer, 0.5) <= TARGET_OFFER_MS)
        ),
    );
    line(
        "UPDATE TASK_KILLED → OFFERS (one stream)",
        &pick(|r| r.update_to_offer),
        "",
    );
    line(
        "baseline: commit (watch) → UPDATE",
        &pick(|r| r.commit_to_update),
        "same commit, no allocation: the delivery floor",
    );
    figure(
        "commit (watch) → OFFERS, max",
        format!("{:.3} ms", pctl(&commit_to_offer, 1.0)),
        "",
    );

    title("(b) launch round trip, interleaved in the same runs, median / p90");
    line(
        "ACCEPT(LAUNCH) → UPDATE TASK_RUNNING",
        &pick(|r| r.offer_launch),
        "at the framework",
    );
    line(
        "ACCEPT(LAUNCH) → TASK_RUNNING (watch)",
        &pick(|r| r.offer_launch_watch),
        "",
    );
    line(
        "baseline: native claim → TASK_RUNNING (watch)",
        &pick(|r| r.native_launch),
        "same task, same agent",
    );

    let line99 = |name: &str, xs: &[f64], note: &str| {
        figure(
            name,
            format!("{:.3} / {:.3} ms", pctl(xs, 0.5), pctl(xs, 0.99)),
            note,
        )
    };
    title(&format!(
        "(c) launch round trip by API, median / p99 ({} v0 runs after the {} above)",
        v0_launch.len(),
        results.len()
    ));
    line99(
        "v0: ACCEPT(LAUNCH) → TASK_RUNNING",
        &v0_launch,
        "libprocess: StatusUpdateMessage at the framework",
    );
    line99(
        "v1: ACCEPT(LAUNCH) → TASK_RUNNING",
        &pick(|r| r.offer_launch),
        "HTTP: UPDATE at the framework",
    );
    line99(
        "native: claim → TASK_RUNNING",
        &pick(|r| r.native_launch),
        "in the watch",
    );
    println!();
    param("load average at end", loadavg());
    param("total time", ms(started.elapsed()));
    drop(v0_fw);
    drop(agent);
    Ok(())
}

/// The `p` quantile (nearest rank) of `xs`.
fn pctl(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
