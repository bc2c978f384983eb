//! virtio-net over a tap device (or any [`PacketIo`]): one receive and one transmit
//! queue, no offloads, a fixed MAC address.
//!
//! Frames keep their 12-byte virtio-net header end to end (the tap is opened with
//! `IFF_VNET_HDR`), so the device copies bytes without parsing them. Receive is driven by
//! both the tap (a frame arrived) and the receive queue (the guest added buffers): a frame
//! that finds no buffer waits, and the tap is not polled until buffers come.

pub mod tap;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{virtio_net_config, virtio_net_hdr_v1, VIRTIO_NET_F_MAC};
use virtio_queue::{Queue, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

pub use tap::{PacketIo, Tap, VNET_HDR_LEN};

use super::event_loop::{EventHandler, EventLoop, Token, Watch};
use super::worker::{next_chain, DeviceError};
use super::{features, ActivateContext, ActivateError, Interrupt, VirtioDevice};
use crate::vstate::memory::GuestMemoryMmap;

/// Feature: the device has a MAC address in its config space.
pub const F_MAC: u64 = 1 << VIRTIO_NET_F_MAC;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame plus header we move (64 KiB frames, as a tap may deliver with GSO off).
pub const MAX_FRAME: usize = 65_562;

const RX: usize = 0;
const TX: usize = 1;

/// Where `num_buffers` sits in the header that starts every frame.
const NUM_BUFFERS_AT: usize = std::mem::offset_of!(virtio_net_hdr_v1, num_buffers);
const _: () = assert!(VNET_HDR_LEN == std::mem::size_of::<virtio_net_hdr_v1>());

/// The card's configuration space (`struct virtio_net_config`).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct NetConfig(virtio_net_config);

// SAFETY: `virtio_net_config` is `#[repr(C, packed)]` with only integer fields and arrays
// of them, so it has no padding and every byte pattern is valid.
unsafe impl ByteValued for NetConfig {}

/// The network card.
pub struct Net {
    io: Arc<dyn PacketIo>,
    mac: [u8; 6],
    worker: Option<EventLoop>,
}

impl Net {
    /// A card sending and receiving through `io`, with address `mac`.
    pub fn new(io: Arc<dyn PacketIo>, mac: [u8; 6]) -> Self {
        Self {
            io,
            mac,
            worker: None,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX | F_MAC
    }
    fn config_space(&self) -> Vec<u8> {
        // Only `mac` is meaningful: no feature that gives the other fields a meaning
        // (STATUS, MQ, MTU, ...) is offered.
        let config = NetConfig(virtio_net_config {
            mac: self.mac,
            ..Default::default()
        });
        config.as_slice().to_vec()
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let worker = NetWorker::new(self.io.clone(), ctx)?;
        self.reset();
        self.worker = Some(EventLoop::spawn("net".into(), worker)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

/// The queues' processing, separate from the thread so tests can drive it.
pub struct NetQueues {
    io: Arc<dyn PacketIo>,
    /// A received frame waiting for a guest buffer.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
}

impl NetQueues {
    /// State for a card using `io`.
    pub fn new(io: Arc<dyn PacketIo>) -> Self {
        Self {
            io,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
        }
    }

    /// Whether a received frame is waiting for a guest buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends every frame the guest queued; returns whether to interrupt it.
    pub fn process_tx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        loop {
            q.disable_notification(mem)?;
            while let Some(chain) = next_chain(q, mem, MAX_FRAME as u64)? {
                if !chain.writable.is_empty() {
                    return Err(DeviceError::Request(
                        "virtio-net transmit buffer is device-writable",
                    ));
                }
                let n = chain.read_at(mem, 0, &mut self.tx_buf);
                if n < VNET_HDR_LEN {
                    return Err(DeviceError::Request(
                        "virtio-net frame shorter than its header",
                    ));
                }
                if let Err(e) = self.io.send(&self.tx_buf[..n]) {
                    // Like a cable: a frame the host side cannot take is dropped.
                    log::debug!("virtio-net: dropped a transmitted frame: {e}");
                }
                q.add_used(mem, chain.head, 0)?;
                used = true;
            }
            if !q.enable_notification(mem)? {
                break;
            }
        }
        Ok(used && q.needs_notification(mem)?)
    }

    /// Moves received frames into guest buffers until either runs out; returns whether to
    /// interrupt the guest.
    pub fn process_rx(
        &mut self,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        loop {
            let len = match self.pending.take() {
                Some(n) => n,
                None => match self.io.recv(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("virtio-net: receive failed: {e}");
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                continue;
            }
            let Some(chain) = next_chain(q, mem, MAX_FRAME as u64 * 2)? else {
                // No buffer: keep the frame until the guest adds some.
                self.pending = Some(len);
                break;
            };
            if !chain.readable.is_empty() {
                return Err(DeviceError::Request(
                    "virtio-net receive buffer is device-readable",
                ));
            }
            // num_buffers = 1 (we do not offer mergeable buffers).
            self.rx_buf[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&1u16.to_le_bytes());
            let written = chain.write_at(mem, 0, &self.rx_buf[..len]);
            if written < len {
                log::debug!("virtio-net: {len}-byte frame truncated to a {written}-byte buffer");
            }
            q.add_used(mem, chain.head, written as u32)?;
            used = true;
        }
        Ok(used && q.needs_notification(mem)?)
    }
}

/// Event tokens of the network card's worker.
const RX_QUEUE: Token = RX as Token;
const TX_QUEUE: Token = TX as Token;
const TAP: Token = 2;

/// The card's worker: the two queue notifications and the tap on one [`EventLoop`].
struct NetWorker {
    nq: NetQueues,
    rxq: Queue,
    txq: Queue,
    evts: [EventFd; 2],
    tap_fd: RawFd,
    mem: Arc<GuestMemoryMmap>,
    irq: Arc<Interrupt>,
    /// Set on the first error: nothing more is served until the driver resets the card.
    failed: bool,
}

impl NetWorker {
    fn new(io: Arc<dyn PacketIo>, ctx: ActivateContext) -> Result<NetWorker, ActivateError> {
        let got = ctx.queues.len();
        let [rxq, txq]: [Queue; 2] = ctx
            .queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { need: 2, got })?;
        let got = ctx.queue_evts.len();
        let evts: [EventFd; 2] = ctx
            .queue_evts
            .try_into()
            .map_err(|_| ActivateError::QueueCount { need: 2, got })?;
        Ok(NetWorker {
            tap_fd: io.raw_fd(),
            nq: NetQueues::new(io),
            rxq,
            txq,
            evts,
            mem: ctx.mem,
            irq: ctx.interrupt,
            failed: false,
        })
    }

    fn outcome(&mut self, r: Result<bool, DeviceError>) {
        match r {
            Ok(true) => self.irq.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                log::error!("virtio-net: {e}; device needs reset");
                self.failed = true;
                self.irq.fail();
            }
        }
    }

    fn transmit(&mut self) {
        if !self.failed {
            let r = self.nq.process_tx(&mut self.txq, &self.mem);
            self.outcome(r);
        }
    }

    fn receive(&mut self) {
        if !self.failed {
            let r = self.nq.process_rx(&mut self.rxq, &self.mem);
            self.outcome(r);
        }
    }

    /// Watches the tap only while what it gives has somewhere to go.
    fn watch_tap(&self, watch: &mut Watch<'_>) {
        watch.set(TAP, !self.failed && !self.nq.has_pending());
    }
}

impl EventHandler for NetWorker {
    fn sources(&self) -> Vec<(RawFd, Token)> {
        vec![
            (self.evts[RX].as_raw_fd(), RX_QUEUE),
            (self.evts[TX].as_raw_fd(), TX_QUEUE),
            (self.tap_fd, TAP),
        ]
    }

    fn start(&mut self, watch: &mut Watch<'_>) {
        self.transmit();
        self.receive();
        self.watch_tap(watch);
    }

    fn ready(&mut self, token: Token, watch: &mut Watch<'_>) {
        match token {
            RX_QUEUE => {
                let _ = self.evts[RX].read();
                self.receive();
            }
            TX_QUEUE => {
                let _ = self.evts[TX].read();
                self.transmit();
            }
            TAP => self.receive(),
            _ => {}
        }
        self.watch_tap(watch);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::tests::{d, mem, used, N, W};

    fn pair() -> (Arc<UnixDatagram>, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Arc::new(a), b)
    }

    #[test]
    fn transmit_reaches_the_host() {
        let m = mem();
        let (dev_side, host) = pair();
        let mut nq = NetQueues::new(dev_side);
        let mock = MockSplitQueue::new(&m, 16);
        m.write_slice(&[0u8; 12], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"ethernet-frame", GuestAddress(0x20_0000))
            .unwrap();
        mock.add_desc_chains(&[d(0x10_0000, 12, N, 1), d(0x20_0000, 14, 0, 0)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(nq.process_tx(&mut q, &m).unwrap());
        let mut b = [0u8; 64];
        let n = host.recv(&mut b).unwrap();
        assert_eq!(&b[12..n], b"ethernet-frame");
        assert_eq!(used(&m, mock.used_addr(), 0), (1, 0, 0));
    }

    #[test]
    fn receive_waits_for_buffers() {
        let m = mem();
        let (dev_side, host) = pair();
        let mut nq = NetQueues::new(dev_side);
        let mock = MockSplitQueue::new(&m, 16);
        let mut q: Queue = mock.create_queue().unwrap();
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(b"hello-guest");
        host.send(&frame).unwrap();
        // No buffers yet: the frame is kept.
        assert!(!nq.process_rx(&mut q, &m).unwrap());
        assert!(nq.has_pending());
        mock.add_desc_chains(&[d(0x30_0000, 1526, W, 0)], 0)
            .unwrap();
        assert!(nq.process_rx(&mut q, &m).unwrap());
        assert!(!nq.has_pending());
        assert_eq!(used(&m, mock.used_addr(), 0), (1, 0, 23));
        let mut b = [0u8; 23];
        m.read_slice(&mut b, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(&b[12..], b"hello-guest");
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
    }

    #[test]
    fn malformed_chains_fail() {
        let m = mem();
        let (dev_side, host) = pair();
        let mut nq = NetQueues::new(dev_side);
        // Transmit chain that is device-writable.
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x10_0000, 64, W, 0)], 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(nq.process_tx(&mut q, &m).is_err());
        // Transmit chain that loops.
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x10_0000, 64, N, 1), d(0x10_0000, 64, N, 0)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(nq.process_tx(&mut q, &m).is_err());
        // Receive buffer outside guest memory.
        host.send(&[0u8; 20]).unwrap();
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&[d(0x7000_0000, 1526, W, 0)], 0)
            .unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(nq.process_rx(&mut q, &m).is_err());
    }

    fn wait(evt: &EventFd) -> bool {
        let mut p = libc::pollfd {
            fd: evt.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, live for the call.
        let n = unsafe { libc::poll(&mut p, 1, 5000) };
        let _ = evt.read();
        n == 1
    }

    /// CPU time (clock ticks, user + system) of this process's "net" worker thread.
    fn net_thread_cpu_ticks() -> u64 {
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim_end() != "net" {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after "(comm)": state is field 3, utime 14 and stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
        panic!("no net worker thread");
    }

    /// A socket pair end that counts receive attempts.
    struct CountingIo {
        inner: UnixDatagram,
        recvs: std::sync::atomic::AtomicUsize,
    }

    impl PacketIo for CountingIo {
        fn send(&self, frame: &[u8]) -> io::Result<usize> {
            self.inner.send(frame)
        }
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            self.recvs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.recv(buf)
        }
        fn raw_fd(&self) -> RawFd {
            self.inner.as_raw_fd()
        }
    }

    /// The whole card on its event loop: a frame that arrives before any receive buffer
    /// waits, and the tap is left alone meanwhile; buffers added later (and notified)
    /// receive it; transmit works meanwhile.
    #[test]
    fn worker_delivers_a_waiting_frame_once_buffers_come() {
        use std::sync::atomic::Ordering;
        use vmm_sys_util::eventfd::EFD_NONBLOCK;

        let m = Arc::new(mem());
        let (dev_side, host) = UnixDatagram::pair().unwrap();
        dev_side.set_nonblocking(true).unwrap();
        let dev_side = Arc::new(CountingIo {
            inner: dev_side,
            recvs: Default::default(),
        });
        let rx_mock = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1_0000), 16);
        let tx_mock = MockSplitQueue::create(m.as_ref(), GuestAddress(0x2_0000), 16);
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let irq_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(Interrupt::new(irq_evt.try_clone().unwrap()));
        // The frame is there before the card starts: its first receive pass reads it.
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(b"early-frame");
        host.send(&frame).unwrap();
        let mut card = Net::new(dev_side.clone(), [2, 0, 0, 0, 0, 1]);
        card.activate(ActivateContext {
            mem: m.clone(),
            queues: vec![
                rx_mock.create_queue().unwrap(),
                tx_mock.create_queue().unwrap(),
            ],
            queue_evts: evts,
            interrupt: irq.clone(),
            acked_features: features::VERSION_1,
        })
        .unwrap();

        // Transmit still works while the frame waits.
        m.write_slice(&[0u8; 12], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(b"out", GuestAddress(0x10_0000 + 12)).unwrap();
        tx_mock
            .add_desc_chains(&[d(0x10_0000, 15, 0, 0)], 0)
            .unwrap();
        kicks[TX].write(1).unwrap();
        assert!(wait(&irq_evt), "transmit interrupt");
        let mut b = [0u8; 64];
        assert_eq!(host.recv(&mut b).unwrap(), 15);
        assert_eq!(
            used(&m, rx_mock.used_addr(), 0).0,
            0,
            "nothing received yet"
        );
        // The worker reads the first frame on its own schedule (its first receive pass may
        // come after the transmit): wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while dev_side.recvs.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A second frame makes the tap readable, but the card has nowhere to put it: its
        // worker must sleep, not spin on the tap.
        assert_eq!(
            dev_side.recvs.load(Ordering::SeqCst),
            1,
            "the first frame, read"
        );
        host.send(&frame).unwrap();
        let before = net_thread_cpu_ticks();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let spent = net_thread_cpu_ticks() - before;
        assert!(spent <= 5, "the worker spun ({spent} ticks in 300 ms)");
        assert_eq!(
            dev_side.recvs.load(Ordering::SeqCst),
            1,
            "the second frame stays in the tap"
        );

        rx_mock
            .add_desc_chains(&[d(0x30_0000, 1526, W, 0)], 0)
            .unwrap();
        kicks[RX].write(1).unwrap();
        assert!(wait(&irq_evt), "receive interrupt");
        assert_eq!(used(&m, rx_mock.used_addr(), 0), (1, 0, 23));
        let mut got = [0u8; 23];
        m.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], b"early-frame");
        assert!(!irq.is_failed());
        card.reset();
    }
}
