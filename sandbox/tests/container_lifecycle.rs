//! Native containers on the real kernel (run as root): a busybox rootfs on overlayfs, real
//! namespaces, cgroups and the monitor binary. Every test cleans up through `Fixture`'s Drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sandbox::container::cgroup::{Cgroup, Hierarchy, Resources};
use sandbox::container::spec::{
    BindMount, CgroupSpec, ContainerSpec, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, Namespace,
    Namespaces, Process, Propagation, Rootfs,
};
use sandbox::container::state::{self, ExitRecord, ProcessId};
use sandbox::container::{self, ContainerError, ContainerState, ExecRequest, MonitorCommand, caps};
use sandbox::trash::Trash;

fn monitor() -> MonitorCommand {
    MonitorCommand {
        program: env!("CARGO_BIN_EXE_berth-monitor").into(),
        args: vec![],
    }
}

/// A busybox image layer, a container state dir, a cgroup name; all removed on drop.
struct Fixture {
    tmp: tempfile::TempDir,
    cgroup: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("layer/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
            }
        }
        std::fs::create_dir_all(tmp.path().join("layer/etc")).unwrap();
        let unique = tmp.path().file_name().unwrap().to_owned();
        Self {
            cgroup: Path::new("berth-test").join(unique).join("ctr"),
            tmp,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn dir(&self) -> PathBuf {
        self.path("state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("0.log")).unwrap_or_default()
    }

    fn spec(&self, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            image_volumes: Vec::new(),
            devices: Vec::new(),
            rootfs: Rootfs {
                lower: vec![self.path("layer")],
                upper: self.path("upper"),
                work: self.path("work"),
                readonly: false,
            },
            process: Process {
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                rlimits: vec![],
                no_new_privs: true,
                capabilities: caps::DEFAULT_CAPABILITIES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                oom_score_adj: None,
                seccomp_default: false,
                seccomp_profile: None,
                stdin: false,
                stdin_once: false,
                exec_self: false,
                pass_files: Vec::new(),
                tty: false,
            },
            namespaces: Namespaces::default(),
            hostname: None,
            shm: None,
            mounts: vec![],
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(PathBuf::from).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS.iter().map(PathBuf::from).collect(),
            cgroup: Some(CgroupSpec {
                path: self.cgroup.clone(),
                resources: Resources::default(),
            }),
            log_path: self.path("0.log"),
            privileged: false,
            user_namespace: None,
        }
    }

    /// create + start + wait for the exit record.
    fn run(&self, spec: &ContainerSpec) -> ExitRecord {
        container::create(&monitor(), spec, &self.dir()).unwrap();
        container::start(&self.dir()).unwrap();
        self.wait_exit()
    }

    fn wait_exit(&self) -> ExitRecord {
        match container::wait(&self.dir(), Duration::from_secs(30)).unwrap() {
            ContainerState::Exited(e) => e,
            other => panic!("still {other:?}"),
        }
    }

    /// The text of stdout records, one entry per record.
    fn stdout(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                let (_, stream, _, text) = (f.next()?, f.next()?, f.next()?, f.next()?);
                (stream == "stdout").then(|| text.to_owned())
            })
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = container::remove(&self.dir(), &Trash::none());
        let parent = self.cgroup.parent().unwrap();
        let _ = Cgroup::at(&Hierarchy::detect(), parent).remove();
        // Shared by concurrently running tests: the last one out removes it.
        for dir in Cgroup::at(&Hierarchy::detect(), Path::new("berth-test")).dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn running_pid(dir: &Path) -> i32 {
    for _ in 0..500 {
        if let ContainerState::Running { pid, .. } = container::state(dir).unwrap() {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("container did not run");
}

#[test]
fn echo_hello_reaches_the_cri_log() {
    let fx = Fixture::new();
    let exit = fx.run(&fx.spec(&["sh", "-c", "echo hello; echo oops >&2"]));
    assert_eq!(exit.exit_code, 0);
    assert!(!exit.oom_killed);
    let log = fx.log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    let hello: Vec<&str> = lines[0].splitn(4, ' ').collect();
    assert!(hello[0].ends_with('Z') && hello[0].contains('T'), "{log}");
    assert_eq!(&hello[1..], ["stdout", "F", "hello"]);
    assert!(lines[1].ends_with(" stderr F oops"), "{log}");
}

#[test]
fn lifecycle_states_and_exit_codes() {
    let fx = Fixture::new();
    let created =
        container::create(&monitor(), &fx.spec(&["sh", "-c", "exit 3"]), &fx.dir()).unwrap();
    assert_eq!(
        container::state(&fx.dir()).unwrap(),
        ContainerState::Created { pid: created.pid }
    );
    container::start(&fx.dir()).unwrap();
    let exit = fx.wait_exit();
    assert_eq!((exit.exit_code, exit.signal), (3, None));
    assert!(exit.finished_at_ns > created.created_at_ns);
    assert!(matches!(
        container::start(&fx.dir()),
        Err(ContainerError::NotRunning)
    ));
}

#[test]
fn sigkill_is_exit_137() {
    let fx = Fixture::new();
    container::create(&monitor(), &fx.spec(&["sleep", "100"]), &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    container::signal(&fx.dir(), libc::SIGKILL).unwrap();
    let exit = fx.wait_exit();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert!(matches!(
        container::signal(&fx.dir(), libc::SIGKILL),
        Err(ContainerError::NotRunning)
    ));
}

#[test]
fn a_created_container_can_be_removed_without_leaks() {
    let fx = Fixture::new();
    container::create(&monitor(), &fx.spec(&["true"]), &fx.dir()).unwrap();
    let cgroup = Cgroup::at(&Hierarchy::detect(), &fx.cgroup);
    assert!(cgroup.dirs().all(Path::exists));
    container::remove(&fx.dir(), &Trash::none()).unwrap();
    assert!(!fx.dir().exists());
    assert!(!fx.path("upper").exists());
    assert!(cgroup.dirs().all(|d| !d.exists()));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(fx.tmp.path().to_str().unwrap()));
    container::remove(&fx.dir(), &Trash::none()).unwrap();
}

#[test]
fn long_lines_split_and_a_trailing_fragment_is_partial() {
    let fx = Fixture::new();
    let script = "head -c 40000 /dev/zero | tr '\\0' a; echo; printf tail";
    assert_eq!(fx.run(&fx.spec(&["sh", "-c", script])).exit_code, 0);
    let log = fx.log();
    let tags: Vec<(&str, usize)> = log
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            (f[2], f[3].len())
        })
        .collect();
    assert_eq!(
        tags,
        [("P", 16384), ("P", 16384), ("F", 40000 - 32768), ("P", 4)]
    );
}

