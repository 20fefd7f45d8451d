//! `shoal state`: print the cell's state (agents, tasks, roles) as JSON.

use clap::Args;

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// The master's address.
    #[arg(long, env = "SHOAL_ADDR", default_value = "http://127.0.0.1:5050")]
    address: String,
}

pub(crate) async fn run_state(args: ClientArgs) -> anyhow::Result<()> {
    let client = shoal_client::Client::new(&args.address)?;
    let state = client.state_json(true).await?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}
