//! Batched matmul with transpose flags and a fused bias, and its backward.

mod backward;
mod coop;

pub use backward::{
    linear_backward_into, matmul_backward, matmul_tn_row_sums, matmul_tn_row_sums_into,
};
pub use coop::{coop_fits, set_coop_kernel, CoopKernel};

use super::{check_dtype, check_f32, dummy, shifted_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::Kernel;
use crate::engine::{DType, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The tiled kernel's entry points by transpose combination (A, B), as `matmul.wgsl` names them.
const TILED: [[&str; 2]; 2] = [["matmul_nn", "matmul_nt"], ["matmul_tn", "matmul_tt"]];
/// Output tile of the tiled kernel (rows and columns).
const TILE: usize = 128;
/// K step of the tiled kernel; split-K slices are multiples of it.
const BK: usize = 8;

fn kernel(file: &'static str, entry: &'static str) -> Kernel {
    Kernel::new(file, entry, 3, 2)
}

kernel_params! {
    /// The uniforms of `matmul.wgsl` and of the cooperative-matrix GEMMs, which share them.
    pub struct MatmulParams in ["matmul", "matmul_coop", "matmul_coop128"] {
        /// Rows of C.
        m: u32,
        /// Columns of C.
        n: u32,
        /// The contraction.
        k: u32,
        /// 1: A is stored transposed.
        trans_a: u32,
        /// 1: B is stored transposed.
        trans_b: u32,
        /// Bit 0: add the bias; bit 1: add into C (split-K slices after the first, gradients
        /// into their slots); bit 2: also the row sums of op(A) into `sums` (tiled kernels);
        /// bit 3: add those into `sums`. The cooperative kernels take bits 0 and 1.
        has_bias: u32,
        /// Batch stride of A in elements (0: shared across the batch).
        stride_a: u32,
        /// The same for B.
        stride_b: u32,
        /// The same for C.
        stride_c: u32,
        /// Element shift of A within its (aligned-down) binding.
        off_a: u32,
        /// The same for B.
        off_b: u32,
        /// The same for C.
        off_c: u32,
        /// Split-K slices (1: none); workgroup z is batch * splits + slice.
        splits: u32,
        /// K elements per slice (a multiple of the K step).
        k_slice: u32,
        /// Elements between the slices' partial products in the workspace.
        slice_stride: u32,
    }
}

/// Whether the tiled kernel's `matmul_v4` build serves a GEMM of these uniforms: the leading
/// dimension of A and of B, their element shifts and batch strides all multiples of 4, so each
/// thread's 4 consecutive elements of a slab are one aligned vec4 (`matmul.wgsl`); none empty.
pub fn v4_fits(prm: &MatmulParams) -> bool {
    let lda = if prm.trans_a == 1 { prm.m } else { prm.k };
    let ldb = if prm.trans_b == 1 { prm.k } else { prm.n };
    // An empty operand binds 4 bytes, less than one vec4.
    let empty = prm.m == 0 || prm.n == 0 || prm.k == 0;
    !empty
        && [lda, ldb, prm.off_a, prm.off_b, prm.stride_a, prm.stride_b]
            .iter()
            .all(|x| x % 4 == 0)
}

/// Whether the tiled kernel may use its v4 build (`XLSR_GEMM_V4=0` at start, or [`set_v4`]).
fn v4_allowed() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(!std::env::var("XLSR_GEMM_V4").is_ok_and(|v| v == "0")))
}

/// Lets the tiled kernel use vec4 loads where [`v4_fits`] (`true`, the default) or not, for
/// tests and comparisons; returns the setting before.
pub fn set_v4(on: bool) -> bool {
    v4_allowed().swap(on, Ordering::Relaxed)
}

fn k16_allowed() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(std::env::var("XLSR_GEMM_BK").is_ok_and(|v| v == "16")))
}

