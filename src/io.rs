//! File plumbing shared by every stage: JSON Lines reading with errors that name the file, line
//! and field, output files that only appear under their final name once complete (their errors
//! name the file too), and locks that keep a second writer off an output.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A file that could not be used (an input that cannot be read or parsed, an output that cannot be
/// written), located as precisely as we can.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The OS error is part of the message, not a `source`: `{:#}` would print it twice.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

impl InputError {
    pub fn io(path: &Path, error: io::Error) -> Self {
        InputError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub fn line(path: &Path, line: usize, message: impl Into<String>) -> Self {
        InputError::Line {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// A problem with one field of one record.
    pub fn field(path: &Path, line: usize, field: &str, message: impl std::fmt::Display) -> Self {
        InputError::Line {
            path: path.to_path_buf(),
            line,
            message: format!("field `{field}`: {message}"),
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        InputError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// One raw line of a JSON Lines file, with its 1-based line number.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub number: usize,
    pub text: String,
}

/// Streams the non-empty lines of a JSON Lines file in batches, so large files are processed with
/// bounded memory and each batch can be parsed in parallel.
pub struct JsonlBatches {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
    batch: usize,
    seen_any: bool,
}

impl JsonlBatches {
    pub fn open(path: &Path, batch: usize) -> Result<Self, InputError> {
        let file = File::open(path).map_err(|e| InputError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            batch: batch.max(1),
            seen_any: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next batch of lines, or `None` at the end. An empty file is an error: a stage never
    /// silently produces nothing from nothing.
    pub fn next_batch(&mut self) -> Result<Option<Vec<RawLine>>, InputError> {
        let mut out = Vec::with_capacity(self.batch);
        while out.len() < self.batch {
            let mut text = String::new();
            let read = self
                .reader
                .read_line(&mut text)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::InvalidData => {
                        InputError::line(&self.path, self.line + 1, "line is not valid UTF-8")
                    }
                    _ => InputError::io(&self.path, e),
                })?;
            if read == 0 {
                break;
            }
            self.line += 1;
            if self.line == 1 && text.starts_with('\u{feff}') {
                // A UTF-8 byte-order mark (some editors write one) is not part of the first record.
                text.drain(..'\u{feff}'.len_utf8());
            }
            let trimmed = text.trim_end_matches(['\n', '\r']);
            if trimmed.trim().is_empty() {
                continue;
            }
            if trimmed.len() != text.len() {
                text.truncate(trimmed.len());
            }
            out.push(RawLine {
                number: self.line,
                text,
            });
        }
        if out.is_empty() {
            if !self.seen_any {
                self.seen_any = true;
                return Err(InputError::file(
                    &self.path,
                    "file is empty: expected one JSON object per line",
                ));
            }
            return Ok(None);
        }
        self.seen_any = true;
        Ok(Some(out))
    }
}

/// Parses one JSON line into `T`, turning serde's message (which names missing or mistyped fields)
/// into an error that also names the file and line.
pub fn parse_line<T: DeserializeOwned>(path: &Path, line: &RawLine) -> Result<T, InputError> {
    serde_json::from_str(&line.text).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("malformed JSON at column {}: {e}", e.column())
            }
            _ => format!("{e}"),
        };
        InputError::line(path, line.number, what)
    })
}

/// Reads a whole (small) JSON Lines file into memory, e.g. a dataset.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>, InputError> {
    let mut batches = JsonlBatches::open(path, 4096)?;
    let mut out = Vec::new();
    while let Some(batch) = batches.next_batch()? {
        for line in &batch {
            out.push((line.number, parse_line(path, line)?));
        }
    }
    Ok(out)
}