#[test]
fn reopen_log_continues_in_a_new_file() {
    let fx = Fixture::new();
    let shared = fx.path("shared");
    std::fs::create_dir(&shared).unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "echo before; while [ ! -e /shared/go ]; do sleep 0.02; done; echo after",
    ]);
    spec.mounts.push(BindMount {
        source: shared.clone(),
        destination: "/shared".into(),
        readonly: false,
        recursive_readonly: false,
        propagation: Propagation::Private,
    });
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    for _ in 0..500 {
        if fx.log().contains("before") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let rotated = fx.path("0.log.1");
    std::fs::rename(fx.path("0.log"), &rotated).unwrap();
    container::reopen_log(&fx.dir()).unwrap();
    std::fs::write(shared.join("go"), "").unwrap();
    assert_eq!(fx.wait_exit().exit_code, 0);
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("stdout F before") && !old.contains("after"),
        "{old}"
    );
    assert_eq!(fx.stdout(), ["after"]);
    // Not running any more: reopening is an error, and no new file appears.
    std::fs::remove_file(fx.path("0.log")).unwrap();
    assert!(container::reopen_log(&fx.dir()).is_err());
    assert!(!fx.path("0.log").exists());
}

#[test]
fn the_monitor_outlives_its_parent_and_records_the_exit() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "sleep 0.3; exit 7"]);
    spec.validate().unwrap();
    spec.process.env.push("X=1".into());
    // The "daemon" here is a shell that creates the container and exits at once.
    std::fs::create_dir(fx.dir()).unwrap();
    std::fs::create_dir(fx.dir().join(state::ROOTFS)).unwrap();
    for layer in ["upper", "work"] {
        std::fs::create_dir(fx.path(layer)).unwrap();
    }
    state::write_json(&fx.dir(), state::CONFIG, &spec).unwrap();
    Cgroup::at(&Hierarchy::detect(), &fx.cgroup)
        .create(&Resources::default())
        .unwrap();
    let daemon = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} create {} >/dev/null; kill -9 $$",
            env!("CARGO_BIN_EXE_berth-monitor"),
            fx.dir().display()
        ))
        .status()
        .unwrap();
    assert_eq!(daemon.code(), None, "the stand-in daemon was killed");
    // The handshake went to /dev/null: wait for the process record instead.
    for _ in 0..500 {
        if fx.dir().join(state::PID).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let monitor: ProcessId = state::read_json(&fx.dir(), state::MONITOR)
        .unwrap()
        .unwrap();
    assert!(monitor.is_alive());
    let status = std::fs::read_to_string(format!("/proc/{}/status", monitor.pid)).unwrap();
    let ppid: i32 = field(&status, "PPid:").parse().unwrap();
    assert_ne!(ppid, std::process::id() as i32);
    let rss_kib: u64 = field(&status, "VmRSS:")
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", monitor.pid)).unwrap();
    eprintln!(
        "monitor VmRSS: {rss_kib} KiB (RssAnon {}, RssFile {}, Pss {})",
        field(&status, "RssAnon:"),
        field(&status, "RssFile:"),
        field(&rollup, "Pss:")
    );
    container::start(&fx.dir()).unwrap();
    assert_eq!(fx.wait_exit().exit_code, 7);
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap()
        .trim()
}

