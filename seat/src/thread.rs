//! The seat thread's loop: one `poll` over the wake-up eventfd (VM threads and the
//! session), the DRM fd (page-flip events), every input device and the hot-plug watch.
//! The timeout is infinite unless a frame is waiting for its timer (fbdev, memory) or a
//! new input node is being retried, so a seat with nothing to do never wakes.

use crate::core::Core;
use crate::input::Devices;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(crate) fn run(mut core: Core, mut devices: Option<Devices>) {
    let mut events = Vec::new();
    let wake_fd = core.shared.wake_fd();
    loop {
        let (shutdown, injected) = core.sync();
        if shutdown {
            break;
        }
        for ev in injected.into_iter().chain(events.drain(..)) {
            core.input(ev);
        }
        if let (Some(leds), Some(d)) = (core.leds.take(), devices.as_mut()) {
            d.set_leds(leds);
        }
        core.frame();

        let output_fd = core.output().poll_fd();
        let mut fds = vec![wake_fd];
        fds.extend(output_fd);
        if let Some(d) = &devices {
            fds.extend(d.fds());
        }
        let mut pollfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout = [
            core.next_frame_in(),
            devices.as_ref().and_then(|d| d.retry_in()),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout_ms = match timeout {
            None => -1,
            // Round up: waking a little early would only poll again.
            Some(t) => t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32,
        };
        // SAFETY: pollfds is a valid array of pollfd of the given length.
        let n = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
        core.shared.stats.wakeups.fetch_add(1, Ordering::Relaxed);
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("seat: poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let ready: Vec<i32> = pollfds
            .iter()
            .filter(|p| p.revents != 0)
            .map(|p| p.fd)
            .collect();
        if ready.contains(&wake_fd) {
            core.shared.drain_wake();
        }
        if let Some(fd) = output_fd {
            if ready.contains(&fd) {
                if let Err(e) = core.output().dispatch() {
                    log::error!("seat: {e}");
                }
            }
        }
        if let Some(d) = devices.as_mut() {
            d.read(&ready, &mut events);
        }
    }
    log::info!("seat: shutting down: blanking the screen and releasing devices");
    core.finish();
    if let Some(d) = devices.as_mut() {
        d.release();
    }
}
