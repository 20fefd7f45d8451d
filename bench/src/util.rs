//! Small helpers: aligned output, number formatting, medians, a seeded RNG, deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

/// Width of the label column.
const LABEL: usize = 44;
/// Width of the value column.
const VALUE: usize = 18;

pub fn title(text: &str) {
    println!();
    println!("{text}");
    println!("{}", "-".repeat(text.chars().count()));
}

/// A parameter of a phase: `  name .......... value`.
pub fn param(name: &str, value: impl std::fmt::Display) {
    println!("  {name:<LABEL$} {value}");
}

/// A figure of a phase: name, value right-aligned, and a note (baseline, target, unit).
pub fn figure(name: &str, value: impl std::fmt::Display, note: &str) {
    let value = value.to_string();
    if note.is_empty() {
        println!("  {name:<LABEL$} {value:>VALUE$}");
    } else {
        println!("  {name:<LABEL$} {value:>VALUE$}  {note}");
    }
}

/// `1234567` → `1,234,567`.
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let groups: Vec<&str> = s
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).expect("ASCII digits"))
        .collect();
    groups.join(",")
}

/// A rate per second with thousands separators (and one decimal below 100).
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        return "n/a".into();
    }
    if per_s < 100.0 {
        format!("{per_s:.1}/s")
    } else {
        format!("{}/s", int(per_s.round() as u64))
    }
}

pub fn per_s(count: u64, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64().max(1e-9)
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub fn ns(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ns")
    } else {
        format!("{} ns", int(v.round() as u64))
    }
}

pub fn pct(frac: f64) -> String {
    format!("{:.2} %", frac * 100.0)
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "NOT MET"
    }
}

/// SplitMix64: a tiny seeded RNG, so workloads are the same from run to run.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `fut` with a deadline; `what` names it in the error.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {limit:?}"))
}

/// A point in time after which a loop must stop.
#[derive(Clone, Copy)]
pub struct Deadline {
    until: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            until: Instant::now() + limit,
            limit,
        }
    }
    pub fn check(&self, what: &str) -> Result<()> {
        if Instant::now() > self.until {
            return Err(anyhow!("{what}: deadline of {:?} passed", self.limit));
        }
        Ok(())
    }
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }
}

/// A fresh multi-threaded runtime for one phase. Dropping it (at the phase's end) stops
/// every task the phase left behind, e.g. the background loops of an in-process master.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The first lines of a benchmark's output: name and scale, the `shoal` binary under test,
/// this binary's build, the cpus and the load (other work on the machine skews figures).
#[allow(dead_code)] // used by the binaries under src/bin/
pub fn header(name: &str, smoke: bool, shoal_bin: &std::path::Path) {
    println!("{name} ({} scale)", if smoke { "smoke" } else { "full" });
    param("shoal binary", shoal_bin.display());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    param("build of this binary", build);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    param("cpus", cpus);
    param("load average at start", loadavg());
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// CPU time (user + system) a process used so far, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// CPU time of this process's threads named `name` (summed), from /proc/self/task.
pub fn thread_cpu_time(name: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut found = false;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        total += Duration::from_millis(ticks * 1000 / hz);
        found = true;
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(rate(3750.0), "3,750/s");
        let mut v = vec![3.0, 1.0, 2.0, 10.0];
        assert_eq!(median(&mut v), 2.5);
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(cpu_time(std::process::id()).is_some());
        assert!(!loadavg().is_empty());
    }

    #[test]
    fn rng_is_seeded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!(a.below(5) < 5);
        let u = a.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
