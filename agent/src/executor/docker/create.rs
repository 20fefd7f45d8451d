//! A container from a launch spec: the image (pulled when missing), the container's
//! configuration (labels, limits, network, ports), its creation and start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::executor::util;
use crate::executor::{
    AgentError, ContainerSpec, DockerNetwork, DockerSpec, FailReason, LaunchSpec, TaskUpdate,
};

use super::orphans::mount_namespace;
use super::running::{is_running, watch_container};
use super::{
    status_code, Attached, Control, DockerConfig, Inner, NetRole, LABEL_AGENT, LABEL_GRACE,
    LABEL_GROUP, LABEL_GROUP_OWNER, LABEL_HEALTH, LABEL_MANAGED, LABEL_MNT_NS, LABEL_RECOVERY,
    LABEL_SANDBOX, LABEL_STATE_DIR, LABEL_TASK,
};

/// `(from_image, tag)` for a pull: the tag defaults to `latest`; digests stay in the image.
pub(crate) fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The container configuration of a task (plain).
pub(crate) fn create_body(
    spec: &LaunchSpec,
    d: &DockerSpec,
    cfg: &DockerConfig,
    network_mode: String,
    owns_network: bool,
) -> ContainerCreateBody {
    let (entrypoint, cmd, env) = command_parts(spec);
    let mut host = HostConfig {
        network_mode: Some(network_mode),
        ..Default::default()
    };
    if spec.limits.mem_mb > 0 {
        let bytes = (spec.limits.mem_mb as i64).saturating_mul(1024 * 1024);
        host.memory = Some(bytes);
        host.memory_swap = Some(bytes);
    }
    if spec.limits.cpus > 0.0 {
        host.nano_cpus = Some((spec.limits.cpus * 1e9) as i64);
    }
    let mut exposed = None;
    if owns_network && !d.port_mappings.is_empty() {
        let (ports, bindings) = port_bindings(d, &cfg.bind_ip);
        exposed = Some(ports);
        host.port_bindings = Some(bindings);
    }
    ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint,
        cmd,
        env,
        labels: Some(labels(spec, cfg, owns_network)),
        exposed_ports: exposed,
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(host),
        ..Default::default()
    }
}

/// The container's labels: the spec's own (without the reserved `shoal.` prefix) and what
/// recovery, gc and other agents read (see the executor's module docs).
fn labels(spec: &LaunchSpec, cfg: &DockerConfig, owns_network: bool) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("shoal."))
        .cloned()
        .collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_AGENT.into(), cfg.agent_id.clone());
    labels.insert(LABEL_TASK.into(), spec.task_id.clone());
    labels.insert(
        LABEL_SANDBOX.into(),
        spec.sandbox.to_string_lossy().into_owned(),
    );
    labels.insert(LABEL_GRACE.into(), spec.kill_grace.as_millis().to_string());
    labels.insert(
        LABEL_STATE_DIR.into(),
        cfg.state_dir.to_string_lossy().into_owned(),
    );
    labels.insert(
        LABEL_RECOVERY.into(),
        cfg.recovery_timeout.as_millis().to_string(),
    );
    if let Some(ns) = mount_namespace() {
        labels.insert(LABEL_MNT_NS.into(), ns.to_string());
    }
    if let Some(g) = &spec.group {
        labels.insert(LABEL_GROUP.into(), g.clone());
        labels.insert(LABEL_GROUP_OWNER.into(), owns_network.to_string());
    }
    if let Some(hc) = &spec.health_check {
        if let Ok(s) = serde_json::to_string(hc) {
            labels.insert(LABEL_HEALTH.into(), s);
        }
    }
    labels
}

/// Entrypoint, command and environment of the container (`None`: the image's own).
type CommandParts = (
    Option<Vec<String>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

/// The spec's command as Docker runs it: a shell command through `/bin/sh -c`, a program
/// with its arguments, or only arguments to the image's entrypoint.
fn command_parts(spec: &LaunchSpec) -> CommandParts {
    let (mut entrypoint, mut cmd, mut env) = (None, None, None);
    if let Some(c) = &spec.command {
        if c.shell {
            entrypoint = Some(vec!["/bin/sh".to_string(), "-c".to_string()]);
            cmd = Some(vec![c.value.clone()]);
        } else if !c.value.is_empty() {
            cmd = Some(
                std::iter::once(c.value.clone())
                    .chain(c.arguments.iter().cloned())
                    .collect(),
            );
        } else if !c.arguments.is_empty() {
            cmd = Some(c.arguments.clone());
        }
        if !c.env.is_empty() {
            env = Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        }
    }
    (entrypoint, cmd, env)
}

/// The exposed ports (sorted, once each) and their bindings on `bind_ip`.
fn port_bindings(
    d: &DockerSpec,
    bind_ip: &str,
) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut bindings = HashMap::new();
    let mut ports = Vec::new();
    for pm in &d.port_mappings {
        let key = format!("{}/{}", pm.container_port, pm.protocol.as_str());
        ports.push(key.clone());
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(bind_ip.to_string()),
                host_port: Some(pm.host_port.to_string()),
            });
    }
    ports.sort();
    ports.dedup();
    (ports, bindings)
}

