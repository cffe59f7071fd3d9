//! TensorBoard event files, written as TensorBoard's own writer writes them, for the dashboards
//! `report_to = ["tensorboard"]` feeds (TensorBoard itself, and W&B, whose TensorBoard watcher
//! reads them).
//!
//! A folder of event files is one TensorBoard run. Each [`EventWriter`] session starts a new
//! file `events.out.tfevents.<secs>.<host>.<pid>.<n>` whose first event is
//! `file_version: "brain.Event:2"`, and writes every event as one framed record
//! ([`record`]: length, masked CRC-32C, `Event` protobuf, masked CRC-32C) with one `write`
//! call, so a live TensorBoard sees each step as soon as it is logged.
//!
//! A resumed job never logs a step twice: [`retain`] first rewrites the folder's earlier files
//! down to the events it keeps (the steps its resume checkpoint covers), dropping a record torn
//! by a kill, and the new session continues after them.
//!
//! A leaf: imports nothing of east but [`crate::io`]'s error type.

mod histogram;
mod proto;
mod record;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::InputError;

pub use histogram::{histogram, BUCKETS};
pub use proto::{DecodeError, Event, Histogram, Value, ValueData, What};
pub use record::{crc32c, frame, masked_crc32c, Stop};

/// The `file_version` of the first event of every file (`brain.Event:2`: a reader trusts
/// `SessionLog.START` events, not step order, to find a restart).
pub const FILE_VERSION: &str = "brain.Event:2";

/// What east names itself as in `source_metadata.writer`.
const WRITER: &str = "east";

/// Marks every event file (TensorBoard reads the files whose names contain it).
const EVENTS_MARK: &str = "tfevents";

/// One event file being written.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created if missing) with its `file_version` event. Its
    /// name sorts after the event files already there, as TensorBoard reads them in name order.
    pub fn create(dir: &Path) -> Result<EventWriter, InputError> {
        fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
        let existing = event_files(dir)?;
        let mut secs = now().floor() as u64;
        let newest = existing.last().and_then(|p| file_secs(p));
        if let Some(newest) = newest.filter(|&n| n >= secs) {
            secs = newest + 1;
        }
        let (path, file) = loop {
            let path = dir.join(file_name(secs));
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(InputError::io(&path, e)),
            }
        };
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            what: What::FileVersion {
                version: FILE_VERSION.into(),
                writer: Some(WRITER.into()),
            },
        })?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one record, in one `write` (a reader never sees half of it unless
    /// the process dies inside the call; [`retain`] drops such a tail).
    pub fn write(&mut self, event: &Event) -> Result<(), InputError> {
        self.file
            .write_all(&frame(&event.encode()))
            .and_then(|()| self.file.flush())
            .map_err(|e| InputError::io(&self.path, e))
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
        self.write(&Event {
            wall_time: now(),
            step,
            what: What::Summary(values),
        })
    }

    /// Logs the `values` the folder does not hold yet at `step`: a tag with the same value at
    /// `step` in any of its files is left out, one with another value there is replaced (the
    /// old value removed). A stage can so log what it finds on disk on every run of a job,
    /// and a step never shows a tag twice.
    pub fn put(&mut self, step: i64, values: Vec<Value>) -> Result<(), InputError> {
        let held = self.values_at(step)?;
        let new: Vec<Value> = values
            .into_iter()
            .filter(|v| held.get(&v.tag) != Some(&v.data))
            .collect();
        let stale: Vec<String> = new
            .iter()
            .filter(|v| held.contains_key(&v.tag))
            .map(|v| v.tag.clone())
            .collect();
        if !stale.is_empty() {
            let dir = self.dir().to_path_buf();
            rewrite(&dir, Some(&self.path), |e| without(e, step, &stale))?;
            self.reopen()?;
        }
        self.summary(step, new)
    }

    /// [`retain`] over the writer's folder, its own file included (kept, and appended to
    /// after, even when nothing but its `file_version` is left).
    pub fn retain(&mut self, keep: impl Fn(&Event) -> bool) -> Result<Retained, InputError> {
        let dir = self.dir().to_path_buf();
        let done = rewrite(&dir, Some(&self.path), |e| keep(e).then(|| e.clone()))?;
        self.reopen()?;
        Ok(done)
    }

    /// The folder of the file.
    fn dir(&self) -> &Path {
        self.path.parent().expect("an event file lies in a folder")
    }

    /// Appends to the file under its name again, after a rewrite replaced it.
    fn reopen(&mut self) -> Result<(), InputError> {
        self.file = fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| InputError::io(&self.path, e))?;
        Ok(())
    }

    /// The summary values the folder holds at `step`, by tag (the last one read wins).
    fn values_at(&self, step: i64) -> Result<HashMap<String, ValueData>, InputError> {
        let mut held = HashMap::new();
        for file in read_dir(self.dir())? {
            for e in file.events.into_iter().filter(|e| e.step == step) {
                if let What::Summary(values) = e.what {
                    held.extend(values.into_iter().map(|v| (v.tag, v.data)));
                }
            }
        }
        Ok(held)
    }

    /// Marks a restart at `step` (`SessionLog.START`): a TensorBoard that still shows steps
    /// from before a resume drops those at `step` and later, as it does for TensorFlow's
    /// restarts. Only for folders whose events share one step axis: the purge ignores tags.
    pub fn session_start(&mut self, step: i64) -> Result<(), InputError> {
        self.write(&Event {
            wall_time: now(),
            step,
            what: What::SessionStart,
        })
    }
}

