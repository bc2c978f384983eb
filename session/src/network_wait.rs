//! Waiting, briefly, for the network before logging in.
//!
//! A person may type their name and password at the first `login:` prompt while init's
//! DHCP is still asking for an address. Logging in at once would call the repository
//! unreachable ("never logged in on this terminal ... check the network cable") a second
//! before the network comes up. So the session first waits, saying so, until the
//! repository's host has a route, for a bounded time; after that it logs in whatever the
//! network does, and the receiver's own errors (or offline login) take over.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long a login waits for a route to the repository before trying anyway.
pub const NETWORK_WAIT: Duration = Duration::from_secs(20);

/// The host and port of an `http://` or `https://` URL (`[v6]` brackets removed).
pub fn host_and_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        }
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Whether the kernel's main routing table (`/proc/net/route`'s text) has an up route
/// covering `addr`.
pub fn route_covers(route_table: &str, addr: Ipv4Addr) -> bool {
    const RTF_UP: u32 = 0x1;
    // Columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses in
    // hex, in the kernel's (little-endian) byte order.
    let ip = u32::from_le_bytes(addr.octets());
    route_table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| cols.get(i).and_then(|c| u32::from_str_radix(c, 16).ok());
        match (hex(1), hex(3), hex(7)) {
            (Some(dest), Some(flags), Some(mask)) => flags & RTF_UP != 0 && ip & mask == dest,
            _ => false,
        }
    })
}

/// Whether a connection to `host` could leave this terminal now: its name resolves and
/// the address is local (loopback) or routed. IPv6 is taken as reachable once it
/// resolves (the terminal's network is IPv4; a v6 repository is the site's choice).
fn reachable(host: &str, port: u16) -> bool {
    let Ok(mut addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| match a.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => true,
        IpAddr::V4(v4) => std::fs::read_to_string("/proc/net/route")
            .map(|table| route_covers(&table, v4))
            .unwrap_or(true),
        IpAddr::V6(_) => true,
    })
}

/// Waits up to `limit` for a route to the repository at `url`, calling `say` once when
/// it has to wait and once when the wait ends. Returns whether the route is there.
pub fn wait_for_repository(url: &str, limit: Duration, mut say: impl FnMut(&str)) -> bool {
    let Some((host, port)) = host_and_port(url) else {
        // A URL the receiver will refuse with its own message.
        return true;
    };
    if reachable(&host, port) {
        return true;
    }
    say(&format!(
        "Waiting for the network to reach {host} (up to {} s) ...",
        limit.as_secs()
    ));
    let started = Instant::now();
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(250));
        if reachable(&host, port) {
            log::info!(
                "network: {host} reachable after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            say("The network is up.");
            return true;
        }
    }
    log::warn!(
        "network: no route to {host} after {} s; logging in anyway",
        limit.as_secs()
    );
    say(&format!(
        "Still no network to {host} after {} s; trying anyway.",
        limit.as_secs()
    ));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_and_port("http://10.0.2.2:8080/repo"),
            Some(("10.0.2.2".into(), 8080))
        );
        assert_eq!(
            host_and_port("https://repo.example.org"),
            Some(("repo.example.org".into(), 443))
        );
        assert_eq!(
            host_and_port("http://user@repo:81?x"),
            Some(("repo".into(), 81))
        );
        assert_eq!(
            host_and_port("http://[fd00::1]:8/"),
            Some(("fd00::1".into(), 8))
        );
        assert_eq!(
            host_and_port("http://[fd00::1]/"),
            Some(("fd00::1".into(), 80))
        );
        assert_eq!(host_and_port("ftp://x"), None);
        assert_eq!(host_and_port("http://:80/"), None);
        assert_eq!(host_and_port("http://host:port/"), None);
    }

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        eth1\t0000A8C0\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    #[test]
    fn routes_cover_their_subnet_only_when_up() {
        assert!(route_covers(TABLE, Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!route_covers(TABLE, Ipv4Addr::new(10, 0, 3, 2)));
        // eth1's route is down (flags 0).
        assert!(!route_covers(TABLE, Ipv4Addr::new(192, 168, 1, 1)));
        let default =
            format!("{TABLE}eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(route_covers(&default, Ipv4Addr::new(192, 168, 1, 1)));
        assert!(!route_covers("", Ipv4Addr::new(10, 0, 2, 2)));
        assert!(!route_covers(
            "header\ngarbage line\n",
            Ipv4Addr::new(10, 0, 2, 2)
        ));
    }

    #[test]
    fn loopback_needs_no_wait() {
        let mut said = Vec::new();
        assert!(wait_for_repository(
            "http://127.0.0.1:1/",
            Duration::from_secs(1),
            |s| said.push(s.to_string())
        ));
        assert!(said.is_empty());
    }
}
