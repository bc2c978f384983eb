//! A screen of character cells, drawn with the seat's font.

use crate::font::{self, CELL_HEIGHT};
use crate::{pixels, Rect};

/// One character with its colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub ch: char,
    pub fg: u32,
    pub bg: u32,
}

/// `cols` x `rows` cells covering a screen from its top-left corner; what the cells
/// leave at the right and bottom edges is painted with `bg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub cols: usize,
    pub rows: usize,
    pub bg: u32,
    pub cells: Vec<Cell>,
}

impl Grid {
    /// An empty grid as large as fits a `width` x `height` screen.
    pub fn for_screen(width: u32, height: u32, fg: u32, bg: u32) -> Grid {
        let cols = (width / font::cell_width()).max(1) as usize;
        let rows = (height / CELL_HEIGHT).max(1) as usize;
        Grid::new(cols, rows, fg, bg)
    }

    /// An empty grid.
    pub fn new(cols: usize, rows: usize, fg: u32, bg: u32) -> Grid {
        Grid {
            cols,
            rows,
            bg,
            cells: vec![Cell { ch: ' ', fg, bg }; cols * rows],
        }
    }

    /// The cell at (`col`, `row`), if inside.
    pub fn cell_mut(&mut self, col: usize, row: usize) -> Option<&mut Cell> {
        if col >= self.cols || row >= self.rows {
            return None;
        }
        self.cells.get_mut(row * self.cols + col)
    }

    /// The cell at (`col`, `row`), if inside.
    pub fn cell(&self, col: usize, row: usize) -> Option<&Cell> {
        if col >= self.cols || row >= self.rows {
            return None;
        }
        self.cells.get(row * self.cols + col)
    }

    /// Writes `text` from (`col`, `row`), cut at the right edge.
    pub fn put(&mut self, col: usize, row: usize, text: &str, fg: u32, bg: u32) {
        for (i, ch) in text.chars().enumerate() {
            match self.cell_mut(col + i, row) {
                Some(cell) => *cell = Cell { ch, fg, bg },
                None => break,
            }
        }
    }

    /// Paints a whole row's background (and blanks it).
    pub fn fill_row(&mut self, row: usize, fg: u32, bg: u32) {
        for col in 0..self.cols {
            if let Some(cell) = self.cell_mut(col, row) {
                *cell = Cell { ch: ' ', fg, bg };
            }
        }
    }

    /// The rows that differ from `other` (every row when the shapes differ).
    pub fn changed_rows(&self, other: &Grid) -> Vec<usize> {
        if self.cols != other.cols || self.rows != other.rows || self.bg != other.bg {
            return (0..self.rows).collect();
        }
        (0..self.rows)
            .filter(|&r| {
                let span = r * self.cols..(r + 1) * self.cols;
                self.cells[span.clone()] != other.cells[span]
            })
            .collect()
    }

    /// The screen rectangle of row `row` on a screen `width` wide (the last row also
    /// covers the bottom margin).
    pub fn row_rect(&self, row: usize, width: u32, height: u32) -> Rect {
        let y = row as u32 * CELL_HEIGHT;
        let h = if row + 1 == self.rows {
            height.saturating_sub(y)
        } else {
            CELL_HEIGHT
        };
        Rect::new(0, y, width, h)
    }

    /// Draws every cell that `rect` touches (whole cells: callers damage whole rows),
    /// and the margins inside `rect`.
    pub fn draw(&self, buf: &mut [u8], stride: usize, rect: Rect, width: u32, height: u32) {
        let rect = rect.clip(width, height);
        if rect.is_empty() {
            return;
        }
        let cw = font::cell_width();
        let used = Rect::new(0, 0, self.cols as u32 * cw, self.rows as u32 * CELL_HEIGHT);
        let first_row = (rect.y / CELL_HEIGHT) as usize;
        let last_row = ((rect.bottom() - 1) / CELL_HEIGHT) as usize;
        let first_col = (rect.x / cw) as usize;
        let last_col = ((rect.right() - 1) / cw) as usize;
        for row in first_row..=last_row.min(self.rows.saturating_sub(1)) {
            for col in first_col..=last_col.min(self.cols.saturating_sub(1)) {
                if let Some(c) = self.cell(col, row) {
                    font::draw_cell(
                        buf,
                        stride,
                        col as u32 * cw,
                        row as u32 * CELL_HEIGHT,
                        c.ch,
                        c.fg,
                        c.bg,
                    );
                }
            }
        }
        // Margins: right of the columns and below the rows.
        let right = Rect::new(used.width, 0, width.saturating_sub(used.width), height);
        let below = Rect::new(0, used.height, width, height.saturating_sub(used.height));
        for m in [right, below] {
            let m = m.intersect(&rect);
            if !m.is_empty() {
                pixels::fill_rect(buf, stride, m, self.bg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_cuts_at_the_edge_and_rows_diff() {
        let mut a = Grid::new(4, 2, 1, 0);
        let b = a.clone();
        a.put(2, 1, "xyz", 1, 0);
        assert_eq!(a.cell(3, 1).map(|c| c.ch), Some('y'));
        assert_eq!(a.changed_rows(&b), vec![1]);
        assert_eq!(a.changed_rows(&Grid::new(5, 2, 1, 0)), vec![0, 1]);
    }
}