/// A file written under a temporary name beside its destination and renamed into place by
/// [`AtomicFile::commit`]. Dropped without commit (an error, a panic, a kill), the temporary file
/// is removed or left under a name no stage mistakes for a complete output. Every error names
/// the file.
pub struct AtomicFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self, InputError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
            }
        }
        let tmp_path = tmp_name(path);
        let file = File::create(&tmp_path).map_err(|e| InputError::io(path, e))?;
        Ok(Self {
            final_path: path.to_path_buf(),
            tmp_path,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Writes one value as a JSON line.
    pub fn write_json_line<T: Serialize>(&mut self, value: &T) -> Result<(), InputError> {
        let w = self.writer.as_mut().expect("writer present until commit");
        serde_json::to_writer(&mut *w, value)
            .map_err(io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| InputError::io(&self.final_path, e))
    }

    /// Flushes, syncs and renames the file to its final name.
    pub fn commit(mut self) -> Result<(), InputError> {
        let writer = self.writer.take().expect("writer present until commit");
        let done = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .and_then(|()| fs::rename(&self.tmp_path, &self.final_path));
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(InputError::io(&self.final_path, e));
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer
            .as_mut()
            .expect("writer present until commit")
            .write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer
            .as_mut()
            .expect("writer present until commit")
            .flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// The temporary name used while `path` is being written: hidden, beside it, tagged by process.
pub fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// Writes `bytes` to `path` atomically (readers see the old file or the whole new one).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InputError> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|e| InputError::io(path, e))?;
    f.commit()
}

/// Writes a pretty JSON document atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), InputError> {
    let mut f = AtomicFile::create(path)?;
    serde_json::to_writer_pretty(&mut f, value)
        .map_err(io::Error::from)
        .and_then(|()| f.write_all(b"\n"))
        .map_err(|e| InputError::io(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_json_line(&serde_json::json!({"a": 1})).unwrap();
            assert!(!path.exists());
        }
        assert!(!path.exists(), "dropped without commit: no final file");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temporary removed"
        );
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_json_line(&serde_json::json!({"a": 1})).unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n");
    }

    #[test]
    fn batches_report_line_numbers_and_skip_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        fs::write(&path, "{\"a\":1}\n\n{\"a\":2}\r\n{\"a\":3}").unwrap();
        let mut b = JsonlBatches::open(&path, 2).unwrap();
        let first = b.next_batch().unwrap().unwrap();
        assert_eq!(
            first.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(first[1].text, "{\"a\":2}");
        let second = b.next_batch().unwrap().unwrap();
        assert_eq!(second[0].number, 4);
        assert!(b.next_batch().unwrap().is_none());
    }

    #[test]
    fn empty_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.jsonl");
        fs::write(&path, "\n  \n").unwrap();
        let err = JsonlBatches::open(&path, 8)
            .unwrap()
            .next_batch()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty.jsonl") && err.contains("empty"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_name_line_and_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            id: String,
        }
        let p = Path::new("f.jsonl");
        let e = parse_line::<R>(
            p,
            &RawLine {
                number: 7,
                text: "{\"x\":1}".into(),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.jsonl:7:") && e.contains("`id`"), "{e}");
        let e = parse_line::<R>(
            p,
            &RawLine {
                number: 8,
                text: "{\"id\":".into(),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("f.jsonl:8:") && e.contains("malformed JSON"),
            "{e}"
        );
    }
}

/// An output that grows one JSON line per finished item and survives crashes: reopening it
/// drops a torn last line (a write cut by a kill) and reports the ids already written, so a
/// rerun continues without losing or duplicating work.
pub struct AppendLog {
    path: PathBuf,
    file: File,
}

impl AppendLog {
    /// Opens (or creates) `path`; returns the log and the `id` field of every complete line.
    pub fn open(path: &Path) -> Result<(AppendLog, Vec<String>), InputError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                fs::create_dir_all(dir).map_err(|e| InputError::io(path, e))?;
            }
        }
        let mut ids = Vec::new();
        let mut keep = 0u64;
        if path.exists() {
            let bytes = fs::read(path).map_err(|e| InputError::io(path, e))?;
            let mut start = 0usize;
            let mut number = 0usize;
            while start < bytes.len() {
                let Some(end) = bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|p| start + p)
                else {
                    break; // no newline: a torn last line, dropped below
                };
                number += 1;
                let line = &bytes[start..end];
                #[derive(serde::Deserialize)]
                struct IdOnly {
                    id: String,
                }
                match serde_json::from_slice::<IdOnly>(line) {
                    Ok(r) => ids.push(r.id),
                    // A complete but unreadable line in the middle is not ours to silently drop.
                    Err(e) if end + 1 < bytes.len() => {
                        return Err(InputError::line(
                            path,
                            number,
                            format!("cannot resume from this file: {e}"),
                        ))
                    }
                    Err(_) => break, // the last line was cut mid-write
                }
                start = end + 1;
                keep = start as u64;
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| InputError::io(path, e))?;
        file.set_len(keep).map_err(|e| InputError::io(path, e))?;
        let mut log = AppendLog {
            path: path.to_path_buf(),
            file,
        };
        use std::io::Seek;
        log.file
            .seek(io::SeekFrom::End(0))
            .map_err(|e| InputError::io(path, e))?;
        Ok((log, ids))
    }

    /// Appends one record as a whole line and flushes it to the OS.
    pub fn append<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;

    #[test]
    fn torn_last_line_is_dropped_and_ids_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        fs::write(
            &path,
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\",\"compl",
        )
        .unwrap();
        let (mut log, ids) = AppendLog::open(&path).unwrap();
        assert_eq!(ids, vec!["a", "b"]);
        log.append(&serde_json::json!({"id": "c"})).unwrap();
        drop(log);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n"
        );
    }

    #[test]
    fn corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        fs::write(&path, "{\"id\":\"a\"}\nnot json\n{\"id\":\"b\"}\n").unwrap();
        let err = AppendLog::open(&path).err().unwrap().to_string();
        assert!(err.contains("s.jsonl:2:"), "{err}");
    }

    #[test]
    fn complete_but_unreadable_last_line_is_treated_as_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\n").unwrap();
        let (_, ids) = AppendLog::open(&path).unwrap();
        assert_eq!(ids, vec!["a"]);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"id\":\"a\"}\n");
    }
}

