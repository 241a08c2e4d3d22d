//! Host <-> device: uploads through the upload arena (or a staging buffer), zero fills,
//! read-back.

use super::dispatch::{grid, BufRef, ARENA_SLOTS};
use super::error::{Error, Result};
use super::params::kernel_params;
use super::pipelines::Kernel;
use super::Gpu;

/// Host uploads up to this many bytes go through the upload arena (inside the compute pass);
/// larger ones through a staging buffer and a copy command.
const UPLOAD_ARENA_MAX: u64 = 64 << 20;
const FILL_WORDS: Kernel = Kernel::new("words", "fill_words", 1, 1);
const COPY_WORDS: Kernel = Kernel {
    entry: "copy_words",
    ..FILL_WORDS
};

kernel_params! {
    /// `words.wgsl`'s uniforms.
    pub struct WordsParams in ["words"] {
        /// Words to write.
        n: u32,
        /// Word offset in the source (`copy_words`).
        src_off: u32,
        /// Word offset in the destination.
        dst_off: u32,
        /// The word written (`fill_words`).
        value: u32,
    }
}

impl Gpu {
    pub(super) fn map_read<T: bytemuck::Pod>(
        &self,
        buf: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<T>> {
        self.count(|c| {
            c.blocking_waits += 1;
            c.readback_bytes += bytes;
        });
        let (tx, rx) = std::sync::mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let out = {
            let view = buf
                .get_mapped_range(0..bytes)
                .map_err(|e| Error::Gpu(format!("{e:?}")))?;
            bytemuck::cast_slice::<u8, T>(&view).to_vec()
        };
        buf.unmap();
        Ok(out)
    }

    /// Copies `bytes` from the start of `buf` to the host, submitting pending work first.
    pub fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        Ok(self
            .read_many(&[(buf, 0, bytes)])?
            .pop()
            .unwrap_or_default())
    }

