//! `serve --tls-cert/--tls-key` with every kind of key an administrator may have, and with
//! broken files: a usable key serves HTTPS, anything else is one clear line and exit 1,
//! never a panic.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Self-signed certificate for 127.0.0.1 with the key `key` (already made).
fn cert_for(dir: &Path, key: &str, cert: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-out",
            cert,
        ],
    );
}

/// Runs `serve` with the pair; returns (exit code, stderr) if it exits within 20 s, or the
/// URL it listens on (and kills it) if it serves.
fn serve(f: &Fixture, cert: &Path, key: &Path) -> Result<String, (Option<i32>, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_collective-repo"))
        .arg("serve")
        .arg(&f.dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-fast-kdf",
            "--tls-cert",
        ])
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stdout.read(&mut byte) {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).to_string();
    if let Some(url) = line.strip_prefix("listening on ") {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(url.to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve neither listened nor exited");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Err((status.code(), err))
}

#[test]
fn every_usable_key_form_serves_https() {
    if !have("openssl") || !have("curl") {
        eprintln!("SKIPPED: needs openssl and curl");
        return;
    }
    let f = Fixture::new();
    let dir = f.path("");
    // SEC1 EC ("BEGIN EC PRIVATE KEY"), PKCS#8 EC, PKCS#1 RSA ("BEGIN RSA PRIVATE KEY").
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    openssl(
        &dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.key", "-out", "ec8.key",
        ],
    );
    openssl(&dir, &["genrsa", "-traditional", "-out", "rsa.key", "2048"]);
    for key in ["ec.key", "ec8.key", "rsa.key"] {
        let cert = format!("{key}.pem");
        cert_for(&dir, key, &cert);
        let text = std::fs::read_to_string(dir.join(key)).unwrap();
        let url = serve(&f, &dir.join(&cert), &dir.join(key)).unwrap_or_else(|(c, e)| {
            panic!("{key} ({}): exit {c:?}: {e}", text.lines().next().unwrap())
        });
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }
    // And one of them really answers over TLS.
    let mut child = Command::new(env!("CARGO_BIN_EXE_collective-repo"))
        .arg("serve")
        .arg(&f.dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--insecure-fast-kdf",
            "--tls-cert",
        ])
        .arg(dir.join("ec.key.pem"))
        .arg("--tls-key")
        .arg(dir.join("ec.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let url = String::from_utf8(line)
        .unwrap()
        .replace("listening on ", "");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(dir.join("ec.key.pem"))
        .arg(format!(
            "{url}/{}",
            appliance::wire::manifest_path("desk", 1)
        ))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.starts_with(b"{"));
}

#[test]
fn bad_keys_and_certificates_give_one_line_errors() {
    if !have("openssl") {
        eprintln!("SKIPPED: needs openssl");
        return;
    }
    let f = Fixture::new();
    let dir = f.path("");
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    cert_for(&dir, "ec.key", "ec.pem");
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.key",
        ],
    );
    // An EC key on a curve rustls does not sign with.
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "secp256k1",
            "-genkey",
            "-noout",
            "-out",
            "k1.key",
        ],
    );
    // An encrypted key.
    openssl(
        &dir,
        &[
            "pkcs8", "-topk8", "-in", "ec.key", "-passout", "pass:x", "-out", "enc.key",
        ],
    );
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(
        dir.join("garbage"),
        b"\x00\x01 not a pem file at all \xff\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-base64.key"),
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("ec.pem", "empty", "empty"),
        ("ec.pem", "garbage", "no usable private key"),
        ("ec.pem", "bad-base64.key", "no usable private key"),
        ("ec.pem", "enc.key", "no usable private key"),
        ("ec.pem", "k1.key", "key"),
        ("ec.pem", "other.key", "do not work together"),
        ("ec.pem", "missing.key", "No such file"),
        ("empty", "ec.key", "empty"),
        ("garbage", "ec.key", "no \"BEGIN CERTIFICATE\""),
        ("ec.key", "ec.key", "no \"BEGIN CERTIFICATE\""),
    ];
    for (cert, key, needle) in cases {
        match serve(&f, &dir.join(cert), &dir.join(key)) {
            Ok(url) => panic!("--tls-cert {cert} --tls-key {key} served on {url}"),
            Err((code, err)) => {
                assert_eq!(code, Some(1), "{cert}/{key}: {err}");
                assert!(!err.contains("panicked"), "{cert}/{key}: {err}");
                let lines: Vec<&str> = err.lines().collect();
                assert_eq!(lines.len(), 1, "{cert}/{key}: one line, got: {err}");
                assert!(lines[0].starts_with("error: "), "{err}");
                assert!(lines[0].contains(needle), "{cert}/{key}: {err}");
            }
        }
    }
}