/// Lets the tiled kernel walk K 16 at a time (its `k16` build; `XLSR_GEMM_BK=16`) instead of
/// 8 (`false`, the default), for tests and comparisons; returns the setting before. Both
/// builds add the same products in the same order, so they agree bit for bit.
pub fn set_k16(on: bool) -> bool {
    k16_allowed().swap(on, Ordering::Relaxed)
}

/// Whether the tiled kernel walks K 16 at a time unless the tuner says otherwise.
fn k16_default() -> bool {
    k16_allowed().load(Ordering::Relaxed)
}

/// Whether the adapter has the k16 build's 32 KiB of workgroup memory (the default build
/// needs 16, which every adapter offers).
fn k16_fits(gpu: &crate::Gpu) -> bool {
    gpu.limits().max_compute_workgroup_storage_size >= 32 << 10
}

/// The tiled kernel's entry for these uniforms, in its v4 build where that fits, walking K
/// 16 at a time (where the adapter has room) or 8.
fn tiled(gpu: &crate::Gpu, half: bool, prm: &MatmulParams, k16: bool) -> Kernel {
    let v4 = v4_allowed().load(Ordering::Relaxed) && v4_fits(prm);
    let k16 = k16 && k16_fits(gpu);
    let file = match (k16, v4, half) {
        (false, false, false) => "matmul",
        (false, false, true) => "matmul_f16",
        (false, true, false) => "matmul_v4",
        (false, true, true) => "matmul_v4_f16",
        (true, false, false) => "matmul_k16",
        (true, false, true) => "matmul_k16_f16",
        (true, true, false) => "matmul_k16_v4",
        (true, true, true) => "matmul_k16_v4_f16",
    };
    kernel(file, TILED[prm.trans_a as usize][prm.trans_b as usize])
}

/// Workgroups that keep a large GPU busy (two per multiprocessor on a 132-SM card). Outputs
/// with fewer tiles than half of this split K to get there.
const FILL: usize = 256;

/// How many K slices an output of `tiles` tiles with contraction `k` gets: enough to reach
/// `FILL` workgroups, each slice at least 256 long (always 1 with `XLSR_SPLIT_K=0`, to
/// compare).
pub fn split_k(tiles: usize, k: usize) -> usize {
    static OFF: OnceLock<bool> = OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("XLSR_SPLIT_K").is_ok_and(|v| v == "0"));
    if tiles * 2 > FILL || off {
        return 1;
    }
    (FILL / tiles.max(1)).min(k / 256).clamp(1, 16)
}

/// f32 elements one storage binding holds.
fn binding_elems(gpu: &crate::Gpu) -> usize {
    (gpu.max_binding() / 4) as usize
}

/// Which matmul kernel to run (the others exist as the benchmark's baselines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// Register-blocked, workgroup-tiled: 128x128 tiles, 8x8 per thread, split-K (and the
    /// cooperative-matrix kernel for f16 inputs where the GPU has it).
    Tiled,
    /// The previous tiled kernel: 64x64 tiles, 4x4 per thread, runtime transpose flags.
    Tiled64,
    /// One thread per output.
    Naive,
}

impl Algo {
    /// The kernel [`matmul`] uses: [`Algo::Tiled`], or the one `XLSR_GEMM` names
    /// (`tiled64`, `naive`) to compare them inside a whole training step.
    pub fn default_for_run() -> Algo {
        static PICK: std::sync::OnceLock<Algo> = std::sync::OnceLock::new();
        *PICK.get_or_init(|| match std::env::var("XLSR_GEMM").as_deref() {
            Ok("tiled64") => Algo::Tiled64,
            Ok("naive") => Algo::Naive,
            _ => Algo::Tiled,
        })
    }
}

/// Shape bookkeeping for C = op(A) op(B).
struct Dims {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_shared: bool,
}

