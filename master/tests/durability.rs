//! Durability that a page cache cannot fake: the commit path runs over a store that loses
//! everything written but not synced when it "crashes". After each crash, every claim that
//! was acknowledged must be in the reloaded cell, and nothing may be double-booked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_core::*;
use shoal_master::committer::{self, CommitConfig, CommitError};
use shoal_master::store::{MemStore, Store};
use shoal_sched::{Command, Event, Reply, SchedulerCommand};

/// A wall clock that moves one millisecond at each reading.
#[derive(Debug)]
struct TickClock {
    wall_ms: AtomicU64,
    origin: std::time::Instant,
}

impl shoal_core::clock::Clock for TickClock {
    fn wall_ms(&self) -> Timestamp {
        self.wall_ms.fetch_add(1, Ordering::Relaxed)
    }
    fn monotonic(&self) -> std::time::Instant {
        self.origin
    }
}

fn clock() -> shoal_core::clock::SharedClock {
    Arc::new(TickClock {
        wall_ms: AtomicU64::new(1_000),
        origin: std::time::Instant::now(),
    })
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_claims_survive_crashes_that_drop_unsynced_writes() {
    let store = MemStore::new();
    let mut acked: HashMap<String, ClaimOutcome> = HashMap::new();
    let mut agents: Vec<AgentId> = Vec::new();
    let mut total_unacked = 0usize;

    for round in 0..8u64 {
        store.reboot();
        let cell = shoal_master::load_cell(&store).expect("load");
        cell.check_invariants().expect("invariants after reload");
        // Every claim acknowledged before any crash is there, exactly as answered.
        for (id, outcome) in &acked {
            let stored = cell
                .claim(&ClaimId::new(id))
                .unwrap_or_else(|| panic!("acknowledged claim {id} lost"));
            assert_eq!(stored, outcome, "claim {id} changed");
            for p in outcome.placements.iter().filter(|p| p.committed) {
                let t = cell
                    .task(&p.task_id)
                    .unwrap_or_else(|| panic!("task {} of claim {id} lost", p.task_id));
                assert_eq!(t.agent_id, p.agent_id);
            }
        }
        let (committer, published, thread) = committer::start(
            cell,
            Arc::new(store.clone()),
            clock(),
            CommitConfig {
                log_retain_entries: 50,
                ..Default::default()
            },
        );
        if agents.is_empty() {
            for i in 0..6 {
                let reply = committer
                    .submit(Command::RegisterAgent(AgentRegistration {
                        agent_id: None,
                        hostname: format!("host{i}"),
                        port: 0,
                        attributes: Default::default(),
                        domain: None,
                        resources: ResourceSet::parse("cpus:8;mem:8192").unwrap(),
                    }))
                    .await
                    .expect("register");
                let Reply::Agent { agent_id } = reply else {
                    panic!("{reply:?}")
                };
                agents.push(agent_id);
            }
        }

        // Four schedulers claim concurrently; the store crashes while they do.
        let mut handles = Vec::new();
        for s in 0..4u64 {
            let committer = committer.clone();
            let published = published.clone();
            let agents = agents.clone();
            handles.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9 ^ (round * 31 + s + 1));
                let mut mine = Vec::new();
                let mut unacked = 0;
                for n in 0..200u64 {
                    let snap = published.snapshot();
                    let placements = (0..3)
                        .map(|k| Placement {
                            task_id: TaskId::new(format!("r{round}-s{s}-n{n}-k{k}")),
                            name: String::new(),
                            agent_id: agents[(rng.next() % agents.len() as u64) as usize].clone(),
                            resources: ResourceSet::parse("cpus:0.25;mem:64").unwrap(),
                            spec: TaskSpec::empty(),
                        })
                        .collect();
                    let mode = if rng.next().is_multiple_of(2) {
                        CommitMode::AllOrNothing
                    } else {
                        CommitMode::Incremental
                    };
                    let claim = Claim {
                        priority: 0,
                        evictions: vec![],
                        id: ClaimId::new(format!("c-r{round}-s{s}-n{n}")),
                        role: "*".into(),
                        owner: format!("s{s}"),
                        snapshot_version: snap.version(),
                        mode,
                        check: ConflictCheck::Fine,
                        placements,
                    };
                    // Tasks also finish, so resources are freed and re-used across crashes.
                    if let Some(t) = snap
                        .tasks()
                        .find(|t| t.state == TaskState::Staging && rng.next().is_multiple_of(3))
                    {
                        let _ = committer
                            .submit(Command::UpdateTaskStatus {
                                task_id: t.id.clone(),
                                state: TaskState::Finished,
                                status: StatusInfo::default(),
                            })
                            .await;
                    }
                    match committer.submit(Command::Claim(claim)).await {
                        Ok(Reply::Claim { outcome }) => {
                            if outcome.committed_version.is_some() {
                                mine.push(outcome)
                            }
                        }
                        Ok(other) => panic!("unexpected reply {other:?}"),
                        Err(CommitError::Unavailable(_)) => unacked += 1,
                        Err(e) => panic!("unexpected refusal {e}"),
                    }
                }
                (mine, unacked)
            }));
        }
        // Crash at a different point each round: after a round-dependent number of commits,
        // while the schedulers still have most of their claims to make.
        let start = published.snapshot().version();
        let target = start + 20 + round * 15;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while published.snapshot().version() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress before the crash"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        store.crash();
        for h in handles {
            let (mine, unacked) = h.await.expect("scheduler");
            total_unacked += unacked;
            for o in mine {
                acked.insert(o.claim_id.to_string(), o);
            }
        }
        drop(committer);
        thread.join().expect("committer thread");
    }
    store.reboot();
    let cell = shoal_master::load_cell(&store).expect("final load");
    cell.check_invariants().expect("no double booking");
    for id in acked.keys() {
        assert!(
            cell.claim(&ClaimId::new(id)).is_some(),
            "acknowledged claim {id} lost"
        );
    }
    assert!(
        acked.len() > 50,
        "the test must commit a good number of claims (got {})",
        acked.len()
    );
    assert!(
        total_unacked > 0,
        "the crashes must have hit claims in flight"
    );
    // A watch can resume from the floor: the log holds consecutive versions up to the cell's.
    let floor = store.log_floor().unwrap();
    let log = store.read_log(floor, usize::MAX).unwrap();
    assert_eq!(log.last().map(|e| e.version), Some(cell.version()));
    for w in log.windows(2) {
        assert_eq!(w[1].version, w[0].version + 1);
    }
    println!(
        "{} claims acknowledged and kept across 8 crashes; {} refused in flight",
        acked.len(),
        total_unacked
    );
}

