//! The disk under the work dir: its filesystem type, and how fast it syncs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The filesystem of `path` (statfs `f_type`): its magic number and a name.
pub fn fs_type(path: &Path) -> Result<(i64, &'static str)> {
    let c = CString::new(path.as_os_str().as_bytes()).context("work dir path has a NUL byte")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer for the call's duration.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64 & 0xffff_ffff;
    Ok((magic, fs_name(magic)))
}

fn fs_name(magic: i64) -> &'static str {
    match magic {
        0xEF53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0xFF53_4D42 => "cifs",
        0x5346_544E => "ntfs",
        0x4d44 => "vfat",
        TMPFS_MAGIC => "tmpfs",
        RAMFS_MAGIC => "ramfs",
        _ => "unknown",
    }
}

/// Refuses a work dir in memory: fsync there returns at once and every figure would lie.
pub fn refuse_memory_fs(path: &Path) -> Result<(i64, &'static str)> {
    let (magic, name) = fs_type(path)?;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        bail!(
            "the work dir {} is on {name}: a sync there returns at once, so every figure would measure \
             a page cache, not a disk. Pass --work-dir on a real disk.",
            path.display()
        );
    }
    Ok((magic, name))
}

pub struct SyncRate {
    pub syncs: u64,
    pub elapsed: Duration,
    pub median: Duration,
    pub p99: Duration,
}

/// Writes 4 KiB and fdatasyncs, in a loop for about `span`, in a preallocated file (so the
/// sync flushes data, not block allocation).
pub fn fdatasync_rate(dir: &Path, span: Duration) -> Result<SyncRate> {
    let path = dir.join("fdatasync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    const SLOTS: u64 = 256;
    let mut block = vec![0u8; 4096];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    for slot in 0..SLOTS {
        file.write_all_at(&block, slot * 4096)?;
    }
    file.sync_all()?;
    let fd = file.as_raw_fd();
    let mut times = Vec::new();
    let started = Instant::now();
    let mut i: u64 = 0;
    while started.elapsed() < span || times.len() < 3 {
        block[0] = i as u8;
        file.write_all_at(&block, (i % SLOTS) * 4096)?;
        let t = Instant::now();
        // SAFETY: `fd` is the open descriptor of `file`, alive for this call.
        if unsafe { libc::fdatasync(fd) } != 0 {
            return Err(std::io::Error::last_os_error()).context("fdatasync");
        }
        times.push(t.elapsed());
        i += 1;
        if times.len() >= 100_000 {
            break;
        }
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    Ok(SyncRate {
        syncs: times.len() as u64,
        elapsed,
        median,
        p99,
    })
}
