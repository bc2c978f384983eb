//! The DHCPv4 conversation: what we send, and what we take from the answers.
//!
//! Pure protocol logic over `dhcproto`'s wire format, with no sockets, so every rule can
//! be tested without a network. The transport is in `rawsock`, the state machine that
//! drives both in `network`.

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Site-specific option (RFC 2132 §2 reserves 224–254 for sites) carrying the repository
/// URL, for offices that configure terminals through their DHCP server rather than the
/// kernel command line. dnsmasq: `dhcp-option-force=224,"http://repo:8080"`.
pub const OPTION_REPOSITORY_URL: u8 = 224;

/// Sent as the vendor class (option 60), so a DHCP server can single terminals out.
pub const VENDOR_CLASS: &[u8] = b"Collective-Terminal";

/// What an accepted lease gives the terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub server: Ipv4Addr,
    pub lease_time: Duration,
    /// When to renew with the same server (T1) and when to ask anyone (T2).
    pub renew_after: Duration,
    pub rebind_after: Duration,
    pub repo_url: Option<String>,
}

/// Options we ask the server for.
fn parameter_requests() -> Vec<OptionCode> {
    vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
        OptionCode::Unknown(OPTION_REPOSITORY_URL),
    ]
}

fn base_message(xid: u32, mac: &[u8; 6], hostname: &str) -> v4::Message {
    let mut msg = v4::Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    // We have no address to receive a unicast answer on yet.
    msg.set_flags(v4::Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::ParameterRequestList(parameter_requests()));
    opts.insert(DhcpOption::ClassIdentifier(VENDOR_CLASS.to_vec()));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    if !hostname.is_empty() {
        opts.insert(DhcpOption::Hostname(hostname.to_string()));
    }
    msg
}

fn encode(msg: &v4::Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(320);
    // Encoding a message we built ourselves into a Vec cannot fail.
    let _ = msg.encode(&mut Encoder::new(&mut buf));
    buf
}

pub fn discover(xid: u32, mac: &[u8; 6], hostname: &str) -> Vec<u8> {
    let mut msg = base_message(xid, mac, hostname);
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    encode(&msg)
}

/// REQUEST for an offered address (SELECTING state: names the server and the address).
pub fn request(xid: u32, mac: &[u8; 6], hostname: &str, offer: &Lease) -> Vec<u8> {
    let mut msg = base_message(xid, mac, hostname);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Request));
    opts.insert(DhcpOption::RequestedIpAddress(offer.address));
    opts.insert(DhcpOption::ServerIdentifier(offer.server));
    encode(&msg)
}

/// REQUEST to extend a lease we hold (RENEWING/REBINDING: our address in `ciaddr`).
pub fn renew(xid: u32, mac: &[u8; 6], hostname: &str, lease: &Lease) -> Vec<u8> {
    let mut msg = base_message(xid, mac, hostname);
    msg.set_ciaddr(lease.address);
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    encode(&msg)
}

/// RELEASE, sent at shutdown so the address is free for the next machine at once.
pub fn release(xid: u32, mac: &[u8; 6], lease: &Lease) -> Vec<u8> {
    let mut msg = base_message(xid, mac, "");
    msg.set_ciaddr(lease.address);
    msg.set_flags(v4::Flags::default());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Release));
    opts.insert(DhcpOption::ServerIdentifier(lease.server));
    encode(&msg)
}

/// What a server said, if it is an answer to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer(Lease),
    Ack(Lease),
    Nak(String),
}

/// Parses a server's message. Anything that is not a well-formed reply to `xid` and our
/// MAC (another client's traffic, garbage) gives `None`.
pub fn parse_reply(datagram: &[u8], xid: u32, mac: &[u8; 6]) -> Option<Reply> {
    let msg = v4::Message::decode(&mut Decoder::new(datagram)).ok()?;
    if msg.opcode() != v4::Opcode::BootReply
        || msg.xid() != xid
        || msg.chaddr().get(..6) != Some(&mac[..])
    {
        return None;
    }
    let opts = msg.opts();
    match opts.msg_type()? {
        MessageType::Offer => lease_from(&msg).map(Reply::Offer),
        MessageType::Ack => lease_from(&msg).map(Reply::Ack),
        MessageType::Nak => {
            let why = match opts.get(OptionCode::Message) {
                Some(DhcpOption::Message(m)) => m.clone(),
                _ => "no reason given".into(),
            };
            Some(Reply::Nak(why))
        }
        _ => None,
    }
}

