//! berth's RuntimeDefault seccomp profile: a deny-list close to containerd's and Docker's
//! default (kernel keyrings, modules, clocks, reboot, io_uring, and — unless the container
//! has the matching capability — mounts, namespaces, BPF and ptrace-like peeking), compiled
//! to classic BPF by hand so the monitor does not need libseccomp.

use serde::{Deserialize, Serialize};

use super::caps::CapSet;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profiles are only supported on x86_64")]
    UnsupportedArch,
    #[error("invalid seccomp profile: {0}")]
    Invalid(String),
    #[error("seccomp action {0} is not supported")]
    UnsupportedAction(String),
    #[error("seccomp rules with argument conditions are not supported yet ({0})")]
    ArgsUnsupported(String),
    #[error("loading the seccomp filter: {0}")]
    Load(std::io::Error),
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of args[0] on little-endian.
const OFFSET_ARG0: u32 = 16;

/// BPF_LD | BPF_W | BPF_ABS
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K, and the same for JGE and JSET.
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
/// BPF_RET | BPF_K
const BPF_RET_K: u16 = 0x06;

const NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

// Obsolete x86_64 syscalls the libc crate no longer names.
#[cfg(target_arch = "x86_64")]
const SYS_CREATE_MODULE: libc::c_long = 174;
#[cfg(target_arch = "x86_64")]
const SYS_GET_KERNEL_SYMS: libc::c_long = 177;
#[cfg(target_arch = "x86_64")]
const SYS_QUERY_MODULE: libc::c_long = 178;

/// Loads the syscall number, answering `foreign` for other architectures and for x32
/// syscalls (which share x86_64's arch value).
fn prologue(foreign: u32) -> Vec<libc::sock_filter> {
    vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, foreign),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, foreign),
    ]
}

/// Syscalls denied with `EPERM` (or `ENOSYS` for clone3, so libc falls back to clone, whose
/// flags can be checked).
#[cfg(target_arch = "x86_64")]
fn denied(caps: CapSet) -> Vec<(libc::c_long, u32)> {
    use libc::*;
    let mut nrs: Vec<c_long> = vec![
        SYS_acct,
        SYS_add_key,
        SYS_keyctl,
        SYS_request_key,
        SYS_CREATE_MODULE,
        SYS_GET_KERNEL_SYMS,
        SYS_QUERY_MODULE,
        SYS_nfsservctl,
        SYS_sysfs,
        SYS__sysctl,
        SYS_uselib,
        SYS_userfaultfd,
        SYS_ustat,
        SYS_vhangup,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_kexec_load,
        SYS_kexec_file_load,
    ];
    let gated: &[(&str, &[c_long])] = &[
        (
            "SYS_ADMIN",
            &[
                SYS_mount,
                SYS_umount2,
                SYS_unshare,
                SYS_setns,
                SYS_pivot_root,
                SYS_open_tree,
                SYS_move_mount,
                SYS_fsopen,
                SYS_fsconfig,
                SYS_fsmount,
                SYS_fspick,
                SYS_mount_setattr,
                SYS_quotactl,
                SYS_bpf,
                SYS_perf_event_open,
                SYS_lookup_dcookie,
                SYS_fanotify_init,
            ],
        ),
        (
            "SYS_PTRACE",
            &[SYS_kcmp, SYS_process_vm_readv, SYS_process_vm_writev],
        ),
        (
            "SYS_MODULE",
            &[SYS_init_module, SYS_finit_module, SYS_delete_module],
        ),
        (
            "SYS_TIME",
            &[SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime],
        ),
        ("SYS_BOOT", &[SYS_reboot]),
        ("SYS_RAWIO", &[SYS_ioperm, SYS_iopl]),
        ("DAC_READ_SEARCH", &[SYS_open_by_handle_at]),
        ("SYS_PACCT", &[]),
    ];
    for (cap, list) in gated {
        if !caps.contains(cap) {
            nrs.extend_from_slice(list);
        }
    }
    let mut out: Vec<(c_long, u32)> = nrs.into_iter().map(|nr| (nr, EPERM as u32)).collect();
    if !caps.contains("SYS_ADMIN") {
        out.push((SYS_clone3, ENOSYS as u32));
    }
    out
}

