//! The GPU: adapter choice, device, cached pipelines, pooled buffers, batched dispatch, timing.
//!
//! Every kernel launch goes through [`Gpu::dispatch`], which records into one open compute pass
//! of a long-lived command encoder (wgpu puts the barriers between dispatches). The encoder is
//! submitted when someone needs a value back ([`Gpu::read`]), on [`Gpu::flush`], and every
//! [`ARENA_SLOTS`] dispatches, so the GPU starts on a step while the CPU still records it.
//! Bind groups are cached by the buffer ranges they bind (each dispatch's params reach the
//! kernel through a dynamic offset into one uniform arena), so a steady-state training step,
//! whose pooled buffers recur, creates almost none. [`Counters`] count what a step costs.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// WGSL sources, one file per kernel family, compiled once per device on first use.
const SHADERS: &[(&str, &str)] = &[
    ("matmul", include_str!("../shaders/matmul.wgsl")),
    ("elementwise", include_str!("../shaders/elementwise.wgsl")),
    ("activation", include_str!("../shaders/activation.wgsl")),
    ("dropout", include_str!("../shaders/dropout.wgsl")),
    ("norm", include_str!("../shaders/norm.wgsl")),
    ("conv1d", include_str!("../shaders/conv1d.wgsl")),
    ("softmax", include_str!("../shaders/softmax.wgsl")),
    ("reduce", include_str!("../shaders/reduce.wgsl")),
    ("copy", include_str!("../shaders/copy.wgsl")),
    ("ctc", include_str!("../shaders/ctc.wgsl")),
    ("weight_norm", include_str!("../shaders/weight_norm.wgsl")),
    ("adamw", include_str!("../shaders/adamw.wgsl")),
    ("cast", include_str!("../shaders/cast.wgsl")),
    ("words", include_str!("../shaders/words.wgsl")),
    ("sum_squares", include_str!("../shaders/sum_squares.wgsl")),
    ("attention", include_str!("../shaders/attention.wgsl")),
    ("matmul_coop", include_str!("../shaders/matmul_coop.wgsl")),
    (
        "matmul_coop128",
        include_str!("../shaders/matmul_coop128.wgsl"),
    ),
];

/// The cooperative-matrix GEMMs' builds, one per transpose combination (A, B): a file named
/// `BASE_XY` is `BASE.wgsl` with its `const TA` / `const TB` lines set (X, Y = n or t).
pub const COOP_VARIANTS: [[&str; 2]; 2] = [
    ["matmul_coop_nn", "matmul_coop_nt"],
    ["matmul_coop_tn", "matmul_coop_tt"],
];
/// The same for the workgroup-staged kernel (`matmul_coop128.wgsl`).
pub const COOP128_VARIANTS: [[&str; 2]; 2] = [
    ["matmul_coop128_nn", "matmul_coop128_nt"],
    ["matmul_coop128_tn", "matmul_coop128_tt"],
];

/// A kernel file named `NAME_f16` is `NAME.wgsl` with f16 inputs: its `alias In = f32;` line
/// (the storage type of the tensors it reads) becomes f16. One source serves both precisions,
/// and arithmetic stays f32 in both (loads convert).
pub const F16_SUFFIX: &str = "_f16";
const IN_F32: &str = "alias In = f32;";

