//! The nested VMM benchmark's driver, run inside the firmware (by `collective.autorun=`).
//!
//! Boots the test appliance under our VMM and under `qemu-system-x86_64 -M microvm`,
//! alternately, `RUNS` times each: the same kernel, initrd and root image on the same
//! `/dev/kvm`. Measures the time from starting the VMM to the guest's marker, and the
//! VMM's own memory (its RSS minus the RSS of the guest-memory mapping) sampled while the
//! guest is still up. Prints `NESTED-BENCH ...` lines and `NESTED-BENCH DONE`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MEMORY_MIB: u64 = 512;
const APPEND: &str = "console=ttyS0 loglevel=4 probe.file=/probe.txt probe.hold_ms=1500";

struct Sample {
    seconds: f64,
    own_mib: f64,
}

fn ours() -> Command {
    let mut c = Command::new("/bin/vmm");
    c.args([
        "run",
        "--kernel",
        "/appliance/vmlinuz",
        "--initrd",
        "/appliance/initrd.img",
        "--cmdline",
        APPEND,
    ])
    .args([
        "--disk",
        "/appliance/root.img,ro",
        "--disk",
        "/tmp/scratch.img",
        "--memory",
        &MEMORY_MIB.to_string(),
        "--vcpus",
        "2",
        "--no-input",
        "--no-rng",
    ]);
    c
}

fn qemu() -> Command {
    let mut c = Command::new("/usr/bin/qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,rtc=on",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        "2",
        "-m",
        &MEMORY_MIB.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-L",
        "/usr/share/qemu",
    ])
    .args([
        "-kernel",
        "/appliance/vmlinuz",
        "-initrd",
        "/appliance/initrd.img",
        "-append",
        APPEND,
    ])
    .args([
        "-drive",
        "id=root,file=/appliance/root.img,format=raw,if=none,readonly=on",
        "-device",
        "virtio-blk-device,drive=root",
    ])
    .args([
        "-drive",
        "id=scratch,file=/tmp/scratch.img,format=raw,if=none",
        "-device",
        "virtio-blk-device,drive=scratch",
    ]);
    c
}

/// RSS of the whole process and of its guest-memory mapping (the one anonymous mapping
/// at least as large as the guest's RAM), in KiB, from /proc/PID/smaps.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut mapping_kib = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(v)) => mapping_kib = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if mapping_kib >= MEMORY_MIB * 1024 {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    Some((total, guest))
}

/// `diag` (second argument): per-run diagnostics of the nested host (THP, vmstat, CPU
/// use, the guest mapping's huge pages, teardown time, the VMM's own debug log).
fn diag_enabled() -> bool {
    std::env::args().nth(2).as_deref() == Some("diag")
}

fn read_kv(path: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let k = w.next()?.trim_end_matches(':').to_string();
            Some((k, w.next()?.parse().ok()?))
        })
        .collect()
}

/// CPU jiffies (user, nice, system, idle, iowait, irq, softirq, steal) from /proc/stat.
fn cpu_jiffies() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// utime+stime jiffies of every task (processes and kernel threads) by "pid comm".
fn task_jiffies() -> std::collections::HashMap<String, u64> {
    let mut m = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let t = rest
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + rest
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        m.insert(format!("{name} {comm}"), t);
    }
    m
}

struct Snapshot {
    vmstat: Vec<(String, u64)>,
    cpu: Vec<u64>,
    tasks: std::collections::HashMap<String, u64>,
}

fn snapshot() -> Snapshot {
    Snapshot {
        vmstat: read_kv("/proc/vmstat"),
        cpu: cpu_jiffies(),
        tasks: task_jiffies(),
    }
}

fn diag(msg: &str) {
    println!("NESTED-BENCH diag {msg}\r");
}

