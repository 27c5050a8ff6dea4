//! Wasm or native, per container: find the entrypoint inside the image (as the container
//! will see it), sniff its header, and let `wasm_exec::decide` weigh the annotations, the
//! runtime handler and the image. A Wasm container is then run as a native one whose
//! process is `berth __wasm-run` (from the sealed copy of our binary) with the module
//! precompiled here, in the daemon, into the shared compile cache.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use image_store::ImageRecord;
use wasm_exec::{Decision, DecisionInput, Runtime, sniff_file};

use crate::error::CriError;

/// Symlink hops allowed while resolving a path inside the image (as the kernel's 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// What CreateContainer decided, and what it needs to run a Wasm container.
#[derive(Debug, Clone)]
pub struct WasmPlan {
    pub decision: Decision,
    /// The module on the host (in an image layer or a Wasm layer blob).
    pub module_on_host: PathBuf,
    /// Where the guest's argv[0] points inside the container.
    pub module_in_container: PathBuf,
    /// For Wasm-artifact images: the blob must be mounted at `module_in_container`.
    pub mount_module: bool,
}

/// Finds `path` (absolute, inside the image) in the layers as overlayfs would show it:
/// topmost layer first, whiteouts hide, symlinks are followed inside the image only.
pub fn lookup_in_layers(layers: &[PathBuf], path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = resolved.iter().chain(std::iter::once(&c)).collect();
        let (layer, meta) = layers.iter().find_map(|l| {
            std::fs::symlink_metadata(l.join(&candidate))
                .ok()
                .map(|m| (l, m))
        })?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.len() == 0 {
            return None; // a whiteout
        }
        if ft.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return None;
            }
            let target = std::fs::read_link(layer.join(&candidate)).ok()?;
            if target.is_absolute() {
                resolved.clear();
            }
            let mut t = components(&target);
            t.reverse();
            pending.extend(t);
            continue;
        }
        resolved.push(c);
    }
    let rel: PathBuf = resolved.iter().collect();
    layers
        .iter()
        .map(|l| l.join(&rel))
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .filter(|p| p.is_file())
}

fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Where `argv0` is inside the image: as given when it has a `/`, else the first match in
/// the container's `PATH`.
pub fn resolve_entrypoint(
    layers: &[PathBuf],
    argv0: &str,
    env: &[String],
    cwd: &Path,
) -> Option<(PathBuf, PathBuf)> {
    if argv0.contains('/') {
        let in_container = cwd.join(argv0);
        return lookup_in_layers(layers, &in_container).map(|h| (in_container, h));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let in_container = Path::new(dir).join(argv0);
        lookup_in_layers(layers, &in_container).map(|h| (in_container, h))
    })
}

/// Everything `plan` looks at.
pub struct PlanInput<'a> {
    pub pod_annotations: &'a HashMap<String, String>,
    pub container_annotations: &'a HashMap<String, String>,
    pub runtime_handler: &'a str,
    pub image: &'a ImageRecord,
    /// The image's Wasm layer blob, for Wasm-artifact images.
    pub wasm_blob: Option<PathBuf>,
    pub layers: &'a [PathBuf],
    pub argv: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a Path,
}

/// Decides native or Wasm; `Ok(None)` means native, with the decision for the record.
pub fn plan(input: &PlanInput<'_>) -> Result<(Decision, Option<WasmPlan>), CriError> {
    let argv0 = input.argv.first().map(String::as_str).unwrap_or_default();
    // A Wasm-artifact image has no rootfs: its module is the Wasm layer itself.
    let (found, mount_module) = match &input.wasm_blob {
        Some(blob) => {
            let name = Path::new(argv0)
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| "module.wasm".into());
            (Some((Path::new("/").join(name), blob.clone())), true)
        }
        None => (
            resolve_entrypoint(input.layers, argv0, input.env, input.cwd),
            false,
        ),
    };
    let kind = found.as_ref().and_then(|(_, host)| sniff_file(host).ok());
    let labels: HashMap<String, String> = input.image.config["config"]["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let no_annotations = HashMap::new();
    let decision = wasm_exec::decide(&DecisionInput {
        pod_annotations: input.pod_annotations,
        container_annotations: input.container_annotations,
        image_annotations: &no_annotations,
        image_labels: &labels,
        runtime_handler: input.runtime_handler,
        image_is_wasm: input.image.is_wasm(),
        entrypoint: argv0,
        entrypoint_kind: kind,
    })
    .map_err(|e| CriError::InvalidArgument(e.to_string()))?;
    let plan = match (&decision.runtime, found) {
        (Runtime::Wasm { .. }, Some((in_container, on_host))) => Some(WasmPlan {
            decision: decision.clone(),
            module_on_host: on_host,
            module_in_container: in_container,
            mount_module,
        }),
        (Runtime::Wasm { .. }, None) => {
            return Err(CriError::InvalidArgument(format!(
                "{}, but the entrypoint {argv0:?} is not in the image",
                decision.reason
            )));
        }
        (Runtime::Native, _) => None,
    };
    Ok((decision, plan))
}