#[test]
fn oom_kill_is_recorded() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=20M"]);
    let limits = &mut spec.cgroup.as_mut().unwrap().resources;
    limits.memory_limit_bytes = Some(15 << 20);
    limits.memory_swap_limit_bytes = Some(15 << 20);
    let exit = fx.run(&spec);
    assert_eq!((exit.exit_code, exit.oom_killed), (137, true), "{exit:?}");
}

#[test]
fn own_pid_namespace_and_a_joined_one() {
    let fx = Fixture::new();
    let first = fx.spec(&["sleep", "100"]);
    container::create(&monitor(), &first, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    let pid = running_pid(&fx.dir());

    let other = Fixture::new();
    let mut spec = other.spec(&["sh", "-c", "echo $$; cat /proc/1/cmdline"]);
    spec.namespaces.pid = Namespace::Join(format!("/proc/{pid}/ns/pid").into());
    assert_eq!(other.run(&spec).exit_code, 0);
    let out = other.stdout();
    assert_ne!(out[0], "1");
    assert!(out[1].starts_with("sleep"), "{out:?}");

    let own = Fixture::new();
    assert_eq!(own.run(&own.spec(&["sh", "-c", "echo $$"])).exit_code, 0);
    assert_eq!(own.stdout(), ["1"]);
}

#[test]
fn hostname_cwd_and_env() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "hostname; pwd; echo $FOO"]);
    spec.hostname = Some("berth-test".into());
    spec.process.cwd = "/work/dir".into();
    spec.process.env.push("FOO=bar baz".into());
    assert_eq!(fx.run(&spec).exit_code, 0);
    assert_eq!(fx.stdout(), ["berth-test", "/work/dir", "bar baz"]);
}

