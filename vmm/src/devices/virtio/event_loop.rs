//! The one event loop every device worker runs: a thread waiting (epoll) on the fds its
//! [`EventHandler`] names (queue notifications, and a device's own fds such as a tap) plus
//! a stop eventfd, and handing each readable one to the handler.
//!
//! Devices differ only in their handler; waiting, `EINTR`, stopping and joining live here
//! once. A handler may stop watching one of its fds for a while ([`Watch::set`]): the
//! network card does so with its tap while the guest has no receive buffer, so a frame it
//! cannot deliver does not wake the loop over and over.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Names one of a handler's fds in [`EventHandler::ready`].
pub type Token = u64;

/// Reserved for the loop's own stop eventfd.
const STOP: Token = u64::MAX;

/// Most events taken per wait; more simply come with the next one.
const EVENTS_PER_WAIT: usize = 8;

/// What a worker thread does.
pub trait EventHandler: Send + 'static {
    /// The fds to wait on, each with the token it is reported under. Called once, by
    /// [`EventLoop::spawn`]; the fds must stay open as long as the handler lives (the
    /// handler owns them or shares their ownership).
    fn sources(&self) -> Vec<(RawFd, Token)>;
    /// Runs once before the first wait (work may already be pending: a driver can notify
    /// a queue before it sets DRIVER_OK).
    fn start(&mut self, watch: &mut Watch<'_>);
    /// The fd registered under `token` is readable.
    fn ready(&mut self, token: Token, watch: &mut Watch<'_>);
}

/// Lets a handler pause and resume waiting on one of its fds.
pub struct Watch<'a> {
    epoll: &'a Epoll,
    /// token -> (fd, currently watched)
    sources: &'a mut HashMap<Token, (RawFd, bool)>,
}

impl Watch<'_> {
    /// Waits on the fd of `token` (`on`) or ignores it until told otherwise.
    pub fn set(&mut self, token: Token, on: bool) {
        let Some((fd, watched)) = self.sources.get_mut(&token) else {
            return;
        };
        if *watched == on {
            return;
        }
        // Removed rather than given an empty event mask: epoll reports hang-ups and errors
        // whatever the mask, and a paused fd must not wake the loop at all.
        let (op, events) = if on {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        match self.epoll.ctl(op, *fd, EpollEvent::new(events, token)) {
            Ok(()) => *watched = on,
            Err(e) => log::error!("cannot change the watch on fd {fd}: {e}"),
        }
    }
}

/// A running worker thread.
pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts thread `name` running `handler` until [`EventLoop::stop`].
    pub fn spawn<H: EventHandler>(name: String, handler: H) -> io::Result<EventLoop> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let epoll = Epoll::new()?;
        let mut sources = HashMap::new();
        for (fd, token) in std::iter::once((stop_rx.as_raw_fd(), STOP)).chain(handler.sources()) {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
            sources.insert(token, (fd, true));
        }
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Keeps the stop eventfd open as long as it is registered.
                let _stop_rx = stop_rx;
                run(&name, handler, &epoll, &mut sources)
            })?;
        Ok(EventLoop {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (it finishes the event it is handling first).
    pub fn stop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop a device worker: {e}");
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("a device worker panicked");
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<H: EventHandler>(
    name: &str,
    mut handler: H,
    epoll: &Epoll,
    sources: &mut HashMap<Token, (RawFd, bool)>,
) {
    handler.start(&mut Watch { epoll, sources });
    let mut events = [EpollEvent::default(); EVENTS_PER_WAIT];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{name}: epoll_wait failed: {e}");
                return;
            }
        };
        if events[..n].iter().any(|e| e.data() == STOP) {
            return;
        }
        for e in &events[..n] {
            handler.ready(e.data(), &mut Watch { epoll, sources });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Reports each readable source; stops watching source 1 on each of its events, and
    /// watches it again on each event of source 0.
    struct Recorder {
        evts: Vec<EventFd>,
        seen: mpsc::Sender<Token>,
    }

    impl EventHandler for Recorder {
        fn sources(&self) -> Vec<(RawFd, Token)> {
            self.evts
                .iter()
                .enumerate()
                .map(|(i, e)| (e.as_raw_fd(), i as Token))
                .collect()
        }
        fn start(&mut self, _: &mut Watch<'_>) {
            let _ = self.seen.send(100);
        }
        fn ready(&mut self, token: Token, watch: &mut Watch<'_>) {
            if token == 1 {
                // Left unread on purpose: only the paused watch keeps it from firing again.
                watch.set(1, false);
            } else {
                let _ = self.evts[token as usize].read();
                watch.set(1, true);
            }
            let _ = self.seen.send(token);
        }
    }

    #[test]
    fn dispatches_pauses_and_stops() {
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let (tx, rx) = mpsc::channel();
        let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let mut lp = EventLoop::spawn("test-loop".into(), Recorder { evts, seen: tx }).unwrap();
        let next = || rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(next(), 100, "start runs first");
        kicks[1].write(1).unwrap();
        assert_eq!(next(), 1);
        kicks[0].write(1).unwrap();
        assert_eq!(
            next(),
            0,
            "a paused, still-readable fd does not starve the others"
        );
        assert_eq!(next(), 1, "watched again, the unread fd is reported again");
        lp.stop();
        assert!(
            rx.try_recv().is_err(),
            "paused again, then stopped: nothing more"
        );
    }
}
