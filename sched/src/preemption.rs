//! Preemption for the batch scheduler: which running tasks a queued task may evict, by the
//! same priority and guarantee rules the cell checks on the claim.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use shoal_core::*;

use crate::batch::*;
use crate::template::*;
use crate::Cell;

/// One step's books of the roles and the cell (what it placed and evicted so far), for the
/// quota checks the cell will make and for the choice of victims.
///
/// Victims for a task that fits nowhere are chosen by the rules the cell
/// checks (`Cell::decide`): a victim is an attempt of a batch job (the scheduler evicts only
/// work it can queue again), its role is preemptible, and the victim has a strictly lower
/// priority than the task (**priority rule**), or the task's team stays within its guarantee
/// with the task and the victim is of another team (**guarantee rule**); no other team is
/// taken below its guarantee. Per agent, victims are taken lowest priority first (then the
/// largest first) until the task fits; the agent whose victims have the lowest top priority,
/// then the fewest victims, wins.
pub(crate) struct Preemption<'c> {
    cell: &'c Cell,
    /// Tasks already chosen as victims in this step.
    evicted: HashSet<TaskId>,
    /// Per role: scalars placed (+) and evicted (-) in this step so far.
    moved: HashMap<String, BTreeMap<String, i64>>,
    /// Free scalars of the cell, less what this step placed.
    cluster_free: BTreeMap<String, i64>,
}

