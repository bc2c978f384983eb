//! Every on-disk decoder fed raw bytes: errors, never panics.
#![no_main]
use cachefs::format::{decode_commit_header, decode_records, Checkpoint, Superblock};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Superblock::decode(data);
    let _ = Checkpoint::decode(data);
    let _ = decode_records(data);
    let _ = decode_commit_header(data);
    if data.len() >= 2 {
        let raw = 1 + (data[0] as usize) * 300;
        let _ = cachefs::frames::decompress_all(&data[1..], raw);
    }
});
