//! Who must wait after failed logins, and for how long (docs/repository.md, "Failed
//! logins").
//!
//! Three counts, each with its own [`Rule`], so that no one's failures lock out anyone
//! else:
//! - per user name *and* client: someone at one terminal guessing one name. Strict; a
//!   success clears it.
//! - per client, all names: one client trying many names. Looser (one terminal serves a
//!   whole office, each person mistyping now and then); only time clears it, or an
//!   attacker with an account of their own could reset it between guesses.
//! - per user name, all clients: guessing one name from many clients. It only slows: its
//!   delay is short, and it does not apply at all to a client this user logged in from
//!   before ([`KNOWN_FOR`]), so the real user at their usual terminals is never held up.
//!
//! The client is the address the request came from, or the one a trusted proxy names
//! ([`super::Limits::client`]). During a wait the password is not even checked; a refused
//! attempt is not counted. Counts are in memory: a restarted server starts afresh.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance::names::validate_name;

/// Failures allowed before waits start, and the longest wait: after `free` failures each
/// new attempt must wait 1, 2, 4... s after the last failure, at most `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub free: u32,
    pub max_delay: Duration,
}

impl Rule {
    /// The wait after `failures` failures, if any.
    fn delay(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.free)?;
        Some(Duration::from_secs(1u64 << over.min(16)).min(self.max_delay))
    }
}

/// The three rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    /// One user name from one client.
    pub per_user_and_client: Rule,
    /// One client, any user names.
    pub per_client: Rule,
    /// One user name, all clients together, except clients the user logged in from.
    pub per_user: Rule,
}

impl Default for LoginPolicy {
    fn default() -> LoginPolicy {
        LoginPolicy {
            per_user_and_client: Rule {
                free: 5,
                max_delay: Duration::from_secs(300),
            },
            per_client: Rule {
                free: 30,
                max_delay: Duration::from_secs(300),
            },
            per_user: Rule {
                free: 10,
                max_delay: Duration::from_secs(60),
            },
        }
    }
}

/// A count is forgotten after this long without a failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// A successful login makes its client known for its user for this long.
pub const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Entries kept per map at most; past it the oldest go first. Bounds memory whatever
/// names and addresses clients send.
const MAX_ENTRIES: usize = 100_000;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    UserAndClient(String, IpAddr),
    Client(IpAddr),
    User(String),
}

/// Failures of one key: how many, and when the last was.
#[derive(Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
}

/// The failed-login counts of a server.
pub struct LoginLimiter {
    policy: LoginPolicy,
    counts: Mutex<HashMap<Key, Count>>,
    /// (user, client) pairs with a successful login, and when.
    known: Mutex<HashMap<(String, IpAddr), Instant>>,
}

/// The user name as counted: names that cannot exist share one count (a client cannot
/// grow the maps with megabyte-long names).
fn counted_name(user: &str) -> String {
    match validate_name("user name", user) {
        Ok(()) => user.to_owned(),
        Err(_) => String::new(),
    }
}

