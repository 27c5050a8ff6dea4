//! sha256 digests: validation, streaming hashers, and layer chain IDs.

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// `sha256:<64 lower-case hex>`; the only algorithm berth accepts.
pub fn validate(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::Unsupported(format!("digest {digest:?} is not sha256")))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(Error::Verification(format!("malformed digest {digest:?}")))
    }
}

/// The hex part of a validated digest (for file names).
pub fn hex_of(digest: &str) -> Result<&str> {
    validate(digest)
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A running sha256 plus a byte count.
#[derive(Default, Clone)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }
    /// Bytes hashed so far.
    pub fn bytes(&self) -> u64 {
        self.len
    }
    pub fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.inner.finalize()))
    }
}

/// Checks a finished hash against a descriptor's digest and size.
pub fn verify(what: &str, expected_digest: &str, expected_size: u64, h: Hasher) -> Result<()> {
    let size = h.bytes();
    let got = h.finish();
    if size != expected_size {
        return Err(Error::Verification(format!(
            "{what} {expected_digest}: size {size} does not match the descriptor's {expected_size}"
        )));
    }
    if got != expected_digest {
        return Err(Error::Verification(format!(
            "{what} {expected_digest}: content digest is {got}"
        )));
    }
    Ok(())
}

/// OCI chain IDs: `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_id_follows_the_image_spec() {
        let a = sha256_of(b"a");
        let b = sha256_of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn only_well_formed_sha256() {
        assert!(validate(&sha256_of(b"x")).is_ok());
        assert!(validate("sha512:00").is_err());
        assert!(validate("sha256:../../etc").is_err());
        assert!(validate(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
