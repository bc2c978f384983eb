//! Loading kernel modules the way modprobe would, without modprobe.
//!
//! The image builder ships `modules.dep`, `modules.alias` and `modules.softdep`
//! regenerated for exactly the modules in the initramfs. A module is loaded after its
//! dependencies (loading `virtio` before `virtio_ring` fails with "unknown symbol"), with
//! `finit_module`, and at most once. Several threads may ask for modules at once (the
//! boot's coldplug pass and the hotplug listener); the kernel sorts out a race on the
//! same module with `EEXIST`, which counts as success.

use log::{debug, info, warn};
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;
use support::kmod::{normalize, parse_builtin, parse_dep_line};

/// The module indexes for one kernel release.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name -> (path relative to `dir`, dependency names)
    deps: HashMap<String, (String, Vec<String>)>,
    /// modalias bus prefix (text before the first `:`) -> (pattern, module)
    aliases: HashMap<String, Vec<(String, String)>>,
    /// name -> modules to load before it
    soft_pre: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
}

fn bus_of(alias: &str) -> &str {
    alias.split(':').next().unwrap_or(alias)
}

impl ModuleIndex {
    /// Reads the indexes from `/lib/modules/<release>`. Missing files give an empty index
    /// (and a warning), never a failure: the terminal must still come up.
    pub fn load(dir: &Path) -> ModuleIndex {
        let read = |name: &str| match fs::read_to_string(dir.join(name)) {
            Ok(text) => text,
            Err(e) => {
                if name != "modules.softdep" {
                    warn!("cannot read {}: {e}", dir.join(name).display());
                }
                String::new()
            }
        };
        let mut index = ModuleIndex::parse(
            &read("modules.dep"),
            &read("modules.alias"),
            &read("modules.softdep"),
            &read("modules.builtin"),
        );
        index.dir = dir.to_path_buf();
        index
    }

    pub fn parse(dep: &str, alias: &str, softdep: &str, builtin: &str) -> ModuleIndex {
        let mut index = ModuleIndex::default();
        for (name, path, deps) in dep.lines().filter_map(parse_dep_line) {
            index.deps.insert(name, (path, deps));
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                index
                    .aliases
                    .entry(bus_of(pattern).to_string())
                    .or_default()
                    .push((pattern.to_string(), normalize(module)));
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    m if in_pre => pre.push(normalize(m)),
                    _ => {}
                }
            }
            index.soft_pre.insert(normalize(module), pre);
        }
        index.builtin = parse_builtin(builtin).collect();
        index
    }

    pub fn knows(&self, name: &str) -> bool {
        let name = normalize(name);
        self.deps.contains_key(&name) || self.builtin.contains(&name)
    }

    /// The modules whose alias patterns match a device's modalias, in index order.
    pub fn modules_for_alias(&self, modalias: &str) -> Vec<String> {
        let mut found: Vec<String> = Vec::new();
        if let Some(candidates) = self.aliases.get(bus_of(modalias)) {
            for (pattern, module) in candidates {
                if !found.contains(module) && fnmatch(pattern.as_bytes(), modalias.as_bytes()) {
                    found.push(module.clone());
                }
            }
        }
        found
    }

    /// A name, or an alias such as `net-pf-7` or `char-major-10-200`, resolved to modules.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = normalize(name_or_alias);
        if self.knows(&name) {
            return vec![name];
        }
        self.modules_for_alias(name_or_alias)
    }
}

