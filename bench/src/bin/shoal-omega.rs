//! The Omega experiment (Schwarzkopf et al., EuroSys 2013, sections 3–5) on Shoal's sans-IO
//! core, in virtual time: a batch and a service scheduler share a cell of 10,000 agents
//! pre-filled to ~60 %, while the service scheduler's per-job decision time sweeps up to
//! 100 s. (a) Both schedulers native on shared state (optimistic claims); (b) the service
//! scheduler a Mesos framework on offers from the compat allocator (per-framework offer cap
//! off and on); (c) incremental vs all-or-nothing commits and fine vs coarse conflict checks.
//! It prints the parameters and a table, draws `bench/omega.svg`, and checks the paper's
//! trends (exit 1 when one fails).
//!
//! ```text
//! cargo run -p shoal-bench --bin shoal-omega -- --smoke                # CI scale, seconds
//! cargo build --release -p shoal-bench --bin shoal-omega
//! target/release/shoal-omega                                           # full scale
//! ```

// The simulation makes and frees millions of small records (resource sets, holds, tasks);
// glibc's allocator spent a third of the run consolidating free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../omega/plot.rs"]
mod plot;
#[path = "../omega/sim.rs"]
mod sim;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use shoal_core::{CommitMode, ConflictCheck};
use sim::{Mode, Params, RunResult, Workload};

#[derive(Parser)]
#[command(about = "The Omega experiment on the sans-IO core, in virtual time")]
struct Args {
    /// Reduced cell and sweep (seconds in a debug build).
    #[arg(long)]
    smoke: bool,
    /// Where to draw the plot (SVG). Default: bench/omega.svg at full scale, none at smoke.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seed of every random choice (workload, pre-fill, placement).
    #[arg(long, default_value_t = 2013)]
    seed: u64,
    /// Run only the configurations whose label contains this (e.g. "offers"); the trends are
    /// then not checked.
    #[arg(long)]
    only: Option<String>,
    /// Service t_job values to sweep instead of the default (seconds, comma-separated).
    #[arg(long, value_delimiter = ',')]
    t_job: Option<Vec<f64>>,
    /// Seconds a declined offer's agent stays out of the service framework's offers (Mesos's
    /// `refuse_seconds`; the paper's simulator: 0).
    #[arg(long, default_value_t = 0.0)]
    decline_filter: f64,
    /// Print each run's counters (attempts, tasks, commands, allocation rounds, offers).
    #[arg(long)]
    verbose: bool,
}

/// The Mesos default allocation interval, and Shoal's default offer cap.
const ALLOCATION_INTERVAL_S: f64 = 1.0;
const OFFER_CAP: usize = 64;

fn params(smoke: bool, seed: u64) -> Params {
    let batch = Workload {
        name: "batch",
        interarrival_s: 2.0,
        tasks_mean: 60.0,
        tasks_max: 1_000,
        task_cpus: 2.0,
        task_mem_mb: 4096.0,
        duration_mean_s: 60.0,
    };
    let service = Workload {
        name: "service",
        interarrival_s: 40.0,
        tasks_mean: 20.0,
        tasks_max: 200,
        task_cpus: 2.0,
        task_mem_mb: 8192.0,
        duration_mean_s: 3_600.0,
    };
    let full = Params {
        agents: 10_000,
        agent_cpus: 4.0,
        agent_mem_mb: 16_384.0,
        prefill_fraction: 0.6,
        prefill_task_cpus: 0.5,
        prefill_task_mem_mb: 2048.0,
        duration_s: 900.0,
        batch,
        service,
        t_job_batch_s: 0.1,
        t_task_s: 0.005,
        max_attempts: 1_000,
        retry_delay_s: 1.0,
        allocation_interval_s: ALLOCATION_INTERVAL_S,
        decline_filter_s: 0.0,
        seed,
    };
    if !smoke {
        return full;
    }
    // A tenth of the cell with a tenth of the batch tasks per job keeps the rate of batch
    // placements per agent (what makes conflicts) the same; service tasks end sooner so that
    // the smaller cell does not fill up with them.
    Params {
        agents: 1_000,
        duration_s: 600.0,
        batch: Workload {
            tasks_mean: 6.0,
            ..full.batch.clone()
        },
        service: Workload {
            duration_mean_s: 60.0,
            ..full.service.clone()
        },
        ..full
    }
}