#[test]
fn volumes_readonly_and_through_a_symlink() {
    let fx = Fixture::new();
    let data = fx.path("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&data, fx.path("link")).unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "touch /rw/made && touch /ro/x 2>/dev/null; echo ro=$?; grep ' /ro ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
    ]);
    for (dest, readonly) in [("/rw", false), ("/ro", true)] {
        spec.mounts.push(BindMount {
            source: fx.path("link"),
            destination: dest.into(),
            readonly,
            recursive_readonly: false,
            propagation: Propagation::Private,
        });
    }
    // A file (like the pod's resolv.conf) onto a path the image does not have.
    std::fs::write(fx.path("resolv.conf"), "nameserver 10.10.10.10\n").unwrap();
    spec.mounts.push(BindMount {
        source: fx.path("resolv.conf"),
        destination: "/etc/resolv.conf".into(),
        readonly: true,
        recursive_readonly: false,
        propagation: Propagation::Private,
    });
    spec.process.args[2].push_str("; cat /etc/resolv.conf");
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(fx.stdout(), ["ro=1", "ro", "nameserver 10.10.10.10"]);
    assert!(data.join("made").exists());
}

/// Unmounts a host mount made by a test, also when the test fails.
struct HostMount(PathBuf);

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn recursive_readonly_volumes_cover_submounts() {
    let fx = Fixture::new();
    let data = fx.path("data");
    let sub = data.join("tmpfs");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("none"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let _tmpfs = HostMount(sub.clone());
    // /ro is read-only only at its top; /rro all the way down.
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "for f in /ro/top /ro/tmpfs/f /rro/top /rro/tmpfs/f; do \
           touch $f 2>/dev/null && echo $f=rw || echo $f=ro; done; \
         grep -E ' /rro(/tmpfs)? ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1",
    ]);
    for (dest, recursive_readonly) in [("/ro", false), ("/rro", true)] {
        spec.mounts.push(BindMount {
            source: data.clone(),
            destination: dest.into(),
            readonly: true,
            recursive_readonly,
            propagation: Propagation::Private,
        });
    }
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(
        fx.stdout(),
        [
            "/ro/top=ro",
            "/ro/tmpfs/f=rw",
            "/rro/top=ro",
            "/rro/tmpfs/f=ro",
            "/rro ro",
            "/rro/tmpfs ro",
        ]
    );
    // The host's mounts are untouched: the tmpfs is still writable there.
    std::fs::write(sub.join("host"), "x").unwrap();
}

/// A process in a new user namespace mapping 0..65536 to host 100000..; killed on drop.
struct UserNamespaceHolder(std::process::Child);

impl UserNamespaceHolder {
    const HOST_ROOT: u32 = 100000;

    fn new() -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/busybox");
        cmd.args(["sleep", "60"]);
        // SAFETY: unshare is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().unwrap();
        for map in ["uid_map", "gid_map"] {
            let line = format!("0 {} 65536\n", Self::HOST_ROOT);
            std::fs::write(format!("/proc/{}/{map}", child.id()), line).unwrap();
        }
        Self(child)
    }

    fn spec(&self) -> sandbox::container::spec::UserNamespace {
        sandbox::container::spec::UserNamespace {
            path: format!("/proc/{}/ns/user", self.0.id()).into(),
            root_uid: Self::HOST_ROOT,
            root_gid: Self::HOST_ROOT,
        }
    }
}

impl Drop for UserNamespaceHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn user_namespace_with_idmapped_rootfs_and_volumes() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new();
    let holder = UserNamespaceHolder::new();
    let vol = fx.path("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("host-file"), "x").unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; id -u; \
         stat -c '%u:%g' /bin/busybox / /vol/host-file; \
         touch /new /vol/made && echo wrote",
    ]);
    spec.user_namespace = Some(holder.spec());
    spec.mounts.push(BindMount {
        source: vol.clone(),
        destination: "/vol".into(),
        readonly: false,
        recursive_readonly: false,
        propagation: Propagation::Private,
    });
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(
        fx.stdout(),
        ["0 100000 65536", "0", "0:0", "0:0", "0:0", "wrote"]
    );
    // The container's root is host uid 100000 in its writable layer; through the idmapped
    // volume, its files belong to host root.
    assert_eq!(fx.path("upper/new").metadata().unwrap().uid(), 100000);
    assert_eq!(vol.join("made").metadata().unwrap().uid(), 0);
}

