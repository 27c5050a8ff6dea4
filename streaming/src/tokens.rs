//! The requests waiting for their client: random single-use tokens that expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long a minted URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests minted but not yet used, at most.
pub const MAX_PENDING_REQUESTS: usize = 1000;
/// Random bytes per token (hex-encoded in the URL).
const TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment the request is served under.
    pub fn route(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

pub struct RequestCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl RequestCache {
    pub fn new(ttl: Duration, max: usize) -> RequestCache {
        RequestCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req` under a fresh random token.
    pub fn insert(&self, req: Pending) -> Result<String, Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Error::Io(std::io::Error::other(format!("random token: {e}"))))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= self.max {
            return Err(Error::TooManyRequests(self.max));
        }
        entries.insert(token.clone(), (now + self.ttl, req));
        Ok(token)
    }

    /// Takes the request for `token` if it exists, has not expired and serves `route`;
    /// either way a token is used at most once.
    pub fn take(&self, route: &str, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, req) = entries.remove(token)?;
        (expires > Instant::now() && req.route() == route).then_some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_single_use_and_random() {
        let c = RequestCache::new(TOKEN_TTL, 10);
        let a = c.insert(pf()).unwrap();
        let b = c.insert(pf()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(c.take("portforward", &a), Some(pf()));
        assert_eq!(c.take("portforward", &a), None);
        // The wrong route consumes the token too.
        assert_eq!(c.take("exec", &b), None);
        assert_eq!(c.take("portforward", &b), None);
    }

    #[test]
    fn tokens_expire() {
        let c = RequestCache::new(Duration::from_millis(1), 10);
        let a = c.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.take("portforward", &a), None);
    }

    #[test]
    fn the_cache_is_capped_and_expired_entries_make_room() {
        let c = RequestCache::new(Duration::from_millis(20), 2);
        c.insert(pf()).unwrap();
        c.insert(pf()).unwrap();
        assert!(matches!(c.insert(pf()), Err(Error::TooManyRequests(2))));
        std::thread::sleep(Duration::from_millis(30));
        c.insert(pf()).unwrap();
    }
}
