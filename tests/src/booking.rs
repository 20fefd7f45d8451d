//! Resource accounting on a native state snapshot: live tasks, holds, no double-booking.

/// Per agent, the sum of the resources of its non-terminal tasks.
pub fn live_task_resources(
    state: &shoal_client::State,
) -> Result<std::collections::BTreeMap<String, shoal_core::ResourceSet>, String> {
    let mut out: std::collections::BTreeMap<String, shoal_core::ResourceSet> =
        std::collections::BTreeMap::new();
    for t in state.tasks.iter().filter(|t| !t.state.is_terminal()) {
        out.entry(t.agent_id.to_string())
            .or_default()
            .add(&t.resources)
            .map_err(|e| format!("task {}: {e}", t.id))?;
    }
    Ok(out)
}

/// Per agent, what is allocated but not to a live task: what offers (holds) hold. The native
/// state shows no holds, but an agent's `allocated` counts them. Empty sets are left out.
pub fn held_resources(
    state: &shoal_client::State,
) -> Result<std::collections::BTreeMap<String, shoal_core::ResourceSet>, String> {
    let tasks = live_task_resources(state)?;
    let mut out = std::collections::BTreeMap::new();
    for a in &state.agents {
        let mut held = a.allocated.clone();
        let used = tasks.get(a.id.as_str()).cloned().unwrap_or_default();
        held.subtract(&used).map_err(|_| {
            format!(
                "agent {}: live tasks {used} exceed allocated {}",
                a.id, a.allocated
            )
        })?;
        if !held.is_empty() {
            out.insert(a.id.to_string(), held);
        }
    }
    Ok(out)
}

/// No double-booking in a native state snapshot: per agent, `allocated` (tasks and holds)
/// fits in `total`, the live tasks fit in `allocated`, and the core's own invariants hold on
/// the tasks (`Cell::check_invariants`: the live tasks of each agent fit in its total).
pub fn check_no_double_booking(state: &shoal_client::State) -> Result<(), String> {
    for a in &state.agents {
        if !a.total.contains(&a.allocated) {
            return Err(format!(
                "version {}: agent {} allocated {} > total {}",
                state.version, a.id, a.allocated, a.total
            ));
        }
    }
    held_resources(state).map_err(|e| format!("version {}: {e}", state.version))?;
    state
        .clone()
        .into_cell()
        .check_invariants()
        .map_err(|e| format!("version {}: {e}", state.version))
}

/// No double-booking in a cell folded from the log (it knows the holds, as the master does):
/// per agent, `allocated` (tasks and holds) fits in `total`, and the core's own invariants
/// hold (`Cell::check_invariants`: `allocated` is exactly the holds and live tasks).
pub fn check_cell_booking(cell: &shoal_sched::Cell) -> Result<(), String> {
    for a in cell.agents() {
        if !a.total.contains(&a.allocated) {
            return Err(format!(
                "version {}: agent {} allocated {} > total {}",
                cell.version(),
                a.id,
                a.allocated,
                a.total
            ));
        }
    }
    cell.check_invariants()
        .map_err(|e| format!("version {}: {e}", cell.version()))
}

/// What a [`BookingWatch`] saw.
#[derive(Default)]
pub struct BookingReport {
    /// Versions folded and checked.
    pub versions: u64,
    /// Every double-booking (or gap in the log) seen, in order.
    pub violations: Vec<String>,
    /// The ids of every task seen in TASK_RUNNING at some version.
    pub running: std::collections::BTreeSet<String>,
    /// The owner of every task seen, by task id.
    pub owners: std::collections::BTreeMap<String, String>,
}

/// Follows the native watch stream from a snapshot and checks [`check_cell_booking`] at every
/// committed version, holds included (the state endpoint shows no holds, the log does).
///
/// Start it before any framework subscribes: the snapshot it starts from must hold no offers,
/// since the native state does not list them.
pub struct BookingWatch {
    task: tokio::task::JoinHandle<BookingReport>,
    stop: tokio::sync::watch::Sender<shoal_core::Version>,
}

impl BookingWatch {
    /// Takes a snapshot and follows the log from its next version.
    pub async fn start(client: shoal_client::Client) -> Result<BookingWatch, String> {
        use futures::StreamExt as _;
        let state = client.state().await.map_err(|e| format!("state: {e}"))?;
        let mut cell = state.into_cell();
        let stream = client
            .watch(cell.version() + 1)
            .await
            .map_err(|e| format!("watch: {e}"))?;
        let (stop, mut stop_rx) = tokio::sync::watch::channel(shoal_core::Version::MAX);
        let task = tokio::spawn(async move {
            let mut report = BookingReport::default();
            futures::pin_mut!(stream);
            loop {
                if cell.version() >= *stop_rx.borrow() {
                    return report;
                }
                let entry = tokio::select! {
                    e = stream.next() => e,
                    _ = stop_rx.changed() => continue,
                };
                let entry = match entry {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        report.violations.push(format!("the watch failed: {e}"));
                        return report;
                    }
                    None => {
                        report.violations.push("the watch ended".into());
                        return report;
                    }
                };
                if entry.version != cell.version() + 1 {
                    report.violations.push(format!(
                        "the log skipped from version {} to {}",
                        cell.version(),
                        entry.version
                    ));
                    return report;
                }
                cell.apply(&entry);
                report.versions += 1;
                if let Err(e) = check_cell_booking(&cell) {
                    report.violations.push(e);
                }
                for t in cell.tasks() {
                    if t.state == shoal_core::TaskState::Running {
                        report.running.insert(t.id.to_string());
                    }
                    report
                        .owners
                        .entry(t.id.to_string())
                        .or_insert_with(|| t.owner.to_string());
                }
            }
        });
        Ok(BookingWatch { task, stop })
    }

    /// Checks every version up to `version` (the master's current one, say), then stops;
    /// what it saw. A watch that has not reached `version` within `deadline` is a violation.
    pub async fn finish(
        self,
        version: shoal_core::Version,
        deadline: std::time::Duration,
    ) -> BookingReport {
        let _ = self.stop.send(version);
        let abort = self.task.abort_handle();
        match tokio::time::timeout(deadline, self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => BookingReport {
                violations: vec![format!("the checker failed: {e}")],
                ..BookingReport::default()
            },
            Err(_) => {
                abort.abort();
                BookingReport {
                    violations: vec![format!(
                        "the checker did not reach version {version} within {deadline:?}"
                    )],
                    ..BookingReport::default()
                }
            }
        }
    }
}