/// Shell-style matching with `*`, `?` and `[...]`, as modules.alias patterns use.
pub fn fnmatch(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star_p, mut star_t) = (None, 0);
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star_p = Some(p);
                    star_t = t;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        // An unterminated class matches a literal '['.
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star_p {
            Some(sp) => {
                p = sp + 1;
                star_t += 1;
                t = star_t;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `pattern`; returns whether it
/// matched and the class's length, or `None` if the class is unterminated.
fn match_class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let lo = pattern[i];
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&hi| hi != b']') {
            let hi = pattern[i + 2];
            matched |= lo <= c && c <= hi;
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
    None
}

/// Loads modules with their dependencies, remembering what is loaded and what failed.
pub struct Loader {
    index: ModuleIndex,
    loaded: Mutex<HashSet<String>>,
    failed: Mutex<HashMap<String, String>>,
}

impl Loader {
    pub fn new(index: ModuleIndex) -> Loader {
        Loader {
            index,
            loaded: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// Loads the modules a device's modalias asks for. Returns the ones newly loaded.
    pub fn load_for_modalias(&self, modalias: &str) -> Vec<String> {
        let mut newly = Vec::new();
        for module in self.index.modules_for_alias(modalias) {
            if let Ok(true) = self.load(&module) {
                newly.push(module);
            }
        }
        newly
    }

    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }

    /// Loads many modules at once, each on its own thread (at most `max_threads`).
    ///
    /// Module loading mostly waits: RCU grace periods, TLB shootdowns, a NIC's reset
    /// delays. Loading independent drivers side by side turns the sum of those waits into
    /// the longest chain of them. Returns the modules loaded and the failures.
    pub fn load_parallel(
        &self,
        modules: &[String],
        max_threads: usize,
    ) -> (Vec<String>, Vec<String>) {
        let queue = Mutex::new(
            modules
                .iter()
                .cloned()
                .collect::<std::collections::VecDeque<_>>(),
        );
        let loaded = Mutex::new(Vec::new());
        let failed = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..max_threads.clamp(1, modules.len().max(1)) {
                scope.spawn(|| loop {
                    let Some(module) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return;
                    };
                    match self.load(&module) {
                        Ok(true) => loaded.lock().map(|mut l| l.push(module)).unwrap_or(()),
                        Ok(false) => {}
                        Err(e) => failed.lock().map(|mut f| f.push(e)).unwrap_or(()),
                    }
                });
            }
        });
        (
            loaded.into_inner().unwrap_or_default(),
            failed.into_inner().unwrap_or_default(),
        )
    }

    /// Loads one module by name or alias, dependencies first. `Ok(true)` if this call
    /// loaded it, `Ok(false)` if it was already there or built in.
    pub fn load(&self, name_or_alias: &str) -> Result<bool, String> {
        let targets = self.index.resolve(name_or_alias);
        if targets.is_empty() {
            return Err(format!("module {name_or_alias} is not in this firmware"));
        }
        let mut any = false;
        for target in targets {
            any |= self.load_one(&target, 0)?;
        }
        Ok(any)
    }

    fn load_one(&self, name: &str, depth: usize) -> Result<bool, String> {
        if depth > 32 {
            return Err(format!(
                "module {name}: dependency chain too deep (a cycle?)"
            ));
        }
        if self.index.builtin.contains(name) || self.is_loaded(name) {
            return Ok(false);
        }
        if let Some(reason) = self.failed.lock().ok().and_then(|f| f.get(name).cloned()) {
            return Err(reason);
        }
        let Some((path, deps)) = self.index.deps.get(name) else {
            return Err(format!("module {name} is not in this firmware"));
        };
        for pre in self.index.soft_pre.get(name).into_iter().flatten() {
            // Soft dependencies are optional by definition.
            if self.index.knows(pre) {
                let _ = self.load_one(pre, depth + 1);
            }
        }
        for dep in deps {
            self.load_one(dep, depth + 1)
                .map_err(|e| format!("module {name} needs {dep}: {e}"))?;
        }
        let started = Instant::now();
        let params = module_params(kernel_cmdline(), name);
        if !params.is_empty() {
            info!("module {name}: parameters from the command line: {params}");
        }
        let result = insert_module(&self.index.dir.join(path), &params);
        match result {
            Ok(()) | Err(Errno::EEXIST) => {
                if let Ok(mut loaded) = self.loaded.lock() {
                    loaded.insert(name.to_string());
                }
                if result.is_ok() {
                    debug!(
                        "loaded module {name} in {} ms",
                        started.elapsed().as_millis()
                    );
                }
                Ok(result.is_ok())
            }
            Err(e) => {
                let reason = format!("loading module {name}: {}", describe_errno(e));
                if let Ok(mut failed) = self.failed.lock() {
                    failed.insert(name.to_string(), reason.clone());
                }
                Err(reason)
            }
        }
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        let known = self
            .loaded
            .lock()
            .map(|l| l.contains(name))
            .unwrap_or(false);
        known
            || Path::new("/sys/module")
                .join(name)
                .join("initstate")
                .exists()
    }

    /// Modules loaded by this process, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .loaded
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn insert_module(path: &Path, params: &str) -> Result<(), Errno> {
    let file =
        File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    let params = CString::new(params).unwrap_or_default();
    finit_module(&file, &params, ModuleInitFlags::empty())
}

