//! The engine: one GPU device, its pooled buffers, cached pipelines and batched dispatch,
//! and the tensors that live on it. It knows nothing of audio, models or the command line.
//!
//! Every kernel launch goes through [`Gpu::dispatch`], which records into one open compute pass
//! of a long-lived command encoder (wgpu puts the barriers between dispatches). The encoder is
//! submitted when someone needs a value back ([`Gpu::read`]), on [`Gpu::flush`], and every
//! [`ARENA_SLOTS`] dispatches, so the GPU starts on a step while the CPU still records it.
//! Bind groups are cached by the buffer ranges they bind (each dispatch's params reach the
//! kernel through a dynamic offset into one uniform arena), so a steady-state training step,
//! whose pooled buffers recur, creates almost none. [`Counters`] count what a step costs.
//!
//! Rooms: [`adapter`] (choice, features), [`pool`] (buffers by size class), [`pipelines`]
//! (shader registry and variants, layouts, pipelines), [`dispatch`] (the batch, bind groups,
//! submits), [`params`] (typed kernel uniforms), [`transfer`] (uploads, zero fills, read-back),
//! [`profile`] (counters, timestamps), `robustness` (a device without the driver's
//! bounds checks), [`tuning`] (measured kernel choices per adapter),
//! [`tensor`], [`dtype`], [`error`].

pub mod adapter;
pub mod dispatch;
pub mod dtype;
pub mod error;
pub mod late_read;
pub mod params;
pub mod pipelines;
pub mod pool;
pub mod profile;
mod robustness;
pub mod tensor;
pub mod transfer;
pub mod tuning;

pub use adapter::{adapters, coop_shape, AdapterSummary, CoopShape};
pub use dispatch::{grid, BufRef, ARENA_SLOTS};
pub use dtype::DType;
pub use error::{Error, Result};
pub use late_read::LateRead;
pub use params::KernelParams;
pub use pipelines::{
    Kernel, COOP128_VARIANTS, COOP128_WIDE_VARIANTS, COOP_VARIANTS, F16_SUFFIX, K16_SUFFIX,
    LANES_SUFFIX, V4_SUFFIX, WIDE_SUFFIX,
};
pub use profile::Counters;
pub use tensor::Tensor;
pub use tuning::{Choice, Loaded, TuneMode};

use adapter::{open, Opened};
use dispatch::{Batch, BindKey, UNIFORM_SLOT};
use pipelines::{Layouts, Pipeline};
use pool::Pool;
use profile::Profiler;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shared handle to one GPU device; cheap to clone.
#[derive(Clone)]
pub struct Gpu(Arc<GpuInner>);

/// The state behind a [`Gpu`] handle.
struct GpuInner {
    /// The wgpu device.
    device: wgpu::Device,
    /// Its queue.
    queue: wgpu::Queue,
    /// What adapter it runs on.
    info: wgpu::AdapterInfo,
    /// The limits requested (the adapter's own).
    limits: wgpu::Limits,
    /// Enabled optional features.
    features: wgpu::Features,
    /// Whether the driver bounds-checks buffer accesses (`robustness`).
    robust: bool,
    /// The tensor-core kernels' shape, where they run.
    coop: Option<CoopShape>,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    layouts: Mutex<HashMap<(u32, u32), Layouts>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    /// Kernels that failed to compile here ([`Gpu::compiles`]).
    failed: Mutex<std::collections::HashSet<(&'static str, &'static str)>>,
    pool: Mutex<Pool>,
    batch: Mutex<Batch>,
    /// Bind groups by the ranges they bind; `None` in accounting-only runs.
    bind_groups: Mutex<HashMap<BindKey, Option<wgpu::BindGroup>>>,
    /// A 4-byte storage buffer for bindings a kernel entry does not read.
    unused: wgpu::Buffer,
    counters: Mutex<Counters>,
    /// Launches per kernel entry since the last reset.
    launches: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    profiler: Mutex<Option<Profiler>>,
    /// Measured kernel choices ([`tuning`]).
    tuning: Mutex<tuning::Tuning>,
    max_binding: AtomicU64,
    /// Budget for pooled + live buffers (`XLSR_MEMORY_LIMIT_GB`, or set by tests).
    memory_limit: AtomicU64,
    /// Accounting only: see [`Gpu::set_accounting_only`].
    accounting_only: AtomicBool,
    errors: Arc<Mutex<Vec<String>>>,
    /// Staging buffers of collected late reads, for the next ones (`late_read.rs`).
    late_staging: Mutex<Vec<wgpu::Buffer>>,
}

impl Gpu {
    /// Opens the best adapter (discrete > integrated > CPU) or the one whose name contains
    /// `XLSR_ADAPTER` (case-insensitive).
    pub fn new() -> Result<Gpu> {
        Gpu::nth(0)
    }

