//! virtio-input's configuration space: the driver writes `select` and `subsel`, then reads
//! `size` and the answer in the union (spec 5.8.4). Everything is computed from the device
//! kind; nothing the guest writes but the two selector bytes is kept.

use virtio_bindings::virtio_input::*;
use vm_memory::ByteValued;

use crate::input::codes::*;
use crate::input::InputKind;

/// `struct virtio_input_config`.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct InputConfigSpace(pub virtio_input_config);

// SAFETY: `virtio_input_config` is `#[repr(C)]`: three u8, a [u8; 5], then a 128-byte
// union of byte arrays and integer structs at offset 8: no padding, every byte pattern is
// valid.
unsafe impl ByteValued for InputConfigSpace {}

/// Selector values (`VIRTIO_INPUT_CFG_*`).
pub mod select {
    #![allow(missing_docs)]
    use virtio_bindings::virtio_input::*;
    pub const ID_NAME: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_ID_NAME as u8;
    pub const ID_SERIAL: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_ID_SERIAL as u8;
    pub const ID_DEVIDS: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_ID_DEVIDS as u8;
    pub const PROP_BITS: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_PROP_BITS as u8;
    pub const EV_BITS: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS as u8;
    pub const ABS_INFO: u8 = virtio_input_config_select_VIRTIO_INPUT_CFG_ABS_INFO as u8;
}

/// Our vendor id in ID_DEVIDS ("CL").
pub const VENDOR: u16 = 0x434c;

/// The codes the device of `kind` declares for event type `ev`.
pub fn event_codes(kind: InputKind, ev: u16) -> Vec<u16> {
    match (kind, ev) {
        (InputKind::Keyboard, EV_KEY) => (1..=KEY_MAX_DECLARED).collect(),
        (InputKind::Keyboard, EV_REP) => vec![REP_DELAY, REP_PERIOD],
        (InputKind::Keyboard, EV_LED) => vec![LED_NUML, LED_CAPSL, LED_SCROLLL],
        (InputKind::Tablet, EV_KEY) => vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE, BTN_SIDE, BTN_EXTRA],
        (InputKind::Tablet, EV_REL) => vec![REL_HWHEEL, REL_WHEEL],
        (InputKind::Tablet, EV_ABS) => vec![ABS_X, ABS_Y],
        _ => Vec::new(),
    }
}

/// The configuration space after the driver selected (`sel`, `subsel`).
pub fn query(kind: InputKind, name: &str, sel: u8, subsel: u8) -> InputConfigSpace {
    let mut c = InputConfigSpace::default();
    c.0.select = sel;
    c.0.subsel = subsel;
    let mut bytes = [0u8; 128];
    let size = match (sel, subsel) {
        (select::ID_NAME, 0) => put(&mut bytes, name.as_bytes()),
        (select::ID_SERIAL, 0) => put(&mut bytes, serial(kind).as_bytes()),
        (select::ID_DEVIDS, 0) => {
            let ids = virtio_input_devids {
                bustype: BUS_VIRTUAL.to_le(),
                vendor: VENDOR.to_le(),
                product: match kind {
                    InputKind::Keyboard => 1u16,
                    InputKind::Tablet => 2,
                }
                .to_le(),
                version: 1u16.to_le(),
            };
            c.0.u.ids = ids;
            c.0.size = std::mem::size_of::<virtio_input_devids>() as u8;
            return c;
        }
        // No properties: in particular not INPUT_PROP_DIRECT (a touch screen).
        (select::PROP_BITS, 0) => 0,
        (select::EV_BITS, ev) => bitmap(&mut bytes, &event_codes(kind, u16::from(ev))),
        (select::ABS_INFO, axis)
            if kind == InputKind::Tablet && (axis == ABS_X as u8 || axis == ABS_Y as u8) =>
        {
            c.0.u.abs = virtio_input_absinfo {
                min: 0,
                max: ABS_MAX_TABLET.to_le(),
                fuzz: 0,
                flat: 0,
                res: 0,
            };
            c.0.size = std::mem::size_of::<virtio_input_absinfo>() as u8;
            return c;
        }
        _ => 0,
    };
    c.0.u.bitmap = bytes;
    c.0.size = size;
    c
}

fn serial(kind: InputKind) -> &'static str {
    match kind {
        InputKind::Keyboard => "collective-keyboard",
        InputKind::Tablet => "collective-tablet",
    }
}

/// Copies at most 128 bytes of `s`; returns how many.
fn put(out: &mut [u8; 128], s: &[u8]) -> u8 {
    let n = s.len().min(out.len());
    out[..n].copy_from_slice(&s[..n]);
    n as u8
}

/// Sets bit `code` for each code; returns the bytes up to the last one set.
fn bitmap(out: &mut [u8; 128], codes: &[u16]) -> u8 {
    let mut size = 0usize;
    for &c in codes {
        let byte = usize::from(c / 8);
        if let Some(b) = out.get_mut(byte) {
            *b |= 1 << (c % 8);
            size = size.max(byte + 1);
        }
    }
    size as u8
}
