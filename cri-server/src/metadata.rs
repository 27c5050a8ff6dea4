//! What a pod or container may carry as metadata, checked before anything is created.
//!
//! Names end up in places with limits of their own (CNI_ARGS in a plugin's environment, a
//! NUL ends a C string), and labels and annotations come back in every list response, which
//! the kubelet and crictl refuse above 16 MiB. So: names are at most 253 bytes without NUL
//! (Kubernetes' longest object name, a DNS subdomain; its 63-byte limit on namespaces and
//! container names is not enforced because critest uses longer ones), an object's labels
//! and annotations are at most 256 KiB together (the API server's limit on annotations),
//! and all pods, like all containers, stay within a budget that keeps ListPodSandbox,
//! ListContainers and their stats within the message limit.

use std::collections::HashMap;

use crate::error::{CriError, CriResult};

/// The longest name, namespace or uid.
pub const MAX_NAME: usize = 253;
/// Labels and annotations of one object, keys and values together.
pub const MAX_OBJECT_METADATA: usize = 256 << 10;
/// Labels and annotations of all pods (and, separately, of all containers) together: a
/// list response carries them all plus ~1 KiB per object, and must stay under 16 MiB.
pub const NODE_METADATA_BUDGET: usize = 12 << 20;

/// A name-like field: not empty (when `required`), no NUL, at most `MAX_NAME` bytes.
pub fn check_name(field: &str, value: &str, required: bool) -> CriResult<()> {
    if required && value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if value.contains('\0') {
        return Err(invalid(format!("{field} contains a NUL byte")));
    }
    if value.len() > MAX_NAME {
        return Err(invalid(format!(
            "{field} is {} bytes long; at most {MAX_NAME} are allowed",
            value.len()
        )));
    }
    Ok(())
}

/// The size of an object's labels and annotations; InvalidArgument above
/// `MAX_OBJECT_METADATA`.
pub fn check_labels_and_annotations(
    object: &str,
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
) -> CriResult<usize> {
    let size = metadata_size(labels.iter().chain(annotations.iter()));
    if size > MAX_OBJECT_METADATA {
        return Err(invalid(format!(
            "the {object}'s labels and annotations take {size} bytes; at most \
             {MAX_OBJECT_METADATA} are allowed"
        )));
    }
    Ok(size)
}

/// Refuses an object whose metadata would take the node's `objects` past the budget.
pub fn check_node_budget(objects: &str, in_use: usize, adding: usize) -> CriResult<()> {
    if in_use + adding > NODE_METADATA_BUDGET {
        return Err(CriError::ResourceExhausted(format!(
            "the node's {objects} already carry {in_use} bytes of labels and annotations; \
             {adding} more would pass the {NODE_METADATA_BUDGET}-byte budget that keeps list \
             responses under the 16 MiB message limit"
        )));
    }
    Ok(())
}

/// Bytes of keys and values.
pub fn metadata_size<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> usize {
    pairs.map(|(k, v)| k.len() + v.len()).sum()
}

fn invalid(m: String) -> CriError {
    CriError::InvalidArgument(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_nul_and_within_the_limit_pass() {
        assert!(check_name("pod name", "web-0", true).is_ok());
        assert!(check_name("pod uid", "", false).is_ok());
        for (value, says) in [
            ("", "empty"),
            ("a\0b", "NUL"),
            (&"x".repeat(MAX_NAME + 1) as &str, "254 bytes"),
        ] {
            let e = check_name("pod name", value, true).unwrap_err();
            assert!(
                matches!(&e, CriError::InvalidArgument(m) if m.contains("pod name") && m.contains(says)),
                "{e}"
            );
        }
    }

    #[test]
    fn labels_and_annotations_are_counted_together() {
        let labels = HashMap::from([("a".to_string(), "b".repeat(100))]);
        let mut annotations = HashMap::from([("c".to_string(), "d".repeat(100))]);
        assert_eq!(
            check_labels_and_annotations("pod", &labels, &annotations).unwrap(),
            202
        );
        annotations.insert("big".into(), "x".repeat(MAX_OBJECT_METADATA - 200));
        let e = check_labels_and_annotations("pod", &labels, &annotations).unwrap_err();
        assert!(matches!(e, CriError::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn the_node_budget_is_resource_exhausted() {
        assert!(check_node_budget("pods", NODE_METADATA_BUDGET - 10, 10).is_ok());
        let e = check_node_budget("pods", NODE_METADATA_BUDGET - 10, 11).unwrap_err();
        assert!(matches!(e, CriError::ResourceExhausted(_)), "{e}");
    }
}
