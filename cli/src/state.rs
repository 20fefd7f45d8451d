//! `shoal state`: print the cell's state (agents, tasks, roles) as JSON.

use clap::Args;

use crate::job::MasterArg;

#[derive(Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    master: MasterArg,
}

pub(crate) async fn run_state(args: ClientArgs) -> anyhow::Result<()> {
    let client = args.master.client()?;
    let state = client.state_json(true).await?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}
