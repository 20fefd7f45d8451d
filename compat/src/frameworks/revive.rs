//! REVIVE and SUPPRESS: offers per role start again (filters cleared) or stop.

use super::{Effect, Frameworks};

impl Frameworks {
    pub(super) fn revive(&mut self, fw_id: &str, roles: &[String]) -> Vec<Effect> {
        self.set_suppressed(fw_id, roles, false)
    }

    pub(super) fn suppress(&mut self, fw_id: &str, roles: &[String]) -> Vec<Effect> {
        self.set_suppressed(fw_id, roles, true)
    }

    /// Per role, as Mesos: no roles named means all of the framework's roles; a role it does
    /// not have is ignored. REVIVE of any role clears every filter of the framework.
    fn set_suppressed(&mut self, fw_id: &str, named: &[String], suppress: bool) -> Vec<Effect> {
        if let Some(f) = self.frameworks.get_mut(fw_id) {
            let affected: Vec<String> = if named.is_empty() {
                f.roles.clone()
            } else {
                named
                    .iter()
                    .filter(|r| f.roles.contains(r))
                    .cloned()
                    .collect()
            };
            if !suppress && !affected.is_empty() {
                f.filters.clear();
            }
            for r in affected {
                if suppress {
                    f.suppressed.insert(r);
                } else {
                    f.suppressed.remove(&r);
                }
            }
        }
        vec![Effect::Wake]
    }
}
