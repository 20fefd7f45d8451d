//! What the host has, when the operator does not say: cpus, memory, disk, a port range.

use shoal_core::ResourceSet;

/// The host's resources in the Mesos text form (memory and disk keep some headroom for the
/// system, as Mesos does).
pub fn detect(work_dir: &std::path::Path) -> ResourceSet {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_mb = meminfo_total_mb().unwrap_or(1024);
    let mem = if mem_mb > 2048 {
        mem_mb - 1024
    } else {
        mem_mb / 2
    };
    let disk_mb = disk_free_mb(work_dir).unwrap_or(1024);
    let disk = if disk_mb > 10_240 {
        disk_mb - 5_120
    } else {
        disk_mb / 2
    };
    ResourceSet::parse(&format!(
        "cpus:{cpus};mem:{mem};disk:{disk};ports:[31000-32000]"
    ))
    .expect("well-formed")
}

fn meminfo_total_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn disk_free_mb(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64 / (1024 * 1024))
}
