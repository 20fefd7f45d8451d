//! What SUBSCRIBE and UPDATE_FRAMEWORK read from a FrameworkInfo, and its bounds.

use std::collections::HashSet;
use std::time::Duration;

use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::framework_info::capability;

use super::Framework;
use crate::error::CompatError;
use crate::limits;
use crate::CompatConfig;

/// What SUBSCRIBE and UPDATE_FRAMEWORK set from a `FrameworkInfo` (and its suppressed roles).
pub(super) struct Settings {
    pub(super) roles: Vec<String>,
    partition_aware: bool,
    killing_state: bool,
    pub(super) failover_timeout: Duration,
    suppressed: HashSet<String>,
}

impl Settings {
    pub(super) fn of(
        config: &CompatConfig,
        info: &mesos::FrameworkInfo,
        suppressed_roles: &[String],
    ) -> Settings {
        let mut roles: Vec<String> = info.roles.clone();
        roles.dedup();
        if roles.is_empty() {
            roles.push(info.role.clone().unwrap_or_else(|| "*".into()));
        }
        let has_cap = |cap: capability::Type| {
            info.capabilities
                .iter()
                .any(|c| c.r#type == Some(cap as i32))
        };
        let suppressed = suppressed_roles
            .iter()
            .filter(|r| roles.contains(r))
            .cloned()
            .collect();
        let failover = info.failover_timeout.unwrap_or(0.0);
        // NaN reads as 0 s, as `f64::max` does.
        let failover = failover
            .max(0.0)
            .min(config.failover_timeout_max.as_secs_f64());
        Settings {
            partition_aware: has_cap(capability::Type::PartitionAware),
            killing_state: has_cap(capability::Type::TaskKillingState),
            failover_timeout: Duration::from_secs_f64(failover),
            suppressed,
            roles,
        }
    }

    /// Writes the `failover_timeout` in force into `info`, so what the state endpoints
    /// report is what holds.
    pub(super) fn cap_failover_timeout(&self, info: &mut mesos::FrameworkInfo) {
        if info
            .failover_timeout
            .is_some_and(|t| t != self.failover_timeout.as_secs_f64())
        {
            info.failover_timeout = Some(self.failover_timeout.as_secs_f64());
        }
    }

    pub(super) fn apply(self, f: &mut Framework) {
        f.roles = self.roles;
        f.partition_aware = self.partition_aware;
        f.killing_state = self.killing_state;
        f.failover_timeout = self.failover_timeout;
        f.suppressed = self.suppressed;
    }
}

/// The bounds of a FrameworkInfo (SUBSCRIBE, UPDATE_FRAMEWORK): its size, its name, its
/// roles. A framework outside them is refused with 400 and this message, as Mesos refuses a
/// call that fails validation.
pub fn check_framework_info(info: &mesos::FrameworkInfo) -> Result<(), CompatError> {
    let name = &info.name;
    if name.len() > limits::FRAMEWORK_NAME_BYTES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info.name' is {} bytes; at most {} are accepted",
            name.len(),
            limits::FRAMEWORK_NAME_BYTES_MAX
        )));
    }
    if info.roles.len() > limits::FRAMEWORK_ROLES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info.roles' has {} roles; at most {} are accepted",
            info.roles.len(),
            limits::FRAMEWORK_ROLES_MAX
        )));
    }
    for r in info.roles.iter().chain(info.role.iter()) {
        // The cell's own rule for role names (Mesos's, with a length bound).
        shoal_core::cell::validate_role_name(r).map_err(|e| {
            CompatError::Invalid(format!("Failed to validate scheduler::Call: a role in 'framework_info.roles' (or 'role'): {e}"))
        })?;
    }
    // The bound is on the JSON encoding, whichever encoding the call came in.
    let bytes = serde_json::to_vec(&shoal_proto::json::to_json_value(info))
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > limits::FRAMEWORK_INFO_BYTES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info' is {bytes} bytes; at most {} are accepted",
            limits::FRAMEWORK_INFO_BYTES_MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: serde_json::Value) -> mesos::FrameworkInfo {
        shoal_proto::json::from_json_value(json).expect("a FrameworkInfo")
    }

    #[test]
    fn unbounded_framework_info_is_refused_and_failover_timeout_capped() {
        use serde_json::json;
        let ok = info(
            json!({"user": "u", "name": "marathon", "roles": ["a", "b"], "failover_timeout": 604800.0}),
        );
        assert!(check_framework_info(&ok).is_ok());
        let name =
            info(json!({"user": "u", "name": "n".repeat(limits::FRAMEWORK_NAME_BYTES_MAX + 1)}));
        assert!(check_framework_info(&name)
            .unwrap_err()
            .to_string()
            .contains("'framework_info.name'"));
        let huge = info(
            json!({"user": "u", "name": "n", "labels": {"labels": [{"key": "k", "value": "v".repeat(limits::FRAMEWORK_INFO_BYTES_MAX)}]}}),
        );
        assert!(check_framework_info(&huge)
            .unwrap_err()
            .to_string()
            .contains("'framework_info' is"));
        let role = info(
            json!({"user": "u", "name": "n", "role": "r".repeat(shoal_core::limits::ROLE_NAME_BYTES_MAX + 1)}),
        );
        assert!(check_framework_info(&role)
            .unwrap_err()
            .to_string()
            .contains("a role in 'framework_info.roles'"));
        let roles: Vec<String> = (0..=limits::FRAMEWORK_ROLES_MAX)
            .map(|i| format!("r{i}"))
            .collect();
        assert!(
            check_framework_info(&info(json!({"user": "u", "name": "n", "roles": roles})))
                .unwrap_err()
                .to_string()
                .contains("roles")
        );

        // failover_timeout: capped (and written back), never refused.
        let config = CompatConfig::default();
        for (given, held) in [
            (1e308, limits::FAILOVER_TIMEOUT_SECS_MAX as f64),
            (-5.0, 0.0),
            (604800.0, 604800.0),
        ] {
            let mut i = info(json!({"user": "u", "name": "n", "failover_timeout": given}));
            let s = Settings::of(&config, &i, &[]);
            assert_eq!(s.failover_timeout.as_secs_f64(), held);
            s.cap_failover_timeout(&mut i);
            assert_eq!(i.failover_timeout, Some(held));
        }
        assert!(
            config.failover_timeout_max >= Duration::from_secs(28 * 86_400),
            "at least four weeks"
        );
    }
}
