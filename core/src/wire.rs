//! The native API's request and answer bodies (`docs/native-api.md`), as the master reads
//! them and the client writes them: one definition for both sides.
//!
//! A claim is read straight from the request's bytes: each placement's TaskInfo stays
//! borrowed text until the master reads its parts, so parsing a claim copies no TaskInfo.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::model::{ClaimOutcome, CommitMode, ConflictCheck, Quota, StatusInfo, Version};
use crate::task::TaskState;

/// A claim as sent to `POST /api/shoal/v1/claims`: each placement carries a Mesos
/// `TaskInfo` in Mesos's JSON encoding.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest<'a> {
    pub claim_id: String,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default)]
    pub owner: String,
    pub snapshot_version: Version,
    #[serde(default)]
    pub mode: CommitMode,
    #[serde(default)]
    pub check: ConflictCheck,
    #[serde(borrow)]
    pub placements: Vec<PlacementRequest<'a>>,
    /// 0 (the default) to 1000: the claim may evict tasks of a lower priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// Task ids to preempt in the same transaction (all-or-nothing claims only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evictions: Vec<String>,
}

fn default_role() -> String {
    "*".into()
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One task of a claim and the agent it goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementRequest<'a> {
    /// The agent; may instead be given as `task_info.agent_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// A Mesos `TaskInfo` (JSON), borrowed from the request when read.
    #[serde(borrow, deserialize_with = "borrow_raw")]
    pub task_info: Cow<'a, RawValue>,
}

impl PlacementRequest<'static> {
    /// A placement of `task_info` (a Mesos `TaskInfo` as a JSON value) on `agent_id`.
    pub fn new(agent_id: impl Into<String>, task_info: &serde_json::Value) -> Self {
        PlacementRequest {
            agent_id: Some(agent_id.into()),
            task_info: Cow::Owned(
                serde_json::value::to_raw_value(task_info).expect("a JSON value writes as JSON"),
            ),
        }
    }
}

/// Reads a TaskInfo without copying it: the text stays in the request's bytes.
fn borrow_raw<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Cow<'a, RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Cow::Borrowed)
}

/// The answer to a claim: its outcome and the version the cell is at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimAnswer {
    #[serde(flatten)]
    pub outcome: ClaimOutcome,
    pub current_version: Version,
}

/// A task's status as its agent reports it to `POST /api/shoal/v1/agents/{id}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRequest {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default)]
    pub status: StatusInfo,
}

/// A role's settings as sent to `PUT /api/shoal/v1/roles/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleRequest {
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub quota: Quota,
    /// Whether claims may evict the role's tasks.
    #[serde(default = "yes")]
    pub preemptible: bool,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_read_from_bytes_borrows_its_task_infos() {
        let text = br#"{"claim_id":"c","snapshot_version":3,
            "placements":[{"agent_id":"a","task_info":{"name":"t","task_id":{"value":"t"}}}]}"#;
        let req: ClaimRequest = serde_json::from_slice(text).unwrap();
        assert_eq!(req.role, "*");
        assert_eq!((req.priority, req.evictions.len()), (0, 0));
        let p = &req.placements[0];
        assert!(matches!(p.task_info, Cow::Borrowed(_)));
        assert_eq!(p.task_info.get(), r#"{"name":"t","task_id":{"value":"t"}}"#);
    }

    #[test]
    fn a_claim_written_reads_back_the_same() {
        let req = ClaimRequest {
            claim_id: "c".into(),
            role: "web".into(),
            owner: "o".into(),
            snapshot_version: 7,
            mode: CommitMode::default(),
            check: ConflictCheck::default(),
            placements: vec![PlacementRequest::new(
                "a",
                &serde_json::json!({"name": "t", "task_id": {"value": "t"}}),
            )],
            priority: 5,
            evictions: vec!["old".into()],
        };
        let text = serde_json::to_vec(&req).unwrap();
        let back: ClaimRequest = serde_json::from_slice(&text).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), text);
        assert_eq!(
            (back.priority, back.evictions),
            (5, vec!["old".to_string()])
        );
        assert_eq!(back.placements[0].agent_id.as_deref(), Some("a"));
    }
}
