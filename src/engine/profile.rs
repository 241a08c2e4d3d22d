//! What the engine costs: counters of dispatches, passes, submits and waits, and per-kernel
//! GPU time from timestamp queries.

use super::error::Result;
use super::Gpu;
use std::collections::BTreeMap;

/// Timestamp pairs per profiler flush.
pub(super) const PROFILE_PAIRS: u32 = 1024;

/// What the engine did since the last [`Gpu::reset_counters`]: the overhead of a training
/// step, apart from the arithmetic. Accounting-only runs count the same (see
/// [`Gpu::set_accounting_only`]) except `record_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Counters {
    /// Kernel launches.
    pub dispatches: u64,
    /// Compute passes begun.
    pub compute_passes: u64,
    /// Bind groups created (cache misses).
    pub bind_groups_created: u64,
    /// Pipelines compiled.
    pub pipelines_created: u64,
    /// Device buffers created (pool misses, upload and read-back staging).
    pub buffers_created: u64,
    /// Queue submissions.
    pub submits: u64,
    /// Times the host waited for the GPU.
    pub blocking_waits: u64,
    /// Values the host asked for to collect a step later ([`Gpu::read_later`]).
    pub late_reads: u64,
    /// Late reads whose values were not ready when collected, so the host waited after all
    /// (depends on timing: not in [`Counters::counts`]).
    pub late_read_stalls: u64,
    /// Bytes written from the host (tensor uploads and kernel params).
    pub upload_bytes: u64,
    /// Bytes read back to the host.
    pub readback_bytes: u64,
    /// CPU milliseconds spent recording dispatches.
    pub record_ms: f64,
}

impl Counters {
    /// These counts without the timing (what a counted run must reproduce exactly).
    pub fn counts(&self) -> Counters {
        Counters {
            record_ms: 0.0,
            late_read_stalls: 0,
            ..*self
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} dispatches, {} compute passes, {} bind groups created, {} pipelines created, {} buffers created, {} submits, {} blocking waits, {} late reads ({} stalled), {:.1} MB up, {:.1} KB back, {:.1} ms recording",
            self.dispatches,
            self.compute_passes,
            self.bind_groups_created,
            self.pipelines_created,
            self.buffers_created,
            self.submits,
            self.blocking_waits,
            self.late_reads,
            self.late_read_stalls,
            self.upload_bytes as f64 / 1e6,
            self.readback_bytes as f64 / 1e3,
            self.record_ms
        )
    }
}

pub(super) struct Profiler {
    pub(super) queries: wgpu::QuerySet,
    pub(super) resolve: wgpu::Buffer,
    pub(super) readback: wgpu::Buffer,
    pub(super) labels: Vec<&'static str>,
    pub(super) totals: BTreeMap<&'static str, (f64, u64)>,
}

impl Gpu {
    /// What the engine did since the last [`Gpu::reset_counters`].
    pub fn counters(&self) -> Counters {
        *self.0.counters.lock().unwrap()
    }

    /// Zeroes the [`Counters`].
    pub fn reset_counters(&self) {
        *self.0.counters.lock().unwrap() = Counters::default();
        self.0.launches.lock().unwrap().clear();
    }

    /// Launches per kernel entry since the last [`Gpu::reset_counters`], most first (counted
    /// in accounting-only runs too, so a step too big to run can be broken down).
    pub fn launches(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .0
            .launches
            .lock()
            .unwrap()
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    pub(super) fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.0.counters.lock().unwrap())
    }

    /// Starts collecting per-kernel GPU time from timestamp queries (if the adapter has them).
    pub fn profile_start(&self) -> Result<bool> {
        if !self.has_timestamps() || self.is_accounting_only() {
            return Ok(false);
        }
        self.flush()?;
        let queries = self.0.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profiler"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * PROFILE_PAIRS,
        });
        let mk = |usage| {
            self.0.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profiler"),
                size: 16 * PROFILE_PAIRS as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        *self.0.profiler.lock().unwrap() = Some(Profiler {
            queries,
            resolve: mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            labels: Vec::new(),
            totals: BTreeMap::new(),
        });
        Ok(true)
    }

    /// Whether [`Gpu::profile_start`] is collecting.
    pub fn is_profiling(&self) -> bool {
        self.0.profiler.lock().unwrap().is_some()
    }

    /// Stops profiling; returns (kernel entry, total ns, launches), sorted by name.
    pub fn profile_stop(&self) -> Result<Vec<(&'static str, f64, u64)>> {
        self.sync()?;
        let p = self.0.profiler.lock().unwrap().take();
        Ok(
            p.map(|p| p.totals.into_iter().map(|(k, (t, n))| (k, t, n)).collect())
                .unwrap_or_default(),
        )
    }
}
