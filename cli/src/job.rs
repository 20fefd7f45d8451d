//! `shoal job run|plan|status|stop|logs`: the client verbs for batch jobs, in Nomad's style.
//! Every verb talks to the master's native API (`/api/shoal/v1/jobs…`) and takes `--json`
//! for machine output; the exit code is not 0 when the verb (or, with `--wait`, the job)
//! failed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value as Json};
use shoal_client::{Client, ClientError};
use shoal_import::{import_job, ImportFormat};
use shoal_sched::batch::{parse_job_file, CompiledJob, JobFormat, JobSpec};

/// `println!` that ignores a closed stdout (`shoal job status | head`) instead of panicking.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub(crate) use say;

fn say_raw(data: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(data.as_bytes());
}

/// The master's URL when neither `--master` nor an environment variable names one.
pub(crate) const MASTER_DEFAULT: &str = "http://127.0.0.1:5050";

/// The master a client verb talks to, the same flag on every verb: `--master` (or its alias
/// `--address`), else `$SHOAL_MASTER`, else `$SHOAL_ADDR`, else [`MASTER_DEFAULT`].
#[derive(Args, Clone)]
pub struct MasterArg {
    /// The master's URL [default: $SHOAL_ADDR, else http://127.0.0.1:5050].
    #[arg(long, alias = "address", env = "SHOAL_MASTER", value_name = "URL")]
    pub(crate) master: Option<String>,
}

impl MasterArg {
    pub fn url(&self) -> String {
        master_url(self.master.as_deref(), std::env::var("SHOAL_ADDR").ok())
    }

    /// A client of the master.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url())?)
    }
}

/// The flag's value (or `$SHOAL_MASTER`'s), else `$SHOAL_ADDR`'s, else the default.
fn master_url(given: Option<&str>, addr_env: Option<String>) -> String {
    match given {
        Some(url) => url.to_string(),
        None => addr_env.unwrap_or_else(|| MASTER_DEFAULT.to_string()),
    }
}

