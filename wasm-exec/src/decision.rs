//! Which runtime a container gets: native `execve` or a WASI guest under Wasmtime.
//!
//! Kubernetes picks a runtime per pod, so a pod mixing a Wasm app with a native sidecar
//! is split here, per container. The rules follow crun's annotations (so existing
//! manifests keep working) but judge the entrypoint by its bytes, never by its name.
//! In order, the first rule that applies wins:
//!
//! 1. `run.oci.handler` on the container, else on the pod: `wasm` forces Wasm,
//!    `wasm-smart` means "Wasm if the entrypoint is a Wasm binary".
//! 2. `module.wasm.image/variant` on the container, the pod, the image annotations or the
//!    image config labels: `compat` forces Wasm, `compat-smart` / `wasm-smart` are smart.
//! 3. The pod's runtime handler `wasm`: smart.
//! 4. A Wasm image (Wasm layer media types or a wasi/wasm platform): forced Wasm.
//! 5. Otherwise native.
//!
//! "Forced" with an entrypoint that is not Wasm is an error rather than a doomed start.

use std::collections::HashMap;

use crate::sniff::BinaryKind;

pub const HANDLER_ANNOTATION: &str = "run.oci.handler";
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// The runtime handler (RuntimeClass `handler`) that turns on detection for a pod.
pub const WASM_RUNTIME_HANDLER: &str = "wasm";

/// Everything the decision looks at, in domain terms.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    pub pod_annotations: &'a HashMap<String, String>,
    pub container_annotations: &'a HashMap<String, String>,
    /// Annotations of the image manifest.
    pub image_annotations: &'a HashMap<String, String>,
    /// Labels of the image config.
    pub image_labels: &'a HashMap<String, String>,
    /// `RunPodSandboxRequest.runtime_handler` of the pod.
    pub runtime_handler: &'a str,
    /// The image has Wasm layer media types or a wasi/wasm platform.
    pub image_is_wasm: bool,
    /// The entrypoint as the container will run it (argv[0]), for messages.
    pub entrypoint: &'a str,
    /// What the entrypoint file is, resolved by the caller inside the rootfs;
    /// `None` if it could not be found or read.
    pub entrypoint_kind: Option<BinaryKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    Module,
    Component,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Native,
    Wasm { kind: WasmKind },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub runtime: Runtime,
    /// Why, in a sentence for ContainerStatus verbose info.
    pub reason: String,
}

/// A rule demanded Wasm but the entrypoint is not a Wasm binary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule} but the entrypoint {entrypoint} {what}, not a WebAssembly module")]
pub struct DecisionError {
    /// The rule that forced Wasm, e.g. `module.wasm.image/variant=compat`.
    pub rule: String,
    pub entrypoint: String,
    /// What the entrypoint is instead, e.g. "is an ELF executable".
    pub what: String,
}

/// How strongly a matched rule asks for Wasm.
#[derive(Clone, Copy)]
enum Mode {
    /// Wasm, or an error if the entrypoint is not Wasm.
    Forced,
    /// Wasm if the entrypoint is Wasm, native otherwise.
    Smart,
}

/// Decides the runtime of one container. Pure: no I/O, no clock.
pub fn decide(input: &DecisionInput<'_>) -> Result<Decision, DecisionError> {
    let Some((mode, rule)) = matching_rule(input) else {
        return Ok(Decision {
            runtime: Runtime::Native,
            reason: "no Wasm annotation, runtime handler or Wasm image".to_string(),
        });
    };
    let wasm_kind = match input.entrypoint_kind {
        Some(BinaryKind::WasmModule) => Some(WasmKind::Module),
        Some(BinaryKind::WasmComponent) => Some(WasmKind::Component),
        _ => None,
    };
    let entrypoint = input.entrypoint;
    match (mode, wasm_kind) {
        (_, Some(kind)) => Ok(Decision {
            runtime: Runtime::Wasm { kind },
            reason: format!(
                "{rule} and {entrypoint} {}",
                describe(input.entrypoint_kind)
            ),
        }),
        (Mode::Smart, None) => Ok(Decision {
            runtime: Runtime::Native,
            reason: format!(
                "{rule} but {entrypoint} {}",
                describe(input.entrypoint_kind)
            ),
        }),
        (Mode::Forced, None) => Err(DecisionError {
            rule,
            entrypoint: entrypoint.to_string(),
            what: describe(input.entrypoint_kind).to_string(),
        }),
    }
}

