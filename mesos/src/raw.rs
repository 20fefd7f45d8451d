//! The commit path's reader: the parts of a Mesos `TaskInfo` the cell needs, read straight
//! from its JSON text with borrowed serde (no `Value`, no prost message decoded), and the
//! canonical text the cell stores as the task's spec. It reads what the typed reader
//! ([`crate::task_info`]) reads, and is lenient where Mesos's JSON allows: `type` may be left
//! out of a resource (inferred from the value given), `name` and `agent_id` of a task.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;
use shoal_core::{Milli, Ranges, Resource, ResourceSet, Value, UNRESERVED};

use crate::{MesosError, TaskInfoParts};

fn malformed(e: serde_json::Error) -> MesosError {
    MesosError::Malformed {
        what: "task_info",
        why: e.to_string(),
    }
}

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

fn convert_resources(list: Vec<ResourceJson>) -> Result<ResourceSet, MesosError> {
    let mut out = Vec::with_capacity(list.len());
    for mut r in list {
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
        let bad = |why: String| MesosError::Resource {
            name: r.name.clone(),
            why,
        };
        let value = match kind {
            "SCALAR" => {
                let v = r
                    .scalar
                    .as_ref()
                    .ok_or_else(|| bad("SCALAR without scalar".into()))?
                    .value;
                Value::Scalar(Milli::from_f64(v).ok_or_else(|| bad(format!("invalid scalar {v}")))?)
            }
            "RANGES" => {
                let ranges = r
                    .ranges
                    .as_ref()
                    .map(|x| x.range.iter().map(|x| (x.begin, x.end)).collect())
                    .unwrap_or_default();
                Value::Ranges(
                    Ranges::new(ranges).ok_or_else(|| bad("range begins after it ends".into()))?,
                )
            }
            "SET" => Value::Set(r.set.take().unwrap_or_default().item.into_iter().collect()),
            other => return Err(bad(format!("unsupported type {other}"))),
        };
        out.push(Resource {
            name: r.name.into(),
            role: role.into(),
            value,
        });
    }
    Ok(ResourceSet::from_resources(out)?)
}

/// Reads a TaskInfo's id, name, agent and resources. Never panics on input.
pub fn task_info_parts(task_info: &Json) -> Result<TaskInfoParts, MesosError> {
    let t = TaskInfoJson::deserialize(task_info).map_err(malformed)?;
    parts_of(t)
}

fn parts_of(t: TaskInfoJson) -> Result<TaskInfoParts, MesosError> {
    let resources = convert_resources(t.resources)?;
    Ok(TaskInfoParts {
        name: t.name.unwrap_or_else(|| t.task_id.value.clone()),
        task_id: t.task_id.value,
        agent_id: t.agent_id.map(|a| a.value),
        resources,
    })
}

/// Reads a TaskInfo straight from its JSON text (no `Value` in between), and returns with
/// its parts the canonical text the cell keeps as the task's spec (compact, keys sorted:
/// what `serde_json::Value` writes). Text that is already canonical is kept as it is.
pub fn task_info_from_raw(raw: &RawValue) -> Result<(TaskInfoParts, Cow<'_, str>), MesosError> {
    let t: TaskInfoJson = serde_json::from_str(raw.get()).map_err(malformed)?;
    let parts = parts_of(t)?;
    Ok((parts, canonical_json(raw)?))
}

/// The canonical text of a JSON value: compact, object keys sorted (as `serde_json::Value`
/// writes it, so it survives a round trip through `Value` unchanged).
pub fn canonical_json(raw: &RawValue) -> Result<Cow<'_, str>, MesosError> {
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(raw.get()));
    }
    let v: Json = serde_json::from_str(raw.get()).map_err(malformed)?;
    Ok(Cow::Owned(v.to_string()))
}

