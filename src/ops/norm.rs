//! LayerNorm over the last dim or over the channels of [B, C, T], and wav2vec2-base's
//! GroupNorm (one group per channel).

use super::{
    binding_room, check_f32, copy, dummy, elementwise, reduce, shifted_chunks, LayerGrads,
};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("norm", entry, 4, 2)
}
const FWD: Kernel = k("norm_fwd");
const BWD: Kernel = k("norm_bwd");
const FWD_ROWS: Kernel = k("norm_fwd_rows");
const BWD_ROWS: Kernel = k("norm_bwd_rows");
/// Rows up to this long take the short-row kernels.
const SHORT_ROW: usize = 128;
const PGRAD_COLS: Kernel = k("norm_param_grad_cols");
const PGRAD_ROWS: Kernel = k("norm_param_grad_rows");

kernel_params! {
    /// `norm.wgsl`'s uniforms.
    pub struct NormParams in ["norm"] {
        /// Rows in this chunk.
        rows: u32,
        /// Elements per row.
        cols: u32,
        /// 0: gamma/beta by column (LayerNorm); 1: by channel of the row (GroupNorm).
        mode: u32,
        /// Channels (GroupNorm and the channel layout).
        channels: u32,
        /// Global index of this chunk's first row (for the channel of a row).
        row_base: u32,
        /// 1: apply gamma and beta.
        affine: u32,
        /// `norm_bwd*`: 1: dx is added to an earlier gradient of x (bound as `out2`).
        add_earlier: u32,
        /// Element stride within a row (1, or T for the channel layout).
        inner: u32,
        /// Added to the variance.
        eps: f32,
        /// Element shift of x, dy, y and dx within their (aligned-down) bindings.
        off: u32,
        /// The same for the (mean, rstd) pairs.
        off_stats: u32,
        /// The same for per-row outputs (`norm_param_grad_rows`).
        off_rows: u32,
        /// `norm_param_grad_cols`: the rows are split into this many parts.
        parts: u32,
        /// And this chunk's parts are rows part0.. of the [2, total_parts, cols] output.
        part0: u32,
        /// Parts over all chunks: dbeta's partial sums start at total_parts * cols.
        total_parts: u32,
        /// Padding.
        _p1: u32,
    }
}

/// Which normalisation (decides how gamma/beta are indexed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Normalise the last dim; gamma/beta per last-dim element.
    Layer,
    /// Input [B, C, T]: normalise each (b, c) row over T; gamma/beta per channel.
    Group,
    /// Input [B, C, T]: LayerNorm over C at each (b, t); gamma/beta per channel. The same as
    /// transposing to [B, T, C], `Layer`, and transposing back, without the copies.
    Channel,
}

impl Norm {
    /// The op's name in errors.
    fn op(self) -> &'static str {
        match self {
            Norm::Layer => "layer_norm",
            Norm::Group => "group_norm",
            Norm::Channel => "channel_norm",
        }
    }

    /// Its backward's name in errors.
    fn op_backward(self) -> &'static str {
        match self {
            Norm::Layer => "layer_norm_backward",
            Norm::Group => "group_norm_backward",
            Norm::Channel => "channel_norm_backward",
        }
    }
}

/// Where the rows of one dispatch live: elements [start, start + len), rows
/// [row0, row0 + rows).
struct Chunk {
    start: usize,
    len: usize,
    row0: usize,
    rows: usize,
}

/// Saved forward state for the backward pass: (mean, rstd) per row.
#[derive(Debug)]
pub struct NormStats(pub Tensor);

/// (rows, cols, channels, inner): rows of `cols` elements `inner` apart.
fn layout(norm: Norm, x: &Tensor, gamma: Option<&Tensor>) -> Result<(usize, usize, usize, usize)> {
    let op = norm.op();
    if x.shape().is_empty() {
        return shape_err(op, "input must have at least one dim");
    }
    if norm == Norm::Channel {
        let [b, c, t] = *x.shape() else {
            return shape_err(
                op,
                format!(
                    "channel LayerNorm expects [batch, channels, time], got {:?}",
                    x.shape()
                ),
            );
        };
        if let Some(g) = gamma {
            if g.numel() != c {
                return shape_err(
                    op,
                    format!(
                        "weight {:?} does not match {c} channels of {:?}",
                        g.shape(),
                        x.shape()
                    ),
                );
            }
        }
        return Ok((b * t, c, c, t));
    }
    let cols = x.dim(-1);
    let rows = x.numel() / cols.max(1);
    let channels = match norm {
        Norm::Layer | Norm::Channel => cols,
        Norm::Group => {
            if x.shape().len() != 3 {
                return shape_err(
                    "group_norm",
                    format!("expects [batch, channels, time], got {:?}", x.shape()),
                );
            }
            x.dim(1)
        }
    };
    if let Some(g) = gamma {
        if g.numel() != channels {
            return shape_err(
                op,
                format!(
                    "weight {:?} does not match {channels} features of input {:?}",
                    g.shape(),
                    x.shape()
                ),
            );
        }
    }
    Ok((rows, cols, channels, 1))
}

