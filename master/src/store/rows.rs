//! The binary rows of the hot tables: tasks, claim outcomes and log entries, in [postcard]
//! behind a leading format byte. The records' own serde form is made for JSON (skipped
//! fields, internally tagged enums, text resources) and postcard can only read a fixed
//! layout, so each row has a mirror type here; a JSON row (first byte `{`) is read as JSON.

use super::*;

/// The first byte of a binary row.
const FORMAT_V1: u8 = 1;
/// The first byte of a claim's row that holds its tasks as placed ([`ClaimCommitRow`]).
const FORMAT_CLAIM_WITH_TASKS: u8 = 2;

/// Encodes `row` into `buf` (cleared first), returning it for reuse.
pub fn encode<T: Serialize>(row: &T, buf: Vec<u8>) -> Vec<u8> {
    encode_as(FORMAT_V1, row, buf)
}

fn encode_as<T: Serialize>(format: u8, row: &T, mut buf: Vec<u8>) -> Vec<u8> {
    buf.clear();
    buf.push(format);
    postcard::to_extend(row, buf).expect("rows serialize")
}

/// The row's binary body, or `None` for a JSON row.
fn binary<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> StoreResult<Option<T>> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))),
        Some((b'{', _)) => Ok(None),
        _ => Err(StoreError::Corrupt(format!("{what}: unknown row format"))),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

#[derive(Serialize, Deserialize)]
pub struct StatusRow<'a> {
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    healthy: Option<bool>,
    exit_code: Option<i32>,
    timestamp: u64,
}

#[derive(Serialize, Deserialize)]
pub struct TaskRow<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    agent_id: Cow<'a, str>,
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    owner: Cow<'a, str>,
    #[serde(borrow)]
    claim_id: Cow<'a, str>,
    /// The text form (`cpus:0.1;mem:100`).
    resources: String,
    state: TaskState,
    #[serde(borrow)]
    status: StatusRow<'a>,
    #[serde(borrow)]
    spec: Cow<'a, str>,
    version: u64,
    priority: i64,
    #[serde(borrow)]
    preempted_by: Option<Cow<'a, str>>,
}

impl<'a> From<&'a Task> for TaskRow<'a> {
    fn from(t: &'a Task) -> TaskRow<'a> {
        let s = &t.status;
        TaskRow {
            id: t.id.as_str().into(),
            name: t.name.as_str().into(),
            agent_id: t.agent_id.as_str().into(),
            role: t.role.as_str().into(),
            owner: t.owner.as_str().into(),
            claim_id: t.claim_id.as_str().into(),
            resources: t.resources.to_string(),
            state: t.state,
            status: StatusRow {
                message: s.message.as_deref().map(Cow::Borrowed),
                reason: s.reason.as_deref().map(Cow::Borrowed),
                source: s.source.as_deref().map(Cow::Borrowed),
                healthy: s.healthy,
                exit_code: s.exit_code,
                timestamp: s.timestamp,
            },
            spec: Cow::Borrowed(t.spec.as_str()),
            version: t.version,
            priority: t.priority,
            preempted_by: t.preempted_by.as_ref().map(|c| Cow::Borrowed(c.as_str())),
        }
    }
}

