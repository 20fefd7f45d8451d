//! A master and its agents with the fast timers of the Mesos API tests.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{shoal_bin, tail, unique, AgentProc, MasterProc};

/// Liveness flags for a test master: fast agent heartbeats, agents unreachable only after
/// 30 s (a slow start on a busy machine does not trip liveness), a 1 s kill grace.
pub const FAST_MASTER_FLAGS: &[&str] = &[
    "--agent-heartbeat-interval",
    "200ms",
    "--agent-ping-timeout",
    "2s",
    "--agent-unreachable-timeout",
    "30s",
    "--kill-grace",
    "1s",
];

/// Scheduler-API timers of the Mesos tests: an allocation round every 100 ms (offers come
/// quickly after a DECLINE's filter expires, a REVIVE, a freed resource), HEARTBEAT events
/// every second, unacknowledged status updates resent every 500 ms. Left at their defaults:
/// `--offer-timeout` (60 s), `--offers-per-framework-max`.
pub const MESOS_API_FLAGS: &[&str] = &[
    "--allocation-interval",
    "100ms",
    "--scheduler-heartbeat-interval",
    "1s",
    "--status-update-retry",
    "500ms",
];

/// Master flags of the Mesos tests: [`FAST_MASTER_FLAGS`] and [`MESOS_API_FLAGS`].
pub fn mesos_master_flags() -> Vec<&'static str> {
    [FAST_MASTER_FLAGS, MESOS_API_FLAGS].concat()
}

/// One agent of a [`MesosCell`].
#[derive(Clone, Copy, Debug)]
pub struct MesosAgentSpec<'a> {
    /// `--resources`, Mesos text form.
    pub resources: &'a str,
    /// `--containerizers`: `process` or `docker`.
    pub containerizers: &'a str,
    /// `--attributes` (empty: none).
    pub attributes: &'a str,
}

impl MesosAgentSpec<'_> {
    /// A process-executor agent with `resources`.
    pub fn process(resources: &str) -> MesosAgentSpec<'_> {
        MesosAgentSpec {
            resources,
            containerizers: "process",
            attributes: "",
        }
    }
}

/// Starts an agent with fast timers (heartbeats, status retries, re-registration, kill grace),
/// the given executors and `resources`, plus `extra` flags.
pub fn start_fast_agent(
    master: &str,
    work_dir: &Path,
    hostname: &str,
    containerizers: &str,
    resources: &str,
    extra: &[&str],
) -> AgentProc {
    let mut args = vec![
        "--hostname",
        hostname,
        "--containerizers",
        containerizers,
        "--heartbeat-interval",
        "200ms",
        "--status-retry",
        "200ms",
        "--reregister-backoff-max",
        "200ms",
        "--kill-grace",
        "1s",
        "--resources",
        resources,
    ];
    args.extend_from_slice(extra);
    AgentProc::start(master, work_dir, &args)
}

/// Starts an agent for the Mesos tests: fast timers, the executors, resources and attributes
/// of `spec`.
pub fn start_mesos_agent(
    master: &str,
    work_dir: &Path,
    hostname: &str,
    spec: MesosAgentSpec<'_>,
) -> AgentProc {
    let mut extra = Vec::new();
    if !spec.attributes.is_empty() {
        extra.extend(["--attributes", spec.attributes]);
    }
    start_fast_agent(
        master,
        work_dir,
        hostname,
        spec.containerizers,
        spec.resources,
        &extra,
    )
}

/// A master (with [`mesos_master_flags()`] and more) and its agents, on one temporary
/// directory, for the Mesos API tests.
pub struct MesosCell {
    pub master: MasterProc,
    pub agents: Vec<AgentProc>,
    /// The agents' ids, in the order of `agents`.
    pub agent_ids: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl MesosCell {
    /// Starts the master ([`mesos_master_flags()`], overridden or extended by
    /// `extra_master_flags`) and one agent per
    /// spec (hostnames unique to `name`), and waits until every agent is active.
    pub async fn start(
        name: &str,
        extra_master_flags: &[&str],
        agents: &[MesosAgentSpec<'_>],
    ) -> Result<MesosCell, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary dir: {e}"))?;
        // mesos_master_flags() is flag/value pairs; a flag given again in `extra_master_flags`
        // replaces ours (clap refuses a flag given twice).
        let mut flags: Vec<&str> = mesos_master_flags()
            .chunks(2)
            .filter(|pair| !extra_master_flags.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        flags.extend_from_slice(extra_master_flags);
        check_master_flags(&flags)?;
        let master = MasterProc::start(&dir.path().join("master"), &flags);
        let hostnames: Vec<String> = (0..agents.len())
            .map(|i| unique(&format!("{name}-a{i}")))
            .collect();
        let procs: Vec<AgentProc> = agents
            .iter()
            .zip(&hostnames)
            .enumerate()
            .map(|(i, (spec, h))| {
                start_mesos_agent(
                    &master.addr,
                    &dir.path().join(format!("agent{i}")),
                    h,
                    *spec,
                )
            })
            .collect();
        let names: Vec<&str> = hostnames.iter().map(String::as_str).collect();
        let cell = MesosCell {
            master,
            agents: procs,
            agent_ids: Vec::new(),
            dir,
        };
        match wait_agents_active(&cell.master.client(), &names, Duration::from_secs(20)).await {
            Ok(ids) => Ok(MesosCell {
                agent_ids: ids,
                ..cell
            }),
            Err(e) => Err(format!("{e}\n{}", cell.logs(100, 60))),
        }
    }

    /// The ends of the master's log (`master_lines`) and of each agent's (`agent_lines`).
    pub fn logs(&self, master_lines: usize, agent_lines: usize) -> String {
        let mut out = format!(
            "----- master log (end) -----\n{}",
            tail(&self.master.log(), master_lines)
        );
        for (i, a) in self.agents.iter().enumerate() {
            out.push_str(&format!(
                "----- agent {i} log (end) -----\n{}",
                tail(&a.log(), agent_lines)
            ));
        }
        out
    }
}

/// Fails clearly (instead of with a master that never starts) when `shoal master` does not
/// know one of `flags`.
fn check_master_flags(flags: &[&str]) -> Result<(), String> {
    let help = Command::new(shoal_bin())
        .args(["master", "--help"])
        .output()
        .map_err(|e| format!("shoal master --help: {e}"))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let known = |f: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == f)
    };
    let unknown: Vec<&&str> = flags
        .iter()
        .filter(|f| f.starts_with("--") && !known(f))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "`shoal master` does not know {unknown:?}; its --help:\n{help}"
        ))
    }
}

/// Waits until an active agent is registered for each of `hostnames`; their ids, in order.
pub async fn wait_agents_active(
    client: &shoal_client::Client,
    hostnames: &[&str],
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(st) = client.state().await {
            let ids: Vec<Option<String>> = hostnames
                .iter()
                .map(|h| {
                    st.agents
                        .iter()
                        .find(|a| a.hostname == *h && a.state == shoal_core::AgentState::Active)
                        .map(|a| a.id.to_string())
                })
                .collect();
            if ids.iter().all(Option::is_some) {
                return Ok(ids.into_iter().flatten().collect());
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "agents {hostnames:?} not all active within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
