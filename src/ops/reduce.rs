//! Sums, means, the global L2 norm, and their backward.

use super::{binding_room, check_f32, dims8, dummy, row_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, BufRef, Gpu, Kernel};
use crate::engine::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("reduce", entry, 3, 1)
}
const SUM_ALL: Kernel = k("sum_all");
const SQRT_AT: Kernel = k("sqrt_at");
const L2_BWD: Kernel = k("l2_bwd");
const SUM_AXIS: Kernel = k("sum_axis");
const EXPAND: Kernel = k("expand");
pub(crate) const REDUCE_TO: Kernel = k("reduce_to");

/// Tensors per `multi_tensor.wgsl` dispatch (with the output, eight storage bindings).
pub(crate) const MULTI_TENSOR_INPUTS: usize = 7;
const SUM_SQUARES: Kernel =
    Kernel::new("multi_tensor", "sum_squares", MULTI_TENSOR_INPUTS as u32, 1);
const ACCUMULATE: Kernel = Kernel::new("multi_tensor", "accumulate", MULTI_TENSOR_INPUTS as u32, 1);

kernel_params! {
    /// `reduce.wgsl`'s uniforms.
    pub struct ReduceParams in ["reduce"] {
        /// Threads / output elements.
        n: u32,
        /// 1: sum squares.
        square: u32,
        /// `sum_all`: the partial's slot; `sum_axis`: rows per part (0: all).
        out_index: u32,
        /// `sum_all`: elements to reduce; `sum_axis`: the reduced axis length.
        len: u32,
        /// Product of the dims after the reduced axis.
        inner: u32,
        /// Factor applied to the result.
        alpha: f32,
        /// `reduce_to`: dims of the gradient.
        ndim: u32,
        /// `reduce_to`: number of reduced (broadcast) dims.
        rn: u32,
        /// `sum_axis`: 1: add into `out` instead of overwriting it.
        accumulate: u32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
        /// Padding.
        _p2: u32,
        /// Kept dims of the target shape (1 on reduced dims).
        kshape: [[u32; 4]; 2],
        /// Gradient strides.
        kstride: [[u32; 4]; 2],
        /// The reduced dims' extents.
        rshape: [[u32; 4]; 2],
        /// And their gradient strides.
        rstride: [[u32; 4]; 2],
    }
}

kernel_params! {
    /// `multi_tensor.wgsl`'s uniforms.
    pub struct MultiTensorParams in ["multi_tensor"] {
        /// Tensors in this dispatch (at most seven).
        count: u32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
        /// Padding.
        _p2: u32,
        /// Elements of each tensor.
        len: [[u32; 4]; 2],
        /// Workgroups working on each tensor.
        groups: [[u32; 4]; 2],
        /// Where each tensor's partials (or elements) start in the output.
        slot: [[u32; 4]; 2],
    }
}

/// Partials per first pass: enough workgroups to fill a GPU, few enough for one second pass.
const PARTIALS: usize = 256;

fn p(
    n: usize,
    square: bool,
    out_index: usize,
    len: usize,
    inner: usize,
    alpha: f32,
) -> ReduceParams {
    ReduceParams {
        n: n as u32,
        square: square as u32,
        out_index: out_index as u32,
        len: len as u32,
        inner: inner as u32,
        alpha,
        ..Default::default()
    }
}

/// Workgroups for a first pass over `len` elements: about four per thread, at most
/// [`PARTIALS`].
fn partial_groups(len: usize) -> usize {
    len.div_ceil(256 * 4).clamp(1, PARTIALS)
}

