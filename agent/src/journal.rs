//! The agent's journal: what it launched and every status update until the master
//! acknowledged it, in one append-only file under the work dir.
//!
//! Updates are written in groups (many updates, one fdatasync), so the journal does not cap
//! launches at the fsync rate. Terminal updates are synced *before* they are sent, so a
//! crash loses none. Non-terminal ones (STARTING, RUNNING) may go out while their group
//! syncs: one lost in a crash is derived again at recovery, from the executor's finding
//! against the last state replayed here ([`Journal::states`]). Launch records are written
//! before the tasks start and synced once per launch message, while the executors start them
//! (so always before any status of those tasks is sent).
//! On start the journal is replayed: tasks launched without a terminal update are the ones to
//! re-attach to; updates without an acknowledgement are resent, in order.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_core::{StatusInfo, TaskId, TaskState};

/// Which executor runs a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    Process,
    Docker,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub id: u64,
    pub task_id: TaskId,
    pub state: TaskState,
    pub status: StatusInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Record {
    Launch {
        task_id: TaskId,
        kind: ExecutorKind,
    },
    Update(Update),
    /// The last non-terminal state of a live task (written by compaction only).
    Seen {
        task_id: TaskId,
        state: TaskState,
    },
    Ack {
        id: u64,
    },
}

use crate::limits::JOURNAL_COMPACT_AFTER_RECORDS as COMPACT_AFTER_RECORDS;

pub struct Journal {
    path: PathBuf,
    file: File,
    records: usize,
    next_id: u64,
    /// Tasks launched and not ended (no terminal update recorded).
    pub live: HashMap<TaskId, ExecutorKind>,
    /// The last state recorded for a live task (none: launched, no update yet).
    pub states: HashMap<TaskId, TaskState>,
    /// Updates not yet acknowledged, by id (so in order).
    pub pending: BTreeMap<u64, Update>,
}

impl Journal {
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let mut live = HashMap::new();
        let mut states = HashMap::new();
        let mut pending = BTreeMap::new();
        let mut next_id = 1;
        let mut records = 0;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                // A torn last line (crash mid-write, never synced, never sent) is skipped.
                let Ok(rec) = serde_json::from_str::<Record>(&line) else {
                    continue;
                };
                records += 1;
                match rec {
                    Record::Launch { task_id, kind } => {
                        states.remove(&task_id);
                        live.insert(task_id, kind);
                    }
                    Record::Update(u) => {
                        next_id = next_id.max(u.id + 1);
                        if u.state.is_terminal() {
                            live.remove(&u.task_id);
                            states.remove(&u.task_id);
                        } else {
                            states.insert(u.task_id.clone(), u.state);
                        }
                        pending.insert(u.id, u);
                    }
                    Record::Seen { task_id, state } => {
                        states.insert(task_id, state);
                    }
                    Record::Ack { id } => {
                        pending.remove(&id);
                    }
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut j = Journal {
            path,
            file,
            records,
            next_id,
            live,
            states,
            pending,
        };
        j.compact_if_needed()?;
        Ok(j)
    }

    fn write(&mut self, recs: &[Record]) -> std::io::Result<()> {
        self.file.write_all(&encode(recs)?)?;
        self.records += recs.len();
        Ok(())
    }

    /// Records a launch, durably.
    pub fn launched(&mut self, task_id: &TaskId, kind: ExecutorKind) -> std::io::Result<()> {
        self.write_launches([(task_id.clone(), kind)])?;
        self.sync()
    }

    /// Writes a group of launch records, not synced yet: [`Journal::sync`] (or the next
    /// [`Journal::record`]) makes them durable.
    pub fn write_launches(
        &mut self,
        tasks: impl IntoIterator<Item = (TaskId, ExecutorKind)>,
    ) -> std::io::Result<()> {
        let recs: Vec<Record> = tasks
            .into_iter()
            .map(|(task_id, kind)| Record::Launch { task_id, kind })
            .collect();
        if recs.is_empty() {
            return Ok(());
        }
        self.write(&recs)?;
        for r in recs {
            if let Record::Launch { task_id, kind } = r {
                self.states.remove(&task_id);
                self.live.insert(task_id, kind);
            }
        }
        Ok(())
    }

