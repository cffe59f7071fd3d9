//! The event file of one session: created at its first event, named and started as
//! TensorBoard's Python writer does, one record per `write`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::folder::{event_files, read_dir, rewrite, without, Retained};
use super::proto::{Event, Value, ValueData, What};
use super::record::frame;
use super::{EVENTS_MARK, FILE_VERSION, WRITER};
use crate::io::InputError;

/// The event file of one session in a folder. The file appears with the session's first event
/// (a session that logs nothing leaves no file), under a name that sorts after the folder's
/// files then, as TensorBoard reads a folder's files in name order.
#[derive(Debug)]
pub struct EventWriter {
    dir: PathBuf,
    /// The file and its path, once the first event is written.
    file: Option<(File, PathBuf)>,
}

impl EventWriter {
    /// A session in `dir` (created if missing).
    pub fn create(dir: &Path) -> Result<EventWriter, InputError> {
        fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
        Ok(EventWriter {
            dir: dir.to_path_buf(),
            file: None,
        })
    }

    /// The session's file, once it has one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// Appends one event as one record, in one `write` (a reader never sees half of it unless
    /// the process dies inside the call; [`super::retain`] drops such a tail).
    pub fn write(&mut self, event: &Event) -> Result<(), InputError> {
        self.ensure_open()?;
        let (file, path) = self.file.as_mut().expect("opened above");
        file.write_all(&frame(&event.encode()))
            .and_then(|()| file.flush())
            .map_err(|e| InputError::io(path, e))
    }

    /// Creates the session's file with its `file_version` event, unless it exists. Called
    /// before an event takes its time, so that the file's first event is its earliest.
    fn ensure_open(&mut self) -> Result<(), InputError> {
        if self.file.is_some() {
            return Ok(());
        }
        let mut secs = now().floor() as u64;
        let newest = event_files(&self.dir)?.last().and_then(|p| file_secs(p));
        if let Some(newest) = newest.filter(|&n| n >= secs) {
            secs = newest + 1;
        }
        let (file, path) = loop {
            let path = self.dir.join(file_name(secs));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(InputError::io(&path, e)),
            }
        };
        self.file = Some((file, path));
        self.write(&Event {
            wall_time: now(),
            step: 0,
            what: What::FileVersion {
                version: FILE_VERSION.into(),
                writer: Some(WRITER.into()),
            },
        })
    }

    /// Logs `scalars` (tag, value) at `step` as one event, now. Values become the protocol's
    /// 32-bit `simple_value`, as every TensorBoard writer stores scalars.
    pub fn scalars(&mut self, step: i64, scalars: &[(String, f64)]) -> Result<(), InputError> {
        let values = scalars.iter().map(|(t, v)| Value::scalar(t, *v)).collect();
        self.summary(step, values)
    }

    /// Logs `values` at `step` as one event, now (none: nothing).
    pub fn summary(&mut self, step: i64, values: Vec<Value>) -> Result<(), InputError> {
        if values.is_empty() {
            return Ok(());
        }
        self.ensure_open()?;
        self.write(&Event {
            wall_time: now(),
            step,
            what: What::Summary(values),
        })
    }

    /// Logs the values the folder does not hold yet, each `(step, values)` as one event: a tag
    /// with the same value at that step in any file of the folder is left out, one with another
    /// value there is replaced (the old value removed). A job can so log what it finds on disk
    /// each time it runs, and a step never shows a tag twice.
    pub fn put(&mut self, steps: Vec<(i64, Vec<Value>)>) -> Result<(), InputError> {
        let held = self.held()?;
        let mut stale: HashMap<i64, Vec<String>> = HashMap::new();
        let mut new = Vec::new();
        for (step, values) in steps {
            let values: Vec<Value> = values
                .into_iter()
                .filter(|v| held.get(&(step, v.tag.clone())) != Some(&v.data))
                .collect();
            for v in &values {
                if held.contains_key(&(step, v.tag.clone())) {
                    stale.entry(step).or_default().push(v.tag.clone());
                }
            }
            new.push((step, values));
        }
        if !stale.is_empty() {
            let own = self.path().map(Path::to_path_buf);
            rewrite(&self.dir, own.as_deref(), |e| match stale.get(&e.step) {
                Some(tags) => without(e, e.step, tags),
                None => Some(e.clone()),
            })?;
            self.reopen()?;
        }
        for (step, values) in new {
            self.summary(step, values)?;
        }
        Ok(())
    }

    /// [`super::retain`] over the writer's folder, its own file included (kept, and appended
    /// to after, even when nothing but its `file_version` is left).
    pub fn retain(&mut self, keep: impl Fn(&Event) -> bool) -> Result<Retained, InputError> {
        let own = self.path().map(Path::to_path_buf);
        let done = rewrite(&self.dir, own.as_deref(), |e| keep(e).then(|| e.clone()))?;
        self.reopen()?;
        Ok(done)
    }

    /// Appends to the file under its name again, after a rewrite replaced it.
    fn reopen(&mut self) -> Result<(), InputError> {
        if let Some((file, path)) = &mut self.file {
            *file = fs::OpenOptions::new()
                .append(true)
                .open(&*path)
                .map_err(|e| InputError::io(path, e))?;
        }
        Ok(())
    }

    /// The summary values the folder holds, by (step, tag) (the last one read wins).
    fn held(&self) -> Result<HashMap<(i64, String), ValueData>, InputError> {
        let mut held = HashMap::new();
        for file in read_dir(&self.dir)? {
            for e in file.events {
                if let What::Summary(values) = e.what {
                    held.extend(values.into_iter().map(|v| ((e.step, v.tag), v.data)));
                }
            }
        }
        Ok(held)
    }

    /// Marks a restart at `step` (`SessionLog.START`): a TensorBoard that still shows steps
    /// from before a resume drops those at `step` and later, as it does for TensorFlow's
    /// restarts. Only for folders whose events share one step axis: the purge ignores tags.
    pub fn session_start(&mut self, step: i64) -> Result<(), InputError> {
        self.ensure_open()?;
        self.write(&Event {
            wall_time: now(),
            step,
            what: What::SessionStart,
        })
    }
}

/// Seconds since the Unix epoch, as `wall_time` counts them.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `events.out.tfevents.<secs>.<host>.<pid>.<n>`, as TensorBoard's Python writer names its
/// files (`n` counts the files this process opened).
fn file_name(secs: u64) -> String {
    static OPENED: AtomicU64 = AtomicU64::new(0);
    format!(
        "events.out.{EVENTS_MARK}.{secs:010}.{}.{}.{}",
        hostname(),
        std::process::id(),
        OPENED.fetch_add(1, Ordering::Relaxed)
    )
}

/// The seconds in an event file's name.
fn file_secs(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.split_once(&format!("{EVENTS_MARK}."))?
        .1
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// This machine's name, safe in a file name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into a buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = match rc {
        0 => {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        _ => String::new(),
    };
    let safe = crate::io::file_safe(&name);
    if safe.is_empty() {
        "localhost".into()
    } else {
        safe
    }
}
