//! A Mesos `TaskInfo`, typed ([`v1::TaskInfo`]) and in Mesos's JSON (through prost-reflect, as
//! `shoal_proto::json` writes and reads every message), the parts of it the cell keeps, and
//! builders for the TaskInfos Shoal's own schedulers and clients write.

use serde_json::Value as Json;
use shoal_core::ResourceSet;
use shoal_proto::json::{from_json_str, from_json_str_partial, from_json_value, to_json_value};
use shoal_proto::mesos::v1::{
    self,
    container_info::{self, docker_info},
    environment,
};

use crate::{resources, MesosError, TaskInfoParts};

/// The TaskInfo in Mesos's JSON encoding (only the fields that are set; the required `name`,
/// `task_id` and `agent_id` always).
pub fn to_json(task: &v1::TaskInfo) -> Json {
    to_json_value(task)
}

/// Reads a TaskInfo from Mesos's JSON encoding, as Mesos does: required fields must be there.
pub fn from_json(v: Json) -> Result<v1::TaskInfo, MesosError> {
    Ok(from_json_value(v)?)
}

/// Reads a TaskInfo from its JSON text, as Mesos does.
pub fn from_str(text: &str) -> Result<v1::TaskInfo, MesosError> {
    Ok(from_json_str(text)?)
}

/// Reads a TaskInfo from its JSON text, letting required fields be absent (they read as
/// their defaults: an empty `name`, `ContainerInfo.type` `DOCKER`, ...): for a reader that
/// needs only some of the fields, such as an agent translating a task it was given.
pub fn from_str_partial(text: &str) -> Result<v1::TaskInfo, MesosError> {
    Ok(from_json_str_partial(text)?)
}

/// The parts the cell keeps: id, name, agent and resources (read into a [`ResourceSet`]).
pub fn parts(task: &v1::TaskInfo) -> Result<TaskInfoParts, MesosError> {
    Ok(TaskInfoParts {
        task_id: task.task_id.value.clone(),
        name: task.name.clone(),
        agent_id: Some(task.agent_id.value.clone()),
        resources: resources::from_proto(&task.resources)?,
    })
}

/// A TaskInfo running `shell` with `/bin/sh -c`, with the given resources, on no agent yet
/// (an empty `agent_id`: the claim names the agent).
pub fn command_task(
    task_id: &str,
    name: &str,
    resources: &ResourceSet,
    shell: &str,
) -> v1::TaskInfo {
    v1::TaskInfo {
        name: name.to_string(),
        task_id: v1::TaskId {
            value: task_id.to_string(),
        },
        agent_id: v1::AgentId {
            value: String::new(),
        },
        resources: resources::to_proto(resources),
        command: Some(shell_command(shell)),
        ..Default::default()
    }
}

/// A command run with `/bin/sh -c value`.
pub fn shell_command(value: &str) -> v1::CommandInfo {
    v1::CommandInfo {
        shell: Some(true),
        value: Some(value.to_string()),
        ..Default::default()
    }
}

/// Environment variables, in the order given.
pub fn environment<K: Into<String>, V: Into<String>>(
    vars: impl IntoIterator<Item = (K, V)>,
) -> v1::Environment {
    v1::Environment {
        variables: vars
            .into_iter()
            .map(|(name, value)| environment::Variable {
                name: name.into(),
                value: Some(value.into()),
                ..Default::default()
            })
            .collect(),
    }
}

/// The network a Docker container joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerNetwork {
    Host,
    Bridge,
}

