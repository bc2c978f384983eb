//! Getting the terminal on the network: a DHCP client per NIC, in the background.
//!
//! Each NIC with a driver gets a thread that waits for a link, asks DHCP (DISCOVER,
//! OFFER, REQUEST, ACK), configures address, route and DNS, and renews at T1 or rebinds
//! at T2 until the terminal shuts down, when it releases the lease. The login screen
//! never waits for any of this; it is told when an address arrives.

use crate::dhcp::{self, Lease, Reply};
use crate::rawsock::PacketSocket;
use log::{info, warn};
use std::fs;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the DHCP thread of one NIC has to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetState {
    WaitingForLink,
    AskingDhcp,
    NoOffer,
    Configured(Lease),
}

/// Leases held now, for the RELEASE at shutdown.
static LEASES: Mutex<Vec<(String, [u8; 6], Lease)>> = Mutex::new(Vec::new());

/// Runs DHCP for `nic` forever, calling `report` on every change of state.
pub fn run_dhcp(nic: String, mac: [u8; 6], hostname: String, report: impl Fn(NetState)) -> ! {
    let mut attempt: u32 = 0;
    loop {
        wait_for_link(&nic, &report);
        report(NetState::AskingDhcp);
        match obtain_lease(&nic, &mac, &hostname, Duration::from_secs(30)) {
            Ok(lease) => {
                attempt = 0;
                if let Err(e) = apply(&nic, &lease) {
                    warn!("{nic}: cannot configure {}: {e}", lease.address);
                }
                remember(&nic, mac, &lease);
                report(NetState::Configured(lease.clone()));
                keep_lease(&nic, &mac, &hostname, lease);
                // The lease ran out without a renewal: start over.
                forget(&nic);
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 {
                    warn!("{nic}: no DHCP offer ({e}); is a DHCP server on this network? Retrying in the background");
                }
                report(NetState::NoOffer);
                std::thread::sleep(Duration::from_secs(10));
            }
        }
    }
}