/// The parameters the kernel command line gives module `name` (`kvm_amd.nested=1
/// i915.enable_guc=0`), as `finit_module` takes them (`nested=1`). The kernel applies
/// `module.param=` only to built-in drivers; for loadable ones modprobe reads
/// `/proc/cmdline`, and we are the modprobe here: a quirk an administrator puts on the
/// terminal's command line must reach the driver it names. `-` and `_` in module names
/// are the same, as for the kernel. Values with spaces (quoted) are not supported.
pub fn module_params(cmdline: &str, name: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let want = norm(name);
    cmdline
        .split_whitespace()
        .filter_map(|word| {
            let (module, param) = word.split_once('.')?;
            // `root=/dev/sda1.2` is not a module parameter: a module name has no `=`.
            (!module.contains('=') && norm(module) == want && !param.is_empty())
                .then(|| param.to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The running kernel's command line, read once.
fn kernel_cmdline() -> &'static str {
    static CMDLINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CMDLINE.get_or_init(|| fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

fn describe_errno(e: Errno) -> String {
    match e {
        Errno::ENODEV => {
            "no such device (the hardware this driver needs is absent or disabled)".into()
        }
        Errno::ENOEXEC => {
            "not a module for this kernel (wrong kernel version in the image?)".into()
        }
        Errno::EIO => "input/output error (the device refused to initialise)".into(),
        e => format!("{} ({})", e.desc(), e),
    }
}

/// `modprobe` mode: the kernel runs `/sbin/modprobe -q -- NAME` for `request_module()`
/// (a bridge asking for `net-pf-7`, for instance). `/sbin/modprobe` links to our init.
pub fn modprobe_main(args: &[String], modules_dir: &Path) -> i32 {
    let names: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if names.is_empty() {
        eprintln!("usage: modprobe [-q] [--] MODULE");
        return 1;
    }
    let loader = Loader::new(ModuleIndex::load(modules_dir));
    let mut status = 0;
    for name in names {
        match loader.load(name) {
            Ok(_) => info!("modprobe: {name} loaded"),
            Err(e) => {
                debug!("modprobe {name}: {e}");
                status = 1;
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_parameters_reach_the_module_they_name() {
        let cmdline = "root=/dev/vda1.2 quiet kvm_amd.nested=1 kvm-amd.vgif=0 kvm.ignore_msrs=1 i915.enable_guc=0 kvm_amd.";
        assert_eq!(module_params(cmdline, "kvm_amd"), "nested=1 vgif=0");
        assert_eq!(module_params(cmdline, "kvm-amd"), "nested=1 vgif=0");
        assert_eq!(module_params(cmdline, "kvm"), "ignore_msrs=1");
        assert_eq!(module_params(cmdline, "e1000e"), "");
        assert_eq!(module_params(cmdline, "root"), "");
    }

    use super::*;

    #[test]
    fn fnmatch_handles_the_modalias_pattern_forms() {
        assert!(fnmatch(
            b"pci:v00008086d000010D3sv*sd*bc*sc*i*",
            b"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
        ));
        assert!(!fnmatch(
            b"pci:v00008086d000010D3sv*sd*bc*sc*i*",
            b"pci:v00008086d000010D4sv00008086sd00000000bc02sc00i00"
        ));
        assert!(fnmatch(b"virtio:d00000001v*", b"virtio:d00000001v00001AF4"));
        assert!(fnmatch(b"a?c", b"abc"));
        assert!(fnmatch(
            b"usb:v*p*d*dc*dsc*dp*ic08isc0[1-6]ip50in*",
            b"usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(!fnmatch(b"x[!0-9]", b"x5"));
        assert!(fnmatch(b"x[!0-9]", b"xa"));
        assert!(fnmatch(b"*", b""));
        assert!(!fnmatch(b"a", b""));
        assert!(fnmatch(b"acpi*:PNP0C0C:*", b"acpi:PNP0C0C:"));
    }

    fn sample() -> ModuleIndex {
        ModuleIndex::parse(
            "kernel/virtio_net.ko: kernel/net_failover.ko kernel/failover.ko\nkernel/net_failover.ko: kernel/failover.ko\nkernel/failover.ko:\nkernel/bridge.ko: kernel/stp.ko\nkernel/stp.ko:\n",
            "alias virtio:d00000001v* virtio_net\nalias net-pf-7 bridge\n",
            "softdep bridge pre: stp\n",
            "kernel/af_packet.ko\n",
        )
    }

    #[test]
    fn aliases_resolve_to_modules() {
        let index = sample();
        assert_eq!(
            index.modules_for_alias("virtio:d00000001v00001AF4"),
            vec!["virtio_net"]
        );
        assert!(index.modules_for_alias("pci:v0000ABCDd*").is_empty());
        assert_eq!(index.resolve("net-pf-7"), vec!["bridge"]);
        assert_eq!(index.resolve("virtio-net"), vec!["virtio_net"]);
        assert!(index.knows("af_packet"));
    }

    #[test]
    fn unknown_module_is_a_clear_error() {
        let loader = Loader::new(sample());
        let err = loader.load("nvidia").unwrap_err();
        assert!(err.contains("not in this firmware"), "{err}");
        // Built in: nothing to do, not an error.
        assert_eq!(loader.load("af_packet"), Ok(false));
    }
}