    /// As [`Gpu::new`], but with several adapters of the best kind, the `nth` of them (modulo
    /// their number): the process's local rank in data-parallel training.
    pub fn nth(nth: usize) -> Result<Gpu> {
        let Opened {
            device,
            queue,
            info,
            limits,
            features,
            robust,
            coop,
        } = open(nth)?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: UNIFORM_SLOT * ARENA_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let unused = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        Ok(Gpu(Arc::new(GpuInner {
            device,
            queue,
            info,
            limits,
            features,
            robust,
            coop,
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            failed: Mutex::default(),
            pool: Mutex::default(),
            late_staging: Mutex::default(),
            batch: Mutex::new(Batch {
                pass: None,
                encoder: None,
                arena,
                uniforms: Vec::with_capacity((UNIFORM_SLOT * ARENA_SLOTS) as usize),
                slots: 0,
                uploads: Vec::new(),
                upload_arena: None,
                upload_capacity: 0,
                open_pass: false,
                pending: false,
            }),
            bind_groups: Mutex::default(),
            unused,
            counters: Mutex::default(),
            launches: Mutex::default(),
            profiler: Mutex::new(None),
            tuning: Mutex::default(),
            max_binding: AtomicU64::new(max_binding),
            memory_limit: AtomicU64::new(
                std::env::var("XLSR_MEMORY_LIMIT_GB")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .and_then(|v| v.parse::<f64>().ok())
                    .map_or(u64::MAX, |gb| (gb * 1e9) as u64),
            ),
            accounting_only: AtomicBool::new(false),
            errors,
        })))
    }

    /// The adapter this device runs on (name, backend, type, driver).
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.0.info
    }

    /// The device limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }

    /// Largest byte range one kernel binding may cover; tensors above it are processed in chunks.
    pub fn max_binding(&self) -> u64 {
        self.0.max_binding.load(Ordering::Relaxed)
    }

    /// Caps the device memory the engine may hold (live + pooled buffers): an allocation past
    /// it fails with [`Error::OutOfMemory`] as a full device would. Simulates a smaller card.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.0.memory_limit.store(bytes, Ordering::Relaxed);
    }

    /// Accounting only (a dry run): buffers are allocated and accounted at their full size
    /// class, but backed by 4-byte stand-ins, and kernels, copies and uploads are skipped;
    /// reads return zeros. A pass then makes exactly the allocations a real one would (they
    /// depend on shapes, not values), so its peak is the real peak, and the same dispatches,
    /// passes, bind groups, submits and waits ([`Counters`]), at no compute cost. Values are
    /// meaningless: for planning only, on a device used for nothing else.
    pub fn set_accounting_only(&self, on: bool) {
        // Pooled buffers (and bind groups over them) of one mode must not be used in the other.
        self.trim_pool();
        self.0.accounting_only.store(on, Ordering::Relaxed);
    }

    /// Whether this is an accounting-only run ([`Gpu::set_accounting_only`]).
    pub fn is_accounting_only(&self) -> bool {
        self.0.accounting_only.load(Ordering::Relaxed)
    }

    /// Lowers the chunking threshold (tests use it to exercise chunked dispatch on small data).
    pub fn set_max_binding(&self, bytes: u64) {
        let cap = self
            .0
            .limits
            .max_storage_buffer_binding_size
            .min(self.0.limits.max_buffer_size);
        self.0
            .max_binding
            .store(bytes.clamp(1024, cap), Ordering::Relaxed);
    }

    /// Storage offset alignment in bytes: chunk boundaries are multiples of it.
    pub fn offset_align(&self) -> u64 {
        self.0.limits.min_storage_buffer_offset_alignment.max(4) as u64
    }

    /// Whether the adapter can write GPU timestamps (used by benchmarks).
    pub fn has_timestamps(&self) -> bool {
        self.0.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether f16 kernels can run (the adapter has SHADER_F16 and it was enabled).
    pub fn has_f16(&self) -> bool {
        self.0.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether shaders may use subgroup operations (the four-lane attention build);
    /// `XLSR_NO_SUBGROUPS=1` turns them off.
    pub fn has_subgroups(&self) -> bool {
        self.0.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether f16 GEMMs run on cooperative matrices (tensor cores): see [`coop_shape`];
    /// `XLSR_NO_COOP=1` turns them off.
    pub fn has_coop(&self) -> bool {
        self.0.coop.is_some()
    }

    /// Whether the driver bounds-checks every buffer access (robust buffer access): true but
    /// on a Vulkan device opened with `XLSR_ROBUSTNESS=0` (`robustness`).
    pub fn robust_buffers(&self) -> bool {
        self.0.robust
    }

    /// The shape the tensor-core kernels are built in, where they run.
    pub fn coop_shape(&self) -> Option<CoopShape> {
        self.0.coop
    }
}
