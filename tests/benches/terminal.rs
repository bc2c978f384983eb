//! End-to-end benchmark: a PXE-booted terminal logs in to the demo repository and works in
//! the `desk` appliance. The repository is reached through a throttle of 4 MiB/s (one
//! link shared by every connection), and desk's system disk carries 48 MiB its boot never
//! reads, so that what the terminal fetches before the appliance runs is visible.
//!
//! Figures, each against a baseline from the same run (these machines are shared and
//! noisy; ratios hold, absolute times do not):
//! - cold cache: time from the password to desk's ready marker, against the time the
//!   whole set took to arrive (what "download, then boot" would wait for before even
//!   starting); the bytes fetched until the marker against what the set's kernels,
//!   initrds and system disks hold;
//! - warm cache: the same time on the same terminal at the next login, against cold;
//! - update: the bytes a login fetches after `desk` v2 is published, against the stored
//!   size of the chunks v2 added.

use anyhow::Result;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::size::human_with;
use system_tests::demo::{self, DemoRepo, RepoServer};
use system_tests::{Machine, Nic};

/// Runs (medians over them); `TERMINAL_BENCH_RUNS` overrides, for a quick look.
fn runs() -> usize {
    std::env::var("TERMINAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}
/// The throttled link to the repository.
const LINK_BYTES_PER_SEC: u64 = 4 << 20;
/// Data on desk's system disk that its boot does not read.
const BALLAST_MIB: u64 = 48;
/// Between logout and the next login, as a person would take.
const WARM_PAUSE_SECS: u64 = 10;
const BOOT: Duration = Duration::from_secs(300);
const SHORT: Duration = Duration::from_secs(90);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Logs in; returns the seconds from the password to desk's marker and the chunk bytes
/// fetched meanwhile.
fn login_to_marker(m: &mut Machine, server: &RepoServer) -> Result<(f64, u64)> {
    login_to_marker_at(m, server).map(|(secs, bytes, _)| (secs, bytes))
}

/// [`login_to_marker`], also returning when the password was sent.
fn login_to_marker_at(m: &mut Machine, server: &RepoServer) -> Result<(f64, u64, Instant)> {
    let before = server.chunk_transfers().len();
    m.send_line(demo::USER)?;
    m.expect("Password:", SHORT)?;
    let start = Instant::now();
    m.send_line(demo::PASSWORD)?;
    let screen = m.expect(demo::DESK_READY, BOOT)?;
    let secs = start.elapsed().as_secs_f64();
    let guest = m.expect("after its kernel started", SHORT)?;
    if let Some(line) = screen.lines().find(|l| l.starts_with("Appliances:")) {
        let line = line.split(". Keys").next().unwrap_or(line);
        println!(
            "    {}; desk ready{}",
            line.trim(),
            guest.trim_end_matches(' ')
        );
    }
    let bytes = server.chunk_transfers()[before..]
        .iter()
        .map(|(_, b)| b)
        .sum();
    m.expect(demo::DESK_PROMPT, SHORT)?;
    Ok((secs, bytes, start))
}

/// Waits until every chunk in `set` has been fetched since transfer `from`; returns the
/// seconds since `start`.
fn wait_for_set(
    server: &RepoServer,
    from: usize,
    set: &BTreeSet<String>,
    start: Instant,
) -> Result<f64> {
    let deadline = Instant::now() + BOOT;
    loop {
        let fetched: BTreeSet<String> = server.chunk_transfers()[from..]
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        if set.is_subset(&fetched) {
            return Ok(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(Instant::now() < deadline, "the fill did not complete");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes the repository stores (and sends) for `ids`.
fn stored_bytes(repo: &DemoRepo, ids: &BTreeSet<String>) -> u64 {
    ids.iter()
        .filter_map(|id| {
            std::fs::metadata(repo.dir.join("public/chunks").join(&id[..2]).join(id)).ok()
        })
        .map(|md| md.len())
        .sum()
}

fn log_out(m: &mut Machine) -> Result<()> {
    m.send_line("exit")?;
    m.expect("desk ended: powered off", SHORT)?;
    m.send_bytes(b"\x01q")?;
    m.expect("Logged out.", SHORT)?;
    m.expect("login:", SHORT)?;
    Ok(())
}

fn boot(pxe: &system_tests::Firmware, disk: &std::path::Path) -> Result<Machine> {
    demo::boot_terminal(pxe, Nic::VirtioNet, Some(disk))
}

fn main() -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("collective-bench-terminal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let repo = DemoRepo::create_with_ballast(&dir, BALLAST_MIB)?;
    let server = repo.serve()?;
    let link = demo::Throttle::start(server.port, LINK_BYTES_PER_SEC)?;
    let fw = demo::terminal_firmware()?;
    let pxe = demo::pxe_folder(&fw, &dir.join("pxe"), &link.guest_url())?;
    let (desk1, web1) = (repo.manifest("desk", 1)?, repo.manifest("web", 1)?);
    let mut set_lengths = demo::system_chunk_lengths(&desk1);
    set_lengths.extend(demo::system_chunk_lengths(&web1));
    let set_chunks: BTreeSet<String> = set_lengths.into_keys().collect();
    let set_bytes = stored_bytes(&repo, &set_chunks);

    let (mut cold, mut warm, mut again, mut cold_bytes, mut filled) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last_disk = None;
    let runs = runs();
    for run in 0..runs {
        let disk = demo::empty_disk(&dir.join(format!("cache{run}.img")), 1 << 30)?;
        let mut m = boot(&pxe, &disk)?;
        let from = server.chunk_transfers().len();
        let (c, bytes, start) = login_to_marker_at(&mut m, &server)?;
        // Work until the whole set is in, so that the next boot is warm.
        let f = wait_for_set(&server, from, &set_chunks, start)?;
        log_out(&mut m)?;
        m.power_off()?;
        // Warm: the terminal reboots and the person logs in again.
        let mut m = boot(&pxe, &disk)?;
        let (w, _) = login_to_marker(&mut m, &server)?;
        log_out(&mut m)?;
        // And once more without a reboot, after a pause a person would take.
        std::thread::sleep(Duration::from_secs(WARM_PAUSE_SECS));
        let (a, _) = login_to_marker(&mut m, &server)?;
        log_out(&mut m)?;
        m.power_off()?;
        println!(
            "run {}: cold {c:.2} s ({} fetched before the marker, the whole set in after {f:.2} s), warm after a reboot {w:.2} s, warm without a reboot {a:.2} s",
            run + 1,
            human_with(bytes, 2)
        );
        filled.push(f);
        cold.push(c);
        warm.push(w);
        again.push(a);
        cold_bytes.push(bytes as f64);
        last_disk = Some(disk);
    }

    // An update on the last terminal.
    repo.publish_desk(2)?;
    let desk2 = repo.manifest("desk", 2)?;
    let added: BTreeSet<String> = demo::system_chunks(&desk2)
        .difference(&set_chunks)
        .cloned()
        .collect();
    let added_bytes = stored_bytes(&repo, &added);
    let disk = last_disk.expect("at least one run");
    let mut m = boot(&pxe, &disk)?;
    let before = server.chunk_transfers().len();
    let (u, _) = login_to_marker(&mut m, &server)?;
    log_out(&mut m)?;
    m.send_line("poweroff")?;
    m.wait_exit(SHORT)?;
    let update_bytes: u64 = server.chunk_transfers()[before..]
        .iter()
        .filter(|(id, _)| !id.is_empty() && demo::system_chunks(&desk2).contains(id))
        .map(|(_, b)| b)
        .sum();

    let (cold_m, warm_m) = (median(cold), median(warm));
    let filled_m = median(filled);
    println!(
        "\nterminal benchmark ({runs} runs, medians; QEMU TCG with nested KVM; repository on loopback behind a {} MiB/s link)",
        LINK_BYTES_PER_SEC >> 20
    );
    println!(
        "  cold cache: login to desk ready {cold_m:.2} s; the whole set arrived after {filled_m:.2} s ({:.2}: ready/arrived)",
        cold_m / filled_m
    );
    println!(
        "  cold cache: fetched before the marker {} of the {} the set's kernels, initrds and system disks take ({:.2})",
        human_with(median(cold_bytes.clone()) as u64, 2),
        human_with(set_bytes, 2),
        median(cold_bytes) / set_bytes as f64
    );
    println!(
        "  warm cache after a reboot: {warm_m:.2} s, {:.2} of cold",
        warm_m / cold_m
    );
    let again_m = median(again);
    println!(
        "  warm cache, next login without a reboot: {again_m:.2} s, {:.2} of cold (under TCG the appliance boots slower in a firmware that already ran one; see docs/session.md)",
        again_m / cold_m
    );
    println!(
        "  update to desk v2: login to ready {u:.2} s; fetched {} for {} new chunk(s) holding {} ({:.3} of the new chunks' bytes)",
        human_with(update_bytes, 2),
        added.len(),
        human_with(added_bytes, 2),
        update_bytes as f64 / added_bytes.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
