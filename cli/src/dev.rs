//! `shoal dev`: a whole cell on loopback (master + agent) and a sample job on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::agent::{agent_config, AgentArgs};

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Address of the master.
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Work directory (default: a fresh temporary directory).
    #[arg(long = "work-dir", alias = "work_dir")]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    zk: crate::zk::ZkArgs,
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
pub(crate) async fn run_dev(
    args: DevArgs,
    clock: shoal_core::clock::SharedClock,
) -> anyhow::Result<()> {
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
    let store = shoal_master::open_store(&master_dir, clock.clone())?;
    let timers = shoal_master::agents::AgentTimers {
        kill_grace: Duration::from_secs(2),
        ..Default::default()
    };
    let core = shoal_master::MasterCore::start_with(
        store,
        shoal_master::CommitConfig::default(),
        timers,
        clock.clone(),
    )?;
    let listener = shoal_master::bind(args.listen, &master_dir).await?;
    let addr = listener.local_addr()?;
    let compat_config = shoal_compat::CompatConfig {
        master: crate::master::master_address(
            core.published.snapshot().cell_id(),
            addr,
            None,
            None,
        ),
        ..Default::default()
    };
    let compat = shoal_compat::Compat::start(core.clone(), compat_config);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(shoal_master::serve(
        listener,
        core.router().merge(compat.router()),
        async move {
            let _ = server_stopped.await;
        },
    ));

    let cell_id = core.published.snapshot().cell_id().to_string();
    let zk = args.zk.publish(&cell_id, addr, None, None).await?;
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
        r = sample_job(&address, docker, clock.wall_ms()) => {
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
                    Some(Ok(Err(shoal_master::MasterError::Stopped)))
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
    if let Some(zk) = zk {
        zk.withdraw().await;
    }
    let result = match early_end {
        Some(r) => r,
        None => {
            let _ = stop_server.send(());
            server.await
        }
    };
    eprintln!("shoal dev: stopped");
    Ok(result.context("server task")??)
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

/// Places a few real tasks on the dev cell through the native claim API and waits for them;
/// `wall_ms` (the wall clock) names this run's tasks.
async fn sample_job(address: &str, docker: bool, wall_ms: u64) -> anyhow::Result<()> {
    use shoal_client::{command_task, ClaimRequest, PlacementRequest};
    let client = shoal_client::Client::new(address)?;
    let first_active = async {
        loop {
            let st = client.state().await?;
            if let Some(a) = st
                .agents
                .iter()
                .find(|a| a.state == shoal_core::AgentState::Active)
            {
                return anyhow::Ok((a.id.to_string(), st.version));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let agent = tokio::time::timeout(Duration::from_secs(20), first_active)
        .await
        .map_err(|_| anyhow::anyhow!("no agent registered within 20 s"))??;
    let res = shoal_core::ResourceSet::parse("cpus:0.1;mem:32")?;
    let run = format!("{:x}", wall_ms / 1000);
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
            priority: 0,
            evictions: Vec::new(),
            placements: tasks
                .into_iter()
                .map(|t| PlacementRequest::new(agent.0.clone(), &t))
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
    let all_ended = async {
        loop {
            let mut done = 0;
            for id in &ids {
                if client.task(id).await?.state.is_terminal() {
                    done += 1;
                }
            }
            if done == ids.len() {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // After a minute the outputs are shown as they are.
    if let Ok(r) = tokio::time::timeout(Duration::from_secs(60), all_ended).await {
        r?;
    }
    for id in &ids {
        let t = client.task(id).await?;
        let path = format!("/agents/{}/tasks/{id}/stdout", t.agent_id);
        let data = client
            .read_file(&path, None, None)
            .await
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
