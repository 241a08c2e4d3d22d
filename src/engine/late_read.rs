//! Reads that the host takes a step late: the copy is recorded now, after the work that
//! makes the values, and the host collects them once it has recorded more work, by which time
//! the GPU has long finished them. Asking costs no wait and, on a GPU that keeps up,
//! collecting costs none either, so the GPU never idles while the host reads.

use super::error::{Error, Result};
use super::tensor::Tensor;
use super::Gpu;
use std::sync::{Arc, Mutex};

/// Values copied out for the host to collect later ([`Gpu::read_later`]).
pub struct LateRead {
    gpu: Gpu,
    /// The staging buffer (reused by the next late read once collected).
    staging: Option<wgpu::Buffer>,
    /// The submission that fills it and the mapping's result once the device has reported
    /// it (`None` in an accounting-only run, which reads zeros).
    pending: Option<(wgpu::SubmissionIndex, Mapped)>,
    n: usize,
}

type Mapped = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

impl Gpu {
    /// Records a copy of these f32 tensors (a step's scalars, or a range of gradients) to the
    /// host, submits it and returns at once; [`LateRead::get`] collects their values, one
    /// tensor after the other.
    pub fn read_later(&self, tensors: &[&Tensor]) -> Result<LateRead> {
        for t in tensors {
            t.expect_f32("read_later")?;
        }
        let bytes: u64 = tensors.iter().map(|t| t.bytes()).sum();
        self.count(|c| {
            c.late_reads += 1;
            c.readback_bytes += bytes;
        });
        let mut read = LateRead {
            gpu: self.clone(),
            staging: None,
            pending: None,
            n: (bytes / 4) as usize,
        };
        if bytes == 0 {
            return Ok(read);
        }
        // The smallest collected read's buffer that is large enough (accounting-only runs
        // keep them too, so that they count what a real run creates).
        let reused = {
            let mut free = self.0.late_staging.lock().unwrap();
            let fit = (free.iter().enumerate())
                .filter(|(_, b)| b.size() >= bytes)
                .min_by_key(|(_, b)| b.size());
            fit.map(|(i, _)| i).map(|i| free.swap_remove(i))
        };
        let staging = match reused {
            Some(b) => b,
            None => {
                self.count(|c| c.buffers_created += 1);
                self.0.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("late read"),
                    size: bytes.next_multiple_of(16),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        if self.is_accounting_only() {
            // What a real read does to the batch, without the device.
            self.with_encoder(|_| {});
            self.flush()?;
            read.staging = Some(staging);
            return Ok(read);
        }
        self.with_encoder(|e| {
            let mut at = 0;
            for t in tensors {
                e.copy_buffer_to_buffer(t.buffer(), t.byte_offset(), &staging, at, t.bytes());
                at += t.bytes();
            }
        });
        self.flush()?;
        // An empty submission after the copy: waiting for it waits for the copy and what came
        // before, not for what the host records next.
        let index = self.0.queue.submit(std::iter::empty());
        let mapped: Mapped = Arc::default();
        let slot = mapped.clone();
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            *slot.lock().unwrap() = Some(r);
        });
        read.staging = Some(staging);
        read.pending = Some((index, mapped));
        Ok(read)
    }
}

impl LateRead {
    /// The values, in the order asked, after submitting what is recorded. Waits only if the
    /// GPU has not finished them yet (counted as a late read that stalled).
    pub fn get(self) -> Result<Vec<f32>> {
        let Some(staging) = self.staging else {
            return Ok(Vec::new());
        };
        // What the host has recorded since goes to the GPU first, so that if the values are
        // not there yet the GPU has all of it to work on while the host waits.
        self.gpu.flush()?;
        let Some((index, mapped)) = self.pending else {
            self.gpu.0.late_staging.lock().unwrap().push(staging);
            return Ok(vec![0.0; self.n]);
        };
        let device = &self.gpu.0.device;
        let poll = |p| {
            device
                .poll(p)
                .map(|_| ())
                .map_err(|e| Error::Gpu(e.to_string()))
        };
        poll(wgpu::PollType::Poll)?;
        if mapped.lock().unwrap().is_none() {
            self.gpu.count(|c| c.late_read_stalls += 1);
            poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })?;
        }
        let result = mapped.lock().unwrap().take();
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Gpu(e.to_string())),
            None => return Err(Error::Gpu("a late read was never mapped".into())),
        }
        let values = {
            let view = staging
                .get_mapped_range(..4 * self.n as u64)
                .map_err(|e| Error::Gpu(format!("{e:?}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.gpu.0.late_staging.lock().unwrap().push(staging);
        Ok(values)
    }
}
