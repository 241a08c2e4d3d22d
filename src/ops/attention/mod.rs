//! Fused multi-head attention (flash-attention style): softmax(q kᵀ·scale + mask), dropout, @ v.

mod builds;

use super::{check_dtype, check_f32, dummy, shifted_chunks};
use crate::engine::error::{shape_err, Error, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, BufRef};
use crate::engine::{DType, Tensor};
use builds::{build_for, builds, launch, BWD_KV, BWD_Q, BWD_STATS, FWD, ROWS};
pub use builds::{fused_fits, set_coop_attention, set_rows_only, set_tiled, Tiled, ROW_BYTES};

/// Largest head dim the fused kernels take; callers fall back to the unfused path above it.
pub const MAX_HEAD_DIM: usize = 64;

kernel_params! {
    /// `attention.wgsl`'s uniforms.
    pub struct AttentionParams in ["attention", "attention_coop"] {
        /// Batch * heads rows in this chunk.
        bh: u32,
        /// Sequence length (queries = keys).
        t: u32,
        /// Head dim, at most [`MAX_HEAD_DIM`].
        d: u32,
        /// Heads (a key mask row serves `heads` consecutive rows).
        heads: u32,
        /// 1: add the key mask.
        has_mask: u32,
        /// Softmax scale.
        scale: f32,
        /// Dropout probability.
        p: f32,
        /// Low word of the dropout seed.
        seed_lo: u32,
        /// High word of the dropout seed.
        seed_hi: u32,
        /// Global index of this chunk's first (batch, head) row (dropout, key mask).
        bh0: u32,
        /// Element shift of q, k and v within their (aligned-down) bindings.
        off_in: u32,
        /// The same for O, dO, dQ, dK and dV.
        off_f: u32,
        /// The same for L.
        off_l: u32,
        /// The same for the backward stats.
        off_s: u32,
        /// 1: q, k, v, O and their gradients are [B, T, H, D].
        tokens_first: u32,
        /// Dropout mask row of (batch, head) row 0: the mask of a larger batch's rows.
        drop_bh0: u32,
        /// Element shift of dQ, dK and dV.
        off_g: u32,
        /// 1, or 3 when q, k, v (and their gradients) are one [B, T, 3, H, D] tensor.
        qkv_rows: u32,
        /// Where k starts in a token's row of that tensor (0 or H * D).
        col_k: u32,
        /// Where v starts (0 or 2 * H * D).
        col_v: u32,
    }
}

/// Problem size: (batch * heads, sequence length, head dim).
#[derive(Clone, Copy)]
struct Dims {
    bh: usize,
    t: usize,
    d: usize,
}

