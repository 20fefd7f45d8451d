//! `shoal service run|status|scale|stop`: the client verbs for long-running services, in
//! Nomad's style. Every verb talks to the master's native API (`/api/shoal/v1/services…`) and
//! takes `--json` for machine output; `--wait` follows the service until it settles (or, for
//! `stop`, until every instance is gone) with a live progress line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value as Json};
use shoal_core::clock::{Clock, SystemClock};
use shoal_import::import_marathon_service;
use shoal_sched::service::{parse_service_file, CompiledService, ServiceSpec};
use shoal_sched::template::parse_duration_ms;

use shoal_client::Client;

use crate::job::{rows, say, show, table, text, MasterArg, VerbResult};

#[derive(Clone, Copy, ValueEnum)]
pub enum ServiceFormat {
    Toml,
    Json,
    Marathon,
}

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Submit a service file (TOML or JSON): a new service, or a new version of one (a rolling
    /// update). The same file again changes nothing.
    Run {
        file: PathBuf,
        /// The file's format: Shoal's service file (TOML or JSON, told apart by the text), or
        /// `marathon` for a Marathon app definition.
        #[arg(long, value_enum)]
        format: Option<ServiceFormat>,
        /// Follow the service until `count` healthy instances of this version run.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (e.g. 90s, 10m); the exit code is then 1.
        #[arg(long, default_value = "10m")]
        timeout: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// List services, or show one service and its instances.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// Change how many instances a service keeps running.
    Scale {
        id: String,
        count: u32,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "10m")]
        timeout: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// Stop a service: every instance is killed.
    Stop {
        id: String,
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "10m")]
        timeout: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
}

/// Runs a service verb; the process exit code.
pub async fn run(cmd: ServiceCmd) -> anyhow::Result<i32> {
    match cmd {
        ServiceCmd::Run {
            file,
            format,
            wait,
            timeout,
            json,
            master,
        } => {
            let client = master.client()?;
            let spec = read_service_file(&file, format)?;
            let answer = client.submit_service(&spec).await.verb(&client)?;
            let id = text(&answer["service_id"]);
            if wait {
                return follow(&client, &id, &timeout, json).await;
            }
            if json {
                say!("{}", serde_json::to_string_pretty(&answer)?);
            } else if answer["created"] == true {
                say!(
                    "Service {id} submitted ({} instances). Follow it with: shoal service status {id}",
                    spec.count
                );
            } else if answer["changed"] == true {
                say!(
                    "Service {id}: version {} rolls out. Follow it with: shoal service status {id}",
                    text(&answer["service"]["spec_version"])
                );
            } else {
                say!("Service {id} already runs this file; nothing changed.");
            }
            Ok(0)
        }
        ServiceCmd::Status { id, json, master } => {
            let client = master.client()?;
            match id {
                None => show(
                    json,
                    &client.services().await.verb(&client)?,
                    print_services,
                ),
                Some(id) => show(
                    json,
                    &client.service(&id).await.verb(&client)?,
                    print_service,
                ),
            }
        }
        ServiceCmd::Scale {
            id,
            count,
            wait,
            timeout,
            json,
            master,
        } => {
            let client = master.client()?;
            client.scale_service(&id, count).await.verb(&client)?;
            let human = format!("Service {id} scales to {count} instances.");
            let machine = json!({"service_id": id, "count": count});
            done(&client, &id, (wait, &timeout), json, machine, human).await
        }
        ServiceCmd::Stop {
            id,
            wait,
            timeout,
            json,
            master,
        } => {
            let client = master.client()?;
            client.stop_service(&id).await.verb(&client)?;
            let human = format!("Stopping service {id}: its instances are killed.");
            let machine = json!({"service_id": id, "stopping": true});
            done(&client, &id, (wait, &timeout), json, machine, human).await
        }
    }
}

/// The end of a verb that changed a service: follow it (`--wait`), or say what was asked.
async fn done(
    client: &Client,
    id: &str,
    (wait, timeout): (bool, &str),
    json: bool,
    machine: Json,
    human: String,
) -> anyhow::Result<i32> {
    if wait {
        return follow(client, id, timeout, json).await;
    }
    if json {
        say!("{machine}");
    } else {
        say!("{human}");
    }
    Ok(0)
}

