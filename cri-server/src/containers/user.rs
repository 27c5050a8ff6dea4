//! Who a container runs as: the request's security context or the image's `User`, resolved
//! through the image's own /etc/passwd and /etc/group (read from its layers, capped, never
//! from the host).

use std::io::Read;
use std::path::{Path, PathBuf};

/// An image-provided account file larger than this is refused (containerd's CVE-2026-47262
/// fix bounds the same reads).
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

/// The resolved identity of a container's process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Groups the user belongs to in the image's /etc/group, plus the requested ones.
    pub additional_gids: Vec<u32>,
    /// Home directory from the image's passwd entry, for `HOME`.
    pub home: Option<String>,
}

/// What was asked for: the security context's fields, or the image's `User` string.
#[derive(Debug, Clone, Default)]
pub struct UserRequest {
    pub run_as_user: Option<i64>,
    pub run_as_username: String,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    /// The image config's `User` (`name`, `uid`, `name:group`, `uid:gid`).
    pub image_user: String,
    /// SupplementalGroupsPolicy Strict: only the requested groups, not the image's
    /// /etc/group memberships (Merge, the default, adds both).
    pub strict_groups: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Reads a file of the image from its layers (topmost first), as overlayfs would show it:
/// the topmost layer that has the path wins; a whiteout hides it.
pub fn read_image_file(layers: &[PathBuf], rel: &str) -> Result<Option<String>, String> {
    use std::os::unix::fs::FileTypeExt;
    for layer in layers {
        let path = layer.join(rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let ft = meta.file_type();
        // overlayfs whiteout: a 0/0 character device.
        if ft.is_char_device() {
            return Ok(None);
        }
        if !ft.is_file() {
            // A symlink or directory where the account file should be: do not follow it
            // out of the image.
            return Ok(None);
        }
        if meta.len() > MAX_ACCOUNT_FILE {
            return Err(format!(
                "the image's /{rel} is {} bytes, more than the {} allowed",
                meta.len(),
                MAX_ACCOUNT_FILE
            ));
        }
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_ACCOUNT_FILE).read_to_string(&mut text))
            .map_err(|e| format!("reading the image's /{rel}: {e}"))?;
        return Ok(Some(text));
    }
    Ok(None)
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// A uid or gid as the kernel takes it: 0 ..= 2^31-1 (a larger one wraps in tools that use
/// int32, CVE-2024-40635).
fn id(what: &str, v: i64) -> Result<u32, String> {
    if (0..=i32::MAX as i64).contains(&v) {
        Ok(v as u32)
    } else {
        Err(format!("{what} {v} is out of range (0 to {})", i32::MAX))
    }
}

/// Resolves the request against the image's account files.
pub fn resolve(req: &UserRequest, layers: &[PathBuf]) -> Result<ResolvedUser, String> {
    if req.run_as_group.is_some() && req.run_as_user.is_none() && req.run_as_username.is_empty() {
        return Err("RunAsGroup is set without RunAsUser or RunAsUsername".into());
    }
    let passwd = read_image_file(layers, "etc/passwd")?
        .map(|t| parse_passwd(&t))
        .unwrap_or_default();
    // The user part and an optional group part.
    let (user_part, group_part): (String, Option<String>) = if let Some(uid) = req.run_as_user {
        (id("RunAsUser", uid)?.to_string(), None)
    } else if !req.run_as_username.is_empty() {
        (req.run_as_username.clone(), None)
    } else {
        match req.image_user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (req.image_user.clone(), None),
        }
    };
    let entry =
        if user_part.is_empty() {
            passwd.iter().find(|e| e.uid == 0)
        } else if let Ok(uid) = user_part.parse::<i64>() {
            let uid = id("uid", uid)?;
            passwd.iter().find(|e| e.uid == uid)
        } else {
            Some(passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
                format!("user {user_part:?} not found in the image's /etc/passwd")
            })?)
        };
    let uid = match user_part.parse::<i64>() {
        Ok(uid) => id("uid", uid)?,
        Err(_) => entry.map(|e| e.uid).unwrap_or(0),
    };
    let groups = read_image_file(layers, "etc/group")?
        .map(|t| parse_group(&t))
        .unwrap_or_default();
    let gid = if let Some(g) = req.run_as_group {
        id("RunAsGroup", g)?
    } else if let Some(g) = &group_part {
        match g.parse::<i64>() {
            Ok(n) => id("gid", n)?,
            Err(_) => groups
                .iter()
                .find(|e| &e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("group {g:?} not found in the image's /etc/group"))?,
        }
    } else {
        entry.map(|e| e.gid).unwrap_or(0)
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = entry.filter(|_| !req.strict_groups) {
        for g in &groups {
            if g.members.iter().any(|m| m == &e.name) && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    for g in &req.supplemental_groups {
        let g = id("supplemental group", *g)?;
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|e| e.home.clone()),
    })
}

