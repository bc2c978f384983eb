//! Appliance networks: one Linux bridge per network the appliance set joins, created for
//! the session. The VMM attaches each appliance's tap to its bridge; appliances on the
//! same network then reach each other and nothing else.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `SIOCBRADDBR` and `SIOCBRDELBR` from `<linux/sockios.h>`.
const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned by the OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and belongs to no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name_of(bridge: &str) -> io::Result<CString> {
    if bridge.is_empty() || bridge.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {bridge:?}"),
        ));
    }
    CString::new(bridge).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Creates bridge `name` (an existing one is fine) and sets it up.
pub fn ensure(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let cname = name_of(name)?;
    // SAFETY: SIOCBRADDBR reads a NUL-terminated name from the pointer.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, cname.as_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create bridge {name}: {e}"),
            ));
        }
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write an ifreq, which IfReq lays out.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes bridge `name` (it must be down and without ports; taps go when their VMs end).
pub fn remove(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    let cname = name_of(name)?;
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: as in `ensure`; SIOCBRDELBR reads the name.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) == 0 {
            let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) & !(libc::IFF_UP as i16);
            req.data[..2].copy_from_slice(&flags.to_ne_bytes());
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req);
        }
        if libc::ioctl(sock.as_raw_fd(), SIOCBRDELBR, cname.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(name_of("").is_err());
        assert!(name_of("a-name-that-is-too-long").is_err());
        assert!(name_of("ca-office").is_ok());
    }
}
