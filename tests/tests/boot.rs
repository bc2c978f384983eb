//! The firmware boots in QEMU to its login screen, has KVM, and powers off, reboots and
//! answers the power button cleanly.

use std::time::Duration;
use system_tests::firmware::firmware;
use system_tests::{Machine, MachineConfig, Nic};

const BOOT: Duration = Duration::from_secs(240);
const SHORT: Duration = Duration::from_secs(60);

/// Waits for the login screen and for bring-up to finish (the banner's or the later
/// announcement's "ready in" line), and for the prompt that follows it.
fn boot_to_ready(config: &MachineConfig) -> Machine {
    let mut m = Machine::boot(firmware(), config).expect("start QEMU");
    m.expect("Collective terminal", BOOT).unwrap();
    m.expect("login:", BOOT).unwrap();
    wait_ready(&mut m);
    m
}

fn status_screen(m: &mut Machine) -> String {
    m.status_screen().unwrap()
}

fn power_off(m: &mut Machine) {
    m.power_off().unwrap()
}

fn wait_ready(m: &mut Machine) {
    m.expect("ready in", BOOT).unwrap();
    m.expect("login:", SHORT).unwrap();
    // DHCP finishes in the background and announces the address with a fresh prompt;
    // wait for it so later prompts answer our own commands.
    m.expect("address: 10.0.2.15/24 via 10.0.2.2", BOOT)
        .unwrap();
    m.expect("login:", SHORT).unwrap();
}

#[test]
fn boots_to_login_with_identity_and_status() {
    let mut m = Machine::boot(
        firmware(),
        &MachineConfig {
            nic: Nic::E1000e,
            ..Default::default()
        },
    )
    .unwrap();
    m.expect("Collective terminal", BOOT).unwrap();
    let banner = m.expect("login:", BOOT).unwrap();
    assert!(
        banner.contains("firmware: Linux 6."),
        "banner names the kernel: {banner}"
    );
    assert!(banner.contains("repository  none configured"), "{banner}");
    assert!(banner.contains("cache       none configured"), "{banner}");
    // The e1000e driver came from the initramfs and found the card, and our DHCP client
    // got an address from QEMU's user network; the consoles are told.
    wait_ready(&mut m);
    let status = status_screen(&mut m);
    assert!(
        status.contains("Collective terminal terminal-525400123456"),
        "identity missing from status: {status}"
    );
    assert!(
        status.contains("eth0 52:54:00:12:34:56, link up, address: 10.0.2.15/24 via 10.0.2.2"),
        "NIC missing from status: {status}"
    );
}

