//! What the commit stream tells the model: status changes of framework tasks become UPDATE
//! events (with a uuid: retried until acknowledged), holds the cell released become RESCIND
//! events, lost agents FAILURE events, and freed resources an allocation round.

use shoal_core::{AgentState, TaskState};
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::{event, Event};
use shoal_sched::Event as CellEvent;

use super::{bare_event, rescind_event, update_event, Effect, Frameworks, Now};

impl Frameworks {
    /// The events of one committed log entry; `snap` is a snapshot at or after it.
    pub fn observe(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        events: &[CellEvent],
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        self.observed = self.observed.max(snap.version());
        for ev in events {
            match ev {
                CellEvent::TaskStatusChanged {
                    task_id,
                    state,
                    status,
                } => {
                    if state.is_terminal() {
                        // Resources were freed (a framework's task or a native one): offer
                        // them.
                        out.push(Effect::Wake);
                    }
                    let Some(t) = snap.task(task_id) else {
                        continue;
                    };
                    let uuid = self.next_uuid();
                    let Some(f) = self.frameworks.get_mut(&t.owner) else {
                        continue;
                    };
                    if *state == TaskState::Killing && !f.killing_state {
                        continue; // as Mesos: only for frameworks that declared TASK_KILLING_STATE
                    }
                    let s = Self::status(
                        f,
                        now,
                        task_id,
                        &t.agent_id,
                        *state,
                        status,
                        None,
                        Some(uuid.clone()),
                    );
                    // Sent now unless an earlier update of the task awaits its
                    // acknowledgement.
                    let first = f.pending.push(task_id.clone(), uuid, s, now.monotonic);
                    let owner = t.owner.clone();
                    if let Some(s) = first {
                        out.extend(self.send(&owner, update_event(s)));
                    }
                }
                CellEvent::HoldsReleased { offer_ids, .. } => {
                    for o in offer_ids {
                        if self.released_by_us.remove(o) {
                            continue;
                        }
                        if let Some(fw) = self.sent.remove(o) {
                            out.extend(self.send(&fw, rescind_event(o)));
                        }
                    }
                }
                CellEvent::HoldsCleared { .. } => {
                    let mut all: Vec<_> = self.sent.drain().collect();
                    all.sort();
                    for (o, fw) in all {
                        out.extend(self.send(&fw, rescind_event(&o)));
                    }
                }
                CellEvent::AgentRegistered { .. } | CellEvent::AgentResourcesUpdated { .. } => {
                    out.push(Effect::Wake)
                }
                CellEvent::AgentStateChanged { agent_id, state }
                    if *state != AgentState::Active =>
                {
                    // As Mesos's "agent lost": FAILURE (no executor id) to every framework.
                    let mut ids: Vec<&String> = self.frameworks.keys().collect();
                    ids.sort();
                    for fw in ids {
                        let failure = Event {
                            failure: Some(event::Failure {
                                agent_id: Some(mesos::AgentId {
                                    value: agent_id.as_str().to_string(),
                                }),
                                ..Default::default()
                            }),
                            ..bare_event(event::Type::Failure)
                        };
                        out.extend(self.send(fw, failure));
                    }
                }
                _ => {}
            }
        }
        out
    }
}