impl TaskRow<'_> {
    fn into_task(self) -> StoreResult<Task> {
        let s = self.status;
        Ok(Task {
            resources: ResourceSet::parse(&self.resources).map_err(|e| corrupt("task", e))?,
            id: TaskId::new(self.id),
            name: self.name.into_owned(),
            agent_id: AgentId::new(self.agent_id),
            role: self.role.into_owned(),
            owner: self.owner.into_owned(),
            claim_id: ClaimId::new(self.claim_id),
            state: self.state,
            status: StatusInfo {
                message: s.message.map(Cow::into_owned),
                reason: s.reason.map(Cow::into_owned),
                source: s.source.map(Cow::into_owned),
                healthy: s.healthy,
                exit_code: s.exit_code,
                timestamp: s.timestamp,
            },
            spec: TaskSpec::from_canonical(self.spec),
            version: self.version,
            priority: self.priority,
            preempted_by: self.preempted_by.map(ClaimId::new),
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct PlacementRow<'a> {
    #[serde(borrow)]
    task_id: Cow<'a, str>,
    #[serde(borrow)]
    agent_id: Cow<'a, str>,
    committed: bool,
    /// The reason as JSON (its serde form is an internally tagged enum).
    rejected: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct ClaimRow<'a> {
    #[serde(borrow)]
    claim_id: Cow<'a, str>,
    committed_version: Option<u64>,
    #[serde(borrow)]
    placements: Vec<PlacementRow<'a>>,
}

impl<'a> From<&'a ClaimOutcome> for ClaimRow<'a> {
    fn from(c: &'a ClaimOutcome) -> ClaimRow<'a> {
        ClaimRow {
            claim_id: c.claim_id.as_str().into(),
            committed_version: c.committed_version,
            placements: c
                .placements
                .iter()
                .map(|p| PlacementRow {
                    task_id: p.task_id.as_str().into(),
                    agent_id: p.agent_id.as_str().into(),
                    committed: p.committed,
                    rejected: p
                        .rejected
                        .as_ref()
                        .map(|r| serde_json::to_string(r).expect("reasons serialize")),
                })
                .collect(),
        }
    }
}

impl ClaimRow<'_> {
    fn into_outcome(self) -> StoreResult<ClaimOutcome> {
        let mut placements = Vec::with_capacity(self.placements.len());
        for p in self.placements {
            let rejected = match p.rejected {
                Some(r) => Some(
                    serde_json::from_str::<RejectReason>(&r).map_err(|e| corrupt("claim", e))?,
                ),
                None => None,
            };
            placements.push(PlacementOutcome {
                task_id: TaskId::new(p.task_id),
                agent_id: AgentId::new(p.agent_id),
                committed: p.committed,
                rejected,
            });
        }
        Ok(ClaimOutcome {
            claim_id: ClaimId::new(self.claim_id),
            committed_version: self.committed_version,
            placements,
        })
    }
}

/// A claim's row: its outcome and its tasks as placed.
#[derive(Serialize, Deserialize)]
pub struct ClaimCommitRow<'a> {
    #[serde(borrow)]
    outcome: ClaimRow<'a>,
    #[serde(borrow)]
    tasks: Vec<TaskRow<'a>>,
}

pub fn encode_claim_commit(c: &ClaimCommit, buf: Vec<u8>) -> Vec<u8> {
    let row = ClaimCommitRow {
        outcome: (&c.outcome).into(),
        tasks: c.tasks.iter().map(|t| TaskRow::from(t.as_ref())).collect(),
    };
    encode_as(FORMAT_CLAIM_WITH_TASKS, &row, buf)
}

/// A claim's outcome and, in rows that hold them, its tasks as placed.
pub fn decode_claim_commit(bytes: &[u8]) -> StoreResult<(ClaimOutcome, Option<Vec<Task>>)> {
    let Some((&FORMAT_CLAIM_WITH_TASKS, body)) = bytes.split_first() else {
        return Ok((decode_claim(bytes)?, None));
    };
    let row: ClaimCommitRow = postcard::from_bytes(body).map_err(|e| corrupt("claim", e))?;
    let tasks = row
        .tasks
        .into_iter()
        .map(TaskRow::into_task)
        .collect::<StoreResult<_>>()?;
    Ok((row.outcome.into_outcome()?, Some(tasks)))
}

/// A log entry's event: a claim's commit by reference, anything else as its JSON.
#[derive(Serialize, Deserialize)]
pub enum EventRow<'a> {
    /// A claim's commit with its records in full, as earlier versions wrote it (read only).
    ClaimCommitted {
        #[serde(borrow)]
        outcome: ClaimRow<'a>,
        #[serde(borrow)]
        tasks: Vec<TaskRow<'a>>,
        #[serde(borrow)]
        evictions: Vec<Cow<'a, str>>,
    },
    Json(#[serde(borrow)] Cow<'a, str>),
    /// A claim's commit by reference: its outcome and its tasks as placed are the claim's
    /// row (in a claim row of an older store without tasks, the task rows of the committed
    /// placements, as placed: [`Task::as_placed`]). The row is written in the same store
    /// write as the entry and never removed, so the entry holds only what the row does not.
    ClaimCommittedRef {
        #[serde(borrow)]
        claim_id: Cow<'a, str>,
        #[serde(borrow)]
        evictions: Vec<Cow<'a, str>>,
    },
}

