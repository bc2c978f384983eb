//! One terminal, several appliances: each appliance's VMM runs as its own process with
//! its serial console on a pty, and the person switches which console they see.
//!
//! The switcher shows the active console's output and sends the person's keys to it;
//! the other consoles' output is kept (the last 64 KiB each) and replayed when the person
//! switches to them, so nothing an appliance printed meanwhile is lost from view.
//!
//! Keys: `Ctrl-A n` next console, `Ctrl-A 1`..`9` console by number, `Ctrl-A ?` list,
//! `Ctrl-A q` log out (stop every appliance), `Ctrl-A x` stop the active appliance
//! (passed to its VMM), `Ctrl-A Ctrl-A` a literal Ctrl-A.
//!
//! [`Switcher`] works on any console streams (the session runs its VMs in-process, each
//! console on a pair of pipes); [`run_set`] runs each VMM as a process on a pty.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The escape key: Ctrl-A, as in the VMM's own console and in screen.
pub const ESCAPE: u8 = 0x01;
/// Output kept per console for replay.
pub const BACKLOG: usize = 64 * 1024;

/// An appliance of the set: a name and the command that runs its VMM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Member {
    /// Shown in the switcher's banner.
    pub name: String,
    /// The program (usually `vmm run ...`) and its arguments.
    pub command: Vec<String>,
}

struct Console {
    name: String,
    to_guest: Mutex<Box<dyn Write + Send>>,
    backlog: Mutex<VecDeque<u8>>,
}

type Output = Arc<Mutex<Box<dyn Write + Send>>>;

/// One appliance's console as the switcher sees it: what the guest prints, and where the
/// person's keys for it go.
pub struct ConsoleEnd {
    /// Shown in the switcher's banner.
    pub name: String,
    /// The guest's output; end of file (or an error) when the appliance has gone.
    pub from_guest: Box<dyn Read + Send>,
    /// Keys for the guest.
    pub to_guest: Box<dyn Write + Send>,
}

/// A pty pair: (master, slave).
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds into our integers; the other arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned to us and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn write_out(out: &Output, bytes: &[u8]) {
    if let Ok(mut o) = out.lock() {
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}

fn banner(consoles: &[Arc<Console>], active: usize) -> String {
    let list: Vec<String> = consoles
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}:{}", i + 1, c.name))
        .collect();
    format!(
        "\r\n[console {} of {}: {} | Ctrl-A n next, Ctrl-A 1-9 choose, Ctrl-A q log out, Ctrl-A ? list | {}]\r\n",
        active + 1,
        consoles.len(),
        consoles[active].name,
        list.join(" ")
    )
}

fn show(consoles: &[Arc<Console>], active: usize, out: &Output) {
    let mut text = banner(consoles, active).into_bytes();
    if let Ok(backlog) = consoles[active].backlog.lock() {
        text.extend(backlog.iter());
    }
    write_out(out, &text);
}

/// Routes keys: escape sequences switch consoles, everything else goes to the active one.
struct KeyRouter {
    escaped: bool,
}

enum Action {
    Send(Vec<u8>),
    Select(usize),
    Next,
    List,
    Logout,
}

impl KeyRouter {
    fn feed(&mut self, byte: u8) -> Option<Action> {
        if !self.escaped {
            if byte == ESCAPE {
                self.escaped = true;
                return None;
            }
            return Some(Action::Send(vec![byte]));
        }
        self.escaped = false;
        match byte {
            b'n' => Some(Action::Next),
            b'1'..=b'9' => Some(Action::Select(usize::from(byte - b'1'))),
            b'?' => Some(Action::List),
            b'q' | b'Q' => Some(Action::Logout),
            ESCAPE => Some(Action::Send(vec![ESCAPE])),
            // The VMM's own escapes (Ctrl-A x stops it) pass through.
            other => Some(Action::Send(vec![ESCAPE, other])),
        }
    }
}

/// Shows one of several consoles and routes the person's keys to it. Threads copy each
/// guest's output (to the screen when active, always to its backlog) and the keys.
pub struct Switcher {
    consoles: Arc<Vec<Arc<Console>>>,
    out: Output,
    drained: Vec<Mutex<Option<std::sync::mpsc::Receiver<()>>>>,
}

