//! DHCP's transport before the interface has an address: a packet socket on one
//! interface, with the IPv4 and UDP headers written and read by us.
//!
//! A UDP socket cannot reliably send from 0.0.0.0 and receive broadcast answers on an
//! interface without an address; a packet socket bound to the interface can, and it
//! never sees other interfaces' traffic.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const ETH_P_IP: u16 = 0x0800;

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(interface: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: plain syscalls on values we own; results are checked.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IP.to_be()),
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_IP.to_be();
            addr.sll_ifindex = ifindex;
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(PacketSocket { fd, ifindex })
        }
    }

    /// Broadcasts a DHCP message from 0.0.0.0:68 (or `source`) to 255.255.255.255:67.
    pub fn send_broadcast(&self, source: Ipv4Addr, dhcp: &[u8]) -> io::Result<()> {
        let packet = udp_ipv4_packet(source, Ipv4Addr::BROADCAST, CLIENT_PORT, SERVER_PORT, dhcp);
        // SAFETY: sendto with a valid buffer and sockaddr_ll.
        unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_IP.to_be();
            addr.sll_ifindex = self.ifindex;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for a UDP datagram to port 68; returns its payload, or
    /// `None` on timeout. Other IP traffic on the interface is skipped.
    pub fn receive_dhcp(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                return Ok(None);
            }
            // SAFETY: recv into our buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(payload) = udp_payload_to_port(&buf[..n as usize], CLIENT_PORT) {
                return Ok(Some(payload.to_vec()));
            }
        }
    }
}

/// The internet checksum (RFC 1071).
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut pairs = chunk.chunks_exact(2);
        for pair in &mut pairs {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = pairs.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet holding one UDP datagram, checksums filled in.
pub fn udp_ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let total_len = 20 + udp_len;
    let mut ip = [0u8; 20];
    ip[0] = 0x45; // version 4, 5 words of header
    ip[1] = 0x10; // low delay, as dhclient sends
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    let mut udp_sum = checksum(&[&pseudo, &udp, payload]);
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());

    let mut packet = Vec::with_capacity(total_len as usize);
    packet.extend_from_slice(&ip);
    packet.extend_from_slice(&udp);
    packet.extend_from_slice(payload);
    packet
}

/// The payload of an IPv4/UDP packet to `port`, if that is what `packet` is.
pub fn udp_payload_to_port(packet: &[u8], port: u16) -> Option<&[u8]> {
    let version_ihl = *packet.first()?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl + 8 || packet[9] != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    // Fragments are not for us: DHCP replies fit one packet.
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 || total > packet.len() || total < ihl + 8 {
        return None;
    }
    let udp = &packet[ihl..total];
    if u16::from_be_bytes([udp[2], udp[3]]) != port {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(&udp[8..udp_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_carry_valid_checksums() {
        let payload = b"hello dhcp";
        let p = udp_ipv4_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, payload);
        assert_eq!(checksum(&[&p[..20]]), 0, "IP header checksum verifies");
        assert_eq!(udp_payload_to_port(&p, 67), Some(&payload[..]));
        assert_eq!(udp_payload_to_port(&p, 68), None);
    }

    #[test]
    fn malformed_packets_are_skipped() {
        let p = udp_ipv4_packet(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 67, 68, b"x");
        for cut in 0..p.len() {
            assert_eq!(udp_payload_to_port(&p[..cut], 68), None, "cut at {cut}");
        }
        let mut bad = p.clone();
        bad[0] = 0x65;
        assert_eq!(udp_payload_to_port(&bad, 68), None);
        let mut tcp = p.clone();
        tcp[9] = 6;
        assert_eq!(udp_payload_to_port(&tcp, 68), None);
    }

    #[test]
    fn checksum_matches_the_rfc_example() {
        // RFC 1071 §3 example words: 0001 f203 f4f5 f6f7 sum to 0xddf2 (complemented 0x220d).
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            0x220d
        );
    }
}
