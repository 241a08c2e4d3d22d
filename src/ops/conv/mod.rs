//! 1-D convolution (stride, padding, groups, bias) and its backward.

mod unfold;
mod windows;

pub use unfold::{forward_unfolded, Im2colParams};
use windows::{backward_windows, forward_windows, windows};

use super::{check_f32, dummy, elementwise, reduce, shifted_chunks, LayerGrads};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("conv1d", entry, 3, 1)
}
/// The implicit GEMM's two builds: 64x64 tiles, and matmul's 128x128 core (see conv1d.wgsl).
const GEMM: Kernel = k("conv1d_gemm");
const GEMM128: Kernel = k("conv1d_gemm128");
const BWD_BIAS: Kernel = k("conv1d_bwd_bias");

/// `conv1d_gemm` formulations.
const FORWARD: u32 = 0;
const INPUT_GRAD: u32 = 1;
const WEIGHT_GRAD: u32 = 2;

kernel_params! {
    /// `conv1d.wgsl`'s uniforms.
    pub struct Conv1dParams in ["conv1d"] {
        /// Clips in this chunk.
        batch: u32,
        /// Input channels.
        cin: u32,
        /// Input length.
        lin: u32,
        /// Output channels.
        cout: u32,
        /// Output length.
        lout: u32,
        /// Kernel taps.
        k: u32,
        /// Step between output frames.
        stride: u32,
        /// Zeros added at both ends.
        pad: u32,
        /// Channel groups.
        groups: u32,
        /// 1: add the bias (forward) or compute its gradient.
        has_bias: u32,
        /// 1: add into the output.
        accum: u32,
        /// Element shift of x within its (aligned-down) binding.
        off_x: u32,
        /// The same for the bias or dy binding.
        off_aux: u32,
        /// The same for the output.
        off_out: u32,
        /// `conv1d_gemm`: 0 forward, 1 input gradient, 2 weight gradient.
        mode: u32,
        /// Mode 2: workgroups the reduction over (b, t) is split across.
        splits: u32,
    }
}

/// Workgroups that keep a large GPU busy, as `ops::matmul` counts them.
const FILL: usize = 256;

/// The tile [`set_tile`] (or `XLSR_CONV_TILE=64|128` at start) forces; 0: chosen by shape.
fn forced_tile() -> &'static AtomicUsize {
    static FORCED: OnceLock<AtomicUsize> = OnceLock::new();
    FORCED.get_or_init(|| {
        let env = std::env::var("XLSR_CONV_TILE").ok();
        AtomicUsize::new(match env.as_deref() {
            Some("64") => 64,
            Some("128") => 128,
            _ => 0,
        })
    })
}

/// Runs every implicit GEMM with 64x64 or 128x128 tiles (`Some(64 | 128)`) instead of the
/// shape's choice (`None`), for tests and comparisons; returns the setting before.
pub fn set_tile(tile: Option<usize>) -> Option<usize> {
    let before = forced_tile().swap(tile.unwrap_or(0), Ordering::Relaxed);
    (before != 0).then_some(before)
}

/// The tile for an m x n output: 128 where both sides take a whole one and, when `items`
/// (batch x groups) is given, there are more than FILL / 2 of them, the count at which the
/// GEMM would still not split K (the weight gradient splits its reduction instead); 64
/// otherwise, for 4x the workgroups.
fn tile_for(m: usize, n: usize, items: Option<usize>) -> usize {
    match forced_tile().load(Ordering::Relaxed) {
        0 => {}
        t => return t,
    }
    let fills = items.is_none_or(|i| m.div_ceil(128) * n.div_ceil(128) * i * 2 > FILL);
    if m >= 128 && n >= 128 && fills {
        128
    } else {
        64
    }
}