#[test]
fn a_store_failure_changes_nothing_and_is_not_acknowledged() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemStore::new();
        let cell = shoal_master::load_cell(&store).unwrap();
        let (committer, published, _t) = committer::start(
            cell,
            Arc::new(store.clone()),
            clock(),
            CommitConfig::default(),
        );
        store.crash();
        let r = committer
            .submit(Command::ConfigureRole {
                name: "a".into(),
                weight: 2.0,
                quota: Quota::default(),
                preemptible: true,
            })
            .await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");
        assert_eq!(published.snapshot().version(), 0, "nothing published");
        store.reboot();
        // The store is reopened after a backoff: until then commands get 503.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while published.health.check().is_err() {
            assert!(std::time::Instant::now() < until, "the store is reopened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        committer
            .submit(Command::ConfigureRole {
                name: "a".into(),
                weight: 2.0,
                quota: Quota::default(),
                preemptible: true,
            })
            .await
            .expect("commits after the store is back");
        assert_eq!(published.snapshot().version(), 1);
    });
}

/// Job records (the job and each task's record, stored as rows of their own) come back exactly
/// as acknowledged: after a crash that drops unsynced writes, and after reopening redb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_job_records_survive_crashes_and_reopening() {
    use shoal_sched::batch::{parse_job_file, JobFormat, JobState, JobTaskState, JobUpdate};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    let mem = MemStore::new();
    for backend in ["mem", "redb"] {
        let store: Arc<dyn Store> = match backend {
            "mem" => Arc::new(mem.clone()),
            _ => Arc::new(shoal_master::RedbStore::open(&path).unwrap()),
        };
        let cell = shoal_master::load_cell(store.as_ref()).unwrap();
        let (committer, published, thread) =
            committer::start(cell, store.clone(), clock(), CommitConfig::default());
        committer
            .submit(Command::RegisterAgent(AgentRegistration {
                agent_id: None,
                hostname: "h".into(),
                port: 0,
                attributes: Default::default(),
                domain: None,
                resources: ResourceSet::parse("cpus:8;mem:8192").unwrap(),
            }))
            .await
            .unwrap();
        let text = "name = \"j\"\n[[tasks]]\nname = \"a\"\ncommand = \"true\"\nresources = \"cpus:1\"\n[[tasks]]\nname = \"b\"\ncommand = \"true\"\nresources = \"cpus:1\"\ndepends_on = [\"a\"]\n";
        let spec = parse_job_file(text, JobFormat::Toml).unwrap();
        committer
            .submit(SchedulerCommand::SubmitJob { spec }.into())
            .await
            .unwrap();
        let mut a = published.snapshot().records().job("j").unwrap().tasks["a"].clone();
        a.state = JobTaskState::Finished;
        a.attempts = 1;
        committer
            .submit(
                SchedulerCommand::UpdateJob(JobUpdate {
                    job_id: "j".into(),
                    state: None,
                    message: None,
                    finished_at: 0,
                    tasks: vec![a],
                })
                .into(),
            )
            .await
            .unwrap();
        committer
            .submit(
                SchedulerCommand::UpdateJob(JobUpdate {
                    job_id: "j".into(),
                    state: Some(JobState::Stopped),
                    message: Some("stopped".into()),
                    finished_at: 5,
                    tasks: vec![],
                })
                .into(),
            )
            .await
            .unwrap();
        let acked = published.snapshot().records().job("j").unwrap().clone();
        drop((committer, published));
        thread.join().unwrap();
        drop(store);
        let store: Arc<dyn Store> = match backend {
            "mem" => {
                mem.crash();
                mem.reboot();
                Arc::new(mem.clone())
            }
            _ => Arc::new(shoal_master::RedbStore::open(&path).unwrap()),
        };
        let cell = shoal_master::load_cell(store.as_ref()).unwrap();
        let job = cell
            .records()
            .job("j")
            .unwrap_or_else(|| panic!("{backend}: job lost"));
        assert_eq!(job.spec, acked.spec, "{backend}");
        assert_eq!(job.tasks, acked.tasks, "{backend}");
        assert_eq!(
            (job.state, job.finished_at, &job.message),
            (JobState::Stopped, 5, &Some("stopped".into())),
            "{backend}"
        );
    }
}

