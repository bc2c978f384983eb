//! virtio-input: configuration queries for both kinds, event delivery against
//! virtio-queue's mock split queue, the queue bound under a flood, LED status.

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::config::{select, InputConfigSpace};
use super::*;
use crate::devices::virtio::block::tests::{d, mem, used, N, W};
use crate::input::codes::*;
use crate::input::QUEUE_CAPACITY;

fn device(kind: InputKind, name: &str) -> Input {
    Input::new(InputConfig {
        kind,
        name: name.into(),
        queue: InputQueue::new(),
    })
}

/// Selects (`sel`, `subsel`) through the config space and reads (size, union bytes).
fn ask(dev: &mut Input, sel: u8, subsel: u8) -> (u8, Vec<u8>) {
    dev.write_config(0, &[sel, subsel]);
    let raw = dev.config_space();
    assert_eq!(raw.len(), std::mem::size_of::<InputConfigSpace>());
    assert_eq!((raw[0], raw[1]), (sel, subsel));
    (raw[2], raw[8..8 + raw[2] as usize].to_vec())
}

fn bits(bitmap: &[u8]) -> Vec<u16> {
    (0..bitmap.len() * 8)
        .filter(|&i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| i as u16)
        .collect()
}

#[test]
fn keyboard_config_space() {
    let mut k = device(InputKind::Keyboard, "");
    assert_eq!(k.device_type(), 18);
    assert_eq!(ask(&mut k, select::ID_NAME, 0).1, b"Collective keyboard");
    assert_eq!(ask(&mut k, select::ID_SERIAL, 0).1, b"collective-keyboard");
    let (size, ids) = ask(&mut k, select::ID_DEVIDS, 0);
    assert_eq!(size, 8);
    assert_eq!(u16::from_le_bytes([ids[0], ids[1]]), BUS_VIRTUAL);
    assert_eq!(ask(&mut k, select::PROP_BITS, 0).0, 0);
    let keys = bits(&ask(&mut k, select::EV_BITS, EV_KEY as u8).1);
    assert_eq!(keys, (1..=248).collect::<Vec<u16>>());
    assert!(
        ask(&mut k, select::EV_BITS, EV_REP as u8).0 > 0,
        "autorepeat"
    );
    assert_eq!(
        bits(&ask(&mut k, select::EV_BITS, EV_LED as u8).1),
        vec![LED_NUML, LED_CAPSL, LED_SCROLLL]
    );
    for ev in [EV_REL, EV_ABS, 0x04, 0x05, 0x12, 0x15, 0x1f] {
        assert_eq!(ask(&mut k, select::EV_BITS, ev as u8).0, 0, "type {ev}");
    }
    assert_eq!(ask(&mut k, select::ABS_INFO, 0).0, 0);
    assert_eq!(ask(&mut k, 0x77, 3).0, 0, "unknown select");
    // Writes beyond the selectors are ignored.
    k.write_config(2, &[99; 100]);
    k.write_config(u64::MAX, &[1, 2]);
    assert_eq!(k.config_space()[2], 0);
}

