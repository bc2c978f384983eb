//! The `cachefs` binary: format, inspect, fsck (detects damage, repairs it).

use cachefs::{Cache, FileStorage, Storage};
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cachefs"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn format_inspect_fsck_repair() {
    let dir = std::env::temp_dir().join(format!("cachefs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dev = dir.join("cache.img");
    let d = dev.to_str().unwrap();
    assert_eq!(run(&["format", d, "--size", "8M"]).0, 0);
    assert_eq!(std::fs::metadata(&dev).unwrap().len(), 8 << 20);
    let (code, out) = run(&["format", d, "--size", "8M"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--force"), "{out}");

    let chunk: Vec<u8> = (0..20000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let id = {
        let c = Cache::open(Box::new(FileStorage::open(&dev).unwrap())).unwrap();
        let id = c.insert_data(&chunk).unwrap();
        c.insert_data(b"another chunk").unwrap();
        c.pin("desktop@3", &[id]).unwrap();
        c.sync().unwrap();
        id
    };
    let (code, out) = run(&["inspect", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("chunks:      2"), "{out}");
    assert!(out.contains("desktop@3: 1 chunks, 1 present"), "{out}");
    let (code, out) = run(&["fsck", d]);
    assert_eq!(code, 0, "{out}");

    // Rot one byte of the first chunk's record.
    {
        let st = FileStorage::open(&dev).unwrap();
        let img = std::fs::read(&dev).unwrap();
        let c = Cache::open(Box::new(FileStorage::open_read_only(&dev).unwrap())).unwrap();
        assert!(c.contains(&id));
        drop(c);
        let arena_start = 4096 * 2 + (64 << 10) + 2 * (128 << 10);
        let pos = img[arena_start..].iter().position(|&b| b != 0).unwrap() + arena_start + 5;
        st.write_at(pos as u64, &[img[pos] ^ 0xFF]).unwrap();
        st.flush().unwrap();
    }
    let (code, out) = run(&["fsck", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("damaged record"), "{out}");
    let (code, out) = run(&["fsck", "--repair", d]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["fsck", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 chunk records checked"), "{out}");
    let (code, _) = run(&["inspect", dir.join("missing").to_str().unwrap()]);
    assert_eq!(code, 2);
}
