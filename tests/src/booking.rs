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
