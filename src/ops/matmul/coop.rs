//! The tensor-core GEMMs (`matmul_coop.wgsl`, `matmul_coop128.wgsl`): which launches they
//! take, which build is the default, and their dispatch in the adapter's [`CoopShape`].

use super::{MatmulParams, ADD_INTO_C};
use crate::engine::error::Result;
use crate::engine::{BufRef, CoopShape, Kernel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A cooperative-matrix build (a, b, bias read; c written).
fn coop_kernel(file: &'static str) -> Kernel {
    Kernel::new(file, "matmul_coop", 3, 1)
}

/// Whether the cooperative-matrix kernels serve C = op(A) op(B) of this shape: M and N at
/// least 64 (one tile of the direct kernel at 16x16 fragments), every fragment row 16-byte
/// aligned (the leading dimension of each operand, its element offsets `offs` and batch
/// strides `strides`, for A, B and C, multiples of 8 f16 or 4 f32 elements), and no
/// accumulating into C.
pub fn coop_fits(
    [m, n, k]: [usize; 3],
    ta: bool,
    tb: bool,
    offs: [usize; 3],
    strides: [usize; 3],
    accumulate: bool,
) -> bool {
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    // A and B in f16 (8 per 16 bytes), C in f32 (4 per 16 bytes).
    let f16_aligned = [lda, ldb, offs[0], offs[1], strides[0], strides[1]];
    let f32_aligned = [n, offs[2], strides[2]];
    m >= 64
        && n >= 64
        && !accumulate
        && f16_aligned.iter().all(|x| x.is_multiple_of(8))
        && f32_aligned.iter().all(|x| x.is_multiple_of(4))
}

/// Split-K slices of the tensor-core kernels are multiples of this: the staged builds' slab
/// of K (2F), which the direct build's step (F) divides.
pub(super) const K_STEP: usize = 32;

/// The tensor-core GEMM builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopKernel {
    /// `matmul_coop.wgsl`: one subgroup a 4F x 4F tile, fragments straight from storage.
    Direct,
    /// `matmul_coop128.wgsl`: 4 subgroups an 8F x 8F tile staged through workgroup memory.
    Staged,
    /// Its `_wide` build: 8 subgroups, each 2F x 4F.
    Wide,
}

impl CoopKernel {
    /// Every build, the default first.
    pub const ALL: [CoopKernel; 3] = [CoopKernel::Direct, CoopKernel::Staged, CoopKernel::Wide];

    /// The tuner's (and `XLSR_COOP`'s) name for it.
    pub fn name(self) -> &'static str {
        match self {
            CoopKernel::Direct => "coop",
            CoopKernel::Staged => "coop-staged",
            CoopKernel::Wide => "coop-wide",
        }
    }

    /// The tuner's name for it with K never split (a candidate where the default splits).
    pub fn unsplit_name(self) -> &'static str {
        match self {
            CoopKernel::Direct => "coop-unsplit",
            CoopKernel::Staged => "coop-staged-unsplit",
            CoopKernel::Wide => "coop-wide-unsplit",
        }
    }

    /// The build of that name, and whether the name says unsplit.
    pub fn named(name: &str) -> Option<(CoopKernel, bool)> {
        CoopKernel::ALL.into_iter().find_map(|k| {
            (k.name() == name)
                .then_some((k, false))
                .or((k.unsplit_name() == name).then_some((k, true)))
        })
    }

    /// Whether it can be built for `shape`: the staged builds need each lane to stage 1, 2 or
    /// 4 chunks of 8 f16 of each slab (2F² chunks over 4 or 8 subgroups' lanes).
    pub fn fits(self, shape: CoopShape) -> bool {
        let subgroups = match self {
            CoopKernel::Direct => return true,
            CoopKernel::Staged => 4,
            CoopKernel::Wide => 8,
        };
        let (chunks, threads) = (2 * shape.frag * shape.frag, subgroups * shape.lanes);
        chunks.is_multiple_of(threads) && matches!(chunks / threads, 1 | 2 | 4)
    }

    /// The file names of its builds, by transpose combination (A, B).
    fn variants(self) -> [[&'static str; 2]; 2] {
        match self {
            CoopKernel::Direct => crate::engine::COOP_VARIANTS,
            CoopKernel::Staged => crate::engine::COOP128_VARIANTS,
            CoopKernel::Wide => crate::engine::COOP128_WIDE_VARIANTS,
        }
    }

    /// Its tile of C, in fragments a side.
    fn tile_frags(self) -> usize {
        match self {
            CoopKernel::Direct => 4,
            _ => 8,
        }
    }
}