/// Files handed to the runner as descriptors: they follow `pass_files` order (fd 3, 4, 5).
const ARTIFACT_FD: i32 = 3;
const OOM_MARKER_IN_PROCESS: &str = "/proc/self/fd/4";
const TERMINATION_LOG_IN_PROCESS: &str = "/proc/self/fd/5";

/// What the runner needs besides the plan.
pub struct RunnerFiles<'a> {
    pub artifact: &'a wasm_exec::Artifact,
    pub oom_marker: &'a Path,
    pub termination_log: &'a Path,
}

/// Turns a native spec into the spec of a Wasm container: same isolation, but the process
/// is `berth __wasm-run` from our sealed binary, with the precompiled module, the OOM
/// marker and the termination log as inherited descriptors (opened on the host before
/// pivot_root, so the guest's filesystem shows none of them).
pub fn apply(
    plan: &WasmPlan,
    spec: &mut sandbox::container::ContainerSpec,
    files: &RunnerFiles<'_>,
    memory_limit: Option<u64>,
) {
    use sandbox::container::spec::{BindMount, PassFile, Propagation};
    use wasm_exec::runner::{ArtifactSource, PrecompiledArtifact};
    let mut argv = spec.process.args.clone();
    if let Some(first) = argv.first_mut() {
        *first = plan.module_in_container.display().to_string();
    }
    let opts = wasm_exec::RunOptions {
        module: plan.module_in_container.clone(),
        argv,
        env: Vec::new(),
        cwd: Some(spec.process.cwd.clone()),
        memory_limit,
        oom_marker: Some(OOM_MARKER_IN_PROCESS.into()),
        termination_log: Some(TERMINATION_LOG_IN_PROCESS.into()),
        precompiled: Some(PrecompiledArtifact {
            source: ArtifactSource::Fd(ARTIFACT_FD),
            sha256: files.artifact.sha256.clone(),
        }),
        cache_dir: None,
    };
    spec.process.args = ["berth", wasm_exec::runner::RUN_ARG]
        .iter()
        .map(|s| s.to_string())
        .chain(
            opts.to_args()
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned()),
        )
        .collect();
    spec.process.exec_self = true;
    spec.process.pass_files = vec![
        PassFile {
            path: files.artifact.path.clone(),
            writable: false,
        },
        PassFile {
            path: files.oom_marker.to_path_buf(),
            writable: true,
        },
        PassFile {
            path: files.termination_log.to_path_buf(),
            writable: true,
        },
    ];
    if plan.mount_module {
        spec.mounts.push(BindMount {
            source: plan.module_on_host.clone(),
            destination: plan.module_in_container.clone(),
            readonly: true,
            recursive_readonly: false,
            propagation: Propagation::Private,
        });
    }
}

/// Creates the (empty) files the runner reports through; writable by any container user,
/// as the runner reopens them through /proc/self/fd after dropping privileges.
pub fn create_runner_files(oom_marker: &Path, termination_log: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for f in [oom_marker, termination_log] {
        if let Some(dir) = f.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(f, b"")?;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o666))?;
    }
    Ok(())
}

/// After a Wasm container exited: whether its guest ran out of memory, and why it ended
/// abnormally (the runner's termination log), for ContainerStatus.
pub fn exit_facts(oom_marker: &Path, termination_log: &Path) -> (bool, Option<String>) {
    let oom = std::fs::metadata(oom_marker).is_ok_and(|m| m.len() > 0);
    let message = std::fs::read_to_string(termination_log)
        .ok()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    (oom, message)
}

