//! Linux key codes the seat cares about, the modifier state, the seat's own chords
//! (the secure attention key Ctrl+Alt+Delete and the switch keys Ctrl+Alt+F1..F12),
//! and a US keymap for the console surface and the lock screen's password.

/// Event types and codes from `<linux/input-event-codes.h>`.
pub mod code {
    pub const EV_SYN: u16 = 0x00;
    pub const EV_KEY: u16 = 0x01;
    pub const EV_REL: u16 = 0x02;
    pub const EV_ABS: u16 = 0x03;
    pub const EV_LED: u16 = 0x11;
    pub const SYN_REPORT: u16 = 0;
    pub const SYN_DROPPED: u16 = 3;
    pub const REL_X: u16 = 0x00;
    pub const REL_Y: u16 = 0x01;
    pub const REL_HWHEEL: u16 = 0x06;
    pub const REL_WHEEL: u16 = 0x08;
    pub const ABS_X: u16 = 0x00;
    pub const ABS_Y: u16 = 0x01;
    pub const BTN_MISC: u16 = 0x100;
    pub const BTN_LEFT: u16 = 0x110;
    pub const BTN_RIGHT: u16 = 0x111;
    pub const BTN_MIDDLE: u16 = 0x112;
    pub const BTN_TASK: u16 = 0x117;
    pub const BTN_TOUCH: u16 = 0x14a;
    pub const KEY_ESC: u16 = 1;
    pub const KEY_1: u16 = 2;
    pub const KEY_9: u16 = 10;
    pub const KEY_0: u16 = 11;
    pub const KEY_BACKSPACE: u16 = 14;
    pub const KEY_TAB: u16 = 15;
    pub const KEY_Q: u16 = 16;
    pub const KEY_O: u16 = 24;
    pub const KEY_ENTER: u16 = 28;
    pub const KEY_LEFTCTRL: u16 = 29;
    pub const KEY_A: u16 = 30;
    pub const KEY_L: u16 = 38;
    pub const KEY_LEFTSHIFT: u16 = 42;
    pub const KEY_Z: u16 = 44;
    pub const KEY_C: u16 = 46;
    pub const KEY_N: u16 = 49;
    pub const KEY_RIGHTSHIFT: u16 = 54;
    pub const KEY_LEFTALT: u16 = 56;
    pub const KEY_SPACE: u16 = 57;
    pub const KEY_CAPSLOCK: u16 = 58;
    pub const KEY_F1: u16 = 59;
    pub const KEY_F10: u16 = 68;
    pub const KEY_KPDOT: u16 = 83;
    pub const KEY_F11: u16 = 87;
    pub const KEY_F12: u16 = 88;
    pub const KEY_KPENTER: u16 = 96;
    pub const KEY_RIGHTCTRL: u16 = 97;
    pub const KEY_RIGHTALT: u16 = 100;
    pub const KEY_HOME: u16 = 102;
    pub const KEY_UP: u16 = 103;
    pub const KEY_PAGEUP: u16 = 104;
    pub const KEY_LEFT: u16 = 105;
    pub const KEY_RIGHT: u16 = 106;
    pub const KEY_END: u16 = 107;
    pub const KEY_DOWN: u16 = 108;
    pub const KEY_PAGEDOWN: u16 = 109;
    pub const KEY_DELETE: u16 = 111;
    pub const KEY_Y: u16 = 21;
    pub const LED_MAX: u16 = 0x0f;
}

use code::*;

/// Whether an `EV_KEY` code is a pointer button rather than a keyboard key.
pub fn is_button(key: u16) -> bool {
    (BTN_MISC..0x160).contains(&key)
}

/// Which modifier keys are physically held, over all keyboards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    left_ctrl: bool,
    right_ctrl: bool,
    left_alt: bool,
    right_alt: bool,
    left_shift: bool,
    right_shift: bool,
    /// Caps Lock as the seat's own screens see it (toggled on each press).
    pub caps_lock: bool,
}

