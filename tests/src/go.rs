//! Go test programs built from `tests/frameworks/go/<name>` with Debian's Go and mesos-go
//! (GOPATH mode, `/usr/share/gocode`, no network).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use parking_lot::Mutex;
use std::time::Duration;

use crate::script::run_command;

/// Where Debian's golang-github-mesos-mesos-go-dev puts its sources.
pub const GOCODE: &str = "/usr/share/gocode";
/// A package every program here imports (v1 and v0 live side by side under it).
const MESOS_GO: &str = "src/github.com/mesos/mesos-go/api";

/// Why the Go programs cannot be built here, if they cannot.
pub fn go_missing() -> Option<String> {
    if !Command::new("go")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return Some("`go version` does not run (apt-get install golang-go)".into());
    }
    let mesos_go = Path::new(GOCODE).join(MESOS_GO);
    if !mesos_go.is_dir() {
        return Some(format!(
            "{} is missing (apt-get install golang-github-mesos-mesos-go-dev)",
            mesos_go.display()
        ));
    }
    None
}

/// `tests/frameworks/go/<name>` built into a temporary directory, once per test binary and
/// name. `None` (printed) when Go or mesos-go is missing outside CI; a panic in CI
/// (`CI=true`) or when the build fails.
pub fn go_program(test: &str, name: &'static str) -> Option<PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<&'static str, Result<PathBuf, String>>>> = OnceLock::new();
    if let Some(why) = go_missing() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}, and CI is \"true\"");
        }
        eprintln!("skipping {test}: {why}");
        return None;
    }
    let mut built = BUILT.get_or_init(Default::default).lock();
    let result = built.entry(name).or_insert_with(|| build(name));
    match result {
        Ok(bin) => Some(bin.clone()),
        Err(e) => panic!("{test}: building tests/frameworks/go/{name} failed: {e}"),
    }
}

fn build(name: &str) -> Result<PathBuf, String> {
    let out = tempfile::Builder::new()
        .prefix("shoal-go-frameworks-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("frameworks")
        .join("go")
        .join(name);
    let bin = out.join(name);
    let mut cmd = Command::new("go");
    cmd.args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:{GOCODE}", out.join("gopath").display()),
        )
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0");
    if std::env::var_os("HOME").is_none() && std::env::var_os("GOCACHE").is_none() {
        cmd.env("GOCACHE", out.join("gocache"));
    }
    let run = run_command(
        cmd,
        &format!("go-build-{name}"),
        Duration::from_secs(600),
        &out,
    );
    if run.success() {
        eprintln!("built {} in {:?}", bin.display(), run.elapsed);
        Ok(bin)
    } else {
        Err(format!("{}\n{}", run.outcome(), run.output))
    }
}

/// Starts `tests/frameworks/go/v0sched` (built with [`go_program`]) against `master` (a
/// zk:// URL or host:port) as framework `name`, with `extra` flags; its stderr goes to
/// `<log_dir>/v0sched-<name>.stderr.log`.
pub fn spawn_v0sched(
    bin: &Path,
    master: &str,
    name: &str,
    extra: &[&str],
    log_dir: &Path,
) -> crate::LineChild {
    let mut cmd = Command::new(bin);
    cmd.args(["--master", master, "--name", name]).args(extra);
    let log = log_dir.join(format!("v0sched-{name}.stderr.log"));
    crate::LineChild::spawn("v0sched", cmd, &log)
}