/// The first rule that applies, as its mode and a phrase naming it and where it was found.
fn matching_rule(input: &DecisionInput<'_>) -> Option<(Mode, String)> {
    let handler = [
        (input.container_annotations, "on the container"),
        (input.pod_annotations, "on the pod"),
    ];
    for (map, place) in handler {
        let Some(value) = map.get(HANDLER_ANNOTATION) else {
            continue;
        };
        let mode = match value.as_str() {
            "wasm" => Mode::Forced,
            "wasm-smart" => Mode::Smart,
            _ => continue,
        };
        return Some((
            mode,
            format!("annotation {HANDLER_ANNOTATION}={value} {place}"),
        ));
    }
    let variant = [
        (
            input.container_annotations,
            "annotation",
            "on the container",
        ),
        (input.pod_annotations, "annotation", "on the pod"),
        (
            input.image_annotations,
            "annotation",
            "in the image annotations",
        ),
        (input.image_labels, "label", "in the image labels"),
    ];
    for (map, what, place) in variant {
        let Some(value) = map.get(VARIANT_ANNOTATION) else {
            continue;
        };
        let mode = match value.as_str() {
            "compat" => Mode::Forced,
            "compat-smart" | "wasm-smart" => Mode::Smart,
            _ => continue,
        };
        return Some((mode, format!("{what} {VARIANT_ANNOTATION}={value} {place}")));
    }
    if input.runtime_handler == WASM_RUNTIME_HANDLER {
        return Some((
            Mode::Smart,
            format!("runtime handler {WASM_RUNTIME_HANDLER}"),
        ));
    }
    if input.image_is_wasm {
        return Some((Mode::Forced, "the image is a Wasm image".to_string()));
    }
    None
}

