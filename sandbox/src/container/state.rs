//! The files in a container's state directory, shared by the daemon and the monitor.
//! Every record is small JSON written atomically (temp file, fsync, rename), so a reader
//! sees either the old or the new content, also after a crash.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The `ContainerSpec`, written by `create`.
pub const CONFIG: &str = "config.json";
/// The container process (`ProcessId`), written by the monitor once the process exists.
pub const PID: &str = "pid.json";
/// The monitor process (`ProcessId`).
pub const MONITOR: &str = "monitor.json";
/// `StartRecord`, written once execve succeeded.
pub const STARTED: &str = "started.json";
/// `ExitRecord`, written after the process exited and its output was drained.
pub const EXIT: &str = "exit.json";
/// The monitor's control socket (start, reopen-log).
pub const CONTROL: &str = "ctl";
/// The monitor's attach socket (see `crate::monitor::attach`).
pub const ATTACH: &str = "attach";
/// Mount point of the container's root inside its own mount namespace (empty on the host).
pub const ROOTFS: &str = "rootfs";

/// A process identity that survives PID reuse: the pid plus its start time in clock ticks
/// after boot (`/proc/<pid>/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    pub fn of(pid: i32) -> io::Result<Self> {
        let (start_time, _) = proc_stat(pid)?;
        Ok(Self { pid, start_time })
    }

    /// True while this very process exists and has not exited (zombies count as exited).
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Ok((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// Start time and state letter from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> io::Result<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().and_then(|s| s.chars().next());
    let start = fields.get(19).and_then(|s| s.parse().ok());
    match (start, state) {
        (Some(start), Some(state)) => Ok((start, state)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed /proc stat",
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    pub started_at_ns: i64,
}

/// How the container process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal number.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at_ns: i64,
    pub oom_killed: bool,
    /// Why the process never ran, or why its end is unknown.
    pub message: Option<String>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Writes a record that must survive a host crash (the spec, the exit status).
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(dir, name, &bytes, true)
}

/// Writes a record about live processes (pids, start time): atomic, but not synced to
/// disk, since after a host crash those processes are gone anyway. Each sync costs ~8 ms
/// on a virtio disk, on the path of every container start.
pub fn write_json_volatile<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(dir, name, &bytes, false)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    if durable {
        // Make the rename itself durable.
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_the_current_process() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let rec = ExitRecord {
            exit_code: 137,
            signal: Some(9),
            finished_at_ns: 1,
            oom_killed: true,
            message: None,
        };
        write_json(dir.path(), EXIT, &rec).unwrap();
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), EXIT).unwrap(),
            Some(rec)
        );
        assert_eq!(read_json::<ExitRecord>(dir.path(), "none").unwrap(), None);
        assert!(!dir.path().join(".exit.json.tmp").exists());
    }
}
