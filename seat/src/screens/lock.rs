//! The lock screen: "Locked by <user>. Password:" with the typed password shown as
//! stars. Nothing of any appliance is on screen while it shows, and input goes nowhere
//! else. The password is checked by the session (a callback), never by the seat.

use super::colors::*;
use super::Grid;
use crate::keys::{code::*, key_char, Modifiers};

/// What the lock screen wants.
#[derive(Debug, PartialEq, Eq)]
pub enum LockAction {
    None,
    /// Check this password.
    Check(String),
}

/// The lock screen's state.
#[derive(Default)]
pub struct Lock {
    password: String,
    message: Option<String>,
}

impl Lock {
    /// An empty lock screen.
    pub fn new() -> Lock {
        Lock::default()
    }

    /// Follows a key press.
    pub fn key(&mut self, key: u16, mods: &Modifiers) -> LockAction {
        match key {
            KEY_ENTER | KEY_KPENTER => {
                self.message = None;
                LockAction::Check(std::mem::take(&mut self.password))
            }
            KEY_BACKSPACE => {
                self.password.pop();
                LockAction::None
            }
            KEY_ESC => {
                self.wipe();
                LockAction::None
            }
            _ => {
                if let Some(c) = key_char(key, mods) {
                    if self.password.len() < 256 {
                        self.password.push(c);
                    }
                }
                LockAction::None
            }
        }
    }

    /// The password was wrong.
    pub fn wrong(&mut self) {
        self.wipe();
        self.message = Some("Wrong password. Try again.".into());
    }

    fn wipe(&mut self) {
        // Overwrite before dropping, so the password does not linger in freed memory.
        let len = self.password.len();
        self.password.clear();
        self.password.extend(std::iter::repeat_n('\0', len));
        self.password.clear();
    }

    /// The lock screen.
    pub fn grid(&self, user: &str, width: u32, height: u32) -> Grid {
        let mut g = Grid::for_screen(width, height, TEXT, SEAT_BG);
        let row = g.rows / 2;
        let stars: String = "*".repeat(self.password.chars().count());
        g.put(
            4,
            row.saturating_sub(2),
            "Collective terminal",
            TITLE,
            SEAT_BG,
        );
        g.put(
            4,
            row,
            &format!("Locked by {user}. Password: {stars}"),
            TEXT,
            SEAT_BG,
        );
        if let Some(m) = &self.message {
            g.put(4, row + 2, m, WARNING, SEAT_BG);
        }
        g
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_masks_and_enter_hands_over_the_password() {
        let none = Modifiers::default();
        let mut l = Lock::new();
        for k in [KEY_A, KEY_C, KEY_BACKSPACE, KEY_1 + 1] {
            assert_eq!(l.key(k, &none), LockAction::None);
        }
        let g = l.grid("ann", 800, 600);
        let text: String = g.cells.iter().map(|c| c.ch).collect();
        assert!(text.contains("Locked by ann. Password: **"), "{text}");
        assert!(!text.contains("a2"));
        assert_eq!(l.key(KEY_ENTER, &none), LockAction::Check("a2".into()));
        l.wrong();
        let text: String = l.grid("ann", 800, 600).cells.iter().map(|c| c.ch).collect();
        assert!(text.contains("Wrong password"));
    }
}