/// The exec request for `cmd` in a container. In a Wasm container, exec runs a WASI module
/// from the container's rootfs with the same runner (none of crun, runwasi or youki can);
/// anything else is refused with the reason.
pub fn exec_request(
    rec: &super::ContainerRecord,
    cmd: Vec<String>,
) -> Result<sandbox::container::ExecRequest, CriError> {
    use sandbox::container::{ContainerSpec, ExecRequest, state};
    if !rec.wasm {
        return Ok(ExecRequest {
            args: cmd,
            env: Vec::new(),
            exec_self: false,
        });
    }
    let spec: ContainerSpec = state::read_json(&rec.dir, state::CONFIG)
        .map_err(|e| CriError::Internal(format!("reading the container spec: {e}")))?
        .ok_or_else(|| CriError::NotFound(format!("container {} has no spec", rec.id)))?;
    let argv0 = cmd.first().cloned().unwrap_or_default();
    let layers: Vec<PathBuf> = std::iter::once(spec.rootfs.upper.clone())
        .chain(spec.rootfs.lower.iter().cloned())
        .collect();
    let found =
        resolve_entrypoint(&layers, &argv0, &spec.process.env, &spec.process.cwd).or_else(|| {
            // The module of a Wasm-artifact image is a bind mount, not a layer file.
            let inside = spec.process.cwd.join(&argv0);
            spec.mounts
                .iter()
                .find(|m| m.destination == inside)
                .map(|m| (inside.clone(), m.source.clone()))
        });
    let refuse = |what: &str| {
        CriError::InvalidArgument(format!(
            "container {} runs WebAssembly: exec runs WASI modules from its rootfs, and {argv0:?} {what}",
            rec.id
        ))
    };
    let (inside, host) = found.ok_or_else(|| refuse("is not in it"))?;
    match sniff_file(&host) {
        Ok(kind) if kind.is_wasm() => {}
        Ok(kind) => return Err(refuse(&format!("is {kind:?}, not a WebAssembly module"))),
        Err(e) => return Err(refuse(&format!("cannot be read: {e}"))),
    }
    let mut args = vec![
        "berth".to_string(),
        wasm_exec::runner::RUN_ARG.to_string(),
        "--".to_string(),
        inside.display().to_string(),
    ];
    args.extend(cmd.into_iter().skip(1));
    Ok(ExecRequest {
        args,
        env: Vec::new(),
        exec_self: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lookup_follows_the_image_not_the_host() {
        let low = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(low.path().join("usr/bin")).unwrap();
        std::fs::write(low.path().join("usr/bin/app"), b"\0asm\x01\0\0\0").unwrap();
        // /bin -> usr/bin in the lower layer, as Debian-style images have it.
        symlink("usr/bin", low.path().join("bin")).unwrap();
        // An escape attempt: /evil -> /../../../etc/passwd stays inside the image.
        symlink("/../../../etc/passwd", top.path().join("evil")).unwrap();
        let layers = vec![top.path().to_path_buf(), low.path().to_path_buf()];
        let found = lookup_in_layers(&layers, Path::new("/bin/app")).unwrap();
        assert_eq!(found, low.path().join("usr/bin/app"));
        assert_eq!(lookup_in_layers(&layers, Path::new("/evil")), None);
        // A symlink loop ends.
        symlink("/loop", top.path().join("loop")).unwrap();
        assert_eq!(lookup_in_layers(&layers, Path::new("/loop")), None);
    }

    #[test]
    fn path_lookup_uses_the_container_path() {
        let img = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(img.path().join("opt/tools")).unwrap();
        std::fs::write(img.path().join("opt/tools/hello"), b"x").unwrap();
        let layers = vec![img.path().to_path_buf()];
        let env = vec!["PATH=/usr/bin:/opt/tools".to_string()];
        let (inside, host) = resolve_entrypoint(&layers, "hello", &env, Path::new("/")).unwrap();
        assert_eq!(inside, PathBuf::from("/opt/tools/hello"));
        assert_eq!(host, img.path().join("opt/tools/hello"));
        assert!(resolve_entrypoint(&layers, "hello", &[], Path::new("/")).is_none());
        let (inside, _) =
            resolve_entrypoint(&layers, "tools/hello", &[], Path::new("/opt")).unwrap();
        assert_eq!(inside, PathBuf::from("/opt/tools/hello"));
    }
}
