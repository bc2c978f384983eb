//! What the receiver's benchmarks share: the test image.
#![allow(dead_code)]

/// Chunk size of the benchmark images.
pub const CS: usize = 64 * 1024;

/// xorshift64: fast, deterministic.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An image of `mb` MiB in 64 KiB chunks: 10 % zero, 45 % text-like, 45 % random.
pub fn make_image(mb: usize, seed: u64) -> Vec<u8> {
    let words: Vec<&[u8]> = b"the of and to in is for that with as on by this be are from or at an it kernel module libc so ld linux usr share doc copyright changelog gz debian package version".split(|&c| c == b' ').collect();
    let mut rng = Rng(seed | 1);
    let mut img = vec![0u8; mb << 20];
    for (i, c) in img.chunks_mut(CS).enumerate() {
        match i % 20 {
            0 | 1 => {}
            n if n % 2 == 0 => {
                let mut p = 0;
                while p < c.len() {
                    let w = words[(rng.next() % words.len() as u64) as usize];
                    let n = w.len().min(c.len() - p);
                    c[p..p + n].copy_from_slice(&w[..n]);
                    p += n;
                    if p < c.len() {
                        c[p] = if rng.next().is_multiple_of(10) {
                            b'\n'
                        } else {
                            b' '
                        };
                        p += 1;
                    }
                }
            }
            _ => {
                for b in c.chunks_mut(8) {
                    let x = rng.next().to_le_bytes();
                    b.copy_from_slice(&x[..b.len()]);
                }
            }
        }
    }
    img
}

/// The publish request of a benchmark appliance: `kernel`, the given disks, 64 KiB chunks.
pub fn publish_request(
    name: &str,
    kernel: std::path::PathBuf,
    disks: Vec<repository::publish::DiskSpec>,
) -> repository::publish::PublishRequest {
    repository::publish::PublishRequest {
        name: name.into(),
        kernel,
        initrd: None,
        cmdline: "console=ttyS0".into(),
        disks,
        memory_mib: 512,
        vcpus: 1,
        networks: vec![],
        chunk_size: CS as u32,
        boot_trace: None,
        display: false,
    }
}