/// How the file given to `run` and `plan` is written.
#[derive(Args, Clone)]
pub struct FormatArg {
    /// The file's format; by default JSON for `*.json` or text starting with `{`, else TOML.
    /// `marathon` reads a Marathon app definition, `ecs` an ECS task definition (JSON).
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FileFormat {
    Toml,
    Json,
    Marathon,
    Ecs,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Submit a job file (TOML or JSON, or a Marathon app / ECS task definition with
    /// --format) and, with --wait, follow it until it ends.
    Run {
        file: PathBuf,
        #[command(flatten)]
        format: FormatArg,
        /// Show live progress until the job ends; the exit code is 0 only if it completed.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// Show what the scheduler would place now for a job file, without placing anything.
    Plan {
        file: PathBuf,
        #[command(flatten)]
        format: FormatArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// List jobs, or show one job and its tasks.
    Status {
        id: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// Stop a job: running tasks are killed, the others skipped.
    Stop {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
    /// Print a task's output (its latest attempt's sandbox stdout, or stderr).
    Logs {
        id: String,
        task: String,
        #[arg(long)]
        stderr: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        master: MasterArg,
    },
}

/// Runs a job verb; the process exit code.
pub async fn run(cmd: JobCmd) -> anyhow::Result<i32> {
    match cmd {
        JobCmd::Run {
            file,
            format,
            wait,
            json,
            master,
        } => {
            let spec = read_job_file(&file, format.format)?;
            run_job(&master.client()?, spec, wait, json).await
        }
        JobCmd::Plan {
            file,
            format,
            json,
            master,
        } => {
            let client = master.client()?;
            let spec = read_job_file(&file, format.format)?;
            let plan = client.plan_job(&spec).await.verb(&client)?;
            show(json, &plan, print_plan)
        }
        JobCmd::Status { id, json, master } => {
            let client = master.client()?;
            match id {
                None => show(json, &client.jobs().await.verb(&client)?, print_jobs),
                Some(id) => show(json, &client.job(&id).await.verb(&client)?, print_job),
            }
        }
        JobCmd::Stop { id, json, master } => {
            let client = master.client()?;
            client.stop_job(&id).await.verb(&client)?;
            if json {
                say!("{}", json!({"job_id": id, "stopping": true}));
            } else {
                say!("Stopping job {id}: running tasks are killed, the others skipped.");
            }
            Ok(0)
        }
        JobCmd::Logs {
            id,
            task,
            stderr,
            json,
            master,
        } => {
            let client = master.client()?;
            let data = task_output(
                &client,
                &id,
                &task,
                if stderr { "stderr" } else { "stdout" },
            )
            .await?;
            if json {
                say!("{}", json!({"job_id": id, "task": task, "data": data}));
            } else {
                say_raw(&data);
            }
            Ok(0)
        }
    }
}

/// Prints an answer as JSON (`--json`) or with `human`.
pub(crate) fn show(json: bool, v: &Json, human: fn(&Json)) -> anyhow::Result<i32> {
    if json {
        say!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human(v);
    }
    Ok(0)
}

/// Reads and checks a job file here, so that mistakes are reported before the master is
/// asked (the master checks again, and also against its agents). A Marathon app or an ECS
/// task definition is converted to a job file here; what it had that a job does without is
/// printed as notes on stderr.
fn read_job_file(path: &Path, format: Option<FileFormat>) -> anyhow::Result<JobSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let format = format.unwrap_or(match path.extension().and_then(|e| e.to_str()) {
        Some("json") => FileFormat::Json,
        Some("toml") => FileFormat::Toml,
        _ => match JobFormat::sniff(&text) {
            JobFormat::Json => FileFormat::Json,
            JobFormat::Toml => FileFormat::Toml,
        },
    });
    let imported = |f| {
        let import = import_job(&text, f).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot run this definition as a job: {e}",
                path.display()
            )
        })?;
        for note in &import.notes {
            eprintln!("note: {note}");
        }
        anyhow::Ok(import.spec)
    };
    let spec = match format {
        FileFormat::Toml => parse_job_file(&text, JobFormat::Toml),
        FileFormat::Json => parse_job_file(&text, JobFormat::Json),
        FileFormat::Marathon => Ok(imported(ImportFormat::Marathon)?),
        FileFormat::Ecs => Ok(imported(ImportFormat::Ecs)?),
    }
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    CompiledJob::compile(&spec)
        .map_err(|e| anyhow::anyhow!("{}: invalid job: {e}", path.display()))?;
    Ok(spec)
}

/// A client error as the verbs print it: the master's message and status, or what kept the
/// master from being reached.
pub(crate) trait VerbResult<T> {
    fn verb(self, client: &Client) -> anyhow::Result<T>;
}

impl<T> VerbResult<T> for Result<T, ClientError> {
    fn verb(self, client: &Client) -> anyhow::Result<T> {
        self.map_err(|e| match e {
            ClientError::Api {
                status, message, ..
            } => anyhow::anyhow!("{message} ({status})"),
            ClientError::Http(e) => {
                anyhow::Error::new(e).context(format!("reaching the master at {}", client.base()))
            }
            other => other.into(),
        })
    }
}

async fn run_job(
    client: &Client,
    spec: JobSpec,
    wait: bool,
    json_out: bool,
) -> anyhow::Result<i32> {
    let answer = client.submit_job(&spec).await.verb(client)?;
    let id = answer["job_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        if json_out {
            say!("{}", serde_json::to_string_pretty(&answer)?);
        } else if answer["created"].as_bool() == Some(true) {
            say!(
                "Job {id} submitted ({} tasks). Follow it with: shoal job status {id}",
                spec.tasks.len()
            );
        } else {
            say!("Job {id} was already submitted with this file; nothing changed.");
        }
        return Ok(0);
    }
    let bar = indicatif::ProgressBar::new(spec.tasks.len() as u64);
    if json_out {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("job {id}"));
    let job = loop {
        let job = client.job(&id).await.verb(client)?;
        let count = |s: &str| job["counts"][s].as_u64().unwrap_or(0);
        bar.set_position(count("FINISHED") + count("FAILED") + count("SKIPPED"));
        bar.set_message(format!(
            "running {}, queued {}, waiting {}, failed {}, skipped {}",
            count("RUNNING"),
            count("QUEUED"),
            count("WAITING"),
            count("FAILED"),
            count("SKIPPED")
        ));
        if job["state"] != "RUNNING" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    show(json_out, &job, print_job)?;
    Ok(if job["state"] == "COMPLETE" { 0 } else { 1 })
}

/// The output of a job task's latest attempt, through the master's `/files/read` proxy.
async fn task_output(client: &Client, id: &str, task: &str, file: &str) -> anyhow::Result<String> {
    let job = client.job(id).await.verb(client)?;
    let Some(rec) = job["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == task))
    else {
        bail!("job {id} has no task {task}");
    };
    let (Some(task_id), Some(agent_id)) = (rec["task_id"].as_str(), rec["agent_id"].as_str())
    else {
        bail!("task {task} of job {id} has not run yet ({})", rec["state"]);
    };
    let mut out = Vec::new();
    let mut offset = 0u64;
    const CHUNK: u64 = 1 << 20;
    loop {
        let path = format!("/agents/{agent_id}/tasks/{task_id}/{file}");
        let v = client
            .read_file(&path, Some(offset), Some(CHUNK))
            .await
            .verb(client)?;
        let data = v["data"].as_str().unwrap_or_default();
        if data.is_empty() {
            break;
        }
        out.extend_from_slice(data.as_bytes());
        offset += data.len() as u64;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Prints rows as a space-aligned table with a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        say!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// One table row per element of a JSON array.
pub(crate) fn rows(list: &Json, row: impl Fn(&Json) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| a.iter().map(row).collect())
        .unwrap_or_default()
}

pub(crate) fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

fn print_jobs(list: &Json) {
    let rows = rows(&list["jobs"], |j| {
        let c = |s: &str| j["counts"][s].as_u64().unwrap_or(0);
        vec![
            text(&j["id"]),
            text(&j["state"]),
            text(&j["team"]),
            format!("{}/{}", c("FINISHED"), j["total"].as_u64().unwrap_or(0)),
            c("RUNNING").to_string(),
            c("FAILED").to_string(),
            c("SKIPPED").to_string(),
        ]
    });
    table(
        &[
            "ID", "STATE", "TEAM", "FINISHED", "RUNNING", "FAILED", "SKIPPED",
        ],
        &rows,
    );
}

fn print_job(job: &Json) {
    say!("ID       = {}", text(&job["id"]));
    say!("State    = {}", text(&job["state"]));
    say!("Team     = {}", text(&job["team"]));
    if !job["message"].is_null() {
        say!("Message  = {}", text(&job["message"]));
    }
    say!();
    let rows = rows(&job["tasks"], |t| {
        vec![
            text(&t["name"]),
            text(&t["state"]),
            t["attempts"].as_u64().unwrap_or(0).to_string(),
            text(&t["agent_id"]),
            text(&t["message"]),
        ]
    });
    table(&["TASK", "STATE", "ATTEMPTS", "AGENT", "MESSAGE"], &rows);
}

fn print_plan(plan: &Json) {
    if plan["exists"] == true {
        say!(
            "Job {} exists already ({}); submitting this file again changes nothing.",
            text(&plan["job_id"]),
            text(&plan["state"])
        );
    } else {
        say!("Job {}: would be placed now:", text(&plan["job_id"]));
    }
    let rows = rows(&plan["tasks"], |t| {
        vec![
            text(&t["name"]),
            text(&t["resources"]),
            text(&t["plan"]),
            text(&t["hostname"]),
            text(&t["agent_id"]),
        ]
    });
    table(&["TASK", "RESOURCES", "PLAN", "HOST", "AGENT"], &rows);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Verb {
        #[command(flatten)]
        master: MasterArg,
    }

    fn given(args: &[&str]) -> Option<String> {
        let mut argv = vec!["verb"];
        argv.extend_from_slice(args);
        Verb::try_parse_from(argv).unwrap().master.master
    }

    #[test]
    fn the_master_is_named_by_master_or_its_alias_address() {
        assert_eq!(
            given(&["--master", "http://m:1"]).as_deref(),
            Some("http://m:1")
        );
        assert_eq!(
            given(&["--address", "http://a:2"]).as_deref(),
            Some("http://a:2")
        );
    }

    #[test]
    fn without_a_flag_shoal_addr_then_the_default_names_the_master() {
        assert_eq!(
            master_url(Some("http://m:1"), Some("http://e:3".into())),
            "http://m:1"
        );
        assert_eq!(master_url(None, Some("http://e:3".into())), "http://e:3");
        assert_eq!(master_url(None, None), MASTER_DEFAULT);
    }
}
