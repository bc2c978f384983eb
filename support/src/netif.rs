//! Network interface ioctls, on the kernel's own `struct ifreq` (`libc::ifreq`): bring an
//! interface up or down, create, delete and fill bridges, set an IPv4 address, netmask
//! and default route. Also [`parse_mac`].
//!
//! Every function opens its own control socket (an `AF_INET` datagram socket, closed on
//! return): these calls are rare (boot, login, logout) and a socket costs microseconds.
//! Errors are the operating system's, with their kind kept (`PermissionDenied` without
//! CAP_NET_ADMIN, `NotFound` for a missing interface...); callers say what they were
//! doing. A bad interface name (empty, 16 bytes or more, or with a NUL) is
//! `InvalidInput`.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Bridge ioctls from `<linux/sockios.h>` (libc has them for Android only).
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff`: six pairs of hex digits, either
/// case, between colons.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A control socket for interface ioctls.
pub fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and belongs to no one else; OwnedFd closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An all-zero `ifreq` naming interface `name` (NUL-terminated, as the kernel wants).
/// Fails with `InvalidInput` if the name is empty, has a NUL, or does not fit
/// (`IFNAMSIZ` is 16 with the NUL). A name with `%d` (`vmtap%d`) is fine: TUNSETIFF
/// replaces it.
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain data (a name array and a union of integers, addresses and a
    // pointer); all zeroes is a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// The interface name in `req` (what the kernel wrote back, e.g. after TUNSETIFF).
pub fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One ioctl whose argument is `arg`.
///
/// # Safety
///
/// `request` must be an ioctl that reads (and may write) a `T` at the pointer: an
/// `ifreq` for the SIOC*IF* requests, a NUL-terminated name for SIOCBRADDBR and
/// SIOCBRDELBR, an `rtentry` for SIOCADDRT.
unsafe fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: the caller vouches that `arg` is what `request` reads and writes; it is a
    // live pointer for the length of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface's flags (`IFF_UP`, `IFF_RUNNING`...).
fn flags(sock: &OwnedFd, req: &mut libc::ifreq) -> io::Result<libc::c_short> {
    // SAFETY: SIOCGIFFLAGS reads the name in an ifreq and writes ifru_flags.
    unsafe { ioctl(sock, libc::SIOCGIFFLAGS, req)? };
    // SAFETY: the kernel just wrote the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

fn change_flags(name: &str, set: libc::c_short, clear: libc::c_short) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    let old = flags(&sock, &mut req)?;
    let new = (old | set) & !clear;
    if new == old {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = new;
    // SAFETY: SIOCSIFFLAGS reads an ifreq: its name and ifru_flags, both set.
    unsafe { ioctl(&sock, libc::SIOCSIFFLAGS, &mut req) }
}

/// Brings interface `name` up (IFF_UP); already up is fine.
pub fn set_up(name: &str) -> io::Result<()> {
    change_flags(name, libc::IFF_UP as libc::c_short, 0)
}

/// Takes interface `name` down; already down is fine.
pub fn set_down(name: &str) -> io::Result<()> {
    change_flags(name, 0, libc::IFF_UP as libc::c_short)
}

/// The interface's index.
pub fn index(name: &str) -> io::Result<i32> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads the name in an ifreq and writes ifru_ifindex.
    unsafe { ioctl(&sock, libc::SIOCGIFINDEX, &mut req)? };
    // SAFETY: the kernel just wrote the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Creates bridge `name`; one that exists already is fine. It starts down: see
/// [`set_up`].
pub fn create_bridge(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCBRADDBR reads a NUL-terminated name; ifr_name is one (ifreq zeroes the
    // rest of the array and names are shorter than it).
    match unsafe { ioctl(&sock, SIOCBRADDBR, req.ifr_name.as_mut_ptr()) } {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Takes bridge `name` down (the kernel refuses to delete a bridge that is up) and
/// deletes it; its ports are released.
pub fn delete_bridge(name: &str) -> io::Result<()> {
    // A missing bridge fails below, with the error that says so.
    let _ = set_down(name);
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCBRDELBR reads a NUL-terminated name, as in create_bridge.
    unsafe { ioctl(&sock, SIOCBRDELBR, req.ifr_name.as_mut_ptr()) }
}

/// Adds interface `ifname` (a tap, a NIC) to the existing bridge `bridge`.
pub fn add_to_bridge(bridge: &str, ifname: &str) -> io::Result<()> {
    let index = index(ifname)?;
    let sock = control_socket()?;
    let mut req = ifreq(bridge)?;
    req.ifr_ifru.ifru_ifindex = index;
    // SAFETY: SIOCBRADDIF reads an ifreq: the bridge's name and the port's ifindex.
    unsafe { ioctl(&sock, SIOCBRADDIF, &mut req) }
}

/// Sets the hardware (MAC) address of `name`.
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    let mut addr = libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data: [0; 14],
    };
    for (dst, byte) in addr.sa_data.iter_mut().zip(mac) {
        *dst = byte as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    // SAFETY: SIOCSIFHWADDR reads an ifreq: the name and the hardware address.
    unsafe { ioctl(&sock, libc::SIOCSIFHWADDR, &mut req) }
}

/// An IPv4 `sockaddr` (port 0), as the address ioctls and `rtentry` take it.
fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data, and sockaddr_in is
    // how the kernel reads an AF_INET sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_address(name: &str, request: libc::c_ulong, addr: Ipv4Addr) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    // SAFETY: SIOCSIFADDR and SIOCSIFNETMASK read an ifreq: the name and ifru_addr.
    unsafe { ioctl(&sock, request, &mut req) }
}

/// Sets the IPv4 address of interface `name`.
pub fn set_ipv4_address(name: &str, addr: Ipv4Addr) -> io::Result<()> {
    set_address(name, libc::SIOCSIFADDR, addr)
}

/// Sets the IPv4 netmask of interface `name` (after its address: setting the address
/// resets the mask to its class's).
pub fn set_ipv4_netmask(name: &str, mask: Ipv4Addr) -> io::Result<()> {
    set_address(name, libc::SIOCSIFNETMASK, mask)
}

/// Adds the IPv4 default route through `gateway` on interface `name`; a default route
/// that exists already is fine.
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let req = ifreq(name)?;
    // SAFETY: ifr_name is NUL-terminated (see `ifreq`).
    let dev: &CStr = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
    // SAFETY: an all-zero rtentry is valid (integers, addresses and null pointers); the
    // fields SIOCADDRT reads are set below.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // The kernel only reads the device name.
    rt.rt_dev = dev.as_ptr().cast_mut();
    let sock = control_socket()?;
    // SAFETY: SIOCADDRT reads an rtentry; rt and the name it points to (in `req`) outlive
    // the call.
    match unsafe { ioctl(&sock, libc::SIOCADDRT, &mut rt) } {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("52:54:00:0a:0B:ff"),
            Some([0x52, 0x54, 0, 0x0a, 0x0b, 0xff])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:56:",
            "zz:54:00:12:34:56",
            "5:54:00:12:34:56",
            "052:54:00:12:34:56",
            "+5:54:00:12:34:56",
            "52-54-00-12-34-56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a-name-that-is-too-long", "sixteen-bytes-xx", "a\0b"] {
            let e = ifreq(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(ifreq("ca-office").is_ok());
        assert!(ifreq("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn names_round_trip() {
        let req = ifreq("vmtap%d").unwrap();
        assert_eq!(ifreq_name(&req), "vmtap%d");
        assert_eq!(req.ifr_name[7], 0);
    }

    #[test]
    fn addresses_are_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sin_port (2 bytes), then the address as on the wire.
        assert_eq!(
            &sa.sa_data[2..6],
            &[10, 0, 2, 15].map(|b: u8| b as libc::c_char)
        );
    }

    #[test]
    fn loopback_index_and_flags() {
        // Needs no privilege: reading is allowed to anyone.
        assert!(index("lo").unwrap() > 0);
        let sock = control_socket().unwrap();
        let mut req = ifreq("lo").unwrap();
        flags(&sock, &mut req).unwrap();
        assert_eq!(
            index("no-such-if0").unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }
}
