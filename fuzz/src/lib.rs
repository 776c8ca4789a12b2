//! Helpers shared by hv's fuzz targets: a byte reader that never fails (missing bytes read as
//! zero), a scratch directory on tmpfs, and the panic hook that tells a known, contained panic
//! in a dependency from a crash.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Reads little-endian fields from fuzz input; past the end every read is zero, so any input
/// decodes to something.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed (u16) chunk.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }
}

/// A directory of this process's own on tmpfs (`/dev/shm` when it exists), for files a target
/// writes each run: no disk I/O, and fsync costs nothing.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("hv-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        dir
    })
}

/// Whether known, reported findings fail the run (`HV_FUZZ_STRICT=1`): by default a target
/// lets each known finding pass (counted) so a long run can find others; strict mode turns
/// them back into crashes, to check a fix against `regressions/open/`.
pub fn strict() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("HV_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// Notes that an input got past the target's first checks (parsed, opened, loaded...). With
/// `HV_FUZZ_DEPTH=1` it prints a line `run.sh` counts over the final corpus, to show how much
/// of it reaches the code behind those checks.
pub fn reached(stage: &str) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("HV_FUZZ_DEPTH").is_some()) {
        eprintln!("hv-fuzz-depth: {stage}");
    }
}

/// A panic a dependency is known to raise on hostile input, which hv catches and turns into an
/// error: such a panic unwinds to hv's `catch_unwind` instead of stopping the run.
#[derive(Clone, Copy, Debug)]
pub struct KnownPanic {
    /// The crate directory the panic comes from (`imago-0.2.6`).
    pub krate: &'static str,
    /// The file inside that crate (`src/qcow2/metadata.rs`).
    pub file: &'static str,
    /// The line.
    pub line: u32,
}

static KNOWN_PANICS: AtomicU64 = AtomicU64::new(0);

/// Logs a known finding's running count at powers of two (libFuzzer gives a target no exit
/// hook, so the log's last such line is the count, to within a factor of two).
pub fn log_known(what: &str, n: u64) {
    if n.is_power_of_two() {
        eprintln!("hv-fuzz: known finding ({what}) seen {n} times so far");
    }
}

/// How many known panics were caught so far in this process.
pub fn known_panics() -> u64 {
    KNOWN_PANICS.load(Ordering::Relaxed)
}

/// Replaces libFuzzer's panic hook (which aborts on every panic, even one that is caught) with
/// one that lets the `known` panics unwind, counting them, and aborts on any other: a panic
/// anywhere else is still a crash the fuzzer reports. In [`strict`] mode it keeps libFuzzer's
/// hook.
pub fn allow_known_panics(known: &'static [KnownPanic]) {
    if strict() {
        return;
    }
    std::panic::set_hook(Box::new(move |info| {
        if let Some(loc) = info.location() {
            let path = Path::new(loc.file());
            let hit = known.iter().any(|k| {
                loc.line() == k.line
                    && path.ends_with(k.file)
                    && path.components().any(|c| c.as_os_str() == k.krate)
            });
            if hit {
                let n = KNOWN_PANICS.fetch_add(1, Ordering::Relaxed) + 1;
                log_known(&format!("panic at {loc}"), n);
                return;
            }
        }
        eprintln!("{info}");
        std::process::abort();
    }));
}
