//! `shoal-bench`: how fast Shoal commits, next to a baseline measured in the same run.
//!
//! Not a timed test: it prints figures, with the baseline and the target beside each.
//!
//! ```text
//! cargo run -p shoal-bench -- --smoke          # tiny scale, < 60 s in a debug build (CI)
//! cargo run --release -p shoal-bench           # the full scale, by hand
//! shoal-bench [--smoke] [--work-dir DIR] [--only a,b,c,d,e] [--shoal-bin PATH]
//! ```
//!
//! Phases: (a) the commit path in process; (b) the C1M shape over HTTP against the real
//! master binary, then SIGKILL and restart; (c) conflicts, fine vs coarse; (d) snapshot time;
//! (e) churn: memory and store size under task churn, in process.

mod churn;
mod disk;
mod http;
mod inproc;
mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;

use util::*;

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Shoal's benchmark: figures next to a baseline measured in the same run"
)]
struct Args {
    /// A tiny scale that finishes in under a minute in a debug build (for CI).
    #[arg(long)]
    smoke: bool,
    /// Where stores and logs go (must be a real disk, not tmpfs). Default: next to this
    /// binary, in the target dir.
    #[arg(long = "work-dir")]
    work_dir: Option<PathBuf>,
    /// Phases to run, comma-separated: a (commit path), b (C1M over HTTP), c (conflicts),
    /// d (snapshots), e (churn).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    only: Vec<String>,
    /// The `shoal` binary for the HTTP phases. Default: the one next to this binary, else
    /// target/release/shoal or target/debug/shoal.
    #[arg(long = "shoal-bin")]
    shoal_bin: Option<PathBuf>,
    /// Override the number of jobs of phase (b) (1,000 tasks each at full scale).
    #[arg(long = "b-jobs")]
    b_jobs: Option<usize>,
    /// Override the number of task lifecycles of phase (e) (10,000,000 at full scale).
    #[arg(long = "e-lifecycles")]
    e_lifecycles: Option<u64>,
    /// (b): claims each scheduler client keeps in flight.
    #[arg(long = "b-inflight", default_value_t = 4)]
    b_inflight: usize,
    /// An extra argument for `shoal master` (repeat for several).
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    master_arg: Vec<String>,
    /// Keep the run's work dir (stores, master logs) instead of removing it.
    #[arg(long = "keep-work-dir")]
    keep_work_dir: bool,
}

struct Scale {
    a: inproc::ScaleA,
    b: http::ScaleB,
    c: inproc::ScaleC,
    d_agents: usize,
    d_requests: usize,
    e: churn::ScaleE,
    sync_span: Duration,
    phase_limit: Duration,
    run_limit: Duration,
}