#[test]
fn secure_defaults_masked_paths_caps_and_fds() {
    let fx = Fixture::new();
    // This kernel has no /proc/kcore; /proc/timer_list and /sys/firmware are masked alike.
    let script = "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; grep ' /proc/sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1; \
                  grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | tr '\\t' ' '";
    assert_eq!(
        fx.run(&fx.spec(&["sh", "-c", script])).exit_code,
        0,
        "{}",
        fx.log()
    );
    assert_eq!(
        fx.stdout(),
        [
            "0",
            "0",
            "ro",
            "CapInh: 0000000000000000",
            "CapPrm: 00000000a80425fb",
            "CapEff: 00000000a80425fb",
            "CapBnd: 00000000a80425fb",
            "CapAmb: 0000000000000000",
            "NoNewPrivs: 1",
            "Seccomp: 0",
        ]
    );
}

#[test]
fn runtime_default_seccomp_is_on() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "grep Seccomp: /proc/self/status | tr '\\t' ' '; unshare -m true 2>/dev/null; echo unshare=$?",
    ]);
    spec.process.seccomp_default = true;
    assert_eq!(fx.run(&spec).exit_code, 0);
    assert_eq!(fx.stdout(), ["Seccomp: 2", "unshare=1"]);
}

#[test]
fn a_missing_executable_fails_create_with_a_clear_message() {
    let fx = Fixture::new();
    let err = container::create(&monitor(), &fx.spec(&["nope"]), &fx.dir()).unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"exec: "nope": executable file not found in $PATH"#),
        "{err}"
    );
    assert!(!fx.dir().exists(), "creation was undone");
    let cgroup = Cgroup::at(&Hierarchy::detect(), &fx.cgroup);
    assert!(cgroup.dirs().all(|d| !d.exists()));
}

#[test]
fn exec_sync_runs_inside_and_times_out() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sleep", "100"]);
    spec.process.env.push("WHO=container".into());
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    let run = |args: &[&str], timeout| {
        let req = ExecRequest {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["EXTRA=1".into()],
            exec_self: false,
        };
        container::exec_sync(&monitor(), &fx.dir(), &req, timeout)
    };
    let out = run(
        &[
            "sh",
            "-c",
            "echo $WHO$EXTRA; hostname >/dev/null; echo $$ >&2; exit 5",
        ],
        None,
    )
    .unwrap();
    assert_eq!(out.exit_code, 5);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "container1\n");
    // The exec'd shell is in the container's PID namespace (pid 1 is sleep).
    let pid_inside: i32 = String::from_utf8_lossy(&out.stderr).trim().parse().unwrap();
    assert!(pid_inside > 1);

    let started = std::time::Instant::now();
    let err = run(&["sleep", "30"], Some(Duration::from_secs(1))).unwrap_err();
    assert!(matches!(err, ContainerError::ExecTimeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    let procs = Cgroup::at(&Hierarchy::detect(), &fx.cgroup);
    let memory = procs
        .dirs()
        .find(|d| d.to_string_lossy().contains("/memory/"))
        .unwrap()
        .join("cgroup.procs");
    let left = std::fs::read_to_string(memory).unwrap();
    assert_eq!(
        left.lines().count(),
        1,
        "only the container's sleep: {left}"
    );

    let err = run(&["nope"], None).unwrap_err();
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
}

#[test]
fn only_stdio_is_open_in_the_container() {
    let fx = Fixture::new();
    container::create(&monitor(), &fx.spec(&["sleep", "100"]), &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    let pid = running_pid(&fx.dir());
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    // The image's binary, never the monitor (CVE-2019-5736).
    assert_eq!(exe, Path::new("/bin/sleep"));
}

/// A shared tmpfs on the host (this host's / is private), unmounted recursively on drop.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let guard = Self(path);
        sh(&format!(
            "mount -t tmpfs prop {0} && mount --make-shared {0}",
            guard.0.display()
        ));
        guard
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-R", "-l"])
            .arg(&self.0)
            .status();
    }
}