/// Makes sure the image is there: `Err((reason, message))` otherwise.
pub(super) async fn ensure_image(
    docker: &Docker,
    image: &str,
    force_pull: bool,
    timeout: Duration,
) -> Result<(), (FailReason, String)> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if status_code(&e) == Some(404) => false,
        Err(e) => {
            return Err((
                FailReason::LaunchFailed,
                format!("cannot inspect image {image}: {e}"),
            ))
        }
    };
    if present && !force_pull {
        return Ok(());
    }
    let (from_image, tag) = split_image(image);
    let opts = CreateImageOptions {
        from_image: Some(from_image),
        tag: (!tag.is_empty()).then_some(tag),
        ..Default::default()
    };
    let pull = async {
        let mut stream = docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(err);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    let res = match tokio::time::timeout(timeout, pull).await {
        Ok(r) => r,
        Err(_) => Err(format!("pull timed out after {timeout:?}")),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if present => {
            tracing::warn!(image, error = %e, "forced pull failed; using the local image");
            Ok(())
        }
        Err(e) => Err((
            FailReason::ImageMissing,
            format!("image {image} is not present locally and cannot be pulled: {e}"),
        )),
    }
}

/// Launches a new container task, then watches it.
pub(super) async fn run_new(
    inner: Arc<Inner>,
    spec: LaunchSpec,
    role: NetRole,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let task_id = spec.task_id.clone();
    let group = spec.group.clone();
    let owns_network = !matches!(role, NetRole::Member(_));
    let owner_net = match &role {
        NetRole::Owner(n) => Some(n.clone()),
        _ => None,
    };
    let end = |update: TaskUpdate| {
        if let (Some(net), Some(msg)) = (&owner_net, update_message(&update)) {
            net.send_replace(Some(Err(AgentError::Group(msg))));
        }
        inner.finish(&task_id, group.as_deref(), owns_network, update);
    };
    let d = match checked_spec(&spec, owns_network) {
        Ok(d) => d,
        Err(update) => return end(update),
    };
    let _ = std::fs::remove_file(inner.kill_marker(&task_id));

    // Pulling the image and waiting for the group's network can be interrupted
    // by a kill; creating and starting the container cannot (a kill that comes
    // in meanwhile is handled by the watcher right after the start). The image is
    // not looked up first: `create` says when it is missing, and only then is it
    // pulled (as `docker run` does), which keeps a call off every launch.
    let network_mode = tokio::select! {
        r = network_mode(&inner, d, role) => r,
        Some(Control::Kill { .. }) = rx.recv() => return end(killed_early()),
    };
    let network_mode = match network_mode {
        Ok(n) => n,
        Err((reason, message)) => return end(failed(reason, message)),
    };
    let body = create_body(&spec, d, &inner.cfg, network_mode, owns_network);
    let name = util::container_name(&inner.cfg.name_prefix, &inner.cfg.agent_id, &task_id);
    let (cid, docker_us) = match create_and_start(&inner, &name, body, d, &mut rx).await {
        Ok(started) => started,
        Err(update) => return end(update),
    };
    if let Some(net) = &owner_net {
        net.send_replace(Some(Ok(cid.clone())));
    }
    tracing::info!(task_id = %task_id, container = %cid, docker_us, "docker task running");
    inner.send(&task_id, TaskUpdate::Running { healthy: None });
    let attached = Attached {
        task_id: task_id.clone(),
        container_id: cid,
        sandbox: spec.sandbox.clone(),
        group: spec.group.clone(),
        owns_network,
        kill_grace: spec.kill_grace,
        health_check: spec.health_check.clone(),
    };
    watch_container(inner.clone(), attached, rx).await;
}

fn failed(reason: FailReason, message: String) -> TaskUpdate {
    TaskUpdate::Failed {
        exit_code: None,
        reason,
        message,
    }
}

fn killed_early() -> TaskUpdate {
    TaskUpdate::Killed {
        message: "killed before it started".into(),
    }
}

