//! CreateContainer: resolve the pod and the image, translate the request into a container
//! spec, and have `sandbox::container` set the process up, held before execve until
//! StartContainer. A failure leaves nothing behind (the sandbox layer undoes its own steps;
//! the name reservation is released here).

use cri_api::v1::{CreateContainerRequest, CreateContainerResponse, NamespaceMode};
use sandbox::container::{self as ctr, ContainerState};

use std::collections::HashMap;

use image_store::LayerFormat;

use crate::containers::spec::{self, ContainerDirs, ImageFacts};
use crate::containers::{ContainerRecord, Containers, MountImage, MountRecord};
use crate::containers::{devices, image_volumes, wasm};
use crate::error::{CriError, CriResult, blocking};
use crate::metadata;
use crate::service::CriService;

pub async fn create_container(
    svc: &CriService,
    req: CreateContainerRequest,
) -> CriResult<CreateContainerResponse> {
    let invalid = |m: &str| CriError::InvalidArgument(m.to_string());
    let cfg = req
        .config
        .ok_or_else(|| invalid("CreateContainer needs a container config"))?;
    let meta = cfg
        .metadata
        .clone()
        .ok_or_else(|| invalid("the container config has no metadata"))?;
    metadata::check_name("the container's name", &meta.name, true)?;
    let adding =
        metadata::check_labels_and_annotations("container", &cfg.labels, &cfg.annotations)?;
    let in_use = svc
        .containers
        .list()
        .iter()
        .map(|c| metadata::metadata_size(c.labels.iter().chain(&c.annotations)))
        .sum();
    metadata::check_node_budget("containers", in_use, adding)?;
    let pod = svc.pods.status(&req.pod_sandbox_id)?;
    if !pod.ready {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready",
            pod.record.id
        )));
    }
    let image_name = cfg
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    if image_name.is_empty() {
        return Err(invalid("the container config names no image"));
    }
    let image = svc.images.get(&image_name).ok_or_else(|| {
        CriError::NotFound(format!("image {image_name:?} not found: pull it first"))
    })?;
    // Overlay wants the topmost layer first.
    let mut layers = Vec::new();
    for l in image.layers.iter().rev() {
        if let Some(chain) = &l.chain_id {
            layers.push(svc.images.layer_dir(chain)?);
        }
    }
    let mut chain_ids: Vec<String> = image
        .layers
        .iter()
        .filter_map(|l| l.chain_id.clone())
        .collect();
    let wasm_blob = image
        .layers
        .iter()
        .find(|l| l.format == LayerFormat::Wasm)
        .map(|l| svc.images.blob_path(&l.digest))
        .transpose()?;
    let mut facts = ImageFacts::from_config(&image.config, layers);

    // Native or Wasm: decided per container, before anything is created.
    let argv = spec::process_args(&cfg, &facts);
    let env = spec::merge_env(&facts.env, &cfg.envs)?;
    let cwd = spec::working_dir(&cfg, &facts);
    let pod_annotations: HashMap<String, String> = pod
        .record
        .spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (decision, wasm_plan) = wasm::plan(&wasm::PlanInput {
        pod_annotations: &pod_annotations,
        container_annotations: &cfg.annotations,
        runtime_handler: &pod.record.spec.runtime_handler,
        image: &image,
        wasm_blob,
        layers: &facts.layers,
        argv: &argv,
        env: &env,
        cwd: &cwd,
    })?;
    if wasm_plan.is_some() && facts.layers.is_empty() {
        // A Wasm-artifact image: the module is mounted into an otherwise empty rootfs.
        facts.layers = vec![svc.containers.empty_layer()];
    }

    // The request's stop signal (KEP-4960), else the image's; a name StopContainer could
    // not send is refused before anything is made.
    let stop_signal = match crate::containers::stop_signal_from_cri(cfg.stop_signal)? {
        Some(name) => name,
        None => facts.stop_signal.clone(),
    };
    if !stop_signal.is_empty() && crate::containers::parse_signal(&stop_signal).is_none() {
        return Err(invalid(&format!(
            "the image's StopSignal {stop_signal:?} is not a signal"
        )));
    }

    let image_volumes::ResolvedImageVolumes {
        volumes: image_volumes,
        chain_ids: image_volume_layers,
        image_ids: image_volume_ids,
    } = image_volumes::resolve(svc, &cfg.mounts)?;
    let mut device_nodes = devices::cri_devices(&cfg.devices)?;
    let cdi = devices::resolve_cdi(&svc.config.cdi_spec_dirs, &cdi_device_names(&cfg))?;

    let id = Containers::new_id();
    let p = &pod.record.spec;
    let reserved_name = format!(
        "{}_{}_{}_{}_{}",
        meta.name, p.name, p.namespace, p.uid, meta.attempt
    );
    let reservation = svc.containers.reserve_name(&reserved_name, &id)?;
    // Goes again unless the container is committed: the Wasm runner's files are made here,
    // and a failed create must not leave an empty writable layer dir behind.
    let layer_root = LayerRoot(Some(svc.containers.layer_root_of(&id)));

    let target_pid_ns = target_pid_namespace(svc, &cfg)?;
    let (upper, work) = svc.containers.layer_dirs_of(&id);
    let dir = svc.containers.state_dir_of(&id);
    let mut built = spec::build(
        &id,
        &cfg,
        &pod,
        &facts,
        &ContainerDirs {
            upper,
            work,
            fallback_log: dir.join("container.log"),
        },
        target_pid_ns,
    )?;
    built.spec.image_volumes = image_volumes;
    device_nodes.extend(cdi.devices);
    built.spec.devices = device_nodes;
    built.spec.mounts.extend(cdi.mounts);
    built
        .spec
        .process
        .additional_gids
        .extend(cdi.additional_gids);
    spec::override_env(&mut built.spec.process.env, &cdi.env);
    // Like containerd: a host path that does not exist yet becomes a directory.
    for m in cfg
        .mounts
        .iter()
        .filter(|m| !image_volumes::is_image_volume(m))
    {
        if std::fs::symlink_metadata(&m.host_path).is_err() {
            std::fs::create_dir_all(&m.host_path).map_err(|e| {
                CriError::InvalidArgument(format!("creating host path {:?}: {e}", m.host_path))
            })?;
        }
    }

    chain_ids.extend(image_volume_layers);
    if let Some(plan) = &wasm_plan {
        let containers = svc.containers.clone();
        let module = plan.module_on_host.clone();
        let artifact = blocking(move || containers.wasm_cache.get_or_compile(&module))
            .await?
            .map_err(|e| CriError::InvalidArgument(format!("compiling the Wasm module: {e}")))?;
        let (oom_marker, termination_log) = svc.containers.wasm_files_of(&id);
        wasm::create_runner_files(&oom_marker, &termination_log)
            .map_err(|e| CriError::Internal(format!("preparing the Wasm runner: {e}")))?;
        let memory_limit = cfg
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(|r| r.memory_limit_in_bytes)
            .filter(|m| *m > 0)
            .map(|m| m as u64);
        wasm::apply(
            plan,
            &mut built.spec,
            &wasm::RunnerFiles {
                artifact: &artifact,
                oom_marker: &oom_marker,
                termination_log: &termination_log,
            },
            memory_limit,
        );
    }

    let monitor = svc.containers.monitor().clone();
    let spec_for_create = built.spec.clone();
    let dir_for_create = dir.clone();
    let created =
        match blocking(move || ctr::create(&monitor, &spec_for_create, &dir_for_create)).await? {
            Ok(created) => created,
            // A pod stopped meanwhile takes its namespaces with it; that, not the symptom it
            // caused (a failed fork or join), is the reason.
            Err(e) => return Err(pod_gone(svc, &pod.record.id).unwrap_or(e.into())),
        };

    if let Err(e) = run_create_hooks(&cdi.hooks, &id, created.pid, &dir, &cfg.annotations).await {
        let trash = svc.containers.trash.clone();
        let _ = blocking(move || ctr::remove(&dir, &trash)).await;
        return Err(e);
    }

    let image_ref = image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.clone());
    let record = ContainerRecord {
        id: id.clone(),
        pod_id: pod.record.id.clone(),
        name: meta.name,
        attempt: meta.attempt,
        image: image_as_named(&cfg, &image_name, &image),
        image_id: image.id.clone(),
        image_ref,
        labels: cfg.labels.into_iter().collect(),
        annotations: cfg.annotations.into_iter().collect(),
        log_path: built.log_path,
        created_at_ns: created.created_at_ns,
        mounts: cfg
            .mounts
            .iter()
            .map(|m| MountRecord {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                image: m.image.as_ref().map(|i| MountImage {
                    image: i.image.clone(),
                    user_specified_image: i.user_specified_image.clone(),
                    image_ref: image_volume_ids
                        .iter()
                        .find(|(path, _)| *path == m.container_path)
                        .map(|(_, id)| id.clone())
                        .unwrap_or_default(),
                }),
                image_sub_path: m.image_sub_path.clone(),
            })
            .collect(),
        stop_signal,
        uid: built.user.uid,
        gid: built.user.gid,
        additional_gids: built.user.additional_gids,
        reserved_name,
        dir: dir.clone(),
        wasm: wasm_plan.is_some(),
        runtime_reason: decision.reason,
        layer_chain_ids: chain_ids,
        not_applied: built.apparmor_not_applied.into_iter().collect(),
        hooks: cdi.hooks,
    };
    let record = match svc.containers.insert(record) {
        Ok(r) => r,
        Err(e) => {
            let trash = svc.containers.trash.clone();
            let _ = blocking(move || ctr::remove(&dir, &trash)).await;
            return Err(e);
        }
    };
    // StopPodSandbox marks the pod stopping before it lists the containers to kill: one
    // that committed after that mark is seen here and goes again.
    if let Some(stopping) = pod_gone(svc, &record.pod_id) {
        let _ = svc.containers.remove(&record).await;
        return Err(stopping);
    }
    reservation.commit();
    layer_root.keep();
    for what in &record.not_applied {
        tracing::warn!(container = %record.id, "{what}");
    }
    svc.containers.emit(
        &record,
        cri_api::v1::ContainerEventType::ContainerCreatedEvent,
    );
    svc.containers.watch_exit(record);
    Ok(CreateContainerResponse { container_id: id })
}

