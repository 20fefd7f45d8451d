//! What the machine offers the tests (Docker, a Python with pymesos, ZooKeeper), and why a
//! test skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Whether Docker tests run: always in CI (`CI=true`) or when the test script says Docker
/// works (`SHOAL_TEST_DOCKER=1`); otherwise only when `docker info` succeeds. Prints why
/// when they are skipped.
pub fn docker_enabled(test: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("SHOAL_TEST_DOCKER").as_deref() == Ok("1")
    {
        return true;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping {test}: `docker info` fails and CI is not \"true\"");
    }
    ok
}

/// The Python that has pymesos, for the framework tests: `$SHOAL_TEST_PYTHON` (set by
/// `scripts/test`). When it is unset: `None` with a printed reason outside CI; a panic in CI
/// (`CI=true`).
pub fn test_python(test: &str) -> Option<PathBuf> {
    match std::env::var("SHOAL_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: SHOAL_TEST_PYTHON is not set (scripts/test sets it to a venv with pymesos), and CI is \"true\"");
            }
            eprintln!("skipping {test}: SHOAL_TEST_PYTHON is not set (run scripts/test, or point it at a Python with pymesos 0.3.15)");
            None
        }
    }
}

/// The ZooKeeper the tests use (`host:port`): `$SHOAL_TEST_ZK` (set by `scripts/test`, which
/// starts one). When it is unset: `None` with a printed reason outside CI; a panic in CI.
pub fn test_zk(test: &str) -> Option<String> {
    match std::env::var("SHOAL_TEST_ZK") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: SHOAL_TEST_ZK is not set (scripts/test starts a ZooKeeper), and CI is \"true\"");
            }
            eprintln!(
                "skipping {test}: SHOAL_TEST_ZK is not set (run scripts/test --only zookeeper)"
            );
            None
        }
    }
}