/// The WGSL source of a kernel file, f16 variants derived as [`F16_SUFFIX`] says and the
/// cooperative-matrix GEMM's transpose variants as [`COOP_VARIANTS`] says.
fn shader_source(file: &str) -> Result<String> {
    if let Some((base, tt @ ("nn" | "nt" | "tn" | "tt"))) = file.rsplit_once('_') {
        let src = shader_source(base)?;
        let (ta, tb) = (tt.starts_with('t'), tt.ends_with('t'));
        return Ok(src
            .replace(
                "const TA: bool = false;",
                &format!("const TA: bool = {ta};"),
            )
            .replace(
                "const TB: bool = false;",
                &format!("const TB: bool = {tb};"),
            ));
    }
    let base = file.strip_suffix(F16_SUFFIX).unwrap_or(file);
    let src = SHADERS
        .iter()
        .find(|(n, _)| *n == base)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Gpu(format!("unknown shader file {file}")))?;
    if base == file {
        return Ok(src.to_string());
    }
    if !src.contains(IN_F32) {
        return Err(Error::Gpu(format!(
            "{base}.wgsl has no `{IN_F32}` line, so it has no f16 variant"
        )));
    }
    Ok(format!(
        "enable f16;\n{}",
        src.replace(IN_F32, "alias In = f16;")
    ))
}

/// Bytes reserved per dispatch in the uniform arena (also the offset alignment we use).
const UNIFORM_SLOT: u64 = 256;
/// Dispatches recorded before the encoder is submitted and the uniform arena reused: few
/// enough that the GPU is never idle long while the CPU records, many enough that submits
/// stay cheap.
pub const ARENA_SLOTS: u64 = 256;
/// Host uploads up to this many bytes go through the upload arena (inside the compute pass);
/// larger ones through a staging buffer and a copy command.
const UPLOAD_ARENA_MAX: u64 = 64 << 20;
const FILL_WORDS: Kernel = Kernel {
    file: "words",
    entry: "fill_words",
    reads: 1,
    writes: 1,
};
const COPY_WORDS: Kernel = Kernel {
    entry: "copy_words",
    ..FILL_WORDS
};
/// Timestamp pairs per profiler flush.
const PROFILE_PAIRS: u32 = 1024;

/// A compute kernel: an entry point in a WGSL file whose bindings are
/// `@binding(0)` uniform params, then `reads` read-only and `writes` read-write storage buffers.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Shader file name without extension (see `shaders/`).
    pub file: &'static str,
    /// Entry point name.
    pub entry: &'static str,
    /// Number of read-only storage bindings (bindings 1..=reads).
    pub reads: u32,
    /// Number of read-write storage bindings (after the read-only ones).
    pub writes: u32,
}

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

/// A bind-group layout and the pipeline layout wrapping it, per binding signature.
type Layouts = (Arc<wgpu::BindGroupLayout>, Arc<wgpu::PipelineLayout>);

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
            ..*self
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} dispatches, {} compute passes, {} bind groups created, {} pipelines created, {} buffers created, {} submits, {} blocking waits, {:.1} MB up, {:.1} KB back, {:.1} ms recording",
            self.dispatches,
            self.compute_passes,
            self.bind_groups_created,
            self.pipelines_created,
            self.buffers_created,
            self.submits,
            self.blocking_waits,
            self.upload_bytes as f64 / 1e6,
            self.readback_bytes as f64 / 1e3,
            self.record_ms
        )
    }
}

/// The buffer ranges of one dispatch's storage bindings, with its layout: a bind-group key.
type BindKey = ((u32, u32), Vec<(wgpu::Buffer, u64, u64)>);

/// Cached bind groups past this many are dropped (a long-lived key set is far smaller).
const BIND_CACHE_MAX: usize = 8192;

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: Arc<wgpu::BindGroupLayout>,
}

/// A pooled buffer's size class and serial number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub class: u64,
    pub serial: u64,
}

/// Buffers kept for reuse, keyed by size class.
#[derive(Default)]
struct Pool {
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

struct Batch {
    /// The compute pass open on `encoder` (dropping it ends the pass; the encoder is locked
    /// while it is open). Declared first so that it is dropped first.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    arena: wgpu::Buffer,
    uniforms: Vec<u8>,
    slots: u64,
    /// Host data for this batch's uploads, written to `upload_arena` at submit (as the
    /// params are to `arena`) and copied into tensors by `copy_words` dispatches.
    uploads: Vec<u8>,
    upload_arena: Option<wgpu::Buffer>,
    upload_capacity: u64,
    /// A compute pass is open (also tracked in accounting-only runs, which record nothing).
    open_pass: bool,
    /// Commands are recorded and not yet submitted (likewise).
    pending: bool,
}

struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    labels: Vec<&'static str>,
    totals: BTreeMap<&'static str, (f64, u64)>,
}

