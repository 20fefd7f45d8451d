//! The sans-IO commit path alone, for profiling: registers agents, then commits claims of
//! placements spread over them, optionally holding a snapshot (a `Cell::clone`) every few
//! claims as the master's committer does when it publishes.
//!
//! `cargo run --release -p shoal-core --example commit_loop -- [agents] [placements] [snapshot_every] [random_ids]`
//!
//! Task ids are `t0`, `t1`, … (a claim's ids are neighbours, as a job's are), or with
//! `random_ids` 1 spread over the whole key space (as UUIDs are).
use std::sync::Arc;
use std::time::Instant;

use shoal_core::cell::Reply;
use shoal_core::*;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let agents = args.first().copied().unwrap_or(10_000);
    let placements = args.get(1).copied().unwrap_or(200_000);
    let snapshot_every = args.get(2).copied().unwrap_or(0);
    let random_ids = args.get(3).copied().unwrap_or(0) == 1;
    let agent_res = ResourceSet::parse("cpus:32;mem:65536").unwrap();
    let task_res = ResourceSet::parse("cpus:1;mem:1024").unwrap();

    let mut cell = Cell::new(CellConfig {
        cell_id: Arc::from("loop"),
    });
    let mut ids = Vec::new();
    for i in 0..agents {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: format!("agent-{i}"),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: agent_res.clone(),
        };
        let (_, reply) = cell.commit(1, &Command::RegisterAgent(reg)).unwrap();
        let Reply::Agent { agent_id } = reply else {
            panic!()
        };
        ids.push(agent_id);
    }
    let claims: Vec<Command> = (0..placements)
        .collect::<Vec<_>>()
        .chunks(100)
        .enumerate()
        .map(|(c, chunk)| {
            Command::Claim(Claim {
                priority: 0,
                evictions: vec![],
                id: ClaimId::new(format!("c{c}")),
                role: "*".into(),
                owner: "loop".into(),
                snapshot_version: cell.version(),
                mode: CommitMode::Incremental,
                check: ConflictCheck::Fine,
                placements: chunk
                    .iter()
                    .map(|&i| Placement {
                        task_id: TaskId::new(if random_ids {
                            format!("t{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                        } else {
                            format!("t{i}")
                        }),
                        name: String::new(),
                        agent_id: ids[i % agents].clone(),
                        resources: task_res.clone(),
                        spec: TaskSpec::empty(),
                    })
                    .collect(),
            })
        })
        .collect();
    let started = Instant::now();
    let mut held = None;
    for (i, c) in claims.iter().enumerate() {
        cell.commit(2, c).unwrap();
        if snapshot_every > 0 && (i + 1) % snapshot_every == 0 {
            held = Some(cell.clone());
        }
    }
    let took = started.elapsed();
    drop(held);
    println!(
        "{placements} placements on {agents} agents: {:.3} s, {:.0} placements/s",
        took.as_secs_f64(),
        placements as f64 / took.as_secs_f64()
    );
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
