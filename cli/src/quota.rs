//! `shoal quota set|list`: teams (roles) with a weight for fair sharing, a guarantee and a
//! limit, on the master's `/api/shoal/v1/roles`.

use clap::Subcommand;
use shoal_core::ResourceSet;

use crate::job::MasterArg;

#[derive(Subcommand)]
pub enum QuotaCmd {
    /// Set a team's weight, guarantee, limit and whether its tasks may be preempted (what is
    /// not given is reset: weight 1, no guarantee, no limit, preemptible).
    Set {
        /// The team (a role).
        role: String,
        /// Weight for fair sharing (DRF divides a role's share by it).
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// Resources the team is guaranteed, e.g. "cpus:8;mem:16384".
        #[arg(long, value_parser = parse_resources)]
        guarantee: Option<ResourceSet>,
        /// Resources the team may never exceed, e.g. "cpus:16;mem:32768".
        #[arg(long, value_parser = parse_resources)]
        limit: Option<ResourceSet>,
        /// Whether claims may evict the team's tasks (a higher priority, or a team below its
        /// guarantee; see docs/jobs.md).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        preemptible: bool,
        /// Print the team as the master now has it, as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// List the teams: weight, guarantee, limit and what each consumes now.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
}

fn parse_resources(s: &str) -> Result<ResourceSet, String> {
    ResourceSet::parse(s).map_err(|e| e.to_string())
}

pub async fn run(cmd: QuotaCmd) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Set {
            role,
            weight,
            guarantee,
            limit,
            preemptible,
            json,
            master,
        } => {
            if !(weight.is_finite() && weight > 0.0) {
                anyhow::bail!("--weight must be a positive number, not {weight}");
            }
            let client = master.client()?;
            client
                .configure_role(
                    &role,
                    weight,
                    &guarantee.unwrap_or_default(),
                    limit.as_ref(),
                    preemptible,
                )
                .await?;
            if json {
                let state = client.state().await?;
                let configured = state.roles.iter().find(|r| r.name == role);
                println!("{}", serde_json::to_string_pretty(&configured)?);
            } else {
                println!("role {role}: weight {weight}, preemptible {preemptible}");
            }
        }
        QuotaCmd::List { json, master } => {
            let client = master.client()?;
            let state = client.state().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state.roles)?);
            } else {
                println!(
                    "{:<16} {:>6}  {:<24} {:<24} {:<11} CONSUMED",
                    "ROLE", "WEIGHT", "GUARANTEE", "LIMIT", "PREEMPTIBLE"
                );
                for r in &state.roles {
                    let limit = r
                        .quota
                        .limit
                        .as_ref()
                        .map_or("-".to_string(), |l| l.to_string());
                    let guarantee = if r.quota.guarantee.is_empty() {
                        "-".to_string()
                    } else {
                        r.quota.guarantee.to_string()
                    };
                    let preemptible = if r.preemptible { "yes" } else { "no" };
                    println!(
                        "{:<16} {:>6}  {:<24} {:<24} {:<11} {}",
                        r.name, r.weight, guarantee, limit, preemptible, r.consumed
                    );
                }
            }
        }
    }
    Ok(())
}
