//! 1-D convolution (stride, padding, groups, bias) and its backward.

use super::{check_f32, dummy, elementwise, reduce, shifted_chunks};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Kernel};
use crate::tensor::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel {
        file: "conv1d",
        entry,
        reads: 3,
        writes: 1,
    }
}
const GEMM: Kernel = k("conv1d_gemm");
const BWD_BIAS: Kernel = k("conv1d_bwd_bias");

/// `conv1d_gemm` formulations.
const FORWARD: u32 = 0;
const INPUT_GRAD: u32 = 1;
const WEIGHT_GRAD: u32 = 2;

/// Geometry of a Conv1d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1d {
    /// Step between output frames.
    pub stride: usize,
    /// Zeros added at both ends.
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
}

impl Conv1d {
    /// Output length for an input of `len` samples and kernel width `k`.
    pub fn out_len(&self, len: usize, k: usize) -> usize {
        (len + 2 * self.padding)
            .checked_sub(k)
            .map_or(0, |v| v / self.stride + 1)
    }
}

struct Geo {
    batch: usize,
    cin: usize,
    lin: usize,
    cout: usize,
    lout: usize,
    k: usize,
}

fn geometry(c: &Conv1d, x: &Tensor, w: &Tensor) -> Result<Geo> {
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() != 3 || ws.len() != 3 {
        return shape_err("conv1d", format!("expects x [batch, channels, time] and w [out, in/groups, kernel], got {xs:?} and {ws:?}"));
    }
    if c.stride == 0
        || c.groups == 0
        || xs[1] % c.groups != 0
        || ws[0] % c.groups != 0
        || ws[1] * c.groups != xs[1]
    {
        return shape_err(
            "conv1d",
            format!(
                "x {xs:?} and w {ws:?} do not fit stride {} groups {}",
                c.stride, c.groups
            ),
        );
    }
    let lout = c.out_len(xs[2], ws[2]);
    if lout == 0 {
        return shape_err(
            "conv1d",
            format!(
                "input length {} is shorter than kernel {} (padding {})",
                xs[2], ws[2], c.padding
            ),
        );
    }
    Ok(Geo {
        batch: xs[0],
        cin: xs[1],
        lin: xs[2],
        cout: ws[0],
        lout,
        k: ws[2],
    })
}

#[allow(clippy::too_many_arguments)] // one argument per uniform field
fn params(
    c: &Conv1d,
    g: &Geo,
    batch: usize,
    has_bias: bool,
    accum: bool,
    offs: [u32; 3],
    mode: u32,
) -> Vec<u32> {
    let mut v = vec![
        batch as u32,
        g.cin as u32,
        g.lin as u32,
        g.cout as u32,
        g.lout as u32,
        g.k as u32,
        c.stride as u32,
        c.padding as u32,
        c.groups as u32,
        has_bias as u32,
        accum as u32,
    ];
    v.extend(offs);
    v.extend([mode, 1]);
    v
}

/// y = conv1d(x, w) + bias; x [B, Cin, L], w [Cout, Cin/groups, K] -> y [B, Cout, Lout].
pub fn forward(c: &Conv1d, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    check_f32("conv1d", &[x, w])?;
    let g = geometry(c, x, w)?;
    if let Some(b) = bias {
        if b.numel() != g.cout {
            return shape_err(
                "conv1d",
                format!(
                    "bias {:?} does not match {} output channels",
                    b.shape(),
                    g.cout
                ),
            );
        }
    }
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, &[g.batch, g.cout, g.lout], DType::F32)?;
    let d = dummy(gpu)?;
    let (xi, yo) = (g.cin * g.lin, g.cout * g.lout);
    for (b0, nb) in shifted_chunks(gpu, "conv1d", g.batch, &[xi, yo])? {
        let br = bias.map_or(d.bind(), |t| t.bind());
        let (xr, ox) = x.bind_shifted(b0 * xi, nb * xi);
        let (yr, oy) = y.bind_shifted(b0 * yo, nb * yo);
        gpu.dispatch(
            &GEMM,
            &params(c, &g, nb, bias.is_some(), false, [ox, 0, oy], FORWARD),
            &[xr, w.bind(), br, yr],
            [
                g.lout.div_ceil(64) as u32,
                (g.cout / c.groups).div_ceil(64) as u32,
                (nb * c.groups) as u32,
            ],
        )?;
    }
    Ok(y)
}

