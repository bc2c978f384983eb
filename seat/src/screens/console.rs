//! The text surface of an appliance without a display: its serial output through a
//! minimal terminal emulator, drawn with the seat's font.
//!
//! Understood: printable UTF-8, CR, LF, BS, TAB, and of the escape sequences (parsed by
//! `vte`, so none leaks onto the screen) clear-screen (`ESC [ 2 J`), erase to end of
//! screen or line, and cursor positioning (`ESC [ H`, `ESC [ row ; col H`); colours and
//! every other sequence are ignored. The screen that scrolls off is kept as one screen
//! of scroll back (Shift+PageUp/PageDown).
//!
//! Every console is fed all its output whether it has focus or not (the seat does that
//! under the appliance's lock in the VM thread that produced it), so switching to it
//! shows its current screen at once.

use super::colors::{CONSOLE_BG, CONSOLE_FG};
use super::Grid;
use std::collections::VecDeque;

/// The emulator's state besides the parser.
struct Screen {
    cols: usize,
    rows: usize,
    lines: Vec<Vec<char>>,
    scrollback: VecDeque<Vec<char>>,
    cx: usize,
    cy: usize,
}

/// A console appliance's screen.
pub struct Terminal {
    parser: vte::Parser,
    screen: Screen,
    /// Lines scrolled back from the live screen (0: live).
    view: usize,
}

impl Screen {
    fn blank(&self) -> Vec<char> {
        vec![' '; self.cols]
    }

    fn newline(&mut self) {
        if self.cy + 1 < self.rows {
            self.cy += 1;
            return;
        }
        let top = std::mem::take(&mut self.lines[0]);
        self.lines.remove(0);
        self.lines.push(self.blank());
        self.scrollback.push_back(top);
        while self.scrollback.len() > self.rows {
            self.scrollback.pop_front();
        }
    }

    fn clear(&mut self) {
        for line in &mut self.lines {
            line.fill(' ');
        }
    }
}

impl vte::Perform for Screen {
    fn print(&mut self, c: char) {
        if self.cx >= self.cols {
            self.cx = 0;
            self.newline();
        }
        let (cx, cy) = (self.cx, self.cy);
        if let Some(cell) = self.lines.get_mut(cy).and_then(|l| l.get_mut(cx)) {
            *cell = c;
        }
        self.cx += 1;
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\r' => self.cx = 0,
            b'\n' | 0x0b | 0x0c => self.newline(),
            0x08 => self.cx = self.cx.min(self.cols).saturating_sub(1),
            b'\t' => self.cx = ((self.cx / 8 + 1) * 8).min(self.cols.saturating_sub(1)),
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &vte::Params, _: &[u8], _: bool, action: char) {
        let mut args = params.iter().map(|p| p.first().copied().unwrap_or(0));
        match action {
            'H' | 'f' => {
                let row = usize::from(args.next().unwrap_or(1).max(1)) - 1;
                let col = usize::from(args.next().unwrap_or(1).max(1)) - 1;
                self.cy = row.min(self.rows - 1);
                self.cx = col.min(self.cols - 1);
            }
            'J' => match args.next().unwrap_or(0) {
                0 => {
                    let (cx, cy) = (self.cx.min(self.cols), self.cy);
                    self.lines[cy][cx..].fill(' ');
                    for line in &mut self.lines[cy + 1..] {
                        line.fill(' ');
                    }
                }
                2 | 3 => self.clear(),
                _ => {}
            },
            'K' if args.next().unwrap_or(0) == 0 => {
                let (cx, cy) = (self.cx.min(self.cols), self.cy);
                self.lines[cy][cx..].fill(' ');
            }
            _ => {}
        }
    }
}

impl Terminal {
    /// An empty `cols` x `rows` screen.
    pub fn new(cols: usize, rows: usize) -> Terminal {
        let (cols, rows) = (cols.max(1), rows.max(1));
        Terminal {
            parser: vte::Parser::new(),
            screen: Screen {
                cols,
                rows,
                lines: vec![vec![' '; cols]; rows],
                scrollback: VecDeque::new(),
                cx: 0,
                cy: 0,
            },
            view: 0,
        }
    }

    /// Feeds output from the appliance.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.advance(&mut self.screen, bytes);
    }

    /// Scrolls the view back (positive) or forward (negative) by `lines`, within the
    /// kept scroll back.
    pub fn scroll(&mut self, lines: isize) {
        let max = self.screen.scrollback.len() as isize;
        self.view = (self.view as isize + lines).clamp(0, max) as usize;
    }

    /// Back to the live screen (any key sent to the appliance does this).
    pub fn scroll_to_live(&mut self) {
        self.view = 0;
    }

    /// Rows on the screen.
    pub fn rows(&self) -> usize {
        self.screen.rows
    }

    /// The characters of row `row` as shown now (for tests and logs).
    pub fn row_text(&self, row: usize) -> String {
        let g = self.grid();
        (0..g.cols)
            .filter_map(|c| g.cell(c, row).map(|c| c.ch))
            .collect::<String>()
            .trim_end()
            .to_string()
    }

    /// The screen as cells, with the cursor as an inverted cell when live.
    pub fn grid(&self) -> Grid {
        let s = &self.screen;
        let mut g = Grid::new(s.cols, s.rows, CONSOLE_FG, CONSOLE_BG);
        let back = self.view.min(s.scrollback.len());
        let kept = s.scrollback.len() - back;
        let shown = s
            .scrollback
            .iter()
            .skip(kept)
            .chain(s.lines.iter())
            .take(s.rows);
        for (row, line) in shown.enumerate() {
            for (col, &ch) in line.iter().enumerate() {
                if let Some(cell) = g.cell_mut(col, row) {
                    cell.ch = ch;
                }
            }
        }
        if back == 0 {
            if let Some(cell) = g.cell_mut(s.cx.min(s.cols - 1), s.cy) {
                cell.fg = CONSOLE_BG;
                cell.bg = CONSOLE_FG;
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_handles_controls() {
        let mut t = Terminal::new(10, 3);
        t.feed(b"ab\tc\r\nx\x08y\x1b[31mred\x1b[0m\n");
        assert_eq!(t.row_text(0), "ab      c");
        assert_eq!(t.row_text(1), "yred");
        t.feed("é".as_bytes());
        assert_eq!(t.grid().cell(4, 2).map(|c| c.ch), Some('é'));
    }

    #[test]
    fn scrolls_wraps_clears_and_keeps_a_screen_back() {
        let mut t = Terminal::new(4, 2);
        t.feed(b"1\r\n2\r\n3\r\n4\r\nabcdef");
        assert_eq!(t.row_text(0), "abcd");
        assert_eq!(t.row_text(1), "ef");
        t.scroll(10);
        assert_eq!(t.row_text(0), "3");
        assert_eq!(t.row_text(1), "4");
        t.scroll_to_live();
        t.feed(b"\x1b[2J\x1b[Hz");
        assert_eq!(t.row_text(0), "z");
        assert_eq!(t.row_text(1), "");
        t.feed(b"\x1b[2;3Hq");
        assert_eq!(t.row_text(1), "  q");
    }
}