fn describe(kind: Option<BinaryKind>) -> &'static str {
    match kind {
        Some(BinaryKind::WasmModule) => "is a WebAssembly core module",
        Some(BinaryKind::WasmComponent) => "is a WebAssembly component",
        Some(BinaryKind::Elf) => "is an ELF executable",
        Some(BinaryKind::Script) => "is a #! script",
        Some(BinaryKind::Unknown) => "is a file of unknown format",
        None => "could not be found or read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One scenario: maps are owned here and lent to a `DecisionInput`.
    #[derive(Default)]
    struct Case {
        pod: HashMap<String, String>,
        container: HashMap<String, String>,
        image_annotations: HashMap<String, String>,
        image_labels: HashMap<String, String>,
        handler: &'static str,
        image_is_wasm: bool,
    }

    impl Case {
        fn decide(
            &self,
            entrypoint: &str,
            kind: Option<BinaryKind>,
        ) -> Result<Decision, DecisionError> {
            decide(&DecisionInput {
                pod_annotations: &self.pod,
                container_annotations: &self.container,
                image_annotations: &self.image_annotations,
                image_labels: &self.image_labels,
                runtime_handler: self.handler,
                image_is_wasm: self.image_is_wasm,
                entrypoint,
                entrypoint_kind: kind,
            })
        }
    }

    const MODULE: Option<BinaryKind> = Some(BinaryKind::WasmModule);
    const COMPONENT: Option<BinaryKind> = Some(BinaryKind::WasmComponent);
    const ELF: Option<BinaryKind> = Some(BinaryKind::Elf);
    const WASM_MODULE: Runtime = Runtime::Wasm {
        kind: WasmKind::Module,
    };

    #[test]
    fn nothing_wasm_about_it_is_native() {
        let d = Case::default().decide("/bin/sh", ELF).unwrap();
        assert_eq!(d.runtime, Runtime::Native);
        // Without any rule the content alone does not switch runtimes.
        assert_eq!(
            Case::default().decide("/app.wasm", MODULE).unwrap().runtime,
            Runtime::Native
        );
    }

    #[test]
    fn compat_forces_wasm_and_rejects_native_entrypoints() {
        let case = Case {
            pod: map(&[(VARIANT_ANNOTATION, "compat")]),
            ..Default::default()
        };
        let d = case.decide("/hello.wasm", MODULE).unwrap();
        assert_eq!(d.runtime, WASM_MODULE);
        assert_eq!(
            d.reason,
            "annotation module.wasm.image/variant=compat on the pod and /hello.wasm is a WebAssembly core module"
        );
        let err = case.decide("/bin/sh", ELF).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation module.wasm.image/variant=compat on the pod but the entrypoint /bin/sh is an ELF executable, not a WebAssembly module"
        );
        let err = case.decide("/missing", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("/missing could not be found or read"),
            "{err}"
        );
    }

    #[test]
    fn compat_from_image_annotations_or_labels() {
        let annotated = Case {
            image_annotations: map(&[(VARIANT_ANNOTATION, "compat")]),
            ..Default::default()
        };
        let d = annotated.decide("/hello.wasm", MODULE).unwrap();
        assert_eq!(d.runtime, WASM_MODULE);
        assert!(
            d.reason.contains("in the image annotations"),
            "{}",
            d.reason
        );
        let labelled = Case {
            image_labels: map(&[(VARIANT_ANNOTATION, "compat")]),
            ..Default::default()
        };
        let d = labelled.decide("/hello.wasm", COMPONENT).unwrap();
        assert_eq!(
            d.runtime,
            Runtime::Wasm {
                kind: WasmKind::Component
            }
        );
        assert!(
            d.reason
                .starts_with("label module.wasm.image/variant=compat in the image labels")
        );
    }

    #[test]
    fn smart_variants_follow_the_content_not_the_name() {
        for value in ["compat-smart", "wasm-smart"] {
            let case = Case {
                pod: map(&[(VARIANT_ANNOTATION, value)]),
                ..Default::default()
            };
            let d = case.decide("/app.wasm", MODULE).unwrap();
            assert_eq!(d.runtime, WASM_MODULE);
            assert_eq!(
                d.reason,
                format!(
                    "annotation module.wasm.image/variant={value} on the pod and /app.wasm is a WebAssembly core module"
                )
            );
            // A sidecar in the same pod stays native.
            let d = case.decide("/usr/bin/envoy", ELF).unwrap();
            assert_eq!(d.runtime, Runtime::Native);
            assert!(
                d.reason.contains("/usr/bin/envoy is an ELF executable"),
                "{}",
                d.reason
            );
            // A `.wasm` name on an ELF file is native; a Wasm file without the suffix is Wasm.
            assert_eq!(
                case.decide("/app.wasm", ELF).unwrap().runtime,
                Runtime::Native
            );
            assert_eq!(
                case.decide("/bin/app", MODULE).unwrap().runtime,
                WASM_MODULE
            );
            // Unresolvable entrypoints go native, where execve reports the real error.
            assert_eq!(case.decide("/nope", None).unwrap().runtime, Runtime::Native);
        }
    }

    #[test]
    fn run_oci_handler_on_container_or_pod() {
        let forced = Case {
            container: map(&[(HANDLER_ANNOTATION, "wasm")]),
            ..Default::default()
        };
        let d = forced.decide("/bin/app", MODULE).unwrap();
        assert_eq!(d.runtime, WASM_MODULE);
        assert!(
            d.reason
                .starts_with("annotation run.oci.handler=wasm on the container")
        );
        let err = forced.decide("/app.wasm", ELF).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation run.oci.handler=wasm on the container but the entrypoint /app.wasm is an ELF executable, not a WebAssembly module"
        );
        let err = forced
            .decide("/run.sh", Some(BinaryKind::Script))
            .unwrap_err();
        assert!(err.to_string().contains("is a #! script"));

        let smart = Case {
            pod: map(&[(HANDLER_ANNOTATION, "wasm-smart")]),
            ..Default::default()
        };
        assert_eq!(
            smart.decide("/x", COMPONENT).unwrap().runtime,
            Runtime::Wasm {
                kind: WasmKind::Component
            }
        );
        assert_eq!(smart.decide("/x", ELF).unwrap().runtime, Runtime::Native);
        assert_eq!(
            smart
                .decide("/x", Some(BinaryKind::Unknown))
                .unwrap()
                .runtime,
            Runtime::Native
        );
    }

    #[test]
    fn container_handler_overrides_pod_and_beats_the_variant() {
        let case = Case {
            pod: map(&[(HANDLER_ANNOTATION, "wasm"), (VARIANT_ANNOTATION, "compat")]),
            container: map(&[(HANDLER_ANNOTATION, "wasm-smart")]),
            ..Default::default()
        };
        // The container's smart handler wins, so the native sidecar is not an error.
        let d = case.decide("/bin/sh", ELF).unwrap();
        assert_eq!(d.runtime, Runtime::Native);
        assert!(
            d.reason
                .starts_with("annotation run.oci.handler=wasm-smart on the container")
        );
        // Unknown handler values (crun's krun, say) are not ours and fall through.
        let other = Case {
            pod: map(&[(HANDLER_ANNOTATION, "krun")]),
            ..Default::default()
        };
        assert_eq!(other.decide("/x", MODULE).unwrap().runtime, Runtime::Native);
    }

    #[test]
    fn runtime_handler_wasm_detects_per_container() {
        let case = Case {
            handler: "wasm",
            ..Default::default()
        };
        let d = case.decide("/app", MODULE).unwrap();
        assert_eq!(d.runtime, WASM_MODULE);
        assert_eq!(
            d.reason,
            "runtime handler wasm and /app is a WebAssembly core module"
        );
        assert_eq!(case.decide("/pause", ELF).unwrap().runtime, Runtime::Native);
        // Other handlers mean nothing here.
        let runc = Case {
            handler: "runc",
            ..Default::default()
        };
        assert_eq!(
            runc.decide("/app", MODULE).unwrap().runtime,
            Runtime::Native
        );
    }

    #[test]
    fn a_wasm_image_runs_as_wasm() {
        let case = Case {
            image_is_wasm: true,
            ..Default::default()
        };
        let d = case.decide("/hello.wasm", MODULE).unwrap();
        assert_eq!(d.runtime, WASM_MODULE);
        assert_eq!(
            d.reason,
            "the image is a Wasm image and /hello.wasm is a WebAssembly core module"
        );
        assert!(case.decide("/bin/sh", ELF).is_err());
        // An explicit smart annotation beats the image shape.
        let smart = Case {
            image_is_wasm: true,
            pod: map(&[(VARIANT_ANNOTATION, "compat-smart")]),
            ..Default::default()
        };
        assert_eq!(
            smart.decide("/bin/sh", ELF).unwrap().runtime,
            Runtime::Native
        );
    }
}