/// Convenience for tests and callers holding a single rootfs directory.
pub fn resolve_in(req: &UserRequest, rootfs: &Path) -> Result<ResolvedUser, String> {
    resolve(req, &[rootfs.to_path_buf()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/false\n\
             nobody:x:65534:65534:nobody:/home:/bin/false\n\
             default-user:x:1000:1000::/home/default-user:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root\nwww-data:x:33:\ndefault-user:x:1000:\n\
             group-defined-in-image:x:50000:default-user\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn image_user_forms() {
        let img = image();
        let r = |u: &str| {
            resolve_in(
                &UserRequest {
                    image_user: u.into(),
                    ..Default::default()
                },
                img.path(),
            )
        };
        assert_eq!(r("").unwrap().uid, 0);
        assert_eq!(r("").unwrap().additional_gids, [10]);
        let w = r("www-data").unwrap();
        assert_eq!((w.uid, w.gid), (33, 33));
        let u = r("1003:1004").unwrap();
        assert_eq!((u.uid, u.gid), (1003, 1004));
        let u = r("www-data:1004").unwrap();
        assert_eq!((u.uid, u.gid), (33, 1004));
        assert!(r("ghost").unwrap_err().contains("ghost"));
    }

    #[test]
    fn security_context_wins_and_groups_merge() {
        let img = image();
        let u = resolve_in(
            &UserRequest {
                run_as_user: Some(1000),
                supplemental_groups: vec![1234],
                image_user: "www-data".into(),
                ..Default::default()
            },
            img.path(),
        )
        .unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, [50000, 1234]);
        assert_eq!(u.home.as_deref(), Some("/home/default-user"));

        let u = resolve_in(
            &UserRequest {
                run_as_username: "nobody".into(),
                run_as_group: Some(7),
                ..Default::default()
            },
            img.path(),
        )
        .unwrap();
        assert_eq!((u.uid, u.gid), (65534, 7));
    }

    #[test]
    fn strict_policy_ignores_image_groups() {
        let img = image();
        let req = |strict_groups| UserRequest {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234],
            strict_groups,
            ..Default::default()
        };
        assert_eq!(
            resolve_in(&req(false), img.path()).unwrap().additional_gids,
            [50000, 1234]
        );
        assert_eq!(
            resolve_in(&req(true), img.path()).unwrap().additional_gids,
            [1234]
        );
    }

    #[test]
    fn group_without_user_and_overflow_are_refused() {
        let img = image();
        let e = resolve_in(
            &UserRequest {
                run_as_group: Some(5),
                ..Default::default()
            },
            img.path(),
        )
        .unwrap_err();
        assert!(e.contains("RunAsGroup"), "{e}");
        let e = resolve_in(
            &UserRequest {
                run_as_user: Some(1 << 32),
                ..Default::default()
            },
            img.path(),
        )
        .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = resolve_in(
            &UserRequest {
                run_as_user: Some(-1),
                ..Default::default()
            },
            img.path(),
        )
        .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn topmost_layer_wins_and_whiteouts_hide() {
        let low = image();
        let top = tempfile::tempdir().unwrap();
        std::fs::create_dir(top.path().join("etc")).unwrap();
        std::fs::write(top.path().join("etc/passwd"), "root:x:0:0::/r:/bin/sh\n").unwrap();
        let layers = vec![top.path().to_path_buf(), low.path().to_path_buf()];
        let text = read_image_file(&layers, "etc/passwd").unwrap().unwrap();
        assert!(!text.contains("www-data"));
        // A layer without the file falls through to the one below.
        let empty = tempfile::tempdir().unwrap();
        let layers = vec![empty.path().to_path_buf(), low.path().to_path_buf()];
        assert!(
            read_image_file(&layers, "etc/group")
                .unwrap()
                .unwrap()
                .contains("wheel")
        );
    }
}