fn dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Dims> {
    let (ar, br) = (a.shape().len(), b.shape().len());
    if ar < 2 || br < 2 {
        return shape_err(
            "matmul",
            format!(
                "operands must be at least 2-D, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        );
    }
    let (m, ka) = if ta {
        (a.dim(-1), a.dim(-2))
    } else {
        (a.dim(-2), a.dim(-1))
    };
    let (kb, n) = if tb {
        (b.dim(-1), b.dim(-2))
    } else {
        (b.dim(-2), b.dim(-1))
    };
    let batch: usize = a.shape()[..ar - 2].iter().product();
    let b_shared = br == 2;
    if ka != kb || (!b_shared && (a.shape()[..ar - 2] != b.shape()[..br - 2])) {
        return shape_err(
            "matmul",
            format!(
                "cannot multiply {:?}{} by {:?}{}",
                a.shape(),
                if ta { "^T" } else { "" },
                b.shape(),
                if tb { "^T" } else { "" }
            ),
        );
    }
    Ok(Dims {
        batch,
        m,
        n,
        k: ka,
        b_shared,
    })
}

/// C = op(A) op(B) (+ bias over the last dim). A is [..., M, K] (or [..., K, M] with `ta`),
/// B is [K, N] shared by the batch or [..., K, N] batched like A (or transposed with `tb`).
/// A and B are both f32 or both f16 (mixed precision: f32 accumulation); bias and C are f32.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    matmul_with(Algo::default_for_run(), a, b, ta, tb, bias, None)
}

/// [`matmul`] with a chosen kernel and, for tests covering both paths at small shapes, the
/// number of split-K slices forced (`None`: chosen by [`split_k`]).
pub fn matmul_with(
    algo: Algo,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    bias: Option<&Tensor>,
    splits: Option<usize>,
) -> Result<Tensor> {
    let half = a.dtype() == DType::F16;
    if half {
        check_dtype("matmul", &[a, b], DType::F16)?;
    } else {
        check_f32("matmul", &[a, b])?;
    }
    let d = dims(a, b, ta, tb)?;
    if let Some(bias) = bias {
        check_f32("matmul", &[bias])?;
        if bias.numel() != d.n {
            return shape_err(
                "matmul",
                format!("bias {:?} does not match N = {}", bias.shape(), d.n),
            );
        }
    }
    let gpu = a.gpu();
    let mut shape = a.shape()[..a.shape().len() - 2].to_vec();
    shape.extend([d.m, d.n]);
    let c = Tensor::uninit(gpu, &shape, DType::F32)?;
    let (dm, ds) = (dummy(gpu)?, dummy(gpu)?);
    let biasr = bias.map_or(dm.bind(), |t| t.bind());
    let file = if half { "matmul_f16" } else { "matmul" };
    let kernel = |prm: &MatmulParams| match algo {
        Algo::Tiled => tiled(gpu, half, prm, k16_default()),
        Algo::Tiled64 => tiled64(half),
        Algo::Naive => kernel(file, "matmul_naive"),
    };
    let groups = |m: usize, batch: usize| -> [u32; 3] {
        let tile = match algo {
            Algo::Tiled => TILE,
            Algo::Tiled64 => 64,
            Algo::Naive => 16,
        };
        [
            d.n.div_ceil(tile) as u32,
            m.div_ceil(tile) as u32,
            batch as u32,
        ]
    };
    let params = |m: usize, sa: usize, sb: usize, sc: usize, offs: [u32; 3]| MatmulParams {
        m: m as u32,
        n: d.n as u32,
        k: d.k as u32,
        trans_a: ta as u32,
        trans_b: tb as u32,
        has_bias: bias.is_some() as u32,
        stride_a: sa as u32,
        stride_b: sb as u32,
        stride_c: sc as u32,
        off_a: offs[0],
        off_b: offs[1],
        off_c: offs[2],
        splits: 1,
        k_slice: d.k as u32,
        slice_stride: 0,
    };
    if d.b_shared && !ta {
        // Weights shared by the batch: fold the batch into M and split rows to fit bindings.
        let rows = d.batch * d.m;
        for (r0, nr) in shifted_chunks(gpu, "matmul", rows, &[d.k, d.n])? {
            let (ar, oa) = a.bind_shifted(r0 * d.k, nr * d.k);
            let (cr, oc) = c.bind_shifted(r0 * d.n, nr * d.n);
            let prm = params(nr, 0, 0, 0, [oa, 0, oc]);
            let bufs = [ar, b.bind(), biasr, cr, ds.bind()];
            if algo == Algo::Tiled {
                gemm(gpu, half, prm, 1, bufs, splits, nr == rows)?;
            } else {
                gpu.dispatch(&kernel(&prm), &prm, &bufs, groups(nr, 1))?;
            }
        }
    } else if d.batch == 1 && ta && !tb && d.k * d.m.max(d.n) > binding_elems(gpu) {
        // A weight gradient Aᵀ·dC over more rows (frames) than one binding holds: split the
        // contraction, each slice adding its partial product into C (split-K).
        let (limit, align) = (binding_elems(gpu), (gpu.offset_align() / 4) as usize);
        let per = limit.saturating_sub(align) / d.m.max(d.n);
        if per == 0 || d.m * d.n > limit {
            return shape_err(
                "matmul",
                format!("{} x {} output exceeds one binding", d.m, d.n),
            );
        }
        for k0 in (0..d.k).step_by(per) {
            let kc = per.min(d.k - k0);
            let (ar, oa) = a.bind_shifted(k0 * d.m, kc * d.m);
            let (br, ob) = b.bind_shifted(k0 * d.n, kc * d.n);
            let mut prm = params(d.m, 0, 0, 0, [oa, ob, 0]);
            prm.k = kc as u32;
            prm.k_slice = kc as u32;
            // Bias with the first slice only; the others add into C.
            prm.has_bias = if k0 == 0 { bias.is_some() as u32 } else { 2 };
            let bufs = [ar, br, biasr, c.bind(), ds.bind()];
            gpu.dispatch(&kernel(&prm), &prm, &bufs, groups(d.m, 1))?;
        }
    } else {
        let (sa, sb, sc) = (d.m * d.k, if d.b_shared { 0 } else { d.k * d.n }, d.m * d.n);
        for (b0, nb) in shifted_chunks(gpu, "matmul", d.batch, &[sa, sb, sc])? {
            let (br, ob) = if d.b_shared {
                (b.bind(), 0)
            } else {
                b.bind_shifted(b0 * sb, nb * sb)
            };
            let (ar, oa) = a.bind_shifted(b0 * sa, nb * sa);
            let (cr, oc) = c.bind_shifted(b0 * sc, nb * sc);
            let prm = params(d.m, sa, sb, sc, [oa, ob, oc]);
            let bufs = [ar, br, biasr, cr, ds.bind()];
            if algo == Algo::Tiled {
                gemm(gpu, half, prm, nb, bufs, splits, nb == d.batch)?;
            } else {
                gpu.dispatch(&kernel(&prm), &prm, &bufs, groups(d.m, nb))?;
            }
        }
    }
    Ok(c)
}

/// One way to run a launch of the tiled family: the candidates the tuner picks among.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// The tiled kernel with K in this many slices (1: unsplit), in its k16 build or not.
    Tiled(usize, bool),
    /// The 64x64 tiled kernel (no row sums).
    Tiled64,
    /// Cooperative matrices (tensor cores), in one of their builds, with K in this many
    /// slices (1: unsplit).
    Coop(CoopKernel, usize),
}

