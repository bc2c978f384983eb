//! The seat's present path against a plain copy, at 1920x1080 XRGB8888, and the seat
//! thread's CPU while idle. `cargo bench -p seat`. Plain `fn main`, figures on stdout.
//!
//! The seat path is measured end to end: `damage()` from this thread (as a VM thread
//! would), the seat thread waking, coalescing, copying from the SurfaceSource into the
//! memory output (which, like a page flip, copies nothing more) and presenting; the
//! clock stops when the present is counted. The seat's own frame time (drawing and
//! presenting, without the wake-up) is printed too.

use seat::{
    ApplianceKind, InputEvent, InputSink, MemoryOutput, Rect, Seat, SessionControl, SurfaceSource,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const W: u32 = 1920;
const H: u32 = 1080;
const RUNS: usize = 50;

struct Frame(Vec<u8>);

impl SurfaceSource for Frame {
    fn size(&self) -> (u32, u32) {
        (W, H)
    }
    fn copy_rect(&self, rect: Rect, dst: &mut [u8], dst_stride: usize) {
        let stride = W as usize * 4;
        let len = rect.width as usize * 4;
        for row in 0..rect.height as usize {
            let s = (rect.y as usize + row) * stride + rect.x as usize * 4;
            dst[row * dst_stride..row * dst_stride + len].copy_from_slice(&self.0[s..s + len]);
        }
    }
}

struct Nothing;
impl InputSink for Nothing {
    fn send(&self, _: &[InputEvent]) {}
}
struct Control;
impl SessionControl for Control {
    fn user(&self) -> String {
        "bench".into()
    }
    fn unlock(&self, _: &str) -> bool {
        true
    }
    fn logout(&self) {}
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn plain_copy(rect: Rect, src: &[u8], dst: &mut [u8]) -> Duration {
    let stride = W as usize * 4;
    let len = rect.width as usize * 4;
    let start = Instant::now();
    for row in rect.y as usize..rect.bottom() as usize {
        let at = row * stride + rect.x as usize * 4;
        dst[at..at + len].copy_from_slice(&src[at..at + len]);
    }
    std::hint::black_box(&dst);
    start.elapsed()
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let len = W as usize * H as usize * 4;
    let src: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; len];
    let full = Rect::new(0, 0, W, H);
    let small = Rect::new(800, 500, 64, 16);
    // Warm both buffers.
    plain_copy(full, &src, &mut dst);
    let plain_full = median(
        (0..RUNS)
            .map(|_| plain_copy(full, &src, &mut dst))
            .collect(),
    );
    let plain_small = median(
        (0..RUNS)
            .map(|_| plain_copy(small, &src, &mut dst))
            .collect(),
    );
    // The same copy paced like the seat's frames below (a pause before each), so both
    // start from the same cache state: this is the ratio's baseline.
    let plain_paced = median(
        (0..RUNS)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(2));
                plain_copy(full, &src, &mut dst)
            })
            .collect(),
    );
    // The same copy on another thread, as the seat does it (a different core's caches).
    let plain_thread = std::thread::scope(|s| {
        s.spawn(|| {
            let mut dst2 = vec![0u8; len];
            plain_copy(full, &src, &mut dst2);
            median(
                (0..RUNS)
                    .map(|_| plain_copy(full, &src, &mut dst2))
                    .collect(),
            )
        })
        .join()
        .expect("copy thread")
    });

    let (out, probe) = MemoryOutput::new(W, H);
    let out = out.unmirrored(Duration::ZERO);
    let seat = Seat::with_output(Box::new(out), Arc::new(Control));
    let handle = seat.add_appliance(
        "bench",
        ApplianceKind::Graphical {
            keyboard: Arc::new(Nothing),
            tablet: Arc::new(Nothing),
        },
    );
    handle.set_surface(Some(Arc::new(Frame(src.clone()))));
    let thread = seat.start().expect("starting the seat");
    while probe.presents() == 0 {
        std::thread::yield_now();
    }
    let measure = |rect: Rect| {
        // End to end: this thread spins until the present is counted.
        let mut end_to_end = Vec::new();
        for _ in 0..RUNS {
            std::thread::sleep(Duration::from_millis(2));
            let before = probe.presents();
            let start = Instant::now();
            handle.damage(rect);
            while probe.presents() == before {
                std::hint::spin_loop();
            }
            end_to_end.push(start.elapsed());
        }
        // The seat thread's frame alone, with this thread asleep (its spinning shares
        // the machine's two cores, which may be hyperthreads of one).
        let mut in_thread = Vec::new();
        for _ in 0..RUNS {
            let before = probe.presents();
            handle.damage(rect);
            while probe.presents() == before {
                std::thread::sleep(Duration::from_millis(1));
            }
            in_thread.push(thread.stats().last_frame);
        }
        (median(end_to_end), median(in_thread))
    };
    let (seat_full, seat_full_frame) = measure(full);
    let (seat_small, seat_small_frame) = measure(small);

    std::thread::sleep(Duration::from_millis(100));
    let cpu_before = cpu_time();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = cpu_time() - cpu_before;
    let idle_share = idle_cpu.as_secs_f64() / wall.elapsed().as_secs_f64() * 100.0;
    thread.shutdown();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("seat present benchmark, {W}x{H} XRGB8888, medians of {RUNS}");
    println!(
        "full frame: plain copy_from_slice    {:8.3} ms",
        ms(plain_full)
    );
    println!(
        "full frame: plain copy, other thread {:8.3} ms",
        ms(plain_thread)
    );
    println!(
        "full frame: plain copy, paced        {:8.3} ms (a 2 ms pause before each: the baseline)",
        ms(plain_paced)
    );
    println!(
        "full frame: seat damage -> present   {:8.3} ms (ratio {:.2} to the paced copy)",
        ms(seat_full),
        seat_full.as_secs_f64() / plain_paced.as_secs_f64()
    );
    println!(
        "full frame: seat thread frame        {:8.3} ms (ratio {:.2} to the paced copy, goal <= 1.5; {:.2} to back-to-back copies)",
        ms(seat_full_frame),
        seat_full_frame.as_secs_f64() / plain_paced.as_secs_f64(),
        seat_full_frame.as_secs_f64() / plain_full.as_secs_f64()
    );
    println!(
        "64x16:      plain copy               {:8.4} ms",
        ms(plain_small)
    );
    println!(
        "64x16:      seat damage -> present   {:8.4} ms",
        ms(seat_small)
    );
    println!(
        "64x16:      seat thread frame        {:8.4} ms",
        ms(seat_small_frame)
    );
    println!(
        "idle 2 s:   process CPU {:.3} ms = {idle_share:.3}% of a core",
        ms(idle_cpu)
    );
}
