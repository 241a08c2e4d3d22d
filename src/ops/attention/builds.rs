//! Which build of each fused attention kernel runs: on tensor cores (f16 inputs), tiled
//! (small register-blocked GEMMs), four lanes per row, or a thread per row; the settings that
//! choose by default, the tuner's choice among them, and their launches.

use super::{Attention, AttentionParams, Dims};
use crate::engine::error::Result;
use crate::engine::{BufRef, Kernel};
use crate::engine::{DType, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Rows per workgroup in the row-tiled kernels, as `ROWS` in attention.wgsl (each row one
/// thread, or four lanes in the `attention_lanes` build).
pub(super) const ROWS: usize = 64;

/// The row kernels (a thread or four lanes per row) and the backward's row statistics.
pub(super) const FWD: Kernel = Kernel::new("attention", "attn_fwd", 6, 2);
pub(super) const BWD_STATS: Kernel = Kernel::new("attention", "attn_bwd_stats", 6, 2);
pub(super) const BWD_KV: Kernel = Kernel::new("attention", "attn_bwd_kv", 6, 2);
pub(super) const BWD_Q: Kernel = Kernel::new("attention", "attn_bwd_q", 6, 2);
/// The kernels as small register-blocked GEMMs (`attn_*_tiled` in attention.wgsl).
const FWD_TILED: Kernel = Kernel::new("attention", "attn_fwd_tiled", 6, 2);
const BWD_KV_TILED: Kernel = Kernel::new("attention", "attn_bwd_kv_tiled", 6, 2);
const BWD_Q_TILED: Kernel = Kernel::new("attention", "attn_bwd_q_tiled", 6, 2);
/// The kernels on tensor cores (`attention_coop.wgsl`), for f16 q, k, v.
const FWD_COOP: Kernel = Kernel::new("attention_coop", "attn_fwd_coop", 6, 2);
const BWD_KV_COOP: Kernel = Kernel::new("attention_coop", "attn_bwd_kv_coop", 6, 2);
const BWD_Q_COOP: Kernel = Kernel::new("attention_coop", "attn_bwd_q_coop", 6, 2);
/// Rows (queries or keys) per workgroup of the tiled kernels (`TQ`), and the workgroup
/// memory they need.
const TILED_ROWS: usize = 32;
const TILED_BYTES: u32 = 32 * 1024;
/// The workgroup memory the row kernels need (24,960 to 25,088 bytes; the shader test holds
/// them to this), the least any fused build does.
pub const ROW_BYTES: u32 = 25 * 1024;

/// Whether this adapter can run the fused kernels at all: the row kernels, which every
/// other build falls back to, fit its workgroup memory. Where not (WebGPU's minimum is 16 KiB),
/// the model takes the unfused path.
pub fn fused_fits(gpu: &crate::Gpu) -> bool {
    gpu.limits().max_compute_workgroup_storage_size >= ROW_BYTES
}

/// Whether the fused kernels run a thread per row even where the adapter has subgroups:
/// `XLSR_ATTN=rows` at start, or [`set_rows_only`].
fn rows_only() -> &'static AtomicBool {
    static ROWS_ONLY: OnceLock<AtomicBool> = OnceLock::new();
    ROWS_ONLY.get_or_init(|| AtomicBool::new(std::env::var("XLSR_ATTN").is_ok_and(|v| v == "rows")))
}

/// Runs the fused kernels with a thread per row (`on`) or four lanes per row where the
/// adapter has subgroups (the default): the benchmark's baseline. Returns the setting before.
pub fn set_rows_only(on: bool) -> bool {
    rows_only().swap(on, Ordering::Relaxed)
}

/// Whether the fused kernels run on tensor cores where they can (f16 q, k, v and cooperative
/// matrices): `XLSR_ATTN_COOP=0` at start, a build named by `XLSR_ATTN`, or
/// [`set_coop_attention`], turns them off.
fn coop_attention() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| {
        let off = std::env::var("XLSR_ATTN_COOP").is_ok_and(|v| v == "0")
            || std::env::var("XLSR_ATTN").is_ok_and(|v| matches!(&*v, "tiled" | "lanes" | "rows"));
        AtomicBool::new(!off)
    })
}

