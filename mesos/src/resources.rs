//! A [`ResourceSet`] as Mesos `Resource` messages: typed ([`v1::Resource`]) and in Mesos's
//! JSON. A reserved entry is written with one dynamic reservation for its role; on reading,
//! the role is the last (most refined) reservation's, or the deprecated `role` field when
//! there are no reservations.

use serde_json::Value as Json;
use shoal_core::{Milli, Ranges, Resource, ResourceSet, Value, UNRESERVED};
use shoal_proto::json::{from_json_value, to_json_value};
use shoal_proto::mesos::v1::{
    self,
    resource::{reservation_info, ReservationInfo},
    value,
};

use crate::MesosError;

/// The set as Mesos `Resource` messages, in the set's order (by name, then role).
pub fn to_proto(set: &ResourceSet) -> Vec<v1::Resource> {
    set.iter().map(resource_to_proto).collect()
}

fn resource_to_proto(r: &Resource) -> v1::Resource {
    let mut out = v1::Resource {
        name: r.name.to_string(),
        ..Default::default()
    };
    match &r.value {
        Value::Scalar(m) => {
            out.r#type = value::Type::Scalar as i32;
            out.scalar = Some(value::Scalar { value: m.as_f64() });
        }
        Value::Ranges(rs) => {
            out.r#type = value::Type::Ranges as i32;
            out.ranges = Some(value::Ranges {
                range: rs
                    .as_slice()
                    .iter()
                    .map(|&(begin, end)| value::Range { begin, end })
                    .collect(),
            });
        }
        Value::Set(items) => {
            out.r#type = value::Type::Set as i32;
            out.set = Some(value::Set {
                item: items.iter().cloned().collect(),
            });
        }
    }
    if r.role != UNRESERVED {
        out.reservations = vec![ReservationInfo {
            r#type: Some(reservation_info::Type::Dynamic as i32),
            role: Some(r.role.to_string()),
            ..Default::default()
        }];
    }
    out
}