/// The Docker part of a spec the executor can run, with the sandbox's log files made; a
/// spec it cannot run ends the task with the returned update.
fn checked_spec(spec: &LaunchSpec, owns_network: bool) -> Result<&DockerSpec, TaskUpdate> {
    if let Err(e) = spec.validate() {
        return Err(TaskUpdate::Error {
            message: e.to_string(),
        });
    }
    let ContainerSpec::Docker(d) = &spec.container else {
        return Err(TaskUpdate::Error {
            message: "the docker executor needs a docker container spec".into(),
        });
    };
    if !owns_network && !d.port_mappings.is_empty() {
        return Err(TaskUpdate::Error {
            message: "only the first task of a group may map ports (the others share its network)"
                .into(),
        });
    }
    if !spec.sandbox.is_dir() {
        return Err(failed(
            FailReason::LaunchFailed,
            format!("sandbox {} is not a directory", spec.sandbox.display()),
        ));
    }
    // Small local file operations, done in place: a trip through the blocking pool per
    // file would sit on the launch path.
    for name in ["stdout", "stderr"] {
        let p = spec.sandbox.join(name);
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            return Err(failed(
                FailReason::LaunchFailed,
                format!("open {}: {e}", p.display()),
            ));
        }
    }
    Ok(d)
}

/// The network mode of a new container (after a forced pull of its image): its own, or
/// for a later member of a group the namespace of the group's first container, once that
/// one started.
async fn network_mode(
    inner: &Inner,
    d: &DockerSpec,
    role: NetRole,
) -> Result<String, (FailReason, String)> {
    if d.force_pull {
        ensure_image(&inner.docker, &d.image, true, inner.cfg.pull_timeout).await?;
    }
    let network_mode = match role {
        NetRole::Member(mut net) => {
            let owner = net.wait_for(|v| v.is_some()).await.map(|v| match &*v {
                Some(Ok(cid)) => Some(Ok(cid.clone())),
                Some(Err(e)) => Some(Err(e.to_string())),
                None => None,
            });
            match owner {
                Ok(Some(Ok(cid))) => format!("container:{cid}"),
                Ok(Some(Err(e))) => {
                    return Err((
                        FailReason::LaunchFailed,
                        format!("the group's network is not available: {e}"),
                    ))
                }
                _ => {
                    return Err((
                        FailReason::LaunchFailed,
                        "the group's network owner vanished".to_string(),
                    ))
                }
            }
        }
        _ => match d.network {
            DockerNetwork::Bridge => "bridge".into(),
            DockerNetwork::Host => "host".into(),
            DockerNetwork::None => "none".into(),
        },
    };
    Ok(network_mode)
}

