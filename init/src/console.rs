//! The login prompt on each console.
//!
//! One thread per console the kernel command line names (`console=tty1
//! console=ttyS0`): a person may sit at the screen or at the serial line, and both must
//! work. A console that cannot be opened is retried slowly; an error never ends the
//! thread, because a terminal without a prompt is a brick.

use crate::login::{LoginOutcome, Sessions};
use crate::power::{request, PowerAction};
use crate::settings::KEYS;
use crate::status::StatusBoard;
use log::{debug, info, warn};
use nix::sys::termios::{
    self, ControlFlags, InputFlags, LocalFlags, OutputFlags, SetArg, SpecialCharacterIndices,
};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::time::Duration;

/// How long a console waits for bring-up before drawing the login screen anyway. On
/// real hardware bring-up takes a fraction of this; where drivers are slow (emulated
/// machines), the person can start typing while KVM and the network finish, and the
/// screen is told when they do.
pub const PROMPT_DEADLINE: Duration = Duration::from_millis(250);

/// Serializes writes to the consoles, so an announcement never lands inside a banner.
static OUTPUT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn write_locked(tty: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    let _guard = OUTPUT.lock();
    tty.write_all(bytes)
}

/// The console a session runs on: it belongs to the person's appliances, so
/// announcements skip it and no second session starts.
static SESSION_ON: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn session_console() -> Option<String> {
    SESSION_ON.lock().ok().and_then(|s| s.clone())
}

/// Tells every console something changed, and prompts again.
pub fn announce(consoles: &[String], text: &str) {
    let _guard = OUTPUT.lock();
    let busy = session_console();
    for name in consoles {
        if busy.as_deref() == Some(name.as_str()) {
            continue;
        }
        if let Ok(mut tty) = open_tty(name) {
            let _ = tty.write_all(format!("\r\n{text}login: ").as_bytes());
        }
    }
}

/// Starts the login thread for `/dev/<name>`.
pub fn spawn(name: String, board: Arc<StatusBoard>, sessions: Arc<dyn Sessions>) {
    let thread_name = format!("console-{name}");
    let result = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut warned = false;
            loop {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    serve(&name, &board, sessions.as_ref())
                }));
                match outcome {
                    Ok(Err(e)) if !warned => {
                        warn!("console {name}: {e}; retrying every 10 s");
                        warned = true;
                    }
                    Ok(Err(e)) => debug!("console {name}: {e}"),
                    Ok(Ok(())) => {}
                    Err(_) => warn!("console {name}: the login prompt crashed; restarting it"),
                }
                std::thread::sleep(Duration::from_secs(if warned { 10 } else { 1 }));
            }
        });
    if let Err(e) = result {
        warn!("cannot start the login prompt on {}: {e}", "console");
    }
}

pub fn open_tty(name: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(format!("/dev/{name}"))
}

/// Canonical input with echo, CR→NL on input, NL→CRNL on output: what a person at a
/// serial terminal or a VT expects from a line prompt.
fn configure(tty: &File) -> nix::Result<()> {
    let mut t = termios::tcgetattr(tty)?;
    t.input_flags |= InputFlags::ICRNL | InputFlags::IUTF8;
    t.input_flags &= !(InputFlags::INLCR | InputFlags::IGNCR);
    t.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
    t.control_flags |= ControlFlags::CREAD | ControlFlags::CLOCAL;
    t.local_flags |= LocalFlags::ICANON
        | LocalFlags::ECHO
        | LocalFlags::ECHOE
        | LocalFlags::ECHOK
        | LocalFlags::ECHONL;
    // We are not a shell: ^C must not signal anyone; it just erases the line.
    t.local_flags &= !LocalFlags::ISIG;
    t.control_chars[SpecialCharacterIndices::VERASE as usize] = 0x7f;
    t.control_chars[SpecialCharacterIndices::VKILL as usize] = 0x15;
    termios::tcsetattr(tty, SetArg::TCSANOW, &t)
}

fn set_echo(tty: &File, on: bool) {
    if let Ok(mut t) = termios::tcgetattr(tty) {
        if on {
            t.local_flags |= LocalFlags::ECHO;
        } else {
            t.local_flags &= !LocalFlags::ECHO;
        }
        let _ = termios::tcsetattr(tty, SetArg::TCSANOW, &t);
    }
}

