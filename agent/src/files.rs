//! The agent's side of the Mesos `/files` endpoints: listing and reading a task's sandbox.
//!
//! Every `/files` endpoint opens its path through [`open_in_sandbox`], the one check that a
//! path is inside the sandbox of a task this agent has: an unknown task (or an id Mesos would
//! refuse) is 404 or 400, and `..`, absolute paths and symlinks out of the sandbox are 400.

use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value as Json};

/// Largest read answered at once, in bytes.
const READ_BYTES_MAX: u64 = 1 << 20;

/// A file-name-safe, reversible encoding of an id: bytes outside `[A-Za-z0-9._-]` become
/// `%XX`, and so does a leading `.`. `%` itself is always encoded, so two ids never share a
/// name (`a/b` is `a%2Fb`, `a_b` stays `a_b`, `a%2Fb` is `a%252Fb`), and `.`, `..` or a
/// hidden name cannot come out. Task sandboxes, the process executor's per-task state
/// directories and cgroups are named by it.
pub fn escape_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A task's sandbox directory name (see [`escape_id`]). Ids of letters, digits, `-`, `_` and
/// inner `.` keep the name earlier versions gave them, so their sandboxes are still found.
pub fn sandbox_name(task_id: &str) -> String {
    escape_id(task_id)
}

/// The name earlier versions gave a sandbox (anything outside `[A-Za-z0-9._-]` became `_`,
/// which let ids share one). Only kept so the sandbox of a task launched by an earlier version
/// is not collected while the task runs; it is never served.
pub fn legacy_sandbox_name(task_id: &str) -> String {
    task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why a `/files` path is refused, with the status Mesos answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    /// A path outside the sandbox, or a task id Mesos refuses: 400.
    #[error("{0}")]
    Invalid(String),
    /// No such task on this agent, or no such file in its sandbox: 404.
    #[error("{0}")]
    NotFound(String),
}

impl FilesError {
    pub fn http_status(&self) -> u16 {
        match self {
            FilesError::Invalid(_) => 400,
            FilesError::NotFound(_) => 404,
        }
    }

    fn body(&self) -> Json {
        let error = match self {
            FilesError::Invalid(_) => "invalid",
            FilesError::NotFound(_) => "not_found",
        };
        json!({"error": error, "message": self.to_string()})
    }
}

/// The one check of every `/files` endpoint: opens `rel` (relative to the sandbox, a leading
/// `/` allowed) inside the sandbox of `task_id` under `sandboxes`, a file or a directory, and
/// returns it with its canonical path, which is the sandbox itself or strictly inside it.
///
/// A task id that is not a valid id is 400; a task without a sandbox here is 404; a path with
/// any component but a plain name (`..`, `.`, a root) is 400; a missing file is 404; a path
/// whose canonical form (symlinks followed) leaves the sandbox is 400. The open file is checked
/// again by the path the kernel gives it, so a symlink the task swaps in between the check and
/// the open is refused too.
pub fn open_in_sandbox(
    sandboxes: &Path,
    task_id: &str,
    rel: &str,
) -> Result<(std::fs::File, PathBuf), FilesError> {
    let (canon_root, canon) = sandbox_path(sandboxes, task_id, rel)?;
    // Non-blocking, so a FIFO the task made cannot hold the agent up; only plain files and
    // directories are served.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&canon)
        .map_err(|e| FilesError::NotFound(format!("cannot open {rel:?}: {e}")))?;
    let kind = file
        .metadata()
        .map_err(|e| FilesError::NotFound(format!("cannot open {rel:?}: {e}")))?
        .file_type();
    if !(kind.is_file() || kind.is_dir()) {
        return Err(FilesError::Invalid(format!(
            "{rel:?} is not a plain file or a directory"
        )));
    }
    use std::os::fd::AsRawFd;
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| FilesError::NotFound(format!("cannot open {rel:?}: {e}")))?;
    if !opened.starts_with(&canon_root) {
        return Err(FilesError::Invalid(format!(
            "path {rel:?} leaves the sandbox of {task_id}"
        )));
    }
    Ok((file, canon))
}

/// The lexical and canonical part of [`open_in_sandbox`]: the canonical sandbox and path.
fn sandbox_path(
    sandboxes: &Path,
    task_id: &str,
    rel: &str,
) -> Result<(PathBuf, PathBuf), FilesError> {
    shoal_core::cell::validate_id("task id", task_id).map_err(|e| match e {
        shoal_core::Rejection::Invalid(why) => FilesError::Invalid(why),
        other => FilesError::Invalid(other.to_string()),
    })?;
    let root = sandboxes.join(sandbox_name(task_id));
    let canon_root = match root.canonicalize() {
        Ok(r) if r.is_dir() => r,
        _ => {
            return Err(FilesError::NotFound(format!(
                "task {task_id} has no sandbox on this agent"
            )))
        }
    };
    let rel_path = Path::new(rel.trim_start_matches('/'));
    if rel_path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(FilesError::Invalid(format!(
            "path {rel:?} must name a file inside the sandbox (no '..' or '.')"
        )));
    }
    let canon = canon_root.join(rel_path).canonicalize().map_err(|_| {
        FilesError::NotFound(format!(
            "{} not found in the sandbox of {task_id}",
            rel_path.display()
        ))
    })?;
    if !canon.starts_with(&canon_root) {
        return Err(FilesError::Invalid(format!(
            "path {rel:?} leaves the sandbox of {task_id}"
        )));
    }
    Ok((canon_root, canon))
}

