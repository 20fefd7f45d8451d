//! Waiting on conditions with deadlines (never fixed sleeps).

use std::time::{Duration, Instant};

/// Polls `cond` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Checks `cond` throughout `period` (polling as [`wait_until`] does) and panics with `what`
/// and its error the first time it does not hold: for "nothing goes wrong for a while", where
/// a blind sleep and one look would take as long and miss a passing fault. A poll that does
/// not answer within [`HOLD_POLL_SECS`] after the period is a failure too.
pub async fn hold_for<F, Fut>(what: &str, period: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let until = start + period;
    let hard = until + Duration::from_secs(HOLD_POLL_SECS);
    let mut pause = Duration::from_millis(5);
    let mut polls = 0u32;
    loop {
        match tokio::time::timeout(hard.saturating_duration_since(Instant::now()), cond()).await {
            Ok(Ok(())) => polls += 1,
            Ok(Err(e)) => panic!("{what}: no longer held after {:?}: {e}", start.elapsed()),
            Err(_) => panic!("{what}: a check did not answer within {HOLD_POLL_SECS} s"),
        }
        if Instant::now() >= until && polls >= 2 {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// How long past its period one check of [`hold_for`] may take.
pub const HOLD_POLL_SECS: u64 = 10;

/// Waits for `child` to exit until `until`; past it, SIGKILLs it and returns `None`.
pub(crate) fn wait_or_kill(
    child: &mut std::process::Child,
    until: Instant,
) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
