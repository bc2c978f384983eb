//! A tap device for virtio-net: opened through /dev/net/tun with the virtio-net header
//! (so frames pass between tap and guest unchanged, header included), brought up, and
//! attached to a named bridge (an appliance network).

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

/// Bridge ioctl "add interface" (linux/sockios.h; not exported by libc for every target).
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), the header on every frame.
pub const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= 16 || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?}"),
            ));
        }
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn ioctl(fd: RawFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is the pointed-to object, which
    // is live and large enough (an IfReq is the kernel's 40-byte struct ifreq, or an int).
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn inet_socket() -> io::Result<File> {
    // SAFETY: plain socket(2) call; the fd is owned by the returned File.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// An open tap interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or opens) tap `name` (`"vmtap%d"` lets the kernel pick), with the 12-byte
    /// virtio-net header, non-blocking, and brings it up.
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
        let mut req = IfReq::new(name)?;
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as u16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF as _,
            (&mut req as *mut IfReq).cast(),
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
        let tap = Tap {
            file,
            name: req.name(),
        };
        tap.set_up()?;
        Ok(tap)
    }

    /// The interface name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_up(&self) -> io::Result<()> {
        let sock = inet_socket()?;
        let mut req = IfReq::new(&self.name)?;
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            (&mut req as *mut IfReq).cast(),
        )?;
        let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | libc::IFF_UP as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            (&mut req as *mut IfReq).cast(),
        )
    }

    /// Attaches the tap to the existing bridge `bridge` (creating bridges is init's job).
    pub fn attach_to_bridge(&self, bridge: &str) -> io::Result<()> {
        let sock = inet_socket()?;
        let mut req = IfReq::new(&self.name)?;
        ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFINDEX,
            (&mut req as *mut IfReq).cast(),
        )?;
        let index = i32::from_ne_bytes([req.data[0], req.data[1], req.data[2], req.data[3]]);
        let mut br = IfReq::new(bridge)?;
        br.data[..4].copy_from_slice(&index.to_ne_bytes());
        ioctl(
            sock.as_raw_fd(),
            SIOCBRADDIF,
            (&mut br as *mut IfReq).cast(),
        )
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
        assert!(IfReq::new("").is_err());
        assert!(IfReq::new("a-name-much-too-long").is_err());
        assert_eq!(IfReq::new("vmtap%d").unwrap().name(), "vmtap%d");
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn tap_opens_when_permitted() {
        match Tap::open("vmmtest%d") {
            Ok(t) => assert!(t.name().starts_with("vmmtest")),
            Err(e) => eprintln!("SKIPPED: cannot create a tap here: {e}"),
        }
    }
}