/// The store of format 1, checked in: made by [`store_fixture_is_made_by_the_commit_path`]
/// (run it with `SHOAL_STORE_FIXTURE_WRITE=1` to make the file again). Every later shoal must
/// open it, with the records [`check_fixture_records`] lists.
const FIXTURE_FORMAT_1: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-format-1.redb"
);
/// The meta table of a redb store, and its row of the store's format (JSON).
const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
const FORMAT_KEY: &str = "format";

fn register(hostname: &str, resources: &str, attributes: &[(&str, &str)]) -> Command {
    Command::RegisterAgent(AgentRegistration {
        agent_id: None,
        hostname: hostname.into(),
        port: 5051,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        domain: None,
        resources: ResourceSet::parse(resources).unwrap(),
    })
}

fn placement(task: &str, agent: &AgentId, resources: &str) -> Placement {
    Placement {
        task_id: TaskId::new(task),
        name: task.into(),
        agent_id: agent.clone(),
        resources: ResourceSet::parse(resources).unwrap(),
        spec: TaskSpec::new(&format!(
            r#"{{"command":{{"value":"true"}},"name":"{task}"}}"#
        )),
    }
}

fn claim(id: &str, role: &str, owner: &str, mode: CommitMode, placements: Vec<Placement>) -> Claim {
    Claim {
        id: ClaimId::new(id),
        role: role.into(),
        owner: owner.into(),
        snapshot_version: 0,
        mode,
        check: ConflictCheck::Fine,
        placements,
        priority: 0,
        evictions: vec![],
    }
}

