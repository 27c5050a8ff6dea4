//! Directory trees on their way out. Removing a container or a pod renames its directories
//! into a trash directory on the same filesystem, one atomic step, and a background thread
//! deletes them from there: the Remove call does not wait for a tree of unlinks (about a
//! millisecond for a small container on a journaling disk, seconds for a big writable
//! layer). A crash leaves the rest in the trash, and the next start (`Trash::open`) deletes
//! it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};

pub struct Trash {
    /// One trash directory per filesystem, with its device number.
    dirs: Vec<(u64, PathBuf)>,
    /// The deleting thread, started with the first discard.
    worker: Mutex<Option<Sender<PathBuf>>>,
}

impl Trash {
    /// No trash: `discard` deletes in place (tests and tools).
    pub fn none() -> Self {
        Trash {
            dirs: Vec::new(),
            worker: Mutex::new(None),
        }
    }

    /// Trash directories at `dirs`, created if needed; what a crash left in them is
    /// deleted in the background.
    pub fn open(dirs: &[PathBuf]) -> io::Result<Self> {
        let mut trash = Trash::none();
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
            let dev = std::fs::metadata(dir)?.dev();
            if !trash.dirs.iter().any(|(d, _)| *d == dev) {
                trash.dirs.push((dev, dir.clone()));
            }
        }
        for (_, dir) in &trash.dirs {
            for entry in std::fs::read_dir(dir)?.flatten() {
                trash.delete_later(entry.path());
            }
        }
        Ok(trash)
    }

    /// Removes the directory tree at `path`: moved into the trash on its filesystem and
    /// deleted in the background, or deleted here if no trash shares its mount. A missing
    /// path is fine.
    pub fn discard(&self, path: &Path) -> io::Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some((_, dir)) = self.dirs.iter().find(|(dev, _)| *dev == meta.dev()) {
            let target = dir.join(unique_name(path));
            match std::fs::rename(path, &target) {
                Ok(()) => {
                    self.delete_later(target);
                    return Ok(());
                }
                // Same device, another mount (a bind mount): delete in place.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        delete(path)
    }

    fn delete_later(&self, path: PathBuf) {
        let mut worker = self.worker.lock().expect("trash worker");
        let sender = worker.get_or_insert_with(start_worker);
        if let Err(unsent) = sender.send(path) {
            // The thread is gone (it never panics on purpose); do it here.
            *worker = None;
            log_failure(&unsent.0, delete(&unsent.0));
        }
    }
}

fn start_worker() -> Sender<PathBuf> {
    let (tx, rx) = channel::<PathBuf>();
    let spawned = std::thread::Builder::new()
        .name("trash".into())
        .spawn(move || {
            for path in rx {
                log_failure(&path, delete(&path));
            }
        });
    if let Err(e) = spawned {
        // Sends fail from now on and each discard deletes in place.
        tracing::warn!(error = %e, "starting the trash thread");
    }
    tx
}

fn delete(path: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| io::Error::new(e.kind(), format!("removing {}: {e}", path.display()))),
    }
}

fn log_failure(path: &Path, r: io::Result<()>) {
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "emptying the trash");
    }
}

/// `<start>-<n>-<name>`: `<start>` is when this process first named an entry (ns since the
/// epoch), so a restarted daemon, even with a recycled pid, never picks the name of an
/// entry its predecessor left for deletion.
fn unique_name(path: &Path) -> String {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{start}-{n}-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        d
    }

    fn wait_empty(dir: &Path) {
        for _ in 0..500 {
            if std::fs::read_dir(dir).unwrap().next().is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} was not emptied", dir.display());
    }

    #[test]
    fn discarded_trees_are_moved_then_deleted() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("trash");
        let trash = Trash::open(std::slice::from_ref(&bin)).unwrap();
        let victim = tree(root.path(), "victim");
        trash.discard(&victim).unwrap();
        assert!(!victim.exists());
        wait_empty(&bin);
        // Missing paths and files are fine too.
        trash.discard(&victim).unwrap();
        std::fs::write(root.path().join("file"), b"y").unwrap();
        trash.discard(&root.path().join("file")).unwrap();
        assert!(!root.path().join("file").exists());
    }

    #[test]
    fn leftovers_of_a_crash_go_at_open() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("trash");
        tree(&bin, "1-0-left-behind");
        let _trash = Trash::open(std::slice::from_ref(&bin)).unwrap();
        wait_empty(&bin);
    }

    #[test]
    fn without_a_trash_discard_deletes_in_place() {
        let root = tempfile::tempdir().unwrap();
        let victim = tree(root.path(), "victim");
        Trash::none().discard(&victim).unwrap();
        assert!(!victim.exists());
    }
}