    /// [`Gpu::read`] of several buffer ranges with one wait: each `(buffer, offset, bytes)` is
    /// copied into one staging buffer, so a step that needs a few scalars back pays one round
    /// trip. Offsets are multiples of 4.
    pub fn read_many(&self, srcs: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let padded: Vec<u64> = srcs.iter().map(|(_, _, b)| b.div_ceil(4) * 4).collect();
        let total: u64 = padded.iter().sum();
        if total == 0 {
            return Ok(vec![Vec::new(); srcs.len()]);
        }
        self.count(|c| c.buffers_created += 1);
        if self.is_accounting_only() {
            // What a real read does to the batch and the counters, without the device.
            self.with_encoder(|_| {});
            self.flush()?;
            self.count(|c| {
                c.blocking_waits += 1;
                c.readback_bytes += total;
            });
            return Ok(srcs.iter().map(|(_, _, b)| vec![0; *b as usize]).collect());
        }
        let staging = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| {
            let mut at = 0;
            for ((buf, offset, _), &n) in srcs.iter().zip(&padded) {
                if n > 0 {
                    e.copy_buffer_to_buffer(buf, *offset, &staging, at, n);
                }
                at += n;
            }
        });
        self.flush()?;
        let all: Vec<u8> = self.map_read(&staging, total)?;
        let mut at = 0;
        Ok(srcs
            .iter()
            .zip(&padded)
            .map(|((_, _, bytes), &n)| {
                let out = all[at as usize..][..*bytes as usize].to_vec();
                at += n;
                out
            })
            .collect())
    }

    /// Writes host bytes into the start of `buf`, ordered after everything already recorded.
    pub fn write(&self, buf: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.write_at(buf, 0, data)
    }

    /// [`Gpu::write`] at a byte `offset` that is a multiple of the offset alignment.
    pub fn write_at(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        let padded = data.len().div_ceil(4) * 4;
        if padded == 0 {
            return Ok(());
        }
        self.count(|c| c.upload_bytes += padded as u64);
        let align = self.offset_align();
        if padded as u64 > UPLOAD_ARENA_MAX.min(self.max_binding() - align) {
            return self.write_staged(buf, offset, data);
        }
        // Into the upload arena (written to the device at submit, before this batch's
        // commands run), then a copy_words dispatch in the pass: no pass ends, no new buffer.
        // One lock over both, so no other thread submits the batch in between.
        let mut batch = self.0.batch.lock().unwrap();
        let at = (batch.uploads.len() as u64).next_multiple_of(align);
        if at + padded as u64 > batch.upload_capacity || batch.slots == ARENA_SLOTS {
            self.submit(&mut batch)?;
        }
        let at = (batch.uploads.len() as u64).next_multiple_of(align);
        if at + padded as u64 > batch.upload_capacity {
            // Only an empty batch gets here (it was just submitted), so nothing recorded binds
            // the old arena.
            let size = (at + padded as u64).next_power_of_two().max(1 << 20);
            batch.upload_capacity = size;
            self.count(|c| c.buffers_created += 1);
            batch.upload_arena = Some(self.0.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload arena"),
                size: if self.is_accounting_only() { 4 } else { size },
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        batch.uploads.resize(at as usize, 0);
        batch.uploads.extend_from_slice(data);
        batch.uploads.resize((at as usize) + padded, 0);
        let arena = batch.upload_arena.clone().expect("sized above");
        let words = (padded / 4) as u32;
        self.dispatch_locked(
            &mut batch,
            &COPY_WORDS,
            &WordsParams {
                n: words,
                ..Default::default()
            },
            &[
                BufRef {
                    buffer: &arena,
                    offset: at,
                    size: padded as u64,
                },
                BufRef {
                    buffer: buf,
                    offset,
                    size: padded as u64,
                },
            ],
            grid(words as u64, 256),
        )
    }

    /// [`Gpu::write`] through a staging buffer and a copy command (for uploads too big for the
    /// arena).
    fn write_staged(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        let padded = data.len().div_ceil(4) * 4;
        self.count(|c| c.buffers_created += 1);
        if self.is_accounting_only() {
            self.with_encoder(|_| {});
            return Ok(());
        }
        // A staging copy inside the encoder (not queue.write_buffer, which would run before
        // already-recorded commands that may still read a recycled buffer).
        // Host-visible memory can run out where device memory did not: an error, not a panic.
        let scope = self
            .0
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let staging = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: padded as u64,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        let failed = pollster::block_on(scope.pop()).is_some();
        match staging.get_mapped_range_mut(..) {
            Ok(mut view) if !failed => view.slice(..data.len()).copy_from_slice(data),
            _ => {
                return Err(Error::OutOfMemory {
                    asked: padded as u64,
                    in_use: self.live_bytes(),
                })
            }
        }
        staging.unmap();
        self.with_encoder(|e| e.copy_buffer_to_buffer(&staging, 0, buf, offset, padded as u64));
        Ok(())
    }

    /// Sets the first `bytes` of `buf` to zero with `fill_words` dispatches (inside the compute
    /// pass, unlike a clear command), in binding-sized pieces.
    pub fn zero(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<()> {
        self.zero_at(buf, 0, bytes)
    }

    /// [`Gpu::zero`] of `bytes` from a byte `offset` that is a multiple of the offset alignment.
    pub fn zero_at(&self, buf: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<()> {
        let end = offset + bytes.div_ceil(4) * 4;
        let piece = (self.max_binding() / self.offset_align()) * self.offset_align();
        let mut at = offset;
        while at < end {
            let size = piece.min(end - at);
            let words = size / 4;
            let d = BufRef {
                buffer: buf,
                offset: at,
                size,
            };
            let unused = BufRef {
                buffer: &self.0.unused,
                offset: 0,
                size: 4,
            };
            self.dispatch(
                &FILL_WORDS,
                &WordsParams {
                    n: words as u32,
                    ..Default::default()
                },
                &[unused, d],
                grid(words, 256),
            )?;
            at += size;
        }
        Ok(())
    }
}
