//! The agent's side of the Mesos `/files` endpoints: listing and reading a task's sandbox.
//! Paths are confined to the sandbox: `..`, absolute paths and symlinks out are refused.

use std::path::{Component, Path};

use serde_json::{json, Value as Json};

/// Largest read answered at once, in bytes.
const READ_BYTES_MAX: u64 = 1 << 20;

/// A task's sandbox directory name: its id with anything but `[A-Za-z0-9._-]` replaced.
pub fn sandbox_name(task_id: &str) -> String {
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

fn sandbox_of(sandboxes: &Path, task_id: &str) -> std::path::PathBuf {
    sandboxes.join(sandbox_name(task_id))
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
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (
            400,
            json!({"error": "invalid", "message": "path must stay inside the sandbox"}),
        );
    }
    let root = sandbox_of(sandboxes, task_id);
    let path = root.join(rel);
    let (Ok(canon_root), Ok(canon)) = (root.canonicalize(), path.canonicalize()) else {
        return (
            404,
            json!({"error": "not_found", "message": format!("{} not found in the sandbox of {task_id}", rel.display())}),
        );
    };
    if !canon.starts_with(&canon_root) {
        return (
            403,
            json!({"error": "forbidden", "message": "path leaves the sandbox"}),
        );
    }
    match op {
        "browse" => {
            let Ok(dir) = std::fs::read_dir(&canon) else {
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
            let Ok(mut f) = std::fs::File::open(&canon) else {
                return (
                    404,
                    json!({"error": "not_found", "message": "cannot open the file"}),
                );
            };
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
