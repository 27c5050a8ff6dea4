//! Devices a container asks for: the CRI's `devices` (host device nodes, or every node
//! under a host directory such as /dev/snd) and CDI devices (`cdi_devices`, the Container
//! Device Interface that DRA drivers and device plugins use), resolved here into what the
//! sandbox applies: device nodes, bind mounts, environment and OCI hooks.
//!
//! CDI specs are read from the configured directories (`/etc/cdi`, then `/var/run/cdi`,
//! whose specs win) at each CreateContainer that names a CDI device, so a driver that
//! writes a spec is seen at once without a reload. The format is CDI's JSON or YAML.
//! Written here rather than taken from a crate: no Rust CDI crate is maintained, and the
//! part a runtime needs is the spec's data model and a qualified-name lookup.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cri_api::v1 as cri;
use sandbox::container::spec::{BindMount, DeviceNode, Propagation};
use serde::{Deserialize, Serialize};

use crate::error::{CriError, CriResult};

fn invalid(msg: String) -> CriError {
    CriError::InvalidArgument(msg)
}

/// The device nodes of the CRI's `devices`: each host path's node, or every node below a
/// host directory (placed under the container path, as containerd and CRI-O do).
pub fn cri_devices(devices: &[cri::Device]) -> CriResult<Vec<DeviceNode>> {
    let mut out = Vec::new();
    for d in devices {
        let access = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        let host = Path::new(&d.host_path);
        let container = if d.container_path.is_empty() {
            host
        } else {
            Path::new(&d.container_path)
        };
        let meta = std::fs::metadata(host)
            .map_err(|e| invalid(format!("device {:?}: {e}", d.host_path)))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            nodes_under(host, &mut found);
            for (path, m) in found {
                let rel = path.strip_prefix(host).unwrap_or(&path);
                out.push(node(container.join(rel), &m, &access)?);
            }
        } else {
            out.push(node(container.to_owned(), &meta, &access)?);
        }
    }
    Ok(out)
}

fn nodes_under(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let t = m.file_type();
        if t.is_dir() {
            nodes_under(&e.path(), out);
        } else if t.is_char_device() || t.is_block_device() {
            out.push((e.path(), m));
        }
    }
}

fn node(path: PathBuf, m: &std::fs::Metadata, access: &str) -> CriResult<DeviceNode> {
    let t = m.file_type();
    let kind = if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else {
        return Err(invalid(format!("{path:?} is not a device node")));
    };
    Ok(DeviceNode {
        path,
        kind,
        major: nix::sys::stat::major(m.rdev()),
        minor: nix::sys::stat::minor(m.rdev()),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        access: access.to_string(),
    })
}

/// A CDI spec file (the fields a runtime applies; others are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<SpecDevice>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<NodeEdit>,
    #[serde(default)]
    mounts: Vec<MountEdit>,
    #[serde(default)]
    hooks: Vec<HookEdit>,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeEdit {
    path: PathBuf,
    host_path: Option<PathBuf>,
    r#type: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountEdit {
    host_path: PathBuf,
    container_path: PathBuf,
    #[serde(default)]
    options: Vec<String>,
    r#type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HookEdit {
    hook_name: String,
    path: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<u64>,
}

/// When an OCI hook runs. Those of the container's own namespaces (createContainer,
/// startContainer) are not supported: a spec that has one is refused, never half-applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookStage {
    /// After the container is created, before CreateContainer answers (createRuntime and
    /// the older prestart): a failure undoes the create.
    CreateRuntime,
    /// After the process started; a failure is logged.
    Poststart,
    /// After the container is removed; a failure is logged.
    Poststop,
}

/// An OCI hook from a CDI spec, run on the host with the container's state on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub stage: HookStage,
    pub path: PathBuf,
    /// argv, `args[0]` included (as in the OCI spec).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
}

/// What the requested CDI devices add to a container.
#[derive(Debug, Default)]
pub struct CdiEdits {
    pub env: Vec<String>,
    pub devices: Vec<DeviceNode>,
    pub mounts: Vec<BindMount>,
    pub hooks: Vec<Hook>,
    pub additional_gids: Vec<u32>,
}

