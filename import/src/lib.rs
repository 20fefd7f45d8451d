//! Imports: a Marathon app definition or an ECS task definition read as a Shoal job file.
//!
//! The conversion is strict where it matters: every field that would make the task run
//! differently from what the definition asks (volumes, fixed host ports, health checks,
//! secrets, a user, …) is an error naming the field, and all of them are reported at once.
//! Fields that only govern how Marathon or ECS keep a long-running app alive (upgrade and
//! unreachable strategies, backoff factors), labels, log drivers and the status fields an
//! export carries are accepted and listed in [`Import::notes`], so the caller can say what was
//! left out. Empty values (`[]`, `{}`, `""`, `false`, `null`) never count: exports write them
//! for every field.
//!
//! See `docs/jobs.md` ("Importing Marathon apps and ECS task definitions") for the mapping.

use serde_json::Value;

use shoal_sched::batch::JobSpec;
use shoal_sched::service::ServiceSpec;
use shoal_sched::template::{FieldError, JobErrors};

mod ecs;
mod marathon;
mod read;

use ecs::ecs_task_definition;
use marathon::{marathon_read, MarathonApp};
use read::{Context, Target};

/// Which definition a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// A Marathon app definition (`POST /v2/apps`, or `GET /v2/apps/{id}`'s `app`).
    Marathon,
    /// An ECS task definition (`register-task-definition` input, or
    /// `describe-task-definition`'s output).
    Ecs,
}

/// A converted definition: the job or service file, and what was accepted without effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Import<S = JobSpec> {
    pub spec: S,
    pub notes: Vec<String>,
}

/// Reads a Marathon app definition or an ECS task definition (JSON) as a job file.
pub fn import_job(text: &str, format: ImportFormat) -> Result<Import, JobErrors> {
    convert(text, |cx, value| match format {
        ImportFormat::Marathon => {
            let app = value.get("app").filter(|_| value.get("id").is_none());
            marathon_read(cx, app.unwrap_or(value), Target::Job).map(MarathonApp::into_job)
        }
        ImportFormat::Ecs => {
            let def = value
                .get("taskDefinition")
                .filter(|_| value.get("family").is_none());
            ecs_task_definition(cx, def.unwrap_or(value))
        }
    })
}

/// Reads a Marathon app definition (JSON) as a service file: `instances` becomes `count`, and
/// the app's health check, upgrade strategy, backoff and `UNIQUE` / `MAX_PER` / `GROUP_BY`
/// constraints carry over.
pub fn import_marathon_service(text: &str) -> Result<Import<ServiceSpec>, JobErrors> {
    convert(text, |cx, value| {
        let app = value.get("app").filter(|_| value.get("id").is_none());
        marathon_read(cx, app.unwrap_or(value), Target::Service).map(MarathonApp::into_service)
    })
}

