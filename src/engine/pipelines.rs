//! The shader registry (with its f16 and transpose variants), bind-group layouts and compute
//! pipelines, each built once per device.

use super::adapter::CoopShape;
use super::error::{Error, Result};
use super::Gpu;
use std::sync::Arc;

/// WGSL sources, one file per kernel family, compiled once per device on first use.
pub(super) const SHADERS: &[(&str, &str)] = &[
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("activation", include_str!("../../shaders/activation.wgsl")),
    ("dropout", include_str!("../../shaders/dropout.wgsl")),
    ("norm", include_str!("../../shaders/norm.wgsl")),
    ("conv1d", include_str!("../../shaders/conv1d.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("copy", include_str!("../../shaders/copy.wgsl")),
    ("ctc", include_str!("../../shaders/ctc.wgsl")),
    (
        "weight_norm",
        include_str!("../../shaders/weight_norm.wgsl"),
    ),
    ("adamw", include_str!("../../shaders/adamw.wgsl")),
    ("cast", include_str!("../../shaders/cast.wgsl")),
    ("im2col", include_str!("../../shaders/im2col.wgsl")),
    ("words", include_str!("../../shaders/words.wgsl")),
    (
        "multi_tensor",
        include_str!("../../shaders/multi_tensor.wgsl"),
    ),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    (
        "attention_coop",
        include_str!("../../shaders/attention_coop.wgsl"),
    ),
    (
        "matmul_coop",
        include_str!("../../shaders/matmul_coop.wgsl"),
    ),
    (
        "matmul_coop128",
        include_str!("../../shaders/matmul_coop128.wgsl"),
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
/// The same for its build with 8 subgroups a workgroup ([`WIDE_SUFFIX`]).
pub const COOP128_WIDE_VARIANTS: [[&str; 2]; 2] = [
    ["matmul_coop128_wide_nn", "matmul_coop128_wide_nt"],
    ["matmul_coop128_wide_tn", "matmul_coop128_wide_tt"],
];
/// A kernel file named `NAME_wide` is `NAME.wgsl` with its `const SG_ROWS` line saying 4:
/// the staged tensor-core GEMM with 8 subgroups instead of 4.
pub const WIDE_SUFFIX: &str = "_wide";
const SG_ROWS_2: &str = "const SG_ROWS: u32 = 2u;";

/// The tensor-core GEMMs (files starting so, and [`ATTENTION_COOP`]) are written for 16x16
/// fragments on subgroups of 32 lanes: the loader rewrites their `const F` and `const S` lines and their
/// matrix types for the adapter's [`CoopShape`] (`coop_build`).
pub const COOP_PREFIX: &str = "matmul_coop";
/// The attention kernels on tensor cores: `attention_coop.wgsl` appended to the
/// `attention_f16` build, with cooperative matrices enabled, built as [`COOP_PREFIX`] says.
pub const ATTENTION_COOP: &str = "attention_coop";

/// Whether `file` is built for the adapter's cooperative-matrix shape ([`coop_build`]).
pub fn is_coop_file(file: &str) -> bool {
    file.starts_with(COOP_PREFIX) || file == ATTENTION_COOP
}
const COOP_FRAG: &str = "const F: u32 = 16u;";
const COOP_LANES: &str = "const S: u32 = 32u;";
const COOP_TYPE: &str = "coop_mat16x16";

/// `src`, a tensor-core kernel file, built for `shape` (see [`COOP_PREFIX`]).
pub fn coop_build(file: &str, src: &str, shape: CoopShape) -> Result<String> {
    if !(src.contains(COOP_FRAG) && src.contains(COOP_LANES)) {
        return Err(Error::Gpu(format!(
            "{file} has no `{COOP_FRAG}` or `{COOP_LANES}` line to build it for {shape:?}"
        )));
    }
    let f = shape.frag;
    Ok(src
        .replace(COOP_FRAG, &format!("const F: u32 = {f}u;"))
        .replace(COOP_LANES, &format!("const S: u32 = {}u;", shape.lanes))
        .replace(COOP_TYPE, &format!("coop_mat{f}x{f}")))
}

/// A kernel file named `NAME_f16` is `NAME.wgsl` with f16 inputs: its `alias In = f32;` line
/// (the storage type of the tensors it reads) becomes f16. One source serves both precisions,
/// and arithmetic stays f32 in both (loads convert).
pub const F16_SUFFIX: &str = "_f16";
const IN_F32: &str = "alias In = f32;";

/// A kernel file named `NAME_lanes` (then optionally [`F16_SUFFIX`]) is `NAME.wgsl` with four
/// threads per row: its `const LANES` line says 4, and its one-lane sums (`lane_sum`, whose
/// bodies are `ONE_LANE`) become butterflies of subgroup shuffles over the row's lanes.
/// Only adapters with subgroup operations build it (`Gpu::has_subgroups`).
pub const LANES_SUFFIX: &str = "_lanes";
const LANES_ONE: &str = "const LANES: u32 = 1u;";
const ONE_LANE: &str = "return x; // one lane";
const FOUR_LANES: &str =
    "let y = x + subgroupShuffleXor(x, 1u);\n    return y + subgroupShuffleXor(y, 2u);";

/// A kernel file named `NAME_v4` (then optionally [`F16_SUFFIX`]) is `NAME.wgsl` with its
/// lines that end in `SCALAR_LINE` dropped and its lines that start with `V4_LINE`
/// uncommented: matmul.wgsl binds A and B as vec4 arrays that way (`ops::matmul::v4_fits`).
pub const V4_SUFFIX: &str = "_v4";
/// A kernel file named `NAME_k16` (then optionally [`V4_SUFFIX`], [`F16_SUFFIX`]) is
/// `NAME.wgsl` with its `const BK` line saying 16: the tiled GEMM walking K 16 at a time.
pub const K16_SUFFIX: &str = "_k16";
const BK_8: &str = "const BK: u32 = 8u;";
const SCALAR_LINE: &str = "// scalar build";
const V4_LINE: &str = "//v4 ";

/// The `_v4` build of `src` (see [`V4_SUFFIX`]).
fn v4_build(base: &str, src: &str) -> Result<String> {
    if !src.lines().any(|l| l.starts_with(V4_LINE)) {
        return Err(Error::Gpu(format!(
            "{base}.wgsl has no `{V4_LINE}` lines, so no v4 build"
        )));
    }
    let mut out = String::with_capacity(src.len());
    for line in src.split_inclusive('\n') {
        if line.trim_end().ends_with(SCALAR_LINE) {
            continue;
        }
        out.push_str(line.strip_prefix(V4_LINE).unwrap_or(line));
    }
    Ok(out)
}

/// Helpers shared by the kernel files, prepended to each (after its `enable` directives, which
/// WGSL wants before any declaration).
pub(super) const PRELUDE: &str = include_str!("../../shaders/common.wgsl");

/// The WGSL `struct Params` of a kernel file, written from the fields of its Rust params
/// struct ([`KernelParams::FIELDS`](super::KernelParams::FIELDS)): the Rust struct is the one
/// statement of a kernel's uniforms, so the two cannot drift apart.
pub fn params_struct(fields: &[(&str, &str)]) -> String {
    let body: String = fields
        .iter()
        .map(|(name, ty)| format!("    {name}: {ty},\n"))
        .collect();
    format!("struct Params {{\n{body}}}\n")
}

/// `src` with [`PRELUDE`] and its `struct Params` (from `fields`) inserted after its leading
/// `enable` lines.
fn with_prelude(src: &str, fields: &[(&str, &str)]) -> String {
    let mut at = 0;
    for line in src.split_inclusive('\n') {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with("//") || t.starts_with("enable ")) {
            break;
        }
        at += line.len();
    }
    let (head, body) = src.split_at(at);
    let params = params_struct(fields);
    format!("{head}{PRELUDE}\n{params}\n{body}")
}

/// The WGSL source of a kernel file whose params have `fields`, f16 variants derived as
/// [`F16_SUFFIX`] says and the cooperative-matrix GEMM's transpose variants as
/// [`COOP_VARIANTS`] says.
pub(super) fn shader_source(file: &str, fields: &[(&str, &str)]) -> Result<String> {
    if file == ATTENTION_COOP {
        let kernel = SHADERS.iter().find(|(n, _)| *n == file).map(|(_, s)| *s);
        let kernel = kernel.ok_or_else(|| Error::Gpu(format!("unknown shader file {file}")))?;
        let base = shader_source(&format!("attention{F16_SUFFIX}"), fields)?;
        return Ok(format!("enable wgpu_cooperative_matrix;\n{base}\n{kernel}"));
    }
    if let Some((base, tt @ ("nn" | "nt" | "tn" | "tt"))) = file.rsplit_once('_') {
        let src = shader_source(base, fields)?;
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
    let (base, lanes) = match base.strip_suffix(LANES_SUFFIX) {
        Some(b) => (b, true),
        None => (base, false),
    };
    let (base, v4) = match base.strip_suffix(V4_SUFFIX) {
        Some(b) => (b, true),
        None => (base, false),
    };
    let (base, k16) = match base.strip_suffix(K16_SUFFIX) {
        Some(b) => (b, true),
        None => (base, false),
    };
    if let Some(b) = base.strip_suffix(WIDE_SUFFIX) {
        let src = shader_source(b, fields)?;
        if !src.contains(SG_ROWS_2) {
            return Err(Error::Gpu(format!(
                "{b}.wgsl has no `{SG_ROWS_2}` line, so no wide build"
            )));
        }
        return Ok(src.replace(SG_ROWS_2, "const SG_ROWS: u32 = 4u;"));
    }
    let src = SHADERS
        .iter()
        .find(|(n, _)| *n == base)
        .map(|(_, s)| *s)
        .ok_or_else(|| Error::Gpu(format!("unknown shader file {file}")))?;
    let mut src = with_prelude(src, fields);
    if v4 {
        src = v4_build(base, &src)?;
    }
    if k16 {
        if !src.contains(BK_8) {
            return Err(Error::Gpu(format!(
                "{base}.wgsl has no `{BK_8}` line, so no k16 build"
            )));
        }
        src = src.replace(BK_8, "const BK: u32 = 16u;");
    }
    if lanes {
        if !(src.contains(LANES_ONE) && src.contains(ONE_LANE)) {
            return Err(Error::Gpu(format!(
                "{base}.wgsl has no `{LANES_ONE}` line or `{ONE_LANE}` sum, so it has no lanes build"
            )));
        }
        // No `enable subgroups;`: naga 30 rejects it and takes the built-ins without it.
        src = src
            .replace(LANES_ONE, "const LANES: u32 = 4u;")
            .replace(ONE_LANE, FOUR_LANES);
    }
    if !file.ends_with(F16_SUFFIX) {
        return Ok(src);
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

impl Kernel {
    /// Entry `entry` of `shaders/FILE.wgsl` with `reads` read-only and `writes` read-write
    /// storage bindings.
    pub const fn new(file: &'static str, entry: &'static str, reads: u32, writes: u32) -> Kernel {
        Kernel {
            file,
            entry,
            reads,
            writes,
        }
    }
}

/// A bind-group layout and the pipeline layout wrapping it, per binding signature.
pub(super) type Layouts = (Arc<wgpu::BindGroupLayout>, Arc<wgpu::PipelineLayout>);

pub(super) struct Pipeline {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: Arc<wgpu::BindGroupLayout>,
}

impl Gpu {
    fn module(
        &self,
        file: &'static str,
        fields: &[(&str, &str)],
    ) -> Result<Arc<wgpu::ShaderModule>> {
        let mut modules = self.0.modules.lock().unwrap();
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let mut src = shader_source(file, fields)?;
        if is_coop_file(file) {
            let shape = self.coop_shape().ok_or_else(|| {
                Error::Gpu(format!("{file} needs an adapter with cooperative matrices"))
            })?;
            src = coop_build(file, &src, shape)?;
        }
        if file.ends_with(F16_SUFFIX) && !self.has_f16() {
            return Err(Error::Gpu(format!(
                "{file} needs an adapter with SHADER_F16 (f16 in shaders)"
            )));
        }
        if file.contains(LANES_SUFFIX) && !self.has_subgroups() {
            return Err(Error::Gpu(format!(
                "{file} needs an adapter with subgroup operations"
            )));
        }
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // Our kernels guard every index themselves; skipping wgpu's injected bounds checks
        // is one of the levers that makes the tiled matmul fast.
        let module = Arc::new(unsafe {
            self.0
                .device
                .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        });
        modules.insert(file, module.clone());
        Ok(module)
    }

    fn layout(&self, reads: u32, writes: u32) -> Layouts {
        let mut layouts = self.0.layouts.lock().unwrap();
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
                let bgl =
                    self.0
                        .device
                        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                            label: None,
                            entries: &entries,
                        });
                let pl = self
                    .0
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

    /// The pipeline of `k`, whose params struct has `fields` (the dispatch checked that they
    /// are its file's).
    pub(super) fn pipeline(&self, k: &Kernel, fields: &[(&str, &str)]) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.0.pipelines.lock().unwrap().get(&(k.file, k.entry)) {
            return Ok(p.clone());
        }
        // A driver's own compile failure comes back as an internal error, wgpu's checks
        // (of the module too) as validation errors: both are this kernel's, not the run's.
        let internal = self.0.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let scope = self
            .0
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let (bgl, pl) = self.layout(k.reads, k.writes);
        let built = self.module(k.file, fields).map(|module| {
            self.0
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some(k.entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        });
        let errors = [
            pollster::block_on(scope.pop()),
            pollster::block_on(internal.pop()),
        ];
        let pipeline = built?;
        if let Some(e) = errors.into_iter().flatten().next() {
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
        self.0
            .pipelines
            .lock()
            .unwrap()
            .insert((k.file, k.entry), p.clone());
        Ok(p)
    }

    /// Whether kernel `k` (uniforms `P`) compiles on this adapter, building it if it has not
    /// been. The tensor-core kernels ask before they are picked, so that a driver that rejects
    /// one leaves the other builds to run (said once on stderr) instead of failing the run.
    pub fn compiles<P: super::KernelParams>(&self, k: &Kernel) -> bool {
        if self.0.failed.lock().unwrap().contains(&(k.file, k.entry)) {
            return false;
        }
        match self.pipeline(k, P::FIELDS) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("note: {e}; the other builds run instead");
                self.0.failed.lock().unwrap().insert((k.file, k.entry));
                false
            }
        }
    }

    /// The kernels that failed to compile here, as `file::entry` (tests check that the
    /// builds they ask for were not silently left out).
    pub fn failed_kernels(&self) -> Vec<String> {
        let failed = self.0.failed.lock().unwrap();
        let mut names: Vec<String> = failed.iter().map(|(f, e)| format!("{f}::{e}")).collect();
        names.sort();
        names
    }

    /// Number of compiled pipelines (tests check that repeated ops compile nothing new).
    pub fn pipeline_count(&self) -> usize {
        self.0.pipelines.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build of every kernel file, as the loader makes it (prelude, f16 and transpose
    /// variants), parses, validates and translates to SPIR-V. This covers the builds no CPU
    /// adapter runs: the cooperative-matrix GEMMs need a GPU with tensor cores.
    #[test]
    fn every_shader_build_validates() {
        let mut files: Vec<String> = Vec::new();
        for (name, src) in SHADERS {
            files.push(name.to_string());
            if src.contains(IN_F32) {
                files.push(format!("{name}{F16_SUFFIX}"));
            }
            if src.lines().any(|l| l.starts_with(V4_LINE)) {
                files.push(format!("{name}{V4_SUFFIX}"));
                files.push(format!("{name}{V4_SUFFIX}{F16_SUFFIX}"));
            }
            if src.contains(BK_8) {
                for v in ["", V4_SUFFIX] {
                    files.push(format!("{name}{K16_SUFFIX}{v}"));
                    files.push(format!("{name}{K16_SUFFIX}{v}{F16_SUFFIX}"));
                }
            }
            if src.contains(LANES_ONE) {
                files.push(format!("{name}{LANES_SUFFIX}"));
                files.push(format!("{name}{LANES_SUFFIX}{F16_SUFFIX}"));
            }
        }
        // The cooperative GEMMs in every shape the loader builds them in.
        let coop = [COOP_VARIANTS, COOP128_VARIANTS, COOP128_WIDE_VARIANTS];
        let coop = coop.iter().flatten().flatten().chain([&ATTENTION_COOP]);
        let shapes = [(16, 32), (8, 32), (8, 8), (16, 64)]
            .map(|(frag, lanes)| Some(CoopShape { frag, lanes }));
        let mut builds: Vec<(String, Option<CoopShape>)> =
            files.into_iter().map(|f| (f, None)).collect();
        for shape in shapes {
            builds.extend(coop.clone().map(|f| (f.to_string(), shape)));
        }
        for (file, shape) in builds {
            let fields = crate::engine::params::fields_of(super::super::params::base_file(&file))
                .unwrap_or_else(|| panic!("{file}: no params struct names it"));
            let mut src = shader_source(&file, fields).unwrap();
            if let Some(shape) = shape {
                src = coop_build(&file, &src, shape).unwrap();
            }
            let file = format!("{file} {shape:?}");
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&src)));
            let info = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::all(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(&src)));
            naga::back::spv::write_vec(&module, &info, &Default::default(), None)
                .unwrap_or_else(|e| panic!("{file}: SPIR-V: {e}"));
            for (entry, bytes) in workgroup_bytes(&module, &info) {
                // Vulkan's maxComputeSharedMemorySize on NVIDIA and AMD.
                assert!(
                    bytes <= 48 << 10,
                    "{file} {entry}: {bytes} bytes of workgroup memory"
                );
                // One subgroup per workgroup: what it holds decides how many fit a
                // multiprocessor (the backward's tiles stay out of the forward).
                if entry == "attn_fwd_coop" && shape.is_some_and(|s| s.frag == 16) {
                    assert!(bytes <= 23 << 10, "{file} {entry}: {bytes} bytes");
                }
                // The backward's tiles are sized to its CT keys: 8 workgroups fit in an H100's
                // 228 KiB with a KiB reserved each (at 31 KiB, before, 7).
                let coop_bwd = entry.starts_with("attn_bwd") && entry.ends_with("_coop");
                if coop_bwd && shape.is_some_and(|s| s.frag == 16) {
                    assert!(bytes <= 27 << 10, "{file} {entry}: {bytes} bytes");
                }
                // What `ops::attention::fused_fits` asks of an adapter for the row kernels.
                if ["attn_fwd", "attn_bwd_kv", "attn_bwd_q"].contains(&entry.as_str()) {
                    let most = crate::ops::attention::ROW_BYTES;
                    assert!(bytes <= most, "{file} {entry}: {bytes} bytes, over {most}");
                }
            }
        }
    }

    /// The workgroup memory each entry point of `module` uses: the variables it reaches.
    fn workgroup_bytes(
        module: &naga::Module,
        info: &naga::valid::ModuleInfo,
    ) -> Vec<(String, u32)> {
        let ctx = module.to_ctx();
        module
            .entry_points
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let used = info.get_entry_point(i);
                let bytes = module
                    .global_variables
                    .iter()
                    .filter(|(h, g)| {
                        g.space == naga::AddressSpace::WorkGroup && !used[*h].is_empty()
                    })
                    .map(|(_, g)| module.types[g.ty].inner.size(ctx))
                    .sum();
                (ep.name.clone(), bytes)
            })
            .collect()
    }
}
