//! Reconcile deadlock: an agent that re-registers listing thousands of `known` task ids the
//! master does not have. The fake agent here speaks the agent protocol directly over the
//! WebSocket, as an odd or hostile agent would: it registers, runs one real task, then comes
//! back listing that task and 10,000 bogus ids, reports the real task's status at once and
//! reads what the master sends. Every bogus id must be killed, the update acknowledged while
//! the kills go out, and once the socket closes the agent must become unreachable after the
//! timeout.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use shoal_client::{command_task, ClaimRequest, Client, PlacementRequest};
use shoal_core::agent_protocol::{AgentMessage, MasterMessage};
use shoal_core::cell::AgentRegistration;
use shoal_core::{AgentId, AgentState, CommitMode, ConflictCheck, ResourceSet, StatusInfo};
use shoal_core::{TaskId, TaskState};
use shoal_tests::{unique, wait_until, MasterProc};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const BOGUS_IDS: usize = 10_000;
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(2);
const UNREACHABLE_TIMEOUT_FLAG: &str = "2s";
/// `AGENT_KNOWN_TASKS_MAX` of the master's limits.
const KNOWN_TASKS_MAX: usize = 100_000;

async fn connect(master: &MasterProc) -> Ws {
    let url = format!(
        "{}/api/shoal/v1/agent/connect",
        master.addr.replacen("http", "ws", 1)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    ws
}

async fn send(ws: &mut Ws, msg: &AgentMessage) {
    let text = serde_json::to_string(msg).unwrap();
    ws.send(Message::text(text)).await.expect("send");
}

/// The next master message, answering nothing; `None` when the socket ends or `deadline` passes.
async fn next(ws: &mut Ws, deadline: Instant) -> Option<MasterMessage> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).unwrap())
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

fn registration(hostname: &str, agent_id: Option<AgentId>) -> AgentRegistration {
    AgentRegistration {
        agent_id,
        hostname: hostname.into(),
        port: 0,
        attributes: Default::default(),
        domain: None,
        resources: ResourceSet::parse("cpus:4;mem:1024").unwrap(),
    }
}

async fn agent_state(client: &Client, id: &AgentId) -> Option<AgentState> {
    let st = client.state().await.ok()?;
    st.agents.iter().find(|a| a.id == *id).map(|a| a.state)
}

/// A master with short agent timers: silent (or not reading) for 2 s is disconnected, away
/// for 2 s is unreachable.
fn start_master(dir: &std::path::Path) -> MasterProc {
    MasterProc::start(
        &dir.join("master"),
        &[
            "--agent-heartbeat-interval",
            "200ms",
            "--agent-ping-timeout",
            "2s",
            "--agent-unreachable-timeout",
            UNREACHABLE_TIMEOUT_FLAG,
            "--kill-grace",
            "1s",
        ],
    )
}

/// Registers a new agent on a fresh connection; returns the connection and the agent's id.
async fn register_new(master: &MasterProc, hostname: &str) -> (Ws, AgentId) {
    let mut ws = connect(master).await;
    send(
        &mut ws,
        &AgentMessage::Register {
            registration: registration(hostname, None),
            known: vec![],
        },
    )
    .await;
    match next(&mut ws, Instant::now() + Duration::from_secs(10)).await {
        Some(MasterMessage::Registered { agent_id, .. }) => (ws, agent_id),
        other => panic!("wanted REGISTERED, got {other:?}"),
    }
}

