//! Where log lines go: standard error by default; [`to_file`] sends every later line to a
//! file instead (the demo tells its story on stdout and keeps its log lines there).
//!
//! The tracing subscriber writes through [`writer`] (`.with_writer(crate::logging::writer)`),
//! so the destination can change after the subscriber is installed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

/// The file log lines go to once [`to_file`] was called; standard error until then.
static FILE: Mutex<Option<File>> = Mutex::new(None);

/// The subscriber's writer (a `MakeWriter`): standard error, or the file of [`to_file`].
pub fn writer() -> Sink {
    Sink
}

/// Send every later log line to `path` (its directory is created; the file starts empty).
pub fn to_file(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::create(path)?;
    *FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    Ok(())
}

/// Writes each formatted event (one `write_all` per line) to the current destination.
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut file = FILE.lock().unwrap_or_else(|p| p.into_inner());
        match file.as_mut() {
            // Colours are for terminals: none in the file.
            Some(f) => f.write_all(&strip_ansi(buf)),
            None => io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match FILE.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// `buf` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buf.len());
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == 0x1b && buf.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < buf.len() && !buf[i].is_ascii_alphabetic() {
                i += 1;
            }
            i += 1;
        } else {
            out.push(buf[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::strip_ansi;

    #[test]
    fn colours_are_stripped() {
        let line = b"\x1b[2m2025-01-01T00:00:00Z\x1b[0m \x1b[32m INFO\x1b[0m started\n";
        assert_eq!(
            strip_ansi(line),
            b"2025-01-01T00:00:00Z  INFO started\n".to_vec()
        );
        assert_eq!(strip_ansi(b"plain"), b"plain".to_vec());
    }
}
