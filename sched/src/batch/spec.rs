//! The job file as written (TOML or JSON), and its tasks.

use super::*;

// ---------------------------------------------------------------------------------------------
// The job file

/// A job file as written (TOML or JSON). See `docs/jobs.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name; also its id unless `id` is given.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The team (role) the job's tasks run as; `*` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Higher runs first (0 to 1000, default 50); a task may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, alias = "task")]
    pub tasks: Vec<TaskDef>,
}

/// One task of a job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub name: String,
    /// A Docker image; the command then runs in it (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Shoal's resource text, e.g. `cpus:0.1;mem:32`.
    pub resources: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Named host ports, each given as `PORT_<NAME>` (and `PORT0`, `PORT1`, …) in the environment.
    /// `name:80` (with `image`) maps the host port to the container's port 80 and runs the
    /// container on Docker's bridge network instead of the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Attempts after the first one fails.
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry, doubled for each later one (e.g. `500ms`, `2s`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// An attempt running longer is killed (and counts as failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// How a job file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobFormat {
    Toml,
    Json,
}

impl JobFormat {
    /// JSON when the text starts with `{`, TOML otherwise.
    pub fn sniff(text: &str) -> JobFormat {
        if text.trim_start().starts_with('{') {
            JobFormat::Json
        } else {
            JobFormat::Toml
        }
    }
}

/// Reads a job file. The error says where the text is wrong (line and column, or the field).
pub fn parse_job_file(text: &str, format: JobFormat) -> Result<JobSpec, String> {
    match format {
        JobFormat::Toml => toml::from_str(text).map_err(|e| e.to_string().trim().to_string()),
        JobFormat::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

impl TaskDef {
    pub(crate) fn fields(&self) -> TaskFields<'_> {
        TaskFields {
            image: self.image.as_deref(),
            command: self.command.as_deref(),
            resources: &self.resources,
            env: &self.env,
            ports: &self.ports,
        }
    }
}
