//! Rectangles and damage coalescing.
//!
//! Appliances report damage from their VM threads at any rate; the seat presents at most
//! once per vblank. [`Damage`] is where those reports meet: a short list of rectangles
//! that stays short (beyond [`MAX_RECTS`] it collapses into the bounding box), so a
//! flood of tiny updates costs a bounded amount of bookkeeping and one copy per pixel.

use crate::Rect;

/// Beyond this many rectangles, [`Damage`] keeps only their bounding box: copying a few
/// extra pixels is cheaper than walking a long list every frame.
pub const MAX_RECTS: usize = 16;

impl Rect {
    /// A rectangle from its position and size.
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    /// No pixels.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// One past the right edge (saturating: rectangles from guests may be absurd).
    pub fn right(&self) -> u32 {
        self.x.saturating_add(self.width)
    }

    /// One past the bottom edge.
    pub fn bottom(&self) -> u32 {
        self.y.saturating_add(self.height)
    }

    /// The common part, or an empty rectangle.
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let r = self.right().min(other.right());
        let b = self.bottom().min(other.bottom());
        if r <= x || b <= y {
            return Rect::default();
        }
        Rect::new(x, y, r - x, b - y)
    }

    /// Whether the two share at least one pixel.
    pub fn intersects(&self, other: &Rect) -> bool {
        !self.intersect(other).is_empty()
    }

    /// The smallest rectangle holding both (an empty one adds nothing).
    pub fn bounding(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let r = self.right().max(other.right());
        let b = self.bottom().max(other.bottom());
        Rect::new(x, y, r - x, b - y)
    }

    /// Whether every pixel of `other` is in `self`.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.right() <= self.right()
            && other.bottom() <= self.bottom()
    }

    /// Clipped to a `width` x `height` area at the origin.
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        self.intersect(&Rect::new(0, 0, width, height))
    }
}

/// Coalesced damage: rectangles, none inside another, at most [`MAX_RECTS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    rects: Vec<Rect>,
}

impl Damage {
    /// Nothing damaged.
    pub fn new() -> Damage {
        Damage::default()
    }

    /// Adds a rectangle: dropped when empty or already covered; rectangles it covers are
    /// dropped; beyond [`MAX_RECTS`] everything becomes the bounding box.
    pub fn add(&mut self, rect: Rect) {
        if rect.is_empty() || self.rects.iter().any(|r| r.contains(&rect)) {
            return;
        }
        self.rects.retain(|r| !rect.contains(r));
        self.rects.push(rect);
        if self.rects.len() > MAX_RECTS {
            let bound = self
                .rects
                .iter()
                .fold(Rect::default(), |acc, r| acc.bounding(r));
            self.rects.clear();
            self.rects.push(bound);
        }
    }

    /// Whether nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// The rectangles.
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// Whether any damaged rectangle shares a pixel with `rect`.
    pub fn intersects(&self, rect: &Rect) -> bool {
        self.rects.iter().any(|r| r.intersects(rect))
    }

    /// Takes the rectangles, leaving nothing damaged.
    pub fn take(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.rects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_math() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(&b), Rect::new(5, 5, 5, 5));
        assert_eq!(a.bounding(&b), Rect::new(0, 0, 15, 15));
        assert!(a.intersect(&Rect::new(10, 0, 5, 5)).is_empty());
        assert_eq!(
            Rect::new(1000, 0, 100, 10).clip(1050, 5),
            Rect::new(1000, 0, 50, 5)
        );
        assert!(Rect::new(u32::MAX, u32::MAX, u32::MAX, 1)
            .clip(10, 10)
            .is_empty());
    }

    #[test]
    fn covered_rects_are_dropped_and_covering_ones_replace() {
        let mut d = Damage::new();
        d.add(Rect::new(0, 0, 100, 100));
        d.add(Rect::new(10, 10, 5, 5));
        d.add(Rect::default());
        assert_eq!(d.rects(), &[Rect::new(0, 0, 100, 100)]);
        d.add(Rect::new(200, 0, 1, 1));
        d.add(Rect::new(0, 0, 300, 300));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 300, 300)]);
    }

    #[test]
    fn many_rects_collapse_to_their_bounding_box() {
        let mut d = Damage::new();
        for i in 0..MAX_RECTS as u32 {
            d.add(Rect::new(i * 10, 0, 5, 5));
        }
        assert_eq!(d.rects().len(), MAX_RECTS);
        d.add(Rect::new(0, 100, 5, 5));
        assert_eq!(
            d.rects(),
            &[Rect::new(0, 0, (MAX_RECTS as u32 - 1) * 10 + 5, 105)]
        );
        assert_eq!(d.take().len(), 1);
        assert!(d.is_empty());
    }
}