/// Compiles the profile for a process holding `caps`.
pub fn compile_default(caps: CapSet) -> Result<Vec<libc::sock_filter>, SeccompError> {
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = caps;
        Err(SeccompError::UnsupportedArch)
    }
    #[cfg(target_arch = "x86_64")]
    {
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let mut p = prologue(eperm);
        for (nr, errno) in denied(caps) {
            p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
            p.push(stmt(BPF_RET_K, RET_ERRNO | errno));
        }
        if !caps.contains("SYS_ADMIN") {
            p.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 3));
            p.push(stmt(BPF_LD_W_ABS, OFFSET_ARG0));
            p.push(jump(BPF_JSET_K, NAMESPACE_FLAGS, 0, 1));
            p.push(stmt(BPF_RET_K, eperm));
        }
        p.push(stmt(BPF_RET_K, RET_ALLOW));
        Ok(p)
    }
}

/// What the kernel does with a matched syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
}

impl Action {
    fn ret(self) -> u32 {
        match self {
            Self::Allow => RET_ALLOW,
            Self::Errno(e) => RET_ERRNO | (e & 0xffff),
            Self::KillThread => RET_KILL_THREAD,
            Self::KillProcess => RET_KILL_PROCESS,
            Self::Trap => RET_TRAP,
            Self::Log => RET_LOG,
        }
    }

    fn parse(name: &str, errno: Option<u32>) -> Result<Self, SeccompError> {
        Ok(match name {
            "SCMP_ACT_ALLOW" => Self::Allow,
            "SCMP_ACT_ERRNO" => Self::Errno(errno.unwrap_or(libc::EPERM as u32)),
            "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Self::KillThread,
            "SCMP_ACT_KILL_PROCESS" => Self::KillProcess,
            "SCMP_ACT_TRAP" => Self::Trap,
            "SCMP_ACT_LOG" => Self::Log,
            other => return Err(SeccompError::UnsupportedAction(other.to_owned())),
        })
    }
}

/// A custom profile (CRI `Localhost`), reduced to what the filter needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub default_action: Action,
    /// Syscall numbers and their actions; the first rule naming a syscall wins.
    pub rules: Vec<(u32, Action)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<OciRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciRule {
    #[serde(default)]
    names: Vec<String>,
    /// The older Docker format: one name per rule.
    name: Option<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<serde_json::Value>,
}

impl Profile {
    /// Reads a Docker/OCI JSON profile (`defaultAction`, `syscalls[].names/action`).
    /// Syscalls this architecture does not have are skipped, as libseccomp does.
    pub fn from_oci_json(text: &str) -> Result<Self, SeccompError> {
        let oci: OciProfile =
            serde_json::from_str(text).map_err(|e| SeccompError::Invalid(e.to_string()))?;
        let default_action = Action::parse(&oci.default_action, oci.default_errno_ret)?;
        let mut rules = Vec::new();
        for rule in oci.syscalls {
            let names: Vec<String> = rule.names.into_iter().chain(rule.name).collect();
            if !rule.args.is_empty() {
                return Err(SeccompError::ArgsUnsupported(names.join(",")));
            }
            let action = Action::parse(&rule.action, rule.errno_ret)?;
            for name in &names {
                if let Some(nr) = syscall_number(name) {
                    rules.push((nr, action));
                }
            }
        }
        Ok(Self {
            default_action,
            rules,
        })
    }

    pub fn compile(&self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        if !cfg!(target_arch = "x86_64") {
            return Err(SeccompError::UnsupportedArch);
        }
        let default = self.default_action.ret();
        let mut p = prologue(default);
        let mut seen = std::collections::HashSet::new();
        for (nr, action) in &self.rules {
            if seen.insert(*nr) && *action != self.default_action {
                p.push(jump(BPF_JEQ_K, *nr, 0, 1));
                p.push(stmt(BPF_RET_K, action.ret()));
            }
        }
        p.push(stmt(BPF_RET_K, default));
        if p.len() > 4096 {
            return Err(SeccompError::Invalid("too many rules".into()));
        }
        Ok(p)
    }
}

