//! Offers and native claims on one cell: Mesos frameworks (the pymesos scripts in
//! `tests/frameworks/`) get pessimistic offers, which are holds in the same state native
//! schedulers claim from.
//!
//! * Starvation: with `--offers-per-framework-max 1`, a framework that holds every offer and
//!   never answers (hog.py) keeps one agent of three; a framework subscribing after it
//!   (starved.py) gets an offer within 5 s and runs a task.
//! * Mixed: one small agent shared by an offer-based framework (busy.py) and a native
//!   scheduler (this test), both launching short tasks for 5 s while a checker polls the
//!   native state many times a second: no agent is ever double-booked. While the framework
//!   holds an offer, a native claim on the agent is refused (409, `insufficient_resources`).
//!
//! Skipped (printed) outside CI when `SHOAL_TEST_PYTHON` is unset, as tests/tests/mesos.rs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_client::{command_task, ClaimRequest, PlacementRequest};
use shoal_core::{CommitMode, ConflictCheck, ResourceSet, TaskState};
use shoal_tests::{
    check_no_double_booking, held_resources, hold_for, spawn_script, test_python, unique,
    wait_until, BackgroundScript, MesosAgentSpec, MesosCell, ScriptRun,
};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

/// A [`MesosCell`] with `agents` equal process agents, and the Python to run frameworks with.
struct Cell {
    cell: MesosCell,
    python: PathBuf,
}

impl std::ops::Deref for Cell {
    type Target = MesosCell;
    fn deref(&self) -> &MesosCell {
        &self.cell
    }
}

