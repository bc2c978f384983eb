//! The server's limits, and the counters that enforce the per-client ones.
//!
//! Every resource a client can hold is bounded: a connection (a task, a socket, a read
//! buffer of at most `max_header_bytes`), a request body being received (at most the
//! route's body limit, and at most `max_bodies_per_client` at once per client address), a
//! handler thread (at most `handler_threads` at once, the rest wait in a bounded queue).
//! Past a bound the client gets `503 Service Unavailable` with `Retry-After` (or `413` for
//! a body over its route's limit), never an unbounded wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits and timeouts of `collective-repo serve` (docs/repository.md, "Limits").
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once, all clients together. Past it a new connection gets a
    /// 503 and is closed. Also capped by the process's file limit.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// Request bodies being received at once from one client address (a slow body holds
    /// its slot until it is complete, cut off, or timed out).
    pub max_bodies_per_client: usize,
    /// Largest request header (request line plus header fields); larger gets 431.
    pub max_header_bytes: usize,
    /// Time allowed to send a whole request header.
    pub header_timeout: Duration,
    /// Longest a connection may make no progress at all (an idle keep-alive connection, a
    /// stalled body, a client that does not read its response).
    pub io_timeout: Duration,
    /// A body must arrive within `body_timeout_base` plus its length at `min_body_rate`.
    pub body_timeout_base: Duration,
    /// Bytes per second a body must at least average.
    pub min_body_rate: u64,
    /// API handlers (logins, uploads, commits) running at once.
    pub handler_threads: usize,
    /// Requests waiting for a handler thread; past it they get 503 at once.
    pub max_queued: usize,
    /// Longest a request waits for a handler thread before it gets 503.
    pub queue_timeout: Duration,
    /// `Retry-After` seconds sent with a 503.
    pub retry_after_secs: u64,
    /// Bytes (as stored) each user's committed user disks may hold together, and bytes of
    /// new chunks a user may upload before committing them; `None`: no quota.
    pub user_quota: Option<u64>,
    /// Addresses of reverse proxies (the nginx front, docs/repository.md) whose requests
    /// carry the real client in `X-Forwarded-For`: their connections are not limited per
    /// address (they carry many clients), and each request's client, for the per-client
    /// body limit, the login rate limit and the access log, is the address the proxy
    /// appended last. Anyone else's `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Who waits after failed logins, and how long.
    pub login: super::login_limit::LoginPolicy,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 8192,
            max_connections_per_client: 512,
            max_bodies_per_client: 64,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            body_timeout_base: Duration::from_secs(10),
            min_body_rate: 256 * 1024,
            handler_threads: 8,
            max_queued: 512,
            queue_timeout: Duration::from_secs(5),
            retry_after_secs: 2,
            user_quota: None,
            trusted_proxies: Vec::new(),
            login: Default::default(),
        }
    }
}

impl Limits {
    /// The client a request comes from: the TCP peer, or, when the peer is a trusted
    /// proxy, the last address in its `X-Forwarded-For` (what the proxy itself saw;
    /// earlier entries are the client's own claims).
    pub fn client(
        &self,
        peer: std::net::SocketAddr,
        forwarded_for: Option<&str>,
    ) -> std::net::SocketAddr {
        if !self.trusted_proxies.contains(&peer.ip()) {
            return peer;
        }
        forwarded_for
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<std::net::IpAddr>().ok())
            .map_or(peer, |ip| std::net::SocketAddr::new(ip, 0))
    }

    /// Time allowed to receive a body of `len` bytes.
    pub fn body_timeout(&self, len: u64) -> Duration {
        self.body_timeout_base + Duration::from_secs(len / self.min_body_rate.max(1))
    }
}

#[derive(Default)]
struct Counts {
    connections: usize,
    bodies: usize,
}

/// Per-client-address counters of connections and bodies in flight.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<IpAddr, Counts>>,
}

/// What a guard gives back when dropped.
#[derive(Clone, Copy)]
enum Kind {
    Connection,
    Body,
}

/// A held connection or body slot; released on drop.
pub struct Slot {
    clients: Arc<Clients>,
    ip: IpAddr,
    kind: Kind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.clients.map.lock() {
            if let Some(c) = map.get_mut(&self.ip) {
                match self.kind {
                    Kind::Connection => c.connections = c.connections.saturating_sub(1),
                    Kind::Body => c.bodies = c.bodies.saturating_sub(1),
                }
                if c.connections == 0 && c.bodies == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

impl Clients {
    fn take(self: &Arc<Self>, ip: IpAddr, kind: Kind, max: usize) -> Option<Slot> {
        let mut map = self.map.lock().ok()?;
        let c = map.entry(ip).or_default();
        let n = match kind {
            Kind::Connection => &mut c.connections,
            Kind::Body => &mut c.bodies,
        };
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            clients: self.clone(),
            ip,
            kind,
        })
    }

    /// A connection slot for `ip`, if it has fewer than `max` open.
    pub fn connection(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        self.take(ip, Kind::Connection, max)
    }

    /// A body slot for `ip`, if it has fewer than `max` bodies in flight.
    pub fn body(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        self.take(ip, Kind::Body, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut l = Limits::default();
        assert_eq!(l.client(peer, Some("10.0.0.9")), peer);
        l.trusted_proxies = vec![peer.ip()];
        assert_eq!(
            l.client(peer, Some("1.1.1.1, 10.0.0.9")).ip().to_string(),
            "10.0.0.9"
        );
        assert_eq!(
            l.client(peer, Some(" 10.0.0.9 ")).ip().to_string(),
            "10.0.0.9"
        );
        assert_eq!(l.client(peer, Some("fd00::1")).ip().to_string(), "fd00::1");
        // Garbage or no header: the proxy itself.
        assert_eq!(l.client(peer, Some("unknown")), peer);
        assert_eq!(l.client(peer, None), peer);
    }

    #[test]
    fn slots_are_bounded_per_address_and_released_on_drop() {
        let c = Arc::new(Clients::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.body(a, 2).unwrap();
        let _s2 = c.body(a, 2).unwrap();
        assert!(c.body(a, 2).is_none(), "third body of one address refused");
        assert!(c.body(b, 2).is_some(), "another address is not affected");
        assert!(
            c.connection(a, 1).is_some(),
            "bodies and connections count apart"
        );
        drop(s1);
        assert!(c.body(a, 2).is_some());
    }

    #[test]
    fn body_timeout_grows_with_length() {
        let l = Limits::default();
        assert_eq!(l.body_timeout(0), Duration::from_secs(10));
        assert_eq!(l.body_timeout(96 << 20), Duration::from_secs(10 + 384));
    }
}
