//! Where the guest's serial console goes.
//!
//! The serial device writes to any `Write + Send` the embedder chooses: stdout, a file, a
//! [`Callback`], or a [`Capture`] that keeps the last text printed (a bounded ring) and lets a
//! caller wait for a line.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A console sink that calls a closure with every chunk of output.
pub struct Callback<F: FnMut(&[u8]) + Send>(pub F);

impl<F: FnMut(&[u8]) + Send> Write for Callback<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (self.0)(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much a [`Capture`] keeps by default: the last 1 MiB the guest printed.
pub const DEFAULT_CAPTURE_BYTES: usize = 1 << 20;

/// The bytes a capture keeps: the last `capacity` to `2 * capacity` bytes (trimmed in bulk, so
/// each byte is moved at most once), and how many came before them.
#[derive(Debug, Default)]
struct Ring {
    buf: Vec<u8>,
    /// Bytes written before `buf[0]`.
    dropped: u64,
    capacity: usize,
}

impl Ring {
    fn total(&self) -> u64 {
        self.dropped + self.buf.len() as u64
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.capacity {
            let cut = self.buf.len() - self.capacity;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }

    /// Searches for `needle` in what arrived since absolute offset `from` (plus the bytes
    /// before it that could start a match across the boundary); returns where the search can
    /// resume next time.
    fn find_since(&self, needle: &[u8], from: u64) -> Result<(), u64> {
        let overlap = needle.len().saturating_sub(1) as u64;
        let start = from.saturating_sub(overlap).max(self.dropped) - self.dropped;
        let hay = &self.buf[start as usize..];
        if needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
        Err(self.total())
    }
}

struct CaptureInner {
    ring: Mutex<Ring>,
    grew: Condvar,
}

/// A console sink that keeps the last bytes the guest printed (a ring of
/// [`DEFAULT_CAPTURE_BYTES`] unless given, like libvirt's and Nova's console logs) and counts
/// all of them, shareable between threads; clones share the same buffer. A guest printing
/// without end costs bounded memory.
#[derive(Clone)]
pub struct Capture {
    inner: Arc<CaptureInner>,
    echo: bool,
}

impl Default for Capture {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPTURE_BYTES)
    }
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("bytes", &self.len()).finish()
    }
}

impl Capture {
    /// An empty capture keeping the last [`DEFAULT_CAPTURE_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty capture keeping at least the last `bytes` bytes (and at most twice that).
    pub fn with_capacity(bytes: usize) -> Self {
        let ring = Ring { capacity: bytes.max(1), ..Ring::default() };
        Self {
            inner: Arc::new(CaptureInner { ring: Mutex::new(ring), grew: Condvar::new() }),
            echo: false,
        }
    }

    /// A capture that also copies everything to stderr (handy in tests).
    pub fn echoing() -> Self {
        Self { echo: true, ..Self::default() }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The text kept (the last bytes printed), lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.ring().buf).into_owned()
    }

    /// Bytes the guest printed so far, including those no longer kept.
    pub fn len(&self) -> usize {
        usize::try_from(self.ring().total()).unwrap_or(usize::MAX)
    }

    /// Bytes kept now (bounded by twice the capacity).
    pub fn retained(&self) -> usize {
        self.ring().buf.len()
    }

    /// True when nothing was captured yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the kept text contains `needle`; false on timeout. Each wake-up searches
    /// only the bytes that arrived since the last one (text that scrolled out of the ring
    /// before a search saw it is not found).
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let mut ring = self.ring();
        let mut from = ring.dropped;
        loop {
            match ring.find_since(needle, from) {
                Ok(()) => return true,
                Err(next) => from = next,
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            ring = self
                .inner
                .grew
                .wait_timeout(ring, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The kept lines that start with `prefix`, in order.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.text().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        self.ring().push(buf);
        self.inner.grew.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_waits_for_text_from_another_thread() {
        let c = Capture::new();
        let mut w = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.write_all(b"hello\nworld\n").unwrap();
        });
        assert!(c.wait_for("world", Duration::from_secs(5)));
        assert!(!c.wait_for("absent", Duration::from_millis(10)));
        assert_eq!(c.lines_with("wor"), vec!["world".to_string()]);
        t.join().unwrap();
        let mut seen = Vec::new();
        Callback(|b: &[u8]| seen.extend_from_slice(b)).write_all(b"x").unwrap();
        assert_eq!(seen, b"x");
    }

    #[test]
    fn a_capture_keeps_the_last_bytes_and_counts_them_all() {
        let c = Capture::with_capacity(16);
        let mut w = c.clone();
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
            assert!(c.retained() <= 32);
        }
        assert!(c.len() > 5000);
        assert!(c.text().ends_with("line 999\n"), "{}", c.text());
        assert!(c.wait_for("line 998\nline 999", Duration::ZERO));
        assert!(!c.wait_for("line 5\n", Duration::ZERO), "scrolled out long ago");
    }

    #[test]
    fn a_match_split_across_writes_is_found() {
        let c = Capture::with_capacity(64);
        let mut w = c.clone();
        let t = std::thread::spawn(move || {
            for chunk in ["hvtest: ti", "ck ", "4", "2\n"] {
                std::thread::sleep(Duration::from_millis(5));
                w.write_all(chunk.as_bytes()).unwrap();
            }
        });
        assert!(c.wait_for("tick 42\n", Duration::from_secs(5)));
        t.join().unwrap();
    }
}