impl Switcher {
    /// Starts showing `consoles[0]` on `output` and routing `input`. `on_logout` runs when
    /// the person types the logout key (Ctrl-A q).
    pub fn start(
        consoles: Vec<ConsoleEnd>,
        input: impl Read + Send + 'static,
        output: Box<dyn Write + Send>,
        on_logout: Box<dyn Fn() + Send>,
    ) -> io::Result<Switcher> {
        if consoles.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an appliance set needs at least one member",
            ));
        }
        let out: Output = Arc::new(Mutex::new(output));
        let active = Arc::new(AtomicUsize::new(0));
        let mut shared = Vec::new();
        let mut readers = Vec::new();
        for end in consoles {
            shared.push(Arc::new(Console {
                name: end.name,
                to_guest: Mutex::new(end.to_guest),
                backlog: Mutex::new(VecDeque::new()),
            }));
            readers.push(end.from_guest);
        }
        let consoles = Arc::new(shared);
        show(&consoles, 0, &out);

        let mut drained = Vec::new();
        for (index, mut reader) in readers.into_iter().enumerate() {
            let (console, out, active) = (consoles[index].clone(), out.clone(), active.clone());
            let (done, done_rx) = std::sync::mpsc::channel::<()>();
            drained.push(Mutex::new(Some(done_rx)));
            std::thread::Builder::new()
                .name(format!("console-out-{index}"))
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    // EOF or EIO: the appliance's console closed (its VM ended).
                    while let Ok(n) = reader.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if let Ok(mut backlog) = console.backlog.lock() {
                            backlog.extend(&buf[..n]);
                            let excess = backlog.len().saturating_sub(BACKLOG);
                            backlog.drain(..excess);
                        }
                        if active.load(Ordering::SeqCst) == index {
                            write_out(&out, &buf[..n]);
                        }
                    }
                    let _ = done.send(());
                })?;
        }

        let (keys_consoles, keys_out) = (consoles.clone(), out.clone());
        let mut input = input;
        std::thread::Builder::new()
            .name("console-keys".into())
            .spawn(move || {
                let consoles = keys_consoles;
                let mut router = KeyRouter { escaped: false };
                let mut buf = [0u8; 256];
                while let Ok(n) = input.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    for &byte in &buf[..n] {
                        let current = active.load(Ordering::SeqCst);
                        match router.feed(byte) {
                            None => {}
                            Some(Action::Send(bytes)) => {
                                if let Ok(mut to) = consoles[current].to_guest.lock() {
                                    let _ = to.write_all(&bytes);
                                    let _ = to.flush();
                                }
                            }
                            Some(Action::Next) => {
                                let next = (current + 1) % consoles.len();
                                active.store(next, Ordering::SeqCst);
                                show(&consoles, next, &keys_out);
                            }
                            Some(Action::Select(i)) if i < consoles.len() => {
                                active.store(i, Ordering::SeqCst);
                                show(&consoles, i, &keys_out);
                            }
                            Some(Action::Select(_)) => {}
                            Some(Action::List) => {
                                write_out(&keys_out, banner(&consoles, current).as_bytes())
                            }
                            Some(Action::Logout) => {
                                write_out(&keys_out, b"\r\n[logging out]\r\n");
                                on_logout();
                            }
                        }
                    }
                }
            })?;
        Ok(Switcher {
            consoles,
            out,
            drained,
        })
    }

    /// Writes a line of the switcher's own (between consoles' output).
    pub fn say(&self, text: &str) {
        write_out(&self.out, format!("\r\n[{text}]\r\n").as_bytes());
    }

    /// Says that console `index` ended, after its last words reached the screen (a
    /// process it left behind may hold the console open: this waits at most 2 s).
    pub fn ended(&self, index: usize, how: &str) {
        if let Some(slot) = self.drained.get(index) {
            if let Some(rx) = slot.lock().ok().and_then(|mut s| s.take()) {
                let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
            }
        }
        if let Some(c) = self.consoles.get(index) {
            self.say(&format!("{} ended: {how}", c.name));
        }
    }
}