    /// Records a group of updates with one sync; returns them with their ids.
    pub fn record(
        &mut self,
        updates: Vec<(TaskId, TaskState, StatusInfo)>,
    ) -> std::io::Result<Vec<Update>> {
        let out = self.write_updates(updates)?;
        self.sync()?;
        Ok(out)
    }

    /// Writes a group of updates, not synced yet (see the module docs for what may be sent
    /// before [`Journal::sync`]); returns them with their ids.
    pub fn write_updates(
        &mut self,
        updates: Vec<(TaskId, TaskState, StatusInfo)>,
    ) -> std::io::Result<Vec<Update>> {
        let out: Vec<Update> = updates
            .into_iter()
            .map(|(task_id, state, status)| {
                let u = Update {
                    id: self.next_id,
                    task_id,
                    state,
                    status,
                };
                self.next_id += 1;
                u
            })
            .collect();
        let recs: Vec<Record> = out.iter().cloned().map(Record::Update).collect();
        self.write(&recs)?;
        for u in &out {
            if u.state.is_terminal() {
                self.live.remove(&u.task_id);
                self.states.remove(&u.task_id);
            } else if self.live.contains_key(&u.task_id) {
                self.states.insert(u.task_id.clone(), u.state);
            }
            self.pending.insert(u.id, u.clone());
        }
        Ok(out)
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The master has the update: forget it. Not synced: losing an ack only means a resend.
    pub fn acked(&mut self, id: u64) -> std::io::Result<()> {
        if self.pending.remove(&id).is_some() {
            self.write(&[Record::Ack { id }])?;
            self.compact_if_needed()?;
        }
        Ok(())
    }

    fn compact_if_needed(&mut self) -> std::io::Result<()> {
        let needed = self.live.len() + self.states.len() + self.pending.len();
        if self.records < needed + COMPACT_AFTER_RECORDS {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            let launches = self.live.iter().map(|(task_id, kind)| Record::Launch {
                task_id: task_id.clone(),
                kind: *kind,
            });
            let states = self.states.iter().map(|(task_id, state)| Record::Seen {
                task_id: task_id.clone(),
                state: *state,
            });
            let updates = self.pending.values().cloned().map(Record::Update);
            let recs: Vec<Record> = launches.chain(states).chain(updates).collect();
            let buf = encode(&recs)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = needed;
        Ok(())
    }
}

/// Records as JSON lines.
fn encode(recs: &[Record]) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    for r in recs {
        serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_live_tasks_and_unacked_updates() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.launched(&TaskId::new("a"), ExecutorKind::Process)
                .unwrap();
            j.launched(&TaskId::new("b"), ExecutorKind::Docker).unwrap();
            let ups = j
                .record(vec![
                    (TaskId::new("a"), TaskState::Running, StatusInfo::default()),
                    (TaskId::new("b"), TaskState::Finished, StatusInfo::default()),
                ])
                .unwrap();
            j.acked(ups[0].id).unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(
            j.live.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(j.pending.len(), 1);
        assert_eq!(j.pending.values().next().unwrap().task_id.as_str(), "b");
        assert_eq!(j.next_id, 3);
        assert_eq!(j.states.get(&TaskId::new("a")), Some(&TaskState::Running));
        assert_eq!(j.states.len(), 1);
    }

    #[test]
    fn compaction_keeps_live_states() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(dir.path()).unwrap();
            j.launched(&TaskId::new("a"), ExecutorKind::Process)
                .unwrap();
            j.launched(&TaskId::new("b"), ExecutorKind::Process)
                .unwrap();
            let ups = j
                .record(vec![(
                    TaskId::new("a"),
                    TaskState::Running,
                    StatusInfo::default(),
                )])
                .unwrap();
            j.acked(ups[0].id).unwrap();
            j.records = COMPACT_AFTER_RECORDS + 10;
            j.compact_if_needed().unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.live.len(), 2);
        assert!(j.pending.is_empty());
        assert_eq!(j.states.get(&TaskId::new("a")), Some(&TaskState::Running));
        assert_eq!(j.states.get(&TaskId::new("b")), None);
    }
}
