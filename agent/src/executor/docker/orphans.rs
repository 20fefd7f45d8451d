//! Containers of this host whose agent is gone: found by their labels and removed.
//!
//! See the executor's module docs for when a container counts as orphaned.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::RemoveContainerOptions;

use crate::executor::heartbeat::{self, Liveness};

use super::{
    status_code, Inner, LABEL_AGENT, LABEL_GRACE, LABEL_MANAGED, LABEL_MNT_NS, LABEL_RECOVERY,
    LABEL_STATE_DIR, LABEL_TASK,
};

impl Inner {
    /// Removes the containers of other agents of this host that have no owner any more
    /// (see the module docs): each is stopped with its grace period, then removed, in the
    /// background.
    pub(super) async fn remove_orphans(&self) {
        let Some(ns) = mount_namespace() else {
            return;
        };
        let list = match self
            .list_labelled(vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_MNT_NS}={ns}"),
            ])
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the host's containers");
                return;
            }
        };
        for c in list {
            let (Some(cid), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(why) = orphan_reason(
                &labels,
                &self.cfg.agent_id,
                &self.cfg.state_dir,
                ns,
                |path, timeout| heartbeat::liveness(path, timeout, &*self.cfg.clock),
            ) else {
                continue;
            };
            let grace = labels
                .get(LABEL_GRACE)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(3, |ms| ms.div_ceil(1000));
            tracing::warn!(container = %cid, task_id = labels.get(LABEL_TASK).map_or("", String::as_str), %why, "removing an orphaned container");
            let docker = self.docker.clone();
            tokio::spawn(async move {
                let stop = bollard::query_parameters::StopContainerOptions {
                    signal: None,
                    t: Some(i32::try_from(grace).unwrap_or(i32::MAX)),
                };
                match docker.stop_container(&cid, Some(stop)).await {
                    Ok(()) => {}
                    Err(e) if matches!(status_code(&e), Some(304) | Some(404)) => {}
                    Err(e) => {
                        tracing::warn!(container = %cid, error = %e, "cannot stop an orphaned container")
                    }
                }
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                match docker.remove_container(&cid, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if status_code(&e) == Some(404) => {}
                    Err(e) => {
                        tracing::warn!(container = %cid, error = %e, "cannot remove an orphaned container")
                    }
                }
            });
        }
    }
}

/// This process's mount namespace (`mnt:[4026531840]`): containers labelled with it name
/// paths this agent sees as their agent did. `None` when it cannot be read.
pub(super) fn mount_namespace() -> Option<&'static str> {
    static NS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/mnt")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    })
    .as_deref()
}

/// Why a container of this host (of the mount namespace `mnt_ns`) has no owner any more,
/// or `None` when it has one or cannot be judged (plain but for `liveness`): ours by agent
/// id (recovery deals with it), older containers without the labels, and containers of a
/// live agent with another work dir are all left alone.
pub(crate) fn orphan_reason(
    labels: &HashMap<String, String>,
    own_agent: &str,
    own_state_dir: &Path,
    mnt_ns: &str,
    liveness: impl Fn(&Path, Duration) -> Liveness,
) -> Option<String> {
    if labels.get(LABEL_AGENT).map(String::as_str) == Some(own_agent) {
        return None;
    }
    if labels.get(LABEL_MNT_NS).map(String::as_str) != Some(mnt_ns) {
        return None;
    }
    let state_dir = Path::new(labels.get(LABEL_STATE_DIR)?);
    if !state_dir.is_absolute() {
        return None;
    }
    if state_dir == own_state_dir {
        return Some(format!(
            "it names this agent's state dir {} under another agent id",
            state_dir.display()
        ));
    }
    let timeout = labels
        .get(LABEL_RECOVERY)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(
            Duration::from_secs(heartbeat::RECOVERY_TIMEOUT_DEFAULT_SECS),
            Duration::from_millis,
        );
    match liveness(&state_dir.join(heartbeat::ALIVE_FILE), timeout) {
        Liveness::Alive => None,
        Liveness::Gone => Some(format!(
            "its agent's work dir ({}) is gone",
            state_dir.display()
        )),
        Liveness::Stale(_) if timeout.is_zero() => None,
        Liveness::Stale(age) => Some(format!(
            "its agent has not come back for {}s (recovery timeout {}s)",
            age.as_secs(),
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_containers_are_those_whose_agent_is_gone_or_stale() {
        let ns = "mnt:[1]";
        let own = Path::new("/w/me/state/docker");
        let labels = |agent: &str, dir: &str, ns: &str| {
            HashMap::from([
                (LABEL_AGENT.to_string(), agent.to_string()),
                (LABEL_STATE_DIR.to_string(), dir.to_string()),
                (LABEL_MNT_NS.to_string(), ns.to_string()),
                (LABEL_RECOVERY.to_string(), "60000".to_string()),
            ])
        };
        let alive = |_: &Path, _: Duration| Liveness::Alive;
        let gone = |_: &Path, _: Duration| Liveness::Gone;
        let stale = |_: &Path, t: Duration| {
            assert_eq!(t, Duration::from_secs(60));
            Liveness::Stale(Duration::from_secs(61))
        };
        let other = labels("b", "/w/other/state/docker", ns);
        // Ours by agent id: recovery's business.
        assert_eq!(
            orphan_reason(&labels("me", "/x", ns), "me", own, ns, gone),
            None
        );
        // Another live agent's containers are never touched.
        assert_eq!(orphan_reason(&other, "me", own, ns, alive), None);
        assert!(orphan_reason(&other, "me", own, ns, gone)
            .is_some_and(|w| w.contains("/w/other/state/docker")));
        assert!(orphan_reason(&other, "me", own, ns, stale).is_some());
        // Our own work dir under another id: nobody will recover it.
        assert!(
            orphan_reason(&labels("b", "/w/me/state/docker", ns), "me", own, ns, alive).is_some()
        );
        // Paths of another mount namespace, or no labels (older containers): left alone.
        assert_eq!(
            orphan_reason(
                &labels("b", "/w/other/state/docker", "mnt:[2]"),
                "me",
                own,
                ns,
                gone
            ),
            None
        );
        let old = HashMap::from([(LABEL_AGENT.to_string(), "b".to_string())]);
        assert_eq!(orphan_reason(&old, "me", own, ns, gone), None);
    }
}
