//! An example native scheduler: places N tasks on a Shoal cell by claiming directly.
//!
//! It keeps a mirror of the cell (snapshot + watch), decides first-fit placements on it,
//! claims them in batches, and retries what conflicted on fresher state.
//!
//! ```text
//! cargo run -p shoal-client --example place -- --address http://127.0.0.1:5050 --tasks 20
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use shoal_client::{command_task, ClaimRequest, Client, Mirror, PlacementRequest};
use shoal_core::{AgentState, ResourceSet};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:5050")]
    address: String,
    /// How many tasks to place.
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// Resources of each task (Mesos text form).
    #[arg(long, default_value = "cpus:0.1;mem:16")]
    resources: String,
    /// The command each task runs.
    #[arg(long, default_value = "echo hello from shoal")]
    command: String,
    /// Role (team) to claim for.
    #[arg(long, default_value = "*")]
    role: String,
    /// Placements per claim.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client::new(&args.address)?;
    let mirror = Mirror::start(client.clone()).await?;
    let want = ResourceSet::parse(&args.resources)?;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let mut pending: Vec<usize> = (0..args.tasks).collect();
    let started = Instant::now();
    let mut claims = 0;
    let mut conflicts = 0;
    while !pending.is_empty() {
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!(
                "{} tasks could not be placed within 60 s (the cell may be full)",
                pending.len()
            );
        }
        let cell = mirror.snapshot();
        // First fit over a local copy of each agent's free resources.
        let mut free: Vec<(String, ResourceSet)> = cell
            .agents()
            .filter(|a| a.state == AgentState::Active)
            .map(|a| (a.id.to_string(), a.free()))
            .collect();
        free.sort_by(|a, b| a.0.cmp(&b.0));
        let mut placements = Vec::new();
        let mut placed = Vec::new();
        for &i in pending.iter().take(args.batch) {
            if let Some((agent, f)) = free.iter_mut().find(|(_, f)| f.contains(&want)) {
                f.subtract(&want)?;
                let id = format!("place-{run}-{i}");
                placements.push(PlacementRequest::new(
                    agent.clone(),
                    &command_task(&id, &id, &want, &args.command),
                ));
                placed.push(i);
            }
        }
        if placements.is_empty() {
            // Nothing fits now: wait for the cell to change.
            mirror
                .wait_for(cell.version() + 1, Duration::from_secs(1))
                .await;
            continue;
        }
        claims += 1;
        let answer = client
            .claim(&ClaimRequest {
                claim_id: format!("claim-{run}-{claims}"),
                role: args.role.clone(),
                owner: "example-place".into(),
                snapshot_version: cell.version(),
                mode: shoal_core::CommitMode::Incremental,
                check: shoal_core::ConflictCheck::Fine,
                priority: 0,
                evictions: Vec::new(),
                placements,
            })
            .await?;
        let mut committed = std::collections::HashSet::new();
        for (p, i) in answer.outcome.placements.iter().zip(&placed) {
            if p.committed {
                committed.insert(*i);
                println!("placed {} on {}", p.task_id, p.agent_id);
            } else {
                conflicts += 1;
            }
        }
        pending.retain(|i| !committed.contains(i));
        // Decide the next batch on state that includes this commit.
        mirror
            .wait_for(answer.current_version, Duration::from_secs(5))
            .await;
    }
    println!(
        "placed {} tasks in {} claims ({} conflicts) in {:?}",
        args.tasks,
        claims,
        conflicts,
        started.elapsed()
    );
    Ok(())
}
