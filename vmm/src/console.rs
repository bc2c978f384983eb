//! The host side of the serial console's input: a stream the embedding program hands over
//! (the `vmm` command's terminal, the session's console switcher). Ctrl-A then `x` stops
//! the VM, Ctrl-A Ctrl-A sends a literal Ctrl-A. Putting a terminal into raw mode is the
//! embedding program's business.

use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::devices::legacy::serial::Serial;
use crate::exit::{ExitReason, ExitSignal};

/// Escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Decodes the escape sequence: returns the bytes to forward and whether to stop.
pub fn filter_input(bytes: &[u8], escaped: &mut bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if *escaped {
            *escaped = false;
            match b {
                b'x' | b'X' => return (out, true),
                ESCAPE => out.push(ESCAPE),
                _ => {}
            }
        } else if b == ESCAPE {
            *escaped = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

/// Where the serial console's input comes from.
#[derive(Default)]
pub enum ConsoleInput {
    /// Nowhere: the guest's console is output only.
    #[default]
    None,
    /// A stream given by the embedding program.
    Stream(Box<dyn Read + Send>),
}

/// Starts a thread forwarding `input` to `serial`. It lives until the input closes or the
/// escape is typed; a read still blocked when the VM ends is left behind and ends when its
/// input closes (or with the process).
pub fn spawn_input_forwarder(
    input: impl Read + Send + 'static,
    serial: Arc<Mutex<Serial>>,
    exit: Arc<ExitSignal>,
) {
    let _ = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut input = input;
            let mut buf = [0u8; 64];
            let mut escaped = false;
            loop {
                if exit.reason().is_some() {
                    return;
                }
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if exit.reason().is_some() {
                    // The VM ended while we waited: these keys are for whatever runs next.
                    return;
                }
                let (bytes, stop) = filter_input(&buf[..n], &mut escaped);
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let sent = lock(&serial).enqueue_input(rest);
                    rest = &rest[sent..];
                    if !rest.is_empty() {
                        // The guest has not drained its receive FIFO yet.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    if exit.reason().is_some() {
                        return;
                    }
                }
                if stop {
                    exit.request(ExitReason::Stopped);
                    return;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut e = false;
        assert_eq!(filter_input(b"ab", &mut e), (b"ab".to_vec(), false));
        assert_eq!(
            filter_input(b"a\x01\x01b", &mut e),
            (b"a\x01b".to_vec(), false)
        );
        assert_eq!(filter_input(b"a\x01", &mut e), (b"a".to_vec(), false));
        assert!(e);
        assert_eq!(filter_input(b"xyz", &mut e), (Vec::new(), true));
    }
}