/// Reads and checks a service file here, so that mistakes are reported before the master is
/// asked (the master checks again, and also against its agents).
fn read_service_file(path: &Path, format: Option<ServiceFormat>) -> anyhow::Result<ServiceSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = if let Some(ServiceFormat::Marathon) = format {
        let import = import_marathon_service(&text).map_err(|e| {
            anyhow::anyhow!("{}: cannot run this app as a service: {e}", path.display())
        })?;
        for note in &import.notes {
            eprintln!("note: {note}");
        }
        import.spec
    } else {
        parse_service_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    CompiledService::compile(&spec)
        .map_err(|e| anyhow::anyhow!("{}: invalid service: {e}", path.display()))?;
    Ok(spec)
}

/// Follows a service until it settles, with a progress bar of its available instances of the
/// current version; prints the service at the end. Exit code 1 when `timeout` passes first.
async fn follow(client: &Client, id: &str, timeout: &str, json_out: bool) -> anyhow::Result<i32> {
    let timeout = Duration::from_millis(
        parse_duration_ms(timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?,
    );
    let started = SystemClock.monotonic();
    let bar = indicatif::ProgressBar::new(0);
    if json_out {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("service {id}"));
    let (svc, settled) = loop {
        let svc = client.service(id).await.verb(client)?;
        let c = |k: &str| svc["counts"][k].as_u64().unwrap_or(0);
        bar.set_length(svc["count"].as_u64().unwrap_or(0));
        bar.set_position(c("available_current"));
        bar.set_message(format!(
            "v{}: instances {}, available {}, old {}, pending {}, stopping {}",
            text(&svc["spec_version"]),
            c("instances"),
            c("available"),
            c("old"),
            c("pending"),
            c("stopping")
        ));
        if svc["settled"] == true {
            break (svc, true);
        }
        if SystemClock.monotonic().saturating_duration_since(started) >= timeout {
            break (svc, false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    show(json_out, &svc, print_service)?;
    if !settled {
        eprintln!("service {id} did not settle within the timeout");
    }
    Ok(if settled { 0 } else { 1 })
}

fn print_services(list: &Json) {
    let rows = rows(&list["services"], |s| {
        let c = |k: &str| s["counts"][k].as_u64().unwrap_or(0);
        vec![
            text(&s["id"]),
            text(&s["state"]),
            text(&s["team"]),
            text(&s["spec_version"]),
            format!("{}/{}", c("available"), s["count"].as_u64().unwrap_or(0)),
            c("old").to_string(),
            c("pending").to_string(),
        ]
    });
    table(
        &[
            "ID",
            "STATE",
            "TEAM",
            "VERSION",
            "AVAILABLE",
            "OLD",
            "PENDING",
        ],
        &rows,
    );
}

fn print_service(svc: &Json) {
    let c = |k: &str| svc["counts"][k].as_u64().unwrap_or(0);
    say!("ID        = {}", text(&svc["id"]));
    say!("State     = {}", text(&svc["state"]));
    say!("Team      = {}", text(&svc["team"]));
    say!("Version   = {}", text(&svc["spec_version"]));
    say!(
        "Available = {}/{} ({} of an older version)",
        c("available"),
        text(&svc["count"]),
        c("old")
    );
    if !svc["message"].is_null() {
        say!("Message   = {}", text(&svc["message"]));
    }
    say!();
    let rows = rows(&svc["instances"], |i| {
        let health = match i["healthy"].as_bool() {
            Some(true) => "healthy",
            Some(false) => "unhealthy",
            None => "",
        };
        vec![
            text(&i["index"]),
            text(&i["state"]),
            text(&i["spec_version"]),
            text(&i["task_id"]),
            text(&i["task_state"]),
            health.to_string(),
            text(&i["hostname"]),
            text(&i["message"]),
        ]
    });
    table(
        &[
            "INDEX",
            "STATE",
            "VERSION",
            "TASK",
            "TASK STATE",
            "HEALTH",
            "HOST",
            "MESSAGE",
        ],
        &rows,
    );
}
