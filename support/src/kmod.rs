//! Kernel module names and the `modules.dep` and `modules.builtin` lines, as depmod writes
//! them: the same rules for the image builder (which picks the modules) and init (which
//! loads them).

/// Module names are spelled with `-` or `_` interchangeably; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/net/e1000/e1000.ko` -> `e1000`; compressed suffixes (`.ko.xz`,
/// `.ko.zst`, `.ko.gz`) are stripped too, and the name is [`normalize`]d.
pub fn module_name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))
        .unwrap_or(file);
    normalize(stem)
}

/// One line of `modules.dep` (`kernel/x/a.ko: kernel/y/b.ko kernel/z/c.ko`): the
/// module's name, its path as written, and its dependencies' names. `None` without a
/// `:` (an empty line, or a malformed one).
pub fn parse_dep_line(line: &str) -> Option<(String, String, Vec<String>)> {
    let (path, deps) = line.split_once(':')?;
    let deps = deps.split_whitespace().map(module_name_of_path).collect();
    Some((module_name_of_path(path), path.to_string(), deps))
}

/// The module names in `modules.builtin` (one path a line).
pub fn parse_builtin(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name_of_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_strip_compression_suffixes() {
        assert_eq!(
            module_name_of_path("kernel/a/usb-storage.ko.xz"),
            "usb_storage"
        );
        assert_eq!(
            module_name_of_path("kernel/b/virtio_net.ko.zst"),
            "virtio_net"
        );
        assert_eq!(module_name_of_path("kernel/c/vfat.ko.gz"), "vfat");
        assert_eq!(module_name_of_path("e1000e.ko"), "e1000e");
        assert_eq!(normalize("snd-hda-intel"), "snd_hda_intel");
    }

    #[test]
    fn dep_lines_and_builtins() {
        assert_eq!(
            parse_dep_line("kernel/a/kvm-amd.ko.xz: kernel/a/kvm.ko.xz kernel/b/ccp.ko.xz"),
            Some((
                "kvm_amd".to_string(),
                "kernel/a/kvm-amd.ko.xz".to_string(),
                vec!["kvm".to_string(), "ccp".to_string()]
            ))
        );
        assert_eq!(
            parse_dep_line("kernel/a/e1000.ko:"),
            Some(("e1000".into(), "kernel/a/e1000.ko".into(), vec![]))
        );
        assert_eq!(parse_dep_line("kernel/a/e1000.ko"), None);
        assert_eq!(parse_dep_line(""), None);
        let builtin: Vec<String> =
            parse_builtin("kernel/fs/ext4/ext4.ko\n\nkernel/net/af-packet.ko\n").collect();
        assert_eq!(builtin, ["ext4", "af_packet"]);
    }
}