#[tokio::test]
async fn reconcile_deadlock_agent_listing_thousands_of_unknown_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path());
    let client = master.client();
    let hostname = unique("reconcile");

    // A first connection: register, get one real task, report it running.
    let (mut ws, agent_id) = register_new(&master, &hostname).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let task_id = TaskId::new(unique("real"));
    let version = client.state().await.unwrap().version;
    let answer = client
        .claim(&ClaimRequest {
            claim_id: unique("claim"),
            role: "*".into(),
            owner: "reconcile-test".into(),
            snapshot_version: version,
            mode: CommitMode::AllOrNothing,
            check: ConflictCheck::Fine,
            priority: 0,
            evictions: Vec::new(),
            placements: vec![PlacementRequest::new(
                agent_id.to_string(),
                &command_task(
                    task_id.as_str(),
                    "real",
                    &ResourceSet::parse("cpus:0.1;mem:16").unwrap(),
                    "sleep 600",
                ),
            )],
        })
        .await
        .unwrap();
    assert!(answer.outcome.committed_version.is_some(), "{answer:?}");
    loop {
        match next(&mut ws, deadline).await {
            Some(MasterMessage::Launch { tasks }) if tasks.iter().any(|t| t.id == task_id) => break,
            Some(_) => continue,
            None => panic!("no LAUNCH of {task_id}"),
        }
    }
    let running = |update_id| AgentMessage::StatusUpdate {
        update_id,
        task_id: task_id.clone(),
        state: TaskState::Running,
        status: StatusInfo::default(),
    };
    send(&mut ws, &running(1)).await;
    loop {
        match next(&mut ws, deadline).await {
            Some(MasterMessage::StatusAck { update_id: 1 }) => break,
            Some(_) => continue,
            None => panic!("first TASK_RUNNING not acknowledged"),
        }
    }
    ws.close(None).await.ok();
    drop(ws);

    // The agent comes back listing its task and 10,000 ids the master never had, and reports
    // its task at once, before reading anything.
    let bogus: HashSet<TaskId> = (0..BOGUS_IDS)
        .map(|i| TaskId::new(format!("bogus-{i}")))
        .collect();
    let mut known: Vec<TaskId> = bogus.iter().cloned().collect();
    known.push(task_id.clone());
    let ws = connect(&master).await;
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    let register = AgentMessage::Register {
        registration: registration(&hostname, Some(agent_id.clone())),
        known,
    };
    sink.send(Message::text(serde_json::to_string(&register).unwrap()))
        .await
        .unwrap();
    sink.send(Message::text(serde_json::to_string(&running(2)).unwrap()))
        .await
        .unwrap();

    // Read for at most 15 s, heartbeating, until every bogus id is killed and the update acked.
    let mut killed: HashSet<TaskId> = HashSet::new();
    let mut killed_real = false;
    let mut registered = false;
    let mut ack_latency = None;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(200));
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while killed.len() < BOGUS_IDS || ack_latency.is_none() {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => break,
            _ = heartbeat.tick() => {
                let beat = serde_json::to_string(&AgentMessage::Heartbeat).unwrap();
                if sink.send(Message::text(beat)).await.is_err() { break; }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
                    MasterMessage::Registered { .. } => registered = true,
                    MasterMessage::Kill { task_id: id, .. } if id == task_id => killed_real = true,
                    MasterMessage::Kill { task_id: id, .. } => { killed.insert(id); }
                    MasterMessage::StatusAck { update_id: 2 } => {
                        ack_latency.get_or_insert(started.elapsed());
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    let reconciled_after = started.elapsed();

    // The socket closes; the agent must become unreachable after the timeout.
    drop(sink);
    drop(stream);
    let closed = Instant::now();
    let mut unreachable_after = None;
    let mut state = None;
    while closed.elapsed() < UNREACHABLE_TIMEOUT + Duration::from_secs(8) {
        state = agent_state(&client, &agent_id).await;
        if state == Some(AgentState::Unreachable) {
            unreachable_after = Some(closed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "reconcile probe: registered={registered}, KILLs received {}/{BOGUS_IDS} in {:?}, \
         real task killed={killed_real}, ack latency {ack_latency:?}, agent state {:?} {:?} after \
         close (unreachable after {unreachable_after:?})",
        killed.len(),
        reconciled_after,
        state,
        closed.elapsed(),
    );
    assert!(registered, "no REGISTERED on the second connection");
    assert!(
        killed == bogus,
        "{} of the {BOGUS_IDS} bogus ids got no KILL",
        bogus.difference(&killed).count()
    );
    assert!(!killed_real, "the agent's real task was killed");
    assert!(
        ack_latency.is_some(),
        "the status update was not acknowledged"
    );
    assert!(
        unreachable_after.is_some(),
        "the agent is {state:?}, not UNREACHABLE, {:?} after its socket closed",
        closed.elapsed()
    );
    // The real task is kept, marked unreachable with its agent.
    wait_until(
        "the real task unreachable",
        Duration::from_secs(5),
        || async {
            client
                .task(task_id.as_str())
                .await
                .is_ok_and(|t| t.state == TaskState::Unreachable)
        },
    )
    .await;
}

/// Past the bound, a REGISTER is refused with an ERROR that says so, and nothing changes: no
/// agent is registered.
#[tokio::test]
async fn reconcile_deadlock_known_list_beyond_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path());
    let client = master.client();
    let hostname = unique("too-many-known");
    let mut ws = connect(&master).await;
    let known = (0..=KNOWN_TASKS_MAX)
        .map(|i| TaskId::new(format!("t{i}")))
        .collect();
    send(
        &mut ws,
        &AgentMessage::Register {
            registration: registration(&hostname, None),
            known,
        },
    )
    .await;
    match next(&mut ws, Instant::now() + Duration::from_secs(10)).await {
        Some(MasterMessage::Error { message, forget_id }) => {
            assert!(message.contains("100000"), "{message}");
            assert!(!forget_id);
        }
        other => panic!("wanted ERROR, got {other:?}"),
    }
    let st = client.state().await.unwrap();
    assert!(
        st.agents.iter().all(|a| a.hostname != hostname),
        "the refused agent was registered"
    );
    // Exactly at the bound it registers.
    let mut ws = connect(&master).await;
    let known = (0..KNOWN_TASKS_MAX)
        .map(|i| TaskId::new(format!("t{i}")))
        .collect();
    send(
        &mut ws,
        &AgentMessage::Register {
            registration: registration(&hostname, None),
            known,
        },
    )
    .await;
    match next(&mut ws, Instant::now() + Duration::from_secs(10)).await {
        Some(MasterMessage::Registered { .. }) => {}
        other => panic!("wanted REGISTERED, got {other:?}"),
    }
}

/// An agent that keeps heartbeating but never reads what the master sends cannot hold its
/// link (and its ACTIVE state): once the master cannot hand it a message for the ping timeout,
/// the link ends and the agent becomes unreachable.
#[tokio::test]
async fn reconcile_deadlock_agent_that_never_reads_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path());
    let client = master.client();
    let hostname = unique("never-reads");
    let (ws, agent_id) = register_new(&master, &hostname).await;
    drop(ws);

    // Back with the most known ids allowed (about 5 MB of KILLs to send), on a socket with a
    // small receive buffer that is never read.
    let addr = master.addr.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/api/shoal/v1/agent/connect");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let (mut sink, _stream) = ws.split();
    let known = (0..KNOWN_TASKS_MAX)
        .map(|i| TaskId::new(format!("bogus-{i}")))
        .collect();
    let register = AgentMessage::Register {
        registration: registration(&hostname, Some(agent_id.clone())),
        known,
    };
    sink.send(Message::text(serde_json::to_string(&register).unwrap()))
        .await
        .unwrap();
    let started = Instant::now();
    let beat = serde_json::to_string(&AgentMessage::Heartbeat).unwrap();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(200));
    let mut state = None;
    while started.elapsed() < Duration::from_secs(15) {
        heartbeat.tick().await;
        if sink.send(Message::text(beat.clone())).await.is_err() {
            // The master closed the link; keep looking at the agent's state.
        }
        state = agent_state(&client, &agent_id).await;
        if state == Some(AgentState::Unreachable) {
            break;
        }
    }
    eprintln!(
        "reconcile probe (never reads): agent {state:?} {:?} after re-registering",
        started.elapsed()
    );
    assert_eq!(
        state,
        Some(AgentState::Unreachable),
        "an agent that never reads kept its link"
    );
}

