//! A tap device for virtio-net: opened through /dev/net/tun with the virtio-net header
//! (so frames pass between tap and guest unchanged, header included). Bringing it up and
//! attaching it to an appliance network's bridge is host network configuration, done by
//! the embedding program (the launcher) with the interface's name.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Something frames go in and out of: a tap, or a datagram socket in tests.
pub trait PacketIo: Send + Sync {
    /// Sends one frame (virtio-net header + Ethernet frame).
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
    /// Receives one frame; `WouldBlock` when none is waiting (the fd is non-blocking).
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// The fd to poll for readability.
    fn raw_fd(&self) -> RawFd;
}

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), the header on every frame.
pub const VNET_HDR_LEN: usize = 12;

/// The `struct ifreq` that TUNSETIFF takes, naming interface `name` (a `%d` in it lets
/// the kernel pick the number).
fn tun_request(name: &str, flags: libc::c_short) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers and
    // addresses); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    Ok(req)
}

/// The name the kernel wrote back into a TUNSETIFF request.
fn request_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn ioctl(fd: RawFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is the pointed-to object, which
    // is live and large enough (a libc::ifreq, or an int).
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// An open tap interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or opens) tap `name` (`"vmtap%d"` lets the kernel pick), with the 12-byte
    /// virtio-net header, non-blocking. It stays down until its owner brings it up.
    pub fn open(name: &str) -> io::Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("/dev/net/tun: {e} (is the tun module loaded?)"),
                )
            })?;
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        let mut req = tun_request(name, flags)?;
        ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF as _,
            (&mut req as *mut libc::ifreq).cast(),
        )?;
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl(
            file.as_raw_fd(),
            libc::TUNSETVNETHDRSZ as _,
            (&mut hdr_len as *mut libc::c_int).cast(),
        )?;
        // No checksum or segmentation offloads: we offer none to the guest either.
        ioctl(
            file.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            std::ptr::null_mut(),
        )?;
        Ok(Tap {
            file,
            name: request_name(&req),
        })
    }

    /// The interface name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn io_result(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl PacketIo for Tap {
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: write(2) from a live buffer of the given length.
        io_result(unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) })
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) into a live buffer of the given length.
        io_result(unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl PacketIo for std::os::unix::net::UnixDatagram {
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::send(self, frame)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::recv(self, buf)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(tun_request("", 0).is_err());
        assert!(tun_request("a-name-much-too-long", 0).is_err());
        assert_eq!(request_name(&tun_request("vmtap%d", 0).unwrap()), "vmtap%d");
        assert_eq!(std::mem::size_of::<libc::ifreq>(), 40);
    }

    #[test]
    fn tap_opens_when_permitted() {
        match Tap::open("vmmtest%d") {
            Ok(t) => assert!(t.name().starts_with("vmmtest")),
            Err(e) => eprintln!("SKIPPED: cannot create a tap here: {e}"),
        }
    }
}
