//! Pod sysctls: only namespaced ones, strictly validated, written inside the pod's
//! namespaces. The allow-list is CRI-O's: IPC ones (`kernel.shm*`, `kernel.msg*`,
//! `kernel.sem`, `fs.mqueue.*`) and network ones (`net.*`). An IPC sysctl with host IPC or
//! a network one with host network would change the host, so both are refused.
//!
//! Names are dot-separated (the kubelet converts the slash form), so a name can never be a
//! path: no `/`, no empty or `..` segment. Values are a short run of plain characters: no
//! `+`, `=`, newline or other control bytes (CVE-2022-0811 smuggled a second sysctl through
//! `+`).

use std::path::PathBuf;

/// Which pod namespace a sysctl lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Net,
}

const MAX_VALUE_LEN: usize = 512;

/// Checks one sysctl; the error says what is wrong with it.
pub fn validate(
    name: &str,
    value: &str,
    host_network: bool,
    host_ipc: bool,
) -> Result<SysctlNamespace, String> {
    let ns = namespace_of(name)?;
    match ns {
        SysctlNamespace::Net if host_network => {
            return Err(format!(
                "sysctl {name:?} is not allowed with host networking: it would change the host"
            ));
        }
        SysctlNamespace::Ipc if host_ipc => {
            return Err(format!(
                "sysctl {name:?} is not allowed with host IPC: it would change the host"
            ));
        }
        _ => {}
    }
    if value.is_empty() || value.len() > MAX_VALUE_LEN {
        return Err(format!(
            "sysctl {name:?}: the value must be 1 to {MAX_VALUE_LEN} characters"
        ));
    }
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '\t' | '.' | '-' | '_' | ':' | ','))
    }) {
        return Err(format!(
            "sysctl {name:?}: the value {value:?} holds the forbidden character {c:?}"
        ));
    }
    Ok(ns)
}

/// The namespace a sysctl belongs to; an error for malformed or non-namespaced names.
pub fn namespace_of(name: &str) -> Result<SysctlNamespace, String> {
    let well_formed = !name.is_empty()
        && name.len() <= 256
        && name.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !well_formed {
        return Err(format!(
            "sysctl name {name:?} is malformed: dot-separated segments of letters, digits, '_' and '-' only"
        ));
    }
    if name.starts_with("net.") {
        Ok(SysctlNamespace::Net)
    } else if name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
    {
        Ok(SysctlNamespace::Ipc)
    } else {
        Err(format!(
            "sysctl {name:?} is not namespaced; a pod may only set kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and net.*"
        ))
    }
}

/// The /proc/sys file of a validated name.
pub fn proc_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// Writes a validated sysctl; the calling thread must be in the pod's namespaces.
pub(crate) fn apply(name: &str, value: &str) -> Result<(), String> {
    std::fs::write(proc_path(name), value).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("sysctl {name:?} does not exist"),
        _ => format!("setting sysctl {name:?} to {value:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_sysctls_pass() {
        for (n, v) in [
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.shmmax", "68719476736"),
            ("kernel.msgmax", "8192"),
            ("kernel.sem", "250 32000 32 128"),
            ("fs.mqueue.msg_max", "100"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.ipv4.conf.veth-a1.forwarding", "1"),
        ] {
            validate(n, v, false, false).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        assert_eq!(
            validate("net.core.somaxconn", "1024", false, true),
            Ok(SysctlNamespace::Net)
        );
        assert_eq!(
            validate("kernel.msgmax", "1", true, false),
            Ok(SysctlNamespace::Ipc)
        );
    }

    #[test]
    fn host_wide_sysctls_are_refused() {
        for n in [
            "kernel.core_pattern",
            "vm.overcommit_memory",
            "kernel.sem_extra",
            "fs.file-max",
            "kernel.hostname",
        ] {
            let e = validate(n, "1", false, false).unwrap_err();
            assert!(e.contains("not namespaced"), "{n}: {e}");
        }
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        assert!(
            validate("net.core.somaxconn", "1", true, false)
                .unwrap_err()
                .contains("host networking")
        );
        assert!(
            validate("kernel.shm_rmid_forced", "1", false, true)
                .unwrap_err()
                .contains("host IPC")
        );
        assert!(validate("fs.mqueue.msg_max", "1", false, true).is_err());
    }

    #[test]
    fn path_tricks_in_names_are_refused() {
        for n in [
            "net/ipv4/ip_forward",
            "net.ipv4/../../kernel/core_pattern",
            "net..ipv4",
            "net.",
            ".net.ipv4",
            "net.ipv4.conf.*.x",
            "",
            "net.ipv4 .x",
        ] {
            assert!(validate(n, "1", false, false).is_err(), "{n:?} passed");
        }
    }

    #[test]
    fn injection_in_values_is_refused() {
        // CVE-2022-0811: "+" smuggled a second key into pinns.
        for v in [
            "1+kernel.core_pattern=|/bin/sh",
            "1\nkernel.core_pattern=x",
            "1=2",
            "1\0",
            "|/tmp/x",
            "",
        ] {
            assert!(
                validate("kernel.shm_rmid_forced", v, false, false).is_err(),
                "{v:?} passed"
            );
        }
        assert!(validate("kernel.shmmax", &"9".repeat(513), false, false).is_err());
    }

    #[test]
    fn proc_paths() {
        assert_eq!(
            proc_path("fs.mqueue.msg_max"),
            PathBuf::from("/proc/sys/fs/mqueue/msg_max")
        );
    }
}
