//! `shoal`: the master, the agent, a dev cell, and client verbs, in one binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "shoal", version, about = "Shoal: a cluster manager with shared optimistic state and the Mesos scheduler API")]
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
    Master(MasterArgs),
    /// Run a whole cell on loopback (master + agent) and a sample job on it.
    Dev(DevArgs),
    /// Print the cell's state (agents, tasks, roles) as JSON.
    State(ClientArgs),
}

#[derive(Args)]
struct MasterArgs {
    /// Address to listen on; port 0 picks a free port (written to <work-dir>/master.addr).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Directory for the store (`shoal.redb`) and `master.addr`.
    #[arg(long = "work-dir", alias = "work_dir")]
    work_dir: PathBuf,
    /// Log entries kept for watches to resume from (older ones are compacted away).
    #[arg(long = "log-retain", default_value_t = 100_000)]
    log_retain: u64,
}

#[derive(Args)]
struct DevArgs {
    /// Address of the master.
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Work directory (default: a fresh temporary directory).
    #[arg(long = "work-dir", alias = "work_dir")]
    work_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ClientArgs {
    /// The master's address.
    #[arg(long, env = "SHOAL_ADDR", default_value = "http://127.0.0.1:5050")]
    address: String,
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

async fn run_master(args: MasterArgs) -> anyhow::Result<()> {
    let store = shoal_master::open_store(&args.work_dir)?;
    let config = shoal_master::CommitConfig { log_retain_entries: args.log_retain };
    let core = shoal_master::MasterCore::start_with(store, config)?;
    let listener = shoal_master::bind(args.listen, &args.work_dir).await?;
    shoal_master::serve(listener, core.router(), shutdown_signal()).await
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let tmp;
    let work_dir = match args.work_dir {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new().prefix("shoal-dev-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let master_dir = work_dir.join("master");
    std::fs::create_dir_all(&master_dir)?;
    let store = shoal_master::open_store(&master_dir)?;
    let core = shoal_master::MasterCore::start(store)?;
    let listener = shoal_master::bind(args.listen, &master_dir).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(shoal_master::serve(listener, core.router(), shutdown_signal()));
    eprintln!("shoal dev: master on http://{addr} (work dir {})", work_dir.display());
    server.await.context("server task")??;
    Ok(())
}

async fn run_state(args: ClientArgs) -> anyhow::Result<()> {
    let client = shoal_client::Client::new(&args.address)?;
    let state = client.state_json(true).await?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Cmd::Master(a) => run_master(a).await,
            Cmd::Dev(a) => run_dev(a).await,
            Cmd::State(a) => run_state(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let _ = Arc::new(());
}