/// q, k and v: three tensors of one shape, or one [B, T, 3, H, D] tensor holding all three
/// (the output of one GEMM over the joined projection weights; [`Attention::tokens_first`]).
#[derive(Clone, Copy)]
pub enum Qkv<'a> {
    /// q, k, v.
    Separate(&'a Tensor, &'a Tensor, &'a Tensor),
    /// [B, T, 3, H, D]: q, k, v of each token side by side.
    Packed(&'a Tensor),
}

impl<'a> Qkv<'a> {
    /// The tensors bound as q, k and v (one tensor three times when packed).
    fn parts(self) -> [&'a Tensor; 3] {
        match self {
            Qkv::Separate(q, k, v) => [q, k, v],
            Qkv::Packed(x) => [x, x, x],
        }
    }

    /// How many of q, k, v one tensor's token row holds.
    fn rows(self) -> usize {
        match self {
            Qkv::Separate(..) => 1,
            Qkv::Packed(_) => 3,
        }
    }

    /// The shape of one of q, k, v (and of the output): [B, T, H, D] when packed.
    fn one_shape(self) -> Vec<usize> {
        match self {
            Qkv::Separate(q, ..) => q.shape().to_vec(),
            Qkv::Packed(x) => {
                let mut s = x.shape().to_vec();
                s.remove(2.min(s.len().saturating_sub(1)));
                s
            }
        }
    }
}

fn check(op: &'static str, qkv: Qkv<'_>, mask: Option<&Tensor>, a: &Attention) -> Result<Dims> {
    let (heads, dropout) = (a.heads, a.dropout);
    let [q, k, v] = qkv.parts();
    if q.dtype() == DType::F16 {
        check_dtype(op, &[q, k, v], DType::F16)?;
    } else {
        check_f32(op, &[q, k, v])?;
    }
    if let Qkv::Packed(x) = qkv {
        if !a.tokens_first || x.shape().len() != 5 || x.shape()[2] != 3 {
            return shape_err(
                op,
                format!(
                    "packed q, k, v {:?} must be [B, T, 3, H, D] with tokens_first",
                    x.shape()
                ),
            );
        }
    }
    let one = qkv.one_shape();
    let shape = one.as_slice();
    let (k, v) = match qkv {
        Qkv::Separate(_, k, v) => (k.shape(), v.shape()),
        Qkv::Packed(_) => (shape, shape),
    };
    let want = if a.tokens_first {
        "[B, T, H, D]"
    } else {
        "[.., T, D]"
    };
    let rank_ok = if a.tokens_first {
        shape.len() == 4 && shape[2] == heads
    } else {
        shape.len() >= 2
    };
    if !rank_ok || k != shape || v != shape {
        return shape_err(
            op,
            format!("q {shape:?}, k {k:?}, v {v:?} must be one shape {want} ({heads} heads)"),
        );
    }
    let (t, d, bh) = if a.tokens_first {
        (shape[1], shape[3], shape[0] * shape[2])
    } else {
        let rows: usize = shape[..shape.len() - 2].iter().product();
        (shape[shape.len() - 2], shape[shape.len() - 1], rows)
    };
    if d > MAX_HEAD_DIM {
        return Err(Error::Limit {
            op,
            msg: format!(
                "head dim {d} exceeds the fused kernel's maximum {MAX_HEAD_DIM}; use the unfused path"
            ),
        });
    }
    if heads == 0 || !bh.is_multiple_of(heads) {
        return shape_err(
            op,
            format!("{bh} (batch x heads) rows of {shape:?} not divisible by {heads} heads"),
        );
    }
    let gpu = qkv.parts()[0].gpu();
    if !fused_fits(gpu) {
        return Err(Error::Limit {
            op,
            msg: format!(
                "the fused kernels need {ROW_BYTES} bytes of workgroup memory, {} offers {}; use the unfused path",
                gpu.info().name,
                gpu.limits().max_compute_workgroup_storage_size
            ),
        });
    }
    if let Some(m) = mask {
        check_f32(op, &[m])?;
        if m.shape() != [bh / heads, t] {
            return shape_err(
                op,
                format!(
                    "mask {:?} does not fit q {shape:?} with {heads} heads (want [{}, {t}])",
                    m.shape(),
                    bh / heads
                ),
            );
        }
    }
    if !(0.0..1.0).contains(&dropout) {
        return shape_err(op, format!("dropout probability {dropout} not in [0, 1)"));
    }
    Ok(Dims { bh, t, d })
}

/// Runs of (batch, head) rows, (first, count), whose tensors each fit one binding. With
/// `tokens_first` a run holds whole batches, whose [T, H, D] blocks are contiguous.
fn chunks(qkv: Qkv<'_>, g: &Dims, a: &Attention) -> Result<Vec<(usize, usize)>> {
    let per = if a.tokens_first { a.heads } else { 1 };
    let runs = shifted_chunks(
        qkv.parts()[0].gpu(),
        "attention",
        g.bh / per,
        &[per * g.t * g.d * qkv.rows(), per * 2 * g.t],
    )?;
    Ok(runs
        .into_iter()
        .map(|(b0, n)| (b0 * per, n * per))
        .collect())
}

/// Bindings of one chunk of (batch, head) rows: `Tensor::bind_shifted` over the rows' [T, D]
/// blocks (`per` = T * D), their L (T) or their backward stats (2T).
fn rows(t: &Tensor, b0: usize, n: usize, per: usize) -> (BufRef<'_>, u32) {
    t.bind_shifted(b0 * per, n * per)
}

/// Uniform fields; `chunk` is (first row, shifts of q/k/v, of O/dO, of L, of stats, of
/// dQ/dK/dV).
fn params(
    g: &Dims,
    a: &Attention,
    has_mask: bool,
    qkv: Qkv<'_>,
    [bh0, off_in, off_f, off_l, off_s, off_g]: [u32; 6],
) -> AttentionParams {
    let hd = (a.heads * g.d) as u32;
    let packed = matches!(qkv, Qkv::Packed(_));
    AttentionParams {
        bh: g.bh as u32,
        t: g.t as u32,
        d: g.d as u32,
        heads: a.heads as u32,
        has_mask: has_mask as u32,
        scale: a.scale,
        p: a.dropout,
        seed_lo: a.seed as u32,
        seed_hi: (a.seed >> 32) as u32,
        bh0,
        off_in,
        off_f,
        off_l,
        off_s,
        tokens_first: a.tokens_first as u32,
        drop_bh0: (a.drop_row * a.heads) as u32,
        off_g,
        qkv_rows: qkv.rows() as u32,
        col_k: if packed { hd } else { 0 },
        col_v: if packed { 2 * hd } else { 0 },
    }
}

/// What one attention call computes besides its tensors.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    /// Heads H: q's leading dims flatten to B·H.
    pub heads: usize,
    /// Softmax scale (head dim ^ -0.5 in wav2vec2).
    pub scale: f32,
    /// Dropout probability on the attention probabilities.
    pub dropout: f32,
    /// Seed of the dropout mask (drawn as [`super::dropout::dropout`] draws it over
    /// [B, H, T, T]).
    pub seed: u64,
    /// q, k, v, the output and their gradients are [B, T, H, D], the layout of the
    /// projections (no permute copies), instead of [B, H, T, D] (or any [.., T, D]).
    pub tokens_first: bool,
    /// The batch's first row in a larger batch whose dropout mask it draws (a data-parallel
    /// rank's share; 0 otherwise).
    pub drop_row: usize,
}