/// The image as ContainerStatus reports it: the name the user wrote. The kubelet sends the
/// image's id and the user's name beside it (`user_specified_image`); older callers that
/// send only an id get the image's first tag (as containerd does), so a status never shows
/// a bare id where the kubelet compares names.
fn image_as_named(
    cfg: &cri_api::v1::ContainerConfig,
    requested: &str,
    image: &image_store::ImageRecord,
) -> String {
    let user = cfg
        .image
        .as_ref()
        .map(|i| i.user_specified_image.as_str())
        .unwrap_or_default();
    if !user.is_empty() {
        return user.to_string();
    }
    let bare = requested.strip_prefix("sha256:").unwrap_or(requested);
    let is_id = requested == image.id || (bare.len() == 64 && image.id.ends_with(bare));
    if is_id && let Some(name) = image.repo_tags.first().or(image.repo_digests.first()) {
        return name.clone();
    }
    requested.to_string()
}

/// The CDI devices the request names: the `cdi_devices` field, and the older
/// `cdi.k8s.io/<name>` annotations (comma-separated qualified names) device plugins set.
fn cdi_device_names(cfg: &cri_api::v1::ContainerConfig) -> Vec<String> {
    let mut names: Vec<String> = cfg.cdi_devices.iter().map(|d| d.name.clone()).collect();
    let mut annotated: Vec<_> = cfg
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("cdi.k8s.io/"))
        .collect();
    annotated.sort();
    for (_, v) in annotated {
        names.extend(
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from),
        );
    }
    // One device named twice (field and annotation) is applied once.
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// The CDI createRuntime/prestart hooks, once the container exists (held before execve).
async fn run_create_hooks(
    hooks: &[devices::Hook],
    id: &str,
    pid: i32,
    dir: &std::path::Path,
    annotations: &HashMap<String, String>,
) -> CriResult<()> {
    if !hooks
        .iter()
        .any(|h| h.stage == devices::HookStage::CreateRuntime)
    {
        return Ok(());
    }
    let annotations = annotations.clone().into_iter().collect();
    let state = devices::oci_state(id, "created", pid, dir, &annotations);
    let hooks = hooks.to_vec();
    blocking(move || devices::run_hooks(&hooks, devices::HookStage::CreateRuntime, &state))
        .await?
        .map_err(|e| CriError::FailedPrecondition(format!("CDI {e}")))
}