fn sh(script: &str) {
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn mount_propagation_private_rslave_and_rshared() {
    let fx = Fixture::new();
    let shared = SharedMount::new(fx.path("prop"));
    let script = "while [ ! -e /private/go ]; do sleep 0.02; done; \
                  grep -c ' /private/sub ' /proc/mounts; grep -c ' /slave/sub ' /proc/mounts; \
                  mount -t tmpfs inner /shared/inner && echo mounted";
    let mut spec = fx.spec(&["sh", "-c", script]);
    // Mounting from inside needs what a privileged container has.
    spec.process.capabilities = vec!["ALL".into()];
    for (dest, propagation) in [
        ("/private", Propagation::Private),
        ("/slave", Propagation::HostToContainer),
        ("/shared", Propagation::Bidirectional),
    ] {
        spec.mounts.push(BindMount {
            source: shared.0.clone(),
            destination: dest.into(),
            readonly: false,
            recursive_readonly: false,
            propagation,
        });
    }
    std::fs::create_dir(shared.0.join("inner")).unwrap();
    std::fs::create_dir(shared.0.join("sub")).unwrap();
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    // Host → container.
    sh(&format!("mount -t tmpfs sub {}/sub", shared.0.display()));
    std::fs::write(shared.0.join("go"), "").unwrap();
    assert_eq!(fx.wait_exit().exit_code, 0, "{}", fx.log());
    assert_eq!(fx.stdout(), ["0", "1", "mounted"]);
    // Container → host, through the rshared volume only.
    let inner = format!(" {}/inner ", shared.0.display());
    let host_mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(host_mounts.contains(&inner), "{host_mounts}");
    wait_for("nothing", || true);
}

#[test]
fn readonly_rootfs_keeps_volumes_and_shm_writable() {
    let fx = Fixture::new();
    let data = fx.path("data");
    std::fs::create_dir(&data).unwrap();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null; echo root=$?; touch /dev/shm/x /data/x && echo writable",
    ]);
    spec.rootfs.readonly = true;
    spec.mounts.push(BindMount {
        source: data.clone(),
        destination: "/data".into(),
        readonly: false,
        recursive_readonly: false,
        propagation: Propagation::Private,
    });
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(fx.stdout(), ["root=1", "writable"]);
}

#[test]
fn privileged_sees_host_devices_and_a_writable_sys() {
    let fx = Fixture::new();
    let host_dev = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_type().is_ok_and(|t| {
                use std::os::unix::fs::FileTypeExt;
                t.is_block_device()
            })
        })
        .map(|e| e.path())
        .unwrap();
    let script = format!(
        "test -b {} && echo device; grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1",
        host_dev.display()
    );
    let mut spec = fx.spec(&["sh", "-c", &script]);
    spec.privileged = true;
    spec.process.capabilities = vec!["ALL".into()];
    spec.masked_paths.clear();
    spec.readonly_paths.clear();
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(fx.stdout(), ["device", "rw"]);
}

#[test]
fn runs_as_a_non_root_user_without_effective_capabilities() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; grep CapEff /proc/self/status | tr '\\t' ' '",
    ]);
    spec.process.uid = 1000;
    spec.process.gid = 1001;
    spec.process.additional_gids = vec![2000, 2001];
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(
        fx.stdout(),
        ["1000", "1001", "1001 2000 2001", "CapEff: 0000000000000000"]
    );
}

#[test]
fn spawn_exec_streams_stdin_and_stdout() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    container::create(&monitor(), &fx.spec(&["sleep", "100"]), &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    let req = ExecRequest {
        args: vec!["sh".into(), "-c".into(), "tr a-z A-Z; exit 4".into()],
        env: vec![],
        exec_self: false,
    };
    let stdio = container::ExecStdio {
        stdin: true,
        tty: false,
    };
    let mut process = container::spawn_exec(&monitor(), &fx.dir(), &req, stdio).unwrap();
    let mut stdin = process.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    drop(stdin);
    let mut out = String::new();
    process
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "PING\n");
    assert_eq!(process.wait().unwrap(), 4);
}