/// `e` without its values of the `tags` at `step`; `None` when nothing is left of it.
fn without(e: &Event, step: i64, tags: &[String]) -> Option<Event> {
    let What::Summary(values) = &e.what else {
        return Some(e.clone());
    };
    if e.step != step {
        return Some(e.clone());
    }
    let left: Vec<Value> = values
        .iter()
        .filter(|v| !tags.contains(&v.tag))
        .cloned()
        .collect();
    (!left.is_empty()).then(|| Event {
        what: What::Summary(left),
        ..e.clone()
    })
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
    let safe: String = name
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' => c,
            _ => '_',
        })
        .collect();
    if safe.is_empty() {
        "localhost".into()
    } else {
        safe
    }
}

/// The event files in `dir` in name order (none when `dir` does not exist).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InputError::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| InputError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(EVENTS_MARK) && !name.starts_with('.') && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// The events of one file, and why reading stopped early if it did.
#[derive(Debug)]
pub struct EventFile {
    pub path: PathBuf,
    pub events: Vec<Event>,
    pub stopped: Option<Stop>,
}

/// Reads the events of an event file up to its first torn or damaged record. A record whose
/// checksums hold but which is no `Event` is an error naming the file and byte offset.
pub fn read_file(path: &Path) -> Result<EventFile, InputError> {
    let bytes = fs::read(path).map_err(|e| InputError::io(path, e))?;
    let records = record::read(&bytes);
    let mut events = Vec::with_capacity(records.data.len());
    let mut offset = 0;
    for data in &records.data {
        let event = Event::decode(data)
            .map_err(|e| InputError::file(path, format!("record at byte {offset}: {e}")))?;
        events.push(event);
        offset += data.len() + record::OVERHEAD;
    }
    Ok(EventFile {
        path: path.to_path_buf(),
        events,
        stopped: records.stopped,
    })
}

/// Every event file of `dir`, in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<EventFile>, InputError> {
    event_files(dir)?.iter().map(|p| read_file(p)).collect()
}

/// What [`retain`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Events dropped (not kept, or torn by a kill).
    pub dropped: usize,
    /// Files removed because nothing but their `file_version` was left.
    pub removed: usize,
    /// Files whose reading stopped at a checksum that did not match, with the byte offset:
    /// what followed was dropped (a torn tail, the usual mark of a kill, is not listed).
    pub damaged: Vec<(PathBuf, usize)>,
}

/// Rewrites the event files of `dir` to the events `keep` accepts (each file's
/// `file_version` event stays, and records that are no `Event` are left alone). A file left
/// with nothing else is removed; a file that keeps everything is not touched. Each rewrite
/// replaces the file whole (a temporary file renamed over it).
pub fn retain(dir: &Path, keep: impl Fn(&Event) -> bool) -> Result<Retained, InputError> {
    rewrite(dir, None, |e| keep(e).then(|| e.clone()))
}