/// Resolves fully-qualified CDI names (`vendor.com/class=name`) against the specs in
/// `dirs` (a later directory's spec of the same kind wins). An unknown name, a malformed
/// spec of the named kind, or an edit berth cannot apply is InvalidArgument.
pub fn resolve_cdi(dirs: &[PathBuf], names: &[String]) -> CriResult<CdiEdits> {
    let mut edits = CdiEdits::default();
    if names.is_empty() {
        return Ok(edits);
    }
    let specs = load_specs(dirs);
    let mut kinds_applied = Vec::new();
    for qualified in names {
        let (kind, name) = qualified.split_once('=').ok_or_else(|| {
            invalid(format!(
                "CDI device {qualified:?} is not a qualified name (vendor.com/class=name)"
            ))
        })?;
        let (file, spec) = match specs.get(kind) {
            Some((file, Ok(spec))) => (file, spec),
            Some((file, Err(e))) => {
                return Err(invalid(format!(
                    "CDI device {qualified:?}: spec {file:?} is malformed: {e}"
                )));
            }
            None => {
                return Err(invalid(format!(
                    "unknown CDI device {qualified:?}: no CDI spec of kind {kind:?} in {dirs:?}"
                )));
            }
        };
        let device = spec
            .devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                invalid(format!(
                    "unknown CDI device {qualified:?}: {file:?} has no device {name:?}"
                ))
            })?;
        let context = |e: String| invalid(format!("CDI device {qualified:?} ({file:?}): {e}"));
        // The spec-wide edits apply once per kind, whatever number of its devices.
        if !kinds_applied.contains(&kind) {
            kinds_applied.push(kind);
            apply(&spec.container_edits, &mut edits).map_err(context)?;
        }
        apply(&device.container_edits, &mut edits).map_err(context)?;
    }
    Ok(edits)
}

type LoadedSpecs = BTreeMap<String, (PathBuf, Result<Spec, String>)>;

/// Every `*.json`, `*.yaml` and `*.yml` in `dirs`, by kind.
fn load_specs(dirs: &[PathBuf]) -> LoadedSpecs {
    let mut by_kind = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
            })
            .collect();
        files.sort();
        for file in files {
            let parsed = read_spec(&file);
            let kind = match &parsed {
                Ok(spec) => spec.kind.clone(),
                // A spec we cannot parse still claims its kind if we can see it, so a
                // request for that kind is told why rather than "unknown".
                Err(_) => match kind_of(&file) {
                    Some(kind) => kind,
                    None => continue,
                },
            };
            by_kind.insert(kind, (file, parsed));
        }
    }
    by_kind
}

/// A spec file is small; one larger than this is refused rather than read.
const MAX_SPEC_BYTES: u64 = 1 << 20;

fn read_spec(file: &Path) -> Result<Spec, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_SPEC_BYTES {
        return Err("not a regular file of at most 1 MiB".into());
    }
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let spec: Spec = serde_norway::from_str(&text).map_err(|e| e.to_string())?;
    if spec.cdi_version.is_empty() {
        return Err("cdiVersion is missing".into());
    }
    Ok(spec)
}

fn kind_of(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let value: serde_norway::Value = serde_norway::from_str(&text).ok()?;
    value.get("kind")?.as_str().map(str::to_string)
}

fn apply(e: &Edits, out: &mut CdiEdits) -> Result<(), String> {
    out.env.extend(e.env.iter().cloned());
    out.additional_gids.extend(&e.additional_gids);
    for n in &e.device_nodes {
        out.devices.push(device_node(n)?);
    }
    for m in &e.mounts {
        out.mounts.push(bind_mount(m)?);
    }
    for h in &e.hooks {
        out.hooks.push(hook(h)?);
    }
    Ok(())
}