/// A log entry (its version is the row's key).
#[derive(Serialize, Deserialize)]
pub struct LogRow<'a> {
    #[serde(borrow)]
    events: Vec<EventRow<'a>>,
}

impl<'a> From<&'a LogEntry> for LogRow<'a> {
    fn from(e: &'a LogEntry) -> LogRow<'a> {
        LogRow {
            events: e
                .events
                .iter()
                .map(|ev| match ev {
                    Event::ClaimCommitted {
                        outcome, evictions, ..
                    } => EventRow::ClaimCommittedRef {
                        claim_id: outcome.claim_id.as_str().into(),
                        evictions: evictions.iter().map(|t| t.as_str().into()).collect(),
                    },
                    other => EventRow::Json(
                        serde_json::to_string(other)
                            .expect("events serialize")
                            .into(),
                    ),
                })
                .collect(),
        }
    }
}

pub fn decode_task(bytes: &[u8]) -> StoreResult<Task> {
    match binary::<TaskRow>("task", bytes)? {
        Some(row) => row.into_task(),
        None => decode("task", bytes),
    }
}

pub fn decode_claim(bytes: &[u8]) -> StoreResult<ClaimOutcome> {
    match binary::<ClaimRow>("claim", bytes)? {
        Some(row) => row.into_outcome(),
        None => decode("claim", bytes),
    }
}

/// Where a log entry's references are read: the stored claim (its outcome and, if its
/// row holds them, its tasks as placed) and task of these ids.
pub trait Records {
    fn claim(&mut self, id: &str) -> StoreResult<Option<(ClaimOutcome, Option<Vec<Task>>)>>;
    fn task(&mut self, id: &str) -> StoreResult<Option<Task>>;
}

