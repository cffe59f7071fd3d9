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
//! A leaf: imports nothing of east but [`crate::io`].

mod folder;
mod histogram;
mod proto;
mod record;
mod writer;

pub use folder::{event_files, read_dir, read_file, retain, EventFile, Retained};
pub use histogram::{histogram, BUCKETS};
pub use proto::{DecodeError, Event, Histogram, Value, ValueData, What};
pub use record::{crc32c, frame, masked_crc32c, Stop};
pub use writer::EventWriter;

/// The `file_version` of the first event of every file (`brain.Event:2`: a reader trusts
/// `SessionLog.START` events, not step order, to find a restart).
pub const FILE_VERSION: &str = "brain.Event:2";

/// What east names itself as in `source_metadata.writer`.
const WRITER: &str = "east";

/// Marks every event file (TensorBoard reads the files whose names contain it).
const EVENTS_MARK: &str = "tfevents";

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