#[test]
fn kvm_is_ready_inside_the_firmware() {
    let mut m = boot_to_ready(&MachineConfig::default());
    let status = status_screen(&mut m);
    assert!(
        status.contains("kvm         ready: /dev/kvm (kvm_amd, API 12)"),
        "KVM not ready: {status}"
    );
    // Ten seconds after bring-up the screen also says what the terminal's CPU does; with
    // no appliance running, no guest time.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let cpu = loop {
        let status = status_screen(&mut m);
        if let Some(line) = status.lines().find(|l| l.trim_start().starts_with("cpu ")) {
            break line.trim().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cpu line: {status}"
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    assert!(
        cpu.contains("% of a core, appliances 0.0 % (last 10 s)"),
        "{cpu}"
    );
}

#[test]
fn poweroff_at_the_prompt_exits_qemu_cleanly() {
    let mut m = boot_to_ready(&MachineConfig::default());
    m.send_line("poweroff").unwrap();
    m.expect("The terminal is powering off.", SHORT).unwrap();
    let status = m.wait_exit(SHORT).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    assert!(
        !m.transcript().contains("Kernel panic"),
        "{}",
        m.transcript()
    );
}

#[test]
fn ctrl_alt_del_reboots_cleanly() {
    let mut m = boot_to_ready(&MachineConfig {
        allow_reboot: true,
        ..Default::default()
    });
    m.monitor("sendkey ctrl-alt-delete").unwrap();
    m.expect("The terminal is rebooting.", SHORT).unwrap();
    // The machine comes back up: a second login screen.
    m.expect("Collective terminal", BOOT).unwrap();
    m.expect("login:", BOOT).unwrap();
    wait_ready(&mut m);
    power_off(&mut m);
}

#[test]
fn acpi_power_button_powers_off() {
    let mut m = boot_to_ready(&MachineConfig::default());
    m.monitor("system_powerdown").unwrap();
    m.expect("The terminal is powering off.", SHORT).unwrap();
    assert!(m.wait_exit(SHORT).unwrap().success());
}

#[test]
fn login_without_repository_fails_clearly_and_prompts_again() {
    let mut m = boot_to_ready(&MachineConfig::default());
    m.send_line("alice").unwrap();
    m.expect("Password:", SHORT).unwrap();
    m.send_line("secret").unwrap();
    let reply = m.expect("login:", SHORT).unwrap();
    assert!(
        reply.contains("this terminal has no repository configured"),
        "{reply}"
    );
    assert!(
        !reply.contains("secret"),
        "the password must not echo: {reply}"
    );
    m.send_line("help").unwrap();
    let help = m.expect("login:", SHORT).unwrap();
    assert!(help.contains("collective.repo=URL"), "{help}");
}

#[test]
fn settings_typos_are_shown_on_the_login_screen() {
    let config = MachineConfig {
        extra_cmdline: vec![
            "collective.rep=http://x".into(),
            "collective.repo=http://10.0.2.2:8080".into(),
        ],
        ..Default::default()
    };
    let mut m = Machine::boot(firmware(), &config).unwrap();
    let banner = m.expect("login:", BOOT).unwrap();
    assert!(
        banner.contains("repository  http://10.0.2.2:8080"),
        "{banner}"
    );
    assert!(
        banner.contains("problem     collective.rep=http://x: unknown"),
        "{banner}"
    );
}

#[test]
fn network_boot_over_tftp_with_ipxe_reaches_login() {
    let mut m = Machine::boot(
        firmware(),
        &MachineConfig {
            pxe: true,
            nic: Nic::VirtioNet,
            ..Default::default()
        },
    )
    .unwrap();
    m.expect("Collective terminal: loading firmware", BOOT)
        .unwrap();
    m.expect("login:", BOOT).unwrap();
    wait_ready(&mut m);
    let status = status_screen(&mut m);
    assert!(status.contains("eth0 52:54:00:12:34:56"), "{status}");
}

#[test]
fn cache_disk_is_formatted_on_first_use_and_reopened_after() {
    let dir = system_tests::firmware::workspace().join("target/system-tests/cache-disk-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("cache.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    let config = MachineConfig {
        disks: vec![disk.clone()],
        extra_cmdline: vec!["collective.cache=/dev/vda".into()],
        ..Default::default()
    };

    let mut m = boot_to_ready(&config);
    let status = status_screen(&mut m);
    assert!(
        status.contains("cache       /dev/vda:") && status.contains("formatted it now"),
        "{status}"
    );
    power_off(&mut m);

    // Second boot: the same disk is a cache now, opened, not formatted again.
    let mut m = boot_to_ready(&config);
    let status = status_screen(&mut m);
    assert!(
        status.contains("cache       /dev/vda:") && status.contains("0 chunks"),
        "{status}"
    );
    assert!(!status.contains("formatted it now"), "{status}");
    power_off(&mut m);
}

#[test]
fn a_disk_holding_other_data_is_refused_not_formatted() {
    let dir = system_tests::firmware::workspace().join("target/system-tests/foreign-disk-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("foreign.img");
    let mut data = vec![0u8; 64 << 20];
    data[..20].copy_from_slice(b"precious office data");
    std::fs::write(&disk, &data).unwrap();
    let config = MachineConfig {
        disks: vec![disk.clone()],
        extra_cmdline: vec!["collective.cache=/dev/vda".into()],
        ..Default::default()
    };
    let mut m = boot_to_ready(&config);
    let status = status_screen(&mut m);
    assert!(
        status.contains("not usable: running from memory"),
        "{status}"
    );
    assert!(
        status.contains("holds data that is not a cache"),
        "{status}"
    );
    power_off(&mut m);
    assert_eq!(
        &std::fs::read(&disk).unwrap()[..20],
        b"precious office data"
    );
}

/// The line of the status screen that names `mac`.
fn nic_line(status: &str, mac: &str) -> String {
    status
        .lines()
        .find(|l| l.contains(mac))
        .unwrap_or_else(|| panic!("no line for {mac}: {status}"))
        .to_string()
}

#[test]
fn several_nics_one_without_link_one_without_dhcp_and_one_plugged_in_late() {
    let lonely = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = lonely.local_addr().unwrap().port();
    drop(lonely);
    let config = MachineConfig {
        extra_args: [
            // A network with nobody on it: link up, no DHCP server.
            "-netdev",
            &format!("socket,id=quiet,udp=127.0.0.1:9,localaddr=127.0.0.1:{port}"),
            "-device",
            "e1000,netdev=quiet,mac=52:54:00:00:00:02",
            // A cable not plugged in (yet).
            "-netdev",
            "user,id=later",
            "-device",
            "e1000,netdev=later,id=unplugged,mac=52:54:00:00:00:03",
        ]
        .map(String::from)
        .to_vec(),
        ..MachineConfig::default()
    };
    let mut m = Machine::boot(firmware(), &config).expect("start QEMU");
    m.monitor("set_link unplugged off").unwrap();
    m.expect("ready in", BOOT).unwrap();
    m.expect("login:", SHORT).unwrap();
    m.expect("no DHCP offer yet", BOOT).unwrap();
    m.expect("login:", SHORT).unwrap();
    let status = status_screen(&mut m);
    assert!(
        nic_line(&status, "52:54:00:12:34:56").contains("address: 10.0.2.15/24 via 10.0.2.2"),
        "{status}"
    );
    assert!(
        nic_line(&status, "52:54:00:00:00:02").contains("no DHCP offer yet"),
        "{status}"
    );
    assert!(
        nic_line(&status, "52:54:00:00:00:03").contains("no link yet"),
        "{status}"
    );

    // The cable goes in: that NIC gets its address.
    m.monitor("set_link unplugged on").unwrap();
    m.expect("52:54:00:00:00:03, link up, address: 10.0.2.15/24", BOOT)
        .unwrap();
    m.expect("login:", SHORT).unwrap();

    // A NIC plugged in while the terminal runs (PCI hotplug) is brought up too.
    m.monitor("netdev_add user,id=hot").unwrap();
    m.monitor("device_add virtio-net-pci,netdev=hot,mac=52:54:00:00:00:04")
        .unwrap();
    m.expect("52:54:00:00:00:04, link up, address: 10.0.2.15/24", BOOT)
        .unwrap();
    m.expect("login:", SHORT).unwrap();
    power_off(&mut m);
}
