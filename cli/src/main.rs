//! `shoal`: the master, the agent, a dev cell, and client verbs, in one binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod job;
mod quota;
mod service;

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
    Master(MasterArgs),
    /// Run an agent: join a master and run the tasks it assigns.
    Agent(AgentArgs),
    /// Run a whole cell on loopback (master + agent) and a sample job on it.
    Dev(DevArgs),
    /// Print the cell's state (agents, tasks, roles) as JSON.
    State(ClientArgs),
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
    http: MasterHttp,
    #[command(flatten)]
    timers: MasterTimers,
}

#[derive(Args, Clone)]
struct MasterHttp {
    /// The hostname the master publishes; requests must name it, an address of the master,
    /// or loopback in `Host` (421 otherwise). Default: the machine's hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// The IP address the master publishes, accepted in `Host` as well.
    #[arg(long = "advertise-ip")]
    advertise_ip: Option<std::net::IpAddr>,
    /// HTTP connections at most, besides agent links (default: 8192, lowered to fit the
    /// descriptor limit). At the cap the connection idle the longest is closed.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Watch streams open at once; more get 503.
    #[arg(long, default_value_t = shoal_master::limits::WATCHERS_MAX)]
    max_watchers: usize,
}

impl MasterHttp {
    fn config(&self, listen: SocketAddr) -> shoal_master::http::HttpConfig {
        let mut config = shoal_master::http::HttpConfig::new(listen);
        if let Some(h) = &self.hostname {
            config.hosts.add(h);
        }
        if let Some(ip) = self.advertise_ip {
            config.hosts.add(&ip.to_string());
        }
        config.max_connections = self.max_connections;
        config
    }
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
    /// Mesos API: HEARTBEAT events to schedulers this often.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    scheduler_heartbeat_interval: Duration,
    /// Mesos API: an allocation round (offers) this often, and whenever resources free up.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    allocation_interval: Duration,
    /// Mesos API: rescind offers held longer than this (0s: never, as Mesos by default). A
    /// framework that lets an offer time out without making any call gets no offers until
    /// its next call.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    offer_timeout: Duration,
    /// Mesos API: frameworks known at once (subscribed, or disconnected within their failover
    /// timeout); a SUBSCRIBE of one more is refused with 503.
    #[arg(long, default_value_t = shoal_compat::limits::FRAMEWORKS_MAX)]
    frameworks_max: usize,
    /// Mesos API: outstanding offers one framework may hold (0: no cap).
    #[arg(long, default_value_t = 64)]
    offers_per_framework_max: usize,
    /// Mesos API: resend unacknowledged status updates this often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    status_update_retry: Duration,
}

