//! The thin async driver of the built-in schedulers (batch and service).
//!
//! A built-in scheduler is a native scheduler like any other: it reads published snapshots and
//! the commit broadcast, and submits commands (claims, kills, record updates) through the
//! committer, exactly as the HTTP handlers do. It never touches the cell another way. The
//! driver's loop:
//!
//! 1. fold every committed entry waiting in the broadcast into the scheduler (`observe`);
//! 2. `step` on the newest snapshot at the wall-clock time;
//! 3. submit the commands of the step in the order the scheduler gave them (one commit group
//!    when they fit), then wait for every answer, reporting claim outcomes back (`claimed`);
//! 4. if the scheduler has more to do, go to 1; else sleep until the next commit, the
//!    scheduler's wake-up time, or the nudge interval, whichever comes first.
//!
//! If the driver falls behind the broadcast it rebuilds the scheduler from the snapshot
//! (`recover`), as a new master does at start.

use std::sync::Arc;
use std::time::Duration;

use shoal_core::{Claim, ClaimOutcome, Timestamp};
use shoal_sched::{Cell, Command, LogEntry, Reply};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::committer::{CommitError, Committer, Published};
use crate::limits;

/// What a step decided: commands in the order they are to be submitted, and when to step
/// again at the latest.
pub struct Step {
    pub commands: Vec<Command>,
    pub wake_at: Option<Timestamp>,
}

/// A sans-IO scheduler of the core, as the driver runs it.
pub trait BuiltIn: Send + 'static {
    /// Its name in logs.
    const NAME: &'static str;
    fn recover(cell: &Cell) -> Self;
    fn observe(&mut self, entry: &LogEntry);
    fn step(&mut self, cell: &Cell, now: Timestamp) -> Step;
    fn claimed(&mut self, claim: &Claim, outcome: Option<&ClaimOutcome>, now: Timestamp);
    fn has_work(&self) -> bool;
    fn nudge(&mut self);
}

impl Step {
    /// The commands of a core scheduler's actions: record updates first or last, claims before
    /// kills.
    pub fn of<U>(
        actions: shoal_sched::actions::Actions<U>,
        update: fn(U) -> Command,
        records_first: bool,
    ) -> Step {
        let updates = actions.updates.into_iter().map(update);
        let claims = actions.claims.into_iter().map(Command::Claim);
        let kills = actions
            .kills
            .into_iter()
            .map(|task_id| Command::KillTask { task_id });
        let commands = if records_first {
            updates.chain(claims).chain(kills).collect()
        } else {
            claims.chain(kills).chain(updates).collect()
        };
        Step {
            commands,
            wake_at: actions.wake_at,
        }
    }
}

/// Implements [`BuiltIn`] for a core scheduler whose inherent methods have the trait's
/// names; `$records_first`: whether its record updates go before its claims.
macro_rules! built_in {
    ($ty:ty, $name:literal, $update:expr, $records_first:expr) => {
        impl $crate::driver::BuiltIn for $ty {
            const NAME: &'static str = $name;
            fn recover(cell: &shoal_sched::Cell) -> Self {
                <$ty>::recover(cell)
            }
            fn observe(&mut self, entry: &shoal_sched::LogEntry) {
                <$ty>::observe(self, entry)
            }
            fn step(&mut self, cell: &shoal_sched::Cell, now: u64) -> $crate::driver::Step {
                $crate::driver::Step::of(<$ty>::step(self, cell, now), $update, $records_first)
            }
            fn claimed(
                &mut self,
                claim: &shoal_core::Claim,
                outcome: Option<&shoal_core::ClaimOutcome>,
                now: u64,
            ) {
                <$ty>::claimed(self, claim, outcome, now)
            }
            fn has_work(&self) -> bool {
                <$ty>::has_work(self)
            }
            fn nudge(&mut self) {
                <$ty>::nudge(self)
            }
        }
    };
}
pub(crate) use built_in;