/// Runs the fused kernels (forward and backward) over f16 inputs on tensor cores (`true`, the
/// default where the adapter has cooperative matrices) or on the other builds; returns the
/// setting before.
pub fn set_coop_attention(on: bool) -> bool {
    coop_attention().swap(on, Ordering::Relaxed)
}

/// Which fused kernels run their tiled builds (`attn_*_tiled`) by default, where the adapter
/// has the workgroup memory for them; the others run the row kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tiled {
    /// None: the row kernels everywhere (`XLSR_ATTN=lanes` or `rows`).
    None = 0,
    /// The forward (the default): on a CPU adapter it takes half the row kernel's time; the
    /// tiled backward kernels gain nothing there and await a GPU's measurement.
    Forward = 1,
    /// The forward and both backward kernels (`XLSR_ATTN=tiled`).
    All = 2,
}

/// The setting behind [`set_tiled`], read from `XLSR_ATTN` at first use.
fn tiled_setting() -> &'static AtomicU8 {
    static TILED: OnceLock<AtomicU8> = OnceLock::new();
    TILED.get_or_init(|| {
        let t = match std::env::var("XLSR_ATTN").as_deref() {
            Ok("lanes") | Ok("rows") => Tiled::None,
            Ok("tiled") => Tiled::All,
            _ => Tiled::Forward,
        };
        AtomicU8::new(t as u8)
    })
}

/// Sets which fused kernels run their tiled builds by default (see [`Tiled`]); returns the
/// setting before.
pub fn set_tiled(t: Tiled) -> Tiled {
    match tiled_setting().swap(t as u8, Ordering::Relaxed) {
        0 => Tiled::None,
        1 => Tiled::Forward,
        _ => Tiled::All,
    }
}

/// Whether the tiled kernels fit this adapter's workgroup memory.
fn tiled_usable(gpu: &crate::Gpu) -> bool {
    gpu.limits().max_compute_workgroup_storage_size >= TILED_BYTES
}

/// Whether the four-lane build can run here: subgroup operations with at least 4 lanes, and
/// not turned off ([`set_rows_only`]).
fn lanes_usable(gpu: &crate::Gpu) -> bool {
    // A row's four lanes must share a subgroup: consecutive invocations form subgroups on
    // every driver we know of, and any subgroup of 4 or more lanes holds whole rows.
    gpu.has_subgroups() && gpu.info().subgroup_min_size >= 4 && !rows_only().load(Ordering::Relaxed)
}

/// The build of attention.wgsl for q's dtype: four lanes per row (`lanes`) or a thread per
/// row, f16 loads for f16 q, k, v (see `engine::pipelines`).
fn build(kernel: Kernel, q: &Tensor, lanes: bool) -> Kernel {
    let file = match (lanes, q.dtype() == DType::F16) {
        (false, false) => "attention",
        (false, true) => "attention_f16",
        (true, false) => "attention_lanes",
        (true, true) => "attention_lanes_f16",
    };
    Kernel { file, ..kernel }
}

