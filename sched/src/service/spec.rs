//! The service file as written (TOML or JSON).

use super::*;

// ---------------------------------------------------------------------------------------------
// The service file

/// A service file as written (TOML or JSON). See `docs/services.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name; also its id unless `id` is given.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The team (role) the instances run as; `*` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// 0 to 1000, default 50 (recorded; placement does not preempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// How many instances to keep running.
    #[serde(default = "one")]
    pub count: u32,
    /// What every instance runs.
    pub task: ServiceTask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateDef>,
    #[serde(default)]
    pub placement: PlacementStrategy,
    /// The agent attribute `spread` balances over (`hostname` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

pub(crate) fn one() -> u32 {
    1
}

/// The task every instance runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub resources: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

impl ServiceTask {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Command,
    Http,
    Tcp,
}

/// A health check, run by the agent (Mesos's `HealthCheck`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDef {
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// `command`: a shell command run in the task's environment; healthy on exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `http`: the path of a GET to `127.0.0.1:<port>`; healthy on 2xx and 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http`, `tcp`: the name of one of the task's ports (the first one when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures this soon after the start do not count, until the first success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
    /// The agent kills the task after this many failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
}

/// How ended instances are restarted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartDef {
    /// Wait before restarting an instance that failed once; doubled for each failure in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// The longest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
}

/// How a new spec version replaces the instances of the old one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDef {
    /// Instances allowed beyond `count` during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    /// Instances allowed below `count` available during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The feasible agent that is fullest after the placement.
    Binpack,
    /// The agent whose `spread_by` value has the fewest instances (ties: the emptiest agent).
    #[default]
    Spread,
}

/// Reads a service file: JSON when it starts with `{`, TOML otherwise.
pub fn parse_service_file(text: &str) -> Result<ServiceSpec, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }
}