/// Writes alpha * sum(x) (or of x^2) into `out[index]`, chunking x if needed: one pass when
/// one workgroup suffices, else per-workgroup partial sums (packed, every slot written, so
/// nothing needs clearing) and a second pass over them.
fn sum_into(x: &Tensor, square: bool, alpha: f32, out: &Tensor, index: usize) -> Result<()> {
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    let chunks = row_chunks(gpu, "sum", x.numel(), 1)?;
    let groups: Vec<usize> = chunks.iter().map(|&(_, len)| partial_groups(len)).collect();
    let total: usize = groups.iter().sum();
    if total == 1 {
        return gpu.dispatch(
            &SUM_ALL,
            &p(0, square, index, x.numel(), 0, alpha),
            &[x.bind_range(0, x.numel()), d.bind(), d.bind(), out.bind()],
            [1, 1, 1],
        );
    }
    let partials = Tensor::uninit(gpu, &[total], DType::F32)?;
    let mut at = 0;
    for (&(s, len), &g) in chunks.iter().zip(&groups) {
        gpu.dispatch(
            &SUM_ALL,
            &p(0, square, at, len, 0, 1.0),
            &[x.bind_range(s, len), d.bind(), d.bind(), partials.bind()],
            [g as u32, 1, 1],
        )?;
        at += g;
    }
    gpu.dispatch(
        &SUM_ALL,
        &p(0, false, index, total, 0, alpha),
        &[partials.bind(), d.bind(), d.bind(), out.bind()],
        [1, 1, 1],
    )
}

/// Sum of all elements, as a scalar tensor.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    check_f32("sum", &[x])?;
    let out = Tensor::uninit(x.gpu(), &[], DType::F32)?;
    sum_into(x, false, 1.0, &out, 0)?;
    Ok(out)
}

/// Mean of all elements, as a scalar tensor.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    check_f32("mean", &[x])?;
    let out = Tensor::uninit(x.gpu(), &[], DType::F32)?;
    sum_into(x, false, 1.0 / x.numel().max(1) as f32, &out, 0)?;
    Ok(out)
}

/// The L2 norm of all elements of all tensors together (for gradient clipping), on the GPU.
pub fn global_norm(gpu: &Gpu, xs: &[&Tensor]) -> Result<Tensor> {
    global_norm_scaled(gpu, xs, 1.0)
}

/// `alpha` times [`global_norm`] (the norm of loss-scaled gradients, unscaled). The sums of
/// squares of seven tensors go in one dispatch (`multi_tensor.wgsl`), each tensor's partials
/// in their own slots, then one sum over all partials; a tensor too big for one binding is
/// summed on its own into its slot.
pub fn global_norm_scaled(gpu: &Gpu, xs: &[&Tensor], alpha: f32) -> Result<Tensor> {
    check_f32("global_norm", xs)?;
    let room = binding_room(gpu);
    let groups = |x: &Tensor| partial_groups(x.numel());
    let (small, big): (Vec<&Tensor>, Vec<&Tensor>) =
        xs.iter().copied().partition(|x| x.numel() <= room);
    let total_slots: usize = small.iter().map(|x| groups(x)).sum::<usize>() + big.len();
    let partials = Tensor::uninit(gpu, &[total_slots.max(1)], DType::F32)?;
    if total_slots == 0 {
        gpu.zero(partials.buffer(), 4)?;
    }
    let d = dummy(gpu)?;
    let mut slot = 0;
    for batch in small.chunks(MULTI_TENSOR_INPUTS) {
        let (mut len, mut gr, mut at) = (vec![], vec![], vec![]);
        for x in batch {
            len.push(x.numel());
            gr.push(groups(x));
            at.push(slot);
            slot += groups(x);
        }
        let params = MultiTensorParams {
            count: batch.len() as u32,
            len: dims8(&len),
            groups: dims8(&gr),
            slot: dims8(&at),
            ..Default::default()
        };
        let mut bufs: Vec<BufRef<'_>> = batch.iter().map(|x| x.bind()).collect();
        bufs.resize(MULTI_TENSOR_INPUTS, d.bind());
        bufs.push(partials.bind());
        let widest = gr.iter().copied().max().unwrap_or(1);
        gpu.dispatch(
            &SUM_SQUARES,
            &params,
            &bufs,
            [widest as u32, batch.len() as u32, 1],
        )?;
    }
    for x in big {
        sum_into(x, true, 1.0, &partials, slot)?;
        slot += 1;
    }
    let total = Tensor::uninit(gpu, &[], DType::F32)?;
    sum_into(&partials, false, 1.0, &total, 0)?;
    let out = Tensor::uninit(gpu, &[], DType::F32)?;
    gpu.dispatch(
        &SQRT_AT,
        &p(1, false, 0, 1, 0, alpha),
        &[total.bind(), d.bind(), d.bind(), out.bind()],
        [1, 1, 1],
    )?;
    Ok(out)
}

