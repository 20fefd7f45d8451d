//! `shoal`: the master, the agent, a dev cell, and client verbs, in one binary.

use clap::{Parser, Subcommand};

mod agent;
mod dev;
mod job;
mod master;
mod quota;
mod service;
mod state;
mod zk;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a cluster manager with shared optimistic state and the Mesos scheduler API"
)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `shoal_master=debug`.
    #[arg(long, global = true, env = "SHOAL_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a master: the cell's shared state, the commit path and the APIs.
    Master(master::MasterArgs),
    /// Run an agent: join a master and run the tasks it assigns.
    Agent(agent::AgentArgs),
    /// Run a whole cell on loopback (master + agent) and a sample job on it.
    Dev(dev::DevArgs),
    /// Print the cell's state (agents, tasks, roles) as JSON.
    State(state::ClientArgs),
    /// Batch jobs: run, plan, status, stop, logs.
    Job {
        #[command(subcommand)]
        cmd: job::JobCmd,
    },
    /// Long-running services: run, status, scale, stop.
    Service {
        #[command(subcommand)]
        cmd: service::ServiceCmd,
    },
    /// Teams: set and list each role's weight, guarantee and limit.
    Quota {
        #[command(subcommand)]
        cmd: quota::QuotaCmd,
    },
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

fn main() {
    keep_freed_memory_a_while();
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The one clock the master and dev cells read time from.
    let clock = shoal_core::clock::SystemClock::shared();
    let result = rt.block_on(async move {
        match cli.command {
            Cmd::Master(a) => master::run_master(a, clock).await,
            Cmd::Agent(a) => match agent::agent_config(&a).await {
                Ok(c) => Ok(shoal_agent::run_until(c, agent::agent_stop_signal()).await?),
                Err(e) => Err(e),
            },
            Cmd::Dev(a) => dev::run_dev(a, clock).await,
            Cmd::State(a) => state::run_state(a).await,
            Cmd::Quota { cmd } => quota::run(cmd).await,
            Cmd::Job { cmd } => match job::run(cmd).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            },
            Cmd::Service { cmd } => match service::run(cmd).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            },
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// mimalloc: the commit path allocates many small, short-lived records; glibc's allocator
/// spent a third of the commit loop consolidating free chunks (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives freed memory back to the OS 10 ms after it is freed; the master frees and
/// allocates again at a steady rate (replaced snapshots, store pages), so every page came back
/// zeroed by the kernel: `clear_page` was a tenth of the master's CPU in the C1M benchmark.
/// Freed memory is kept for a second before it is returned (`MIMALLOC_PURGE_DELAY`, in ms,
/// still sets it).
fn keep_freed_memory_a_while() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // mimalloc's public C API (`mimalloc.h`), linked through `libmimalloc-sys`.
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in `mi_option_t` (the same index in mimalloc v2 and v3).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    const PURGE_DELAY_MS: std::ffi::c_long = 1_000;
    // SAFETY: sets a process-wide option by its documented index; called once, first thing
    // in `main`, before any other thread exists.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// Every client verb takes the master the same way: `--master`, or its alias `--address`.
    #[test]
    fn every_client_verb_takes_master_and_address() {
        let verbs: [&[&str]; 9] = [
            &["state"],
            &["job", "status"],
            &["job", "stop", "j"],
            &["job", "logs", "j", "t"],
            &["service", "status"],
            &["service", "scale", "s", "2"],
            &["service", "stop", "s"],
            &["quota", "list"],
            &["quota", "set", "team", "--weight", "1"],
        ];
        for verb in verbs {
            for flag in ["--master", "--address"] {
                let mut argv = vec!["shoal"];
                argv.extend_from_slice(verb);
                argv.extend_from_slice(&[flag, "http://127.0.0.1:1"]);
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("{}: {e}", argv.join(" "));
                }
            }
        }
    }
}
