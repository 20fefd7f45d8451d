//! From a Mesos `TaskInfo` (Mesos's JSON encoding, as frameworks and native schedulers send
//! it, read by `shoal_mesos`) to an executor's [`LaunchSpec`]. Pure: no IO.

use std::path::Path;
use std::time::Duration;

use shoal_mesos::task_info;
use shoal_mesos::v1::{self, container_info, health_check, image};

use crate::executor::{
    CommandSpec, ContainerSpec, DockerNetwork, DockerSpec, HealthCheckKind, HealthCheckSpec,
    LaunchSpec, Limits, PortMapping, Protocol,
};

/// What the agent needs to launch a task, besides the sandbox it creates.
pub struct Translated {
    pub spec: LaunchSpec,
}

fn secs(v: Option<f64>, default: f64) -> Duration {
    let s = v.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(default);
    Duration::from_secs_f64(s.min(86_400.0))
}

fn port(p: u32, what: &str) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{what} {p} is not a valid port"))
}

fn command_spec(c: v1::CommandInfo) -> Result<Option<CommandSpec>, String> {
    if !c.uris.is_empty() {
        return Err("CommandInfo.uris (fetching) is not supported by Shoal agents; bake files into the image".into());
    }
    let env: Vec<(String, String)> = c
        .environment
        .map(|e| {
            e.variables
                .into_iter()
                .map(|v| (v.name, v.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let Some(value) = c.value else {
        return Ok(None);
    };
    let mut spec = if c.shell.unwrap_or(true) {
        CommandSpec::shell(value)
    } else {
        CommandSpec::argv(
            value.clone(),
            c.arguments.into_iter().skip(1).collect::<Vec<_>>(),
        )
    };
    for (k, v) in env {
        spec = spec.with_env(k, v);
    }
    Ok(Some(spec))
}

fn docker_spec(d: container_info::DockerInfo) -> Result<DockerSpec, String> {
    use container_info::docker_info::Network;
    if d.privileged.unwrap_or(false) {
        return Err("privileged containers are not allowed on this agent".into());
    }
    let network = match d.network.map(Network::try_from) {
        None | Some(Ok(Network::Bridge)) => DockerNetwork::Bridge,
        Some(Ok(Network::Host)) => DockerNetwork::Host,
        Some(Ok(Network::None)) => DockerNetwork::None,
        Some(other) => {
            let name = other.map_or_else(|n| n.to_string(), |n| n.as_str_name().to_string());
            return Err(format!("docker network {name} is not supported"));
        }
    };
    let mut ds = DockerSpec::new(d.image);
    ds.network = network;
    ds.force_pull = d.force_pull_image.unwrap_or(false);
    for m in d.port_mappings {
        let protocol = match m
            .protocol
            .as_deref()
            .unwrap_or("tcp")
            .to_ascii_lowercase()
            .as_str()
        {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("port mapping protocol {other} is not supported")),
        };
        ds.port_mappings.push(PortMapping {
            host_port: port(m.host_port, "host_port")?,
            container_port: port(m.container_port, "container_port")?,
            protocol,
        });
    }
    Ok(ds)
}

/// The Docker container a `ContainerInfo` asks for; `None` for a process (a `MESOS` container
/// without an image).
fn container(c: v1::ContainerInfo) -> Result<Option<DockerSpec>, String> {
    match container_info::Type::try_from(c.r#type) {
        Ok(container_info::Type::Docker) => {
            let d = c
                .docker
                .ok_or("ContainerInfo of type DOCKER without docker")?;
            docker_spec(d).map(Some)
        }
        Ok(container_info::Type::Mesos) => match c.mesos.and_then(|m| m.image) {
            Some(img) if img.r#type == image::Type::Docker as i32 => {
                let name = img
                    .docker
                    .ok_or("Image of type DOCKER without docker.name")?
                    .name;
                Ok(Some(DockerSpec::new(name)))
            }
            Some(_) => Err("only Docker images are supported".into()),
            None => Ok(None),
        },
        Err(_) => Err(format!("container type {} is not supported", c.r#type)),
    }
}

fn health_check_spec(h: v1::HealthCheck) -> Result<HealthCheckSpec, String> {
    use health_check::Type;
    let kind = match h.r#type {
        Some(n) => Type::try_from(n).map_err(|_| n.to_string()),
        None if h.http.is_some() => Ok(Type::Http),
        None if h.tcp.is_some() => Ok(Type::Tcp),
        None => Ok(Type::Command),
    };
    let kind = match kind {
        Ok(Type::Command) => {
            let shell = h
                .command
                .and_then(|c| c.value)
                .ok_or("COMMAND health check without command.value")?;
            HealthCheckKind::Command { shell }
        }
        Ok(Type::Http) => {
            let http = h.http.ok_or("HTTP health check without http")?;
            HealthCheckKind::Http {
                port: port(http.port, "health check port")?,
                path: http.path.unwrap_or_else(|| "/".into()),
            }
        }
        Ok(Type::Tcp) => HealthCheckKind::Tcp {
            port: port(
                h.tcp.ok_or("TCP health check without tcp")?.port,
                "health check port",
            )?,
        },
        Ok(other) => {
            return Err(format!(
                "health check type {} is not supported",
                other.as_str_name()
            ))
        }
        Err(n) => return Err(format!("health check type {n} is not supported")),
    };
    let mut hc = HealthCheckSpec::new(kind);
    hc.delay = secs(h.delay_seconds, 15.0);
    hc.interval = secs(h.interval_seconds, 10.0);
    hc.timeout = secs(h.timeout_seconds, 20.0);
    hc.grace = secs(h.grace_period_seconds, 10.0);
    hc.consecutive_failures = h.consecutive_failures.unwrap_or(3).max(1);
    Ok(hc)
}

/// Translates a TaskInfo; an `Err` is a malformed or unsupported task (TASK_ERROR). The
/// TaskInfo is read partially (required fields the agent does not use may be absent).
pub fn launch_spec(
    task_id: &str,
    task_info: &str,
    sandbox: &Path,
    default_grace: Duration,
) -> Result<Translated, String> {
    let t =
        task_info::from_str_partial(task_info).map_err(|e| format!("malformed TaskInfo: {e}"))?;
    if t.executor.is_some() {
        return Err(
            "custom executors (TaskInfo.executor) are not supported; use command or container"
                .into(),
        );
    }
    let mut spec = LaunchSpec::new(task_id, sandbox);
    spec.kill_grace = default_grace;
    if let Some(c) = t.command {
        spec.command = command_spec(c)?;
    }
    let mut limits = Limits::default();
    for r in &t.resources {
        match (r.name.as_str(), &r.scalar) {
            ("cpus", Some(s)) => limits.cpus += s.value,
            ("mem", Some(s)) => limits.mem_mb += s.value.max(0.0).round() as u64,
            _ => {}
        }
    }
    spec.limits = limits;
    if let Some(c) = t.container {
        if let Some(d) = container(c)? {
            spec.container = ContainerSpec::Docker(d);
        }
    }
    if let Some(h) = t.health_check {
        spec.health_check = Some(health_check_spec(h)?);
    }
    if let Some(kp) = t.kill_policy.and_then(|k| k.grace_period) {
        spec.kill_grace = Duration::from_nanos(kp.nanoseconds.max(0) as u64);
    }
    if let Some(labels) = t.labels {
        for l in labels.labels {
            if l.key.starts_with("shoal.group") {
                spec.group = l.value.clone();
            } else if !l.key.starts_with("shoal.") {
                spec.labels.push((l.key, l.value.unwrap_or_default()));
            }
        }
    }
    spec.validate().map_err(|e| e.to_string())?;
    Ok(Translated { spec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_command_with_limits() {
        let t = r#"{"task_id":{"value":"t"},"command":{"value":"echo hi","environment":{"variables":[{"name":"A","value":"1"}]}},
            "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.5}},{"name":"mem","type":"SCALAR","scalar":{"value":64}}]}"#;
        let s = launch_spec("t", t, Path::new("/tmp/sb"), Duration::from_secs(1))
            .unwrap()
            .spec;
        assert_eq!(s.limits.mem_mb, 64);
        assert!(matches!(s.container, ContainerSpec::Process));
        assert!(s.command.is_some());
    }

    #[test]
    fn docker_with_ports_and_health() {
        let t = r#"{"task_id":{"value":"t"},"container":{"type":"DOCKER","docker":{"image":"local/busybox:latest","network":"BRIDGE",
            "port_mappings":[{"host_port":31000,"container_port":80,"protocol":"tcp"}]}},
            "health_check":{"type":"HTTP","http":{"port":80,"path":"/"},"interval_seconds":1},
            "kill_policy":{"grace_period":{"nanoseconds":2000000000}}}"#;
        let s = launch_spec("t", t, Path::new("/tmp/sb"), Duration::from_secs(1))
            .unwrap()
            .spec;
        let ContainerSpec::Docker(d) = &s.container else {
            panic!()
        };
        assert_eq!(d.port_mappings[0].host_port, 31000);
        assert_eq!(s.kill_grace, Duration::from_secs(2));
        assert!(s.health_check.is_some());
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        for bad in [
            "not json",
            r#"{"command":{"value":"x","uris":[{"value":"http://x"}]}}"#,
            r#"{"container":{"type":"DOCKER","docker":{"image":"x","privileged":true}}}"#,
            r#"{"container":{"type":"DOCKER","docker":{"image":"x","port_mappings":[{"host_port":70000,"container_port":1}]}}}"#,
            r#"{"executor":{"executor_id":{"value":"e"}}}"#,
            r#"{}"#,
        ] {
            assert!(
                launch_spec("t", bad, Path::new("/tmp/sb"), Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }
}