/// The default tensor-core GEMM (`XLSR_COOP=staged|wide` at start, or [`set_coop_kernel`]).
pub(super) fn coop_default() -> CoopKernel {
    CoopKernel::ALL[setting().load(Ordering::Relaxed)]
}

fn setting() -> &'static AtomicUsize {
    static AT: OnceLock<AtomicUsize> = OnceLock::new();
    AT.get_or_init(|| {
        let name = std::env::var("XLSR_COOP").unwrap_or_default();
        let pick = CoopKernel::ALL
            .iter()
            .position(|k| name == k.name() || name == k.name().trim_start_matches("coop-"));
        AtomicUsize::new(pick.unwrap_or(0))
    })
}

/// Makes `k` the tensor-core GEMM f16 GEMMs run by default where the adapter has
/// cooperative matrices and `k` a build for them, for tests and comparisons; returns the
/// setting before.
pub fn set_coop_kernel(k: CoopKernel) -> CoopKernel {
    let at = CoopKernel::ALL.iter().position(|&x| x == k).unwrap_or(0);
    CoopKernel::ALL[setting().swap(at, Ordering::Relaxed)]
}

/// The tensor-core builds this launch can take on this GPU, the default first (none where
/// the adapter has no cooperative matrices or the shape does not fit them; a build that the
/// driver fails to compile is left out, see [`crate::Gpu::compiles`]).
pub(super) fn coop_plans(gpu: &crate::Gpu, prm: &MatmulParams) -> Vec<CoopKernel> {
    let u = |x: u32| x as usize;
    let Some(shape) = gpu.coop_shape() else {
        return Vec::new();
    };
    let fits = coop_fits(
        [u(prm.m), u(prm.n), u(prm.k)],
        prm.trans_a == 1,
        prm.trans_b == 1,
        [u(prm.off_a), u(prm.off_b), u(prm.off_c)],
        [u(prm.stride_a), u(prm.stride_b), u(prm.stride_c)],
        prm.has_bias & ADD_INTO_C != 0,
    );
    if !fits {
        return Vec::new();
    }
    let first = coop_default();
    let entry =
        |k: CoopKernel| coop_kernel(k.variants()[prm.trans_a as usize][prm.trans_b as usize]);
    let mut ks: Vec<CoopKernel> = CoopKernel::ALL
        .into_iter()
        .filter(|&k| k.fits(shape) && gpu.compiles::<MatmulParams>(&entry(k)))
        .collect();
    if let Some(at) = ks.iter().position(|&k| k == first) {
        ks[..=at].rotate_right(1);
    }
    ks
}

/// Dispatches tensor-core build `k` over `nb` batch items.
pub(super) fn coop_launch(
    gpu: &crate::Gpu,
    k: CoopKernel,
    prm: &MatmulParams,
    nb: usize,
    bufs: &[BufRef<'_>],
) -> Result<()> {
    let frag = gpu.coop_shape().map_or(16, |s| s.frag) as usize;
    let tile = k.tile_frags() * frag;
    let entry = k.variants()[prm.trans_a as usize][prm.trans_b as usize];
    let groups = [
        (prm.n as usize).div_ceil(tile) as u32,
        (prm.m as usize).div_ceil(tile) as u32,
        nb as u32,
    ];
    gpu.dispatch(&coop_kernel(entry), prm, bufs, groups)
}
