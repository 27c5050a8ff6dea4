//! Image volumes (Kubernetes' `image` volume source, GA in 1.36): a CRI mount that names an
//! image instead of a host path is that image's file system, or `image_sub_path` in it,
//! mounted read-only. The layers come from the store as they are; the overlay itself is
//! made inside the container's mount namespace (`sandbox::container::ImageVolume`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use cri_api::v1 as cri;
use sandbox::container::spec::ImageVolume;

use crate::error::{CriError, CriResult};
use crate::service::CriService;

/// The image volumes among `mounts`, and the layers they hold (kept from garbage
/// collection while the container exists). An image that is not pulled, a sub-path that
/// is not in it, or a mount not marked read-only is InvalidArgument naming the mount.
pub fn resolve(svc: &CriService, mounts: &[cri::Mount]) -> CriResult<ResolvedImageVolumes> {
    let mut volumes = Vec::new();
    let mut chain_ids = Vec::new();
    let mut image_ids = Vec::new();
    for m in mounts.iter().filter(|m| is_image_volume(m)) {
        let spec = m.image.as_ref().expect("checked by is_image_volume");
        let name = if spec.image.is_empty() {
            &spec.image_ref
        } else {
            &spec.image
        };
        let invalid = |why: String| {
            CriError::InvalidArgument(format!("image volume at {:?}: {why}", m.container_path))
        };
        if !m.readonly {
            return Err(invalid(
                "an image volume is read-only: the mount must say readonly".into(),
            ));
        }
        let image = svc
            .images
            .get(name)
            .ok_or_else(|| invalid(format!("image {name:?} is not pulled")))?;
        let mut layers = Vec::new();
        for l in image.layers.iter().rev() {
            if let Some(chain) = &l.chain_id {
                layers.push(svc.images.layer_dir(chain)?);
                chain_ids.push(chain.clone());
            }
        }
        if layers.is_empty() {
            return Err(invalid(format!("image {name:?} has no file system layers")));
        }
        let sub_path = sub_path(&m.image_sub_path).map_err(|e| invalid(e.to_string()))?;
        if let Some(sub) = &sub_path
            && !exists_in(&layers, sub)
        {
            return Err(invalid(format!(
                "sub-path {:?} does not exist in image {name:?}",
                m.image_sub_path
            )));
        }
        // overlayfs without an upper layer wants two lowers.
        if layers.len() == 1 {
            layers.push(svc.containers.empty_layer());
        }
        volumes.push(ImageVolume {
            layers,
            sub_path,
            destination: PathBuf::from(&m.container_path),
        });
        image_ids.push((m.container_path.clone(), image.id.clone()));
    }
    Ok(ResolvedImageVolumes {
        volumes,
        chain_ids,
        image_ids,
    })
}

/// What `resolve` found: the volumes to mount, their layers, and each volume's image id
/// by container path (ContainerStatus reports it as the mount's `image_ref`).
pub struct ResolvedImageVolumes {
    pub volumes: Vec<ImageVolume>,
    pub chain_ids: Vec<String>,
    pub image_ids: Vec<(String, String)>,
}

/// A mount whose source is an image rather than a host path.
pub fn is_image_volume(m: &cri::Mount) -> bool {
    m.image
        .as_ref()
        .is_some_and(|i| !i.image.is_empty() || !i.image_ref.is_empty())
}

/// The sub-path as a relative path without `..` (`None` for the image's root).
fn sub_path(raw: &str) -> Result<Option<PathBuf>, &'static str> {
    let p = Path::new(raw.trim_start_matches('/'));
    if raw.contains('\0') {
        return Err("the sub-path contains a NUL byte");
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("the sub-path must not contain '..'");
    }
    let clean: PathBuf = p
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// Whether `sub` is in the image: found in the topmost layer that has it or whites it out
/// (a 0/0 character device). The container's own resolution (inside the overlay, no
/// symlink leading out) has the last word; this gives the kubelet a clear error early.
fn exists_in(layers_topmost_first: &[PathBuf], sub: &Path) -> bool {
    for layer in layers_topmost_first {
        if let Ok(m) = std::fs::symlink_metadata(layer.join(sub)) {
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            return !whiteout;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_are_relative_and_clean() {
        assert_eq!(sub_path(""), Ok(None));
        assert_eq!(sub_path("/"), Ok(None));
        assert_eq!(sub_path("etc/ssl/"), Ok(Some("etc/ssl".into())));
        assert_eq!(sub_path("/etc/./ssl"), Ok(Some("etc/ssl".into())));
        assert!(sub_path("etc/../../x").is_err());
    }

    #[test]
    fn the_topmost_layer_that_knows_a_path_decides() {
        let d = tempfile::tempdir().unwrap();
        let (top, bottom) = (d.path().join("top"), d.path().join("bottom"));
        std::fs::create_dir_all(bottom.join("data/sub")).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        let layers = [top.clone(), bottom];
        assert!(exists_in(&layers, Path::new("data/sub")));
        assert!(!exists_in(&layers, Path::new("nope")));
        // A whiteout in the upper layer hides the lower layer's directory.
        nix::sys::stat::mknod(
            &top.join("data"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        assert!(!exists_in(&layers, Path::new("data")));
    }
}
