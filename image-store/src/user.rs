//! The image config's `User` field as the CRI reports it: a numeric user becomes `uid`, a
//! name becomes `username`; the group part is ignored. No /etc/passwd lookup happens here
//! (critest's "should not have Uid|Username empty" checks exactly this).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUser {
    pub uid: Option<i64>,
    pub username: String,
}

/// `1002` → uid 1002, `www-data` → username, `1003:1004` → uid 1003, `www-data:1004` →
/// username www-data, `` → neither.
pub fn parse_user(user: &str) -> ImageUser {
    let user_part = user.split(':').next().unwrap_or_default();
    if user_part.is_empty() {
        return ImageUser::default();
    }
    match user_part.parse::<u32>() {
        Ok(uid) => ImageUser {
            uid: Some(i64::from(uid)),
            username: String::new(),
        },
        Err(_) => ImageUser {
            uid: None,
            username: user_part.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_forms_as_critest_expects() {
        let uid = |u| ImageUser {
            uid: Some(u),
            username: String::new(),
        };
        let name = |n: &str| ImageUser {
            uid: None,
            username: n.into(),
        };
        assert_eq!(parse_user("1002"), uid(1002));
        assert_eq!(parse_user("www-data"), name("www-data"));
        assert_eq!(parse_user("1003:1004"), uid(1003));
        assert_eq!(parse_user("www-data:1004"), name("www-data"));
        assert_eq!(parse_user(""), ImageUser::default());
        assert_eq!(parse_user("0"), uid(0));
        // Larger than a uid can be: a name, not a wrapped number (CVE-2024-40635's class).
        assert_eq!(parse_user("4294967296"), name("4294967296"));
    }
}