/// What [`forward`] returns and [`backward`] needs.
#[derive(Clone, Debug)]
pub struct Attended {
    /// The output O (q's shape).
    pub out: Tensor,
    /// Per-row logsumexp L, [B·H, T].
    pub lse: Tensor,
}

/// Gradients of q, k and v (q's shape, f32).
#[derive(Debug)]
pub struct AttentionGrads {
    /// dL/dq.
    pub q: Tensor,
    /// dL/dk.
    pub k: Tensor,
    /// dL/dv.
    pub v: Tensor,
}

/// Forward of attention over q, k, v (all f32, or all f16 for mixed precision) of shape
/// [.., T, D] (e.g. [B, H, T, D]) or, with [`Attention::tokens_first`], [B, T, H, D], with an
/// optional additive key mask [B, T]: dropout(softmax(q kᵀ·scale + mask)) v, never
/// materialising the [B, H, T, T] scores. The output has q's shape.
pub fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    a: &Attention,
) -> Result<Attended> {
    forward_qkv(Qkv::Separate(q, k, v), mask, a)
}

/// [`forward`] over q, k and v given either way ([`Qkv`]); the output is [B, T, H, D] when
/// they are packed.
pub fn forward_qkv(qkv: Qkv<'_>, mask: Option<&Tensor>, a: &Attention) -> Result<Attended> {
    let g = check("attention", qkv, mask, a)?;
    let [q, ..] = qkv.parts();
    let gpu = q.gpu();
    let o = Tensor::uninit(gpu, &qkv.one_shape(), DType::F32)?;
    let lse = Tensor::uninit(gpu, &[g.bh, g.t], DType::F32)?;
    let dm = dummy(gpu)?;
    let m = mask.unwrap_or(&dm);
    let td = g.t * g.d;
    for (b0, n) in chunks(qkv, &g, a)? {
        let gc = Dims { bh: n, ..g };
        let [(qr, off_in), (kr, _), (vr, _)] = qkv.parts().map(|x| rows(x, b0, n, td * qkv.rows()));
        let ((or, off_f), (lr, off_l)) = (rows(&o, b0, n, td), rows(&lse, b0, n, g.t));
        let chunk = [b0 as u32, off_in, off_f, off_l, 0, 0];
        let builds = builds(gpu, &FWD, q);
        let pick = build_for(&FWD, q, &gc, a, mask.is_some(), &builds, |c| {
            let so = Tensor::uninit(gpu, &[n * td], DType::F32)?;
            let sl = Tensor::uninit(gpu, &[n * g.t], DType::F32)?;
            let prm = params(&gc, a, mask.is_some(), qkv, [b0 as u32, off_in, 0, 0, 0, 0]);
            let bufs = [
                qr,
                kr,
                vr,
                m.bind(),
                dm.bind(),
                dm.bind(),
                so.bind(),
                sl.bind(),
            ];
            launch(FWD, c, q, &gc, &prm, &bufs)?;
            Ok(vec![so, sl])
        })?;
        let prm = params(&gc, a, mask.is_some(), qkv, chunk);
        let bufs = [qr, kr, vr, m.bind(), dm.bind(), dm.bind(), or, lr];
        launch(FWD, pick, q, &gc, &prm, &bufs)?;
    }
    Ok(Attended { out: o, lse })
}

/// Gradients of [`forward`] from its inputs, what it returned, and the upstream gradient
/// `d_o` (O's shape).
pub fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    a: &Attention,
    fwd: &Attended,
    d_o: &Tensor,
) -> Result<AttentionGrads> {
    let gpu = q.gpu();
    let [dq, dk, dv] = [(); 3].map(|_| Tensor::uninit(gpu, q.shape(), DType::F32));
    let (dq, dk, dv) = (dq?, dk?, dv?);
    backward_into(Qkv::Separate(q, k, v), mask, a, fwd, d_o, [&dq, &dk, &dv])?;
    Ok(AttentionGrads {
        q: dq,
        k: dk,
        v: dv,
    })
}

