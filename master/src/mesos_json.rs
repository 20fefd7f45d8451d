//! Reading the parts of a Mesos `TaskInfo` (in Mesos's JSON encoding) that the cell needs,
//! and writing resources the way Mesos writes them.

use serde::Deserialize;
#[cfg(test)]
use serde_json::json;
use serde_json::Value as Json;
use shoal_core::{Milli, Ranges, Resource, ResourceSet, Value, UNRESERVED};

#[derive(Deserialize)]
struct IdJson {
    value: String,
}

#[derive(Deserialize, Default)]
struct ScalarJson {
    value: f64,
}

#[derive(Deserialize)]
struct RangeJson {
    begin: u64,
    end: u64,
}

#[derive(Deserialize, Default)]
struct RangesJson {
    #[serde(default)]
    range: Vec<RangeJson>,
}

#[derive(Deserialize, Default)]
struct SetJson {
    #[serde(default)]
    item: Vec<String>,
}

#[derive(Deserialize)]
struct ReservationJson {
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
struct ResourceJson {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    scalar: Option<ScalarJson>,
    #[serde(default)]
    ranges: Option<RangesJson>,
    #[serde(default)]
    set: Option<SetJson>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    reservations: Option<Vec<ReservationJson>>,
}

#[derive(Deserialize)]
struct TaskInfoJson {
    #[serde(default)]
    name: Option<String>,
    task_id: IdJson,
    #[serde(default)]
    agent_id: Option<IdJson>,
    #[serde(default)]
    resources: Vec<ResourceJson>,
}

/// The parts of a TaskInfo the cell uses.
#[derive(Debug, Clone)]
pub struct TaskInfoParts {
    pub task_id: String,
    pub name: String,
    pub agent_id: Option<String>,
    pub resources: ResourceSet,
}

/// Converts Mesos `Resource` messages (JSON) into a [`ResourceSet`].
pub fn resources_from_json(v: &Json) -> Result<ResourceSet, String> {
    let list: Vec<ResourceJson> =
        serde_json::from_value(v.clone()).map_err(|e| format!("resources: {e}"))?;
    convert_resources(list)
}

fn convert_resources(list: Vec<ResourceJson>) -> Result<ResourceSet, String> {
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        // The reservation's role is the last (most refined) one; the deprecated `role`
        // field is read when there are no `reservations`.
        let role = r
            .reservations
            .as_ref()
            .and_then(|rs| rs.iter().rev().find_map(|x| x.role.clone()))
            .or(r.role.clone())
            .unwrap_or_else(|| UNRESERVED.to_string());
        let kind = r.kind.as_deref().unwrap_or(if r.ranges.is_some() {
            "RANGES"
        } else if r.set.is_some() {
            "SET"
        } else {
            "SCALAR"
        });
        let value =
            match kind {
                "SCALAR" => {
                    let v = r
                        .scalar
                        .ok_or_else(|| format!("resource {}: SCALAR without scalar", r.name))?
                        .value;
                    Value::Scalar(
                        Milli::from_f64(v)
                            .ok_or_else(|| format!("resource {}: invalid scalar {v}", r.name))?,
                    )
                }
                "RANGES" => {
                    let ranges = r
                        .ranges
                        .unwrap_or_default()
                        .range
                        .into_iter()
                        .map(|x| (x.begin, x.end))
                        .collect();
                    Value::Ranges(Ranges::new(ranges).ok_or_else(|| {
                        format!("resource {}: range begins after it ends", r.name)
                    })?)
                }
                "SET" => Value::Set(r.set.unwrap_or_default().item.into_iter().collect()),
                other => return Err(format!("resource {}: unsupported type {other}", r.name)),
            };
        out.push(Resource {
            name: r.name.into(),
            role: role.into(),
            value,
        });
    }
    ResourceSet::from_resources(out).map_err(|e| e.to_string())
}

/// Reads a TaskInfo's id, name, agent and resources. Never panics on input.
pub fn task_info_parts(task_info: &Json) -> Result<TaskInfoParts, String> {
    let t: TaskInfoJson =
        serde_json::from_value(task_info.clone()).map_err(|e| format!("task_info: {e}"))?;
    let resources = convert_resources(t.resources)?;
    Ok(TaskInfoParts {
        name: t.name.unwrap_or_else(|| t.task_id.value.clone()),
        task_id: t.task_id.value,
        agent_id: t.agent_id.map(|a| a.value),
        resources,
    })
}

/// Writes a [`ResourceSet`] as Mesos `Resource` messages (JSON).
pub fn resources_to_json(set: &ResourceSet) -> Json {
    set.to_mesos_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_task_info() {
        let t = json!({
            "name": "web", "task_id": {"value": "t1"}, "agent_id": {"value": "a1"},
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}, "role": "*"},
                {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31001}]}},
                {"name": "disk", "type": "SCALAR", "scalar": {"value": 10}, "reservations": [{"type": "STATIC", "role": "web"}]}
            ],
            "command": {"value": "echo hi"}, "unknown_field": null
        });
        let p = task_info_parts(&t).unwrap();
        assert_eq!(p.task_id, "t1");
        assert_eq!(
            p.resources.to_string(),
            "cpus:0.5;disk(web):10;mem:64;ports:[31000-31001]"
        );
        let back = resources_from_json(&resources_to_json(&p.resources)).unwrap();
        assert_eq!(back, p.resources);
    }

    #[test]
    fn bad_task_infos_are_errors() {
        for bad in [
            json!({}),
            json!({"task_id": 5}),
            json!({"task_id": {"value": "x"}, "resources": [{"name": "cpus", "type": "SCALAR"}]}),
            json!({"task_id": {"value": "x"}, "resources": [{"name": "cpus", "type": "TEXT", "text": {}}]}),
            json!({"task_id": {"value": "x"}, "resources": [{"name": "cpus", "scalar": {"value": -1}}]}),
        ] {
            assert!(task_info_parts(&bad).is_err(), "{bad}");
        }
    }
}
