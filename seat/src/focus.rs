//! What each appliance holds down, so that losing focus never leaves it with a stuck
//! key or button: on every focus change the losing appliance gets a key-up for each,
//! then SYN_REPORT. Key-ups and repeats are forwarded only for keys the appliance saw go
//! down, so an appliance gaining focus while Ctrl and Alt are still held (after
//! Ctrl+Alt+F2) never sees a release without a press.

use crate::keys::{code::*, is_button};
use crate::InputEvent;
use std::collections::BTreeSet;

/// Keys and buttons one appliance holds.
#[derive(Clone, Debug, Default)]
pub struct Held {
    down: BTreeSet<u16>,
}

impl Held {
    /// Follows an `EV_KEY` event about to be sent; false when it must not be sent (a
    /// release or repeat of a key this appliance never saw pressed).
    pub fn forward(&mut self, key: u16, value: i32) -> bool {
        match value {
            0 => self.down.remove(&key),
            1 => {
                self.down.insert(key);
                true
            }
            _ => self.down.contains(&key),
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.down.is_empty()
    }

    /// Releases everything: (keyboard packet, pointer packet), each ending in
    /// SYN_REPORT, or empty when nothing of that kind was held.
    pub fn release_all(&mut self) -> (Vec<InputEvent>, Vec<InputEvent>) {
        let (mut keys, mut buttons) = (Vec::new(), Vec::new());
        for key in std::mem::take(&mut self.down) {
            let up = InputEvent {
                kind: EV_KEY,
                code: key,
                value: 0,
            };
            if is_button(key) {
                buttons.push(up);
            } else {
                keys.push(up);
            }
        }
        for packet in [&mut keys, &mut buttons] {
            if !packet.is_empty() {
                packet.push(syn());
            }
        }
        (keys, buttons)
    }
}

/// SYN_REPORT, the end of a packet.
pub fn syn() -> InputEvent {
    InputEvent {
        kind: EV_SYN,
        code: SYN_REPORT,
        value: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_what_is_held_and_drops_unpaired_releases() {
        let mut h = Held::default();
        assert!(h.forward(KEY_LEFTCTRL, 1));
        assert!(h.forward(KEY_A, 1));
        assert!(h.forward(KEY_A, 2));
        assert!(h.forward(KEY_A, 0));
        assert!(!h.forward(KEY_A, 0));
        assert!(!h.forward(KEY_B_NOT_HELD, 2));
        assert!(h.forward(BTN_LEFT, 1));
        let (keys, buttons) = h.release_all();
        assert_eq!(
            keys,
            vec![
                InputEvent {
                    kind: EV_KEY,
                    code: KEY_LEFTCTRL,
                    value: 0
                },
                syn()
            ]
        );
        assert_eq!(
            buttons,
            vec![
                InputEvent {
                    kind: EV_KEY,
                    code: BTN_LEFT,
                    value: 0
                },
                syn()
            ]
        );
        assert!(h.is_empty());
        assert_eq!(h.release_all(), (vec![], vec![]));
    }

    const KEY_B_NOT_HELD: u16 = 48;
}
