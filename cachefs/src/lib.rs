//! The terminal's on-disk cache: a crash-safe, content-addressed chunk store with disk-image views and copy-on-write overlays.
