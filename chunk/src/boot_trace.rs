//! Boot traces: the order in which a guest first reads each 4 KiB block of its blobs.
//!
//! A publisher records one with `vmm run --trace-reads FILE` and hands it to
//! `collective-repo publish --boot-trace FILE`, which maps it to chunks: the appliance's
//! boot profile, fetched first and in that order. The format is text, one read per line:
//!
//! ```text
//! # comments and blank lines are skipped
//! kernel 0          the kernel and initrd are read whole before the guest runs
//! initrd 4096
//! vda 1052672       disks by guest device name (vda = first --disk) ...
//! system 8192       ... or by the manifest's disk name
//! ```

use std::fmt;

/// Granularity of a trace: one line per 4 KiB block first read. Publishing maps blocks to
/// whatever chunk size the image uses.
pub const TRACE_BLOCK: u64 = 4096;

/// The guest device name of disk `index`: `vda`, `vdb`, ... (the order of `--disk`, and of
/// the manifest's disks).
pub fn device_name(index: usize) -> String {
    format!("vd{}", char::from(b'a' + (index % 26) as u8))
}

/// The disk index a guest device name stands for: `vda` is 0.
pub fn device_index(name: &str) -> Option<usize> {
    match name.as_bytes() {
        [b'v', b'd', c @ b'a'..=b'z'] => Some(usize::from(c - b'a')),
        _ => None,
    }
}

/// Which blob a trace line reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceBlob {
    /// The kernel image.
    Kernel,
    /// The initrd.
    Initrd,
    /// A disk by index (`vdX`).
    Disk(usize),
    /// A disk by the manifest's name for it.
    Named(String),
}

impl fmt::Display for TraceBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceBlob::Kernel => f.write_str("kernel"),
            TraceBlob::Initrd => f.write_str("initrd"),
            TraceBlob::Disk(i) => f.write_str(&device_name(*i)),
            TraceBlob::Named(n) => f.write_str(n),
        }
    }
}

/// One first read: a blob and the byte offset of the block read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRead {
    /// What was read.
    pub blob: TraceBlob,
    /// Byte offset of the block (a multiple of [`TRACE_BLOCK`] when written by the VMM).
    pub offset: u64,
    /// 1-based line number, for messages about this read.
    pub line: usize,
}

/// A line of a trace that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}; expected `BLOB OFFSET`")]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

/// Parses a trace. A name that is neither `kernel`, `initrd` nor `vdX` is a disk name,
/// resolved by the reader against its manifest.
pub fn parse(text: &str) -> Result<Vec<TraceRead>, TraceError> {
    let mut reads = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| TraceError {
            line: n + 1,
            why: why.to_string(),
        };
        let (name, offset) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("no offset"))?;
        let offset = offset
            .trim()
            .parse()
            .map_err(|_| bad("offset is not a number"))?;
        let blob = match name {
            "kernel" => TraceBlob::Kernel,
            "initrd" => TraceBlob::Initrd,
            other => match device_index(other) {
                Some(i) => TraceBlob::Disk(i),
                None => TraceBlob::Named(other.to_string()),
            },
        };
        reads.push(TraceRead {
            blob,
            offset,
            line: n + 1,
        });
    }
    Ok(reads)
}

/// Writes a trace: every block of the kernel and initrd first (the VMM loads them whole
/// before the guest runs), then the disks' first reads as `(disk index, block number)` in
/// the order they happened.
pub fn write(
    out: &mut dyn std::io::Write,
    kernel_len: u64,
    initrd_len: Option<u64>,
    disk_blocks: &[(usize, u64)],
) -> std::io::Result<()> {
    writeln!(out, "# boot trace written by vmm run --trace-reads")?;
    for (blob, len) in [
        (TraceBlob::Kernel, Some(kernel_len)),
        (TraceBlob::Initrd, initrd_len),
    ] {
        for offset in (0..len.unwrap_or(0)).step_by(TRACE_BLOCK as usize) {
            writeln!(out, "{blob} {offset}")?;
        }
    }
    for (disk, block) in disk_blocks {
        writeln!(out, "{} {}", device_name(*disk), block * TRACE_BLOCK)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_traces_parse_back() {
        let mut out = Vec::new();
        write(&mut out, 5000, None, &[(0, 2), (1, 0), (0, 0)]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let reads = parse(&text).unwrap();
        let as_pairs: Vec<(String, u64)> = reads
            .iter()
            .map(|r| (r.blob.to_string(), r.offset))
            .collect();
        assert_eq!(
            as_pairs,
            [
                ("kernel".to_string(), 0),
                ("kernel".to_string(), 4096),
                ("vda".to_string(), 8192),
                ("vdb".to_string(), 0),
                ("vda".to_string(), 0)
            ]
        );
        assert_eq!(reads[2].blob, TraceBlob::Disk(0));
    }

    #[test]
    fn names_and_errors() {
        assert_eq!(device_name(0), "vda");
        assert_eq!(device_index("vdc"), Some(2));
        assert_eq!(device_index("vd"), None);
        assert_eq!(device_index("sda"), None);
        let reads = parse("system 4096\n\n# x\ninitrd 0").unwrap();
        assert_eq!(reads[0].blob, TraceBlob::Named("system".into()));
        assert_eq!(reads[1].blob, TraceBlob::Initrd);
        assert_eq!(parse("vda").unwrap_err().line, 1);
        assert_eq!(parse("\nvda x").unwrap_err().line, 2);
    }
}
