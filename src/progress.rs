//! Progress bars (drawn on stderr only when it is a terminal) and JSON-lines metric logs.

use crate::io::InputError;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over the bytes of an input file: work done, throughput and ETA.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// A bar over items (questions), with a free-form message for rates such as tokens/s.
pub fn items_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Metrics appended as JSON lines (one object per event, with a UNIX timestamp), for plotting
/// or tailing a long run.
pub struct MetricsLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl MetricsLog {
    pub fn open(path: &std::path::Path) -> Result<Self, InputError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| InputError::io(dir, e))?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| InputError::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn log(&mut self, value: &serde_json::Value) -> Result<(), InputError> {
        use std::io::Write;
        let mut object = match value {
            serde_json::Value::Object(m) => m.clone(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other.clone());
                m
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        object.insert("time".into(), serde_json::json!(now));
        let mut line = serde_json::to_vec(&serde_json::Value::Object(object))
            .expect("a JSON object serialises");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| InputError::io(&self.path, e))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