/// Parses the JSON and runs one conversion; every error it found, or the result and its notes.
fn convert<S>(
    text: &str,
    read: impl FnOnce(&mut Context, &Value) -> Option<S>,
) -> Result<Import<S>, JobErrors> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        JobErrors(vec![FieldError {
            field: "(file)".into(),
            message: format!("not JSON: {e}"),
        }])
    })?;
    let mut cx = Context::default();
    match read(&mut cx, &value) {
        Some(spec) if cx.errors.is_empty() => Ok(Import {
            spec,
            notes: cx.notes,
        }),
        _ => Err(JobErrors(cx.errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sched::batch::CompiledJob;
    use shoal_sched::constraints::ConstraintOp;
    use shoal_sched::service::HealthCheckType;

    fn marathon(text: &str) -> Result<Import, JobErrors> {
        import_job(text, ImportFormat::Marathon)
    }

    fn ecs(text: &str) -> Result<Import, JobErrors> {
        import_job(text, ImportFormat::Ecs)
    }

    fn fields(e: JobErrors) -> Vec<String> {
        e.0.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn marathon_app_becomes_one_task_per_instance() {
        let i = marathon(
            r#"{"id": "/shop/web", "cmd": "python3 -m http.server $PORT0", "cpus": 0.25,
                "mem": 64, "instances": 2, "env": {"MODE": "prod", "N": 3},
                "portDefinitions": [{"port": 10000, "name": "http"}],
                "constraints": [["zone", "CLUSTER", "a"], ["rack", "UNLIKE", "r1"]],
                "backoffSeconds": 2, "backoffFactor": 1.15, "labels": {"team": "x"},
                "upgradeStrategy": {"minimumHealthCapacity": 1}, "healthChecks": [],
                "version": "2026-01-01T00:00:00Z", "user": null, "requirePorts": false}"#,
        )
        .unwrap();
        assert_eq!(i.spec.name, "shop-web");
        assert_eq!(i.spec.tasks.len(), 2);
        let t = &i.spec.tasks[1];
        assert_eq!(t.name, "shop-web-1");
        assert_eq!(t.resources, "cpus:0.25;mem:64");
        assert_eq!(t.ports, vec!["http"]);
        assert_eq!(t.env["N"], "3");
        assert_eq!(t.backoff.as_deref(), Some("2000ms"));
        assert_eq!(t.constraints.len(), 2);
        assert_eq!(t.constraints[1].operator, ConstraintOp::NotEquals);
        assert!(i.notes.iter().any(|n| n.starts_with("labels ignored")));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("backoffFactor ignored")));
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn marathon_defaults_and_docker_bridge_ports() {
        let i = marathon(
            r#"{"app": {"id": "web", "container": {"type": "DOCKER",
                "docker": {"image": "local/busybox:latest", "network": "BRIDGE", "forcePullImage": true},
                "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "http"},
                                 {"containerPort": 81}]}}}"#,
        )
        .unwrap();
        let t = &i.spec.tasks[0];
        assert_eq!(t.name, "web");
        assert_eq!(t.resources, "cpus:1;mem:128");
        assert_eq!(t.image.as_deref(), Some("local/busybox:latest"));
        assert_eq!(t.command, None);
        assert_eq!(t.ports, vec!["http:80", "port1:81"]);
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn marathon_args_are_quoted_for_the_shell() {
        let i = marathon(r#"{"id": "a", "args": ["echo", "two words", "$HOME"]}"#).unwrap();
        assert_eq!(
            i.spec.tasks[0].command.as_deref(),
            Some("echo 'two words' '$HOME'")
        );
    }

    #[test]
    fn marathon_unsupported_fields_are_all_named() {
        let e = marathon(
            r#"{"id": "a", "cmd": "x", "healthChecks": [{"protocol": "HTTP"}],
                "container": {"type": "DOCKER", "volumes": [{"containerPath": "/d"}],
                  "docker": {"image": "i", "network": "BRIDGE", "privileged": true,
                  "portMappings": [{"containerPort": 80, "hostPort": 8080}]}},
                "env": {"DB": {"secret": "pw"}}, "constraints": [["hostname", "UNIQUE"]],
                "somethingNew": 1, "fetch": [{"uri": "http://x"}]}"#,
        )
        .unwrap_err();
        let f = fields(e.clone());
        for want in [
            "healthChecks",
            "container.volumes",
            "container.docker.privileged",
            "container.portMappings[0].hostPort",
            "env.DB",
            "constraints[0]",
            "somethingNew",
            "fetch",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
        assert!(e
            .to_string()
            .contains("health checks belong to long-running services"));
    }

    #[test]
    fn marathon_bad_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "[]",
            "{}",
            r#"{"id": 3}"#,
            r#"{"id": "a"}"#,
            r#"{"id": "a", "cmd": "x", "cpus": -1}"#,
            r#"{"id": "a", "cmd": "x", "instances": 0}"#,
            r#"{"id": "a", "cmd": "x", "container": 7}"#,
            r#"{"id": "a", "args": [1]}"#,
        ] {
            assert!(marathon(text).is_err(), "{text}");
        }
    }

    #[test]
    fn marathon_app_becomes_a_service_with_its_health_check_and_upgrade_strategy() {
        let i = import_marathon_service(
            r#"{"id": "/web", "cmd": "serve $PORT0", "cpus": 0.5, "mem": 64, "instances": 4,
                "portDefinitions": [{"port": 0, "name": "http"}, {"port": 0, "name": "admin"}],
                "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 1,
                    "gracePeriodSeconds": 5, "intervalSeconds": 2, "timeoutSeconds": 1,
                    "maxConsecutiveFailures": 2, "delaySeconds": 15}],
                "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.25},
                "constraints": [["hostname", "UNIQUE"], ["rack", "MAX_PER", "2"],
                                ["zone", "GROUP_BY", "3"]],
                "backoffSeconds": 1, "maxLaunchDelaySeconds": 60, "killSelection": "YOUNGEST_FIRST"}"#,
        )
        .unwrap();
        let spec = &i.spec;
        assert_eq!(spec.count, 4);
        assert_eq!(spec.task.ports, vec!["http", "admin"]);
        let hc = spec.health_check.as_ref().unwrap();
        assert_eq!(hc.kind, HealthCheckType::Http);
        assert_eq!(hc.port.as_deref(), Some("admin"));
        assert_eq!(hc.path.as_deref(), Some("/health"));
        assert_eq!(hc.grace_period.as_deref(), Some("5000ms"));
        assert_eq!(hc.max_consecutive_failures, Some(2));
        let u = spec.update.as_ref().unwrap();
        assert_eq!((u.max_surge, u.max_unavailable), (Some(1), Some(2)));
        assert_eq!(spec.spread_by.as_deref(), Some("zone"));
        assert_eq!(spec.constraints[0].operator, ConstraintOp::Unique);
        assert_eq!(spec.constraints[1].operator, ConstraintOp::MaxPer);
        let r = spec.restart.as_ref().unwrap();
        assert_eq!(r.max_backoff.as_deref(), Some("60000ms"));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("killSelection ignored")));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("healthChecks[0].delaySeconds ignored")));
        shoal_sched::service::CompiledService::compile(spec).unwrap();
    }

    #[test]
    fn marathon_service_refuses_what_a_service_cannot_do() {
        let e = import_marathon_service(
            r#"{"id": "a", "cmd": "x", "healthChecks": [{"protocol": "HTTPS"}, {"protocol": "TCP"}],
                "constraints": [["rack", "LIKE", "r[0-9]"]], "taskKillGracePeriodSeconds": 5}"#,
        )
        .unwrap_err();
        let f = fields(e);
        for want in [
            "healthChecks[0].protocol",
            "healthChecks[1]",
            "constraints[0]",
            "taskKillGracePeriodSeconds",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
        // A job refuses the service-only operators, and says where they work.
        let e = marathon(r#"{"id": "a", "cmd": "x", "constraints": [["hostname", "UNIQUE"]]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("run the app as a service"), "{e}");
    }

    #[test]
    fn ecs_containers_become_tasks_with_dependencies() {
        let i = ecs(
            r#"{"taskDefinition": {"family": "etl", "networkMode": "bridge", "cpu": "1024",
                "memory": "512", "requiresCompatibilities": ["EC2"], "revision": 3,
                "placementConstraints": [{"type": "memberOf",
                    "expression": "attribute:ecs.availability-zone == us-east-1a"}],
                "containerDefinitions": [
                  {"name": "extract", "image": "local/busybox:latest", "cpu": 256,
                   "command": ["sh", "-c", "echo hi > /dev/null"], "essential": true,
                   "environment": [{"name": "STAGE", "value": "x"}],
                   "logConfiguration": {"logDriver": "awslogs"}},
                  {"name": "load", "image": "local/busybox:latest", "memory": 128,
                   "entryPoint": ["httpd", "-f"], "command": ["-p", "8080"],
                   "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
                   "dependsOn": [{"containerName": "extract", "condition": "SUCCESS"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(i.spec.name, "etl");
        let [a, b] = &i.spec.tasks[..] else {
            panic!("two tasks")
        };
        assert_eq!(a.resources, "cpus:0.25;mem:384");
        assert_eq!(a.command.as_deref(), Some("sh -c 'echo hi > /dev/null'"));
        assert_eq!(a.env["STAGE"], "x");
        assert_eq!(b.resources, "cpus:0.75;mem:128");
        assert_eq!(b.command.as_deref(), Some("httpd -f -p 8080"));
        assert_eq!(b.ports, vec!["port0:8080"]);
        assert_eq!(b.depends_on, vec!["extract"]);
        assert_eq!(a.constraints[0].attribute, "availability-zone");
        assert!(i.notes.iter().any(|n| n.contains("logConfiguration")));
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn ecs_unsupported_fields_are_all_named() {
        let e = ecs(
            r#"{"family": "f", "networkMode": "awsvpc", "taskRoleArn": "arn:x",
                "containerDefinitions": [{"name": "c", "image": "i", "memory": 64,
                  "healthCheck": {"command": ["true"]}, "mountPoints": [{"sourceVolume": "v"}],
                  "portMappings": [{"containerPort": 80, "hostPort": 80}],
                  "dependsOn": [{"containerName": "x", "condition": "HEALTHY"}]}]}"#,
        )
        .unwrap_err();
        let f = fields(e);
        for want in [
            "networkMode",
            "taskRoleArn",
            "containerDefinitions[0].healthCheck",
            "containerDefinitions[0].mountPoints",
            "containerDefinitions[0].portMappings[0]",
            "containerDefinitions[0].dependsOn[0].condition",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
    }

    #[test]
    fn ecs_bad_input_is_an_error_not_a_panic() {
        for text in [
            "{",
            r#"{"family": "f"}"#,
            r#"{"family": "f", "containerDefinitions": [{}]}"#,
            r#"{"family": "f", "containerDefinitions": [{"name": "c", "image": "i"}]}"#,
            r#"{"family": "f", "containerDefinitions": [3]}"#,
            r#"{"family": "/", "containerDefinitions": [{"name": "c", "image": "i", "memory": 1}]}"#,
        ] {
            assert!(ecs(text).is_err(), "{text}");
        }
    }
}
