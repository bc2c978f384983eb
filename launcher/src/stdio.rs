//! A terminal in raw mode while a VM console (or the switcher) owns it: every key reaches
//! the guest, nothing is echoed by the host. The previous mode comes back on drop.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, OutputFlags, SetArg, Termios};

/// Holds a terminal in raw mode; restores the saved mode when dropped. On something that
/// is not a terminal (a pipe, a file) it does nothing.
pub struct RawTerminal<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Option<Termios>,
}

impl<'fd> RawTerminal<'fd> {
    /// Raw input and output. `keep_newline_translation` keeps the host turning the
    /// guest's "\n" into "\r\n" (a console shown on this terminal wants it; a stream of
    /// another VMM's pty already carries its own carriage returns).
    pub fn enter(fd: BorrowedFd<'fd>, keep_newline_translation: bool) -> RawTerminal<'fd> {
        let Ok(saved) = termios::tcgetattr(fd) else {
            return RawTerminal { fd, saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if keep_newline_translation {
            raw.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
        }
        if let Err(e) = termios::tcsetattr(fd, SetArg::TCSANOW, &raw) {
            log::warn!("cannot put the terminal in raw mode: {e}");
            return RawTerminal { fd, saved: None };
        }
        RawTerminal {
            fd,
            saved: Some(saved),
        }
    }

    /// Standard input, as [`RawTerminal::enter`] does.
    pub fn stdin(keep_newline_translation: bool) -> RawTerminal<'static> {
        // SAFETY: fd 0 stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(0) };
        RawTerminal::enter(fd, keep_newline_translation)
    }

    /// True when the terminal really is in raw mode.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl AsFd for RawTerminal<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
    }
}

impl Drop for RawTerminal<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, saved);
        }
    }
}
