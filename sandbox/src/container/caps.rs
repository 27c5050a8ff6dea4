//! Linux capabilities by name, and applying a set to the current process.

use super::spec::SpecError;

/// Capability names in kernel number order (`CAP_CHOWN` = 0 … `CAP_CHECKPOINT_RESTORE` = 40).
const NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability the kernel knows, by name (what `ALL` and privileged mean).
pub const ALL_CAPABILITIES: &[&str] = NAMES;

/// containerd's default set (`pkg/oci/spec.go`).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A set of capabilities as the kernel's bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Parses names with or without the `CAP_` prefix, in any case; `ALL` means every
    /// capability this build knows.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, SpecError> {
        let mut bits = 0u64;
        for name in names {
            let raw = name.as_ref();
            let upper = raw.to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if bare == "ALL" {
                bits |= (1u64 << NAMES.len()) - 1;
                continue;
            }
            let number = NAMES
                .iter()
                .position(|n| *n == bare)
                .ok_or_else(|| SpecError::UnknownCapability(raw.to_owned()))?;
            bits |= 1 << number;
        }
        Ok(Self(bits))
    }

    pub fn contains(self, name: &str) -> bool {
        NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// Reduces the bounding set to `caps`, keeps capabilities across the coming setuid.
/// Must run while the process still has `CAP_SETPCAP`.
pub fn drop_bounding(caps: CapSet) -> std::io::Result<()> {
    let last = last_cap();
    for cap in 0..=last {
        if caps.0 & (1 << cap) == 0 {
            // SAFETY: plain prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            // EINVAL: a capability this kernel does not know.
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// The calling process's permitted set.
fn permitted() -> std::io::Result<u64> {
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and room for two data words as capget(2) v3 expects.
    if unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// Sets effective = permitted = `caps`, inheritable and ambient empty (CVE-2022-27652).
/// Capabilities the runtime itself lacks (e.g. SYS_RESOURCE on some hosts) cannot be
/// granted and are left out. A non-root process loses them at execve anyway, as on any
/// Linux host.
pub fn apply(caps: CapSet) -> std::io::Result<()> {
    let known = caps.0 & ((1u64 << (last_cap() + 1)) - 1) & permitted()?;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let word = |shift: u32| {
        let w = (known >> shift) as u32;
        Data {
            effective: w,
            permitted: w,
            inheritable: 0,
        }
    };
    let data = [word(0), word(32)];
    // SAFETY: header and two data words as capset(2) v3 expects; both outlive the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(NAMES.len() as u32 - 1)
        .min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_and_without_prefix() {
        let set = CapSet::from_names(&["NET_ADMIN", "cap_chown", "CAP_KILL"]).unwrap();
        assert_eq!(set.0, (1 << 12) | (1 << 0) | (1 << 5));
        assert!(set.contains("NET_ADMIN"));
        assert!(!set.contains("SYS_ADMIN"));
    }

    #[test]
    fn all_means_every_known_capability() {
        let set = CapSet::from_names(&["ALL"]).unwrap();
        assert_eq!(set.0, (1u64 << 41) - 1);
    }

    #[test]
    fn the_default_set_is_containerds() {
        let set = CapSet::from_names(DEFAULT_CAPABILITIES).unwrap();
        // CapBnd of a docker/containerd container: 00000000a80425fb.
        assert_eq!(set.0, 0xa80425fb);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            CapSet::from_names(&["CAP_NOPE"]),
            Err(SpecError::UnknownCapability("CAP_NOPE".into()))
        );
    }
}