/// A CDI device node: type, numbers, owner and mode from the spec where given, else from
/// the host's node (`hostPath`, or `path` on the host).
fn device_node(n: &NodeEdit) -> Result<DeviceNode, String> {
    let host = n.host_path.as_deref().unwrap_or(&n.path);
    let on_host = std::fs::metadata(host).ok();
    let kind = match (n.r#type.as_deref(), &on_host) {
        (Some("c") | Some("u"), _) => 'c',
        (Some("b"), _) => 'b',
        (Some(t), _) => return Err(format!("device node {:?}: type {t:?}", n.path)),
        (None, Some(m)) if m.file_type().is_block_device() => 'b',
        (None, Some(m)) if m.file_type().is_char_device() => 'c',
        (None, _) => {
            return Err(format!(
                "device node {:?}: no type given and {host:?} is not a device on the host",
                n.path
            ));
        }
    };
    let rdev = on_host.as_ref().map(|m| m.rdev());
    let number = |given: Option<i64>, from_host: fn(u64) -> u64| -> Result<u64, String> {
        match (given, rdev) {
            (Some(v), _) if v >= 0 => Ok(v as u64),
            (None, Some(r)) => Ok(from_host(r)),
            _ => Err(format!(
                "device node {:?}: no major/minor given and {host:?} is not on the host",
                n.path
            )),
        }
    };
    Ok(DeviceNode {
        path: n.path.clone(),
        kind,
        major: number(n.major, nix::sys::stat::major)?,
        minor: number(n.minor, nix::sys::stat::minor)?,
        mode: n
            .file_mode
            .or(on_host.as_ref().map(|m| m.mode()))
            .unwrap_or(0o666)
            & 0o7777,
        uid: n.uid.or(on_host.as_ref().map(|m| m.uid())).unwrap_or(0),
        gid: n.gid.or(on_host.as_ref().map(|m| m.gid())).unwrap_or(0),
        access: n.permissions.clone().unwrap_or_else(|| "rwm".into()),
    })
}

fn bind_mount(m: &MountEdit) -> Result<BindMount, String> {
    let bind = m.r#type.as_deref().is_none_or(|t| t == "bind")
        || m.options.iter().any(|o| o == "bind" || o == "rbind");
    if !bind {
        return Err(format!(
            "mount at {:?}: only bind mounts are supported (type {:?})",
            m.container_path,
            m.r#type.as_deref().unwrap_or_default()
        ));
    }
    Ok(BindMount {
        source: m.host_path.clone(),
        destination: m.container_path.clone(),
        readonly: m.options.iter().any(|o| o == "ro"),
        recursive_readonly: false,
        propagation: Propagation::Private,
    })
}

fn hook(h: &HookEdit) -> Result<Hook, String> {
    let stage = match h.hook_name.as_str() {
        "createRuntime" | "prestart" => HookStage::CreateRuntime,
        "poststart" => HookStage::Poststart,
        "poststop" => HookStage::Poststop,
        other => {
            return Err(format!(
                "hook {other:?} ({:?}): berth runs createRuntime, prestart, poststart and \
                 poststop hooks; hooks inside the container's namespaces are not supported",
                h.path
            ));
        }
    };
    if !h.path.is_absolute() {
        return Err(format!("hook path {:?} must be absolute", h.path));
    }
    let args = if h.args.is_empty() {
        vec![h.path.display().to_string()]
    } else {
        h.args.clone()
    };
    Ok(Hook {
        stage,
        path: h.path.clone(),
        args,
        env: h.env.clone(),
        timeout: h.timeout.map(Duration::from_secs),
    })
}

/// How long a hook without its own timeout may run.
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the hooks of `stage`, in order, each with the OCI state of the container on stdin
/// (blocking). The first failure stops the rest and is returned.
pub fn run_hooks(
    hooks: &[Hook],
    stage: HookStage,
    state: &serde_json::Value,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    for h in hooks.iter().filter(|h| h.stage == stage) {
        let mut cmd = std::process::Command::new(&h.path);
        cmd.arg0(h.args.first().cloned().unwrap_or_default())
            .args(h.args.iter().skip(1))
            .env_clear()
            .envs(h.env.iter().filter_map(|e| e.split_once('=')))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("hook {:?}: {e}", h.path))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its stdin is fine.
            let _ = stdin.write_all(state.to_string().as_bytes());
        }
        let deadline = std::time::Instant::now() + h.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("hook {:?} timed out and was killed", h.path));
                }
                Err(e) => return Err(format!("hook {:?}: {e}", h.path)),
            }
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.by_ref().take(4096).read_to_string(&mut stderr);
            }
            return Err(format!(
                "hook {:?} failed ({status}): {}",
                h.path,
                stderr.trim()
            ));
        }
    }
    Ok(())
}

/// The OCI state a hook reads on stdin.
pub fn oci_state(
    id: &str,
    status: &str,
    pid: i32,
    bundle: &Path,
    annotations: &BTreeMap<String, String>,
) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
cdiVersion: "0.6.0"
kind: "example.com/fpga"
containerEdits:
  env: ["FPGA_VENDOR=example"]
