//! Where a training step's time goes, phase by phase, for `east-gpu-check train-bench
//! --profile`: each phase waits for the device before it starts and before it is counted, so
//! the times are the GPU's and not the launch queue's. The waits slow the step down: profile to
//! find the slow phase, measure speed without it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Device;

/// Seconds and calls per phase; off (free) unless made with [`PhaseProfile::enabled`].
#[derive(Debug, Default)]
pub struct PhaseProfile {
    on: bool,
    totals: Arc<Mutex<BTreeMap<&'static str, (f64, u64)>>>,
}

impl PhaseProfile {
    /// A profile that records.
    pub fn enabled() -> Self {
        Self {
            on: true,
            totals: Arc::default(),
        }
    }

    /// Times from now until the returned guard drops, as `name` (nothing when off). The guard
    /// borrows nothing, so the engine stays usable while it runs.
    pub fn phase(&self, name: &'static str, device: &Device) -> Option<Phase> {
        if !self.on {
            return None;
        }
        let _ = device.synchronize();
        Some(Phase {
            totals: self.totals.clone(),
            device: device.clone(),
            name,
            start: Instant::now(),
        })
    }

    /// `{phase: {"s": seconds, "calls": n}}` so far.
    pub fn totals(&self) -> BTreeMap<&'static str, (f64, u64)> {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// A running phase; see [`PhaseProfile::phase`].
pub struct Phase {
    totals: Arc<Mutex<BTreeMap<&'static str, (f64, u64)>>>,
    device: Device,
    name: &'static str,
    start: Instant,
}

impl Drop for Phase {
    fn drop(&mut self) {
        let _ = self.device.synchronize();
        let s = self.start.elapsed().as_secs_f64();
        if let Ok(mut t) = self.totals.lock() {
            let e = t.entry(self.name).or_insert((0.0, 0));
            e.0 += s;
            e.1 += 1;
        }
    }
}