/// Shared handle to one GPU device; cheap to clone.
#[derive(Clone)]
pub struct Gpu(Arc<GpuInner>);

/// The state behind a [`Gpu`] handle.
pub struct GpuInner {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What adapter it runs on.
    pub info: wgpu::AdapterInfo,
    /// The limits requested (the adapter's own).
    pub limits: wgpu::Limits,
    /// Enabled optional features.
    pub features: wgpu::Features,
    modules: Mutex<HashMap<&'static str, Arc<wgpu::ShaderModule>>>,
    layouts: Mutex<HashMap<(u32, u32), Layouts>>,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    pool: Mutex<Pool>,
    batch: Mutex<Batch>,
    /// Bind groups by the ranges they bind; `None` in accounting-only runs.
    bind_groups: Mutex<HashMap<BindKey, Option<wgpu::BindGroup>>>,
    /// A 4-byte storage buffer for bindings a kernel entry does not read.
    unused: wgpu::Buffer,
    counters: Mutex<Counters>,
    profiler: Mutex<Option<Profiler>>,
    max_binding: AtomicU64,
    /// Budget for pooled + live buffers (`XLSR_MEMORY_LIMIT_GB`, or set by tests).
    memory_limit: AtomicU64,
    /// Accounting only: see [`Gpu::set_accounting_only`].
    accounting_only: AtomicBool,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::ops::Deref for Gpu {
    type Target = GpuInner;
    fn deref(&self) -> &GpuInner {
        &self.0
    }
}

/// One adapter as `xlsr devices` lists it.
pub struct AdapterSummary {
    /// Adapter info (name, backend, type, driver).
    pub info: wgpu::AdapterInfo,
    /// The adapter's limits.
    pub limits: wgpu::Limits,
    /// The adapter's features.
    pub features: wgpu::Features,
    /// The cooperative-matrix configurations it offers (tensor cores; empty on most).
    pub coop: Vec<wgpu::CooperativeMatrixProperties>,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

fn rank(info: &wgpu::AdapterInfo) -> u32 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Whether the cooperative-matrix GEMM can run on an adapter: it offers 16x16x16 f16 x f16 ->
/// f32 matrices, and its subgroups are always 32 lanes (the kernel's workgroup is one subgroup).
pub fn coop_usable(info: &wgpu::AdapterInfo, props: &[wgpu::CooperativeMatrixProperties]) -> bool {
    use wgpu::CooperativeScalarType as S;
    info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && props.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == S::F16
                && p.cr_type == S::F32
        })
}