/// Creates the container, pulling its image first when it is missing (a kill meanwhile
/// ends the task), and starts it: its id, and Docker's own share of the launch (create +
/// start, in µs) for the launch latency benchmark.
async fn create_and_start(
    inner: &Inner,
    name: &str,
    body: ContainerCreateBody,
    d: &DockerSpec,
    rx: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<(String, u128), TaskUpdate> {
    let clock = &inner.cfg.clock;
    let mut t0 = clock.monotonic();
    let mut created = create_container(inner, name, body.clone()).await;
    if matches!(created, Err((FailReason::ImageMissing, _))) {
        let pull = ensure_image(&inner.docker, &d.image, false, inner.cfg.pull_timeout);
        let pulled = tokio::select! {
            r = pull => r,
            Some(Control::Kill { .. }) = rx.recv() => return Err(killed_early()),
        };
        if let Err((reason, message)) = pulled {
            return Err(failed(reason, message));
        }
        t0 = clock.monotonic();
        created = create_container(inner, name, body).await;
    }
    let cid = created.map_err(|(reason, message)| failed(reason, message))?;
    if let Err(e) = inner.docker.start_container(&cid, None).await {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = inner.docker.remove_container(&cid, Some(opts)).await;
        return Err(failed(
            FailReason::LaunchFailed,
            format!("cannot start the container: {e}"),
        ));
    }
    Ok((cid, (clock.monotonic() - t0).as_micros()))
}

pub(super) fn update_message(u: &TaskUpdate) -> Option<String> {
    match u {
        TaskUpdate::Failed { message, .. }
        | TaskUpdate::Killed { message }
        | TaskUpdate::Error { message } => Some(message.clone()),
        TaskUpdate::Finished => Some("finished".into()),
        _ => None,
    }
}

/// Creates the container; a stale ended container of the same name (same
/// agent and task) is removed first. A missing image is `ImageMissing`.
pub(super) async fn create_container(
    inner: &Inner,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, (FailReason, String)> {
    for attempt in 0..2 {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        match inner
            .docker
            .create_container(Some(opts), body.clone())
            .await
        {
            Ok(r) => {
                for w in r.warnings.iter().filter(|w| !w.is_empty()) {
                    tracing::warn!(container = %r.id, warning = %w, "docker create");
                }
                return Ok(r.id);
            }
            Err(e) if status_code(&e) == Some(409) && attempt == 0 => {
                let stale = inner.docker.inspect_container(name, None).await.ok();
                let ours = stale.as_ref().is_some_and(|c| {
                    let l = c.config.as_ref().and_then(|c| c.labels.as_ref());
                    l.and_then(|l| l.get(LABEL_AGENT)) == Some(&inner.cfg.agent_id)
                });
                if !ours || stale.as_ref().is_some_and(is_running) {
                    return Err((
                        FailReason::LaunchFailed,
                        format!("cannot create container {name}: {e}"),
                    ));
                }
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = inner.docker.remove_container(name, Some(opts)).await;
            }
            // The only 404 of a create: the image is not here.
            Err(e) if status_code(&e) == Some(404) => {
                return Err((
                    FailReason::ImageMissing,
                    format!("cannot create the container: {e}"),
                ))
            }
            Err(e) => {
                return Err((
                    FailReason::LaunchFailed,
                    format!("cannot create the container: {e}"),
                ))
            }
        }
    }
    Err((
        FailReason::LaunchFailed,
        format!("cannot create container {name}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CommandSpec, Limits, PortMapping, Protocol};

    fn spec() -> (LaunchSpec, DockerSpec) {
        let mut d = DockerSpec::new("local/busybox:latest");
        d.port_mappings.push(PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        });
        let mut s = LaunchSpec::new("web.1", "/tmp/sb");
        s.container = ContainerSpec::Docker(d.clone());
        s.command = Some(CommandSpec::shell("httpd -f -p 80").with_env("A", "b"));
        s.limits = Limits {
            cpus: 0.5,
            mem_mb: 64,
        };
        s.labels.push(("team".into(), "x".into()));
        s.labels.push(("shoal.task_id".into(), "forged".into()));
        (s, d)
    }

    #[test]
    fn body() {
        let (s, d) = spec();
        let cfg = DockerConfig::new("agent-1", "/tmp/state");
        let b = create_body(&s, &d, &cfg, "bridge".into(), true);
        assert_eq!(
            b.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(b.cmd, Some(vec!["httpd -f -p 80".to_string()]));
        assert_eq!(b.env, Some(vec!["A=b".to_string()]));
        let labels = b.labels.expect("labels");
        assert_eq!(
            labels.get("shoal.task_id").map(String::as_str),
            Some("web.1")
        );
        assert_eq!(
            labels.get("shoal.agent_id").map(String::as_str),
            Some("agent-1")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        let h = b.host_config.expect("host config");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        let pb = h.port_bindings.expect("bindings");
        let binding = pb.get("80/tcp").cloned().flatten().expect("80/tcp");
        assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding[0].host_port.as_deref(), Some("8080"));
        assert_eq!(b.exposed_ports, Some(vec!["80/tcp".to_string()]));

        // A group member joins the owner's network and publishes nothing.
        let b = create_body(&s, &d, &cfg, "container:abc".into(), false);
        let h = b.host_config.expect("host config");
        assert_eq!(h.network_mode.as_deref(), Some("container:abc"));
        assert!(h.port_bindings.is_none());
    }

    #[test]
    fn argv_command() {
        let (mut s, d) = spec();
        s.command = Some(CommandSpec::argv("sleep", ["10"]));
        let b = create_body(
            &s,
            &d,
            &DockerConfig::new("a", "/tmp"),
            "bridge".into(),
            true,
        );
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, Some(vec!["sleep".to_string(), "10".to_string()]));
        s.command = None;
        let b = create_body(
            &s,
            &d,
            &DockerConfig::new("a", "/tmp"),
            "bridge".into(),
            true,
        );
        assert_eq!(b.cmd, None);
    }

    #[test]
    fn images() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split_image("local/busybox:1.36"),
            ("local/busybox".into(), "1.36".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x"),
            ("127.0.0.1:5000/x".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x:v1"),
            ("127.0.0.1:5000/x".into(), "v1".into())
        );
        assert_eq!(
            split_image("x@sha256:abc"),
            ("x@sha256:abc".into(), String::new())
        );
    }
}