/// A Docker container of `image` on `network`, mapping `(host_port, container_port)` pairs
/// over TCP.
pub fn docker_container(
    image: &str,
    network: DockerNetwork,
    port_mappings: &[(u32, u32)],
) -> v1::ContainerInfo {
    let network = match network {
        DockerNetwork::Host => docker_info::Network::Host,
        DockerNetwork::Bridge => docker_info::Network::Bridge,
    };
    v1::ContainerInfo {
        r#type: container_info::Type::Docker as i32,
        docker: Some(container_info::DockerInfo {
            image: image.to_string(),
            network: Some(network as i32),
            port_mappings: port_mappings
                .iter()
                .map(|&(host_port, container_port)| docker_info::PortMapping {
                    host_port,
                    container_port,
                    protocol: Some("tcp".into()),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::value::RawValue;

    use super::*;
    use crate::raw;

    fn set(text: &str) -> ResourceSet {
        ResourceSet::parse(text).unwrap()
    }

    fn sample() -> v1::TaskInfo {
        let mut t = command_task(
            "web-1",
            "web",
            &set("cpus:0.5;mem:64;ports:[31000-31001];cpus(web):1"),
            "exec httpd",
        );
        t.agent_id.value = "a1".into();
        if let Some(c) = t.command.as_mut() {
            c.environment = Some(environment([("PORT0", "31000"), ("A", "b c")]));
        }
        t.container = Some(docker_container(
            "local/busybox:latest",
            DockerNetwork::Bridge,
            &[(31000, 80)],
        ));
        t.labels = Some(v1::Labels {
            labels: vec![v1::Label {
                key: "k".into(),
                value: Some("v".into()),
            }],
        });
        t
    }

    #[test]
    fn typed_to_json_to_typed_round_trips() {
        for t in [
            sample(),
            command_task("t", "t", &ResourceSet::new(), "true"),
            v1::TaskInfo::default(),
        ] {
            let json = to_json(&t);
            assert_eq!(from_json(json.clone()).unwrap(), t, "{json}");
            assert_eq!(from_str(&json.to_string()).unwrap(), t, "{json}");
            assert_eq!(from_str_partial(&json.to_string()).unwrap(), t, "{json}");
        }
    }

    /// The command task's JSON is the text the client wrote before this module.
    #[test]
    fn a_command_task_is_written_as_before() {
        let res = set("cpus:0.1;mem:32");
        let t = command_task("t1", "one", &res, "sleep 1");
        let before = serde_json::json!({
            "name": "one",
            "task_id": {"value": "t1"},
            "agent_id": {"value": ""},
            "resources": crate::resources::tests::stored_text(&res),
            "command": {"shell": true, "value": "sleep 1"},
        });
        assert_eq!(to_json(&t).to_string(), before.to_string());
    }

    /// A built-in scheduler's task (environment, a Docker container with a port mapping) is
    /// written as `shoal_sched`'s `task_info_json` wrote it by hand before it used this module.
    #[test]
    fn a_scheduler_task_is_written_as_the_core_writes_it() {
        let res = set("cpus:1;mem:128;ports:[31000-31000]");
        let mut t = command_task("j.t.0", "t", &res, "");
        t.agent_id.value = "a1".into();
        if let Some(c) = t.command.as_mut() {
            c.shell = Some(false);
            c.environment = Some(environment([("A", "1"), ("PORT_WEB", "31000")]));
        }
        t.container = Some(docker_container(
            "local/busybox:latest",
            DockerNetwork::Bridge,
            &[(31000, 80)],
        ));
        let core = serde_json::json!({
            "name": "t",
            "task_id": {"value": "j.t.0"},
            "agent_id": {"value": "a1"},
            "resources": crate::resources::tests::stored_text(&res),
            "command": {"shell": false, "value": "", "environment": {"variables": [
                {"name": "A", "value": "1"}, {"name": "PORT_WEB", "value": "31000"}]}},
            "container": {"type": "DOCKER", "docker": {"image": "local/busybox:latest",
                "network": "BRIDGE",
                "port_mappings": [{"host_port": 31000, "container_port": 80, "protocol": "tcp"}]}},
        });
        assert_eq!(to_json(&t).to_string(), core.to_string());
        // An empty environment is written `{}` (Mesos leaves out empty repeated fields), where
        // the core writes `{"variables":[]}`; an agent reads both alike.
        t.command.as_mut().unwrap().environment = Some(environment(Vec::<(String, String)>::new()));
        assert_eq!(to_json(&t)["command"]["environment"], serde_json::json!({}));
    }

    #[test]
    fn partial_reading_lets_required_fields_be_absent() {
        assert!(from_str(r#"{"command":{"value":"x"}}"#).is_err());
        let t =
            from_str_partial(r#"{"command":{"value":"x"},"container":{"docker":{"image":"i"}}}"#)
                .unwrap();
        assert_eq!(t.task_id.value, "");
        assert_eq!(
            t.container.unwrap().r#type,
            container_info::Type::Docker as i32
        );
        assert!(from_str_partial("not json").is_err());
        assert!(
            from_str_partial(r#"{"resources":[{"name":"cpus","scalar":{"value":"x"}}]}"#).is_err()
        );
    }

    #[test]
    fn parts_read_id_name_agent_and_resources() {
        let p = parts(&sample()).unwrap();
        assert_eq!((p.task_id.as_str(), p.name.as_str()), ("web-1", "web"));
        assert_eq!(p.agent_id.as_deref(), Some("a1"));
        assert_eq!(
            p.resources.to_string(),
            "cpus:0.5;cpus(web):1;mem:64;ports:[31000-31001]"
        );
    }

    fn resource_text() -> impl Strategy<Value = String> {
        let scalar = (
            prop::sample::select(vec!["cpus", "mem", "disk", "gpus"]),
            prop::sample::select(vec!["", "(web)", "(a/b)"]),
            0u32..100_000,
        )
            .prop_map(|(n, r, m)| format!("{n}{r}:{}", f64::from(m) / 1000.0));
        let ranges = (
            prop::collection::vec((0u64..70_000, 0u64..50), 1..4),
            any::<bool>(),
        )
            .prop_map(|(rs, web)| {
                let parts: Vec<String> = rs.iter().map(|(b, l)| format!("{b}-{}", b + l)).collect();
                format!(
                    "ports{}:[{}]",
                    if web { "(web)" } else { "" },
                    parts.join(",")
                )
            });
        let items = prop::collection::btree_set("[a-z]{1,3}", 1..4)
            .prop_map(|s| format!("zones:{{{}}}", s.into_iter().collect::<Vec<_>>().join(",")));
        prop::collection::vec(prop_oneof![scalar, ranges, items], 0..5).prop_map(|v| v.join(";"))
    }

    proptest! {
        /// The commit path's raw reader reads what the typed reader reads, from the same text.
        #[test]
        fn the_raw_reader_equals_the_typed_reader(
            id in "[a-z0-9.-]{1,12}",
            name in "[ -~]{0,12}",
            agent in "[a-z0-9-]{0,8}",
            res in resource_text(),
            shell in "[ -~]{0,20}",
        ) {
            // Resources that do not make a set (a port listed twice) are left to the error
            // case below.
            let Ok(set) = ResourceSet::parse(&res) else { return Ok(()) };
            let mut t = command_task(&id, &name, &set, &shell);
            t.agent_id.value = agent;
            let text = to_json(&t).to_string();
            let typed = parts(&from_str(&text).unwrap()).unwrap();
            let raw_value: Box<RawValue> = serde_json::from_str(&text).unwrap();
            let (from_raw, spec) = raw::task_info_from_raw(&raw_value).unwrap();
            prop_assert_eq!(&from_raw, &typed);
            prop_assert_eq!(spec.as_ref(), text.as_str());
            prop_assert_eq!(&raw::task_info_parts(&to_json(&t)).unwrap(), &typed);
        }

        /// Both readers refuse the same resources.
        #[test]
        fn both_readers_refuse_the_same_resources(begin in 0u64..10, end in 0u64..10, v in -2.0f64..2.0) {
            let text = format!(
                r#"{{"name":"t","task_id":{{"value":"t"}},"agent_id":{{"value":""}},"resources":[{{"name":"ports","type":"RANGES","ranges":{{"range":[{{"begin":{begin},"end":{end}}}]}}}},{{"name":"cpus","type":"SCALAR","scalar":{{"value":{v}}}}}]}}"#
            );
            let typed = from_str(&text).and_then(|t| parts(&t));
            let raw_value: Box<RawValue> = serde_json::from_str(&text).unwrap();
            let raw = raw::task_info_from_raw(&raw_value).map(|(p, _)| p);
            prop_assert_eq!(typed.is_ok(), raw.is_ok(), "{}", text);
            if let (Ok(a), Ok(b)) = (typed, raw) {
                prop_assert_eq!(a, b);
            }
        }
    }
}