/// Lists every adapter wgpu can see, best first.
pub fn adapters() -> Vec<AdapterSummary> {
    let mut list: Vec<AdapterSummary> =
        pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .map(|a| AdapterSummary {
                info: a.get_info(),
                limits: a.limits(),
                features: a.features(),
                coop: a.cooperative_matrix_properties(),
            })
            .collect();
    list.sort_by_key(|a| rank(&a.info));
    list
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
    /// Opens the best adapter (discrete > integrated > CPU) or the one whose name contains
    /// `XLSR_ADAPTER` (case-insensitive).
    pub fn new() -> Result<Gpu> {
        let wanted = std::env::var("XLSR_ADAPTER").ok().filter(|s| !s.is_empty());
        let mut all = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
        all.sort_by_key(|a| rank(&a.get_info()));
        let adapter = match &wanted {
            Some(w) => {
                let w = w.to_lowercase();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| Error::NoAdapter(format!(" matching XLSR_ADAPTER={w:?}")))?
            }
            None => all
                .into_iter()
                .next()
                .ok_or_else(|| Error::NoAdapter(String::new()))?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let mut optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        // XLSR_NO_F16=1 runs as if the adapter had no f16 (to test or rule out the f16 path).
        if std::env::var("XLSR_NO_F16").is_ok_and(|v| v == "1") {
            optional.remove(wgpu::Features::SHADER_F16);
        }
        if coop_usable(&info, &adapter.cooperative_matrix_properties())
            && !std::env::var("XLSR_NO_COOP").is_ok_and(|v| v == "1")
        {
            optional |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        let features = adapter.features() & optional;
        let coop = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("xlsr"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: cooperative matrices are wgpu's one experimental feature we use; only
            // the 16x16x16 f16 -> f32 configuration that `coop_usable` found is ever run.
            experimental_features: if coop {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| Error::Device {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
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
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            pool: Mutex::default(),
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
            profiler: Mutex::new(None),
            max_binding: AtomicU64::new(max_binding),
            memory_limit: AtomicU64::new(
                std::env::var("XLSR_MEMORY_LIMIT_GB")
                    .ok()
                    .and_then(|v| v.parse::<f64>().ok())
                    .map_or(u64::MAX, |gb| (gb * 1e9) as u64),
            ),
            accounting_only: AtomicBool::new(false),
            errors,
        })))
    }

    /// Largest byte range one kernel binding may cover; tensors above it are processed in chunks.
    pub fn max_binding(&self) -> u64 {
        self.max_binding.load(Ordering::Relaxed)
    }

    /// What the engine did since the last [`Gpu::reset_counters`].
    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap()
    }

    /// Zeroes the [`Counters`].
    pub fn reset_counters(&self) {
        *self.counters.lock().unwrap() = Counters::default();
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock().unwrap())
    }

    /// Caps the device memory the engine may hold (live + pooled buffers): an allocation past
    /// it fails with [`Error::OutOfMemory`] as a full device would. Simulates a smaller card.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
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
        self.accounting_only.store(on, Ordering::Relaxed);
    }

    fn is_accounting_only(&self) -> bool {
        self.accounting_only.load(Ordering::Relaxed)
    }

    /// Lowers the chunking threshold (tests use it to exercise chunked dispatch on small data).
    pub fn set_max_binding(&self, bytes: u64) {
        let cap = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        self.max_binding
            .store(bytes.clamp(1024, cap), Ordering::Relaxed);
    }

    /// Storage offset alignment in bytes: chunk boundaries are multiples of it.
    pub fn offset_align(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment.max(4) as u64
    }

    /// Whether the adapter can write GPU timestamps (used by benchmarks).
    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Whether f16 kernels can run (the adapter has SHADER_F16 and it was enabled).
    pub fn has_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether f16 GEMMs run on cooperative matrices (tensor cores): see [`coop_usable`];
    /// `XLSR_NO_COOP=1` turns them off.
    pub fn has_coop(&self) -> bool {
        self.features
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16)
    }

    /// Device bytes held by live tensors.
    pub fn live_bytes(&self) -> u64 {
        self.pool.lock().unwrap().live_bytes
    }

    /// Highest device bytes ever held (live + pooled).
    pub fn peak_bytes(&self) -> u64 {
        self.pool.lock().unwrap().peak_bytes
    }

    /// Takes a buffer of at least `bytes` from the pool, or allocates one.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<(wgpu::Buffer, Slot)> {
        let class = size_class(bytes);
        if class > self.limits.max_buffer_size {
            return Err(Error::Limit {
                op: "alloc",
                msg: format!(
                    "buffer of {bytes} bytes exceeds the device's max_buffer_size {}",
                    self.limits.max_buffer_size
                ),
            });
        }
        let mut pool = self.pool.lock().unwrap();
        pool.live_bytes += class;
        if let Some((serial, buf)) = pool.free.get_mut(&class).and_then(|v| v.pop_first()) {
            pool.pooled_bytes -= class;
            return Ok((buf, Slot { class, serial }));
        }
        let limit = self.memory_limit.load(Ordering::Relaxed);
        if pool.live_bytes + pool.pooled_bytes > limit {
            // Pooled buffers of other sizes go first; then the budget is really exhausted.
            pool.free.clear();
            pool.pooled_bytes = 0;
            self.bind_groups.lock().unwrap().clear();
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
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
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
        let mut pool = self.pool.lock().unwrap();
        pool.live_bytes -= class;
        Err(Error::OutOfMemory {
            asked: class,
            in_use: pool.live_bytes,
        })
    }

    /// Returns a buffer to the pool. Commands already recorded that use it still run first,
    /// because the GPU executes the encoder in order.
    pub(crate) fn release(&self, buf: wgpu::Buffer, slot: Slot) {
        let mut pool = self.pool.lock().unwrap();
        pool.live_bytes -= slot.class;
        pool.pooled_bytes += slot.class;
        pool.free
            .entry(slot.class)
            .or_default()
            .insert(slot.serial, buf);
    }

    /// Frees every pooled (unused) buffer.
    pub fn trim_pool(&self) {
        let mut pool = self.pool.lock().unwrap();
        pool.free.clear();
        pool.pooled_bytes = 0;
        // Cached bind groups hold their buffers: drop them so the memory really goes.
        self.bind_groups.lock().unwrap().clear();
    }

    fn module(&self, file: &'static str) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let src = shader_source(file)?;
        if file.ends_with(F16_SUFFIX) && !self.has_f16() {
            return Err(Error::Gpu(format!(
                "{file} needs an adapter with SHADER_F16 (f16 in shaders)"
            )));
        }
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // Our kernels guard every index themselves; skipping wgpu's injected bounds checks
        // is one of the levers that makes the tiled matmul fast.
        let module = Arc::new(unsafe {
            self.device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        });
        modules.insert(file, module.clone());
        Ok(module)
    }

    fn layout(&self, reads: u32, writes: u32) -> Layouts {
        let mut layouts = self.layouts.lock().unwrap();
        layouts
            .entry((reads, writes))
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                for i in 0..reads + writes {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: 1 + i,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: i < reads,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: None,
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: None,
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (Arc::new(bgl), Arc::new(pl))
            })
            .clone()
    }

    fn pipeline(&self, k: &Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(&(k.file, k.entry)) {
            return Ok(p.clone());
        }
        let module = self.module(k.file)?;
        let (bgl, pl) = self.layout(k.reads, k.writes);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "kernel {}::{} failed to compile: {e}",
                k.file, k.entry
            )));
        }
        self.count(|c| c.pipelines_created += 1);
        let p = Arc::new(Pipeline {
            pipeline,
            layout: bgl,
        });
        self.pipelines
            .lock()
            .unwrap()
            .insert((k.file, k.entry), p.clone());
        Ok(p)
    }

    /// Number of compiled pipelines (tests check that repeated ops compile nothing new).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    /// Records one kernel launch. `params` fill the kernel's uniform struct (u32 words; f32 via
    /// `to_bits`). Nothing runs until the batch is submitted.
    pub fn dispatch(
        &self,
        k: &Kernel,
        params: &[u32],
        bufs: &[BufRef<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let mut batch = self.batch.lock().unwrap();
        self.dispatch_locked(&mut batch, k, params, bufs, groups)
    }

    /// [`Gpu::dispatch`] with the batch already locked, so that a caller can stage data for
    /// the kernel (an upload) and record it without another thread submitting in between.
    fn dispatch_locked(
        &self,
        batch: &mut Batch,
        k: &Kernel,
        params: &[u32],
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
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::Limit {
                op: k.entry,
                msg: format!("dispatch of {groups:?} workgroups exceeds the device limit {max_groups} per dimension"),
            });
        }
        for b in bufs {
            if b.size > self.max_binding() && b.size > self.limits.max_storage_buffer_binding_size {
                return Err(Error::Limit {
                    op: k.entry,
                    msg: format!(
                        "binding of {} bytes exceeds max_storage_buffer_binding_size {}",
                        b.size, self.limits.max_storage_buffer_binding_size
                    ),
                });
            }
        }
        if params.len() * 4 > UNIFORM_SLOT as usize {
            return Err(Error::Gpu(format!("{}: too many params", k.entry)));
        }
        let pipeline = self.pipeline(k)?;
        let accounting = self.is_accounting_only();
        if batch.slots == ARENA_SLOTS {
            self.submit(batch)?;
        }
        let slot = batch.slots;
        batch.slots += 1;
        batch
            .uniforms
            .extend_from_slice(bytemuck::cast_slice(params));
        batch
            .uniforms
            .resize(((slot + 1) * UNIFORM_SLOT) as usize, 0);
        let bind_group = self.bind_group(k, &pipeline, &batch.arena, bufs, accounting);

        let mut profiler = self.profiler.lock().unwrap();
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
                        self.device
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
        let mut cache = self.bind_groups.lock().unwrap();
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
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
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
        let mut batch = self.batch.lock().unwrap();
        end_pass(&mut batch);
        batch.pending = true;
        if self.is_accounting_only() {
            return;
        }
        let encoder = batch.encoder.get_or_insert_with(|| {
            self.device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        });
        f(encoder)
    }

    /// Submits everything recorded so far (without waiting for it).
    pub fn flush(&self) -> Result<()> {
        let mut batch = self.batch.lock().unwrap();
        self.submit(&mut batch)
    }

    fn submit(&self, batch: &mut Batch) -> Result<()> {
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
            self.queue.write_buffer(&batch.arena, 0, &batch.uniforms);
        }
        if let (Some(arena), Some(_)) = (&batch.upload_arena, &encoder) {
            if !batch.uploads.is_empty() {
                self.queue.write_buffer(arena, 0, &batch.uploads);
            }
        }
        batch.uploads.clear();
        batch.uniforms.clear();
        batch.slots = 0;
        let Some(mut encoder) = encoder else {
            return self.check_errors();
        };
        let mut profiler = self.profiler.lock().unwrap();
        let pairs = profiler.as_ref().map_or(0, |p| p.labels.len() as u32);
        if let Some(p) = profiler.as_mut().filter(|_| pairs > 0) {
            encoder.resolve_query_set(&p.queries, 0..2 * pairs, &p.resolve, 0);
            encoder.copy_buffer_to_buffer(&p.resolve, 0, &p.readback, 0, 16 * pairs as u64);
        }
        self.queue.submit([encoder.finish()]);
        if let Some(p) = profiler.as_mut().filter(|_| pairs > 0) {
            let ticks: Vec<u64> = self.map_read(&p.readback, 16 * pairs as u64)?;
            let period = self.queue.get_timestamp_period() as f64;
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
        let mut errors = self.errors.lock().unwrap();
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
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.check_errors()
    }

    fn map_read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        self.count(|c| {
            c.blocking_waits += 1;
            c.readback_bytes += bytes;
        });
        let (tx, rx) = std::sync::mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.device
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
        let padded = bytes.div_ceil(4) * 4;
        if padded == 0 {
            return Ok(Vec::new());
        }
        self.count(|c| c.buffers_created += 1);
        if self.is_accounting_only() {
            // What a real read does to the batch and the counters, without the device.
            self.with_encoder(|_| {});
            self.flush()?;
            self.count(|c| {
                c.blocking_waits += 1;
                c.readback_bytes += padded;
            });
            return Ok(vec![0; bytes as usize]);
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| e.copy_buffer_to_buffer(buf, 0, &staging, 0, padded));
        self.flush()?;
        let mut out: Vec<u8> = self.map_read(&staging, padded)?;
        out.truncate(bytes as usize);
        Ok(out)
    }

    /// Writes host bytes into the start of `buf`, ordered after everything already recorded.
    pub fn write(&self, buf: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        let padded = data.len().div_ceil(4) * 4;
        if padded == 0 {
            return Ok(());
        }
        self.count(|c| c.upload_bytes += padded as u64);
        let align = self.offset_align();
        if padded as u64 > UPLOAD_ARENA_MAX.min(self.max_binding() - align) {
            return self.write_staged(buf, data);
        }
        // Into the upload arena (written to the device at submit, before this batch's
        // commands run), then a copy_words dispatch in the pass: no pass ends, no new buffer.
        // One lock over both, so no other thread submits the batch in between.
        let mut batch = self.batch.lock().unwrap();
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
            batch.upload_arena = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
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
            &[words, 0, 0, 0],
            &[
                BufRef {
                    buffer: &arena,
                    offset: at,
                    size: padded as u64,
                },
                BufRef {
                    buffer: buf,
                    offset: 0,
                    size: padded as u64,
                },
            ],
            grid(words as u64, 256),
        )
    }

    /// [`Gpu::write`] through a staging buffer and a copy command (for uploads too big for the
    /// arena).
    fn write_staged(&self, buf: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        let padded = data.len().div_ceil(4) * 4;
        self.count(|c| c.buffers_created += 1);
        if self.is_accounting_only() {
            self.with_encoder(|_| {});
            return Ok(());
        }
        // A staging copy inside the encoder (not queue.write_buffer, which would run before
        // already-recorded commands that may still read a recycled buffer).
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("upload"),
            size: padded as u64,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        {
            let mut view = staging.get_mapped_range_mut(..).expect("fresh mapping");
            view.slice(..data.len()).copy_from_slice(data);
        }
        staging.unmap();
        self.with_encoder(|e| e.copy_buffer_to_buffer(&staging, 0, buf, 0, padded as u64));
        Ok(())
    }

    /// Sets the first `bytes` of `buf` to zero with `fill_words` dispatches (inside the compute
    /// pass, unlike a clear command), in binding-sized pieces.
    pub fn zero(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<()> {
        let bytes = bytes.div_ceil(4) * 4;
        let piece = (self.max_binding() / self.offset_align()) * self.offset_align();
        let mut at = 0;
        while at < bytes {
            let size = piece.min(bytes - at);
            let words = size / 4;
            let d = BufRef {
                buffer: buf,
                offset: at,
                size,
            };
            let unused = BufRef {
                buffer: &self.unused,
                offset: 0,
                size: 4,
            };
            self.dispatch(
                &FILL_WORDS,
                &[words as u32, 0, 0, 0],
                &[unused, d],
                grid(words, 256),
            )?;
            at += size;
        }
        Ok(())
    }

    /// Starts collecting per-kernel GPU time from timestamp queries (if the adapter has them).
    pub fn profile_start(&self) -> Result<bool> {
        if !self.has_timestamps() || self.is_accounting_only() {
            return Ok(false);
        }
        self.flush()?;
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profiler"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * PROFILE_PAIRS,
        });
        let mk = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profiler"),
                size: 16 * PROFILE_PAIRS as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        *self.profiler.lock().unwrap() = Some(Profiler {
            queries,
            resolve: mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            labels: Vec::new(),
            totals: BTreeMap::new(),
        });
        Ok(true)
    }

    /// Stops profiling; returns (kernel entry, total ns, launches), sorted by name.
    pub fn profile_stop(&self) -> Result<Vec<(&'static str, f64, u64)>> {
        self.sync()?;
        let p = self.profiler.lock().unwrap().take();
        Ok(
            p.map(|p| p.totals.into_iter().map(|(k, (t, n))| (k, t, n)).collect())
                .unwrap_or_default(),
        )
    }
}

/// Ends the open compute pass, if any (dropping it ends it).
fn end_pass(batch: &mut Batch) {
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
