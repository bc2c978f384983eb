//! Session tokens. They live in memory only: a restarted server forgets sessions
//! (terminals log in again).
//!
//! A token is bound to the fingerprint of the user's verifier at login
//! ([`super::credentials`]): the caller compares it with the current one on every request,
//! so a password change or a removal ends the session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::credentials::Fingerprint;

/// What a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    /// The user logged in.
    pub user: String,
    /// The fingerprint of the verifier the password was checked against.
    pub credentials: Fingerprint,
}

/// Issued session tokens.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, (Session, Instant)>>,
}

impl Sessions {
    /// Sessions valid for `ttl`.
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds a token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new 256-bit token for `user`, whose password was checked against a verifier of
    /// fingerprint `credentials`.
    pub(crate) fn create(&self, user: &str, credentials: Fingerprint) -> String {
        let mut raw = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut raw);
        let token = hex::encode(raw);
        if let Ok(mut map) = self.map.lock() {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
            let session = Session {
                user: user.to_owned(),
                credentials,
            };
            map.insert(token.clone(), (session, now + self.ttl));
        }
        token
    }

    /// The session of a valid token.
    pub(crate) fn get(&self, token: &str) -> Option<Session> {
        let map = self.map.lock().ok()?;
        map.get(token)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(s, _)| s.clone())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let s = Sessions::new(Duration::from_secs(60));
        let t = s.create("alice", [7; 32]);
        assert_eq!(t.len(), 64);
        let got = s.get(&t).expect("a valid token");
        assert_eq!((got.user.as_str(), got.credentials), ("alice", [7; 32]));
        assert_eq!(s.get("nope"), None);
        s.remove(&t);
        assert_eq!(s.get(&t), None);
    }
}