impl<'c> Preemption<'c> {
    pub(crate) fn new(cell: &'c Cell) -> Preemption<'c> {
        Preemption {
            cell,
            evicted: HashSet::new(),
            moved: HashMap::new(),
            cluster_free: cell
                .cluster_free()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        }
    }

    /// Whether the cell's quota checks would let `role` take `res` now: its limit, and the
    /// headroom other teams' unmet guarantees hold back.
    pub(crate) fn quota_allows(&self, role: &str, res: &ResourceSet) -> bool {
        if let Some(limit) = self.cell.role(role).and_then(|r| r.quota.limit.as_ref()) {
            for (name, cap) in limit.scalar_totals() {
                let want = res.scalar(&name).0;
                if want > 0 && self.consumed(role, &name) + want > cap.0 {
                    return false;
                }
            }
        }
        for (name, held) in self.cell.headroom_for_others(role) {
            let want = res.scalar(&name).0;
            let free = self.cluster_free.get(name.as_str()).copied().unwrap_or(0);
            if want > 0 && free - want < held {
                return false;
            }
        }
        true
    }

    /// What `role` consumes of `name`, with this step's placements and evictions.
    pub(crate) fn consumed(&self, role: &str, name: &str) -> i64 {
        let base = self
            .cell
            .role(role)
            .map(|r| r.consumed.scalar(name).0)
            .unwrap_or(0);
        base + self
            .moved
            .get(role)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn added(&mut self, role: &str, res: &ResourceSet) {
        let m = self.moved.entry(role.to_string()).or_default();
        for (name, v) in res.scalar_totals() {
            *m.entry(name.to_string()).or_default() += v.0;
            *self.cluster_free.entry(name.to_string()).or_default() -= v.0;
        }
    }

    pub(crate) fn take(&mut self, role: &str, task: &CompiledTask, victims: &[&Task]) {
        self.added(role, &task.resources);
        for t in victims {
            self.evicted.insert(t.id.clone());
            let m = self.moved.entry(t.role.clone()).or_default();
            for (name, v) in t.resources.scalar_totals() {
                *m.entry(name.to_string()).or_default() -= v.0;
                *self.cluster_free.entry(name.to_string()).or_default() += v.0;
            }
        }
    }

    /// Whether `role` stays within its guarantee with `res` more, on every guaranteed
    /// resource, and `res` asks for one of them.
    pub(crate) fn below_guarantee_with(&self, role: &str, res: &ResourceSet) -> bool {
        let Some(r) = self.cell.role(role) else {
            return false;
        };
        let mut asks = false;
        for (name, g) in r.quota.guarantee.scalar_totals() {
            let want = res.scalar(&name).0;
            asks |= want > 0;
            if self.consumed(role, &name) + want > g.0 {
                return false;
            }
        }
        asks
    }

    /// The agent where `task` fits by evicting tasks, and those tasks: the agent whose
    /// victims' highest priority is lowest, then the fewest victims (the first agent among
    /// equals); `None` when none does.
    pub(crate) fn choose(
        &self,
        agents: &[(&'c Agent, ResourceSet)],
        role: &str,
        task: &CompiledTask,
        def: &TaskDef,
    ) -> Option<(usize, Vec<&'c Task>)> {
        let by_guarantee = self.below_guarantee_with(role, &task.resources);
        if task.priority == 0 && !by_guarantee {
            return None;
        }
        let mut best: Option<((i64, usize), usize, Vec<&'c Task>)> = None;
        for (i, (a, free)) in agents.iter().enumerate() {
            if !def.constraints.iter().all(|c| c.matches(a)) {
                continue;
            }
            let candidates = self.candidates(a, role, task, by_guarantee);
            let Some(chosen) = self.victims_on(free, candidates, role, task, def) else {
                continue;
            };
            let top = chosen.iter().map(|t| t.priority).max().unwrap_or(0);
            let key = (top, chosen.len());
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, i, chosen));
            }
        }
        best.map(|(_, i, v)| (i, v))
    }

    /// The tasks on agent `a` that `task` may evict (batch tasks holding resources, not
    /// evicted yet, of a preemptible role, and of lower priority or, by the guarantee rule,
    /// another role's), lowest priority and largest first.
    fn candidates(
        &self,
        a: &Agent,
        role: &str,
        task: &CompiledTask,
        by_guarantee: bool,
    ) -> Vec<&'c Task> {
        let mut candidates: Vec<&'c Task> = self
            .cell
            .live_tasks_on(&a.id)
            .filter(|t| {
                t.holds_resources()
                    && t.owner == BATCH_OWNER
                    && matches!(
                        t.state,
                        TaskState::Staging | TaskState::Starting | TaskState::Running
                    )
                    && !self.evicted.contains(&t.id)
                    && self.cell.role(&t.role).is_none_or(|r| r.preemptible)
                    && (t.priority < task.priority || (by_guarantee && t.role != role))
            })
            .collect();
        candidates.sort_by_key(|t| {
            (
                t.priority,
                Reverse(t.resources.scalar("cpus").0),
                t.id.clone(),
            )
        });
        candidates
    }

    /// The candidates evicted in order until `task` fits beside the agent's `free`
    /// resources, skipping any that would take another team below its guarantee; `None`
    /// when it does not fit even so, or fits without evicting.
    fn victims_on(
        &self,
        free: &ResourceSet,
        candidates: Vec<&'c Task>,
        role: &str,
        task: &CompiledTask,
        def: &TaskDef,
    ) -> Option<Vec<&'c Task>> {
        let mut avail = free.clone();
        let mut chosen: Vec<&'c Task> = Vec::new();
        let mut gone: HashMap<&str, BTreeMap<String, i64>> = HashMap::new();
        for t in candidates {
            if avail.contains(&task.resources) && port_count(&avail) >= def.ports.len() as u64 {
                break;
            }
            if t.role != role {
                // No other team goes below its guarantee.
                let g = gone.entry(t.role.as_str()).or_default();
                let floor_kept = self.cell.role(&t.role).is_none_or(|r| {
                    r.quota.guarantee.scalar_totals().iter().all(|(name, min)| {
                        let want = t.resources.scalar(name).0;
                        let before = g.get(name.as_str()).copied().unwrap_or(0);
                        want == 0 || self.consumed(&t.role, name) - before - want >= min.0
                    })
                });
                if !floor_kept {
                    continue;
                }
                for (name, v) in t.resources.scalar_totals() {
                    *g.entry(name.to_string()).or_default() += v.0;
                }
            }
            if avail.add(&t.resources).is_err() {
                continue;
            }
            chosen.push(t);
        }
        let fits = avail.contains(&task.resources) && port_count(&avail) >= def.ports.len() as u64;
        (fits && !chosen.is_empty()).then_some(chosen)
    }
}