impl Modifiers {
    /// Follows one key event (value 1 down, 0 up, 2 repeat).
    pub fn update(&mut self, key: u16, value: i32) {
        let down = value != 0;
        match key {
            KEY_LEFTCTRL => self.left_ctrl = down,
            KEY_RIGHTCTRL => self.right_ctrl = down,
            KEY_LEFTALT => self.left_alt = down,
            KEY_RIGHTALT => self.right_alt = down,
            KEY_LEFTSHIFT => self.left_shift = down,
            KEY_RIGHTSHIFT => self.right_shift = down,
            KEY_CAPSLOCK if value == 1 => self.caps_lock = !self.caps_lock,
            _ => {}
        }
    }

    /// Either Ctrl.
    pub fn ctrl(&self) -> bool {
        self.left_ctrl || self.right_ctrl
    }

    /// Either Alt.
    pub fn alt(&self) -> bool {
        self.left_alt || self.right_alt
    }

    /// Either Shift.
    pub fn shift(&self) -> bool {
        self.left_shift || self.right_shift
    }
}

/// A chord that belongs to the seat, never to an appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chord {
    /// Ctrl+Alt+Delete (or the keypad's Delete): the secure attention key.
    SecureAttention,
    /// Ctrl+Alt+F1..F12: appliance 0..11.
    Switch(usize),
}

/// The seat's chord that a key press completes, given the modifiers held before it.
pub fn chord(mods: &Modifiers, key: u16, value: i32) -> Option<Chord> {
    if value != 1 || !mods.ctrl() || !mods.alt() {
        return None;
    }
    match key {
        KEY_DELETE | KEY_KPDOT => Some(Chord::SecureAttention),
        KEY_F1..=KEY_F10 => Some(Chord::Switch(usize::from(key - KEY_F1))),
        KEY_F11 => Some(Chord::Switch(10)),
        KEY_F12 => Some(Chord::Switch(11)),
        _ => None,
    }
}

/// US layout: (unshifted, shifted) characters of the printable keys.
fn us_chars(key: u16) -> Option<(char, char)> {
    const ROW_NUM: &[(char, char)] = &[
        ('1', '!'),
        ('2', '@'),
        ('3', '#'),
        ('4', '$'),
        ('5', '%'),
        ('6', '^'),
        ('7', '&'),
        ('8', '*'),
        ('9', '('),
        ('0', ')'),
        ('-', '_'),
        ('=', '+'),
    ];
    const TOP: &str = "qwertyuiop";
    const HOME: &str = "asdfghjkl";
    const BOTTOM: &str = "zxcvbnm";
    let letter = |s: &str, i: u16| {
        let c = s.chars().nth(usize::from(i))?;
        Some((c, c.to_ascii_uppercase()))
    };
    match key {
        2..=13 => ROW_NUM.get(usize::from(key - 2)).copied(),
        16..=25 => letter(TOP, key - 16),
        26 => Some(('[', '{')),
        27 => Some((']', '}')),
        30..=38 => letter(HOME, key - 30),
        39 => Some((';', ':')),
        40 => Some(('\'', '"')),
        41 => Some(('`', '~')),
        43 => Some(('\\', '|')),
        44..=50 => letter(BOTTOM, key - 44),
        51 => Some((',', '<')),
        52 => Some(('.', '>')),
        53 => Some(('/', '?')),
        57 => Some((' ', ' ')),
        _ => None,
    }
}

/// The character a key types on a US keyboard (Caps Lock shifts letters only).
pub fn key_char(key: u16, mods: &Modifiers) -> Option<char> {
    let (plain, shifted) = us_chars(key)?;
    let shift = if plain.is_ascii_alphabetic() {
        mods.shift() != mods.caps_lock
    } else {
        mods.shift()
    };
    Some(if shift { shifted } else { plain })
}

