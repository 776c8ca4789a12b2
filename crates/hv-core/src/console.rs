//! Where the guest's serial console goes.
//!
//! The serial device writes to any `Write + Send` the embedder chooses: stdout, a file, a
//! [`Callback`], or a [`Capture`] that keeps the text and lets a caller wait for a line.

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

#[derive(Default)]
struct CaptureInner {
    text: Mutex<Vec<u8>>,
    grew: Condvar,
}

/// A console sink that keeps everything the guest printed, shareable between threads.
/// Clones share the same buffer.
#[derive(Clone, Default)]
pub struct Capture {
    inner: Arc<CaptureInner>,
    echo: bool,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("bytes", &self.len()).finish()
    }
}

impl Capture {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// A capture that also copies everything to stderr (handy in tests).
    pub fn echoing() -> Self {
        Self { echo: true, ..Self::default() }
    }

    /// Everything captured so far, lossily decoded.
    pub fn text(&self) -> String {
        let text = self.inner.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Bytes captured so far.
    pub fn len(&self) -> usize {
        self.inner.text.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing was captured yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the captured text contains `needle`; false on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let mut text = self.inner.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if text.windows(needle.len().max(1)).any(|w| w == needle) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            text = self
                .inner
                .grew
                .wait_timeout(text, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The lines that start with `prefix`, in order.
    pub fn lines_with(&self, prefix: &str) -> Vec<String> {
        self.text().lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.echo {
            let _ = io::stderr().write_all(buf);
        }
        let mut text = self.inner.text.lock().unwrap_or_else(|e| e.into_inner());
        text.extend_from_slice(buf);
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
}