/// The short-row kernel (32 rows per workgroup, 8 lanes each) or the workgroup-per-row one,
/// and its grid.
fn pick(
    per_thread: bool,
    rows_kernel: &'static Kernel,
    row_kernel: &'static Kernel,
    rows: usize,
) -> (&'static Kernel, [u32; 3]) {
    if per_thread {
        (rows_kernel, grid(rows as u64, 32))
    } else {
        (row_kernel, grid(rows as u64, 1))
    }
}

/// Dispatch chunks within the binding limit: whole rows, or whole batch elements for the
/// channel layout (whose rows interleave). `None` when one batch element of the channel
/// layout is too long for a binding (then [`forward`] and [`backward`] go by time windows).
fn chunks(
    gpu: &crate::Gpu,
    norm: Norm,
    x: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<Option<Vec<Chunk>>> {
    if norm == Norm::Channel {
        let (b, per) = (x.dim(0), x.dim(1) * x.dim(2));
        let t = x.dim(2);
        let Ok(items) = shifted_chunks(gpu, norm.op(), b, &[per, 2 * t]) else {
            return Ok(None);
        };
        return Ok(Some(
            items
                .into_iter()
                .map(|(b0, nb)| Chunk {
                    start: b0 * per,
                    len: nb * per,
                    row0: b0 * t,
                    rows: nb * t,
                })
                .collect(),
        ));
    }
    Ok(Some(
        shifted_chunks(gpu, norm.op(), rows, &[cols, 2])?
            .into_iter()
            .map(|(r0, nr)| Chunk {
                start: r0 * cols,
                len: nr * cols,
                row0: r0,
                rows: nr,
            })
            .collect(),
    ))
}

/// Frames per time window of the channel layout when one batch element exceeds a binding.
fn window_frames(gpu: &crate::Gpu, channels: usize) -> usize {
    let room = binding_room(gpu);
    (room / channels.max(2)).max(1)
}

impl Chunk {
    /// This chunk of a data tensor (x, y, dy or dx) as a binding and the kernel's shift.
    fn data<'a>(&self, t: &'a Tensor) -> (crate::engine::BufRef<'a>, u32) {
        t.bind_shifted(self.start, self.len)
    }
    /// This chunk's (mean, rstd) pairs.
    fn stats<'a>(&self, t: &'a Tensor) -> (crate::engine::BufRef<'a>, u32) {
        t.bind_shifted(2 * self.row0, 2 * self.rows)
    }
}