pub fn decode_log_entry(
    version: Version,
    bytes: &[u8],
    records: &mut dyn Records,
) -> StoreResult<LogEntry> {
    let Some(row) = binary::<LogRow>("log entry", bytes)? else {
        return decode("log entry", bytes);
    };
    let mut events = Vec::with_capacity(row.events.len());
    for ev in row.events {
        events.push(match ev {
            EventRow::ClaimCommitted {
                outcome,
                tasks,
                evictions,
            } => Event::ClaimCommitted {
                outcome: outcome.into_outcome()?,
                tasks: tasks
                    .into_iter()
                    .map(|t| t.into_task().map(Arc::new))
                    .collect::<StoreResult<_>>()?,
                evictions: evictions.into_iter().map(TaskId::new).collect(),
            },
            EventRow::Json(text) => {
                serde_json::from_str(&text).map_err(|e| corrupt("log entry", e))?
            }
            EventRow::ClaimCommittedRef {
                claim_id,
                evictions,
            } => {
                let missing = |what: &str, id: &str| {
                    corrupt(
                        "log entry",
                        format!("{what} {id} of version {version} is not stored"),
                    )
                };
                let (outcome, placed) = records
                    .claim(&claim_id)?
                    .ok_or_else(|| missing("claim", &claim_id))?;
                let tasks = match placed {
                    Some(placed) => placed.into_iter().map(Arc::new).collect(),
                    // A claim row of an older store: its tasks have rows of their own.
                    None => {
                        let mut tasks = Vec::new();
                        for p in outcome.placements.iter().filter(|p| p.committed) {
                            let task = records
                                .task(p.task_id.as_str())?
                                .ok_or_else(|| missing("task", p.task_id.as_str()))?;
                            tasks.push(Arc::new(task.as_placed(version)));
                        }
                        tasks
                    }
                };
                Event::ClaimCommitted {
                    outcome,
                    tasks,
                    evictions: evictions.into_iter().map(TaskId::new).collect(),
                }
            }
        });
    }
    Ok(LogEntry { version, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb_store::{CLAIMS, LOG, META, TASKS};
    use shoal_core::{AgentId, ClaimId, ResourceSet, StatusInfo, TaskSpec, TaskState};

    fn placed(id: &str, claim: &str, version: Version) -> Task {
        Task {
            id: TaskId::new(id),
            name: id.into(),
            agent_id: AgentId::new("a1"),
            role: "*".into(),
            owner: "s1".into(),
            claim_id: ClaimId::new(claim),
            resources: ResourceSet::parse("cpus:1;mem:32").unwrap(),
            state: TaskState::Staging,
            status: StatusInfo::default(),
            spec: TaskSpec::new(&format!(r#"{{"name":"{id}"}}"#)),
            version,
            priority: 0,
            preempted_by: None,
        }
    }

    fn committed(claim: &str, version: Version, tasks: &[&Task]) -> ClaimOutcome {
        ClaimOutcome {
            claim_id: ClaimId::new(claim),
            committed_version: Some(version),
            placements: tasks
                .iter()
                .map(|t| PlacementOutcome {
                    task_id: t.id.clone(),
                    agent_id: t.agent_id.clone(),
                    committed: true,
                    rejected: None,
                })
                .collect(),
        }
    }

    /// A store written before claims' rows held their tasks still loads, and its log
    /// still reads: claim rows without tasks, a row per task, log entries holding the
    /// tasks in full (c1), or naming a claim whose row has no tasks (c2, whose task ran
    /// since: the entry gives it as placed).
    #[test]
    fn rows_of_earlier_versions_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("cell.redb")).unwrap();
        let t1 = placed("t1", "c1", 3);
        let c1 = committed("c1", 3, &[&t1]);
        let t2 = placed("t2", "c2", 4);
        let c2 = committed("c2", 4, &[&t2]);
        let t2_running = Task {
            state: TaskState::Running,
            version: 5,
            ..t2.clone()
        };
        let txn = store.db().unwrap().begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("cell_id", b"cell".as_slice()).unwrap();
            meta.insert("version", crate::store::encode(&5u64).as_slice())
                .unwrap();
            let mut tasks = txn.open_table(TASKS).unwrap();
            for t in [&t1, &t2_running] {
                tasks
                    .insert(
                        t.id.as_str(),
                        encode(&TaskRow::from(t), Vec::new()).as_slice(),
                    )
                    .unwrap();
            }
            let mut claims = txn.open_table(CLAIMS).unwrap();
            for c in [&c1, &c2] {
                claims
                    .insert(
                        c.claim_id.as_str(),
                        encode(&ClaimRow::from(c), Vec::new()).as_slice(),
                    )
                    .unwrap();
            }
            let mut log = txn.open_table(LOG).unwrap();
            let full = LogRow {
                events: vec![EventRow::ClaimCommitted {
                    outcome: (&c1).into(),
                    tasks: vec![TaskRow::from(&t1)],
                    evictions: vec![],
                }],
            };
            log.insert(3, encode(&full, Vec::new()).as_slice()).unwrap();
            let by_ref = LogRow {
                events: vec![EventRow::ClaimCommittedRef {
                    claim_id: "c2".into(),
                    evictions: vec![],
                }],
            };
            log.insert(4, encode(&by_ref, Vec::new()).as_slice())
                .unwrap();
        }
        txn.commit().unwrap();

        let loaded = store.load().unwrap();
        assert_eq!(loaded.version, 5);
        assert_eq!(loaded.tasks, vec![t1.clone(), t2_running]);
        assert_eq!(loaded.claims, vec![c1.clone(), c2.clone()]);
        let entry = |version, outcome: &ClaimOutcome, task: &Task| LogEntry {
            version,
            events: vec![Event::ClaimCommitted {
                outcome: outcome.clone(),
                tasks: vec![Arc::new(task.clone())],
                evictions: vec![],
            }],
        };
        assert_eq!(
            store.read_log(3, 10).unwrap(),
            vec![entry(3, &c1, &t1), entry(4, &c2, &t2)]
        );
    }
}