fn scale(
    smoke: bool,
    b_jobs: Option<usize>,
    b_inflight: usize,
    e_lifecycles: Option<u64>,
) -> Scale {
    if smoke {
        Scale {
            a: inproc::ScaleA {
                agents: 500,
                placements: 10_000,
                schedulers: 8,
                claim: 100,
            },
            b: http::ScaleB {
                agents: 200,
                jobs: b_jobs.unwrap_or(10),
                tasks_per_job: 200,
                clients: 8,
                claim: 100,
                inflight: b_inflight,
            },
            c: inproc::ScaleC {
                agents: 500,
                rounds: 2,
                schedulers: 8,
                claim: 100,
                window: 128,
            },
            d_agents: 500,
            d_requests: 5,
            e: churn::ScaleE {
                agents: 100,
                live: 200,
                lifecycles: e_lifecycles.unwrap_or(50_000),
                workers: 16,
                claim: 4,
                smoke: true,
                limit: Duration::from_secs(60),
            },
            sync_span: Duration::from_millis(300),
            phase_limit: Duration::from_secs(40),
            run_limit: Duration::from_secs(150),
        }
    } else {
        Scale {
            a: inproc::ScaleA {
                agents: 10_000,
                placements: 200_000,
                schedulers: 8,
                claim: 100,
            },
            b: http::ScaleB {
                agents: 10_000,
                jobs: b_jobs.unwrap_or(1_000),
                tasks_per_job: 1_000,
                clients: 8,
                claim: 100,
                inflight: b_inflight,
            },
            c: inproc::ScaleC {
                agents: 5_000,
                rounds: 25,
                schedulers: 8,
                claim: 100,
                window: 128,
            },
            d_agents: 10_000,
            d_requests: 20,
            e: churn::ScaleE {
                agents: 10_000,
                live: 1_000,
                lifecycles: e_lifecycles.unwrap_or(10_000_000),
                workers: 16,
                claim: 4,
                smoke: false,
                // 10,000,000 lifecycles at a few thousand a second.
                limit: Duration::from_secs(4 * 3600),
            },
            sync_span: Duration::from_secs(1),
            phase_limit: Duration::from_secs(20 * 60),
            run_limit: Duration::from_secs(60 * 60),
        }
    }
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("shoal-bench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Returns whether every phase ran.
fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    let s = scale(args.smoke, args.b_jobs, args.b_inflight, args.e_lifecycles);
    for p in &args.only {
        if !["a", "b", "c", "d", "e"].contains(&p.as_str()) {
            bail!("unknown phase '{p}' (phases: a, b, c, d, e)");
        }
    }
    let want = |p: &str| args.only.iter().any(|x| x == p);

    // The work dir, on a real disk.
    let base = match &args.work_dir {
        Some(d) => d.clone(),
        None => default_work_dir()?,
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let base = base.canonicalize()?;
    let (magic, fs) = disk::fs_type(&base)?;
    println!(
        "shoal-bench: {} scale, {} build",
        if args.smoke { "smoke" } else { "full" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    param(
        "machine",
        format!(
            "{} cores; load average {} (other work on the machine skews every figure)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            loadavg()
        ),
    );
    param("work dir", base.display());
    param("filesystem", format!("{fs} (statfs f_type 0x{magic:x})"));
    disk::refuse_memory_fs(&base)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let dir = base.join(format!("run-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // A watchdog: whatever hangs, the run ends, and the masters it started with it.
    let limit = s.run_limit + if want("e") { s.e.limit } else { Duration::ZERO };
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("shoal-bench: the whole run took longer than {limit:?}: stopping");
        http::kill_all_children();
        std::process::exit(3);
    });

    let sync = disk::fdatasync_rate(&dir, s.sync_span)?;
    param(
        "raw fdatasync (4 KiB write + fdatasync)",
        format!(
            "median {} per sync, p99 {}, {} syncs/s ({} in {})",
            ms(sync.median),
            ms(sync.p99),
            rate(per_s(sync.syncs, sync.elapsed)).trim_end_matches("/s"),
            int(sync.syncs),
            secs(sync.elapsed)
        ),
    );

    let bin = if want("b") || want("d") {
        Some(shoal_bin(args.shoal_bin.as_deref())?)
    } else {
        None
    };
    if let Some(b) = &bin {
        let age = std::fs::metadata(b)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        let age = age
            .map(|a| format!("built {} min ago", a.as_secs() / 60))
            .unwrap_or_default();
        param(
            "shoal binary (phases b, d)",
            format!("{} ({age})", b.display()),
        );
    }
    // The benchmark's agents are registered over HTTP and never connect: keep the master from
    // marking them unreachable (after 75 s by default) in the middle of a long run.
    let mut master_args = args.master_arg.clone();
    if !master_args
        .iter()
        .any(|a| a.starts_with("--agent-unreachable-timeout"))
    {
        master_args.extend(["--agent-unreachable-timeout".to_string(), "24h".to_string()]);
    }
    let mut failed = Vec::new();
    let mut phase = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            println!("  PHASE ({name}) FAILED: {e:#}");
            failed.push(name.to_string());
        }
    };
    if want("a") {
        phase("a", inproc::phase_a(&dir, &s.a, s.phase_limit));
    }
    if want("b") {
        let bin = bin.as_deref().expect("resolved");
        phase(
            "b",
            http::phase_b(bin, &dir.join("b"), s.b, &master_args, s.phase_limit),
        );
    }
    if want("c") {
        phase("c", inproc::phase_c(&dir, &s.c, s.phase_limit));
    }
    if want("d") {
        phase("d", inproc::phase_d_inproc(&dir, s.d_agents, s.phase_limit));
        let bin = bin.as_deref().expect("resolved");
        phase(
            "d",
            http::phase_d_http(
                bin,
                &dir.join("d-http"),
                s.d_agents,
                s.d_requests,
                &master_args,
                s.phase_limit,
            ),
        );
    }
    if want("e") {
        phase("e", churn::phase_e(&dir, &s.e));
    }

    if args.keep_work_dir {
        println!("\nkept {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("shoal-bench: could not remove {}: {e}", dir.display());
    }
    println!();
    param("total time", secs(started.elapsed()));
    param("load average at the end", loadavg());
    if failed.is_empty() {
        println!("all phases ran");
        Ok(true)
    } else {
        println!("FAILED phases: {}", failed.join(", "));
        Ok(false)
    }
}

/// `<target>/<profile>/shoal-bench-work`, next to this binary.
fn default_work_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the binary has no directory")?;
    Ok(dir.join("shoal-bench-work"))
}

/// The `shoal` binary: `--shoal-bin`, else next to this binary, else the workspace's
/// target/release or target/debug; under `cargo run`, built when missing.
fn shoal_bin(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--shoal-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let exe_dir = exe
        .parent()
        .context("the binary has no directory")?
        .to_path_buf();
    let mut candidates = vec![exe_dir.join("shoal")];
    for profile in ["release", "debug"] {
        candidates.push(PathBuf::from("target").join(profile).join("shoal"));
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    // Under `cargo run` the cargo that built us is known: build `shoal` with the same
    // profile into the same target dir.
    let cargo = std::env::var_os("CARGO");
    let profile = exe_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|r| r.join("Cargo.toml"));
    if let (Some(cargo), true, Some(manifest), Some(target)) = (
        cargo,
        profile == "debug" || profile == "release",
        manifest,
        exe_dir.parent(),
    ) {
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "shoal", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target);
        if profile == "release" {
            cmd.arg("--release");
        }
        eprintln!(
            "shoal-bench: {} not found; building it ({cmd:?}), not counted in any figure",
            exe_dir.join("shoal").display()
        );
        let status = cmd.status().context("running cargo build -p shoal")?;
        if status.success() && exe_dir.join("shoal").is_file() {
            return Ok(exe_dir.join("shoal"));
        }
    }
    bail!(
        "no `shoal` binary next to {} nor in target/{{release,debug}}: build it (cargo build [--release] -p shoal) or pass --shoal-bin",
        exe.display()
    )
}

/// mimalloc: the commit path allocates many small, short-lived records; glibc's allocator
/// spent a third of the commit loop consolidating free chunks (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
