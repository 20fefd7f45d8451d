//! `shoal master`: the cell's shared state, the commit path and the APIs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::shutdown_signal;

#[derive(Args)]
pub(crate) struct MasterArgs {
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
    retention: Retention,
    #[command(flatten)]
    http: MasterHttp,
    #[command(flatten)]
    timers: MasterTimers,
    #[command(flatten)]
    zk: crate::zk::ZkArgs,
}

/// What garbage collection keeps of finished work (docs/operations.md, "Retention").
#[derive(Args, Clone)]
struct Retention {
    /// Terminal tasks kept per framework or scheduler, newest first (Mesos's
    /// `--max_completed_tasks_per_framework`, also 1,000).
    #[arg(long = "max-completed-tasks-per-owner", default_value_t = shoal_core::limits::COMPLETED_TASKS_PER_OWNER)]
    completed_tasks_per_owner: usize,
    /// Terminal tasks older than this are collected whatever their count (Nomad's
    /// `job_gc_threshold` is 4h; Mesos has none).
    #[arg(long = "completed-task-age", default_value = "24h", value_parser = humantime::parse_duration)]
    completed_task_age: std::time::Duration,
    /// Gone agents kept, newest first (Mesos's `--registry_max_agent_count`, 102,400).
    #[arg(long = "max-gone-agents", default_value_t = shoal_core::limits::GONE_AGENTS_MAX)]
    gone_agents_max: usize,
    /// How often the collector looks for finished work past these bounds.
    #[arg(long = "collect-interval", default_value = "1s", value_parser = humantime::parse_duration)]
    collect_interval: std::time::Duration,
}

impl Retention {
    fn retention(&self) -> shoal_core::gc::Retention {
        shoal_core::gc::Retention {
            completed_tasks_per_owner: self.completed_tasks_per_owner,
            completed_task_age_ms: self.completed_task_age.as_millis() as u64,
            gone_agents_max: self.gone_agents_max,
            ..Default::default()
        }
    }
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
    /// Mesos v0 API: dial a scheduler at the address its UPID advertises even when its
    /// messages come from another IP (a framework behind NAT, with LIBPROCESS_ADVERTISE_IP).
    /// By default the master dials only the IP the messages come from.
    #[arg(long = "libprocess-dial-advertised")]
    libprocess_dial_advertised: bool,
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
            libprocess_dial: if self.libprocess_dial_advertised {
                shoal_compat::libprocess::DialPolicy::Advertised
            } else {
                shoal_compat::libprocess::DialPolicy::PeerIpOnly
            },
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

/// Where frameworks reach this master, as SUBSCRIBED's `master_info` says (and ZooKeeper's
/// node): `--advertise-ip` (else the listen address) and `--hostname` (else the machine's).
/// `None` when that is no IPv4 address a framework could use (0.0.0.0, IPv6): SUBSCRIBED then
/// names the address the framework's request reached.
pub(crate) fn master_address(
    cell_id: &str,
    listen: SocketAddr,
    advertise_ip: Option<std::net::IpAddr>,
    hostname: Option<&str>,
) -> Option<shoal_compat::zk::MasterAddress> {
    let ip = match advertise_ip.unwrap_or(listen.ip()) {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
        _ => return None,
    };
    Some(shoal_compat::zk::MasterAddress {
        id: cell_id.to_string(),
        ip,
        port: listen.port(),
        hostname: hostname
            .map(str::to_string)
            .or_else(shoal_master::http::machine_hostname)
            .unwrap_or_else(|| ip.to_string()),
    })
}

pub(crate) async fn run_master(
    args: MasterArgs,
    clock: shoal_core::clock::SharedClock,
) -> anyhow::Result<()> {
    let store = shoal_master::open_store(&args.work_dir, clock.clone())?;
    let config = shoal_master::CommitConfig {
        log_retain_entries: args.log_retain,
        retention: args.retention.retention(),
        collect_interval: args.retention.collect_interval,
    };
    let core =
        shoal_master::MasterCore::start_with(store, config, args.timers.agent_timers(), clock)?;
    let listener = shoal_master::bind(args.listen, &args.work_dir).await?;
    let compat_config = shoal_compat::CompatConfig {
        master: master_address(
            core.published.snapshot().cell_id(),
            listener.local_addr()?,
            args.http.advertise_ip,
            args.http.hostname.as_deref(),
        ),
        ..args.timers.compat()
    };
    let compat = shoal_compat::Compat::start(core.clone(), compat_config);
    core.watchers.set_max(args.http.max_watchers);
    let http = args.http.config(listener.local_addr()?);
    let published = core.published.clone();
    let cell_id = published.snapshot().cell_id().to_string();
    let zk = args
        .zk
        .publish(
            &cell_id,
            listener.local_addr()?,
            args.http.advertise_ip,
            args.http.hostname.as_deref(),
        )
        .await?;
    let ended = tokio::select! {
        served = shoal_master::serve_with(
            listener,
            core.router().merge(compat.router()),
            http,
            shutdown_signal(),
        ) => Ok(served?),
        // A stopped commit path cannot commit again: exit (not 0) so a supervisor restarts
        // the master, which loads the store afresh.
        () = published.health.stopped() => {
            Err(anyhow::anyhow!("the commit path has stopped; exiting so that the master is restarted"))
        }
    };
    // Gone from ZooKeeper before the process is: no framework is sent to a master that left.
    if let Some(zk) = zk {
        zk.withdraw().await;
    }
    ended
}
