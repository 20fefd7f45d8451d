//! Which scheduler UPID each v0 framework belongs to, kept while the framework is
//! disconnected, so that a SUBSCRIBE without `force` from another UPID is refused as
//! `Master::subscribe` refuses it (`framework->pid != from && !force` => "Framework failed
//! over"), connected or not.
//!
//! The framework model cannot tell this on its own: it knows sessions, and a scheduler whose
//! link broke comes back on a new session from the same UPID (and must be let in without
//! `force`, as Mesos lets in the framework's own pid), while a new process has a new UPID.
//! A framework the master does not know (it was elected since, or the framework was
//! removed) is not refused here: the model recovers it, or refuses a removed one itself.

use std::collections::HashMap;

use crate::libprocess::Upid;

/// The UPID each known v0 framework last subscribed from.
#[derive(Debug, Default)]
pub(crate) struct SchedulerPids {
    pids: HashMap<String, Upid>,
}

impl SchedulerPids {
    /// Whether a SUBSCRIBE naming `framework_id` from `from` is refused: the master knows
    /// the framework (`known`), it belongs to another UPID, and `force` is not set.
    pub(crate) fn refuses(
        &self,
        framework_id: &str,
        from: &Upid,
        force: bool,
        known: bool,
    ) -> bool {
        !force && known && self.pids.get(framework_id).is_some_and(|p| p != from)
    }

    /// `framework_id` subscribed from `from`. Frameworks the master no longer knows are
    /// forgotten here, so the map holds at most the frameworks the master knows.
    pub(crate) fn subscribed(
        &mut self,
        framework_id: &str,
        from: &Upid,
        known: impl Fn(&str) -> bool,
    ) {
        self.pids.retain(|id, _| id != framework_id && known(id));
        self.pids.insert(framework_id.to_string(), from.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::SchedulerPids;
    use crate::libprocess::Upid;

    fn pid(text: &str) -> Upid {
        text.parse().unwrap()
    }

    #[test]
    fn another_pid_without_force_is_refused_and_with_force_or_the_same_pid_is_not() {
        let mut pids = SchedulerPids::default();
        let first = pid("scheduler-1@127.0.0.1:4001");
        let second = pid("scheduler-2@127.0.0.1:4002");
        pids.subscribed("F1", &first, |_| true);
        // A new process (a new UPID), connected or disconnected framework alike.
        assert!(pids.refuses("F1", &second, false, true));
        // A failover says so with force.
        assert!(!pids.refuses("F1", &second, true, true));
        // The framework's own scheduler comes back (its link broke) without force.
        assert!(!pids.refuses("F1", &first, false, true));
        // A framework the master does not know (elected since, or removed): not refused
        // here.
        assert!(!pids.refuses("F1", &second, false, false));
        assert!(!pids.refuses("F2", &second, false, true));
        // After a failover the new UPID is the framework's.
        pids.subscribed("F1", &second, |_| true);
        assert!(pids.refuses("F1", &first, false, true));
        assert!(!pids.refuses("F1", &second, false, true));
    }

    #[test]
    fn frameworks_the_master_forgot_are_forgotten() {
        let mut pids = SchedulerPids::default();
        pids.subscribed("F1", &pid("scheduler-1@127.0.0.1:4001"), |_| true);
        pids.subscribed("F2", &pid("scheduler-2@127.0.0.1:4002"), |_| true);
        assert_eq!(pids.len(), 2);
        pids.subscribed("F3", &pid("scheduler-3@127.0.0.1:4003"), |id| id != "F1");
        assert_eq!(pids.len(), 2);
        assert!(!pids.refuses("F1", &pid("scheduler-9@127.0.0.1:4009"), false, true));
    }
}