/// Runs every member, shows the first one's console on `output`, routes `input`, and
/// returns each member's exit status once all have exited. The logout key stops them all.
pub fn run_set(
    members: &[Member],
    input: impl Read + Send + 'static,
    output: Box<dyn Write + Send>,
) -> io::Result<Vec<(String, ExitStatus)>> {
    if members.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an appliance set needs at least one member",
        ));
    }
    let mut ends = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    for member in members {
        let (program, args) = member.command.split_first().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: empty command", member.name),
            )
        })?;
        let (master, slave) = open_pty()?;
        let slave = File::from(slave);
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{}: starting {program}: {e}", member.name),
                )
            })?;
        children.push(child);
        let master = File::from(master);
        ends.push(ConsoleEnd {
            name: member.name.clone(),
            from_guest: Box::new(master.try_clone()?),
            to_guest: Box::new(master),
        });
    }
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let switcher = Switcher::start(
        ends,
        input,
        output,
        Box::new(move || {
            for pid in &pids {
                // SAFETY: kill(2) on our own children's pids; they are not reaped before
                // every wait below has returned, so the pids cannot be reused meanwhile.
                unsafe { libc::kill(*pid, libc::SIGTERM) };
            }
        }),
    )?;
    let mut statuses = Vec::new();
    for (index, (member, mut child)) in members.iter().zip(children).enumerate() {
        let status = child.wait()?;
        switcher.ended(index, &status.to_string());
        statuses.push((member.name.clone(), status));
    }
    Ok(statuses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn wait_for(&self, needle: &str) -> bool {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if self.text().contains(needle) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }
    }

    fn member(name: &str) -> Member {
        let script = format!("echo {name}-ready; read line; echo {name}-got-$line");
        Member {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script],
        }
    }

    #[test]
    fn keys_go_to_the_active_console_and_switching_replays_the_other() {
        let (mut keys_in, keys_out) = std::os::unix::net::UnixStream::pair().unwrap();
        let output = Shared::default();
        let view = output.clone();
        let members = vec![member("desk"), member("router")];
        let runner =
            std::thread::spawn(move || run_set(&members, keys_out, Box::new(output)).unwrap());

        assert!(view.wait_for("desk-ready"), "{}", view.text());
        keys_in.write_all(b"one\n").unwrap();
        assert!(view.wait_for("desk-got-one"), "{}", view.text());
        // router printed while hidden; switching shows it.
        assert!(
            !view.text().contains("router-ready"),
            "hidden console leaked: {}",
            view.text()
        );
        keys_in.write_all(&[ESCAPE, b'n']).unwrap();
        assert!(view.wait_for("console 2 of 2: router"), "{}", view.text());
        assert!(
            view.wait_for("router-ready"),
            "backlog not replayed: {}",
            view.text()
        );
        keys_in.write_all(b"two\n").unwrap();
        assert!(view.wait_for("router-got-two"), "{}", view.text());

        let statuses = runner.join().unwrap();
        assert_eq!(statuses.len(), 2);
        assert!(statuses.iter().all(|(_, s)| s.success()), "{statuses:?}");
        assert!(
            !view.text().contains("desk-got-two"),
            "keys reached the hidden console: {}",
            view.text()
        );
    }

    #[test]
    fn escape_sequences_are_decoded() {
        let mut r = KeyRouter { escaped: false };
        assert!(matches!(r.feed(b'a'), Some(Action::Send(v)) if v == b"a"));
        assert!(r.feed(ESCAPE).is_none());
        assert!(matches!(r.feed(b'3'), Some(Action::Select(2))));
        assert!(r.feed(ESCAPE).is_none());
        assert!(matches!(r.feed(ESCAPE), Some(Action::Send(v)) if v == [ESCAPE]));
        assert!(r.feed(ESCAPE).is_none());
        assert!(matches!(r.feed(b'x'), Some(Action::Send(v)) if v == [ESCAPE, b'x']));
        assert!(r.feed(ESCAPE).is_none());
        assert!(matches!(r.feed(b'n'), Some(Action::Next)));
        assert!(r.feed(ESCAPE).is_none());
        assert!(matches!(r.feed(b'q'), Some(Action::Logout)));
    }

    #[test]
    fn an_empty_set_is_refused() {
        assert!(run_set(&[], io::empty(), Box::new(io::sink())).is_err());
    }
}
