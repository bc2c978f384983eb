//! A graphical appliance's boot trace, recorded from its own real boot and published:
//! the firmware's `vmm run --display --trace-reads` boots the display test appliance
//! (Debian's generic kernel, virtio-gpu) on nested KVM with a display nobody sees, stops
//! once its picture has settled, and hands back the trace and that picture;
//! `collective-repo publish --boot-trace` turns the trace into the boot profile.

use std::time::Duration;
use system_tests::boot_trace::{record, Recording};
use system_tests::demo::{DemoRepo, DisplayAppliance};
use system_tests::firmware::workspace;
use system_tests::Screenshot;

#[test]
fn a_display_appliance_boot_is_traced_until_its_picture_settles_and_published() {
    let dir = workspace().join("target/system-tests/boot-trace-test");
    let _ = std::fs::remove_dir_all(&dir);
    let repo = DemoRepo::create(&dir).expect("demo repository");
    let app = DisplayAppliance {
        name: "paint".into(),
        seed: 3,
        ..Default::default()
    };
    let out = dir.join("paint-appliance");
    repo.write_display_appliance(&app, &out)
        .expect("write the appliance");
    let (width, height) = (640, 400);
    let recorded = record(&Recording {
        appliance: out.clone(),
        user_disk_bytes: None,
        memory_mib: 256,
        vcpus: 1,
        width,
        height,
        settle: Duration::from_secs(5),
        limit: Duration::from_secs(400),
        work: dir.join("recording"),
    })
    .expect("record the boot trace");

    // The recording ended because the picture settled, and that picture is the pattern.
    let log = &recorded.log_tail;
    let report = recorded
        .vmm_report
        .unwrap_or_else(|| panic!("vmm did not say why it stopped:\n{log}"));
    assert!(report.contains("display idle"), "{report}");
    let shot = recorded
        .screenshot
        .as_deref()
        .map(Screenshot::parse_ppm)
        .unwrap_or_else(|| panic!("no screenshot:\n{log}"))
        .expect("a readable screenshot");
    assert_eq!((shot.width, shot.height), (width, height), "the mode given");
    let (bad, first) = shot.mismatches(5, |x, y| {
        collective_init::test_pattern::pixel(x, y, width, height, app.seed)
    });
    assert_eq!(bad, 0, "the settled picture is not the pattern: {first}");

    // The trace holds the kernel, the initramfs and reads of the system disk, in order.
    let lines: Vec<&str> = recorded
        .trace
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("kernel ")));
    let disk_reads = lines.iter().filter(|l| l.starts_with("vda ")).count();
    assert!(
        disk_reads > 0,
        "no read of the system disk in the trace:\n{}",
        recorded.trace
    );

    // Published with it, the boot profile holds system-disk chunks the kernel and
    // initramfs do not: what a terminal fetches first is what this boot read.
    let trace = out.join("boot.trace");
    std::fs::write(&trace, &recorded.trace).unwrap();
    let version = repo
        .publish_display_from(&app, &out, Some(&trace))
        .expect("publish with the trace");
    assert!(version.contains('1'), "{version}");
    let manifest = repo.manifest("paint", 1).expect("the manifest");
    let system = system_tests::demo::system_chunks(&manifest);
    let profile = manifest.boot_profile.expect("a boot profile");
    let from_disk = profile
        .iter()
        .filter(|id| system.contains(&id.to_string()))
        .count();
    assert!(
        from_disk > 0,
        "the boot profile names no system-disk chunk ({} chunks)",
        profile.len()
    );
    println!(
        "boot trace: {} disk blocks read, profile {} chunks ({from_disk} of the system disk), {}",
        disk_reads,
        profile.len(),
        report
    );
}
