//! System RAM (from /proc/meminfo) and free disk (statvfs through `fs4`): what a CPU run plans
//! against, and whether a download fits the cache's filesystem.

use crate::GpuError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// System memory: total, and available to a new process without swapping (`MemAvailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Space on the filesystem holding a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpace {
    pub path: PathBuf,
    pub total_bytes: u64,
    /// Available to an unprivileged user (what a download can use).
    pub available_bytes: u64,
}

/// Reads /proc/meminfo.
pub fn system_memory() -> Result<SystemMemory, GpuError> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|e| GpuError::System { path: path.into(), reason: e.to_string() })?;
    parse_meminfo(&text).map_err(|reason| GpuError::System { path: path.into(), reason })
}

/// Parses the text of /proc/meminfo (values are in kB = 1024 bytes).
pub fn parse_meminfo(text: &str) -> Result<SystemMemory, String> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        let kb = line.split(':').nth(1)?.split_whitespace().next()?.parse::<u64>().ok()?;
        Some(kb * 1024)
    };
    let total_bytes = field("MemTotal").ok_or("no MemTotal line")?;
    // Kernels before 3.14 lack MemAvailable: free + page cache is the usual stand-in.
    let available_bytes =
        field("MemAvailable").or_else(|| Some(field("MemFree")? + field("Cached").unwrap_or(0))).ok_or("no MemAvailable or MemFree line")?;
    Ok(SystemMemory { total_bytes, available_bytes })
}

/// Free space on the filesystem of `path`; a folder that does not exist yet is looked up
/// through its nearest existing parent (the cache folder may not be created yet).
pub fn disk_space(path: &Path) -> Result<DiskSpace, GpuError> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    let err = |source| GpuError::Disk { path: path.to_path_buf(), source };
    Ok(DiskSpace {
        path: path.to_path_buf(),
        total_bytes: fs4::total_space(probe).map_err(err)?,
        available_bytes: fs4::available_space(probe).map_err(err)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_parsed_in_kib() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1000000 kB\nMemAvailable:    9000000 kB\nCached: 5 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total_bytes, 16_318_412 * 1024);
        assert_eq!(m.available_bytes, 9_000_000 * 1024);
        let old = "MemTotal: 100 kB\nMemFree: 10 kB\nCached: 20 kB\n";
        assert_eq!(parse_meminfo(old).unwrap().available_bytes, 30 * 1024);
        assert!(parse_meminfo("nothing").unwrap_err().contains("MemTotal"));
    }

    #[test]
    fn this_machine_has_memory_and_disk() {
        let m = system_memory().unwrap();
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
        let dir = std::env::temp_dir();
        let d = disk_space(&dir.join("not/yet/created")).unwrap();
        assert!(d.total_bytes > 0 && d.available_bytes <= d.total_bytes);
    }
}