/// Dispatches the forward or input gradient's implicit GEMM (`bufs[3]` the output, of
/// `out_elems` from its shift) with the tile this adapter measured fastest for the shape
/// class (`ops::tune`), or [`tile_for`]'s.
fn launch_tuned(
    gpu: &crate::Gpu,
    prm: &Conv1dParams,
    bufs: &[crate::engine::BufRef<'_>; 4],
    mnz: [usize; 3],
    out_elems: usize,
) -> Result<()> {
    let tile = tile_for(mnz[0], mnz[1], Some(mnz[2]));
    let names = match tile {
        128 => ["tile128", "tile64"],
        _ => ["tile64", "tile128"],
    };
    let of = |name: &str| if name == "tile128" { 128 } else { 64 };
    // A forced tile is a comparison: not tuned.
    let name = match forced_tile().load(Ordering::Relaxed) {
        0 => super::tune::pick(
            gpu,
            || conv_key(prm),
            &names,
            |c| {
                let out = Tensor::uninit(gpu, &[out_elems], DType::F32)?;
                let scratch = Conv1dParams {
                    off_out: 0,
                    accum: 0,
                    ..*prm
                };
                let to = [bufs[0], bufs[1], bufs[2], out.bind()];
                launch(gpu, &scratch, &to, mnz, of(c))?;
                Ok(vec![out])
            },
        )?,
        _ => names[0],
    };
    launch(gpu, prm, bufs, mnz, of(name))
}

/// The tuner's shape class of a convolution launch: pass, channels, taps, stride and groups
/// as they are, clips and frames rounded up to powers of two.
fn conv_key(p: &Conv1dParams) -> String {
    let b = |x: u32| super::tune::bucket(x as usize);
    format!(
        "conv {} cin{} cout{} k{} s{} g{} b{} l{}",
        if p.mode == FORWARD { "fwd" } else { "dx" },
        p.cin,
        p.cout,
        p.k,
        p.stride,
        p.groups,
        b(p.batch),
        b(p.lout)
    )
}

/// Dispatches the implicit GEMM of an m x n output (per item) over `items` workgroup layers
/// with `tile`'s build.
fn launch(
    gpu: &crate::Gpu,
    prm: &Conv1dParams,
    bufs: &[crate::engine::BufRef<'_>],
    [m, n, items]: [usize; 3],
    tile: usize,
) -> Result<()> {
    let kernel = if tile == 128 { &GEMM128 } else { &GEMM };
    let groups = [n.div_ceil(tile), m.div_ceil(tile), items].map(|x| x as u32);
    gpu.dispatch(kernel, prm, bufs, groups)
}

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

#[derive(Clone, Copy)]
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

/// The uniforms every dispatch over this geometry shares; flags, shifts and splits are set
/// per dispatch.
fn params(c: &Conv1d, g: &Geo, batch: usize, mode: u32) -> Conv1dParams {
    Conv1dParams {
        batch: batch as u32,
        cin: g.cin as u32,
        lin: g.lin as u32,
        cout: g.cout as u32,
        lout: g.lout as u32,
        k: g.k as u32,
        stride: c.stride as u32,
        pad: c.padding as u32,
        groups: c.groups as u32,
        mode,
        splits: 1,
        ..Default::default()
    }
}

/// A bias must have one value per output channel.
fn check_bias(bias: Option<&Tensor>, g: &Geo) -> Result<()> {
    match bias {
        Some(b) if b.numel() != g.cout => shape_err(
            "conv1d",
            format!(
                "bias {:?} does not match {} output channels",
                b.shape(),
                g.cout
            ),
        ),
        _ => Ok(()),
    }
}

/// y = conv1d(x, w) + bias; x [B, Cin, L], w [Cout, Cin/groups, K] -> y [B, Cout, Lout].
pub fn forward(c: &Conv1d, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    check_f32("conv1d", &[x, w])?;
    let g = geometry(c, x, w)?;
    check_bias(bias, &g)?;
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, &[g.batch, g.cout, g.lout], DType::F32)?;
    if let Some(win) = windows(gpu, c, &g)? {
        forward_windows(c, &g, &win, x, w, bias, &y)?;
        return Ok(y);
    }
    let d = dummy(gpu)?;
    let (xi, yo) = (g.cin * g.lin, g.cout * g.lout);
    for (b0, nb) in shifted_chunks(gpu, "conv1d", g.batch, &[xi, yo])? {
        let br = bias.map_or(d.bind(), |t| t.bind());
        let (xr, ox) = x.bind_shifted(b0 * xi, nb * xi);
        let (yr, oy) = y.bind_shifted(b0 * yo, nb * yo);
        let mnz = [g.cout / c.groups, g.lout, nb * c.groups];
        launch_tuned(
            gpu,
            &Conv1dParams {
                has_bias: bias.is_some() as u32,
                off_x: ox,
                off_out: oy,
                ..params(c, &g, nb, FORWARD)
            },
            &[xr, w.bind(), br, yr],
            mnz,
            nb * yo,
        )?;
    }
    Ok(y)
}

/// Gradients of [`forward`] (dx as `input`, dw as `weight`, dbias); `need_input` false skips
/// dx (a frozen first layer).
pub fn backward(
    c: &Conv1d,
    x: &Tensor,
    w: &Tensor,
    has_bias: bool,
    dy: &Tensor,
    need_input: bool,
) -> Result<LayerGrads> {
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
    let win = windows(gpu, c, &g)?;
    let chunks = match win {
        Some(_) => vec![],
        None => shifted_chunks(gpu, "conv1d_backward", g.batch, &[xi, yo])?,
    };
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
    if let Some(win) = win {
        backward_windows(c, &g, &win, x, w, dy, dx.as_ref(), &dw, db.as_ref())?;
        return Ok(LayerGrads {
            input: dx,
            weight: Some(dw),
            bias: db,
        });
    }
    for (i, &(b0, nb)) in chunks.iter().enumerate() {
        let (xr, ox) = x.bind_shifted(b0 * xi, nb * xi);
        let (dyr, ody) = dy.bind_shifted(b0 * yo, nb * yo);
        if let Some(dx) = &dx {
            let (dxr, odx) = dx.bind_shifted(b0 * xi, nb * xi);
            let pr = Conv1dParams {
                has_bias: has_bias as u32,
                off_aux: ody,
                off_out: odx,
                ..params(c, &g, nb, INPUT_GRAD)
            };
            let mnz = [g.cin / c.groups, g.lin, nb * c.groups];
            launch_tuned(gpu, &pr, &[d.bind(), w.bind(), dyr, dxr], mnz, nb * xi)?;
        }
        // Split the (b, t) reduction until there are about 256 workgroups, keeping at least
        // 512 reduction steps per split; the partial sums are added by `sum_axis`.
        let (wm, wn) = (g.cout / c.groups, (g.cin / c.groups) * g.k);
        let tile = tile_for(wm, wn, None);
        let tiles = wn.div_ceil(tile) * wm.div_ceil(tile);
        let splits = (FILL / (tiles * c.groups).max(1))
            .min(nb * g.lout / 512)
            .clamp(1, 64);
        let pr = Conv1dParams {
            has_bias: has_bias as u32,
            accum: (i > 0 && splits == 1) as u32,
            off_x: ox,
            off_aux: ody,
            splits: splits as u32,
            ..params(c, &g, nb, WEIGHT_GRAD)
        };
        let target = if splits == 1 {
            dw.clone()
        } else {
            Tensor::uninit(gpu, &[splits, w.numel()], DType::F32)?
        };
        let bufs = [xr, d.bind(), dyr, target.bind()];
        launch(gpu, &pr, &bufs, [wm, wn, c.groups * splits], tile)?;
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
                grid(g.cout as u64, 1),
            )?;
        }
    }
    Ok(LayerGrads {
        input: dx,
        weight: Some(dw),
        bias: db,
    })
}