/// Rewrites the event files of `dir` through `edit`: the event it gives back (unchanged: the
/// record is copied as it is), or `None` to drop it. `file_version` events and records that
/// are no `Event` are kept without asking; so is the file `own` (a writer's open file), even
/// when nothing else is left in it.
fn rewrite(
    dir: &Path,
    own: Option<&Path>,
    mut edit: impl FnMut(&Event) -> Option<Event>,
) -> Result<Retained, InputError> {
    let mut done = Retained::default();
    for path in event_files(dir)? {
        let bytes = fs::read(&path).map_err(|e| InputError::io(&path, e))?;
        let records = record::read(&bytes);
        if let Some(Stop::Damaged { offset }) = records.stopped {
            done.damaged.push((path.clone(), offset));
        }
        let mut changed = records.stopped.is_some();
        done.dropped += usize::from(changed);
        let (mut kept, mut only_versions) = (Vec::new(), true);
        for data in &records.data {
            let event = match Event::decode(data) {
                Ok(e) if !matches!(e.what, What::FileVersion { .. }) => e,
                _ => {
                    kept.extend(frame(data));
                    continue;
                }
            };
            match edit(&event) {
                Some(e) if e == event => kept.extend(frame(data)),
                Some(e) => {
                    kept.extend(frame(&e.encode()));
                    changed = true;
                }
                None => {
                    done.dropped += 1;
                    changed = true;
                    continue;
                }
            }
            only_versions = false;
        }
        if !changed {
            continue;
        }
        if only_versions && own != Some(path.as_path()) {
            fs::remove_file(&path).map_err(|e| InputError::io(&path, e))?;
            done.removed += 1;
        } else {
            replace(&path, &kept)?;
        }
    }
    Ok(done)
}

/// Replaces `path` with `bytes` through a temporary file whose name no reader takes for an
/// event file.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), InputError> {
    let tmp = path.with_file_name(format!(".retain-{}.tmp", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        InputError::io(path, e)
    })
}

/// The numeric fields of a JSON object as scalars `prefix + key`, leaving out `skip` and
/// fields that are null or not numbers (so a metrics line of `train_log.jsonl` becomes the
/// step's TensorBoard scalars under the same names).
pub fn scalars_of(prefix: &str, line: &serde_json::Value, skip: &[&str]) -> Vec<(String, f64)> {
    let Some(fields) = line.as_object() else {
        return Vec::new();
    };
    fields
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((format!("{prefix}{k}"), v.as_f64()?)))
        .collect()
}

/// `report_to`: the dashboards a stage writes for (TRL's setting). `["none"]` (the default) or
/// `["tensorboard"]`; `"all"` means every one east has. W&B reads the TensorBoard files, so
/// `"wandb"` is an error that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportTo {
    /// Event files for TensorBoard.
    pub tensorboard: bool,
}

impl ReportTo {
    /// Parses the names of a `report_to` list.
    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<ReportTo, String> {
        let mut r = ReportTo::default();
        let mut none = false;
        for name in names {
            match name.trim() {
                "none" => none = true,
                "tensorboard" | "all" => r.tensorboard = true,
                "wandb" => return Err("east has no W&B client: set report_to = [\"tensorboard\"] and let W&B read the event files (README, \"Dashboards: TensorBoard and W&B\")".into()),
                other => return Err(format!("unknown `{other}` (known: none, tensorboard, all)")),
            }
        }
        if none && r.tensorboard {
            return Err("\"none\" cannot be combined with a dashboard".into());
        }
        Ok(r)
    }
}

impl std::str::FromStr for ReportTo {
    type Err = String;
    /// A comma-separated list, as `--report-to tensorboard` gives it.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_names(s.split(','))
    }
}

impl std::fmt::Display for ReportTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.tensorboard {
            "tensorboard"
        } else {
            "none"
        })
    }
}

impl serde::Serialize for ReportTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq([self.to_string()])
    }
}

impl<'de> serde::Deserialize<'de> for ReportTo {
    /// A list of names, or one name as a string (TRL accepts both).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names = match Raw::deserialize(d)? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        Self::from_names(names.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
