//! A reproducible initramfs: a newc cpio archive, compressed with zstd.
//!
//! Reproducible means the same inputs give the same bytes: entries are written in
//! sorted order with fixed inode numbers, owner root and modification time zero, and the
//! compressor runs single-threaded at a fixed level.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;

/// What one path in the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    CharDevice { mode: u32, major: u32, minor: u32 },
    Symlink { target: String },
}

/// The archive's contents, keyed by path without a leading `/`.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Adds a directory and any missing parents.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let mut prefix = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.nodes
                .entry(prefix.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    fn parent_of(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_matches('/').to_string();
        self.parent_of(&path);
        self.nodes.insert(path, Node::File { mode, data });
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let path = path.trim_matches('/').to_string();
        self.parent_of(&path);
        self.nodes
            .insert(path, Node::CharDevice { mode, major, minor });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_matches('/').to_string();
        self.parent_of(&path);
        self.nodes.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Total bytes of file contents (what the archive holds before compression).
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// The uncompressed newc archive. Sorted order puts every parent before its children.
    pub fn to_cpio(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.content_bytes() as usize + self.nodes.len() * 128);
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            let ino = index as u32 + 1;
            let header = cpio::newc::Builder::new(path)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (header, body): (_, &[u8]) = match node {
                Node::Dir { mode } => (header.mode(S_IFDIR | mode).nlink(2), &[]),
                Node::File { mode, data } => {
                    (header.mode(S_IFREG | mode).nlink(1), data.as_slice())
                }
                Node::CharDevice { mode, major, minor } => (
                    header
                        .mode(S_IFCHR | mode)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
                Node::Symlink { target } => {
                    (header.mode(S_IFLNK | 0o777).nlink(1), target.as_bytes())
                }
            };
            let size = u32::try_from(body.len())
                .with_context(|| format!("{path} is larger than cpio allows"))?;
            let mut writer = header.write(&mut out, size);
            writer.write_all(body)?;
            writer.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        Ok(out)
    }
}

/// zstd level for the initramfs. The kernel decompresses at the same speed whatever the
/// level, so we pay once at build time for a smaller download.
pub const ZSTD_LEVEL: i32 = 19;

/// Compresses a cpio archive for the kernel's initramfs unpacker.
pub fn compress(cpio: &[u8]) -> Result<Vec<u8>> {
    compress_level(cpio, ZSTD_LEVEL)
}

/// Like [`compress`] at another level (test images trade size for build time).
pub fn compress_level(cpio: &[u8], level: i32) -> Result<Vec<u8>> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), level)?;
    // A checksum lets the kernel reject a corrupted download instead of running it.
    encoder.include_checksum(true)?;
    encoder.write_all(cpio)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.file("init", 0o755, b"#!init".to_vec());
        t.file("lib/modules/x/a.ko", 0o644, vec![1, 2, 3]);
        t.char_device("dev/console", 0o600, 5, 1);
        t.symlink("sbin/init", "/init");
        t
    }

    #[test]
    fn parents_come_before_children_and_archive_ends_with_trailer() {
        let cpio = sample().to_cpio().unwrap();
        let text = String::from_utf8_lossy(&cpio);
        let lib = text.find("lib\0").unwrap();
        let ko = text.find("lib/modules/x/a.ko\0").unwrap();
        assert!(lib < ko);
        assert!(text.contains("TRAILER!!!"));
        assert!(cpio.len() % 4 == 0);
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        let a = compress(&sample().to_cpio().unwrap()).unwrap();
        let b = compress(&sample().to_cpio().unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    }

    #[test]
    fn archive_round_trips_through_a_reader() {
        let cpio = sample().to_cpio().unwrap();
        let mut names = Vec::new();
        let mut rest = cpio.as_slice();
        loop {
            let reader = cpio::newc::Reader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            names.push((reader.entry().name().to_string(), reader.entry().mtime()));
            rest = reader.finish().unwrap();
        }
        assert!(names.iter().all(|(_, mtime)| *mtime == 0));
        assert_eq!(names.first().map(|n| n.0.as_str()), Some("dev"));
        assert!(names.iter().any(|n| n.0 == "sbin/init"));
    }
}
