//! UpdateRuntimeConfig: the kubelet hands over the node's pod CIDR (from the Node object)
//! whenever it changes. berth keeps it (Status reports it under "podCIDR") and, when
//! `cni.conf_template` names a template, renders the pod network from it into
//! `<cni.conf_dir>/10-berth-net.conflist`, as containerd's `conf_template` does. The
//! template may use `{{.PodCIDR}}` (the first range) and `{{.PodCIDRRanges}}` (all of them,
//! comma-separated); the file is checked at start, so a template with any other action
//! never gets this far.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cri_api::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};

use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

/// The network config rendered from the template; first in the directory's order unless
/// the operator put an earlier one there.
pub const RENDERED_CONFLIST: &str = "10-berth-net.conflist";

pub async fn update_runtime_config(
    svc: &CriService,
    req: UpdateRuntimeConfigRequest,
) -> CriResult<UpdateRuntimeConfigResponse> {
    let pod_cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    let ranges = parse_pod_cidr(&pod_cidr)?;
    {
        let mut current = svc.pod_cidr.lock().expect("pod CIDR");
        if *current == pod_cidr {
            return Ok(UpdateRuntimeConfigResponse {});
        }
        *current = pod_cidr.clone();
    }
    tracing::info!(pod_cidr = %pod_cidr, "the kubelet set the node's pod CIDR");
    let template = &svc.config.cni.conf_template;
    if ranges.is_empty() || template.as_os_str().is_empty() {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    let template = template.clone();
    let target = svc.config.cni.conf_dir.join(RENDERED_CONFLIST);
    blocking(move || write_from_template(&template, &target, &ranges)).await??;
    Ok(UpdateRuntimeConfigResponse {})
}

/// `10.244.1.0/24` or several ranges separated by commas (dual stack); empty is "none".
pub fn parse_pod_cidr(text: &str) -> CriResult<Vec<String>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|r| {
            let r = r.trim();
            let bad = || {
                CriError::InvalidArgument(format!(
                    "pod CIDR {text:?}: {r:?} is not an address range like 10.244.0.0/24"
                ))
            };
            let (addr, len) = r.split_once('/').ok_or_else(bad)?;
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad());
            }
            Ok(r.to_string())
        })
        .collect()
}

/// The template with its two actions filled in; an error names any other action.
pub fn render(template: &str, ranges: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a '{{' without its '}}'".to_string())?;
        match after[..end].trim() {
            ".PodCIDR" => out.push_str(ranges.first().map_or("", String::as_str)),
            ".PodCIDRRanges" => out.push_str(&ranges.join(",")),
            other => {
                return Err(format!(
                    "the action {{{{{other}}}}} is not supported: use {{{{.PodCIDR}}}} or \
                     {{{{.PodCIDRRanges}}}}"
                ));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template at start: readable, and only actions `render` knows.
pub fn check_template(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    render(&text, &["10.0.0.0/24".to_string()]).map(|_| ())
}

fn write_from_template(template: &Path, target: &PathBuf, ranges: &[String]) -> CriResult<()> {
    let fail = |what: &str, e: String| {
        CriError::FailedPrecondition(format!(
            "rendering the CNI config from {}: {what}: {e}",
            template.display()
        ))
    };
    let text = std::fs::read_to_string(template).map_err(|e| fail("reading it", e.to_string()))?;
    let rendered = render(&text, ranges).map_err(|e| fail("rendering it", e))?;
    serde_json::from_str::<serde_json::Value>(&rendered)
        .map_err(|e| fail("the result is not JSON", e.to_string()))?;
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, rendered)
        .and_then(|()| std::fs::rename(&tmp, target))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(&format!("writing {}", target.display()), e.to_string())
        })?;
    tracing::info!(file = %target.display(), "wrote the pod network config from the template");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_single_and_dual_stack() {
        assert_eq!(parse_pod_cidr("").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_pod_cidr("10.244.1.0/24, fd00:1::/64").unwrap(),
            ["10.244.1.0/24", "fd00:1::/64"]
        );
        for bad in ["10.244.1.0", "10.244.1.0/33", "nope/8", "fd00::/129"] {
            let e = parse_pod_cidr(bad).unwrap_err();
            assert!(matches!(e, CriError::InvalidArgument(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn templates_fill_in_the_ranges_and_name_what_they_cannot() {
        let ranges = ["10.1.0.0/24".to_string(), "fd00::/64".to_string()];
        assert_eq!(
            render(
                r#"{"subnet": "{{.PodCIDR}}", "all": "{{ .PodCIDRRanges }}"}"#,
                &ranges
            )
            .unwrap(),
            r#"{"subnet": "10.1.0.0/24", "all": "10.1.0.0/24,fd00::/64"}"#
        );
        let e = render("{{range .Routes}}{{end}}", &ranges).unwrap_err();
        assert!(e.contains("{{range .Routes}}"), "{e}");
        assert!(render("{{.PodCIDR", &ranges).is_err());
    }
}
