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

fn clock() -> Arc<dyn Fn() -> Timestamp + Send + Sync> {
    let t = Arc::new(AtomicU64::new(1_000));
    Arc::new(move || t.fetch_add(1, Ordering::Relaxed))
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
    use shoal_core::jobs::{parse_job_file, JobFormat, JobState, JobTaskState, JobUpdate};
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
        committer.submit(Command::SubmitJob { spec }).await.unwrap();
        let mut a = published.snapshot().job("j").unwrap().tasks["a"].clone();
        a.state = JobTaskState::Finished;
        a.attempts = 1;
        committer
            .submit(Command::UpdateJob(JobUpdate {
                job_id: "j".into(),
                state: None,
                message: None,
                finished_at: 0,
                tasks: vec![a],
            }))
            .await
            .unwrap();
        committer
            .submit(Command::UpdateJob(JobUpdate {
                job_id: "j".into(),
                state: Some(JobState::Stopped),
                message: Some("stopped".into()),
                finished_at: 5,
                tasks: vec![],
            }))
            .await
            .unwrap();
        let acked = published.snapshot().job("j").unwrap().clone();
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