impl MasterTimers {
    fn compat(&self) -> shoal_compat::CompatConfig {
        shoal_compat::CompatConfig {
            heartbeat_interval: self.scheduler_heartbeat_interval,
            allocation_interval: self.allocation_interval,
            offer_timeout: (!self.offer_timeout.is_zero()).then_some(self.offer_timeout),
            frameworks_max: self.frameworks_max,
            offers_per_framework_max: self.offers_per_framework_max,
            update_retry: self.status_update_retry,
            ..Default::default()
        }
    }

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
    /// Limits of process tasks: `cgroups` (memory and CPU through cgroup v2 or v1 where the
    /// host allows; otherwise the reason is logged and tasks run without) or `none`.
    #[arg(long, default_value = "cgroups", value_parser = ["cgroups", "none"])]
    process_isolation: String,
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
    /// Tasks left running by a stopped agent are killed when no agent re-attached to them
    /// within this long, or at once when their work dir is gone (Mesos's --recovery_timeout).
    #[arg(long, alias = "recovery_timeout", default_value = "15m", value_parser = positive_duration)]
    recovery_timeout: Duration,
    /// Read the EC2 instance metadata (IMDSv2) into attributes and a fault domain; the
    /// optional value is the service's URL. At most 1 s is spent probing.
    #[arg(long, num_args = 0..=1, default_missing_value = shoal_agent::ec2::DEFAULT_URL)]
    ec2_metadata: Option<String>,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_attributes(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once(':')
            .with_context(|| format!("attribute '{part}' must be name:value"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

async fn agent_config(a: &AgentArgs) -> anyhow::Result<shoal_agent::AgentConfig> {
    std::fs::create_dir_all(&a.work_dir)
        .with_context(|| format!("creating {}", a.work_dir.display()))?;
    let resources = match &a.resources {
        Some(r) => shoal_core::ResourceSet::parse(r).context("--resources")?,
        None => shoal_agent::host::detect(&a.work_dir),
    };
    let containerizers: Vec<String> = a
        .containerizers
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = containerizers
        .iter()
        .find(|c| *c != "docker" && *c != "process")
    {
        anyhow::bail!("--containerizers: unknown executor '{bad}' (use docker, process)");
    }
    let hostname = match &a.hostname {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let mut attributes = parse_attributes(&a.attributes)?;
    let mut domain = None;
    if let Some(url) = &a.ec2_metadata {
        if let Some(info) = shoal_agent::ec2::probe(url).await {
            tracing::info!(instance = %info.instance_id, zone = %info.availability_zone, "EC2 instance");
            for (k, v) in info.attributes() {
                attributes.entry(k).or_insert(v);
            }
            domain = Some(info.domain());
        }
    }
    Ok(shoal_agent::AgentConfig {
        master: a.master.clone(),
        work_dir: a.work_dir.canonicalize()?,
        hostname,
        resources,
        attributes,
        domain,
        containerizers,
        process_cgroups: a.process_isolation == "cgroups",
        docker_socket: a.docker_socket.clone(),
        heartbeat_interval: a.heartbeat_interval,
        reregister_backoff_max: a.reregister_backoff_max,
        kill_grace: a.kill_grace,
        status_retry: a.status_retry,
        gc_delay: a.gc_delay,
        recovery_timeout: a.recovery_timeout,
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// How a standalone agent stops, as Mesos's does: SIGTERM and SIGINT leave the tasks
/// running for a restarted agent to re-attach to; SIGUSR1 kills them first.
async fn agent_stop_signal() -> shoal_agent::Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).expect("signal handler");
    tokio::select! {
        _ = shutdown_signal() => shoal_agent::Stop::LeaveTasks,
        _ = usr1.recv() => shoal_agent::Stop::KillTasks,
    }
}

async fn run_master(args: MasterArgs) -> anyhow::Result<()> {
    let store = shoal_master::open_store(&args.work_dir)?;
    let config = shoal_master::CommitConfig {
        log_retain_entries: args.log_retain,
    };
    let core = shoal_master::MasterCore::start_with(store, config, args.timers.agent_timers())?;
    let compat = shoal_compat::Compat::start(core.clone(), args.timers.compat());
    core.watchers.set_max(args.http.max_watchers);
    let listener = shoal_master::bind(args.listen, &args.work_dir).await?;
    let http = args.http.config(listener.local_addr()?);
    let published = core.published.clone();
    tokio::select! {
        served = shoal_master::serve_with(
            listener,
            core.router().merge(compat.router()),
            http,
            shutdown_signal(),
        ) => served,
        // A stopped commit path cannot commit again: exit (not 0) so a supervisor restarts
        // the master, which loads the store afresh.
        () = published.health.stopped() => {
            Err(anyhow::anyhow!("the commit path has stopped; exiting so that the master is restarted"))
        }
    }
}

async fn docker_answers(socket: &str) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::UnixStream::connect(socket),
    )
    .await
    else {
        return false;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await, Ok(Ok(n)) if n > 0 && buf[..n].starts_with(b"HTTP/1.") && buf[..n].windows(3).any(|w| w == b"200"))
}

/// Runs a cell on loopback until SIGINT or SIGTERM, then stops it: the agent kills every
/// task (each with its grace period) and reports how they ended, then the master stops.
async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: a signal at any later point stops the cell.
    let mut signals = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );

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
    let timers = shoal_master::agents::AgentTimers {
        kill_grace: Duration::from_secs(2),
        ..Default::default()
    };
    let core =
        shoal_master::MasterCore::start_with(store, shoal_master::CommitConfig::default(), timers)?;
    let compat = shoal_compat::Compat::start(core.clone(), shoal_compat::CompatConfig::default());
    let listener = shoal_master::bind(args.listen, &master_dir).await?;
    let addr = listener.local_addr()?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(shoal_master::serve(
        listener,
        core.router().merge(compat.router()),
        async move {
            let _ = server_stopped.await;
        },
    ));

    let docker = docker_answers("/var/run/docker.sock").await;
    let agent_args = AgentArgs {
        master: format!("http://{addr}"),
        work_dir: work_dir.join("agent"),
        resources: None,
        attributes: "zone:dev".into(),
        hostname: None,
        containerizers: if docker {
            "docker,process".into()
        } else {
            "process".into()
        },
        process_isolation: "cgroups".into(),
        docker_socket: "/var/run/docker.sock".into(),
        heartbeat_interval: Duration::from_secs(2),
        reregister_backoff_max: Duration::from_secs(2),
        kill_grace: Duration::from_secs(2),
        status_retry: Duration::from_secs(2),
        gc_delay: Duration::from_secs(3600),
        recovery_timeout: Duration::from_secs(
            shoal_agent::executor::heartbeat::RECOVERY_TIMEOUT_DEFAULT_SECS,
        ),
        ec2_metadata: None,
    };
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<shoal_agent::Stop>();
    let agent = tokio::spawn(shoal_agent::run_until(
        agent_config(&agent_args).await?,
        async move { agent_stopped.await.unwrap_or(shoal_agent::Stop::KillTasks) },
    ));
    eprintln!(
        "shoal dev: master on http://{addr}  (UI and state: http://{addr}/ , work dir {})",
        work_dir.display()
    );
    eprintln!(
        "shoal dev: agent with the {} executor",
        if docker {
            "Docker and process"
        } else {
            "process (dockerd does not answer)"
        }
    );

    let address = format!("http://{addr}");
    let signalled = tokio::select! {
        sig = stop_signal(&mut signals) => Some(sig),
        r = sample_job(&address, docker) => {
            if let Err(e) = r {
                eprintln!("shoal dev: the sample job failed: {e:#}");
            }
            None
        }
    };
    let early_end = match signalled {
        Some(sig) => {
            eprintln!("shoal dev: {sig}");
            None
        }
        None => {
            eprintln!("shoal dev: the cell keeps running; press Ctrl-C to stop.");
            tokio::select! {
                sig = stop_signal(&mut signals) => {
                    eprintln!("shoal dev: {sig}");
                    None
                }
                r = &mut server => Some(r),
                // As `shoal master` does: a stopped commit path ends the cell, not 0.
                () = core.published.health.stopped() => {
                    eprintln!("shoal dev: the commit path has stopped");
                    Some(Ok(Err(anyhow::anyhow!("the commit path has stopped"))))
                }
            }
        }
    };
    // The agent first, while the master still takes the tasks' last statuses.
    eprintln!("shoal dev: stopping: the agent kills every task (each with its grace period)");
    let _ = stop_agent.send(shoal_agent::Stop::KillTasks);
    let mut agent = agent;
    tokio::select! {
        r = &mut agent => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("shoal dev: the agent stopped with an error: {e:#}"),
            Err(e) => eprintln!("shoal dev: the agent task failed: {e}"),
        },
        sig = stop_signal(&mut signals) => {
            eprintln!("shoal dev: {sig} again: stopping now; tasks still ending are killed by their supervisors once the work dir is gone or after the recovery timeout");
            agent.abort();
        }
    }
    let result = match early_end {
        Some(r) => r,
        None => {
            let _ = stop_server.send(());
            server.await
        }
    };
    eprintln!("shoal dev: stopped");
    result.context("server task")?
}

/// The next SIGINT or SIGTERM of `shoal dev`: its name.
async fn stop_signal(
    (int, term): &mut (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> &'static str {
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Places a few real tasks on the dev cell through the native claim API and waits for them.
async fn sample_job(address: &str, docker: bool) -> anyhow::Result<()> {
    use shoal_client::{command_task, ClaimRequest, PlacementRequest};
    let client = shoal_client::Client::new(address)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let agent = loop {
        let st = client.state().await?;
        if let Some(a) = st
            .agents
            .iter()
            .find(|a| a.state == shoal_core::AgentState::Active)
        {
            break (a.id.to_string(), st.version);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no agent registered within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let res = shoal_core::ResourceSet::parse("cpus:0.1;mem:32")?;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let mut tasks = vec![
        command_task(
            &format!("hello-{run}"),
            "hello",
            &res,
            "echo hello from shoal on $(hostname); uname -sr",
        ),
        command_task(
            &format!("count-{run}"),
            "count",
            &res,
            "for i in 1 2 3; do echo tick $i; done",
        ),
    ];
    let image = "local/busybox:latest";
    if docker {
        let mut t = command_task(
            &format!("docker-{run}"),
            "docker-hello",
            &res,
            "echo hello from a container; cat /etc/hostname",
        );
        t["container"] =
            serde_json::json!({"type": "DOCKER", "docker": {"image": image, "network": "BRIDGE"}});
        tasks.push(t);
    }
    let ids: Vec<String> = tasks
        .iter()
        .map(|t| {
            t["task_id"]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let answer = client
        .claim(&ClaimRequest {
            claim_id: format!("dev-sample-{run}"),
            role: "*".into(),
            owner: "shoal-dev".into(),
            snapshot_version: agent.1,
            mode: shoal_core::CommitMode::AllOrNothing,
            check: shoal_core::ConflictCheck::Fine,
            placements: tasks
                .into_iter()
                .map(|t| PlacementRequest {
                    agent_id: agent.0.clone(),
                    task_info: t,
                })
                .collect(),
        })
        .await?;
    anyhow::ensure!(
        answer.outcome.committed_version.is_some(),
        "the sample claim was not committed: {:?}",
        answer.outcome
    );
    eprintln!(
        "shoal dev: claimed {} tasks at version {:?}",
        ids.len(),
        answer.outcome.committed_version
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = 0;
        for id in &ids {
            if client.task(id).await?.state.is_terminal() {
                done += 1;
            }
        }
        if done == ids.len() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest_get_text;
    for id in &ids {
        let t = client.task(id).await?;
        let out = http(&format!(
            "{address}/files/read?path=/agents/{}/tasks/{id}/stdout",
            t.agent_id
        ))
        .await
        .unwrap_or_default();
        let data = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["data"].as_str().map(str::to_string))
            .unwrap_or_default();
        eprintln!(
            "  {id:<24} {:<14} {}",
            t.state.mesos_name(),
            t.status.message.clone().unwrap_or_default()
        );
        for line in data.lines() {
            eprintln!("      | {line}");
        }
    }
    Ok(())
}

async fn reqwest_get_text(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url).await?.text().await?)
}

async fn run_state(args: ClientArgs) -> anyhow::Result<()> {
    let client = shoal_client::Client::new(&args.address)?;
    let state = client.state_json(true).await?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

fn main() {
    keep_freed_memory_a_while();
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Cmd::Master(a) => run_master(a).await,
            Cmd::Agent(a) => match agent_config(&a).await {
                Ok(c) => shoal_agent::run_until(c, agent_stop_signal()).await,
                Err(e) => Err(e),
            },
            Cmd::Dev(a) => run_dev(a).await,
            Cmd::State(a) => run_state(a).await,
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
