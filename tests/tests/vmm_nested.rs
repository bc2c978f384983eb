//! The VMM inside the firmware boots Debian's stock cloud kernel with a root disk served
//! from cachefs: the appliance's init loads `virtio_mmio` (found through our ACPI
//! tables), checks the sha256 of a file on the root disk, writes to a second disk,
//! prints a marker and powers off; the VMM exits 0.
//!
//! Everything runs nested: the firmware in QEMU TCG (`-cpu max`, so it has SVM), the
//! appliance on the firmware's `/dev/kvm`.

use std::fs;
use std::time::Duration;
use system_tests::appliance::TestAppliance;
use system_tests::firmware::{build_variant, workspace};
use system_tests::{Machine, MachineConfig};

#[test]
fn vmm_boots_the_debian_cloud_kernel_from_a_cachefs_root_disk() {
    let dir = workspace().join("target/system-tests/vmm-appliance");
    let appliance = TestAppliance::build(&dir).expect("build the test appliance");
    let argv = [
        "/bin/vmm",
        "run",
        "--kernel",
        "/appliance/vmlinuz",
        "--initrd",
        "/appliance/initrd.img",
        "--cmdline",
        "console=ttyS0 loglevel=4 probe.file=/probe.txt",
        "--disk",
        "cachefs=/dev/vda:/appliance/root.json,ro",
        "--disk",
        "/dev/vdb",
        "--memory",
        "512",
        "--vcpus",
        "2",
        "--no-input",
    ];
    let run = dir.join("run");
    fs::write(&run, argv.join("\n") + "\n").unwrap();
    let files = vec![
        (appliance.kernel.clone(), "appliance/vmlinuz".to_string()),
        (appliance.initrd.clone(), "appliance/initrd.img".to_string()),
        (
            appliance.root_list.clone(),
            "appliance/root.json".to_string(),
        ),
        (run, "appliance/run".to_string()),
    ];
    let firmware = build_variant(
        "vmm-firmware",
        &["collective.autorun=/appliance/run".to_string()],
        &files,
    )
    .expect("build the firmware");
    let config = MachineConfig {
        disks: vec![appliance.cache_disk.clone(), appliance.scratch_disk.clone()],
        ..Default::default()
    };
    let mut m = Machine::boot(&firmware, &config).unwrap();
    let marker = format!(
        "APPLIANCE-PROBE sha256={} file=/probe.txt",
        appliance.expected_sha256
    );
    m.expect(&marker, Duration::from_secs(600)).unwrap();
    m.expect(
        "autorun: /bin/vmm exited with code 0",
        Duration::from_secs(120),
    )
    .unwrap();

    // The appliance's write went through the VMM's virtio-blk to the firmware's disk.
    let scratch = fs::read(&appliance.scratch_disk).unwrap();
    let wrote = format!("PROBE-WROTE sha256={}\n", appliance.expected_sha256);
    assert_eq!(
        &scratch[..wrote.len()],
        wrote.as_bytes(),
        "the appliance's write did not reach the second disk"
    );

    m.send_line("poweroff").unwrap();
    assert!(m.wait_exit(Duration::from_secs(120)).unwrap().success());
}