/// What happened between two snapshots: CPU use, vmstat counters of interest, the
/// busiest tasks.
fn diag_diff(what: &str, a: &Snapshot, b: &Snapshot) {
    let names = [
        "user", "nice", "sys", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let cpu: Vec<String> = names
        .iter()
        .zip(a.cpu.iter().zip(&b.cpu))
        .map(|(n, (x, y))| format!("{n} {:.2}", (y - x) as f64 / 100.0))
        .collect();
    diag(&format!("{what}: cpu s: {}", cpu.join(", ")));
    let before: std::collections::HashMap<_, _> = a.vmstat.iter().cloned().collect();
    let interesting = [
        "thp_",
        "compact_",
        "pgfault",
        "pgmajfault",
        "pgalloc_normal",
        "pgfree",
        "pgscan",
        "pgsteal",
        "kswapd",
        "drop_",
        "nr_free_pages",
        "nr_anon_pages",
        "nr_anon_transparent",
        "nr_shmem",
        "nr_file_pages",
        "pgmigrate",
        "numa_",
    ];
    let mut out = Vec::new();
    for (k, v) in &b.vmstat {
        if !interesting.iter().any(|p| k.starts_with(p)) {
            continue;
        }
        let d = *v as i64 - *before.get(k).unwrap_or(&0) as i64;
        if d != 0 {
            out.push(format!("{k} {d:+}"));
        }
    }
    diag(&format!("{what}: vmstat: {}", out.join(", ")));
    let mut tasks: Vec<(i64, &String)> = b
        .tasks
        .iter()
        .map(|(k, v)| (*v as i64 - *a.tasks.get(k).unwrap_or(&0) as i64, k))
        .filter(|(d, _)| *d > 0)
        .collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.0));
    let top: Vec<String> = tasks
        .iter()
        .take(8)
        .map(|(d, k)| format!("{k} {:.2}", *d as f64 / 100.0))
        .collect();
    diag(&format!("{what}: busiest tasks (s): {}", top.join(", ")));
}

fn diag_environment() {
    for f in [
        "/proc/version",
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "/sys/kernel/mm/transparent_hugepage/defrag",
        "/sys/kernel/mm/transparent_hugepage/khugepaged/defrag",
        "/sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "/proc/sys/vm/compaction_proactiveness",
        "/proc/sys/vm/overcommit_memory",
        "/sys/module/kvm_amd/parameters/npt",
        "/sys/module/kvm/parameters/nx_huge_pages",
        "/sys/module/kvm/parameters/tdp_mmu",
    ] {
        let v = std::fs::read_to_string(f).unwrap_or_else(|e| e.to_string());
        diag(&format!("{f}: {}", v.trim()));
    }
    diag_meminfo("start");
}

fn diag_meminfo(what: &str) {
    let keep = [
        "MemTotal",
        "MemFree",
        "Cached",
        "Shmem",
        "AnonPages",
        "AnonHugePages",
        "PageTables",
        "SecPageTables",
    ];
    let v: Vec<String> = read_kv("/proc/meminfo")
        .into_iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| format!("{k} {} MiB", v / 1024))
        .collect();
    diag(&format!("{what}: meminfo: {}", v.join(", ")));
}

/// The guest mapping's address, RSS and AnonHugePages (KiB) from /proc/PID/smaps.
fn diag_guest_mapping(name: &str, pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut header = String::new();
    let (mut size, mut rss, mut thp) = (0u64, 0u64, 0u64);
    let flush = |header: &str, size: u64, rss: u64, thp: u64| {
        if size >= MEMORY_MIB * 1024 {
            let start = header
                .split('-')
                .next()
                .and_then(|a| u64::from_str_radix(a, 16).ok())
                .unwrap_or(0);
            diag(&format!(
                "{name}: guest mapping {header}: start mod 2 MiB = {:#x}, Size {size} KiB, Rss {rss} KiB, AnonHugePages {thp} KiB",
                start % (2 << 20)
            ));
        }
    };
    for line in smaps.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => rss = v.parse().unwrap_or(0),
            (Some("AnonHugePages:"), Some(v)) => thp = v.parse().unwrap_or(0),
            (Some("VmFlags:"), _) => {
                flush(&header, size, rss, thp);
                diag_vmflags(&header, size, line);
                (size, rss, thp) = (0, 0, 0);
            }
            (Some(first), _) if first.contains('-') && line.len() > 40 => {
                header = line.split_whitespace().take(1).collect::<String>()
            }
            _ => {}
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let v: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("Threads") || l.starts_with("VmHWM"))
        .collect();
    diag(&format!("{name}: {}", v.join(", ").replace('\t', " ")));
}

