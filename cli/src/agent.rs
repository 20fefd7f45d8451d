//! `shoal agent`: join a master and run the tasks it assigns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::shutdown_signal;

#[derive(Args, Clone)]
pub(crate) struct AgentArgs {
    /// The master's URL.
    #[arg(long, env = "SHOAL_MASTER", default_value = "http://127.0.0.1:5050")]
    pub(crate) master: String,
    /// Directory for the journal, executor state and task sandboxes.
    #[arg(long = "work-dir", alias = "work_dir")]
    pub(crate) work_dir: PathBuf,
    /// Resources to offer, Mesos text form (detected from the host when absent).
    #[arg(long)]
    pub(crate) resources: Option<String>,
    /// Attributes, e.g. "rack:r1;zone:a".
    #[arg(long, default_value = "")]
    pub(crate) attributes: String,
    /// The hostname to register (default: the host's name).
    #[arg(long)]
    pub(crate) hostname: Option<String>,
    /// Executors to offer, comma-separated: docker, process.
    #[arg(long, default_value = "docker,process")]
    pub(crate) containerizers: String,
    /// Limits of process tasks: `cgroups` (memory and CPU through cgroup v2 or v1 where the
    /// host allows; otherwise the reason is logged and tasks run without) or `none`.
    #[arg(long, default_value = "cgroups", value_parser = ["cgroups", "none"])]
    pub(crate) process_isolation: String,
    /// The Docker daemon's socket.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub(crate) docker_socket: String,
    /// Heartbeat interval (the master may ask for a shorter one).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Duration,
    /// Longest wait between attempts to reach the master.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) reregister_backoff_max: Duration,
    /// Default grace period between SIGTERM and SIGKILL.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) kill_grace: Duration,
    /// Resend unacknowledged status updates after this long (doubling, up to 16x).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) status_retry: Duration,
    /// Remove leftovers (containers, records) of tasks that ended this long ago.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) gc_delay: Duration,
    /// Tasks left running by a stopped agent are killed when no agent re-attached to them
    /// within this long, or at once when their work dir is gone (Mesos's --recovery_timeout).
    #[arg(long, alias = "recovery_timeout", default_value = "15m", value_parser = positive_duration)]
    pub(crate) recovery_timeout: Duration,
    /// Read the EC2 instance metadata (IMDSv2) into attributes and a fault domain; the
    /// optional value is the service's URL. At most 1 s is spent probing.
    #[arg(long, num_args = 0..=1, default_missing_value = shoal_agent::ec2::DEFAULT_URL)]
    pub(crate) ec2_metadata: Option<String>,
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

pub(crate) async fn agent_config(a: &AgentArgs) -> anyhow::Result<shoal_agent::AgentConfig> {
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
        clock: shoal_core::clock::SystemClock::shared(),
    })
}

/// How a standalone agent stops, as Mesos's does: SIGTERM and SIGINT leave the tasks
/// running for a restarted agent to re-attach to; SIGUSR1 kills them first.
pub(crate) async fn agent_stop_signal() -> shoal_agent::Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).expect("signal handler");
    tokio::select! {
        _ = shutdown_signal() => shoal_agent::Stop::LeaveTasks,
        _ = usr1.recv() => shoal_agent::Stop::KillTasks,
    }
}
