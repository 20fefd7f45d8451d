//! Service files and the service scheduler, on the sans-IO core: validation names the field;
//! placement binpacks or spreads and honours `unique` and `max_per`; a rolling update never
//! has more than `count + max_surge` instances nor fewer than `count - max_unavailable`
//! available; ended instances come back after a doubling backoff; a scheduler rebuilt at any
//! point adopts what runs and never starts an instance twice.

use std::collections::{BTreeMap, HashMap};

use shoal_core::*;
use shoal_sched::service::*;
use shoal_sched::{Cell, Command, Reply, SchedulerCommand, SchedulerReply};

fn spec(text: &str) -> ServiceSpec {
    parse_service_file(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn errors(text: &str) -> String {
    match CompiledService::compile(&spec(text)) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = "name = \"web\"\ncount = 3\n[task]\ncommand = \"x\"\nresources = \"cpus:1;mem:64\"\nports = [\"http\"]\n";

#[test]
fn the_example_service_files_are_valid() {
    for (name, text) in [
        ("web.toml", include_str!("../../examples/services/web.toml")),
        (
            "worker.toml",
            include_str!("../../examples/services/worker.toml"),
        ),
        (
            "docker.toml",
            include_str!("../../examples/services/docker.toml"),
        ),
    ] {
        let s = parse_service_file(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        CompiledService::compile(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn validation_errors_name_the_field() {
    let cases = [
        (format!("{BASE}[health_check]\ntype = \"http\"\nport = \"admin\"\n"), "health_check.port: 'admin' is not one of the task's ports"),
        (format!("{BASE}[health_check]\ntype = \"command\"\n"), "health_check.command"),
        (format!("{BASE}[health_check]\ntype = \"tcp\"\ninterval = \"soon\"\n"), "health_check.interval: 'soon'"),
        (format!("{BASE}[health_check]\ntype = \"http\"\nmax_consecutive_failures = 0\n"), "health_check.max_consecutive_failures"),
        (format!("{BASE}[update]\nmax_surge = 0\nmax_unavailable = 0\n"), "update: max_surge and max_unavailable are both 0"),
        (format!("{BASE}[restart]\nbackoff = \"5\"\n"), "restart.backoff"),
        (BASE.replace("count = 3\n", "count = 3\nconstraints = [{ attribute = \"zone\", operator = \"max_per\", value = \"x\" }]\n"), "constraints: max_per on zone"),
        (BASE.replace("cpus:1;mem:64", "cpus:one"), "task.resources"),
        (BASE.replace("command = \"x\"\n", ""), "task.command: a task needs a command or an image"),
        (BASE.replace("\"web\"", "\"a.b\""), "name: 'a.b'"),
        (BASE.replace("count = 3", "count = 20000"), "count: 20000 is more than"),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        assert!(got.contains(want), "{got:?} lacks {want:?} for\n{text}");
    }
    let bad = parse_service_file(&format!("{BASE}colour = \"red\"\n")).unwrap_err();
    assert!(bad.contains("colour"), "{bad}");
    let bad = parse_service_file(&BASE.replace("command", "comand")).unwrap_err();
    assert!(bad.contains("comand"), "{bad}");
}

// ---------------------------------------------------------------------------------------------
// A simulated cell

struct Sim {
    cell: Cell,
    sched: ServiceScheduler,
    now: Timestamp,
    /// The agents' verdict for tasks with a health check, by task id (default healthy).
    unhealthy: HashMap<TaskId, bool>,
    /// Tasks whose spec contains this text are never healthy.
    sick_marker: Option<String>,
}

impl Sim {
    fn new(agents: &[(&str, &str, &str)]) -> Sim {
        let mut cell = Cell::new(CellConfig {
            cell_id: "c".into(),
        });
        for (host, res, attrs) in agents {
            let attributes: BTreeMap<String, String> = attrs
                .split(';')
                .filter(|a| !a.is_empty())
                .map(|a| {
                    let (k, v) = a.split_once(':').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            cell.commit(
                1,
                &Command::RegisterAgent(AgentRegistration {
                    agent_id: Some(AgentId::new(format!("a-{host}"))),
                    hostname: host.to_string(),
                    port: 0,
                    attributes,
                    domain: None,
                    resources: ResourceSet::parse(res).unwrap(),
                }),
            )
            .unwrap();
        }
        Sim {
            cell,
            sched: ServiceScheduler::new(),
            now: 1000,
            unhealthy: HashMap::new(),
            sick_marker: None,
        }
    }

    fn commit(&mut self, c: impl Into<Command>) -> Result<Reply, Rejection> {
        let (entry, reply) = self.cell.commit(self.now, &c.into())?;
        if let Some(e) = entry {
            self.sched.observe(&e);
        }
        Ok(reply)
    }

    fn submit(&mut self, text: &str) -> Reply {
        self.commit(SchedulerCommand::SubmitService {
            spec: Box::new(spec(text)),
        })
        .unwrap()
    }

    /// One scheduler step and its actions, in the driver's order.
    fn step(&mut self) {
        let actions = self.sched.step(&self.cell, self.now);
        for u in actions.updates {
            self.commit(SchedulerCommand::UpdateService(u)).unwrap();
        }
        for c in actions.claims {
            let reply = self.commit(Command::Claim(c.clone())).unwrap();
            let Reply::Claim { outcome } = reply else {
                panic!()
            };
            self.sched.claimed(&c, Some(&outcome), self.now);
        }
        for task_id in actions.kills {
            self.commit(Command::KillTask { task_id }).unwrap();
        }
        self.cell.check_invariants().unwrap();
    }

    /// The agents: staging tasks run (healthy unless told otherwise), killing tasks end.
    fn agents(&mut self) {
        let tasks: Vec<Task> = self
            .cell
            .tasks()
            .filter(|t| !t.state.is_terminal())
            .cloned()
            .collect();
        for t in tasks {
            let checked = t.spec.as_str().contains("health_check");
            let sick = self.unhealthy.get(&t.id).copied().unwrap_or(false)
                || self
                    .sick_marker
                    .as_ref()
                    .is_some_and(|m| t.spec.as_str().contains(m.as_str()));
            let healthy = checked.then_some(!sick);
            let next = match t.state {
                TaskState::Staging => Some((TaskState::Running, healthy)),
                TaskState::Running if t.status.healthy != healthy => {
                    Some((TaskState::Running, healthy))
                }
                TaskState::Killing => Some((TaskState::Killed, None)),
                _ => None,
            };
            if let Some((state, healthy)) = next {
                self.commit(Command::UpdateTaskStatus {
                    task_id: t.id.clone(),
                    state,
                    status: StatusInfo {
                        healthy,
                        ..StatusInfo::default()
                    },
                })
                .unwrap();
            }
        }
    }

    /// Steps and agent rounds until nothing changes, advancing the clock by `tick` each round.
    fn settle(&mut self, tick: u64, rounds: usize, mut check: impl FnMut(&Sim)) {
        for _ in 0..rounds {
            self.step();
            check(self);
            self.agents();
            check(self);
            self.now += tick;
        }
    }

    fn svc(&self, id: &str) -> &Service {
        self.cell.records().service(id).unwrap()
    }

    fn live_tasks(&self, id: &str) -> Vec<&Task> {
        self.cell
            .tasks()
            .filter(|t| t.id.as_str().starts_with(&format!("{id}.")) && !t.state.is_terminal())
            .collect()
    }

    fn available(&self, id: &str) -> usize {
        self.live_tasks(id)
            .iter()
            .filter(|t| t.state == TaskState::Running && t.status.healthy != Some(false))
            .count()
    }

    fn hosts(&self, id: &str) -> Vec<String> {
        let mut h: Vec<String> = self
            .live_tasks(id)
            .iter()
            .map(|t| self.cell.agent(&t.agent_id).unwrap().hostname.clone())
            .collect();
        h.sort();
        h
    }
}

fn service(extra: &str) -> String {
    format!("name = \"web\"\ncount = 3\n{extra}\n[task]\ncommand = \"x\"\nresources = \"cpus:1;mem:64\"\n")
}

#[test]
fn a_service_reaches_its_count_and_settles() {
    let mut sim = Sim::new(&[("h1", "cpus:4;mem:1024", ""), ("h2", "cpus:4;mem:1024", "")]);
    assert!(matches!(
        sim.submit(&service("")),
        Reply::Records(SchedulerReply::Service { created: true, .. })
    ));
    sim.settle(100, 5, |_| {});
    assert_eq!(sim.live_tasks("web").len(), 3);
    assert!(sim.svc("web").settled(&sim.cell));
    // The same file again changes nothing.
    assert!(matches!(
        sim.submit(&service("")),
        Reply::Records(SchedulerReply::Service {
            created: false,
            changed: false,
            ..
        })
    ));
    let v = sim.cell.version();
    sim.settle(100, 3, |_| {});
    assert_eq!(sim.cell.version(), v, "a settled service commits nothing");
}

#[test]
fn binpack_fills_the_fullest_agent_and_spread_balances_zones() {
    let agents = [
        ("h1", "cpus:8;mem:4096", "zone:a"),
        ("h2", "cpus:8;mem:4096", "zone:a"),
        ("h3", "cpus:8;mem:4096", "zone:b"),
    ];
    let mut sim = Sim::new(&agents);
    sim.submit(&service("placement = \"binpack\""));
    sim.settle(100, 5, |_| {});
    let hosts = sim.hosts("web");
    assert!(
        hosts.iter().all(|h| *h == hosts[0]),
        "binpack puts all three on one agent: {hosts:?}"
    );

    let mut sim = Sim::new(&agents);
    sim.submit(
        &service("count = 4\nplacement = \"spread\"\nspread_by = \"zone\"")
            .replace("count = 3\n", ""),
    );
    sim.settle(100, 5, |_| {});
    let zones: Vec<String> = sim
        .live_tasks("web")
        .iter()
        .map(|t| sim.cell.agent(&t.agent_id).unwrap().attributes["zone"].clone())
        .collect();
    assert_eq!(zones.iter().filter(|z| *z == "a").count(), 2, "{zones:?}");
    assert_eq!(zones.iter().filter(|z| *z == "b").count(), 2, "{zones:?}");
    // Within zone a, the tie goes to the emptier agent: one instance each on h1 and h2.
    let hosts = sim.hosts("web");
    assert!(
        hosts.contains(&"h1".into()) && hosts.contains(&"h2".into()),
        "{hosts:?}"
    );
}

#[test]
fn unique_and_max_per_constraints_hold() {
    let agents = [
        ("h1", "cpus:8;mem:4096", "zone:a"),
        ("h2", "cpus:8;mem:4096", "zone:a"),
        ("h3", "cpus:8;mem:4096", "zone:b"),
    ];
    let mut sim = Sim::new(&agents);
    sim.submit(&service(
        "count = 4\nplacement = \"binpack\"\nconstraints = [{ attribute = \"hostname\", operator = \"unique\" }]",
    ).replace("count = 3\n", ""));
    sim.settle(100, 5, |_| {});
    assert_eq!(
        sim.hosts("web"),
        vec!["h1", "h2", "h3"],
        "unique: one per host, the 4th waits"
    );
    let pending = sim.svc("web").counts(&sim.cell).pending;
    assert_eq!(pending, 1);

    let mut sim = Sim::new(&agents);
    sim.submit(&service(
        "count = 4\nplacement = \"binpack\"\nconstraints = [{ attribute = \"zone\", operator = \"max_per\", value = \"2\" }, { attribute = \"hostname\", operator = \"not_equals\", value = \"h2\" }]",
    ).replace("count = 3\n", ""));
    sim.settle(100, 5, |_| {});
    let hosts = sim.hosts("web");
    assert_eq!(hosts.iter().filter(|h| *h == "h1").count(), 2, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| *h == "h3").count(), 2, "{hosts:?}");
}

#[test]
fn ended_instances_restart_with_a_doubling_backoff() {
    let mut sim = Sim::new(&[("h1", "cpus:4;mem:1024", "")]);
    sim.submit(
        &service("count = 1\n[restart]\nbackoff = \"1s\"\nmax_backoff = \"3s\"")
            .replace("count = 3\n", ""),
    );
    sim.settle(10, 4, |_| {});
    let mut last = sim.live_tasks("web")[0].id.clone();
    assert_eq!(last.as_str(), "web.0.1");
    let mut expected_waits = vec![1000, 2000, 3000, 3000].into_iter();
    for generation in 2..=5 {
        // The instance's task fails.
        sim.commit(Command::UpdateTaskStatus {
            task_id: last.clone(),
            state: TaskState::Failed,
            status: StatusInfo::default(),
        })
        .unwrap();
        let failed_at = sim.now;
        sim.step();
        let i = sim.svc("web").instances[&0].clone();
        assert_eq!(i.state, InstanceState::Pending);
        assert_eq!(i.generation, generation);
        let wait = expected_waits.next().unwrap();
        assert_eq!(i.not_before, failed_at + wait, "generation {generation}");
        // Nothing is placed before the backoff ends.
        sim.now = i.not_before - 1;
        sim.step();
        assert!(sim.live_tasks("web").is_empty());
        sim.now = i.not_before;
        sim.settle(10, 3, |_| {});
        last = sim.live_tasks("web")[0].id.clone();
        assert_eq!(last, instance_task_id("web", 0, generation));
    }
    // An instance that ran long enough starts over at the base backoff.
    sim.now += FAILURES_RESET_MS;
    sim.commit(Command::UpdateTaskStatus {
        task_id: last.clone(),
        state: TaskState::Failed,
        status: StatusInfo::default(),
    })
    .unwrap();
    sim.step();
    let i = sim.svc("web").instances[&0].clone();
    assert_eq!((i.failures, i.not_before), (1, sim.now + 1000));
}

#[test]
fn a_rolling_update_respects_surge_and_unavailable() {
    for (surge, unavailable) in [(1, 0), (0, 1), (2, 1), (1, 2)] {
        let mut sim = Sim::new(&[
            ("h1", "cpus:16;mem:4096", ""),
            ("h2", "cpus:16;mem:4096", ""),
        ]);
        let file = |env: &str| {
            format!(
                "name = \"web\"\ncount = 4\n[update]\nmax_surge = {surge}\nmax_unavailable = {unavailable}\n\
                 [health_check]\ntype = \"command\"\ncommand = \"true\"\n\
                 [task]\ncommand = \"x\"\nresources = \"cpus:1;mem:64\"\nenv = {{ V = \"{env}\" }}\n"
            )
        };
        sim.submit(&file("1"));
        sim.settle(100, 6, |_| {});
        assert_eq!(sim.available("web"), 4);
        assert!(matches!(
            sim.submit(&file("2")),
            Reply::Records(SchedulerReply::Service {
                created: false,
                changed: true,
                ..
            })
        ));
        let mut max_live = 0;
        let mut min_avail = usize::MAX;
        sim.settle(100, 40, |s| {
            if s.live_tasks("web").len() > 4 + surge as usize {
                eprintln!(
                    "tasks: {:?}",
                    s.live_tasks("web")
                        .iter()
                        .map(|t| (t.id.to_string(), t.state))
                        .collect::<Vec<_>>()
                );
                eprintln!(
                    "records: {:?}",
                    s.svc("web")
                        .instances
                        .values()
                        .map(|i| (i.index, i.generation, i.spec_version, i.state))
                        .collect::<Vec<_>>()
                );
            }
            max_live = max_live.max(s.live_tasks("web").len());
            min_avail = min_avail.min(s.available("web"));
            assert!(s.svc("web").instances.len() <= 4 + surge as usize);
        });
        assert!(
            max_live <= 4 + surge as usize,
            "surge {surge}: {max_live} live tasks"
        );
        assert!(
            min_avail >= 4 - unavailable as usize,
            "unavailable {unavailable}: {min_avail} available"
        );
        let svc = sim.svc("web");
        assert!(
            svc.settled(&sim.cell),
            "surge {surge} unavailable {unavailable}: {:?}",
            svc.counts(&sim.cell)
        );
        for t in sim.live_tasks("web") {
            assert!(
                t.spec.as_str().contains("\"value\":\"2\""),
                "{} runs the old spec",
                t.id
            );
        }
    }
}

#[test]
fn unhealthy_new_instances_stop_the_update() {
    let mut sim = Sim::new(&[("h1", "cpus:16;mem:4096", "")]);
    let file = |cmd: &str| {
        format!(
            "name = \"web\"\ncount = 2\n[health_check]\ntype = \"command\"\ncommand = \"true\"\n\
             [task]\ncommand = \"{cmd}\"\nresources = \"cpus:1;mem:64\"\n"
        )
    };
    sim.submit(&file("good"));
    sim.settle(100, 5, |_| {});
    sim.sick_marker = Some("bad".into());
    sim.submit(&file("bad"));
    // New tasks never become healthy.
    sim.settle(100, 20, |s| assert!(s.available("web") >= 2));
    let c = sim.svc("web").counts(&sim.cell);
    assert_eq!((c.old, c.available), (2, 2), "{c:?}");
}

#[test]
fn scale_and_stop() {
    let mut sim = Sim::new(&[("h1", "cpus:16;mem:4096", "")]);
    sim.submit(&service(""));
    sim.settle(100, 5, |_| {});
    sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "web".into(),
        count: Some(5),
        ..ServiceUpdate::default()
    }))
    .unwrap();
    sim.settle(100, 5, |_| {});
    assert_eq!(sim.live_tasks("web").len(), 5);
    sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "web".into(),
        count: Some(2),
        ..ServiceUpdate::default()
    }))
    .unwrap();
    sim.settle(100, 5, |_| {});
    assert_eq!(sim.live_tasks("web").len(), 2);
    assert!(sim.svc("web").settled(&sim.cell));
    // Scaling up again reuses indices with fresh task ids.
    sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "web".into(),
        count: Some(4),
        ..ServiceUpdate::default()
    }))
    .unwrap();
    sim.settle(100, 5, |_| {});
    assert_eq!(sim.live_tasks("web").len(), 4);
    let bad = sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "nope".into(),
        count: Some(2),
        ..ServiceUpdate::default()
    }));
    assert!(matches!(bad, Err(Rejection::NotFound(_))));
    sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "web".into(),
        state: Some(ServiceState::Stopped),
        ..ServiceUpdate::default()
    }))
    .unwrap();
    sim.settle(100, 5, |_| {});
    assert!(sim.live_tasks("web").is_empty());
    assert!(sim.svc("web").instances.is_empty());
    assert!(sim.svc("web").settled(&sim.cell));
    // A stopped service takes no scale; its file runs it again.
    let refused = sim.commit(SchedulerCommand::UpdateService(ServiceUpdate {
        service_id: "web".into(),
        count: Some(2),
        ..ServiceUpdate::default()
    }));
    assert!(matches!(refused, Err(Rejection::Conflict(_))));
    sim.submit(&service(""));
    sim.settle(100, 5, |_| {});
    assert_eq!(sim.live_tasks("web").len(), 3);
}