/// FailedPrecondition when the pod stopped (or began stopping) since the create began.
fn pod_gone(svc: &CriService, pod_id: &str) -> Option<CriError> {
    match svc.pods.status(pod_id) {
        Ok(pod) if pod.ready => None,
        _ => Some(CriError::FailedPrecondition(format!(
            "pod sandbox {pod_id} was stopped while the container was being created"
        ))),
    }
}

/// The container's `<root_dir>/containers/<id>`, removed on drop unless kept.
struct LayerRoot(Option<std::path::PathBuf>);

impl LayerRoot {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for LayerRoot {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// For PID namespace mode TARGET: the running target container's PID namespace.
fn target_pid_namespace(
    svc: &CriService,
    cfg: &cri_api::v1::ContainerConfig,
) -> CriResult<Option<std::path::PathBuf>> {
    let ns = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let Some(ns) = ns.filter(|n| n.pid == NamespaceMode::Target as i32) else {
        return Ok(None);
    };
    let target = svc.containers.get(&ns.target_id)?;
    match svc.containers.state(&target) {
        ContainerState::Running { pid, .. } | ContainerState::Created { pid } => {
            Ok(Some(format!("/proc/{pid}/ns/pid").into()))
        }
        ContainerState::Exited(_) => Err(CriError::FailedPrecondition(format!(
            "target container {} is not running",
            target.id
        ))),
    }
}