impl LoginLimiter {
    pub fn new(policy: LoginPolicy) -> LoginLimiter {
        LoginLimiter {
            policy,
            counts: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    fn is_known(&self, user: &str, client: IpAddr, now: Instant) -> bool {
        self.known
            .lock()
            .ok()
            .and_then(|k| k.get(&(user.to_owned(), client)).copied())
            .is_some_and(|at| now.duration_since(at) < KNOWN_FOR)
    }

    /// The counts a login of `user` from `client` is checked against, with their rules.
    fn keys(&self, user: &str, client: IpAddr, now: Instant) -> Vec<(Key, Rule)> {
        let p = &self.policy;
        let mut keys = vec![
            (
                Key::UserAndClient(user.to_owned(), client),
                p.per_user_and_client,
            ),
            (Key::Client(client), p.per_client),
        ];
        if !self.is_known(user, client, now) {
            keys.push((Key::User(user.to_owned()), p.per_user));
        }
        keys
    }

    /// How long a login of `user` from `client` must still wait, if at all.
    pub fn wait(&self, user: &str, client: IpAddr) -> Option<Duration> {
        let user = counted_name(user);
        let now = Instant::now();
        let keys = self.keys(&user, client, now);
        let counts = self.counts.lock().ok()?;
        keys.iter()
            .filter_map(|(k, rule)| {
                let c = counts.get(k)?;
                if now.duration_since(c.last) > FORGET_AFTER {
                    return None;
                }
                (c.last + rule.delay(c.failures)?).checked_duration_since(now)
            })
            .max()
    }

    /// Counts a failed login of `user` from `client`. The per-user count grows whatever
    /// the client (the real user's typos included): it only ever delays unknown clients.
    pub fn failed(&self, user: &str, client: IpAddr) {
        let user = counted_name(user);
        let now = Instant::now();
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        trim(&mut counts, MAX_ENTRIES, |c| c.last);
        for k in [
            Key::UserAndClient(user.clone(), client),
            Key::Client(client),
            Key::User(user),
        ] {
            let c = counts.entry(k).or_insert(Count {
                failures: 0,
                last: now,
            });
            if now.duration_since(c.last) > FORGET_AFTER {
                c.failures = 0;
            }
            c.failures = c.failures.saturating_add(1);
            c.last = now;
        }
    }

    /// Records a successful login: clears the user's count at this client and makes the
    /// client known for the user. The per-client and per-user counts stay: someone with a
    /// password of their own must not be able to wipe the traces of their guessing.
    pub fn succeeded(&self, user: &str, client: IpAddr) {
        let user = counted_name(user);
        let now = Instant::now();
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(&Key::UserAndClient(user.clone(), client));
        }
        if let Ok(mut known) = self.known.lock() {
            trim(&mut known, MAX_ENTRIES, |at| *at);
            known.insert((user, client), now);
        }
    }
}

/// Keeps `map` below `max` entries before one is added: drops the entries older than
/// [`FORGET_AFTER`] first, then, if that was not enough, the oldest quarter.
fn trim<K: Eq + Hash + Clone, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    when: impl Fn(&V) -> Instant,
) {
    if map.len() < max {
        return;
    }
    let now = Instant::now();
    map.retain(|_, v| now.duration_since(when(v)) < FORGET_AFTER);
    if map.len() < max {
        return;
    }
    let mut times: Vec<Instant> = map.values().map(&when).collect();
    if times.is_empty() {
        return;
    }
    let cut = times.len() / 4;
    let (_, &mut oldest_kept, _) = times.select_nth_unstable(cut);
    map.retain(|_, v| when(v) >= oldest_kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> LoginPolicy {
        LoginPolicy {
            per_user_and_client: Rule {
                free: 3,
                max_delay: Duration::from_secs(300),
            },
            per_client: Rule {
                free: 6,
                max_delay: Duration::from_secs(300),
            },
            per_user: Rule {
                free: 4,
                max_delay: Duration::from_secs(2),
            },
        }
    }

    #[test]
    fn one_name_at_one_client_waits_and_a_success_clears_it() {
        let l = LoginLimiter::new(policy());
        let x = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(l.wait("alice", x).is_none());
            l.failed("alice", x);
        }
        let wait = l.wait("alice", x).expect("limited after the free failures");
        assert!(wait <= Duration::from_secs(1));
        l.failed("alice", x);
        assert!(l.wait("alice", x).unwrap() > Duration::from_secs(1));
        l.succeeded("alice", x);
        assert!(l.wait("alice", x).is_none());
    }

    #[test]
    fn failures_at_one_client_do_not_hold_up_other_names_or_clients() {
        let l = LoginLimiter::new(policy());
        let (x, y) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..5 {
            l.failed("alice", x);
        }
        assert!(l.wait("alice", x).is_some());
        assert!(
            l.wait("bob", x).is_none(),
            "another name at the same client"
        );
        assert!(l.wait("bob", y).is_none(), "another name elsewhere");
        // The per-user count only slows alice at new clients, for at most its max delay.
        let w = l.wait("alice", y).expect("alice slowed at a new client");
        assert!(w <= Duration::from_secs(2), "{w:?}");
    }

    #[test]
    fn a_known_client_is_not_slowed_by_guesses_elsewhere() {
        let l = LoginLimiter::new(policy());
        let (x, home) = (ip("10.0.0.1"), ip("10.0.0.9"));
        l.succeeded("alice", home);
        for _ in 0..10 {
            l.failed("alice", x);
        }
        assert!(l.wait("alice", home).is_none());
    }

    #[test]
    fn many_names_from_one_client_make_that_client_wait() {
        let l = LoginLimiter::new(policy());
        let x = ip("10.0.0.1");
        for i in 0..6 {
            l.failed(&format!("user{i}"), x);
        }
        assert!(l.wait("someone", x).is_some());
        assert!(l.wait("someone", ip("10.0.0.2")).is_none());
        // A success of its own does not clear the client's count.
        l.succeeded("user0", x);
        assert!(l.wait("someone", x).is_some());
    }

    #[test]
    fn impossible_names_share_one_count() {
        let l = LoginLimiter::new(policy());
        let x = ip("10.0.0.1");
        l.failed(&"A".repeat(60_000), x);
        l.failed("../etc", x);
        let counts = l.counts.lock().unwrap();
        assert_eq!(counts.len(), 3, "one name, one client, one pair");
    }

    #[test]
    fn trim_keeps_the_newest() {
        let now = Instant::now();
        let mut m: HashMap<u32, Instant> = (0..100)
            .map(|i| (i, now + Duration::from_secs(i as u64)))
            .collect();
        trim(&mut m, 100, |t| *t);
        assert_eq!(m.len(), 75);
        assert!(m.contains_key(&99) && !m.contains_key(&0));
        trim(&mut m, 100, |t| *t);
        assert_eq!(m.len(), 75, "nothing to do below the bound");
    }
}