/// Gradients (dx, dw, dbias) of [`forward`]; `need_input` false skips dx (frozen first layer).
pub fn backward(
    c: &Conv1d,
    x: &Tensor,
    w: &Tensor,
    has_bias: bool,
    dy: &Tensor,
    need_input: bool,
) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
    check_f32("conv1d_backward", &[x, w, dy])?;
    let g = geometry(c, x, w)?;
    if dy.shape() != [g.batch, g.cout, g.lout] {
        return shape_err(
            "conv1d_backward",
            format!(
                "dy {:?}, expected {:?}",
                dy.shape(),
                [g.batch, g.cout, g.lout]
            ),
        );
    }
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    let (xi, yo) = (g.cin * g.lin, g.cout * g.lout);
    let chunks = shifted_chunks(gpu, "conv1d_backward", g.batch, &[xi, yo])?;
    let dx = if need_input {
        Some(Tensor::uninit(gpu, x.shape(), DType::F32)?)
    } else {
        None
    };
    let mut dw = Tensor::uninit(gpu, w.shape(), DType::F32)?;
    let db = if has_bias {
        Some(Tensor::uninit(gpu, &[g.cout], DType::F32)?)
    } else {
        None
    };
    for (i, &(b0, nb)) in chunks.iter().enumerate() {
        let (xr, ox) = x.bind_shifted(b0 * xi, nb * xi);
        let (dyr, ody) = dy.bind_shifted(b0 * yo, nb * yo);
        if let Some(dx) = &dx {
            let (dxr, odx) = dx.bind_shifted(b0 * xi, nb * xi);
            let pr = params(c, &g, nb, has_bias, false, [0, ody, odx], INPUT_GRAD);
            gpu.dispatch(
                &GEMM,
                &pr,
                &[d.bind(), w.bind(), dyr, dxr],
                [
                    g.lin.div_ceil(64) as u32,
                    (g.cin / c.groups).div_ceil(64) as u32,
                    (nb * c.groups) as u32,
                ],
            )?;
        }
        // Split the (b, t) reduction until there are about 256 workgroups, keeping at least
        // 512 reduction steps per split; the partial sums are added by `sum_axis`.
        let tiles = ((g.cin / c.groups) * g.k).div_ceil(64) * (g.cout / c.groups).div_ceil(64);
        let splits = (256 / (tiles * c.groups).max(1))
            .min(nb * g.lout / 512)
            .clamp(1, 64);
        let mut pr = params(
            c,
            &g,
            nb,
            has_bias,
            i > 0 && splits == 1,
            [ox, ody, 0],
            WEIGHT_GRAD,
        );
        pr[15] = splits as u32;
        let target = if splits == 1 {
            dw.clone()
        } else {
            Tensor::uninit(gpu, &[splits, w.numel()], DType::F32)?
        };
        gpu.dispatch(
            &GEMM,
            &pr,
            &[xr, d.bind(), dyr, target.bind()],
            [
                ((g.cin / c.groups) * g.k).div_ceil(64) as u32,
                (g.cout / c.groups).div_ceil(64) as u32,
                (c.groups * splits) as u32,
            ],
        )?;
        if splits > 1 {
            let sum = reduce::sum_axis(&target.reshape(&[1, splits, w.numel()])?, 1, 1.0)?;
            if i == 0 {
                dw = sum.reshape(w.shape())?;
            } else {
                dw = elementwise::add(&dw, &sum.reshape(w.shape())?)?;
            }
        }
        if let Some(db) = &db {
            gpu.dispatch(
                &BWD_BIAS,
                &pr,
                &[d.bind(), d.bind(), dyr, db.bind()],
                grid(g.cout as u64, 256),
            )?;
        }
    }
    Ok((dx, dw, db))
}