/// The 64x64 tiled kernel.
fn tiled64(half: bool) -> Kernel {
    kernel(if half { "matmul_f16" } else { "matmul" }, "matmul_tiled64")
}

/// Runs one GEMM launch of `nb` batch items (`bufs`: A, B, bias, C, row sums) the fastest way
/// this adapter has measured for its shape class (`ops::tune`), or by default: cooperative
/// matrices for f16 inputs where the GPU has them, else the tiled kernel, split-K where the
/// output has few tiles and `can_split` (the whole output in this launch). `splits` forces the
/// slices (tests), which also skips tuning.
fn gemm(
    gpu: &crate::Gpu,
    half: bool,
    prm: MatmulParams,
    nb: usize,
    bufs: [crate::engine::BufRef<'_>; 5],
    splits: Option<usize>,
    can_split: bool,
) -> Result<()> {
    let (m, n, k) = (prm.m as usize, prm.n as usize, prm.k as usize);
    let tiles = n.div_ceil(TILE) * m.div_ceil(TILE) * nb;
    let slices = match can_split {
        true => splits.unwrap_or_else(|| split_k(tiles, k)),
        false => 1,
    };
    let mut names: Vec<&'static str> = Vec::with_capacity(5);
    if half {
        let coops = coop::coop_plans(gpu, &prm);
        names.extend(coops.iter().map(|k| k.name()));
        if slices > 1 {
            names.extend(coops.iter().map(|k| k.unsplit_name()));
        }
    }
    names.push("tiled");
    if k16_fits(gpu) {
        names.push("tiled-k16");
    }
    if slices > 1 {
        names.push("tiled-unsplit");
    }
    if prm.has_bias & ROW_SUMS == 0 {
        names.push("tiled64");
    }
    let plan = |name: &str| match (CoopKernel::named(name), name) {
        (Some((k, true)), _) => Plan::Coop(k, 1),
        (Some((k, false)), _) => Plan::Coop(k, slices),
        (None, "tiled-unsplit") => Plan::Tiled(1, k16_default()),
        (None, "tiled-k16") => Plan::Tiled(slices, true),
        (None, "tiled64") => Plan::Tiled64,
        (None, _) => Plan::Tiled(slices, k16_default()),
    };
    let name = match splits {
        Some(_) => names[0],
        None => super::tune::pick(
            gpu,
            || gemm_key(half, &prm, nb),
            &names,
            |c| {
                // Into scratch outputs, overwriting them: C and the row sums stay untouched.
                let scratch = MatmulParams {
                    off_c: 0,
                    has_bias: prm.has_bias & !(ADD_INTO_C | ADD_INTO_SUMS),
                    ..prm
                };
                let out = Tensor::uninit(gpu, &[nb * m * n], DType::F32)?;
                let sums = Tensor::uninit(gpu, &[m.max(1)], DType::F32)?;
                let [ar, br, biasr, ..] = bufs;
                let to = [ar, br, biasr, out.bind(), sums.bind()];
                launch(gpu, half, plan(c), scratch, nb, to)?;
                Ok(match prm.has_bias & ROW_SUMS {
                    0 => vec![out],
                    _ => vec![out, sums],
                })
            },
        )?,
    };
    launch(gpu, half, plan(name), prm, nb, bufs)
}

/// The tuner's shape class of a GEMM launch: precision, transposes, the batch and M, N, K
/// rounded up to powers of two, and whether it adds row sums or into C (other candidates).
fn gemm_key(half: bool, prm: &MatmulParams, nb: usize) -> String {
    let b = super::tune::bucket;
    let t = |x: u32| if x == 1 { 't' } else { 'n' };
    format!(
        "gemm {} {}{} b{} m{} n{} k{}{}{}",
        if half { "f16" } else { "f32" },
        t(prm.trans_a),
        t(prm.trans_b),
        b(nb),
        b(prm.m as usize),
        b(prm.n as usize),
        b(prm.k as usize),
        if prm.has_bias & ROW_SUMS != 0 {
            " +sums"
        } else {
            ""
        },
        if prm.has_bias & ADD_INTO_C != 0 {
            " +c"
        } else {
            ""
        },
    )
}

/// Dispatches one launch the way `plan` says.
fn launch(
    gpu: &crate::Gpu,
    half: bool,
    plan: Plan,
    prm: MatmulParams,
    nb: usize,
    bufs: [crate::engine::BufRef<'_>; 5],
) -> Result<()> {
    let groups = |tile: usize| {
        [
            (prm.n as usize).div_ceil(tile) as u32,
            (prm.m as usize).div_ceil(tile) as u32,
            nb as u32,
        ]
    };
    match plan {
        Plan::Coop(k, splits) if splits > 1 => {
            let pass = |g: &MatmulParams, b: [crate::engine::BufRef<'_>; 5]| {
                coop::coop_launch(gpu, k, g, nb * splits, &b[..4])
            };
            split_dispatch(gpu, pass, coop::K_STEP, prm, splits, nb, bufs)
        }
        Plan::Coop(k, _) => coop::coop_launch(gpu, k, &prm, nb, &bufs[..4]),
        Plan::Tiled(splits, k16) if splits > 1 => {
            let kernel = tiled(gpu, half, &prm, k16);
            let pass = |g: &MatmulParams, b: [crate::engine::BufRef<'_>; 5]| {
                let z = (nb * splits) as u32;
                gpu.dispatch(&kernel, g, &b, [groups(TILE)[0], groups(TILE)[1], z])
            };
            split_dispatch(gpu, pass, BK, prm, splits, nb, bufs)
        }
        Plan::Tiled(_, k16) => {
            gpu.dispatch(&tiled(gpu, half, &prm, k16), &prm, &bufs, groups(TILE))
        }
        Plan::Tiled64 => gpu.dispatch(&tiled64(half), &prm, &bufs, groups(64)),
    }
}

/// Runs a GEMM with K in `splits` slices of a multiple of `k_step` each: `pass` (the tiled or
/// a tensor-core kernel, over batch * splits workgroups in z) writes each slice's partial
/// product into a workspace, then `splitk_sum` adds them with the bias (and C, when
/// accumulating) into C.
fn split_dispatch(
    gpu: &crate::Gpu,
    pass: impl FnOnce(&MatmulParams, [crate::engine::BufRef<'_>; 5]) -> Result<()>,
    k_step: usize,
    prm: MatmulParams,
    splits: usize,
    batch: usize,
    [ar, br, biasr, cr, sums]: [crate::engine::BufRef<'_>; 5],
) -> Result<()> {
    // A slice's span: C, or what `prm` names (C, then the row sums of op(A)).
    let total = match prm.slice_stride {
        0 => batch * (prm.m * prm.n) as usize,
        span => span as usize,
    };
    let ws = Tensor::uninit(gpu, &[splits * total], DType::F32)?;
    let k_slice = (prm.k as usize).div_ceil(splits).div_ceil(k_step) * k_step;
    let gemm = MatmulParams {
        has_bias: prm.has_bias & ROW_SUMS,
        off_c: 0,
        splits: splits as u32,
        k_slice: k_slice as u32,
        slice_stride: total as u32,
        ..prm
    };
    pass(&gemm, [ar, br, biasr, ws.bind(), sums])?;
    let sum = MatmulParams {
        splits: splits as u32,
        slice_stride: total as u32,
        ..prm
    };
    let dm = dummy(gpu)?;
    gpu.dispatch(
        // The f32 build: the partials are f32 whatever the inputs were.
        &kernel("matmul", "splitk_sum"),
        &sum,
        &[ws.bind(), dm.bind(), biasr, cr, sums],
        crate::engine::grid(total as u64, 256),
    )
}

/// `has_bias` bit: add into C instead of overwriting it.
pub(super) const ADD_INTO_C: u32 = 2;
/// `has_bias` bit of the tiled kernels: also write the row sums of op(A).
const ROW_SUMS: u32 = 4;
/// `has_bias` bit: add the row sums into `sums` instead of overwriting it.
const ADD_INTO_SUMS: u32 = 8;