/// The bytes a key press sends to a serial console, as a terminal would: characters,
/// Ctrl+letter as control codes, Enter `\r`, Backspace DEL (0x7f), Tab, Esc, arrows as
/// `ESC [ A..D`; Alt prefixes ESC. `None` for keys that send nothing.
pub fn console_bytes(key: u16, mods: &Modifiers) -> Option<Vec<u8>> {
    let mut out = match key {
        KEY_ENTER | KEY_KPENTER => vec![b'\r'],
        KEY_BACKSPACE => vec![0x7f],
        KEY_TAB => vec![b'\t'],
        KEY_ESC => vec![0x1b],
        KEY_UP => b"\x1b[A".to_vec(),
        KEY_DOWN => b"\x1b[B".to_vec(),
        KEY_RIGHT => b"\x1b[C".to_vec(),
        KEY_LEFT => b"\x1b[D".to_vec(),
        KEY_HOME => b"\x1b[H".to_vec(),
        KEY_END => b"\x1b[F".to_vec(),
        KEY_DELETE => b"\x1b[3~".to_vec(),
        KEY_PAGEUP => b"\x1b[5~".to_vec(),
        KEY_PAGEDOWN => b"\x1b[6~".to_vec(),
        _ => {
            let c = key_char(key, mods)?;
            if mods.ctrl() {
                match c.to_ascii_lowercase() {
                    l @ 'a'..='z' => vec![l as u8 - b'a' + 1],
                    ' ' | '@' | '2' => vec![0],
                    '[' => vec![0x1b],
                    '\\' => vec![0x1c],
                    ']' => vec![0x1d],
                    _ => return None,
                }
            } else {
                c.to_string().into_bytes()
            }
        }
    };
    if mods.alt() {
        out.insert(0, 0x1b);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(keys: &[u16]) -> Modifiers {
        let mut m = Modifiers::default();
        for &k in keys {
            m.update(k, 1);
        }
        m
    }

    #[test]
    fn us_keymap() {
        let none = Modifiers::default();
        let shift = held(&[KEY_LEFTSHIFT]);
        assert_eq!(key_char(KEY_A, &none), Some('a'));
        assert_eq!(key_char(KEY_A, &shift), Some('A'));
        assert_eq!(key_char(KEY_1, &shift), Some('!'));
        assert_eq!(key_char(KEY_0, &none), Some('0'));
        assert_eq!(key_char(53, &shift), Some('?'));
        assert_eq!(key_char(KEY_Q, &none), Some('q'));
        assert_eq!(key_char(KEY_Z, &none), Some('z'));
        assert_eq!(key_char(KEY_L, &none), Some('l'));
        assert_eq!(key_char(KEY_F1, &none), None);
        let caps = held(&[KEY_CAPSLOCK]);
        assert_eq!(key_char(KEY_A, &caps), Some('A'));
        assert_eq!(key_char(KEY_1, &caps), Some('1'));
    }

    #[test]
    fn console_bytes_like_a_terminal() {
        let none = Modifiers::default();
        assert_eq!(console_bytes(KEY_ENTER, &none), Some(b"\r".to_vec()));
        assert_eq!(console_bytes(KEY_BACKSPACE, &none), Some(vec![0x7f]));
        assert_eq!(console_bytes(KEY_UP, &none), Some(b"\x1b[A".to_vec()));
        assert_eq!(console_bytes(KEY_LEFT, &none), Some(b"\x1b[D".to_vec()));
        assert_eq!(console_bytes(KEY_C, &held(&[KEY_LEFTCTRL])), Some(vec![3]));
        assert_eq!(console_bytes(KEY_A, &held(&[KEY_RIGHTCTRL])), Some(vec![1]));
        assert_eq!(
            console_bytes(KEY_A, &held(&[KEY_LEFTALT])),
            Some(b"\x1ba".to_vec())
        );
        assert_eq!(console_bytes(KEY_LEFTSHIFT, &none), None);
        assert_eq!(console_bytes(KEY_TAB, &none), Some(b"\t".to_vec()));
        assert_eq!(console_bytes(KEY_ESC, &none), Some(vec![0x1b]));
    }

    #[test]
    fn chords_need_ctrl_and_alt_either_side() {
        let ctrl_alt = held(&[KEY_RIGHTCTRL, KEY_LEFTALT]);
        assert_eq!(
            chord(&ctrl_alt, KEY_DELETE, 1),
            Some(Chord::SecureAttention)
        );
        assert_eq!(chord(&ctrl_alt, KEY_DELETE, 2), None);
        assert_eq!(chord(&ctrl_alt, KEY_F1, 1), Some(Chord::Switch(0)));
        assert_eq!(chord(&ctrl_alt, KEY_F12, 1), Some(Chord::Switch(11)));
        assert_eq!(chord(&held(&[KEY_LEFTCTRL]), KEY_DELETE, 1), None);
        let mut m = held(&[KEY_LEFTCTRL, KEY_RIGHTALT]);
        m.update(KEY_RIGHTALT, 0);
        assert_eq!(chord(&m, KEY_DELETE, 1), None);
    }
}