/// Gradients of [`forward_qkv`] over packed q, k, v: one [B, T, 3, H, D] tensor holding dQ,
/// dK and dV as the input held q, k and v (what one GEMM takes back through the joined
/// projections).
pub fn backward_packed(
    qkv: &Tensor,
    mask: Option<&Tensor>,
    a: &Attention,
    fwd: &Attended,
    d_o: &Tensor,
) -> Result<Tensor> {
    let d = Tensor::uninit(qkv.gpu(), qkv.shape(), DType::F32)?;
    backward_into(Qkv::Packed(qkv), mask, a, fwd, d_o, [&d, &d, &d])?;
    Ok(d)
}

/// Writes dQ, dK and dV into `grads` (one tensor three times when packed).
fn backward_into(
    qkv: Qkv<'_>,
    mask: Option<&Tensor>,
    a: &Attention,
    fwd: &Attended,
    d_o: &Tensor,
    grads: [&Tensor; 3],
) -> Result<()> {
    let op = "attention_backward";
    let (o, lse) = (&fwd.out, &fwd.lse);
    let g = check(op, qkv, mask, a)?;
    check_f32(op, &[o, lse, d_o])?;
    let one = qkv.one_shape();
    if o.shape() != one || d_o.shape() != one || lse.numel() != g.bh * g.t {
        return shape_err(
            op,
            format!(
                "o {:?}, d_o {:?}, lse {:?} do not fit q {one:?}",
                o.shape(),
                d_o.shape(),
                lse.shape(),
            ),
        );
    }
    let [q, ..] = qkv.parts();
    let gpu = q.gpu();
    // Separate placeholders for read and write slots: one buffer may not be both at once.
    let dm = dummy(gpu)?;
    let dw = dummy(gpu)?;
    let m = mask.unwrap_or(&dm);
    // (L, Drow) per query row.
    let stats = Tensor::uninit(gpu, &[g.bh * g.t, 2], DType::F32)?;
    let td = g.t * g.d;
    let tdr = td * qkv.rows();
    for (b0, n) in chunks(qkv, &g, a)? {
        let gc = Dims { bh: n, ..g };
        let [(qr, off_in), (kr, _), (vr, _)] = qkv.parts().map(|x| rows(x, b0, n, tdr));
        let [(dqr, off_g), (dkr, _), (dvr, _)] = grads.map(|x| rows(x, b0, n, tdr));
        let (dor, off_f) = rows(d_o, b0, n, td);
        let (lr, off_l) = rows(lse, b0, n, g.t);
        let (sr, off_s) = rows(&stats, b0, n, 2 * g.t);
        let chunk = [b0 as u32, off_in, off_f, off_l, off_s, off_g];
        let prm = params(&gc, a, mask.is_some(), qkv, chunk);
        gpu.dispatch(
            &BWD_STATS,
            &prm,
            &[
                dm.bind(),
                dm.bind(),
                dm.bind(),
                lr,
                rows(o, b0, n, td).0,
                dor,
                sr,
                dw.bind(),
            ],
            grid((n * g.t) as u64, ROWS as u64),
        )?;
        // dK, dV and then dQ, from the same inputs and stats.
        let ins = [qr, kr, vr, m.bind(), dor, sr];
        for (kernel, outs) in [(BWD_KV, [dkr, dvr]), (BWD_Q, [dqr, dw.bind()])] {
            // Zeroed once (not in the timed launches): each kernel writes only its own
            // columns of a packed gradient's rows.
            let mut zeroed: Option<[Tensor; 2]> = None;
            let builds = builds(gpu, &kernel, q);
            let pick = build_for(&kernel, q, &gc, a, mask.is_some(), &builds, |c| {
                if zeroed.is_none() {
                    let z = || Tensor::zeros(gpu, &[n * tdr]);
                    zeroed = Some([z()?, z()?]);
                }
                let [s1, s2] = zeroed.clone().expect("just made");
                let scratch = AttentionParams { off_g: 0, ..prm };
                let to = match kernel.entry {
                    "attn_bwd_kv" => [s1.bind(), s2.bind()],
                    _ => [s1.bind(), dw.bind()],
                };
                let bufs: Vec<_> = ins.iter().chain(&to).copied().collect();
                launch(kernel, c, q, &gc, &scratch, &bufs)?;
                Ok(vec![s1, s2])
            })?;
            let bufs: Vec<_> = ins.iter().chain(&outs).copied().collect();
            launch(kernel, pick, q, &gc, &prm, &bufs)?;
        }
    }
    Ok(())
}