/// `slot += x` for up to seven `(slot, x)` pairs in one dispatch: the slots are views of one
/// buffer that do not overlap and lie within one binding (gradients into the optimiser's flat
/// gradient buffer).
pub fn accumulate_into(pairs: &[(&Tensor, &Tensor)]) -> Result<()> {
    let Some((first, _)) = pairs.first() else {
        return Ok(());
    };
    let gpu = first.gpu();
    let xs: Vec<&Tensor> = pairs.iter().flat_map(|(s, x)| [*s, *x]).collect();
    check_f32("accumulate", &xs)?;
    let lo = pairs
        .iter()
        .map(|(s, _)| s.byte_offset())
        .min()
        .unwrap_or(0);
    let hi = pairs
        .iter()
        .map(|(s, _)| s.byte_offset() + s.bytes())
        .max()
        .unwrap_or(0);
    for (s, x) in pairs {
        if s.numel() != x.numel() || !s.same_storage(first) {
            return shape_err(
                "accumulate",
                format!(
                    "{:?} into a slot {:?} of another buffer or size",
                    x.shape(),
                    s.shape()
                ),
            );
        }
    }
    if pairs.len() > MULTI_TENSOR_INPUTS || hi - lo > gpu.max_binding() {
        return shape_err(
            "accumulate",
            format!(
                "{} tensors over {} bytes in one dispatch",
                pairs.len(),
                hi - lo
            ),
        );
    }
    // A grid stride of at most 1024 workgroups per tensor.
    let groups = |x: &Tensor| x.numel().div_ceil(256).clamp(1, 1024);
    let params = MultiTensorParams {
        count: pairs.len() as u32,
        len: dims8(&pairs.iter().map(|(_, x)| x.numel()).collect::<Vec<_>>()),
        groups: dims8(&pairs.iter().map(|(_, x)| groups(x)).collect::<Vec<_>>()),
        slot: dims8(
            &pairs
                .iter()
                .map(|(s, _)| ((s.byte_offset() - lo) / 4) as usize)
                .collect::<Vec<_>>(),
        ),
        ..Default::default()
    };
    let d = dummy(gpu)?;
    let mut bufs: Vec<BufRef<'_>> = pairs.iter().map(|(_, x)| x.bind()).collect();
    bufs.resize(MULTI_TENSOR_INPUTS, d.bind());
    bufs.push(BufRef {
        buffer: first.buffer(),
        offset: lo,
        size: hi - lo,
    });
    let widest = pairs.iter().map(|(_, x)| groups(x)).max().unwrap_or(1);
    gpu.dispatch(
        &ACCUMULATE,
        &params,
        &bufs,
        [widest as u32, pairs.len() as u32, 1],
    )
}

/// ||x||_2 of one tensor.
pub fn l2_norm(x: &Tensor) -> Result<Tensor> {
    global_norm(x.gpu(), &[x])
}

