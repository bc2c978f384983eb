//! The terminal end to end: PXE boot, log in, work in an appliance, log out; another
//! terminal, a reboot from the cache, an update, a wrong password, offline work and a fill
//! cut short by a power loss. Everything real: the firmware in QEMU (TCG) booted through
//! iPXE and QEMU's TFTP, `collective-repo serve` on loopback, the appliances under our VMM
//! on the firmware's nested KVM.

use std::path::{Path, PathBuf};
use std::time::Duration;
use system_tests::demo::{self, DemoRepo, RepoServer};
use system_tests::{Firmware, Machine, MachineConfig, Nic};

const SHORT: Duration = Duration::from_secs(60);
/// Login to a running desk: fill (cold or warm) plus a nested appliance boot.
const APPLIANCE: Duration = Duration::from_secs(300);

/// One test's world: its repository, server, PXE folder.
struct World {
    dir: PathBuf,
    repo: DemoRepo,
    server: RepoServer,
    pxe: Firmware,
}

impl World {
    fn new(name: &str) -> World {
        let dir =
            std::env::temp_dir().join(format!("collective-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let repo = DemoRepo::create(&dir).expect("demo repository");
        let server = repo.serve().expect("collective-repo serve");
        let fw = demo::terminal_firmware().expect("terminal firmware");
        let pxe = demo::pxe_folder(&fw, &dir.join("pxe"), &server.guest_url()).unwrap();
        World {
            dir,
            repo,
            server,
            pxe,
        }
    }

    fn disk(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        if !path.exists() {
            demo::empty_disk(&path, 1 << 30).unwrap();
        }
        path
    }

    /// PXE-boots a terminal with `disk` as its cache and waits for its login screen and
    /// DHCP address.
    fn boot(&self, nic: Nic, disk: Option<&Path>) -> Machine {
        demo::boot_terminal(&self.pxe, nic, disk).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Logs in and waits for the desk appliance's shell; returns what the screen showed.
fn log_in(m: &mut Machine) -> String {
    m.send_line(demo::USER).unwrap();
    m.expect("Password:", SHORT).unwrap();
    m.send_line(demo::PASSWORD).unwrap();
    let before = m.expect(demo::DESK_READY, APPLIANCE).unwrap();
    let after = m.expect(demo::DESK_PROMPT, SHORT).unwrap();
    format!("{before}{}{after}", demo::DESK_READY)
}

/// Runs a shell command in the desk appliance and returns its output.
fn desk(m: &mut Machine, command: &str) -> String {
    m.send_line(command).unwrap();
    m.expect(demo::DESK_PROMPT, SHORT).unwrap()
}

/// Powers the desk off from its shell, logs out with the logout key, and returns the
/// logout screen.
fn log_out(m: &mut Machine) -> String {
    m.send_line("exit").unwrap();
    m.expect("desk ended: powered off", SHORT).unwrap();
    m.send_bytes(b"\x01q").unwrap();
    let screen = m.expect("Logged out.", SHORT).unwrap();
    m.expect("login:", SHORT).unwrap();
    screen
}

fn status_screen(m: &mut Machine) -> String {
    m.status_screen().unwrap()
}

fn power_off(m: &mut Machine) {
    m.power_off().unwrap()
}

/// `disk`: the terminal's cache disk; `None` runs the terminal from memory.
fn walk_up_and_work(nic: Nic, name: &str, with_disk: bool) {
    let world = World::new(name);
    let mut m = if with_disk {
        world.boot(nic, Some(&world.disk("cache.img")))
    } else {
        world.boot(nic, None)
    };
    let status = status_screen(&mut m);
    if !with_disk {
        assert!(status.contains("running from memory"), "{status}");
    }
    let screen = log_in(&mut m);
    assert!(
        screen.contains("alice logged in; 2 appliance(s)"),
        "{screen}"
    );
    assert!(
        screen.contains("desk"),
        "no progress bar for desk: {screen}"
    );
    assert!(screen.contains("web"), "no progress bar for web: {screen}");
    assert!(screen.contains("version 1"), "{screen}");

    // The second appliance on the same appliance network answers.
    let page = desk(
        &mut m,
        "for i in $(seq 60); do wget -q -O - http://10.0.0.1/ && break; sleep 1; done",
    );
    assert!(page.contains(demo::WEB_PAGE), "{page}");
    // A file on the user disk.
    let out = desk(
        &mut m,
        "echo 'notes from the first terminal' > notes.txt; cat /home/notes.txt",
    );
    assert!(out.contains("notes from the first terminal"), "{out}");

    if with_disk {
        let screen = log_out(&mut m);
        assert!(screen.contains("desk/user: saved as version 1"), "{screen}");
        assert!(screen.contains("web ended: stopped at logout"), "{screen}");
    } else {
        // The other way out: switch to web's console and power it off too; when the last
        // appliance has ended, the session logs out by itself.
        m.send_line("exit").unwrap();
        m.expect("desk ended: powered off", SHORT).unwrap();
        m.send_bytes(b"\x01n").unwrap();
        m.expect("console 2 of 2: web", SHORT).unwrap();
        m.expect("web:/# ", SHORT).unwrap();
        m.send_line("poweroff -f").unwrap();
        m.expect("web ended: powered off", SHORT).unwrap();
        let screen = m.expect("Logged out.", SHORT).unwrap();
        assert!(screen.contains("desk/user: saved as version 1"), "{screen}");
        m.expect("login:", SHORT).unwrap();
    }
    power_off(&mut m);
}

#[test]
fn walk_up_log_in_work_log_out_over_pxe_with_virtio_net() {
    walk_up_and_work(Nic::VirtioNet, "virtio", true);
}

#[test]
fn walk_up_log_in_work_log_out_over_pxe_with_e1000e_and_no_cache_disk() {
    walk_up_and_work(Nic::E1000e, "e1000e", false);
}

#[test]
fn another_terminal_finds_the_file_a_reboot_fetches_nothing_and_an_update_only_new_chunks() {
    let world = World::new("roaming");
    let (disk1, disk2) = (world.disk("cache1.img"), world.disk("cache2.img"));

    let mut t1 = world.boot(Nic::VirtioNet, Some(&disk1));
    log_in(&mut t1);
    desk(&mut t1, "echo 'written on terminal one' > notes.txt");
    log_out(&mut t1);
    power_off(&mut t1);

    // Another terminal with an empty cache: same appliances, same file.
    let mut t2 = world.boot(Nic::E1000e, Some(&disk2));
    log_in(&mut t2);
    let out = desk(&mut t2, "cat /home/notes.txt");
    assert!(out.contains("written on terminal one"), "{out}");
    log_out(&mut t2);
    power_off(&mut t2);

    // The first terminal boots again: the appliances come from its cache.
    let desk1 = world.repo.manifest("desk", 1).unwrap();
    let web1 = world.repo.manifest("web", 1).unwrap();
    let mut v1_system = demo::system_chunks(&desk1);
    v1_system.extend(demo::system_chunks(&web1));
    let before = world.server.chunk_gets().len();
    let mut t1 = world.boot(Nic::VirtioNet, Some(&disk1));
    log_in(&mut t1);
    let out = desk(&mut t1, "cat /home/notes.txt");
    assert!(out.contains("written on terminal one"), "{out}");
    log_out(&mut t1);
    let refetched: Vec<String> = world.server.chunk_gets()[before..]
        .iter()
        .filter(|id| v1_system.contains(*id))
        .cloned()
        .collect();
    assert!(
        refetched.is_empty(),
        "system chunks fetched again after a reboot: {refetched:?}"
    );

    // A new version of desk: the next login fetches only its new chunks.
    world.repo.publish_desk(2).unwrap();
    let desk2 = world.repo.manifest("desk", 2).unwrap();
    let new_chunks: std::collections::BTreeSet<String> = demo::system_chunks(&desk2)
        .difference(&v1_system)
        .cloned()
        .collect();
    assert!(!new_chunks.is_empty());
    let before = world.server.chunk_gets().len();
    let screen = log_in(&mut t1);
    assert!(screen.contains("desk         v2"), "{screen}");
    assert!(screen.contains("version 2"), "{screen}");
    let out = desk(&mut t1, "cat /home/notes.txt");
    assert!(out.contains("written on terminal one"), "{out}");
    log_out(&mut t1);
    let fetched: std::collections::BTreeSet<String> = world.server.chunk_gets()[before..]
        .iter()
        .cloned()
        .collect();
    let fetched_system: std::collections::BTreeSet<String> = fetched
        .iter()
        .filter(|id| demo::system_chunks(&desk2).contains(*id) || v1_system.contains(*id))
        .cloned()
        .collect();
    assert_eq!(
        fetched_system, new_chunks,
        "the update fetched other chunks than the new ones"
    );
    eprintln!(
        "update: {} new system chunk(s) of {} fetched",
        new_chunks.len(),
        demo::system_chunks(&desk2).len()
    );
    power_off(&mut t1);
}

#[test]
fn wrong_password_power_loss_mid_fill_and_offline_work() {
    let mut world = World::new("failures");
    let disk = world.disk("cache.img");
    let mut m = world.boot(Nic::E1000e, Some(&disk));

    m.send_line(demo::USER).unwrap();
    m.expect("Password:", SHORT).unwrap();
    m.send_line("not-the-password").unwrap();
    let reply = m.expect("login:", SHORT).unwrap();
    assert!(
        reply.contains("Login failed: wrong user name or password"),
        "{reply}"
    );

    // Power lost while the cache fills.
    m.send_line(demo::USER).unwrap();
    m.expect("Password:", SHORT).unwrap();
    m.send_line(demo::PASSWORD).unwrap();
    m.expect("alice logged in", APPLIANCE).unwrap();
    drop(m);

    let mut m = world.boot(Nic::E1000e, Some(&disk));
    log_in(&mut m);
    desk(&mut m, "echo 'online line' > notes.txt");
    log_out(&mut m);

    // The repository goes away: offline login from the cache.
    let port = world.server.port;
    world.server.stop();
    let screen = log_in(&mut m);
    assert!(screen.contains("OFFLINE"), "{screen}");
    let out = desk(&mut m, "cat notes.txt; echo 'offline line' >> notes.txt");
    assert!(out.contains("online line"), "{out}");
    let screen = log_out(&mut m);
    assert!(
        screen.contains("your changes stay in this terminal's cache"),
        "{screen}"
    );

    // Back online: the offline work is there and reaches the repository.
    world.server = world.repo.serve_on(port).unwrap();
    let screen = log_in(&mut m);
    assert!(!screen.contains("OFFLINE"), "{screen}");
    let out = desk(&mut m, "cat notes.txt");
    assert!(out.contains("offline line"), "{out}");
    let screen = log_out(&mut m);
    assert!(screen.contains("desk/user: saved as version 2"), "{screen}");
    power_off(&mut m);
}

/// A person types the login at the first prompt while the terminal's cable is still
/// unplugged: the session waits for the network (saying so) instead of calling the
/// repository unreachable, and logs in once the cable is in.
#[test]
fn a_login_typed_before_the_network_is_up_waits_for_it() {
    let world = World::new("early-login");
    let disk = world.disk("cache.img");
    let fw = demo::terminal_firmware().expect("terminal firmware");
    let config = MachineConfig {
        nic: Nic::None,
        extra_cmdline: vec![format!(
            "collective.repo={}",
            world.server.guest_url().trim_end_matches('/')
        )],
        disks: vec![disk],
        extra_args: [
            "-netdev",
            "user,id=lan",
            "-device",
            "virtio-net-pci,netdev=lan,id=cable,mac=52:54:00:12:34:56",
        ]
        .map(String::from)
        .to_vec(),
        ..MachineConfig::default()
    };
    let mut m = Machine::boot(&fw, &config).expect("start QEMU");
    // Unplugged before the kernel has even found the card.
    m.monitor("set_link cable off").unwrap();
    m.expect("login:", SHORT).unwrap();
    m.send_line(demo::USER).unwrap();
    m.expect("Password:", SHORT).unwrap();
    m.send_line(demo::PASSWORD).unwrap();
    m.expect("Waiting for the network to reach 10.0.2.2", SHORT)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    m.monitor("set_link cable on").unwrap();
    let screen = m.expect(demo::DESK_READY, APPLIANCE).unwrap();
    assert!(screen.contains("The network is up."), "{screen}");
    assert!(
        !screen.contains("cannot be reached"),
        "the login did not wait: {screen}"
    );
    m.expect(demo::DESK_PROMPT, SHORT).unwrap();
    log_out(&mut m);
    power_off(&mut m);
}
