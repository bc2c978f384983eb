//! Kernel module names, as `modules.dep`, `modules.alias` and `modules.builtin` write
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_strip_compression_suffixes() {
        assert_eq!(
            module_name_of_path("kernel/a/usb-storage.ko.xz"),
            "usb_storage"
        );
        assert_eq!(module_name_of_path("kernel/b/virtio_net.ko.zst"), "virtio_net");
        assert_eq!(module_name_of_path("kernel/c/vfat.ko.gz"), "vfat");
        assert_eq!(module_name_of_path("e1000e.ko"), "e1000e");
        assert_eq!(normalize("snd-hda-intel"), "snd_hda_intel");
    }
}
