//! A folder of event files (one TensorBoard run): listing and reading them, and rewriting them
//! down to the events a job keeps.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::proto::{Event, Value, What};
use super::record::{self, frame, Stop};
use super::EVENTS_MARK;
use crate::io::InputError;

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
pub(super) fn rewrite(
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

/// `e` without its values of the `tags` at `step`; `None` when nothing is left of it.
pub(super) fn without(e: &Event, step: i64, tags: &[String]) -> Option<Event> {
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
