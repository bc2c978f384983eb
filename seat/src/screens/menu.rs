//! The menu the secure attention key (Ctrl+Alt+Delete) opens: the appliances, and the
//! terminal's own actions. Because only the seat draws it and only the seat sees the
//! key that opens it, an appliance can neither fake it nor watch it.

use super::colors::*;
use super::Grid;
use crate::keys::{code::*, key_char, Modifiers};

/// An appliance as the menu lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub graphical: bool,
    pub ended: bool,
}

/// What the person chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MenuAction {
    /// Nothing yet (the menu changed, or the key meant nothing).
    None,
    /// Show appliance n.
    Switch(usize),
    /// Lock the terminal.
    Lock,
    /// Log out (confirmed).
    Logout,
    /// Send Ctrl+Alt+Delete to the appliance that had focus, and go back to it.
    SendCtrlAltDel,
    /// Back to the appliance that had focus.
    Back,
}

/// The menu's state.
#[derive(Clone, Debug, Default)]
pub struct Menu {
    pub selected: usize,
    confirming_logout: bool,
}

impl Menu {
    /// A menu with appliance `selected` highlighted.
    pub fn new(selected: usize) -> Menu {
        Menu {
            selected,
            confirming_logout: false,
        }
    }

    /// Follows a key press among `count` appliances.
    pub fn key(&mut self, key: u16, mods: &Modifiers, count: usize) -> MenuAction {
        if self.confirming_logout {
            self.confirming_logout = false;
            return match key {
                KEY_Y | KEY_ENTER | KEY_KPENTER => MenuAction::Logout,
                _ => MenuAction::None,
            };
        }
        match key {
            KEY_1..=KEY_9 => {
                let n = usize::from(key - KEY_1);
                if n < count {
                    MenuAction::Switch(n)
                } else {
                    MenuAction::None
                }
            }
            KEY_UP => {
                self.selected = self.selected.saturating_sub(1);
                MenuAction::None
            }
            KEY_DOWN => {
                if self.selected + 1 < count {
                    self.selected += 1;
                }
                MenuAction::None
            }
            KEY_ENTER | KEY_KPENTER if self.selected < count => MenuAction::Switch(self.selected),
            KEY_ESC => MenuAction::Back,
            _ => match key_char(key, mods).map(|c| c.to_ascii_lowercase()) {
                Some('l') => MenuAction::Lock,
                Some('o') => {
                    self.confirming_logout = true;
                    MenuAction::None
                }
                Some('c') => MenuAction::SendCtrlAltDel,
                _ => MenuAction::None,
            },
        }
    }

    /// The menu's screen.
    pub fn grid(&self, user: &str, entries: &[Entry], width: u32, height: u32) -> Grid {
        let mut g = Grid::for_screen(width, height, TEXT, SEAT_BG);
        g.put(
            2,
            1,
            &format!("Collective terminal \u{2014} {user}"),
            TITLE,
            SEAT_BG,
        );
        g.put(2, 3, "Appliances:", TEXT, SEAT_BG);
        for (i, e) in entries.iter().enumerate() {
            let row = 5 + i;
            let bg = if i == self.selected {
                g.fill_row(row, TEXT, HIGHLIGHT_BG);
                HIGHLIGHT_BG
            } else {
                SEAT_BG
            };
            let kind = if e.graphical { "graphical" } else { "console" };
            let state = if e.ended { "  (stopped)" } else { "" };
            let key = if i < 12 {
                format!("Ctrl+Alt+F{}", i + 1)
            } else {
                String::new()
            };
            let line = format!("{:>2}  {:<32} {:<10} {}{}", i + 1, e.name, kind, key, state);
            g.put(4, row, &line, TEXT, bg);
        }
        let mut row = 6 + entries.len();
        let actions = [
            "1-9 or arrows + Enter   switch to an appliance",
            "L                       lock the terminal",
            "O                       log out",
            "C                       send Ctrl+Alt+Delete to the appliance",
            "Esc                     back",
        ];
        for a in actions {
            g.put(4, row, a, TEXT, SEAT_BG);
            row += 1;
        }
        if self.confirming_logout {
            g.put(
                4,
                row + 1,
                "Log out and stop every appliance? Y to confirm, any other key to cancel.",
                WARNING,
                SEAT_BG,
            );
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_choose_actions() {
        let none = Modifiers::default();
        let mut m = Menu::new(0);
        assert_eq!(m.key(KEY_1 + 1, &none, 3), MenuAction::Switch(1));
        assert_eq!(m.key(KEY_9, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_DOWN, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_DOWN, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_DOWN, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_ENTER, &none, 3), MenuAction::Switch(2));
        assert_eq!(m.key(KEY_L, &none, 3), MenuAction::Lock);
        assert_eq!(m.key(KEY_C, &none, 3), MenuAction::SendCtrlAltDel);
        assert_eq!(m.key(KEY_ESC, &none, 3), MenuAction::Back);
        assert_eq!(m.key(KEY_O, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_N, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_O, &none, 3), MenuAction::None);
        assert_eq!(m.key(KEY_Y, &none, 3), MenuAction::Logout);
    }
}