fn wait_for_link(nic: &str, report: &impl Fn(NetState)) {
    let carrier = || {
        fs::read_to_string(format!("/sys/class/net/{nic}/carrier"))
            .map(|c| c.trim() == "1")
            .unwrap_or(false)
    };
    if carrier() {
        return;
    }
    report(NetState::WaitingForLink);
    while !carrier() {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One DISCOVER/OFFER/REQUEST/ACK exchange, retransmitting with backoff (RFC 2131 §4.1:
/// 4 s doubling; we start at 1 s because a terminal's user is waiting).
pub fn obtain_lease(
    nic: &str,
    mac: &[u8; 6],
    hostname: &str,
    give_up_after: Duration,
) -> Result<Lease, String> {
    let socket = PacketSocket::open(nic).map_err(|e| format!("packet socket on {nic}: {e}"))?;
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    while started.elapsed() < give_up_after {
        let xid: u32 = random_u32();
        socket
            .send_broadcast(Ipv4Addr::UNSPECIFIED, &dhcp::discover(xid, mac, hostname))
            .map_err(|e| format!("sending DISCOVER: {e}"))?;
        let Some(offer) = wait_for(&socket, xid, mac, wait, |r| matches!(r, Reply::Offer(_)))?
        else {
            wait = (wait * 2).min(Duration::from_secs(8));
            continue;
        };
        let Reply::Offer(offer) = offer else { continue };
        socket
            .send_broadcast(
                Ipv4Addr::UNSPECIFIED,
                &dhcp::request(xid, mac, hostname, &offer),
            )
            .map_err(|e| format!("sending REQUEST: {e}"))?;
        match wait_for(&socket, xid, mac, Duration::from_secs(3), |r| {
            matches!(r, Reply::Ack(_) | Reply::Nak(_))
        })? {
            Some(Reply::Ack(lease)) => {
                info!(
                    "{nic}: DHCP lease {}/{} from {} for {} s",
                    lease.address,
                    lease.prefix_len,
                    lease.server,
                    lease.lease_time.as_secs()
                );
                return Ok(lease);
            }
            Some(Reply::Nak(why)) => warn!("{nic}: DHCP server {} refused: {why}", offer.server),
            _ => {}
        }
    }
    Err(format!("no answer in {} s", give_up_after.as_secs()))
}

fn wait_for(
    socket: &PacketSocket,
    xid: u32,
    mac: &[u8; 6],
    timeout: Duration,
    wanted: impl Fn(&Reply) -> bool,
) -> Result<Option<Reply>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match socket
            .receive_dhcp(left)
            .map_err(|e| format!("receiving: {e}"))?
        {
            None => return Ok(None),
            Some(datagram) => {
                if let Some(reply) = dhcp::parse_reply(&datagram, xid, mac) {
                    if wanted(&reply) {
                        return Ok(Some(reply));
                    }
                }
            }
        }
    }
}

/// Renews at T1 and rebinds at T2 until the lease expires unrenewed.
fn keep_lease(nic: &str, mac: &[u8; 6], hostname: &str, mut lease: Lease) {
    let mut granted = Instant::now();
    loop {
        let now = granted.elapsed();
        if now >= lease.lease_time {
            warn!("{nic}: DHCP lease on {} expired", lease.address);
            return;
        }
        let next = if now < lease.renew_after {
            lease.renew_after
        } else {
            (now + (lease.lease_time - now) / 2).max(now + Duration::from_secs(60))
        };
        std::thread::sleep(next.saturating_sub(now).min(lease.lease_time - now));
        let Ok(socket) = PacketSocket::open(nic) else {
            continue;
        };
        let xid = random_u32();
        if socket
            .send_broadcast(lease.address, &dhcp::renew(xid, mac, hostname, &lease))
            .is_err()
        {
            continue;
        }
        if let Ok(Some(Reply::Ack(new))) =
            wait_for(&socket, xid, mac, Duration::from_secs(5), |r| {
                matches!(r, Reply::Ack(_) | Reply::Nak(_))
            })
        {
            if new.address == lease.address {
                info!(
                    "{nic}: DHCP lease on {} renewed for {} s",
                    new.address,
                    new.lease_time.as_secs()
                );
                lease = new;
                granted = Instant::now();
            }
        }
    }
}

fn remember(nic: &str, mac: [u8; 6], lease: &Lease) {
    if let Ok(mut leases) = LEASES.lock() {
        leases.retain(|(n, _, _)| n != nic);
        leases.push((nic.to_string(), mac, lease.clone()));
    }
}

fn forget(nic: &str) {
    if let Ok(mut leases) = LEASES.lock() {
        leases.retain(|(n, _, _)| n != nic);
    }
}

/// Sends RELEASE for every lease we hold; part of an orderly shutdown.
pub fn release_all() {
    let Ok(leases) = LEASES.lock() else { return };
    for (nic, mac, lease) in leases.iter() {
        if let Ok(socket) = PacketSocket::open(nic) {
            let _ = socket.send_broadcast(lease.address, &dhcp::release(random_u32(), mac, lease));
            info!("{nic}: released {}", lease.address);
        }
    }
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom fills our buffer. GRND_NONBLOCK: early in boot the pool may not be
    // ready; a transaction id only needs to differ from other clients'.
    let n = unsafe {
        libc::getrandom(
            bytes.as_mut_ptr() as *mut libc::c_void,
            4,
            libc::GRND_NONBLOCK,
        )
    };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ std::process::id();
    }
    u32::from_ne_bytes(bytes)
}

/// Address, netmask and default route through the classic ioctls; `/etc/resolv.conf`.
fn apply(nic: &str, lease: &Lease) -> Result<(), String> {
    use support::netif;
    let mask = if lease.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(lease.prefix_len.min(32)))
    };
    netif::set_ipv4_address(nic, lease.address)
        .map_err(|e| format!("{nic}: setting {}: {e}", lease.address))?;
    let mask = Ipv4Addr::from(mask);
    netif::set_ipv4_netmask(nic, mask).map_err(|e| format!("{nic}: setting {mask}: {e}"))?;
    if let Some(router) = lease.router {
        netif::add_default_route(nic, router)
            .map_err(|e| format!("{nic}: default route via {router}: {e}"))?;
    }
    let mut resolv = String::new();
    if let Some(domain) = &lease.domain {
        resolv.push_str(&format!("search {domain}\n"));
    }
    for server in &lease.dns {
        resolv.push_str(&format!("nameserver {server}\n"));
    }
    fs::write("/etc/resolv.conf", resolv).map_err(|e| format!("writing /etc/resolv.conf: {e}"))
}