/// Reads one line; `None` at end of input. Control characters are dropped, so a stray
/// escape sequence cannot become part of a user name.
fn read_line(tty: &mut File) -> std::io::Result<Option<String>> {
    let mut buf = [0u8; 512];
    let n = tty.read(&mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(Some(
        text.chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .trim()
            .to_string(),
    ))
}

fn help_text() -> String {
    let mut s = String::from(
        "\r\nAt the login prompt:\r\n  <user name>  log in (you are asked for your password)\r\n  status       show the terminal's state again\r\n  reboot       restart the terminal\r\n  poweroff     turn the terminal off\r\n  help         this text\r\n\r\nSettings (kernel command line):\r\n",
    );
    for (key, what) in KEYS {
        s.push_str(&format!("  {key:<24} {what}\r\n"));
    }
    s
}

/// Runs the prompt until the console fails.
fn serve(name: &str, board: &StatusBoard, sessions: &dyn Sessions) -> std::io::Result<()> {
    let mut tty = open_tty(name)?;
    if let Err(e) = configure(&tty) {
        debug!("console {name}: termios: {e}");
    }
    board.wait_ready(PROMPT_DEADLINE);
    write_locked(&mut tty, board.snapshot().banner().as_bytes())?;
    let mut failures: u32 = 0;
    let mut empty_reads = 0;
    loop {
        write_locked(&mut tty, b"login: ")?;
        let Some(user) = read_line(&mut tty)? else {
            // EOF on a hung-up line: wait instead of spinning.
            empty_reads += 1;
            std::thread::sleep(Duration::from_millis(if empty_reads > 3 {
                1000
            } else {
                100
            }));
            continue;
        };
        empty_reads = 0;
        match user.as_str() {
            "" => continue,
            "help" | "?" => tty.write_all(help_text().as_bytes())?,
            "status" => tty.write_all(board.snapshot().banner().as_bytes())?,
            "poweroff" | "shutdown" | "halt" => {
                info!("poweroff requested on {name}");
                request(PowerAction::PowerOff);
                return Ok(());
            }
            "reboot" => {
                info!("reboot requested on {name}");
                request(PowerAction::Reboot);
                return Ok(());
            }
            _ => {
                // Echo off before the prompt: whoever types on seeing it must not be
                // echoed.
                set_echo(&tty, false);
                tty.write_all(b"Password: ")?;
                let password = read_line(&mut tty);
                set_echo(&tty, true);
                let password = password?.unwrap_or_default();
                let taken = SESSION_ON.lock().ok().and_then(|mut on| match on.as_ref() {
                    Some(other) => Some(other.clone()),
                    None => {
                        *on = Some(name.to_string());
                        None
                    }
                });
                if let Some(other) = taken {
                    tty.write_all(
                        format!("A session is running on {other}; log out there first.\r\n")
                            .as_bytes(),
                    )?;
                    continue;
                }
                let outcome = sessions.run(name, &user, &password);
                drop(password);
                if let Ok(mut on) = SESSION_ON.lock() {
                    *on = None;
                }
                match outcome {
                    LoginOutcome::Ended => {
                        failures = 0;
                        info!("session of {user:?} on {name} ended");
                        write_locked(&mut tty, board.snapshot().banner().as_bytes())?;
                    }
                    LoginOutcome::Refused { reason } => {
                        failures = failures.saturating_add(1);
                        info!("login refused for {user:?} on {name}");
                        if let Some(reason) = reason {
                            tty.write_all(format!("Login failed: {reason}\r\n").as_bytes())?;
                        }
                        // A growing delay makes guessing passwords slow.
                        std::thread::sleep(failure_delay(failures));
                    }
                    LoginOutcome::Failed { reason } => {
                        info!("session of {user:?} on {name} could not run");
                        if let Some(reason) = reason {
                            tty.write_all(format!("{reason}\r\n").as_bytes())?;
                        }
                    }
                }
                // The session may have left the line in raw mode.
                if let Err(e) = configure(&tty) {
                    debug!("console {name}: termios: {e}");
                }
            }
        }
    }
}

/// 1 s after the first failure, doubling up to 30 s.
pub fn failure_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    Duration::from_secs(secs.min(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_delay_grows_and_is_capped() {
        assert_eq!(failure_delay(1), Duration::from_secs(1));
        assert_eq!(failure_delay(2), Duration::from_secs(2));
        assert_eq!(failure_delay(4), Duration::from_secs(8));
        assert_eq!(failure_delay(50), Duration::from_secs(30));
    }

    #[test]
    fn help_lists_every_setting() {
        let help = help_text();
        for (key, _) in KEYS {
            assert!(help.contains(key));
        }
    }
}