#[test]
fn cgroup_stats_of_a_running_container() {
    let fx = Fixture::new();
    let spec = fx.spec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100",
    ]);
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    let cgroup = Cgroup::at(&Hierarchy::detect(), &fx.cgroup);
    wait_for("CPU time to be charged", || {
        cgroup.stats().cpu_usage_ns > 1_000_000
    });
    let stats = cgroup.stats();
    assert!(stats.pids >= 1, "{stats:?}");
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert!(stats.memory_working_set_bytes <= stats.memory_usage_bytes);
}

#[test]
fn spawn_exec_with_a_terminal() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    container::create(&monitor(), &fx.spec(&["sleep", "100"]), &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    let req = ExecRequest {
        args: vec!["sh".into()],
        env: vec![],
        exec_self: false,
    };
    let stdio = container::ExecStdio {
        stdin: true,
        tty: true,
    };
    let mut process = container::spawn_exec(&monitor(), &fx.dir(), &req, stdio).unwrap();
    process.resize(33, 101).unwrap();
    let mut terminal = process.terminal.take().unwrap();
    terminal
        .write_all(b"test -t 0 && echo IS-A-TTY; stty size; exit 6\n")
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // EIO once the process side of the terminal is closed.
    while let Ok(n) = terminal.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("IS-A-TTY\r\n"), "{out:?}");
    assert!(out.contains("33 101\r\n"), "{out:?}");
    assert_eq!(process.wait().unwrap(), 6);
}

#[test]
fn attach_relays_stdin_and_output() {
    use sandbox::monitor::attach::{STDERR, STDOUT, decode_frame};
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut spec = fx.spec(&["sh", "-c", "read line; echo got $line; echo err >&2; cat"]);
    spec.process.stdin = true;
    spec.process.stdin_once = true;
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    let mut conn = container::attach(&fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    conn.write_all(b"hello\nrest\n").unwrap();
    // Done with stdin: with stdin_once the container's stdin closes, so `cat` ends.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut wire = Vec::new();
    conn.read_to_end(&mut wire).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut rest = &wire[..];
    while let Some((stream, payload, used)) = decode_frame(rest) {
        match stream {
            STDOUT => out.extend_from_slice(payload),
            STDERR => err.extend_from_slice(payload),
            other => panic!("stream {other}"),
        }
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(String::from_utf8_lossy(&out), "got hello\nrest\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(fx.wait_exit().exit_code, 0);
    assert_eq!(fx.stdout(), ["got hello", "rest"]);
    assert!(matches!(
        container::attach(&fx.dir()),
        Err(ContainerError::NotRunning)
    ));
}

#[test]
fn a_localhost_seccomp_profile_blocks_chmod_and_sethostname() {
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "chmod 600 /etc; echo chmod=$?; hostname x 2>/dev/null; echo hostname=$?",
    ]);
    spec.process.capabilities = vec!["ALL".into()];
    spec.process.seccomp_profile = Some(
        sandbox::container::seccomp::Profile::from_oci_json(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["chmod","fchmodat","fchmodat2","sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap(),
    );
    assert_eq!(fx.run(&spec).exit_code, 0, "{}", fx.log());
    assert_eq!(fx.stdout(), ["chmod=1", "hostname=1"]);
    assert!(fx.log().contains("Operation not permitted"), "{}", fx.log());
}

#[test]
fn host_disks_stay_closed_despite_cap_mknod() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::new();
    let disk = std::fs::read_dir("/dev")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_type().is_ok_and(|t| {
                use std::os::unix::fs::FileTypeExt;
                t.is_block_device()
            })
        })
        .unwrap()
        .metadata()
        .unwrap()
        .rdev();
    let (major, minor) = (libc::major(disk), libc::minor(disk));
    let script = format!(
        "mknod /disk b {major} {minor} && echo made; head -c 1 /disk >/dev/null 2>&1; echo read=$?"
    );
    assert_eq!(fx.run(&fx.spec(&["sh", "-c", &script])).exit_code, 0);
    assert_eq!(fx.stdout(), ["made", "read=1"]);

    let privileged = Fixture::new();
    let mut spec = privileged.spec(&["sh", "-c", &script]);
    spec.privileged = true;
    spec.process.capabilities = vec!["ALL".into()];
    assert_eq!(privileged.run(&spec).exit_code, 0);
    assert_eq!(privileged.stdout(), ["made", "read=0"]);
}

