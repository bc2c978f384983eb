//! Every command-line program explains itself: `--help` of every command and subcommand
//! works, and every option and argument in it has a description (a bare `[default: ...]`
//! does not count). This is the check the README's "fresh machine" promise leans on:
//! a site's first hour goes through these screens.

use std::path::PathBuf;
use std::process::Command;
use system_tests::firmware::workspace;

/// (package, binary) of every program a person runs.
const PROGRAMS: &[(&str, &str)] = &[
    ("cachefs", "cachefs"),
    ("image-builder", "collective-image"),
    ("launcher", "vmm"),
    ("receiver", "receiver"),
    ("repository", "collective-repo"),
];

fn binaries() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(workspace())
        .args(["build", "--quiet", "--bins"]);
    for (package, _) in PROGRAMS {
        build.args(["-p", package]);
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build of the programs failed");
    target.join("debug")
}

/// The description part without clap's bracketed notes.
fn described(text: &str) -> bool {
    let mut rest = text.to_string();
    for note in ["[default: ", "[env: ", "[possible values: ", "[aliases: "] {
        while let Some(start) = rest.find(note) {
            let end = rest[start..]
                .find(']')
                .map_or(rest.len(), |e| start + e + 1);
            rest.replace_range(start..end, "");
        }
    }
    !rest.trim().is_empty()
}

/// Checks `command --help`; recurses into its subcommands. Gaps go to `gaps`.
fn check(command: &[String], gaps: &mut Vec<String>) {
    let out = Command::new(&command[0])
        .args(&command[1..])
        .arg("--help")
        .output()
        .expect("running a program");
    let shown = command.join(" ");
    assert!(out.status.success(), "{shown} --help failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    let mut section = "";
    let mut subcommands = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            continue;
        }
        let item = line.trim_start();
        let indent = line.len() - item.len();
        match section {
            "Commands" if indent == 2 => {
                let name = item.split_whitespace().next().unwrap_or("");
                if name != "help" {
                    subcommands.push(name.to_string());
                }
            }
            "Options" | "Arguments"
                if indent >= 2 && indent < 8 && item.starts_with(['-', '<', '[']) =>
            {
                let (spec, desc) = item.split_once("  ").unwrap_or((item, ""));
                if ["-h, --help", "-V, --version"].contains(&spec.trim()) {
                    continue;
                }
                // Long help puts the description on the next, deeper-indented line.
                let next = lines.get(i + 1).copied().unwrap_or("");
                let next_is_text =
                    next.starts_with("        ") && !next.trim_start().starts_with(['-', '<']);
                if !described(desc) && !(next_is_text && described(next)) {
                    gaps.push(format!("{shown}: {}", spec.trim()));
                }
            }
            _ => {}
        }
    }
    for sub in subcommands {
        let mut deeper = command.to_vec();
        deeper.push(sub);
        check(&deeper, gaps);
    }
}

#[test]
fn every_option_of_every_program_is_explained() {
    let dir = binaries();
    let mut gaps = Vec::new();
    for (_, binary) in PROGRAMS {
        check(&[dir.join(binary).display().to_string()], &mut gaps);
    }
    assert!(
        gaps.is_empty(),
        "options without a description:\n{}",
        gaps.join("\n")
    );
}

#[test]
fn the_demo_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_collective-demo"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in ["--dir", "--script", "--display", "--desktop"] {
        assert!(text.contains(option), "{option} missing from:\n{text}");
    }
}