/// `name` with every character that is not safe in a file name replaced by `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The lock file of an output file: `.<name>.lock` beside it (so `east sample --out` on a file
/// of `east run`'s samples cache takes the same lock as the run).
pub fn output_lock_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.lock"))
}

/// A lock held for as long as the value lives (flock: released by the kernel when the process
/// dies, so a killed run never leaves a stale lock). The lock file is removed on release; the one
/// a killed process leaves behind locks nothing.
pub struct FileLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock of the output file `out` ([`output_lock_path`]), creating its folder.
    pub fn output_file(out: &Path) -> anyhow::Result<FileLock> {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
        }
        Self::acquire(&output_lock_path(out), &out.display().to_string())
    }

    /// Takes the lock of the output folder `dir`: `.<name>.lock` beside it
    /// ([`output_lock_path`]), creating the parent folder only. Beside, not inside: `east run`
    /// removes a stale output folder whole while holding its lock, and a lock file removed with
    /// it would let a second writer take a new one.
    pub fn output_dir(dir: &Path) -> anyhow::Result<FileLock> {
        Self::output_file(dir)
    }

    /// Takes the lock at `path` or fails at once, saying who holds it.
    pub fn acquire(path: &Path, what: &str) -> anyhow::Result<FileLock> {
        use anyhow::Context;
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        // The holder removes the lock file when done (no litter beside the outputs), so a lock
        // taken on a file that was removed meanwhile is taken again on the new one.
        for _ in 0..100 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening the lock file {}", path.display()))?;
            // SAFETY: flock on a file descriptor we own; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                let holder = if holder.trim().is_empty() {
                    "pid unknown"
                } else {
                    holder.trim()
                };
                anyhow::bail!(
                    "{what} is in use by another east process ({holder}; lock {})",
                    path.display()
                );
            }
            let same = match (file.metadata(), std::fs::metadata(path)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0)
                .and_then(|()| writeln!(file, "pid {}", std::process::id()))
                .map_err(|e| InputError::io(path, e))?;
            return Ok(FileLock {
                _file: file,
                path: path.to_path_buf(),
            });
        }
        anyhow::bail!("{}: cannot take this lock file", path.display())
    }
}

impl Drop for FileLock {
    /// Removes the lock file while still holding the lock, then releases it.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
