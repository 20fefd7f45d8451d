//! Placement constraints on agent attributes, shared by the batch and service schedulers.

use serde::{Deserialize, Serialize};
use shoal_core::*;

/// A placement constraint on an agent attribute (`hostname` is the agent's hostname).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub attribute: String,
    #[serde(default)]
    pub operator: ConstraintOp,
    /// The value to compare with (`equals`, `not_equals`) or the count (`max_per`); `unique`
    /// takes none.
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    #[default]
    Equals,
    NotEquals,
    /// Services only: no two instances on agents with the same value of the attribute.
    Unique,
    /// Services only: at most `value` instances per value of the attribute.
    MaxPer,
}

impl Constraint {
    /// Whether the agent matches on its own. `unique` and `max_per` depend on where the
    /// other instances of a service run: they match every agent here, and the service
    /// scheduler counts them (`services.rs`).
    pub fn matches(&self, agent: &Agent) -> bool {
        let value = attribute_value(agent, &self.attribute);
        match self.operator {
            ConstraintOp::Equals => value == Some(self.value.as_str()),
            ConstraintOp::NotEquals => value != Some(self.value.as_str()),
            ConstraintOp::Unique | ConstraintOp::MaxPer => true,
        }
    }
}

/// An agent's value of an attribute; `hostname` is the agent's hostname.
pub fn attribute_value<'a>(agent: &'a Agent, attribute: &str) -> Option<&'a str> {
    if attribute == "hostname" {
        Some(agent.hostname.as_str())
    } else {
        agent.attributes.get(attribute).map(String::as_str)
    }
}