/// The uniforms every dispatch of one norm shares; rows, shifts and parts are set per chunk.
fn params(
    norm: Norm,
    cols: usize,
    channels: usize,
    inner: usize,
    affine: bool,
    eps: f32,
) -> NormParams {
    NormParams {
        cols: cols as u32,
        mode: (norm == Norm::Group) as u32,
        channels: channels as u32,
        affine: affine as u32,
        inner: inner as u32,
        eps,
        ..Default::default()
    }
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, statistics over the last dim.
pub fn forward(
    norm: Norm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, NormStats)> {
    check_f32(norm.op(), &[x])?;
    let (rows, cols, channels, inner) = layout(norm, x, gamma)?;
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let stats = Tensor::uninit(gpu, &[rows, 2], DType::F32)?;
    let d = dummy(gpu)?;
    let (g, b) = (
        gamma.map_or(d.bind(), |t| t.bind()),
        beta.map_or(d.bind(), |t| t.bind()),
    );
    let Some(chunks) = chunks(gpu, norm, x, rows, cols)? else {
        return forward_windows(x, gamma, beta, eps, y, stats);
    };
    let per_thread = per_thread(norm, cols);
    for c in chunks {
        let (kernel, groups) = pick(per_thread, &FWD_ROWS, &FWD, c.rows);
        let ((xr, off), (yr, _), (sr, off_stats)) = (c.data(x), c.data(&y), c.stats(&stats));
        gpu.dispatch(
            kernel,
            &NormParams {
                rows: c.rows as u32,
                row_base: c.row0 as u32,
                off,
                off_stats,
                ..params(norm, cols, channels, inner, gamma.is_some(), eps)
            },
            &[xr, g, b, d.bind(), yr, sr],
            groups,
        )?;
    }
    Ok((y, NormStats(stats)))
}

/// The channel layout one time window at a time, for batch elements too long for a binding:
/// each window is gathered, normalised on its own (its rows are independent) and written back.
fn forward_windows(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
    y: Tensor,
    stats: Tensor,
) -> Result<(Tensor, NormStats)> {
    let [batch, channels, t] = *x.shape() else {
        unreachable!("only the channel layout is windowed")
    };
    let n = window_frames(x.gpu(), channels);
    for b in 0..batch {
        for t0 in (0..t).step_by(n) {
            let xw = copy::time_window(x, b, t0, n.min(t - t0))?;
            let (yw, sw) = forward(Norm::Channel, &xw, gamma, beta, eps)?;
            copy::write_time_window(&y, b, t0, &yw)?;
            copy::write_flat(&stats, 2 * (b * t + t0), &sw.0)?;
        }
    }
    Ok((y, NormStats(stats)))
}

/// Whether rows go to a few lanes each (short rows, channel layout) rather than one workgroup
/// each; forward and backward must agree.
fn per_thread(norm: Norm, cols: usize) -> bool {
    norm == Norm::Channel || (norm == Norm::Layer && cols <= SHORT_ROW)
}

/// Gradients of [`forward`]: dx as `input`, dgamma as `weight`, dbeta as `bias`.
pub fn backward(
    norm: Norm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<LayerGrads> {
    Ok(backward_adding(norm, x, gamma, stats, dy, None, None)?.0)
}

/// What [`backward_adding`] added where it was asked to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Added {
    /// dx is `earlier + dx`.
    pub earlier: bool,
    /// dgamma and dbeta were added into the slots (and are not returned).
    pub slots: bool,
}

/// [`backward`] whose dx is `earlier + dx` in the same pass when `earlier` (another gradient
/// of x, the skip path of a residual stream) can be read beside it, and whose dgamma and
/// dbeta (LayerNorm) are added straight into `slots`, dgamma's then dbeta's back to back (the
/// optimiser's gradient slots), by the pass that sums them.
pub fn backward_adding(
    norm: Norm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
    earlier: Option<&Tensor>,
    slots: Option<&Tensor>,
) -> Result<(LayerGrads, Added)> {
    check_f32(norm.op_backward(), &[x, dy])?;
    if dy.shape() != x.shape() {
        return shape_err(
            norm.op_backward(),
            format!("x {:?} but dy {:?}", x.shape(), dy.shape()),
        );
    }
    let (rows, cols, channels, inner) = layout(norm, x, gamma)?;
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    let unused_out = dummy(gpu)?;
    let dx = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let Some(chunks) = chunks(gpu, norm, x, rows, cols)? else {
        return Ok((backward_windows(x, gamma, stats, dy, dx)?, Added::default()));
    };
    // The earlier gradient shares dx's shift in every chunk (the kernel has one).
    let earlier = earlier.filter(|e| {
        e.shape() == x.shape()
            && e.dtype() == DType::F32
            && chunks.iter().all(|c| c.data(e).1 == c.data(&dx).1)
    });
    let g = gamma.map_or(d.bind(), |t| t.bind());
    // Every dispatch's uniforms: the layout, this chunk, its shifts. Parameter gradients are
    // only asked for with gamma, so `affine` is gamma's presence throughout.
    let prm = |c: &Chunk, [off, off_stats, off_rows]: [u32; 3]| NormParams {
        rows: c.rows as u32,
        row_base: c.row0 as u32,
        off,
        off_stats,
        off_rows,
        ..params(norm, cols, channels, inner, gamma.is_some(), 0.0)
    };
    let per_thread = per_thread(norm, cols);
    for c in &chunks {
        let (kernel, groups) = pick(per_thread, &BWD_ROWS, &BWD, c.rows);
        let ((xr, off), (dyr, _), (dxr, _), (sr, off_stats)) =
            (c.data(x), c.data(dy), c.data(&dx), c.stats(&stats.0));
        let er = earlier.map_or(unused_out.bind(), |e| c.data(e).0);
        let pr = NormParams {
            add_earlier: earlier.is_some() as u32,
            ..prm(c, [off, off_stats, 0])
        };
        gpu.dispatch(kernel, &pr, &[xr, g, dyr, sr, dxr, er], groups)?;
    }
    let mut added = Added {
        earlier: earlier.is_some(),
        slots: false,
    };
    if gamma.is_none() {
        let d = LayerGrads {
            input: Some(dx),
            weight: None,
            bias: None,
        };
        return Ok((d, added));
    }
    let (dg, db) = match norm {
        Norm::Layer | Norm::Channel => {
            // Rows split into parts so that a large GPU gets at least ~256 workgroups (at
            // least 32 rows a part), then the parts summed.
            let col_groups = cols.div_ceil(256);
            let parts: Vec<usize> = chunks
                .iter()
                .map(|c| (256 / col_groups).clamp(1, (c.rows / 32).max(1)))
                .collect();
            let total: usize = parts.iter().sum();
            // dgamma's partial sums, then dbeta's: one sum for both.
            let pgb = Tensor::uninit(gpu, &[2, total, cols], DType::F32)?;
            let mut part0 = 0;
            for (c, &n) in chunks.iter().zip(&parts) {
                let ((xr, off), (dyr, _), (sr, off_stats)) =
                    (c.data(x), c.data(dy), c.stats(&stats.0));
                let pr = NormParams {
                    parts: n as u32,
                    part0: part0 as u32,
                    total_parts: total as u32,
                    ..prm(c, [off, off_stats, 0])
                };
                gpu.dispatch(
                    &PGRAD_COLS,
                    &pr,
                    &[xr, d.bind(), dyr, sr, pgb.bind(), unused_out.bind()],
                    [col_groups as u32, n as u32, 1],
                )?;
                part0 += n;
            }
            if let Some(slots) = slots.filter(|s| s.numel() == 2 * cols) {
                reduce::sum_axis_into(&pgb, 1, 1.0, slots, true)?;
                added.slots = true;
                let d = LayerGrads {
                    input: Some(dx),
                    weight: None,
                    bias: None,
                };
                return Ok((d, added));
            }
            let sums = if total == 1 {
                pgb.reshape(&[2, cols])?
            } else {
                reduce::sum_axis(&pgb, 1, 1.0)?
            };
            let half = |i: usize| super::copy::rows(&sums, i, 1)?.reshape(&[cols]);
            (half(0)?, half(1)?)
        }
        Norm::Group => {
            let sg = Tensor::uninit(gpu, &[rows], DType::F32)?;
            let sb = Tensor::uninit(gpu, &[rows], DType::F32)?;
            for c in &chunks {
                let ((xr, off), (dyr, _), (sr, off_stats)) =
                    (c.data(x), c.data(dy), c.stats(&stats.0));
                let ((sgr, off_rows), (sbr, _)) = (
                    sg.bind_shifted(c.row0, c.rows),
                    sb.bind_shifted(c.row0, c.rows),
                );
                gpu.dispatch(
                    &PGRAD_ROWS,
                    &prm(c, [off, off_stats, off_rows]),
                    &[xr, d.bind(), dyr, sr, sgr, sbr],
                    grid(c.rows as u64, 1),
                )?;
            }
            let batch = rows / channels;
            let sum = |t: &Tensor| {
                reduce::sum_axis(&t.reshape(&[1, batch, channels])?, 1, 1.0)?.reshape(&[channels])
            };
            (sum(&sg)?, sum(&sb)?)
        }
    };
    let d = LayerGrads {
        input: Some(dx),
        weight: Some(dg),
        bias: Some(db),
    };
    Ok((d, added))
}

/// [`backward`] of the channel layout by time windows (see [`forward_windows`]); the
/// parameter gradients add up over windows.
fn backward_windows(
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
    dx: Tensor,
) -> Result<LayerGrads> {
    let [batch, channels, t] = *x.shape() else {
        unreachable!("only the channel layout is windowed")
    };
    let n = window_frames(x.gpu(), channels);
    let mut sums: Option<(Tensor, Tensor)> = None;
    for b in 0..batch {
        for t0 in (0..t).step_by(n) {
            let len = n.min(t - t0);
            let xw = copy::time_window(x, b, t0, len)?;
            let dyw = copy::time_window(dy, b, t0, len)?;
            let sw = copy::flat_range(&stats.0, 2 * (b * t + t0), 2 * len)?.reshape(&[len, 2])?;
            let d = backward(Norm::Channel, &xw, gamma, &NormStats(sw), &dyw)?;
            let dxw = d.input.expect("a norm's input gradient is always computed");
            copy::write_time_window(&dx, b, t0, &dxw)?;
            if let (Some(dg), Some(db)) = (d.weight, d.bias) {
                sums = Some(match sums {
                    None => (dg, db),
                    Some((g, s)) => (elementwise::add(&g, &dg)?, elementwise::add(&s, &db)?),
                });
            }
        }
    }
    let (weight, bias) = sums.unzip();
    Ok(LayerGrads {
        input: Some(dx),
        weight,
        bias,
    })
}