/// Reads Mesos `Resource` messages into a set. A type Shoal does not hold (`TEXT`), an
/// invalid scalar or range, or entries that do not make a set are errors.
pub fn from_proto(list: &[v1::Resource]) -> Result<ResourceSet, MesosError> {
    let mut out = Vec::with_capacity(list.len());
    for r in list {
        let role = r
            .reservations
            .iter()
            .rev()
            .find_map(|x| x.role.as_deref())
            .or(r.role.as_deref())
            .unwrap_or(UNRESERVED);
        let bad = |why: String| MesosError::Resource {
            name: r.name.clone(),
            why,
        };
        let value = match value::Type::try_from(r.r#type) {
            Ok(value::Type::Scalar) => {
                let v = r
                    .scalar
                    .ok_or_else(|| bad("SCALAR without scalar".into()))?
                    .value;
                Value::Scalar(Milli::from_f64(v).ok_or_else(|| bad(format!("invalid scalar {v}")))?)
            }
            Ok(value::Type::Ranges) => {
                let ranges = r
                    .ranges
                    .as_ref()
                    .map(|x| x.range.iter().map(|x| (x.begin, x.end)).collect())
                    .unwrap_or_default();
                Value::Ranges(
                    Ranges::new(ranges).ok_or_else(|| bad("range begins after it ends".into()))?,
                )
            }
            Ok(value::Type::Set) => Value::Set(
                r.set
                    .as_ref()
                    .map(|s| s.item.iter().cloned().collect())
                    .unwrap_or_default(),
            ),
            Ok(other) => return Err(bad(format!("unsupported type {}", other.as_str_name()))),
            Err(_) => return Err(bad(format!("unsupported type {}", r.r#type))),
        };
        out.push(Resource {
            name: r.name.as_str().into(),
            role: role.into(),
            value,
        });
    }
    Ok(ResourceSet::from_resources(out)?)
}

/// The set as Mesos `Resource` messages in Mesos's JSON encoding (a JSON array).
pub fn to_json(set: &ResourceSet) -> Json {
    Json::Array(
        set.iter()
            .map(|r| to_json_value(&resource_to_proto(r)))
            .collect(),
    )
}

/// Reads Mesos `Resource` messages from Mesos's JSON encoding (a JSON array), as Mesos
/// reads them (a resource without `name` or `type` is refused).
pub fn from_json(v: &Json) -> Result<ResourceSet, MesosError> {
    let Json::Array(items) = v else {
        return Err(MesosError::Malformed {
            what: "resources",
            why: "expected an array".into(),
        });
    };
    let list = items
        .iter()
        .map(|r| from_json_value::<v1::Resource>(r.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    from_proto(&list)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn set(text: &str) -> ResourceSet {
        ResourceSet::parse(text).unwrap()
    }

    #[test]
    fn sets_with_ranges_sets_and_reservations_round_trip() {
        for text in [
            "",
            "cpus:0.5;mem:64",
            "cpus:1.001;cpus(web):2;disk(db):10;mem:1e12",
            "ports:[31000-31005,31010-31010];ports(web):[1-1]",
            "zones:{a,b,c};zones(web):{d}",
            "cpus:4;gpus:1;mem:8192;ports:[31000-32000];zones:{a,b};cpus(web):2",
        ] {
            let s = set(text);
            assert_eq!(from_proto(&to_proto(&s)).unwrap(), s, "{text}");
            assert_eq!(from_json(&to_json(&s)).unwrap(), s, "{text}");
        }
    }

    /// The resources' JSON as the core wrote it before this module (`json!` by hand): the
    /// text stored task specs hold, which [`to_json`] must keep writing.
    pub(crate) fn stored_text(set: &ResourceSet) -> serde_json::Value {
        use serde_json::json;
        use shoal_core::{Value, UNRESERVED};
        serde_json::Value::Array(
            set.iter()
                .map(|r| {
                    let mut o = match &r.value {
                        Value::Scalar(m) => json!({"name": r.name, "type": "SCALAR", "scalar": {"value": m.as_f64()}}),
                        Value::Ranges(rs) => json!({"name": r.name, "type": "RANGES", "ranges": {"range":
                            rs.as_slice().iter().map(|(b, e)| json!({"begin": b, "end": e})).collect::<Vec<_>>()}}),
                        Value::Set(s) => json!({"name": r.name, "type": "SET", "set": {"item": s}}),
                    };
                    if r.role != UNRESERVED {
                        o["reservations"] = json!([{"type": "DYNAMIC", "role": r.role}]);
                    }
                    o
                })
                .collect(),
        )
    }

    /// The JSON is the text the core wrote before this module: stored task specs keep it.
    #[test]
    fn json_is_what_the_core_writes() {
        let s = set("cpus:0.1;mem:32.5;ports:[1-2,5-9];zones:{a,b};cpus(web):2;disk(db/x):1");
        assert_eq!(to_json(&s).to_string(), stored_text(&s).to_string());
        assert_eq!(
            to_json(&set("cpus(web):1")).to_string(),
            r#"[{"name":"cpus","reservations":[{"role":"web","type":"DYNAMIC"}],"scalar":{"value":1.0},"type":"SCALAR"}]"#
        );
    }

    #[test]
    fn the_last_reservation_or_the_role_names_the_role() {
        let v = serde_json::json!([
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}, "role": "old"},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 1}, "role": "old",
             "reservations": [{"type": "STATIC", "role": "a"}, {"type": "DYNAMIC", "role": "a/b"}]},
        ]);
        assert_eq!(from_json(&v).unwrap().to_string(), "cpus(old):1;mem(a/b):1");
    }

    #[test]
    fn bad_resources_are_errors() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!([{"name": "cpus", "type": "SCALAR"}]),
            serde_json::json!([{"name": "cpus", "type": "TEXT", "text": {"value": "x"}}]),
            serde_json::json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": -1}}]),
            serde_json::json!([{"name": "p", "type": "RANGES", "ranges": {"range": [{"begin": 2, "end": 1}]}}]),
            serde_json::json!([{"name": "cpus", "scalar": {"value": 1}}]),
            serde_json::json!([{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1}},
                               {"name": "cpus", "type": "SET", "set": {"item": ["a"]}}]),
        ] {
            assert!(from_json(&bad).is_err(), "{bad}");
        }
    }
}