/// An agent that reads everything but never sends must still be disconnected after the ping
/// timeout, however often the master sends to it (here a LAUNCH every 300 ms).
#[tokio::test]
async fn reconcile_deadlock_silent_agent_is_disconnected_while_the_master_sends() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path());
    let client = master.client();
    let hostname = unique("silent");
    let (ws, agent_id) = register_new(&master, &hostname).await;
    let (_sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut launches = 0;
        while let Some(Ok(m)) = stream.next().await {
            if m.to_text().is_ok_and(|t| t.contains("\"LAUNCH\"")) {
                launches += 1;
            }
        }
        launches
    });
    let started = Instant::now();
    let mut state = None;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(12) {
        i += 1;
        let version = client.state().await.unwrap().version;
        let id = format!("{hostname}-{i}");
        client
            .claim(&ClaimRequest {
                claim_id: id.clone(),
                role: "*".into(),
                owner: "reconcile-test".into(),
                snapshot_version: version,
                mode: CommitMode::AllOrNothing,
                check: ConflictCheck::Fine,
                priority: 0,
                evictions: Vec::new(),
                placements: vec![PlacementRequest::new(
                    agent_id.to_string(),
                    &command_task(
                        &id,
                        &id,
                        &ResourceSet::parse("cpus:0.01;mem:1").unwrap(),
                        "true",
                    ),
                )],
            })
            .await
            .unwrap();
        state = agent_state(&client, &agent_id).await;
        if state == Some(AgentState::Unreachable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The reader ends when the master closes the link.
    let launches = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(|r| r.ok());
    eprintln!(
        "reconcile probe (silent): agent {state:?} {:?} after its last message, LAUNCHes \
         received meanwhile: {launches:?}",
        started.elapsed()
    );
    assert_eq!(
        state,
        Some(AgentState::Unreachable),
        "a silent agent kept its link while the master sent to it"
    );
}