fn diag_vmflags(header: &str, size: u64, line: &str) {
    if size >= MEMORY_MIB * 1024 {
        diag(&format!("  {header} {}", line.trim()));
    }
}

/// KVM's own counters for the VMs alive now (only the one under test): nested page table
/// entries by size and page faults fixed, from debugfs (mounted on first use).
fn diag_kvm_stats(name: &str) {
    let dir = std::path::Path::new("/sys/kernel/debug/kvm");
    if !dir.exists() {
        let _ = std::fs::create_dir_all("/sys/kernel/debug");
        let _ = nix::mount::mount(
            Some("debugfs"),
            "/sys/kernel/debug",
            Some("debugfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let v: Vec<String> = [
        "pages_4k", "pages_2m", "pages_1g", "pf_fixed", "pf_taken", "exits",
    ]
    .iter()
    .map(|f| {
        let v = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|_| "?".into());
        format!("{f} {}", v.trim())
    })
    .collect();
    diag(&format!("{name}: kvm at marker: {}", v.join(", ")));
}

/// Processes other than init and this one (a VMM left behind would show here).
fn diag_processes(what: &str) {
    let me = std::process::id().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == "1" || name == me {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{name}/cmdline")).unwrap_or_default();
        if !cmd.is_empty() {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            v.push(format!("{name}: {}", cmd.trim()));
        }
    }
    diag(&format!("{what}: user processes: {}", v.join("; ")));
}

fn run(name: &str, mut cmd: Command) -> Result<Sample, String> {
    std::fs::write("/tmp/scratch.img", vec![0u8; 4 << 20]).map_err(|e| e.to_string())?;
    let diag_on = diag_enabled();
    let log_path = format!("/tmp/{name}.stderr");
    let stderr = if diag_on {
        cmd.env("RUST_LOG", "debug");
        Stdio::from(std::fs::File::create(&log_path).map_err(|e| e.to_string())?)
    } else {
        Stdio::null()
    };
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let seconds = loop {
        let n = out.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            let _ = child.wait();
            let tail =
                String::from_utf8_lossy(&seen[seen.len().saturating_sub(600)..]).into_owned();
            return Err(format!(
                "{name}: exited before the marker; last output: {tail}"
            ));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(16).any(|w| w == b"APPLIANCE-PROBE ") {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err(format!("{name}: no marker in 300 s"));
        }
    };
    let (total, guest) = memory(child.id()).unwrap_or((0, 0));
    if diag_on {
        diag_guest_mapping(name, child.id());
        diag_meminfo(&format!("{name} at marker"));
        diag_kvm_stats(name);
    }
    let marker_at = started.elapsed().as_secs_f64();
    // Drain until exit so the guest's poweroff completes.
    while out.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    let eof_at = started.elapsed().as_secs_f64();
    let _ = child.wait();
    if diag_on {
        let exit_at = started.elapsed().as_secs_f64();
        diag(&format!(
            "{name}: marker {seconds:.2} s, stdout closed {eof_at:.2} s, process reaped {exit_at:.2} s (teardown {:.2} s after stdout closed; {:.2} s sampling)",
            exit_at - eof_at,
            marker_at - seconds
        ));
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        for line in log.lines().take(40) {
            diag(&format!("{name} log: {}", line.trim_end_matches('\r')));
        }
    }
    Ok(Sample {
        seconds,
        own_mib: total.saturating_sub(guest) as f64 / 1024.0,
    })
}

/// Waits until the nested host is idle again (at least 90% idle over 200 ms), at most
/// 10 s, and returns how long that took: a VMM's teardown goes on in the host kernel after
/// the process is reaped (freeing its VM and memory in workqueues and RCU callbacks), and
/// must not be charged to the next run.
fn settle() -> f64 {
    let start = Instant::now();
    let mut prev = cpu_jiffies();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu_jiffies();
        let d: Vec<u64> = now.iter().zip(&prev).map(|(a, b)| a - b).collect();
        prev = now;
        let total: u64 = d.iter().sum();
        let idle = d.get(3).copied().unwrap_or(0) + d.get(4).copied().unwrap_or(0);
        if total > 0 && idle * 10 >= total * 9 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let diag_on = diag_enabled();
    // Times and own memory by VMM, in run order.
    let mut times: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    if diag_on {
        diag_environment();
    }
    // The first nested boot after the host came up is faster than every later one, whatever
    // the VMM (fresh host memory): one untimed boot of each, so no side gets that bonus.
    for (name, cmd) in [("warm-up-vmm", ours()), ("warm-up-qemu-microvm", qemu())] {
        match run(name, cmd) {
            Ok(s) => println!(
                "NESTED-BENCH {name}: {:.2} s to marker (not counted)\r",
                s.seconds
            ),
            Err(e) => println!("NESTED-BENCH {name}: FAILED: {e}\r"),
        }
        settle();
    }
    let mut last = diag_on.then(snapshot);
    for i in 1..=runs {
        // With diagnostics, QEMU goes first (does the first boot of all gain from fresh
        // memory whatever the VMM?) and our VMM also runs without huge pages.
        let order: Vec<(&str, Command)> = if diag_on {
            let mut no_thp = ours();
            no_thp.env("VMM_NO_HUGEPAGES", "1");
            vec![
                ("qemu-microvm", qemu()),
                ("vmm-4k", no_thp),
                ("vmm", ours()),
            ]
        } else {
            // Alternate who goes first, so each follows the other as often as itself.
            let mut v = vec![("vmm", ours()), ("qemu-microvm", qemu())];
            if i % 2 == 0 {
                v.reverse();
            }
            v
        };
        for (name, cmd) in order {
            if let Some(prev) = &last {
                let now = snapshot();
                diag_diff(
                    &format!("before run {i} {name} (since the last run ended)"),
                    prev,
                    &now,
                );
                diag_processes(&format!("before run {i} {name}"));
                last = Some(now);
            }
            let result = run(name, cmd);
            let settled = settle();
            if let Some(prev) = &last {
                let now = snapshot();
                diag_diff(&format!("run {i} {name}"), prev, &now);
                diag_meminfo(&format!("after run {i} {name}"));
                last = Some(now);
            }
            match result {
                Ok(s) => {
                    println!(
                        "NESTED-BENCH run {i} {name}: {:.2} s to marker, own memory {:.1} MiB (host idle again {settled:.1} s after exit)\r",
                        s.seconds, s.own_mib
                    );
                    match times.iter_mut().find(|t| t.0 == name) {
                        Some(t) => {
                            t.1.push(s.seconds);
                            t.2.push(s.own_mib);
                        }
                        None => times.push((name, vec![s.seconds], vec![s.own_mib])),
                    }
                }
                Err(e) => println!("NESTED-BENCH run {i} {name}: FAILED: {e}\r"),
            }
        }
    }
    for (name, t, _) in &times {
        let all: Vec<String> = t.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "NESTED-BENCH {name}: every run {} s; median {:.2} s\r",
            all.join(", "),
            median(t.clone())
        );
    }
    let get = |name: &str| times.iter().find(|t| t.0 == name);
    let (ot, qt, om, qm) = (
        median(get("vmm").map(|t| t.1.clone()).unwrap_or_default()),
        median(get("qemu-microvm").map(|t| t.1.clone()).unwrap_or_default()),
        median(get("vmm").map(|t| t.2.clone()).unwrap_or_default()),
        median(get("qemu-microvm").map(|t| t.2.clone()).unwrap_or_default()),
    );
    println!("NESTED-BENCH median time to marker: vmm {ot:.2} s, qemu microvm {qt:.2} s, ratio {:.3} (aim: at most 0.9)\r", ot / qt);
    println!(
        "NESTED-BENCH median own memory: vmm {om:.1} MiB, qemu microvm {qm:.1} MiB, ratio {:.3}\r",
        om / qm
    );
    println!("NESTED-BENCH DONE\r");
}
