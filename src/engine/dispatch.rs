//! Recording kernel launches: the open batch (encoder, pass, uniform arena), cached bind
//! groups, submits and waits.

use super::error::{Error, Result};
use super::params::{base_file, KernelParams};
use super::pipelines::{Kernel, Pipeline};
use super::profile::PROFILE_PAIRS;
use super::Gpu;

/// Bytes reserved per dispatch in the uniform arena (also the offset alignment we use).
pub(super) const UNIFORM_SLOT: u64 = 256;
/// Dispatches recorded before the encoder is submitted and the uniform arena reused: few
/// enough that the GPU is never idle long while the CPU records, many enough that submits
/// stay cheap.
pub const ARENA_SLOTS: u64 = 256;

/// A byte range of a buffer bound to one kernel binding.
#[derive(Clone, Copy)]
pub struct BufRef<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Start in bytes (a multiple of the device's storage offset alignment).
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The buffer ranges of one dispatch's storage bindings, with its layout: a bind-group key.
pub(super) type BindKey = ((u32, u32), Vec<(wgpu::Buffer, u64, u64)>);

/// Cached bind groups past this many are dropped (a long-lived key set is far smaller).
const BIND_CACHE_MAX: usize = 8192;

pub(super) struct Batch {
    /// The compute pass open on `encoder` (dropping it ends the pass; the encoder is locked
    /// while it is open). Declared first so that it is dropped first.
    pub(super) pass: Option<wgpu::ComputePass<'static>>,
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    pub(super) arena: wgpu::Buffer,
    pub(super) uniforms: Vec<u8>,
    pub(super) slots: u64,
    /// Host data for this batch's uploads, written to `upload_arena` at submit (as the
    /// params are to `arena`) and copied into tensors by `copy_words` dispatches.
    pub(super) uploads: Vec<u8>,
    pub(super) upload_arena: Option<wgpu::Buffer>,
    pub(super) upload_capacity: u64,
    /// A compute pass is open (also tracked in accounting-only runs, which record nothing).
    pub(super) open_pass: bool,
    /// Commands are recorded and not yet submitted (likewise).
    pub(super) pending: bool,
}

impl Gpu {
    /// Records one kernel launch. `params` fill the kernel's uniform struct, of a type that
    /// mirrors the kernel file's WGSL `Params`. Nothing runs until the batch is submitted.
    pub fn dispatch<P: KernelParams>(
        &self,
        k: &Kernel,
        params: &P,
        bufs: &[BufRef<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let mut batch = self.0.batch.lock().unwrap();
        self.dispatch_locked(&mut batch, k, params, bufs, groups)
    }

    /// [`Gpu::dispatch`] with the batch already locked, so that a caller can stage data for
    /// the kernel (an upload) and record it without another thread submitting in between.
    pub(super) fn dispatch_locked<P: KernelParams>(
        &self,
        batch: &mut Batch,
        k: &Kernel,
        params: &P,
        bufs: &[BufRef<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        if bufs.len() != (k.reads + k.writes) as usize {
            return Err(Error::Gpu(format!(
                "{}: {} buffers bound, kernel expects {}",
                k.entry,
                bufs.len(),
                k.reads + k.writes
            )));
        }
        let max_groups = self.0.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::Limit {
                op: k.entry,
                msg: format!("dispatch of {groups:?} workgroups exceeds the device limit {max_groups} per dimension"),
            });
        }
        for b in bufs {
            if b.size > self.max_binding() && b.size > self.0.limits.max_storage_buffer_binding_size
            {
                return Err(Error::Limit {
                    op: k.entry,
                    msg: format!(
                        "binding of {} bytes exceeds max_storage_buffer_binding_size {}",
                        b.size, self.0.limits.max_storage_buffer_binding_size
                    ),
                });
            }
        }
        if size_of::<P>() > UNIFORM_SLOT as usize {
            return Err(Error::Gpu(format!("{}: too many params", k.entry)));
        }
        if !P::FILES.contains(&base_file(k.file)) {
            return Err(Error::Gpu(format!(
                "{}: params for {:?} given to a kernel of {}.wgsl",
                k.entry,
                P::FILES,
                k.file
            )));
        }
        let pipeline = self.pipeline(k, P::FIELDS)?;
        let accounting = self.is_accounting_only();
        if batch.slots == ARENA_SLOTS {
            self.submit(batch)?;
        }
        let slot = batch.slots;
        batch.slots += 1;
        batch.uniforms.extend_from_slice(bytemuck::bytes_of(params));
        batch
            .uniforms
            .resize(((slot + 1) * UNIFORM_SLOT) as usize, 0);
        let bind_group = self.bind_group(k, &pipeline, &batch.arena, bufs, accounting);

        let mut profiler = self.0.profiler.lock().unwrap();
        if profiler.is_some() {
            // Profiling times each dispatch in a pass of its own.
            end_pass(batch);
        }
        let new_pass = !batch.open_pass;
        batch.open_pass = true;
        batch.pending = true;
        self.count(|c| {
            c.dispatches += 1;
            c.compute_passes += new_pass as u64;
        });
        *self.0.launches.lock().unwrap().entry(k.entry).or_default() += 1;
        if let Some(bind_group) = bind_group {
            let timestamp_writes = profiler.as_mut().map(|p| {
                let i = p.labels.len() as u32;
                p.labels.push(k.entry);
                wgpu::ComputePassTimestampWrites {
                    query_set: &p.queries,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                }
            });
            let Batch { encoder, pass, .. } = batch;
            let pass = pass.get_or_insert_with(|| {
                encoder
                    .get_or_insert_with(|| {
                        self.0
                            .device
                            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
                    })
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    })
                    .forget_lifetime()
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[(slot * UNIFORM_SLOT) as u32]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if profiler.is_some() {
            end_pass(batch);
        }
        let full = profiler
            .as_ref()
            .is_some_and(|p| p.labels.len() as u32 == PROFILE_PAIRS);
        drop(profiler);
        if full {
            self.submit(batch)?;
        }
        let ms = started.elapsed().as_secs_f64() * 1e3;
        self.count(|c| c.record_ms += ms);
        Ok(())
    }

    /// The cached bind group for these buffer ranges, created on first use (`None` in
    /// accounting-only runs, which count the creation but make nothing).
    fn bind_group(
        &self,
        k: &Kernel,
        pipeline: &Pipeline,
        arena: &wgpu::Buffer,
        bufs: &[BufRef<'_>],
        accounting: bool,
    ) -> Option<wgpu::BindGroup> {
        let key: BindKey = (
            (k.reads, k.writes),
            bufs.iter()
                .map(|b| (b.buffer.clone(), b.offset, b.size.max(4)))
                .collect(),
        );
        let mut cache = self.0.bind_groups.lock().unwrap();
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        if cache.len() >= BIND_CACHE_MAX {
            cache.clear();
        }
        self.count(|c| c.bind_groups_created += 1);
        let bg = (!accounting).then(|| {
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: arena,
                    offset: 0,
                    size: wgpu::BufferSize::new(UNIFORM_SLOT),
                }),
            }];
            for (i, (buffer, offset, size)) in key.1.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: wgpu::BufferSize::new(*size),
                    }),
                });
            }
            self.0.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            })
        });
        cache.insert(key, bg.clone());
        bg
    }

    /// Runs `f` with the pending command encoder (for copies and clears).
    pub(crate) fn with_encoder(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut batch = self.0.batch.lock().unwrap();
        end_pass(&mut batch);
        batch.pending = true;
        if self.is_accounting_only() {
            return;
        }
        let encoder = batch.encoder.get_or_insert_with(|| {
            self.0
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder)
    }

    /// Submits everything recorded so far (without waiting for it).
    pub fn flush(&self) -> Result<()> {
        let mut batch = self.0.batch.lock().unwrap();
        self.submit(&mut batch)
    }

    pub(super) fn submit(&self, batch: &mut Batch) -> Result<()> {
        end_pass(batch);
        if !std::mem::take(&mut batch.pending) {
            return self.check_errors();
        }
        let uniforms = batch.uniforms.len() as u64;
        self.count(|c| {
            c.submits += 1;
            c.upload_bytes += uniforms;
        });
        let encoder = batch.encoder.take();
        if batch.slots > 0 && encoder.is_some() {
            self.0.queue.write_buffer(&batch.arena, 0, &batch.uniforms);
        }
        if let (Some(arena), Some(_)) = (&batch.upload_arena, &encoder) {
            if !batch.uploads.is_empty() {
                self.0.queue.write_buffer(arena, 0, &batch.uploads);
            }
        }
        batch.uploads.clear();
        batch.uniforms.clear();
        batch.slots = 0;
        let Some(mut encoder) = encoder else {
            return self.check_errors();
        };
        let mut profiler = self.0.profiler.lock().unwrap();
        let pairs = profiler.as_ref().map_or(0, |p| p.labels.len() as u32);
        if let Some(p) = profiler.as_mut().filter(|_| pairs > 0) {
            encoder.resolve_query_set(&p.queries, 0..2 * pairs, &p.resolve, 0);
            encoder.copy_buffer_to_buffer(&p.resolve, 0, &p.readback, 0, 16 * pairs as u64);
        }
        self.0.queue.submit([encoder.finish()]);
        if let Some(p) = profiler.as_mut().filter(|_| pairs > 0) {
            let ticks: Vec<u64> = self.map_read(&p.readback, 16 * pairs as u64)?;
            let period = self.0.queue.get_timestamp_period() as f64;
            for (i, label) in p.labels.drain(..).enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
                let e = p.totals.entry(label).or_insert((0.0, 0));
                e.0 += dt;
                e.1 += 1;
            }
        }
        self.check_errors()
    }

    fn check_errors(&self) -> Result<()> {
        let mut errors = self.0.errors.lock().unwrap();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Gpu(std::mem::take(&mut *errors).join("; ")))
        }
    }

    /// Waits for every submitted command to finish.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.count(|c| c.blocking_waits += 1);
        if self.is_accounting_only() {
            return Ok(());
        }
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.check_errors()
    }
}

/// Ends the open compute pass, if any (dropping it ends it).
pub(super) fn end_pass(batch: &mut Batch) {
    batch.pass = None;
    batch.open_pass = false;
}

/// Splits `n` threads of workgroup size `wg` into a grid within the 65535-per-dimension limit.
/// Shaders rebuild the linear index as `gid.x + gid.y * num_workgroups.x * wg`.
pub fn grid(n: u64, wg: u64) -> [u32; 3] {
    let groups = n.div_ceil(wg);
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(65535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}
