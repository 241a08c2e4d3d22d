//! Buffers kept for reuse by size class, and the memory budget they count against.

use super::error::{Error, Result};
use super::Gpu;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
/// A pooled buffer's size class and serial number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub class: u64,
    pub serial: u64,
}

/// Buffers kept for reuse, keyed by size class.
#[derive(Default)]
pub(super) struct Pool {
    /// By serial, and the lowest serial is handed out first: the same sequence of
    /// allocations and releases then gets the same buffers every step, so the bind groups
    /// over them are cache hits.
    free: HashMap<u64, BTreeMap<u64, wgpu::Buffer>>,
    /// Serial numbers in creation order: the free buffers' order (wgpu's own ids are reused,
    /// and differ between real and accounting-only runs).
    next_serial: u64,
    live_bytes: u64,
    pooled_bytes: u64,
    peak_bytes: u64,
}

/// Rounds a byte count up to its pool size class: powers of two split in quarters,
/// so pooled buffers waste at most 25%.
fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let log = 63 - b.leading_zeros() as u64;
    let step = 1u64 << (log - 2);
    b.div_ceil(step) * step
}

impl Gpu {
    /// Device bytes held by live tensors.
    pub fn live_bytes(&self) -> u64 {
        self.0.pool.lock().unwrap().live_bytes
    }

    /// Highest device bytes ever held (live + pooled).
    pub fn peak_bytes(&self) -> u64 {
        self.0.pool.lock().unwrap().peak_bytes
    }

    /// Takes a buffer of at least `bytes` from the pool, or allocates one.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<(wgpu::Buffer, Slot)> {
        self.alloc_class(size_class(bytes), bytes)
    }

    /// [`Gpu::alloc`] without rounding up to a size class (beyond 256 bytes): for the few
    /// large buffers that live as long as a run (the optimiser's), where a quarter wasted
    /// would be gigabytes.
    pub(crate) fn alloc_exact(&self, bytes: u64) -> Result<(wgpu::Buffer, Slot)> {
        self.alloc_class(bytes.max(4).next_multiple_of(256), bytes)
    }

    fn alloc_class(&self, class: u64, bytes: u64) -> Result<(wgpu::Buffer, Slot)> {
        if class > self.0.limits.max_buffer_size {
            return Err(Error::Limit {
                op: "alloc",
                msg: format!(
                    "buffer of {bytes} bytes exceeds the device's max_buffer_size {}",
                    self.0.limits.max_buffer_size
                ),
            });
        }
        let mut pool = self.0.pool.lock().unwrap();
        pool.live_bytes += class;
        if let Some((serial, buf)) = pool.free.get_mut(&class).and_then(|v| v.pop_first()) {
            pool.pooled_bytes -= class;
            return Ok((buf, Slot { class, serial }));
        }
        let limit = self.0.memory_limit.load(Ordering::Relaxed);
        if pool.live_bytes + pool.pooled_bytes > limit {
            // Pooled buffers of other sizes go first; then the budget is really exhausted.
            pool.free.clear();
            pool.pooled_bytes = 0;
            self.0.bind_groups.lock().unwrap().clear();
            if pool.live_bytes > limit {
                pool.live_bytes -= class;
                return Err(Error::OutOfMemory {
                    asked: class,
                    in_use: pool.live_bytes,
                });
            }
        }
        pool.peak_bytes = pool.peak_bytes.max(pool.live_bytes + pool.pooled_bytes);
        let serial = pool.next_serial;
        pool.next_serial += 1;
        drop(pool);
        // New buffers are rare once the pool is warm, so checking each for out-of-memory
        // synchronously costs little and turns a later driver error into a clear one here.
        for attempt in 0..2 {
            let scope = self
                .0
                .device
                .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buf = self.0.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: if self.is_accounting_only() { 4 } else { class },
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            if pollster::block_on(scope.pop()).is_none() {
                self.count(|c| c.buffers_created += 1);
                return Ok((buf, Slot { class, serial }));
            }
            if attempt == 0 {
                // Pooled buffers of other sizes may be what fills the device: free and retry.
                self.trim_pool();
            }
        }
        let mut pool = self.0.pool.lock().unwrap();
        pool.live_bytes -= class;
        Err(Error::OutOfMemory {
            asked: class,
            in_use: pool.live_bytes,
        })
    }

    /// Returns a buffer to the pool. Commands already recorded that use it still run first,
    /// because the GPU executes the encoder in order.
    pub(crate) fn release(&self, buf: wgpu::Buffer, slot: Slot) {
        let mut pool = self.0.pool.lock().unwrap();
        pool.live_bytes -= slot.class;
        pool.pooled_bytes += slot.class;
        pool.free
            .entry(slot.class)
            .or_default()
            .insert(slot.serial, buf);
    }

    /// Frees every pooled (unused) buffer.
    pub fn trim_pool(&self) {
        let mut pool = self.0.pool.lock().unwrap();
        pool.free.clear();
        pool.pooled_bytes = 0;
        // Cached bind groups hold their buffers: drop them so the memory really goes.
        self.0.bind_groups.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_waste_at_most_a_quarter() {
        for b in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            5000,
            1 << 20,
            (1 << 20) + 1,
            123_456_789,
        ] {
            let c = size_class(b);
            assert!(c >= b);
            assert!(c as f64 <= (b.max(256) as f64) * 1.25 + 1.0, "{b} -> {c}");
        }
        assert_eq!(size_class(1000), size_class(1024));
    }
}
