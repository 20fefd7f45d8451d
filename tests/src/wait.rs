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
