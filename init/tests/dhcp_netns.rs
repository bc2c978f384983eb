//! Our DHCP client against a real DHCP server (dnsmasq), across a veth pair between two
//! network namespaces this test creates. Needs root, `ip` and `dnsmasq` (both installed
//! by `make deps`); without root it says so and passes nothing off as tested.

use collective_init::network::obtain_lease;
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::time::Duration;

struct Namespaces {
    server: String,
    client: String,
    dnsmasq: Option<Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

impl Namespaces {
    fn new(tag: &str) -> Namespaces {
        let id = format!("{}{}", tag, std::process::id() % 100000);
        let ns = Namespaces {
            server: format!("cts-{id}"),
            client: format!("ctc-{id}"),
            dnsmasq: None,
        };
        ip(&["netns", "add", &ns.server]);
        ip(&["netns", "add", &ns.client]);
        ip(&[
            "link", "add", "vs0", "netns", &ns.server, "type", "veth", "peer", "name", "vc0",
            "netns", &ns.client,
        ]);
        ip(&[
            "-n",
            &ns.server,
            "addr",
            "add",
            "192.168.77.1/24",
            "dev",
            "vs0",
        ]);
        ip(&["-n", &ns.server, "link", "set", "vs0", "up"]);
        ip(&[
            "-n",
            &ns.client,
            "link",
            "set",
            "vc0",
            "address",
            "52:54:00:ab:cd:ef",
        ]);
        ip(&["-n", &ns.client, "link", "set", "vc0", "up"]);
        ip(&["-n", &ns.client, "link", "set", "lo", "up"]);
        ns
    }

    fn start_dnsmasq(&mut self, extra: &[&str]) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
                "--interface=vs0",
                "--bind-interfaces",
            ])
            .args([
                "--dhcp-range=192.168.77.50,192.168.77.60,255.255.255.0,12h",
                "--dhcp-option=3,192.168.77.1",
                "--dhcp-option=6,192.168.77.1",
            ])
            .args([
                "--leasefile-ro",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
            ])
            .args(extra)
            .spawn()
            .expect("start dnsmasq");
        self.dnsmasq = Some(child);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Runs `f` on a thread that has entered the client namespace.
    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.client);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open client netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter client netns");
            f()
        })
        .join()
        .expect("client thread")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
    }
}

fn have_privileges() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = Command::new("dnsmasq").arg("--version").output().is_ok()
        && Command::new("ip").arg("-V").output().is_ok();
    if !root || !tools {
        eprintln!("SKIPPED: needs root, iproute2 and dnsmasq (make deps installs them)");
    }
    root && tools
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

#[test]
fn leases_an_address_router_dns_and_repository_from_dnsmasq() {
    if !have_privileges() {
        return;
    }
    let mut ns = Namespaces::new("a");
    ns.start_dnsmasq(&["--dhcp-option-force=224,http://192.168.77.1:8080"]);
    let lease =
        ns.in_client(|| obtain_lease("vc0", &MAC, "terminal-test", Duration::from_secs(20)));
    let lease = lease.expect("a lease from dnsmasq");
    let octets = lease.address.octets();
    assert_eq!(&octets[..3], &[192, 168, 77], "{lease:?}");
    assert!((50..=60).contains(&octets[3]), "{lease:?}");
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.router, Some(Ipv4Addr::new(192, 168, 77, 1)));
    assert_eq!(lease.dns, vec![Ipv4Addr::new(192, 168, 77, 1)]);
    assert_eq!(lease.server, Ipv4Addr::new(192, 168, 77, 1));
    assert_eq!(lease.lease_time, Duration::from_secs(12 * 3600));
    assert_eq!(lease.repo_url.as_deref(), Some("http://192.168.77.1:8080"));
}

#[test]
fn no_server_means_a_clear_error_not_a_hang() {
    if !have_privileges() {
        return;
    }
    let ns = Namespaces::new("b");
    let started = std::time::Instant::now();
    let result =
        ns.in_client(|| obtain_lease("vc0", &MAC, "terminal-test", Duration::from_secs(3)));
    let err = result.expect_err("no DHCP server, no lease");
    assert!(err.contains("no answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}