fn task_status(task: &str, state: TaskState, healthy: Option<bool>) -> Command {
    Command::UpdateTaskStatus {
        task_id: TaskId::new(task),
        state,
        status: StatusInfo {
            source: Some("SOURCE_EXECUTOR".into()),
            healthy,
            timestamp: 2_000,
            ..StatusInfo::default()
        },
    }
}

/// Fills `store` through the commit path with a little of every record: two agents, a role,
/// three claims (one with a rejected placement), tasks that ran since they were placed, a job
/// with its tasks' records and a service with an instance; one log entry per command.
async fn make_fixture(store: Arc<dyn Store>) {
    use shoal_sched::batch::{parse_job_file, JobFormat, JobTaskState, JobUpdate, BATCH_OWNER};
    use shoal_sched::service::{
        parse_service_file, Instance, InstanceState, ServiceUpdate, SERVICE_OWNER,
    };
    let cell = shoal_master::load_cell(store.as_ref()).unwrap();
    let (committer, published, thread) =
        committer::start(cell, store, clock(), CommitConfig::default());
    let submit = |command: Command| {
        let committer = committer.clone();
        async move {
            let reply = committer.submit(command).await;
            reply.unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let mut agents = Vec::new();
    for command in [
        register("host-a", "cpus:4;mem:4096;ports:[31000-31999]", &[]),
        register("host-b", "cpus:2;mem:2048", &[("rack", "r1")]),
    ] {
        let Reply::Agent { agent_id } = submit(command).await else {
            panic!("an agent's id")
        };
        agents.push(agent_id);
    }
    let (a, b) = (&agents[0], &agents[1]);
    submit(Command::ConfigureRole {
        name: "web".into(),
        weight: 2.0,
        quota: Quota {
            guarantee: ResourceSet::parse("cpus:1;mem:256").unwrap(),
            limit: None,
        },
        preemptible: false,
    })
    .await;
    let job = "name = \"nightly\"\n[[tasks]]\nname = \"extract\"\ncommand = \"true\"\nresources = \"cpus:1;mem:64\"\n[[tasks]]\nname = \"load\"\ncommand = \"true\"\nresources = \"cpus:1\"\ndepends_on = [\"extract\"]\n";
    let spec = parse_job_file(job, JobFormat::Toml).unwrap();
    submit(SchedulerCommand::SubmitJob { spec }.into()).await;
    let extract = placement("nightly.extract.1", a, "cpus:1;mem:64");
    submit(Command::Claim(claim(
        "c-nightly-extract-1",
        "*",
        BATCH_OWNER,
        CommitMode::AllOrNothing,
        vec![extract],
    )))
    .await;
    submit(task_status("nightly.extract.1", TaskState::Running, None)).await;
    submit(task_status("nightly.extract.1", TaskState::Finished, None)).await;
    let mut record =
        published.snapshot().records().job("nightly").unwrap().tasks["extract"].clone();
    record.state = JobTaskState::Finished;
    record.attempts = 1;
    record.task_id = Some(TaskId::new("nightly.extract.1"));
    record.agent_id = Some(a.clone());
    record.started_at = 1_500;
    record.finished_at = 2_000;
    submit(
        SchedulerCommand::UpdateJob(JobUpdate {
            job_id: "nightly".into(),
            state: None,
            message: None,
            finished_at: 0,
            tasks: vec![record],
        })
        .into(),
    )
    .await;
    let service = "name = \"web\"\nteam = \"web\"\ncount = 1\n[task]\ncommand = \"serve\"\nresources = \"cpus:0.5;mem:128\"\n";
    let spec = parse_service_file(service).unwrap();
    submit(
        SchedulerCommand::SubmitService {
            spec: Box::new(spec),
        }
        .into(),
    )
    .await;
    submit(Command::Claim(claim(
        "c-web-0-1",
        "web",
        SERVICE_OWNER,
        CommitMode::AllOrNothing,
        vec![placement("web.0.1", b, "cpus:0.5;mem:128")],
    )))
    .await;
    submit(
        SchedulerCommand::UpdateService(ServiceUpdate {
            service_id: "web".into(),
            count: None,
            state: None,
            message: None,
            instances: vec![Instance {
                index: 0,
                generation: 1,
                spec_version: 1,
                state: InstanceState::Running,
                agent_id: Some(b.clone()),
                failures: 0,
                not_before: 0,
                started_at: 1_800,
                message: None,
            }],
            removed: vec![],
        })
        .into(),
    )
    .await;
    submit(task_status("web.0.1", TaskState::Running, Some(true))).await;
    // Incremental: the small task commits, the one larger than any agent is rejected.
    submit(Command::Claim(claim(
        "c-misc",
        "*",
        "fixture",
        CommitMode::Incremental,
        vec![
            placement("misc.small", a, "cpus:0.1;mem:16"),
            placement("misc.huge", b, "cpus:64"),
        ],
    )))
    .await;
    drop((committer, published));
    thread.join().unwrap();
}

/// What the fixture holds, read through `store` as the master reads it at start.
fn check_fixture_records(store: &dyn Store) {
    use shoal_sched::batch::JobTaskState;
    use shoal_sched::service::InstanceState;
    let cell = shoal_master::load_cell(store).unwrap();
    cell.check_invariants().unwrap();
    assert_eq!(cell.version(), 13, "one version per command");
    let host = |name: &str| {
        cell.agents()
            .find(|a| a.hostname == name)
            .unwrap_or_else(|| panic!("agent {name}"))
    };
    let (a, b) = (host("host-a"), host("host-b"));
    assert_eq!(cell.agents().count(), 2);
    assert_eq!(b.attributes.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(
        a.total,
        ResourceSet::parse("cpus:4;mem:4096;ports:[31000-31999]").unwrap()
    );
    let role = cell.role("web").expect("role web");
    assert_eq!((role.weight, role.preemptible), (2.0, false));
    assert_eq!(
        role.quota.guarantee,
        ResourceSet::parse("cpus:1;mem:256").unwrap()
    );

    let task = |id: &str| {
        cell.task(&TaskId::new(id))
            .unwrap_or_else(|| panic!("task {id}"))
    };
    let extract = task("nightly.extract.1");
    assert_eq!(
        (extract.state, &extract.agent_id),
        (TaskState::Finished, &a.id)
    );
    assert_eq!(
        extract.spec.as_str(),
        r#"{"command":{"value":"true"},"name":"nightly.extract.1"}"#
    );
    let web = task("web.0.1");
    assert_eq!(
        (web.state, web.status.healthy, &web.agent_id),
        (TaskState::Running, Some(true), &b.id)
    );
    assert_eq!(web.role, "web");
    assert_eq!(
        task("misc.small").state,
        TaskState::Staging,
        "placed and never changed"
    );
    assert!(cell.task(&TaskId::new("misc.huge")).is_none());
    assert_eq!(cell.tasks().count(), 3);

    assert_eq!(cell.claims().count(), 3);
    let misc = cell.claim(&ClaimId::new("c-misc")).expect("claim c-misc");
    let placed: Vec<_> = misc
        .placements
        .iter()
        .map(|p| (p.task_id.as_str(), p.committed, p.rejected.is_some()))
        .collect();
    assert_eq!(
        placed,
        [("misc.small", true, false), ("misc.huge", false, true)]
    );

    let job = cell.records().job("nightly").expect("job nightly");
    assert_eq!(job.tasks["extract"].state, JobTaskState::Finished);
    assert_eq!(
        job.tasks["extract"].task_id,
        Some(TaskId::new("nightly.extract.1"))
    );
    assert_eq!(job.tasks["load"].state, JobTaskState::Waiting);
    let service = cell.records().service("web").expect("service web");
    assert_eq!((service.count, service.spec_version), (1, 1));
    let instance = &service.instances[&0];
    assert_eq!(
        (instance.state, instance.agent_id.as_ref()),
        (InstanceState::Running, Some(&b.id))
    );

    // The whole log is there, a version each, and a claim's entry gives its tasks as placed.
    assert_eq!(store.log_floor().unwrap(), 1);
    let log = store.read_log(0, usize::MAX).unwrap();
    let versions: Vec<Version> = log.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=13).collect::<Vec<_>>());
    let commits: Vec<_> = log
        .iter()
        .flat_map(|e| &e.events)
        .filter_map(|ev| match ev {
            Event::ClaimCommitted { outcome, tasks, .. } => Some((
                outcome.claim_id.as_str(),
                tasks
                    .iter()
                    .map(|t| (t.id.as_str(), t.state))
                    .collect::<Vec<_>>(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        commits,
        [
            (
                "c-nightly-extract-1",
                vec![("nightly.extract.1", TaskState::Staging)]
            ),
            ("c-web-0-1", vec![("web.0.1", TaskState::Staging)]),
            ("c-misc", vec![("misc.small", TaskState::Staging)]),
        ]
    );
}

/// The format a redb store's meta row names.
fn format_row(path: &std::path::Path) -> Option<u32> {
    use redb::ReadableDatabase;
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let row = meta.get(FORMAT_KEY).unwrap();
    row.map(|v| serde_json::from_slice(v.value()).unwrap())
}

fn set_format_row(path: &std::path::Path, format: Option<u32>) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        match format {
            Some(f) => meta.insert(FORMAT_KEY, serde_json::to_vec(&f).unwrap().as_slice()),
            None => meta.remove(FORMAT_KEY),
        }
        .unwrap();
    }
    txn.commit().unwrap();
}

/// A copy of the fixture to open (opening a store writes to it).
fn fixture_copy(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("shoal.redb");
    std::fs::copy(FIXTURE_FORMAT_1, &path).expect("the fixture store of format 1");
    path
}

/// The store of format 1 opens in this shoal with every record it was made with.
#[test]
fn the_store_fixture_of_format_1_opens_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(&dir);
    assert_eq!(format_row(&path), Some(1));
    let store = shoal_master::RedbStore::open(&path).unwrap();
    check_fixture_records(&store);
    drop(store);
    assert_eq!(format_row(&path), Some(shoal_master::store::FORMAT));
}

/// The fixture is what today's commit path makes (and is made again with
/// `SHOAL_STORE_FIXTURE_WRITE=1`): a store with a little of every record, compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fixture_is_made_by_the_commit_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.redb");
    make_fixture(Arc::new(shoal_master::RedbStore::open(&path).unwrap())).await;
    redb::Database::open(&path).unwrap().compact().unwrap();
    assert_eq!(format_row(&path), Some(shoal_master::store::FORMAT));
    check_fixture_records(&shoal_master::RedbStore::open(&path).unwrap());
    if std::env::var_os("SHOAL_STORE_FIXTURE_WRITE").is_some() {
        std::fs::copy(&path, FIXTURE_FORMAT_1).unwrap();
    }
}

/// A store made before the format row existed is of format 1: it opens, and is upgraded to
/// this shoal's format (its row says so).
#[test]
fn a_store_without_a_format_row_opens_as_format_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(&dir);
    set_format_row(&path, None);
    let store = shoal_master::RedbStore::open(&path).unwrap();
    check_fixture_records(&store);
    drop(store);
    assert_eq!(format_row(&path), Some(shoal_master::store::FORMAT));
}

/// A store of a newer format is refused with an error that says so, and left as it was: a
/// shoal of its format still finds every record.
#[test]
fn a_store_of_a_newer_format_is_refused_and_left_as_it_was() {
    use shoal_master::store::{StoreError, FORMAT};
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_copy(&dir);
    set_format_row(&path, Some(FORMAT + 1));
    let before = std::fs::read(&path).unwrap();
    let err = shoal_master::RedbStore::open(&path).err().expect("refused");
    assert!(
        matches!(err, StoreError::NewerFormat { found, known } if found == FORMAT + 1 && known == FORMAT),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this shoal knows"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "not a byte changed");
    assert_eq!(format_row(&path), Some(FORMAT + 1));
    set_format_row(&path, Some(FORMAT));
    check_fixture_records(&shoal_master::RedbStore::open(&path).unwrap());
}
