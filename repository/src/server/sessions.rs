//! Session tokens and the login rate limiter. Both live in memory only: a restarted server
//! forgets sessions (terminals log in again) and failure counts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::RngCore;

/// Issued session tokens.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
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

    /// A new 256-bit token for `user`.
    pub fn create(&self, user: &str) -> String {
        let mut raw = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut raw);
        let token = hex::encode(raw);
        if let Ok(mut map) = self.map.lock() {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
            map.insert(token.clone(), (user.to_owned(), now + self.ttl));
        }
        token
    }

    /// The user a valid token belongs to.
    pub fn user(&self, token: &str) -> Option<String> {
        let map = self.map.lock().ok()?;
        map.get(token)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(u, _)| u.clone())
    }

    /// Ends a session.
    pub fn remove(&self, token: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(token);
        }
    }
}

/// Failures allowed before delays start.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay imposed.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Failures are forgotten after this long without one.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);

/// Limits failed logins per key (the user name, and the client address): after
/// [`FREE_FAILURES`] failures each new attempt must wait 1, 2, 4... seconds (at most
/// [`MAX_DELAY`]) after the last failure, and during the wait the password is not even
/// checked. A success clears the key.
#[derive(Default)]
pub struct RateLimiter {
    map: Mutex<HashMap<String, (u32, Instant)>>,
}

impl RateLimiter {
    /// How long the caller must still wait, if any of `keys` is limited.
    pub fn check(&self, keys: &[String]) -> Option<Duration> {
        let map = self.map.lock().ok()?;
        let now = Instant::now();
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter_map(|&(n, last)| {
                if n < FREE_FAILURES || now.duration_since(last) > FORGET_AFTER {
                    return None;
                }
                let delay = Duration::from_secs(1u64 << (n - FREE_FAILURES).min(16)).min(MAX_DELAY);
                (last + delay).checked_duration_since(now)
            })
            .max()
    }

    /// Records a failure for every key.
    pub fn fail(&self, keys: &[String]) {
        if let Ok(mut map) = self.map.lock() {
            let now = Instant::now();
            if map.len() > 100_000 {
                map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            }
            for k in keys {
                let e = map.entry(k.clone()).or_insert((0, now));
                if now.duration_since(e.1) > FORGET_AFTER {
                    e.0 = 0;
                }
                e.0 += 1;
                e.1 = now;
            }
        }
    }

    /// Clears every key after a success.
    pub fn succeed(&self, keys: &[String]) {
        if let Ok(mut map) = self.map.lock() {
            for k in keys {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_delays_after_free_failures_and_clears_on_success() {
        let l = RateLimiter::default();
        let keys = vec!["user:a".to_string()];
        for _ in 0..FREE_FAILURES {
            assert!(l.check(&keys).is_none());
            l.fail(&keys);
        }
        let wait = l.check(&keys).expect("limited after the free failures");
        assert!(wait <= Duration::from_secs(1));
        l.fail(&keys);
        assert!(l.check(&keys).unwrap() > Duration::from_secs(1));
        assert!(l.check(&["user:b".to_string()]).is_none());
        l.succeed(&keys);
        assert!(l.check(&keys).is_none());
    }

    #[test]
    fn tokens() {
        let s = Sessions::new(Duration::from_secs(60));
        let t = s.create("alice");
        assert_eq!(t.len(), 64);
        assert_eq!(s.user(&t).as_deref(), Some("alice"));
        assert_eq!(s.user("nope"), None);
        s.remove(&t);
        assert_eq!(s.user(&t), None);
    }
}