/// Gradient of ||x|| given the norm and its upstream gradient (both scalars).
pub fn l2_norm_backward(x: &Tensor, norm: &Tensor, dnorm: &Tensor) -> Result<Tensor> {
    check_f32("l2_norm_backward", &[x, norm, dnorm])?;
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    for (s, len) in row_chunks(gpu, "l2_norm_backward", x.numel(), 1)? {
        gpu.dispatch(
            &L2_BWD,
            &p(len, false, 0, 0, 0, 1.0),
            &[
                x.bind_range(s, len),
                norm.bind(),
                dnorm.bind(),
                out.bind_range(s, len),
            ],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

/// Into how many parts [`sum_axis`] splits a reduced axis of `len` when `outputs` threads alone
/// would leave a large GPU idle (a bias gradient: 1,024 columns over 2,000 rows): enough for
/// about 64K threads, each part at least 32 rows; 1 means a single pass.
pub fn axis_parts(outputs: usize, len: usize) -> usize {
    if outputs >= 32 * 1024 || len < 128 {
        return 1;
    }
    (64 * 1024 / outputs.max(1)).clamp(1, len / 32)
}

/// alpha * sum over `axis` (the axis is removed). `alpha = 1/len` gives the mean.
pub fn sum_axis(x: &Tensor, axis: usize, alpha: f32) -> Result<Tensor> {
    let s = x.shape();
    if axis >= s.len() {
        return shape_err("sum_axis", format!("axis {axis} out of range for {s:?}"));
    }
    let mut shape = s.to_vec();
    shape.remove(axis);
    let out = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    sum_axis_into(x, axis, alpha, &out, false)?;
    Ok(out)
}

/// [`sum_axis`] written into `out` (as many elements as the result), or added into it with
/// `accumulate` (a parameter's gradient straight into its slot).
pub fn sum_axis_into(
    x: &Tensor,
    axis: usize,
    alpha: f32,
    out: &Tensor,
    accumulate: bool,
) -> Result<()> {
    check_f32("sum_axis", &[x, out])?;
    let s = x.shape();
    if axis >= s.len() {
        return shape_err("sum_axis", format!("axis {axis} out of range for {s:?}"));
    }
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    if out.numel() != outer * inner.max(1) {
        return shape_err(
            "sum_axis",
            format!("sum of {s:?} over axis {axis} into {:?}", out.shape()),
        );
    }
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    let p = |n, square, out_index, len, inner, alpha, last: bool| ReduceParams {
        accumulate: (last && accumulate) as u32,
        ..p(n, square, out_index, len, inner, alpha)
    };
    let (len, inner) = (s[axis], inner.max(1));
    let chunks = row_chunks(gpu, "sum_axis", outer, len * inner)?;
    let parts = axis_parts(outer * inner, len);
    if parts > 1 && chunks.len() == 1 {
        // Two passes: partial sums over parts of the axis, then their sum.
        let chunk = len.div_ceil(parts);
        let parts = len.div_ceil(chunk);
        let partial = Tensor::uninit(gpu, &[outer, parts, inner], DType::F32)?;
        let mut params = p(outer * parts * inner, false, chunk, len, inner, 1.0, false);
        gpu.dispatch(
            &SUM_AXIS,
            &params,
            &[x.bind(), d.bind(), d.bind(), partial.bind()],
            grid((outer * parts * inner) as u64, 256),
        )?;
        params = p(outer * inner, false, 0, parts, inner, alpha, true);
        return gpu.dispatch(
            &SUM_AXIS,
            &params,
            &[partial.bind(), d.bind(), d.bind(), out.bind()],
            grid((outer * inner) as u64, 256),
        );
    }
    for (o0, no) in chunks {
        let params = p(no * inner, false, 0, len, inner, alpha, true);
        gpu.dispatch(
            &SUM_AXIS,
            &params,
            &[
                x.bind_range(o0 * len * inner, no * len * inner),
                d.bind(),
                d.bind(),
                out.bind_range(o0 * inner, no * inner),
            ],
            grid((no * inner) as u64, 256),
        )?;
    }
    Ok(())
}

/// Backward of [`sum_axis`]: broadcasts `dy` back over a new axis of length `len`, times alpha.
pub fn expand(dy: &Tensor, axis: usize, len: usize, alpha: f32) -> Result<Tensor> {
    check_f32("expand", &[dy])?;
    let s = dy.shape();
    if axis > s.len() {
        return shape_err("expand", format!("axis {axis} out of range for {s:?}"));
    }
    let inner: usize = s[axis..].iter().product();
    let outer: usize = s[..axis].iter().product();
    let mut shape = s.to_vec();
    shape.insert(axis, len);
    let gpu = dy.gpu();
    let out = Tensor::uninit(gpu, &shape, DType::F32)?;
    let d = dummy(gpu)?;
    for (o0, no) in row_chunks(gpu, "expand", outer, len * inner)? {
        let params = p(no * len * inner, false, 0, len, inner.max(1), alpha);
        gpu.dispatch(
            &EXPAND,
            &params,
            &[
                dy.bind_range(o0 * inner, no * inner),
                d.bind(),
                d.bind(),
                out.bind_range(o0 * len * inner, no * len * inner),
            ],
            grid((no * len * inner) as u64, 256),
        )?;
    }
    Ok(out)
}
