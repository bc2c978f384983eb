//! The `receiver` command against the real server on loopback.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::*;

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_receiver"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn fill_and_status_commands() {
    let f = Fixture::new();
    f.publish("desk", &image(20, 2), &[0]);
    f.assign("alice", &["desk"]);
    let mut srv = f.serve();
    let keys = f.path("trusted.pub");
    std::fs::write(&keys, format!("# publisher\n{}\n", f.key.public())).unwrap();
    let cache = f.path("cli-cache.img");
    let (keys_s, cache_s, url) = (keys.to_str().unwrap(), cache.to_str().unwrap(), srv.url());
    let fill = [
        "fill",
        "--repo",
        &url,
        "--cache",
        cache_s,
        "--cache-size",
        "64M",
        "--user",
        "alice",
        "--trusted-keys",
        keys_s,
        "--interval",
        "0.05",
    ];

    let bad = run(&fill, "wrong\n");
    assert_eq!(
        bad.status.code(),
        Some(3),
        "wrong password: exit 3; stderr {}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong user name or password"));

    let ok = run(&fill, &format!("{PASSWORD}\n"));
    let (out, err) = (
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr),
    );
    assert_eq!(ok.status.code(), Some(0), "stdout {out}\nstderr {err}");
    assert!(
        out.contains("alice logged in") && out.contains("filled:"),
        "{out}"
    );
    assert!(
        err.contains("desk v1:") && err.contains("100%") && err.contains("/s"),
        "progress lines: {err}"
    );

    let st = run(&["status", "--cache", cache_s], "");
    let out = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(0));
    assert!(
        out.contains("user alice: offline record (last online login"),
        "{out}"
    );
    assert!(out.contains("offline login works until"), "{out}");
    assert!(
        out.contains("pin app/desk@1:") && out.contains("(complete)"),
        "{out}"
    );

    // Offline: the repository is gone; the cache is complete, so exit 0 with a clear message.
    srv.kill();
    let off = run(&fill, &format!("{PASSWORD}\n"));
    let out = String::from_utf8_lossy(&off.stdout);
    assert_eq!(
        off.status.code(),
        Some(0),
        "{out} {}",
        String::from_utf8_lossy(&off.stderr)
    );
    assert!(
        out.contains("OFFLINE") && out.contains("complete in the cache"),
        "{out}"
    );

    // Missing password: usage error.
    assert_eq!(run(&fill, "").status.code(), Some(2));
}