#[test]
fn a_container_with_a_terminal() {
    use sandbox::monitor::attach::{STDOUT, decode_frame};
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut spec = fx.spec(&[
        "sh",
        "-c",
        "test -t 0 && echo TTY; read x; stty size; echo got $x",
    ]);
    spec.process.tty = true;
    spec.process.stdin = true;
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::resize(&fx.dir(), 40, 120).unwrap();
    let mut conn = container::attach(&fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    conn.write_all(b"line\n").unwrap();
    let mut wire = Vec::new();
    conn.read_to_end(&mut wire).unwrap();
    let mut out = Vec::new();
    let mut rest = &wire[..];
    while let Some((stream, payload, used)) = decode_frame(rest) {
        assert_eq!(stream, STDOUT);
        out.extend_from_slice(payload);
        rest = &rest[used..];
    }
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("TTY\r\n") && out.contains("40 120\r\n"),
        "{out:?}"
    );
    assert!(out.contains("got line\r\n"), "{out:?}");
    assert_eq!(fx.wait_exit().exit_code, 0);
    // The terminal echoes input; everything is logged as stdout, "\r\n" ends a line.
    let logged = fx.stdout();
    assert!(logged.contains(&"TTY".to_string()), "{logged:?}");
    assert!(logged.contains(&"got line".to_string()), "{logged:?}");
}

#[test]
#[ignore = "timing report, run by hand with --ignored --nocapture"]
fn timing_of_one_container() {
    use std::time::Instant;
    let mut phases = Vec::new();
    for _ in 0..10 {
        let fx = Fixture::new();
        let spec = fx.spec(&["true"]);
        let t0 = Instant::now();
        container::create(&monitor(), &spec, &fx.dir()).unwrap();
        let t1 = Instant::now();
        container::start(&fx.dir()).unwrap();
        let t2 = Instant::now();
        fx.wait_exit();
        let t3 = Instant::now();
        container::remove(&fx.dir(), &Trash::none()).unwrap();
        let t4 = Instant::now();
        phases.push([t1 - t0, t2 - t1, t3 - t2, t4 - t3]);
    }
    phases.sort_by_key(|p| p[0]);
    let median = |i: usize| {
        let mut v: Vec<_> = phases.iter().map(|p| p[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    eprintln!(
        "median create {:?}, start {:?}, run+exit {:?}, remove {:?}",
        median(0),
        median(1),
        median(2),
        median(3)
    );
}

#[test]
fn attach_after_start_to_a_shell_like_critest() {
    use sandbox::monitor::attach::decode_frame;
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut spec = fx.spec(&["/bin/sh"]);
    spec.process.stdin = true;
    spec.process.stdin_once = true;
    container::create(&monitor(), &spec, &fx.dir()).unwrap();
    container::start(&fx.dir()).unwrap();
    running_pid(&fx.dir());
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = container::attach(&fx.dir()).unwrap();
    conn.write_all(b"echo -n hello\n").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut wire = Vec::new();
    conn.read_to_end(&mut wire).unwrap();
    let mut out = Vec::new();
    let mut rest = &wire[..];
    while let Some((_, payload, used)) = decode_frame(rest) {
        out.extend_from_slice(payload);
        rest = &rest[used..];
    }
    assert_eq!(String::from_utf8_lossy(&out), "hello", "{}", fx.log());
    assert_eq!(fx.wait_exit().exit_code, 0);
}