/// An object's members in the order written, values left unparsed.
struct Members<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(4));
                while let Some(kv) = m.next_entry::<&'de str, &'de RawValue>()? {
                    out.push(kv);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether `raw` is exactly what `Value` would write for it: no whitespace, object keys in
/// strictly increasing order, strings without escapes (a borrowed `&str` only parses when
/// there are none), numbers as serde_json writes them. Anything unsure answers `false`, and
/// the caller writes the canonical text through `Value`.
fn is_canonical(raw: &RawValue) -> bool {
    let s = raw.get();
    let len_of = |parts: usize, inner: usize| 2 + inner + parts.saturating_sub(1);
    match s.as_bytes().first() {
        Some(b'{') => {
            let Ok(Members(m)) = serde_json::from_str::<Members>(s) else {
                return false;
            };
            let inner: usize = m.iter().map(|(k, v)| k.len() + 3 + v.get().len()).sum();
            len_of(m.len(), inner) == s.len()
                && m.windows(2).all(|w| w[0].0 < w[1].0)
                && m.iter().all(|(_, v)| is_canonical(v))
        }
        Some(b'[') => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(s) else {
                return false;
            };
            let inner: usize = items.iter().map(|v| v.get().len()).sum();
            len_of(items.len(), inner) == s.len() && items.iter().all(|v| is_canonical(v))
        }
        Some(b'"') => serde_json::from_str::<&str>(s).is_ok(),
        Some(b't' | b'f' | b'n') => matches!(s, "true" | "false" | "null"),
        Some(_) => serde_json::from_str::<serde_json::Number>(s)
            .and_then(|n| serde_json::to_string(&n))
            .is_ok_and(|t| t == s),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources;

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
        let back = resources::from_json(&resources::to_json(&p.resources)).unwrap();
        assert_eq!(back, p.resources);
    }

    #[test]
    fn raw_task_infos_read_like_values_and_keep_canonical_text() {
        for text in [
            r#"{"agent_id":{"value":""},"command":{"shell":true,"value":"true"},"name":"t","resources":[{"name":"cpus","scalar":{"value":0.1},"type":"SCALAR"}],"task_id":{"value":"t"}}"#,
            r#"{"task_id":{"value":"t"},"name":"t"}"#,
            r#"{ "name": "t", "task_id": {"value": "t"}}"#,
            r#"{"a":1.50,"task_id":{"value":"t"}}"#,
            r#"{"a":1e3,"task_id":{"value":"t"}}"#,
            r#"{"a":-0,"task_id":{"value":"t"}}"#,
            r#"{"a":"\u0041","task_id":{"value":"t"}}"#,
            r#"{"a":"x\"y","b":[1,2.5,true,null,{}],"task_id":{"value":"t"}}"#,
            r#"{"b":1,"b":2,"task_id":{"value":"t"}}"#,
            r#"{"a":[1, 2],"task_id":{"value":"t"}}"#,
            r#"{"a":{"z":1,"y":2},"task_id":{"value":"t"}}"#,
        ] {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let value: Json = serde_json::from_str(text).unwrap();
            let canonical = value.to_string();
            let (parts, spec) = task_info_from_raw(&raw).unwrap();
            assert_eq!(spec, canonical, "{text}");
            // Kept as sent only when canonical (a string with an escape is written again,
            // canonical or not: the check is conservative).
            let kept = matches!(spec, Cow::Borrowed(_));
            assert!(!kept || text == canonical, "{text}");
            assert_eq!(kept, text == canonical && !text.contains('\\'), "{text}");
            let from_value = task_info_parts(&value).unwrap();
            assert_eq!(parts.task_id, from_value.task_id);
            assert_eq!(parts.name, from_value.name);
            assert_eq!(parts.resources, from_value.resources);
        }
        // A number no f64 holds, in a field the cell does not read: still refused.
        if let Ok(raw) =
            serde_json::from_str::<Box<RawValue>>(r#"{"a":1e999,"task_id":{"value":"t"}}"#)
        {
            assert!(task_info_from_raw(&raw).is_err());
        }
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
            let raw = RawValue::from_string(bad.to_string()).unwrap();
            assert!(task_info_from_raw(&raw).is_err(), "{bad}");
        }
    }
}
