//! Clips too long for one storage binding: the convolution by time windows, each window
//! bound at its own offset, forward and backward.

use super::super::{binding_room, copy, dummy};
use super::{
    launch, params, tile_for, Conv1d, Conv1dParams, Geo, BWD_BIAS, FORWARD, INPUT_GRAD, WEIGHT_GRAD,
};
use crate::engine::error::{shape_err, Result};
use crate::engine::{grid, DType, Tensor};
/// Window sizes for clips too long for one binding (`None` when whole clips fit): output
/// frames per window for the forward and weight gradient, input samples per window for the
/// input gradient.
pub(super) struct Windows {
    frames: usize,
    samples: usize,
}

pub(super) fn windows(gpu: &crate::Gpu, c: &Conv1d, g: &Geo) -> Result<Option<Windows>> {
    let room = binding_room(gpu);
    if g.cin * g.lin <= room && g.cout * g.lout <= room {
        return Ok(None);
    }
    // A window of n output frames reads at most (n - 1) * stride + k input samples; one of
    // s input samples is reached from at most (s + k - 2) / stride + 2 output frames.
    let frames = (room / g.cout).min(((room / g.cin).saturating_sub(g.k)) / c.stride + 1);
    let samples =
        (room / g.cin).min(((room / g.cout).saturating_sub(2) * c.stride + 2).saturating_sub(g.k));
    if room / g.cin < g.k || frames == 0 || samples == 0 {
        return Err(crate::engine::Error::Limit {
            op: "conv1d",
            msg: format!(
                "a window of {} channels x kernel {} (or {} output channels) exceeds the binding limit of {room} elements",
                g.cin, g.k, g.cout
            ),
        });
    }
    Ok(Some(Windows { frames, samples }))
}

/// One window of output frames of one clip: clip `b`, frames `t0..t0 + geo.lout`, reading
/// input samples `s0..s0 + geo.lin`; `conv` has the padding that makes the window's local
/// indices match the whole clip's.
struct FrameWindow {
    b: usize,
    t0: usize,
    s0: usize,
    conv: Conv1d,
    geo: Geo,
}

/// Every clip's output frames in windows of `win.frames`.
fn frame_windows(c: &Conv1d, g: &Geo, win: &Windows) -> Result<Vec<FrameWindow>> {
    let mut out = Vec::new();
    for b in 0..g.batch {
        for t0 in (0..g.lout).step_by(win.frames) {
            let n = win.frames.min(g.lout - t0);
            let start = (t0 * c.stride) as isize - c.padding as isize;
            let s0 = (start.max(0) as usize).min(g.lin - 1);
            let end = ((t0 + n - 1) * c.stride + g.k)
                .saturating_sub(c.padding)
                .min(g.lin)
                .max(s0 + 1);
            let pad = s0 as isize - start;
            if pad < 0 {
                return shape_err(
                    "conv1d",
                    format!("frames {t0}.. lie wholly in the padding: split the clip instead"),
                );
            }
            out.push(FrameWindow {
                b,
                t0,
                s0,
                conv: Conv1d {
                    padding: pad as usize,
                    ..*c
                },
                geo: Geo {
                    batch: 1,
                    lin: end - s0,
                    lout: n,
                    ..*g
                },
            });
        }
    }
    Ok(out)
}

/// [`forward`] one window at a time: each window's input is gathered into its own tensor
/// and its output written back, so no binding spans more than a window.
pub(super) fn forward_windows(
    c: &Conv1d,
    g: &Geo,
    win: &Windows,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    y: &Tensor,
) -> Result<()> {
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    for fw in frame_windows(c, g, win)? {
        let n = fw.geo.lout;
        let xw = copy::time_window(x, fw.b, fw.s0, fw.geo.lin)?;
        let yw = Tensor::uninit(gpu, &[1, g.cout, n], DType::F32)?;
        let mnz = [g.cout / c.groups, n, c.groups];
        launch(
            gpu,
            &Conv1dParams {
                has_bias: bias.is_some() as u32,
                ..params(&fw.conv, &fw.geo, 1, FORWARD)
            },
            &[
                xw.bind(),
                w.bind(),
                bias.map_or(d.bind(), |t| t.bind()),
                yw.bind(),
            ],
            mnz,
            tile_for(mnz[0], mnz[1], Some(mnz[2])),
        )?;
        copy::write_time_window(y, fw.b, fw.t0, &yw)?;
    }
    Ok(())
}

/// [`backward`] one window at a time: weight and bias gradients accumulate over windows of
/// output frames; the input gradient is computed over windows of input samples (each from
/// the output frames that reach it), so the windows never overlap.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_windows(
    c: &Conv1d,
    g: &Geo,
    win: &Windows,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    dx: Option<&Tensor>,
    dw: &Tensor,
    db: Option<&Tensor>,
) -> Result<()> {
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    for (i, fw) in frame_windows(c, g, win)?.iter().enumerate() {
        let xw = copy::time_window(x, fw.b, fw.s0, fw.geo.lin)?;
        let dyw = copy::time_window(dy, fw.b, fw.t0, fw.geo.lout)?;
        let pr = Conv1dParams {
            has_bias: db.is_some() as u32,
            accum: (i > 0) as u32,
            ..params(&fw.conv, &fw.geo, 1, WEIGHT_GRAD)
        };
        let (wm, wn) = (g.cout / c.groups, (g.cin / c.groups) * g.k);
        let bufs = [xw.bind(), d.bind(), dyw.bind(), dw.bind()];
        launch(gpu, &pr, &bufs, [wm, wn, c.groups], tile_for(wm, wn, None))?;
        if let Some(db) = db {
            gpu.dispatch(
                &BWD_BIAS,
                &pr,
                &[d.bind(), d.bind(), dyw.bind(), db.bind()],
                grid(g.cout as u64, 1),
            )?;
        }
    }
    let Some(dx) = dx else { return Ok(()) };
    for b in 0..g.batch {
        for s0 in (0..g.lin).step_by(win.samples) {
            let ls = win.samples.min(g.lin - s0);
            // Output frames t reach samples t * stride - pad + (0..k).
            let ta = (s0 + c.padding).saturating_sub(g.k - 1) / c.stride;
            let tb = ((s0 + ls - 1 + c.padding) / c.stride).min(g.lout - 1);
            let dxw = if ta > tb {
                Tensor::zeros(gpu, &[1, g.cin, ls])?
            } else {
                let dyw = copy::time_window(dy, b, ta, tb + 1 - ta)?;
                let dxw = Tensor::uninit(gpu, &[1, g.cin, ls], DType::F32)?;
                let (cw, gw) = (
                    Conv1d {
                        padding: s0 + c.padding - ta * c.stride,
                        ..*c
                    },
                    Geo {
                        batch: 1,
                        lin: ls,
                        lout: tb + 1 - ta,
                        ..*g
                    },
                );
                let mnz = [g.cin / c.groups, ls, c.groups];
                launch(
                    gpu,
                    &params(&cw, &gw, 1, INPUT_GRAD),
                    &[d.bind(), w.bind(), dyw.bind(), dxw.bind()],
                    mnz,
                    tile_for(mnz[0], mnz[1], Some(mnz[2])),
                )?;
                dxw
            };
            copy::write_time_window(dx, b, s0, &dxw)?;
        }
    }
    Ok(())
}