impl Cell {
    async fn start(
        name: &str,
        python: PathBuf,
        master_flags: &[&str],
        agents: usize,
        resources: &str,
    ) -> Cell {
        let specs = vec![MesosAgentSpec::process(resources); agents];
        let cell = MesosCell::start(name, master_flags, &specs)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Cell { cell, python }
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("frameworks")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn spawn(&self, script: &str, args: &[&str]) -> BackgroundScript {
        let mut all = vec![self.master.host_port()];
        all.extend_from_slice(args);
        spawn_script(&self.python, script, &all, &self.log_dir())
    }

    fn report(&self, runs: &[(&str, String)]) -> String {
        let mut out = String::new();
        for (what, output) in runs {
            out.push_str(&format!("----- {what} -----\n{output}"));
        }
        out.push_str(&self.logs(120, 30));
        out
    }

    fn wait(&self, script: BackgroundScript) -> ScriptRun {
        tokio::task::block_in_place(|| script.wait(SCRIPT_TIMEOUT))
    }
}

async fn wait_file(path: &str, deadline: Duration, script: &BackgroundScript, cell: &Cell) {
    let until = Instant::now() + deadline;
    while !Path::new(path).exists() {
        if Instant::now() > until {
            panic!(
                "{path} not written within {deadline:?}\n{}",
                cell.report(&[(&script.script, script.output())])
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_offer_cap_keeps_a_silent_framework_from_starving_another() {
    let Some(python) =
        test_python("mesos_offer_cap_keeps_a_silent_framework_from_starving_another")
    else {
        return;
    };
    let cell = Cell::start(
        "starve",
        python,
        &["--offers-per-framework-max", "1"],
        3,
        "cpus:1;mem:256",
    )
    .await;
    let client = cell.master.client();
    let (ready, stop) = (cell.path("hog.ready"), cell.path("hog.stop"));

    // Watches, throughout, how many agents are held by offers: at most one per framework.
    let most_held = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (client, most_held, done) = (client.clone(), most_held.clone(), done.clone());
        let limit = Arc::new(AtomicUsize::new(1));
        let l2 = limit.clone();
        let h = tokio::spawn(async move {
            let mut violations = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(st) = client.state().await {
                    match held_resources(&st) {
                        Ok(held) => {
                            most_held.fetch_max(held.len(), Ordering::Relaxed);
                            if held.len() > l2.load(Ordering::Relaxed) {
                                violations.push(format!(
                                    "version {}: {} agents held: {held:?}",
                                    st.version,
                                    held.len()
                                ));
                            }
                        }
                        Err(e) => violations.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            violations
        });
        (h, limit)
    };

    let hog = cell.spawn(
        "hog.py",
        &["--cap", "1", "--ready-file", &ready, "--stop-file", &stop],
    );
    wait_file(&ready, Duration::from_secs(15), &hog, &cell).await;
    // Ten allocation rounds with the hog alone: it keeps one agent, two stay free, throughout.
    hold_for(
        "the hog holds exactly one agent",
        Duration::from_secs(1),
        || async {
            let st = client.state().await.map_err(|e| e.to_string())?;
            match held_resources(&st)? {
                held if held.len() == 1 => Ok(()),
                held => Err(format!(
                    "{held:?}\n{}",
                    cell.report(&[("hog.py", hog.output())])
                )),
            }
        },
    )
    .await;

    // The second framework may hold one more.
    watcher.1.store(2, Ordering::Relaxed);
    let task = unique("starved");
    let starved = cell.spawn("starved.py", &["--task-id", &task, "--offer-within", "5"]);
    let starved = cell.wait(starved);
    std::fs::write(&stop, "stop").unwrap();
    let hog = cell.wait(hog);
    done.store(true, Ordering::Relaxed);
    let violations = watcher.0.await.unwrap();
    let report = || {
        cell.report(&[
            (&starved.outcome(), starved.output.clone()),
            (&hog.outcome(), hog.output.clone()),
        ])
    };
    assert!(
        starved.success(),
        "the second framework starved or failed\n{}",
        report()
    );
    assert!(hog.success(), "the hog failed\n{}", report());
    assert!(
        hog.output.contains("MAX_OUTSTANDING 1"),
        "the hog held more than one offer at once\n{}",
        report()
    );
    assert!(
        violations.is_empty(),
        "more agents held than the cap allows: {violations:?}\n{}",
        report()
    );
    eprintln!(
        "starved.py: {}\nmost agents held at once: {}",
        starved
            .output
            .lines()
            .find(|l| l.contains("FIRST_OFFER_AFTER"))
            .unwrap_or("?"),
        most_held.load(Ordering::Relaxed)
    );
    let t = client.task(&task).await.unwrap();
    assert_eq!(t.state, TaskState::Finished, "{t:?}");
}

/// The outcome of one native claim, with its HTTP status.
async fn claim_raw(http: &reqwest::Client, base: &str, claim: &ClaimRequest<'_>) -> (u16, Json) {
    let resp = http
        .post(format!("{base}/api/shoal/v1/claims"))
        .json(claim)
        .send()
        .await
        .expect("claim");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Json::Null))
}

fn native_claim(id: &str, agent_id: &str, version: u64) -> ClaimRequest<'static> {
    let res = ResourceSet::parse("cpus:0.25;mem:32").unwrap();
    ClaimRequest {
        claim_id: format!("claim-{id}"),
        role: "*".into(),
        owner: "mixed-native".into(),
        snapshot_version: version,
        mode: CommitMode::Incremental,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: vec![PlacementRequest::new(
            agent_id.to_string(),
            &command_task(id, id, &res, "sleep 0.2"),
        )],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_offers_and_native_claims_never_double_book_an_agent() {
    let Some(python) = test_python("mesos_offers_and_native_claims_never_double_book_an_agent")
    else {
        return;
    };
    let cell = Cell::start("mixed", python, &[], 1, "cpus:1;mem:256").await;
    let agent = cell.agent_ids[0].clone();
    let client = cell.master.client();
    let http = reqwest::Client::new();
    let base = cell.master.addr.clone();
    let (hold_file, released_file) = (cell.path("busy.hold"), cell.path("busy.released"));
    let prefix = unique("fw");

    // The checker: the native state, polled as fast as it answers (with a 10 ms pause).
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let checker = {
        let (client, done, polls) = (client.clone(), done.clone(), polls.clone());
        tokio::spawn(async move {
            let mut violations = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(st) = client.state().await {
                    polls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = check_no_double_booking(&st) {
                        violations.push(e);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            violations
        })
    };
    let started = Instant::now();

    let busy = cell.spawn(
        "busy.py",
        &[
            "--task-id",
            &prefix,
            "--hold-file",
            &hold_file,
            "--released-file",
            &released_file,
            "--hold",
            "1.0",
            "--duration",
            "5",
        ],
    );

    // Phase 1: the framework holds its offer (the whole agent); a native claim is refused.
    wait_file(&hold_file, Duration::from_secs(15), &busy, &cell).await;
    let st = client.state().await.unwrap();
    let held = held_resources(&st).unwrap();
    let id = unique("nat-held");
    let (status, body) = claim_raw(&http, &base, &native_claim(&id, &agent, st.version)).await;
    let late = Path::new(&released_file).exists();
    assert!(
        !late,
        "timing: the claim returned after the framework released its offer; raise --hold\n{}",
        cell.report(&[("busy.py", busy.output())])
    );
    assert!(
        held.contains_key(&agent),
        "the offer should hold the agent: {held:?}"
    );
    assert_eq!(
        status, 409,
        "a claim on held resources must be refused with 409: {body}"
    );
    assert_eq!(
        body["placements"][0]["rejected"]["reason"], "insufficient_resources",
        "{body}"
    );
    assert_eq!(body["placements"][0]["committed"], false, "{body}");

    // Phase 2: native claims for 5 s, one task each on a fresh snapshot, while the framework
    // accepts its offers.
    let mut native: Vec<String> = Vec::new();
    let mut refused: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let until = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while Instant::now() < until {
        let st = client.state().await.unwrap();
        n += 1;
        let id = format!("{prefix}-nat-{n}");
        let answer = client
            .claim(&native_claim(&id, &agent, st.version))
            .await
            .unwrap();
        match answer.outcome.placements.first() {
            Some(p) if p.committed => native.push(id),
            Some(p) => {
                let why = serde_json::to_value(&p.rejected).unwrap()["reason"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                *refused.entry(why).or_default() += 1;
            }
            None => panic!("claim {id}: no placement in the answer"),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let busy = cell.wait(busy);
    let report = || cell.report(&[(&busy.outcome(), busy.output.clone())]);
    assert!(busy.success(), "{}", report());
    // The native tasks end too.
    wait_until("the native tasks to end", Duration::from_secs(15), || {
        let client = client.clone();
        async move {
            client
                .state()
                .await
                .map(|st| st.tasks.iter().all(|t| t.state.is_terminal()))
                .unwrap_or(false)
        }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let violations = checker.await.unwrap();
    let elapsed = started.elapsed();
    let polls = polls.load(Ordering::Relaxed);

    let st = client.state().await.unwrap();
    let by_native: Vec<_> = st
        .tasks
        .iter()
        .filter(|t| t.owner == "mixed-native")
        .collect();
    let by_framework: Vec<_> = st
        .tasks
        .iter()
        .filter(|t| t.owner != "mixed-native")
        .collect();
    eprintln!(
        "native: {} committed, refused {refused:?}; framework: {} tasks; {polls} state polls in {elapsed:?}\n{}",
        native.len(),
        by_framework.len(),
        busy.output.lines().find(|l| l.contains("LAUNCHED")).unwrap_or("?")
    );
    assert!(
        violations.is_empty(),
        "double-booking seen ({} times), first: {}\n{}",
        violations.len(),
        violations[0],
        report()
    );
    assert!(
        !native.is_empty(),
        "no native claim committed in 5 s (refused: {refused:?})\n{}",
        report()
    );
    assert!(
        !by_framework.is_empty(),
        "the framework launched nothing\n{}",
        report()
    );
    assert_eq!(by_native.len(), native.len(), "native tasks in the state");
    for t in by_native.iter().chain(by_framework.iter()) {
        assert_eq!(
            t.state,
            TaskState::Finished,
            "task {} ({}) ended {:?}: {:?}\n{}",
            t.id,
            t.owner,
            t.state,
            t.status,
            report()
        );
    }
    assert!(
        polls as f64 / elapsed.as_secs_f64() >= 10.0,
        "only {polls} state polls in {elapsed:?}"
    );
}