fn sweep(smoke: bool) -> Vec<f64> {
    if smoke {
        vec![1.0, 30.0]
    } else {
        vec![0.1, 1.0, 10.0, 30.0, 100.0]
    }
}

fn main() {
    let args = Args::parse();
    let wall = Instant::now();
    let p = Params {
        decline_filter_s: args.decline_filter,
        ..params(args.smoke, args.seed)
    };
    let t_jobs = args.t_job.clone().unwrap_or_else(|| sweep(args.smoke));
    println!(
        "shoal-omega: {} scale, {} build",
        if args.smoke { "smoke" } else { "full" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let t = Instant::now();
    let (base, ids, fill) = sim::prefilled_cell(&p);
    let workload = sim::generate(&p);
    print_params(&p, fill, &t_jobs, t.elapsed().as_secs_f64());

    let shared = |commit, check| Mode::SharedState { commit, check };
    let (inc, gang) = (CommitMode::Incremental, CommitMode::AllOrNothing);
    let (fine, coarse) = (ConflictCheck::Fine, ConflictCheck::Coarse);
    let modes = [
        shared(inc, fine),
        Mode::Offers { cap: 0 },
        Mode::Offers { cap: OFFER_CAP },
        shared(gang, fine),
        shared(inc, coarse),
        shared(gang, coarse),
    ];
    let mut results: Vec<RunResult> = Vec::new();
    println!();
    println!("{}", header());
    let selected = |m: &Mode| {
        args.only
            .as_ref()
            .is_none_or(|o| m.label().contains(o.as_str()))
    };
    for mode in modes.into_iter().filter(selected) {
        for &tj in &t_jobs {
            let r = sim::run(&p, &base, &ids, &workload, mode, tj);
            println!("{}", row(&r));
            if args.verbose {
                println!(
                    "    attempts {} + {}, tasks committed {}, commands {}, allocation rounds {}, offers {}",
                    r.batch.attempts, r.service.attempts, r.tasks_committed, r.commands, r.rounds, r.offers
                );
            }
            results.push(r);
        }
    }
    let sim_wall: f64 = results.iter().map(|r| r.wall_s).sum();
    println!();
    println!(
        "wall time: {:.1} s in all ({:.1} s simulating {} runs of {:.0} s of virtual time each)",
        wall.elapsed().as_secs_f64(),
        sim_wall,
        results.len(),
        p.duration_s
    );

    let partial = args.only.is_some() || args.t_job.is_some();
    let plot_path = args.plot.clone().or_else(|| {
        (!args.smoke && !partial)
            .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("omega.svg"))
    });
    if let Some(path) = plot_path {
        match plot::draw(&path, &results, &t_jobs) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => {
                eprintln!("shoal-omega: cannot draw {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }

    if partial {
        println!("(a partial sweep: the trends are not checked)");
        return;
    }
    let failed = check_trends(&results, &t_jobs, args.smoke);
    if failed > 0 {
        eprintln!("shoal-omega: {failed} trend(s) of the paper not reproduced");
        std::process::exit(1);
    }
}

fn print_params(p: &Params, fill: f64, t_jobs: &[f64], build_s: f64) {
    println!("  cell                 {} agents x cpus:{};mem:{}, pre-filled to {:.1} % (long-running tasks cpus:{};mem:{}, Binomial per agent), built in {:.1} s",
        p.agents, p.agent_cpus, p.agent_mem_mb, fill * 100.0, p.prefill_task_cpus, p.prefill_task_mem_mb, build_s);
    for w in [&p.batch, &p.service] {
        println!(
            "  {:<8} workload     arrivals every {} s (exp), {} tasks/job (exp, max {}), task cpus:{};mem:{}, runs {} s (exp)",
            w.name, w.interarrival_s, w.tasks_mean, w.tasks_max, w.task_cpus, w.task_mem_mb, w.duration_mean_s
        );
    }
    println!(
        "  decision time        t_job + t_task x tasks; t_task = {} s; batch t_job = {} s; service t_job swept: {:?} s",
        p.t_task_s, p.t_job_batch_s, t_jobs
    );
    println!(
        "  retries              tasks not committed retry after {} s; a job is abandoned after {} attempts",
        p.retry_delay_s, p.max_attempts
    );
    println!(
        "  offers               compat allocator every {} s while the framework waits with jobs; cap off (0) or {} offers; declines filter agents for {} s",
        p.allocation_interval_s, OFFER_CAP, p.decline_filter_s
    );
    println!(
        "  virtual time         {} s per run, seed {}",
        p.duration_s, p.seed
    );
}

fn header() -> String {
    format!(
        "{:<40} {:>7} | {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} | {:>11} {:>9} | {:>6}",
        "configuration",
        "svc tjob",
        "b wait",
        "b median",
        "b busy",
        "s busy",
        "b confl",
        "s confl",
        "b done/ab",
        "s done/ab",
        "wall"
    ) + "\n"
        + &format!(
            "{:<40} {:>7} | {:>9} {:>9} | {:>6} {:>6} | {:>8} {:>8} | {:>11} {:>9} | {:>6}",
            "", "s", "mean s", "s", "", "", "per job", "per job", "/jobs", "/jobs", "s"
        )
}

fn row(r: &RunResult) -> String {
    let (b, s) = (&r.batch, &r.service);
    format!(
        "{:<40} {:>7} | {:>9.2} {:>9.2} | {:>6.2} {:>6.2} | {:>8.3} {:>8.3} | {:>11} {:>9} | {:>6.1}",
        r.mode.label(),
        r.t_job_service_s,
        b.wait_mean_s,
        b.wait_median_s,
        b.busyness,
        s.busyness,
        b.conflicts_per_job(),
        s.conflicts_per_job(),
        format!("{}/{}/{}", b.fully_scheduled, b.abandoned, b.jobs),
        format!("{}/{}/{}", s.fully_scheduled, s.abandoned, s.jobs),
        r.wall_s
    )
}

/// Checks the paper's trends; returns how many failed. At smoke scale (a few hundred small
/// batch jobs, some twenty service jobs) only that offers without a cap do not shorten batch
/// waits as service decisions slow down, and that coarse checks and gang commits do not lower
/// service conflicts.
fn check_trends(results: &[RunResult], t_jobs: &[f64], smoke: bool) -> usize {
    let find = |mode: Mode| -> Vec<&RunResult> {
        let mut v: Vec<&RunResult> = results.iter().filter(|r| r.mode == mode).collect();
        v.sort_by(|a, b| a.t_job_service_s.total_cmp(&b.t_job_service_s));
        v
    };
    let shared = |commit, check| Mode::SharedState { commit, check };
    let base = find(shared(CommitMode::Incremental, ConflictCheck::Fine));
    let offers = find(Mode::Offers { cap: 0 });
    let waits = |rs: &[&RunResult]| -> Vec<String> {
        rs.iter()
            .map(|r| format!("{}s:{:.2}", r.t_job_service_s, r.batch.wait_mean_s))
            .collect()
    };
    // Service conflicts over the sweep: attempts with a rejection per job started.
    let conflicts = |mode: Mode| -> f64 {
        let rs = find(mode);
        let c: u64 = rs.iter().map(|r| r.service.conflicts).sum();
        let j: usize = rs.iter().map(|r| r.service.started).sum();
        c as f64 / j.max(1) as f64
    };
    let mut checks: Vec<(String, bool, String)> = Vec::new();
    let (lo, hi) = (t_jobs[0], t_jobs[t_jobs.len() - 1]);

    let first = |rs: &[&RunResult]| rs.first().map(|r| r.batch.wait_mean_s).unwrap_or(0.0);
    let last = |rs: &[&RunResult]| rs.last().map(|r| r.batch.wait_mean_s).unwrap_or(0.0);
    // Small batch jobs in a small cell fit into what frees up while the service framework holds
    // the rest, so at smoke scale the wait only has to not fall.
    let (rises, how) = if smoke {
        (last(&offers) >= first(&offers), "does not fall")
    } else {
        (
            last(&offers) >= 5.0 * first(&offers) && last(&offers) >= first(&offers) + 1.0,
            "rises: at least 5x and +1 s",
        )
    };
    checks.push((
        format!("offers, cap off: batch wait {how} from service t_job {lo} s to {hi} s"),
        rises,
        waits(&offers).join(" "),
    ));
    let gang = conflicts(shared(CommitMode::AllOrNothing, ConflictCheck::Fine));
    let coarse = conflicts(shared(CommitMode::Incremental, ConflictCheck::Coarse));
    let fine = conflicts(shared(CommitMode::Incremental, ConflictCheck::Fine));
    // At smoke scale a handful of service jobs cannot separate the modes: only "not lower".
    let (raise, word) = if smoke {
        (gang >= fine && coarse >= fine, "do not lower")
    } else {
        (gang > fine && coarse > fine, "raise")
    };
    checks.push((
        format!("all-or-nothing commits and coarse checks {word} service conflicts per job (whole sweep)"),
        raise,
        format!("all-or-nothing {gang:.3}, coarse {coarse:.3}, incremental fine {fine:.3}"),
    ));
    if !smoke {
        let min = base
            .iter()
            .map(|r| r.batch.wait_mean_s)
            .fold(f64::MAX, f64::min);
        let max = base.iter().map(|r| r.batch.wait_mean_s).fold(0.0, f64::max);
        checks.push((
            "shared state: batch wait stays flat as service t_job grows (max <= 1.5 x min + 0.1 s)"
                .into(),
            max <= 1.5 * min + 0.1,
            waits(&base).join(" "),
        ));
        let o = offers.last().map(|r| r.batch.wait_mean_s).unwrap_or(0.0);
        let b = base.last().map(|r| r.batch.wait_mean_s).unwrap_or(0.0);
        checks.push((
            format!("at service t_job {hi} s batch waits far longer on offers (cap off) than on shared state (10x)"),
            o >= 10.0 * b,
            format!("{o:.2} s vs {b:.2} s"),
        ));
        let per_job: Vec<String> = base
            .iter()
            .map(|r| {
                format!(
                    "{}s:{:.2}",
                    r.t_job_service_s,
                    r.service.conflicts_per_job()
                )
            })
            .collect();
        let below = base
            .iter()
            .filter(|r| r.t_job_service_s < 10.0)
            .all(|r| r.service.conflicts_per_job() < 1.0);
        let above = base
            .iter()
            .filter(|r| r.t_job_service_s >= 10.0)
            .any(|r| r.service.conflicts_per_job() > 1.0);
        checks.push((
            "shared state: service conflicts per job stay below 1 under t_job 10 s and exceed 1 from 10 s on".into(),
            below && above,
            per_job.join(" "),
        ));
    }
    println!();
    println!(
        "trends of the paper{}:",
        if smoke {
            " (smoke scale: only what a 1,000-agent, 10-minute run shows)"
        } else {
            ""
        }
    );
    let mut failed = 0;
    for (name, ok, detail) in &checks {
        println!("  [{}] {name}: {detail}", if *ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    failed
}
