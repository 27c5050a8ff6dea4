//! Network namespaces of removed pods, released in batches while no pod network is being
//! set up or torn down.
//!
//! Destroying a network namespace makes the kernel run RCU barriers (`cleanup_net`, on a
//! workqueue, tens of milliseconds here). A CNI DEL deleting a pod's veth meanwhile needs a
//! barrier of its own and queues behind them: with pods removed one after the other, DEL
//! took about 39 ms instead of 22 (`bench/cni_floor.py`, each namespace deleted right
//! away or all at the end).
//!
//! So RemovePodSandbox hands the namespace here as an open fd, which keeps it alive with no
//! mount and no way in, and this closes the held fds together once the pod networks have
//! been quiet for a moment (or too many are held, or one is held too long); the kernel then
//! also tears the batch down in one go. A daemon that exits closes them all.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the reaper batches: release when no pod network call ran for `quiet`, or at
/// `max_held` namespaces, or when the oldest is `max_age` old.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub quiet: Duration,
    pub max_held: usize,
    pub max_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            quiet: Duration::from_millis(100),
            max_held: 64,
            max_age: Duration::from_secs(5),
        }
    }
}

pub struct RetiredNetns {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    held: Vec<(File, Instant)>,
    in_flight: usize,
    last_busy: Instant,
    reaper_started: bool,
}

/// A pod network call (CNI ADD or DEL) in flight; ends when dropped.
pub struct Busy<'a>(&'a Shared);

impl RetiredNetns {
    pub fn new(limits: Limits) -> Self {
        RetiredNetns {
            shared: Arc::new(Shared {
                limits,
                state: Mutex::new(State {
                    held: Vec::new(),
                    in_flight: 0,
                    last_busy: Instant::now(),
                    reaper_started: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// Keeps `netns` (an open namespace file) until the next batch is released.
    pub fn retire(&self, netns: File) {
        let mut st = self.shared.state.lock().expect("retired netns");
        if !st.reaper_started {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("netns-reaper".into())
                .spawn(move || shared.reap());
            if spawned.is_err() {
                return; // dropping `netns` releases it right away
            }
            st.reaper_started = true;
        }
        st.held.push((netns, Instant::now()));
        self.shared.changed.notify_all();
    }

    /// Marks a pod network call in flight until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.shared.state.lock().expect("retired netns").in_flight += 1;
        Busy(&self.shared)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().expect("retired netns");
        st.in_flight -= 1;
        st.last_busy = Instant::now();
        self.0.changed.notify_all();
    }
}

impl Shared {
    fn reap(&self) {
        let mut st = self.state.lock().expect("retired netns");
        loop {
            let Some(oldest) = st.held.first().map(|(_, at)| *at) else {
                st = self.changed.wait(st).expect("retired netns");
                continue;
            };
            let now = Instant::now();
            let too_old = oldest + self.limits.max_age;
            let quiet_since = st.last_busy + self.limits.quiet;
            let quiet = st.in_flight == 0 && now >= quiet_since;
            if quiet || st.held.len() >= self.limits.max_held || now >= too_old {
                let batch = std::mem::take(&mut st.held);
                drop(st);
                drop(batch); // closing the fds lets the kernel destroy the namespaces
                st = self.state.lock().expect("retired netns");
                continue;
            }
            let wake = if st.in_flight == 0 {
                quiet_since.min(too_old)
            } else {
                too_old
            };
            st = self
                .changed
                .wait_timeout(st, wake.saturating_duration_since(now))
                .expect("retired netns")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A pipe's write end stands in for a namespace: its reader sees EOF once it is closed.
    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    fn closed_within(reader: &mut File, d: Duration) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(reader);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, d.as_millis() as i32) };
        n == 1 && reader.read(&mut [0u8; 1]).unwrap() == 0
    }

    fn limits(max_held: usize, max_age_ms: u64) -> Limits {
        Limits {
            quiet: Duration::from_millis(50),
            max_held,
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    #[test]
    fn released_once_pod_networks_are_quiet() {
        let retired = RetiredNetns::new(limits(64, 60_000));
        let (mut r, w) = pipe();
        let busy = retired.busy();
        retired.retire(w);
        assert!(!closed_within(&mut r, Duration::from_millis(200)));
        drop(busy);
        assert!(closed_within(&mut r, Duration::from_secs(2)));
    }

    #[test]
    fn released_when_too_many_or_too_old_even_while_busy() {
        let retired = RetiredNetns::new(limits(2, 300));
        let _busy = retired.busy();
        let (mut r1, w1) = pipe();
        let (mut r2, w2) = pipe();
        retired.retire(w1);
        retired.retire(w2);
        assert!(closed_within(&mut r1, Duration::from_secs(2)));
        assert!(closed_within(&mut r2, Duration::from_secs(2)));
        let (mut r3, w3) = pipe();
        retired.retire(w3);
        assert!(!closed_within(&mut r3, Duration::from_millis(100)));
        assert!(closed_within(&mut r3, Duration::from_secs(2)));
    }
}