#[test]
fn tablet_config_space() {
    let mut t = device(InputKind::Tablet, "Seat pointer");
    assert_eq!(ask(&mut t, select::ID_NAME, 0).1, b"Seat pointer");
    assert_eq!(ask(&mut t, select::ID_NAME, 1).0, 0, "only subsel 0 names");
    assert_eq!(
        ask(&mut t, select::PROP_BITS, 0).0,
        0,
        "not INPUT_PROP_DIRECT"
    );
    assert_eq!(
        bits(&ask(&mut t, select::EV_BITS, EV_KEY as u8).1),
        vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA]
    );
    assert_eq!(
        bits(&ask(&mut t, select::EV_BITS, EV_REL as u8).1),
        vec![REL_HWHEEL, REL_WHEEL]
    );
    assert_eq!(
        bits(&ask(&mut t, select::EV_BITS, EV_ABS as u8).1),
        vec![ABS_X, ABS_Y]
    );
    assert_eq!(ask(&mut t, select::EV_BITS, EV_LED as u8).0, 0);
    for axis in [ABS_X, ABS_Y] {
        let (size, abs) = ask(&mut t, select::ABS_INFO, axis as u8);
        assert_eq!(size, 20);
        let field = |i: usize| u32::from_le_bytes(abs[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((field(0), field(1), field(2), field(3)), (0, 32767, 0, 0));
    }
    assert_eq!(ask(&mut t, select::ABS_INFO, 2).0, 0);
    let long = "x".repeat(300);
    let mut t = device(InputKind::Tablet, &long);
    assert_eq!(
        ask(&mut t, select::ID_NAME, 0).0,
        128,
        "names are cut at 128 bytes"
    );
}

fn event_at(m: &GuestMemoryMmap, addr: u64) -> InputEvent {
    let w: WireEvent = m.read_obj(GuestAddress(addr)).unwrap();
    InputEvent::from(w)
}

#[test]
fn events_are_delivered_in_order_as_buffers_come() {
    let m = mem();
    let input = InputQueue::new();
    let packet = [
        InputEvent::new(EV_KEY, 30, 1),
        InputEvent::syn(),
        InputEvent::new(EV_KEY, 30, 0),
        InputEvent::syn(),
        InputEvent::new(EV_ABS, ABS_X, 16384),
    ];
    assert!(input.send(&packet));
    assert_eq!(
        input.wake_fd().unwrap().read().unwrap(),
        1,
        "the worker is woken"
    );
    let mock = MockSplitQueue::new(&m, 16);
    // Three buffers for five events.
    mock.add_desc_chains(
        &[
            d(0x10_0000, 8, W, 0),
            d(0x10_0010, 8, W, 0),
            d(0x10_0020, 8, W, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert!(deliver_events(&input, &mut q, &m).unwrap());
    for (i, ev) in packet[..3].iter().enumerate() {
        assert_eq!(event_at(&m, 0x10_0000 + 16 * i as u64), *ev);
        assert_eq!(used(&m, mock.used_addr(), i as u64).2, 8);
    }
    assert_eq!(used(&m, mock.used_addr(), 0).0, 3);
    assert_eq!(input.pending(), 2, "the rest waits for buffers");
    // Nothing to do without buffers, and no interrupt.
    assert!(!deliver_events(&input, &mut q, &m).unwrap());

    // The guest adds buffers: the rest goes out.
    let mock2 = MockSplitQueue::new(&m, 16);
    mock2
        .add_desc_chains(&[d(0x20_0000, 8, W, 0), d(0x20_0010, 8, W, 0)], 0)
        .unwrap();
    let mut q2: Queue = mock2.create_queue().unwrap();
    assert!(deliver_events(&input, &mut q2, &m).unwrap());
    assert_eq!(event_at(&m, 0x20_0000), packet[3]);
    assert_eq!(event_at(&m, 0x20_0010), packet[4]);
    assert_eq!(event_at(&m, 0x20_0010).value, 16384);
    assert_eq!(input.pending(), 0);

    // A negative relative value survives the trip.
    assert!(input.send(&[InputEvent::new(EV_REL, REL_WHEEL, -3)]));
    let mock3 = MockSplitQueue::new(&m, 16);
    mock3.add_desc_chains(&[d(0x30_0000, 8, W, 0)], 0).unwrap();
    let mut q3: Queue = mock3.create_queue().unwrap();
    deliver_events(&input, &mut q3, &m).unwrap();
    assert_eq!(event_at(&m, 0x30_0000).value, -3);
}

#[test]
fn bad_event_buffers_fail_the_device() {
    let m = mem();
    let input = InputQueue::new();
    assert!(input.send(&[InputEvent::syn()]));
    for chain in [
        vec![d(0x10_0000, 4, W, 0)],
        vec![d(0x10_0000, 8, 0, 0)],
        vec![d(0x10_0000, 8, N, 1), d(0x10_0010, 8, W, 0)],
    ] {
        let mock = MockSplitQueue::new(&m, 16);
        mock.add_desc_chains(&chain, 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        assert!(deliver_events(&input, &mut q, &m).is_err(), "{chain:?}");
        assert_eq!(input.pending(), 1, "the event is kept");
    }
}

#[test]
fn a_flood_is_bounded() {
    let input = InputQueue::new();
    let packet = [InputEvent::new(EV_KEY, 30, 1), InputEvent::syn()];
    let mut accepted = 0;
    for _ in 0..100_000 {
        if input.send(&packet) {
            accepted += 1;
        }
        assert!(input.pending() <= QUEUE_CAPACITY);
    }
    assert_eq!(accepted, QUEUE_CAPACITY / 2);
    assert_eq!(input.pending(), QUEUE_CAPACITY);
    assert!(!input.send(&[InputEvent::syn()]), "full: refused");
    assert!(
        !input.send(&vec![InputEvent::syn(); QUEUE_CAPACITY + 1]),
        "larger than the queue: refused"
    );
    // Draining makes room again; a driver start drops what waited.
    input.with_pending(|p| p.truncate(10));
    assert!(input.send(&packet));
    input.clear();
    assert_eq!(input.pending(), 0);
}

#[test]
fn led_status_is_recorded() {
    let m = mem();
    let input = InputQueue::new();
    let seen = std::sync::Arc::new(AtomicU32::new(0xffff));
    let s = seen.clone();
    input.on_leds(move |v| s.store(v, Ordering::SeqCst));
    let put = |addr: u64, ev: InputEvent| {
        m.write_obj(WireEvent::from(ev), GuestAddress(addr))
            .unwrap()
    };
    put(0x10_0000, InputEvent::new(EV_LED, LED_CAPSL, 1));
    put(0x10_0010, InputEvent::new(EV_LED, LED_NUML, 1));
    put(0x10_0020, InputEvent::new(EV_LED, LED_NUML, 0));
    put(0x10_0030, InputEvent::new(EV_KEY, 30, 1)); // not a status event: ignored
    put(0x10_0040, InputEvent::new(EV_LED, 40, 1)); // beyond the bitmask: ignored
    let mock = MockSplitQueue::new(&m, 16);
    mock.add_desc_chains(
        &[
            d(0x10_0000, 8, 0, 0),
            d(0x10_0010, 8, 0, 0),
            d(0x10_0020, 8, 0, 0),
            d(0x10_0030, 8, 0, 0),
            d(0x10_0040, 8, 0, 0),
            d(0x10_0050, 4, 0, 0), // short: ignored, returned
            d(0x10_0060, 8, W, 0), // writable: ignored, returned
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = mock.create_queue().unwrap();
    assert!(process_status(&input, &mut q, &m).unwrap());
    assert_eq!(used(&m, mock.used_addr(), 0).0, 7, "every buffer returned");
    assert_eq!(input.leds(), 1 << LED_CAPSL);
    assert_eq!(seen.load(Ordering::SeqCst), 1 << LED_CAPSL);
}

/// Through the real transport and worker thread: events sent before the driver are
/// dropped; events sent while it runs wake the worker and land in the guest's buffers,
/// with an interrupt; LED changes come back.
#[test]
fn through_the_transport() {
    use std::sync::Arc;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use crate::bus::BusDevice;
    use crate::devices::virtio::mmio::{reg, MmioTransport};
    use crate::devices::virtio::test_utils::{bring_up, r, w, wait};
    use crate::devices::virtio::INT_VRING;

    let m = Arc::new(mem());
    let input = InputQueue::new();
    let dev = Input::new(InputConfig {
        kind: InputKind::Keyboard,
        name: String::new(),
        queue: input.clone(),
    });
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), m.clone(), irq.try_clone().unwrap()).unwrap();
    assert_eq!(r(&mut t, reg::DEVICE_ID), 18);
    // Config space through the transport: byte writes to select/subsel, then read.
    t.write(reg::CONFIG, &[select::ID_NAME]);
    t.write(reg::CONFIG + 1, &[0]);
    let mut name = [0u8; 19];
    t.read(reg::CONFIG + 8, &mut name);
    assert_eq!(&name, b"Collective keyboard");

    assert!(input.send(&[InputEvent::new(EV_KEY, 1, 1), InputEvent::syn()]));
    let mocks: Vec<_> = [0x1000u64, 0x8000]
        .iter()
        .map(|&a| MockSplitQueue::create(m.as_ref(), GuestAddress(a), 16))
        .collect();
    // Four event buffers, as a driver posts them at probe.
    mocks[0]
        .add_desc_chains(
            &(0..4)
                .map(|i| d(0x10_0000 + i * 16, 8, W, 0))
                .collect::<Vec<_>>(),
            0,
        )
        .unwrap();
    bring_up(
        &mut t,
        crate::devices::virtio::features::VERSION_1,
        16,
        &mocks,
    );

    let packet = [InputEvent::new(EV_KEY, 30, 1), InputEvent::syn()];
    assert!(input.send(&packet));
    assert!(wait(&irq), "used-buffer interrupt");
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    let start = std::time::Instant::now();
    while used(&m, mocks[0].used_addr(), 0).0 < 2 {
        assert!(start.elapsed().as_secs() < 5, "events delivered");
        std::thread::yield_now();
    }
    assert_eq!(
        used(&m, mocks[0].used_addr(), 0).0,
        2,
        "the early events were dropped"
    );
    assert_eq!(event_at(&m, 0x10_0000), packet[0]);
    assert_eq!(event_at(&m, 0x10_0010), packet[1]);
    w(&mut t, reg::INTERRUPT_ACK, INT_VRING);

    m.write_obj(
        WireEvent::from(InputEvent::new(EV_LED, LED_SCROLLL, 1)),
        GuestAddress(0x20_0000),
    )
    .unwrap();
    mocks[1]
        .add_desc_chains(&[d(0x20_0000, 8, 0, 0)], 0)
        .unwrap();
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    assert!(wait(&irq));
    assert_eq!(input.leds(), 1 << LED_SCROLLL);
    w(&mut t, reg::STATUS, 0);
}