/// Answers `browse` (a listing, as Mesos's `/files/browse`) or `read` (`{"data", "offset"}`,
/// as Mesos's `/files/read`; `offset = -1`-style size queries are answered by `length = 0`).
pub fn serve(
    sandboxes: &Path,
    op: &str,
    task_id: &str,
    rel: &str,
    offset: u64,
    length: Option<u64>,
) -> (u16, Json) {
    let (file, _) = match open_in_sandbox(sandboxes, task_id, rel) {
        Ok(opened) => opened,
        Err(e) => return (e.http_status(), e.body()),
    };
    let rel = Path::new(rel.trim_start_matches('/'));
    match op {
        "browse" => {
            // The directory that was opened and checked, not whatever the path names now.
            use std::os::fd::AsRawFd;
            let Ok(dir) = std::fs::read_dir(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
                return (
                    400,
                    json!({"error": "invalid", "message": "not a directory"}),
                );
            };
            let mut out = Vec::new();
            for e in dir.flatten() {
                let Ok(md) = e.metadata() else { continue };
                use std::os::unix::fs::MetadataExt;
                out.push(json!({
                    "path": format!("/{}", rel.join(e.file_name()).display()),
                    "size": md.len(),
                    "mode": format!("{:o}", md.mode()),
                    "mtime": md.mtime(),
                    "nlink": md.nlink(),
                    "uid": md.uid().to_string(),
                    "gid": md.gid().to_string(),
                }));
            }
            (200, Json::Array(out))
        }
        "read" => {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = file;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            let want = length.unwrap_or(READ_BYTES_MAX).min(READ_BYTES_MAX);
            if offset >= size || want == 0 {
                return (
                    200,
                    json!({"data": "", "offset": size.min(offset.max(if want == 0 { size } else { offset }))}),
                );
            }
            let mut buf = Vec::with_capacity(want as usize);
            if f.seek(SeekFrom::Start(offset)).is_err()
                || f.take(want).read_to_end(&mut buf).is_err()
            {
                return (500, json!({"error": "io", "message": "read failed"}));
            }
            (
                200,
                json!({"data": String::from_utf8_lossy(&buf), "offset": offset}),
            )
        }
        _ => (
            400,
            json!({"error": "invalid", "message": format!("unknown files operation {op}")}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent work dir with a sandbox for task `t1` holding `stdout`.
    fn work_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sandboxes = dir.path().join("sandboxes");
        std::fs::create_dir_all(sandboxes.join("t1")).unwrap();
        std::fs::write(sandboxes.join("t1/stdout"), "out").unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/agent_id"), "secret").unwrap();
        (dir, sandboxes)
    }

    #[test]
    fn files_outside_a_sandbox_are_refused() {
        let (_dir, sandboxes) = work_dir();
        let status = |task: &str, rel: &str| match open_in_sandbox(&sandboxes, task, rel) {
            Ok(_) => 200,
            Err(e) => e.http_status(),
        };
        assert_eq!(status("t1", "stdout"), 200);
        assert_eq!(status("t1", "/stdout"), 200);
        assert_eq!(status("t1", ""), 200);
        // The ids Mesos refuses, which once named the agent's work dir.
        assert_eq!(status("..", "state/agent_id"), 400);
        assert_eq!(status(".", "sandboxes/t1/stdout"), 400);
        assert_eq!(status("a/../t1", "stdout"), 400);
        // Paths that climb out.
        assert_eq!(status("t1", "../../state/agent_id"), 400);
        assert_eq!(status("t1", "./stdout"), 400);
        // Unknown task, missing file.
        assert_eq!(status("t2", "stdout"), 404);
        assert_eq!(status("t1", "nothing"), 404);
        // A symlink out of the sandbox.
        std::os::unix::fs::symlink("../../state", sandboxes.join("t1/up")).unwrap();
        assert_eq!(status("t1", "up/agent_id"), 400);
        assert_eq!(status("t1", "up"), 400);
        // A FIFO would block the agent's loop on open.
        let fifo = std::ffi::CString::new(sandboxes.join("t1/fifo").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(status("t1", "fifo"), 400);
        let (code, body) = serve(&sandboxes, "read", "..", "state/agent_id", 0, None);
        assert_eq!(code, 400);
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn ids_that_differ_never_share_a_sandbox() {
        let ids = [
            "a/b", "a_b", "a%2Fb", "a b", "a%20b", ".", "..", "%2E", ".a", "a.", "é",
        ];
        let names: std::collections::HashSet<String> =
            ids.iter().map(|i| sandbox_name(i)).collect();
        assert_eq!(names.len(), ids.len());
        for n in &names {
            assert!(!n.starts_with('.') && !n.contains('/'), "{n}");
        }
        assert_eq!(sandbox_name("a_b"), "a_b");
        assert_eq!(sandbox_name("a/b"), "a%2Fb");
        // The usual ids keep the name earlier versions gave them.
        for id in ["job-1.task_2.0", "web.0.1", "X-9"] {
            assert_eq!(sandbox_name(id), legacy_sandbox_name(id));
        }
    }
}