/// Which build of `kernel` runs this launch, among `candidates` (the default first): the
/// default, or what this adapter measured for the shape class (`ops::tune`). `run(c)`
/// launches build `c` into scratch outputs and returns them (only while measuring).
pub(super) fn build_for(
    kernel: &Kernel,
    q: &Tensor,
    g: &Dims,
    a: &Attention,
    has_mask: bool,
    candidates: &[&'static str],
    run: impl FnMut(&'static str) -> Result<Vec<Tensor>>,
) -> Result<&'static str> {
    let key = || {
        let b = crate::ops::tune::bucket;
        format!(
            "{} {} d{} t{} bh{}{}{}",
            kernel.entry,
            if q.dtype() == DType::F16 {
                "f16"
            } else {
                "f32"
            },
            g.d,
            b(g.t),
            b(g.bh),
            if has_mask { " mask" } else { "" },
            if a.dropout > 0.0 { " dropout" } else { "" },
        )
    };
    crate::ops::tune::pick(q.gpu(), key, candidates, run)
}

/// The builds of fused kernel `kernel` on this adapter for q's dtype, the default first: the
/// tensor-core build for f16 inputs where the adapter has them (first unless
/// [`set_coop_attention`] says otherwise), the tiled one where it fits (first or last as
/// [`set_tiled`] says), and the row kernels' (four lanes where usable, a thread per row).
pub(super) fn builds(gpu: &crate::Gpu, kernel: &Kernel, q: &Tensor) -> Vec<&'static str> {
    let mut builds = match lanes_usable(gpu) {
        true => vec!["lanes", "rows"],
        false => vec!["rows"],
    };
    if tiled_usable(gpu) {
        let first = match tiled_setting().load(Ordering::Relaxed) {
            0 => false,
            1 => kernel.entry == FWD.entry,
            _ => true,
        };
        match first {
            true => builds.insert(0, "tiled"),
            false => builds.push("tiled"),
        }
    }
    // The kernel gives each query row S / F lanes of its one subgroup.
    let coop = gpu
        .coop_shape()
        .is_some_and(|s| s.lanes >= s.frag && s.lanes.is_multiple_of(s.frag));
    if q.dtype() == DType::F16 && coop && gpu.compiles::<AttentionParams>(&coop_kernel(kernel)) {
        match coop_attention().load(Ordering::Relaxed) {
            true => builds.insert(0, "coop"),
            false => builds.push("coop"),
        }
    }
    builds
}

/// The tensor-core build of a fused kernel (`FWD`, `BWD_KV` or `BWD_Q`).
fn coop_kernel(kernel: &Kernel) -> Kernel {
    match kernel.entry {
        "attn_fwd" => FWD_COOP,
        "attn_bwd_kv" => BWD_KV_COOP,
        _ => BWD_Q_COOP,
    }
}

/// Dispatches build `name` ("coop", "tiled", "lanes" or "rows") of a fused kernel (`FWD`,
/// `BWD_KV` or `BWD_Q`).
pub(super) fn launch(
    kernel: Kernel,
    name: &str,
    q: &Tensor,
    g: &Dims,
    prm: &AttentionParams,
    bufs: &[BufRef<'_>],
) -> Result<()> {
    let gpu = q.gpu();
    if name == "coop" {
        let rows = gpu.coop_shape().map_or(16, |s| s.frag as usize);
        let [_, y, z] = row_groups(g);
        let groups = [g.t.div_ceil(rows) as u32, y, z];
        return gpu.dispatch(&coop_kernel(&kernel), prm, bufs, groups);
    }
    if name != "tiled" {
        return gpu.dispatch(&build(kernel, q, name == "lanes"), prm, bufs, row_groups(g));
    }
    let tiled = match kernel.entry {
        "attn_fwd" => FWD_TILED,
        "attn_bwd_kv" => BWD_KV_TILED,
        _ => BWD_Q_TILED,
    };
    let [_, y, z] = row_groups(g);
    let groups = [g.t.div_ceil(TILED_ROWS) as u32, y, z];
    gpu.dispatch(&build(tiled, q, false), prm, bufs, groups)
}

/// Workgroups for a kernel with one thread per row of T, over (row tiles, bh).
fn row_groups(g: &Dims) -> [u32; 3] {
    let y = g.bh.min(65535);
    [
        g.t.div_ceil(ROWS) as u32,
        y as u32,
        g.bh.div_ceil(y.max(1)) as u32,
    ]
}
