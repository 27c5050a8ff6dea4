//! The pod's cgroup with the cgroupfs driver: `<parent>/<pod-id>` in every mounted
//! hierarchy (each v1 controller, the named ones, and the v2 tree of a hybrid or unified
//! host), so the leaf name ends in the pod id. The kubelet normally creates the parent;
//! missing parents are created (and kept) here.
//!
//! This is a handful of mkdir/rmdir calls, cheaper and easier to follow than a general
//! cgroup library; limits belong to containers and are set by their own code.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// The parent used when the pod config names none.
pub const DEFAULT_PARENT: &str = "/berth";

/// Checks and normalises a cgroup parent: an absolute cgroupfs path without `..`.
pub fn relative_path(parent: &str, pod_id: &str) -> Result<PathBuf, String> {
    let parent = if parent.is_empty() {
        DEFAULT_PARENT
    } else {
        parent
    };
    let p = Path::new(parent);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(s),
            _ => {
                return Err(format!(
                    "cgroup parent {parent:?} must be a cgroupfs path without '.' or '..'"
                ));
            }
        }
    }
    if parent.ends_with(".slice") {
        return Err(format!(
            "cgroup parent {parent:?} is a systemd slice; berth uses the cgroupfs driver"
        ));
    }
    out.push(pod_id);
    Ok(out)
}

/// The mount points of every cgroup hierarchy.
pub fn hierarchies() -> &'static [PathBuf] {
    static H: OnceLock<Vec<PathBuf>> = OnceLock::new();
    H.get_or_init(|| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| parse_mountinfo(&t))
            .unwrap_or_default()
    })
}

fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split_whitespace().next().unwrap_or("");
        if (fstype == "cgroup" || fstype == "cgroup2")
            && let Some(mp) = left.split_whitespace().nth(4)
        {
            out.push(PathBuf::from(mp));
        }
    }
    out
}

/// Creates `rel` in every hierarchy; returns the directories created for the leaf (to
/// remove later). On failure the leaves created so far are removed again.
pub fn create(rel: &Path) -> io::Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for root in hierarchies() {
        match create_in(root, rel) {
            Ok(dir) => made.push(dir),
            Err(e) => {
                let _ = remove(&made); // best effort; the creation error matters more
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating cgroup {}: {e}", root.join(rel).display()),
                ));
            }
        }
    }
    Ok(made)
}

fn create_in(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        let parent = dir.clone();
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => inherit_cpuset(&parent, &dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and no task can join
/// it until they are filled in from the parent.
fn inherit_cpuset(parent: &Path, dir: &Path) -> io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        let Ok(current) = std::fs::read_to_string(&own) else {
            return Ok(()); // not a cpuset hierarchy
        };
        if current.trim().is_empty() {
            std::fs::write(&own, std::fs::read_to_string(parent.join(file))?.trim())?;
        }
    }
    Ok(())
}

/// The leaf directories `create(rel)` makes, whether or not they exist yet.
pub fn leaf_dirs(rel: &Path) -> Vec<PathBuf> {
    hierarchies().iter().map(|root| root.join(rel)).collect()
}

/// The `cgroup.procs` files that put a process in the pod's cgroups.
pub fn procs_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().map(|d| d.join("cgroup.procs")).collect()
}

/// SIGKILLs every process in the leaf directories and waits (up to a second) until they
/// have left them. For what a crash left: a pod init started before the daemon died, with
/// no pin yet to find it by, holds the cgroup (and the pod's network namespace) forever.
pub fn kill_all(dirs: &[PathBuf]) {
    let procs = |d: &PathBuf| -> Vec<i32> {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let mut left: Vec<i32> = dirs.iter().flat_map(procs).collect();
        left.sort_unstable();
        left.dedup();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for pid in left {
            // SAFETY: kill(2) on a pid listed in the cgroup; a recycled pid could only be
            // one that joined this cgroup, which nothing but the pod's processes do.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Removes the leaf directories; a missing one is fine. Returns the first failure.
pub fn remove(dirs: &[PathBuf]) -> io::Result<()> {
    let mut first = Ok(());
    for d in dirs {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if first.is_ok() {
                    first = Err(io::Error::new(
                        e.kind(),
                        format!("removing cgroup {}: {e}", d.display()),
                    ));
                }
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_checked() {
        assert_eq!(
            relative_path("/kubepods/besteffort/pod1", "abc").unwrap(),
            PathBuf::from("kubepods/besteffort/pod1/abc")
        );
        assert_eq!(
            relative_path("", "abc").unwrap(),
            PathBuf::from("berth/abc")
        );
        assert!(relative_path("/kubepods/../../etc", "abc").is_err());
        assert!(relative_path("kubepods.slice", "abc").is_err());
    }

    #[test]
    fn mountinfo_lists_cgroup_hierarchies() {
        let t = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                 31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                 32 25 0:28 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mountinfo(t),
            [
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
    }
}