/// Starts a built-in scheduler's driver. Needs a tokio runtime.
pub fn start<S: BuiltIn>(committer: Committer, published: Arc<Published>) {
    tokio::spawn(drive::<S>(committer, published));
}

async fn drive<S: BuiltIn>(committer: Committer, published: Arc<Published>) {
    let mut rx = published.entries.subscribe();
    let start = published.snapshot();
    let mut sched = S::recover(&start);
    // The newest version folded into the scheduler.
    let mut observed = start.version();
    loop {
        // 1. Everything committed so far.
        loop {
            match rx.try_recv() {
                Ok(entry) => {
                    observed = entry.version;
                    sched.observe(&entry);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, scheduler = S::NAME, "fell behind; rebuilding it");
                    let cell = published.snapshot();
                    sched = S::recover(&cell);
                    observed = cell.version();
                }
                Err(TryRecvError::Closed) => return,
            }
        }
        // 2. and 3. A snapshot is published before its entries are streamed: observe every
        // entry up to the snapshot's version first, so a step never acts on a change (freed
        // resources) the scheduler has not observed yet. The wait is bounded, so a version
        // that is never streamed cannot wedge the driver.
        let cell = published.snapshot();
        let caught_up = tokio::time::timeout(
            Duration::from_millis(limits::DRIVER_CATCH_UP_WAIT_MS),
            async {
                while observed < cell.version() {
                    match rx.recv().await {
                        Ok(entry) => {
                            observed = entry.version;
                            sched.observe(&entry);
                        }
                        Err(RecvError::Lagged(_)) => return false,
                        Err(RecvError::Closed) => return true,
                    }
                }
                true
            },
        )
        .await;
        if caught_up == Ok(false) {
            tracing::warn!(scheduler = S::NAME, "fell behind; rebuilding it");
            sched = S::recover(&cell);
            observed = cell.version();
        }
        let now = published.clock.wall_ms();
        let step = sched.step(&cell, now);
        let wake_at = step.wake_at;
        execute(&committer, &mut sched, step.commands, now).await;
        if sched.has_work() {
            continue;
        }
        // 4.
        let mut wait = Duration::from_millis(limits::DRIVER_NUDGE_INTERVAL_MS);
        if let Some(at) = wake_at {
            wait = wait.min(Duration::from_millis(
                at.saturating_sub(published.clock.wall_ms()),
            ));
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(entry) => {
                    observed = entry.version;
                    sched.observe(&entry);
                }
                Err(RecvError::Lagged(_)) => {
                    let cell = published.snapshot();
                    sched = S::recover(&cell);
                    observed = cell.version();
                }
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(wait) => sched.nudge(),
        }
    }
}

async fn execute<S: BuiltIn>(
    committer: &Committer,
    sched: &mut S,
    commands: Vec<Command>,
    now: Timestamp,
) {
    // Queue everything first (one commit group), then wait for the answers.
    let mut pending = Vec::with_capacity(commands.len());
    for c in commands {
        let claim = match &c {
            Command::Claim(claim) => Some(claim.clone()),
            _ => None,
        };
        pending.push((claim, committer.enqueue(c).await));
    }
    for (claim, rx) in pending {
        let answer = rx.await;
        match (claim, answer) {
            (Some(claim), Ok(Ok(Reply::Claim { outcome }))) => {
                sched.claimed(&claim, Some(&outcome), now)
            }
            (Some(claim), other) => {
                tracing::warn!(scheduler = S::NAME, claim = %claim.id, answer = ?other.map(|r| r.map(|_| ())), "claim not committed");
                sched.claimed(&claim, None, now);
            }
            (None, Ok(Ok(_)))
            | (None, Ok(Err(CommitError::Rejected(shoal_core::Rejection::NotFound(_))))) => {}
            (None, Ok(Err(e))) => {
                tracing::warn!(scheduler = S::NAME, error = %e, "command refused")
            }
            (None, Err(_)) => tracing::warn!(scheduler = S::NAME, "command dropped"),
        }
    }
}