fn lease_from(msg: &v4::Message) -> Option<Lease> {
    let opts = msg.opts();
    let address = msg.yiaddr();
    if address.is_unspecified() || address.is_broadcast() {
        return None;
    }
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => msg.siaddr(),
    };
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => u32::from(*mask).leading_ones() as u8,
        _ => default_prefix(address),
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(routers)) => routers.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
        _ => Vec::new(),
    };
    let domain = match opts.get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => Some(d.clone()),
        _ => None,
    };
    // RFC 2131: an infinite lease is 0xffffffff; a missing one we treat as an hour.
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 3600,
    };
    let secs = |v: Option<&DhcpOption>, default: u64| match v {
        Some(DhcpOption::Renewal(t)) | Some(DhcpOption::Rebinding(t)) => u64::from(*t),
        _ => default,
    };
    let lease = u64::from(lease_secs);
    let repo_url = match opts.get(OptionCode::Unknown(OPTION_REPOSITORY_URL)) {
        Some(DhcpOption::Unknown(u)) => {
            let text = String::from_utf8_lossy(u.data())
                .trim_end_matches('\0')
                .trim()
                .to_string();
            (text.starts_with("http://") || text.starts_with("https://")).then_some(text)
        }
        _ => None,
    };
    Some(Lease {
        address,
        prefix_len,
        router,
        dns,
        domain,
        server,
        lease_time: Duration::from_secs(lease),
        renew_after: Duration::from_secs(secs(opts.get(OptionCode::Renewal), lease / 2)),
        rebind_after: Duration::from_secs(secs(opts.get(OptionCode::Rebinding), lease * 7 / 8)),
        repo_url,
    })
}

fn default_prefix(address: Ipv4Addr) -> u8 {
    match address.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn server_reply(
        kind: MessageType,
        xid: u32,
        extra: impl FnOnce(&mut v4::DhcpOptions),
    ) -> Vec<u8> {
        let mut msg = v4::Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        msg.set_opcode(v4::Opcode::BootReply);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        opts.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        opts.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            10, 0, 2, 3,
        )]));
        opts.insert(DhcpOption::AddressLeaseTime(86400));
        extra(opts);
        encode(&msg)
    }

    #[test]
    fn discover_asks_for_what_we_need_and_says_who_we_are() {
        let bytes = discover(7, &MAC, "terminal-525400123456");
        let msg = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert!(msg.flags().broadcast());
        assert_eq!(&msg.chaddr()[..6], &MAC);
        match msg.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(list)) => {
                assert!(list.contains(&OptionCode::Router));
                assert!(list.contains(&OptionCode::Unknown(OPTION_REPOSITORY_URL)));
            }
            other => panic!("no parameter request list: {other:?}"),
        }
        assert!(
            matches!(msg.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(c)) if c == VENDOR_CLASS)
        );
    }

    #[test]
    fn an_ack_becomes_a_lease_with_derived_timers() {
        let bytes = server_reply(MessageType::Ack, 9, |_| {});
        let Some(Reply::Ack(lease)) = parse_reply(&bytes, 9, &MAC) else {
            panic!("not an ack")
        };
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.renew_after, Duration::from_secs(43200));
        assert_eq!(lease.rebind_after, Duration::from_secs(75600));
        assert_eq!(lease.repo_url, None);
    }

    #[test]
    fn the_repository_option_is_read_and_checked() {
        let url = b"http://repo.example:8080".to_vec();
        let bytes = server_reply(MessageType::Offer, 3, |o| {
            o.insert(DhcpOption::Unknown(v4::UnknownOption::new(
                OptionCode::Unknown(OPTION_REPOSITORY_URL),
                url,
            )));
        });
        let Some(Reply::Offer(lease)) = parse_reply(&bytes, 3, &MAC) else {
            panic!("not an offer")
        };
        assert_eq!(lease.repo_url.as_deref(), Some("http://repo.example:8080"));
        let bytes = server_reply(MessageType::Offer, 3, |o| {
            o.insert(DhcpOption::Unknown(v4::UnknownOption::new(
                OptionCode::Unknown(OPTION_REPOSITORY_URL),
                b"ftp://x".to_vec(),
            )));
        });
        let Some(Reply::Offer(lease)) = parse_reply(&bytes, 3, &MAC) else {
            panic!("not an offer")
        };
        assert_eq!(lease.repo_url, None);
    }

    #[test]
    fn replies_to_someone_else_and_garbage_are_ignored() {
        let bytes = server_reply(MessageType::Ack, 9, |_| {});
        assert_eq!(parse_reply(&bytes, 10, &MAC), None, "other transaction");
        assert_eq!(
            parse_reply(&bytes, 9, &[1, 2, 3, 4, 5, 6]),
            None,
            "other client"
        );
        assert_eq!(parse_reply(&[0u8; 3], 9, &MAC), None);
        assert_eq!(
            parse_reply(&discover(9, &MAC, ""), 9, &MAC),
            None,
            "a request, not a reply"
        );
        for cut in [10, 100, 236, 240, 250] {
            let _ = parse_reply(&bytes[..cut.min(bytes.len())], 9, &MAC);
        }
    }

    #[test]
    fn a_nak_says_why() {
        let bytes = server_reply(MessageType::Nak, 4, |o| {
            o.insert(DhcpOption::Message("wrong network".into()));
        });
        assert_eq!(
            parse_reply(&bytes, 4, &MAC),
            Some(Reply::Nak("wrong network".into()))
        );
    }
}