devices:
  - name: card0
    containerEdits:
      env: ["FPGA=card0"]
      deviceNodes:
        - path: /dev/fpga0
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: /etc/hostname
          containerPath: /etc/fpga/hostname
          options: ["ro", "bind"]
      hooks:
        - hookName: createRuntime
          path: /bin/true
  - name: card1
    containerEdits:
      deviceNodes:
        - path: /dev/fpga1
          type: c
          major: 240
          minor: 1
          fileMode: 0o600
"#;

    fn dir_with(spec: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("fpga.yaml"), spec).unwrap();
        d
    }

    #[test]
    fn qualified_names_resolve_to_their_edits() {
        let d = dir_with(SPEC);
        let dirs = [d.path().to_owned()];
        let e = resolve_cdi(
            &dirs,
            &[
                "example.com/fpga=card0".into(),
                "example.com/fpga=card1".into(),
            ],
        )
        .unwrap();
        // The spec-wide env once, then each device's.
        assert_eq!(e.env, ["FPGA_VENDOR=example", "FPGA=card0"]);
        assert_eq!(e.devices.len(), 2);
        let null = &e.devices[0];
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        assert_eq!(null.access, "rw");
        assert_eq!(e.devices[1].cgroup_rule(), "c 240:1 rwm");
        assert_eq!(e.devices[1].mode, 0o600);
        assert!(e.mounts[0].readonly);
        assert_eq!(e.hooks[0].stage, HookStage::CreateRuntime);
        assert_eq!(e.hooks[0].args, ["/bin/true"]);
    }

    #[test]
    fn unknown_or_unsupported_devices_are_refused_by_name() {
        let d = dir_with(SPEC);
        let dirs = [d.path().to_owned()];
        for (name, says) in [
            ("example.com/fpga=card9", "no device \"card9\""),
            ("example.com/gpu=0", "no CDI spec of kind"),
            ("card0", "not a qualified name"),
        ] {
            let e = resolve_cdi(&dirs, &[name.to_string()]).unwrap_err();
            assert!(e.to_string().contains(says), "{name}: {e}");
        }
        let in_ns = SPEC.replace("hookName: createRuntime", "hookName: createContainer");
        let d = dir_with(&in_ns);
        let e =
            resolve_cdi(&[d.path().to_owned()], &["example.com/fpga=card0".into()]).unwrap_err();
        assert!(e.to_string().contains("createContainer"), "{e}");
        let broken = dir_with("kind: example.com/fpga\ndevices: 7\ncdiVersion: 0.6.0\n");
        let e =
            resolve_cdi(&[broken.path().to_owned()], &["example.com/fpga=x".into()]).unwrap_err();
        assert!(e.to_string().contains("malformed"), "{e}");
    }

    #[test]
    fn cri_devices_come_from_the_host_node() {
        let nodes = cri_devices(&[cri::Device {
            container_path: "/dev/mynull".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        }])
        .unwrap();
        assert_eq!(nodes[0].cgroup_rule(), "c 1:3 rw");
        assert!(
            cri_devices(&[cri::Device {
                container_path: "/dev/x".into(),
                host_path: "/etc/hostname".into(),
                permissions: String::new(),
            }])
            .is_err()
        );
    }

    #[test]
    fn hooks_get_the_state_and_fail_loudly() {
        let state = oci_state("c1", "created", 42, Path::new("/b"), &BTreeMap::new());
        let ok = Hook {
            stage: HookStage::CreateRuntime,
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "grep -q '\"pid\":42'".into()],
            env: vec![],
            timeout: None,
        };
        run_hooks(std::slice::from_ref(&ok), HookStage::CreateRuntime, &state).unwrap();
        let failing = Hook {
            args: vec!["sh".into(), "-c".into(), "echo broken >&2; exit 3".into()],
            ..ok.clone()
        };
        let e = run_hooks(&[failing], HookStage::CreateRuntime, &state).unwrap_err();
        assert!(e.contains("broken"), "{e}");
        let slow = Hook {
            args: vec!["sh".into(), "-c".into(), "sleep 5".into()],
            timeout: Some(Duration::from_millis(100)),
            ..ok
        };
        let e = run_hooks(&[slow], HookStage::CreateRuntime, &state).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
    }
}
