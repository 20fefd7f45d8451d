//! `shoal`: the master, the agent, a dev cell, and client verbs, in one binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Run an agent: join a master and run the tasks it assigns.
    Agent(AgentArgs),
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
    #[command(flatten)]
    timers: MasterTimers,
}

#[derive(Args, Clone)]
struct MasterTimers {
    /// How often agents heartbeat.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    agent_heartbeat_interval: Duration,
    /// A connected agent silent this long is disconnected.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    agent_ping_timeout: Duration,
    /// An agent away this long is unreachable (its tasks TASK_UNREACHABLE, resources kept).
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    agent_unreachable_timeout: Duration,
    /// An unreachable agent away this much longer is gone (its tasks TASK_GONE).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    agent_gone_timeout: Duration,
    /// Grace period between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
}

impl MasterTimers {
    fn agent_timers(&self) -> shoal_master::agents::AgentTimers {
        shoal_master::agents::AgentTimers {
            heartbeat_interval: self.agent_heartbeat_interval,
            ping_timeout: self.agent_ping_timeout,
            unreachable_after: self.agent_unreachable_timeout,
            gone_after: self.agent_gone_timeout,
            kill_grace: self.kill_grace,
        }
    }
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// The master's URL.
    #[arg(long, env = "SHOAL_MASTER", default_value = "http://127.0.0.1:5050")]
    master: String,
    /// Directory for the journal, executor state and task sandboxes.
    #[arg(long = "work-dir", alias = "work_dir")]
    work_dir: PathBuf,
    /// Resources to offer, Mesos text form (detected from the host when absent).
    #[arg(long)]
    resources: Option<String>,
    /// Attributes, e.g. "rack:r1;zone:a".
    #[arg(long, default_value = "")]
    attributes: String,
    /// The hostname to register (default: the host's name).
    #[arg(long)]
    hostname: Option<String>,
    /// Executors to offer, comma-separated: docker, process.
    #[arg(long, default_value = "docker,process")]
    containerizers: String,
    /// The Docker daemon's socket.
    #[arg(long, default_value = "/var/run/docker.sock")]
    docker_socket: String,
    /// Heartbeat interval (the master may ask for a shorter one).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Longest wait between attempts to reach the master.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reregister_backoff_max: Duration,
    /// Default grace period between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Resend unacknowledged status updates after this long (doubling, up to 16x).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_retry: Duration,
    /// Remove leftovers (containers, records) of tasks that ended this long ago.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    gc_delay: Duration,
}

fn parse_attributes(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(':').with_context(|| format!("attribute '{part}' must be name:value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn agent_config(a: &AgentArgs) -> anyhow::Result<shoal_agent::AgentConfig> {
    std::fs::create_dir_all(&a.work_dir).with_context(|| format!("creating {}", a.work_dir.display()))?;
    let resources = match &a.resources {
        Some(r) => shoal_core::ResourceSet::parse(r).context("--resources")?,
        None => shoal_agent::host::detect(&a.work_dir),
    };
    let containerizers: Vec<String> = a.containerizers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if let Some(bad) = containerizers.iter().find(|c| *c != "docker" && *c != "process") {
        anyhow::bail!("--containerizers: unknown executor '{bad}' (use docker, process)");
    }
    let hostname = match &a.hostname {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into()),
    };
    Ok(shoal_agent::AgentConfig {
        master: a.master.clone(),
        work_dir: a.work_dir.canonicalize()?,
        hostname,
        resources,
        attributes: parse_attributes(&a.attributes)?,
        domain: None,
        containerizers,
        docker_socket: a.docker_socket.clone(),
        heartbeat_interval: a.heartbeat_interval,
        reregister_backoff_max: a.reregister_backoff_max,
        kill_grace: a.kill_grace,
        status_retry: a.status_retry,
        gc_delay: a.gc_delay,
    })
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
    let core = shoal_master::MasterCore::start_with(store, config, args.timers.agent_timers())?;
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
            Cmd::Agent(a) => match agent_config(&a) {
                Ok(c) => shoal_agent::run(c, shutdown_signal()).await,
                Err(e) => Err(e),
            },
            Cmd::Dev(a) => run_dev(a).await,
            Cmd::State(a) => run_state(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