#[test]
fn a_rebuilt_scheduler_adopts_and_never_starts_an_instance_twice() {
    // Rebuild the scheduler after every step, before its actions are carried out, between
    // its record updates and its claims, and between the claims and the agents.
    for crash_at in 0..4 {
        let mut sim = Sim::new(&[
            ("h1", "cpus:16;mem:4096", ""),
            ("h2", "cpus:16;mem:4096", ""),
        ]);
        sim.submit(&service("count = 4\n[update]\nmax_surge = 2").replace("count = 3\n", ""));
        let mut started: HashMap<String, u32> = HashMap::new();
        for round in 0..30 {
            if round == 10 {
                sim.submit(
                    &service("count = 4\n[update]\nmax_surge = 2")
                        .replace("count = 3\n", "")
                        .replace("command = \"x\"", "command = \"y\""),
                );
            }
            let actions = sim.sched.step(&sim.cell, sim.now);
            if crash_at == 0 {
                sim.sched = ServiceScheduler::recover(&sim.cell);
                continue_round(&mut sim);
                continue;
            }
            for u in actions.updates {
                sim.commit(SchedulerCommand::UpdateService(u)).unwrap();
            }
            if crash_at == 1 {
                sim.sched = ServiceScheduler::recover(&sim.cell);
                continue_round(&mut sim);
                continue;
            }
            for c in actions.claims {
                let Reply::Claim { outcome } = sim.commit(Command::Claim(c.clone())).unwrap()
                else {
                    panic!()
                };
                for p in outcome.placements.iter().filter(|p| p.committed) {
                    *started.entry(p.task_id.to_string()).or_default() += 1;
                }
                sim.sched.claimed(&c, Some(&outcome), sim.now);
            }
            if crash_at == 2 {
                sim.sched = ServiceScheduler::recover(&sim.cell);
            }
            for task_id in actions.kills {
                sim.commit(Command::KillTask { task_id }).unwrap();
            }
            if crash_at == 3 {
                sim.sched = ServiceScheduler::recover(&sim.cell);
            }
            continue_round(&mut sim);
            assert!(sim.live_tasks("web").len() <= 6, "round {round}");
        }
        // Settle with a healthy scheduler.
        sim.sched = ServiceScheduler::recover(&sim.cell);
        sim.settle(100, 20, |_| {});
        assert!(started.values().all(|n| *n == 1), "a task id started twice");
        let live = sim.live_tasks("web");
        assert_eq!(live.len(), 4, "crash at {crash_at}");
        let mut indices: Vec<String> = live
            .iter()
            .map(|t| t.id.as_str().split('.').nth(1).unwrap().to_string())
            .collect();
        indices.dedup();
        assert_eq!(indices.len(), 4, "one task per instance");
        assert!(sim.svc("web").settled(&sim.cell), "crash at {crash_at}");
    }
}

fn continue_round(sim: &mut Sim) {
    sim.agents();
    sim.now += 100;
    sim.cell.check_invariants().unwrap();
}