fn syscall_number(name: &str) -> Option<u32> {
    let table = super::syscall_table::X86_64;
    table
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| table[i].1)
}

/// Installs `filter` on the calling thread (and its future children). Without
/// no_new_privs this needs CAP_SYS_ADMIN.
pub fn load(filter: &[libc::sock_filter]) -> Result<(), SeccompError> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prog points at `filter`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(libc::SYS_seccomp, 1 /* SET_MODE_FILTER */, 0, &prog)
    };
    if rc != 0 {
        return Err(SeccompError::Load(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions we emit.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        OFFSET_NR => nr,
                        OFFSET_ARCH => arch,
                        OFFSET_ARG0 => arg0,
                        k => panic!("load of {k}"),
                    }
                }
                BPF_RET_K => return i.k,
                code => {
                    let hit = match code {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGE_K => acc >= i.k,
                        BPF_JSET_K => acc & i.k != 0,
                        c => panic!("opcode {c:#x}"),
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
            }
            pc += 1;
        }
    }

    #[test]
    fn denies_the_dangerous_and_allows_the_ordinary() {
        let caps = CapSet::from_names(super::super::caps::DEFAULT_CAPABILITIES).unwrap();
        let p = compile_default(caps).unwrap();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let call = |nr: libc::c_long, arg0| run(&p, AUDIT_ARCH_X86_64, nr as u32, arg0);
        assert_eq!(call(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_execve, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_mount, 0), eperm);
        assert_eq!(call(libc::SYS_keyctl, 0), eperm);
        assert_eq!(call(libc::SYS_clone3, 0), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(call(libc::SYS_clone, libc::SIGCHLD as u32), RET_ALLOW);
        assert_eq!(call(libc::SYS_clone, libc::CLONE_NEWNS as u32), eperm);
        assert_eq!(run(&p, 0x4000_0003, libc::SYS_read as u32, 0), eperm);
        assert_eq!(call(libc::SYS_read | X32_SYSCALL_BIT as i64, 0), eperm);
    }

    #[test]
    fn oci_profiles_compile_to_first_match_rules() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["chmod", "fchmodat", "no_such_call"], "action": "SCMP_ACT_ERRNO"},
                {"name": "sethostname", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["chmod"], "action": "SCMP_ACT_KILL"}
            ]
        }"#;
        let p = Profile::from_oci_json(json).unwrap().compile().unwrap();
        let call = |nr: libc::c_long| run(&p, AUDIT_ARCH_X86_64, nr as u32, 0);
        assert_eq!(call(libc::SYS_chmod), RET_ERRNO | libc::EPERM as u32);
        assert_eq!(call(libc::SYS_fchmodat), RET_ERRNO | libc::EPERM as u32);
        assert_eq!(call(libc::SYS_sethostname), RET_ERRNO | 13);
        assert_eq!(call(libc::SYS_read), RET_ALLOW);
    }

    #[test]
    fn unsupported_profiles_are_errors_not_ignored() {
        let with_args = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0}]}]}"#;
        assert!(matches!(
            Profile::from_oci_json(with_args),
            Err(SeccompError::ArgsUnsupported(_))
        ));
        let notify = r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#;
        assert!(Profile::from_oci_json(notify).is_err());
        assert_eq!(super::syscall_number("read"), Some(0));
        assert_eq!(super::syscall_number("io_uring_setup"), Some(425));
    }

    #[test]
    fn sys_admin_reopens_mount_and_namespaces() {
        let caps = CapSet::from_names(&["SYS_ADMIN"]).unwrap();
        let p = compile_default(caps).unwrap();
        let call = |nr: libc::c_long, arg0| run(&p, AUDIT_ARCH_X86_64, nr as u32, arg0);
        assert_eq!(call(libc::SYS_mount, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_clone, libc::CLONE_NEWNS as u32), RET_ALLOW);
        assert_eq!(call(libc::SYS_keyctl, 0), RET_ERRNO | libc::EPERM as u32);
    }
}
