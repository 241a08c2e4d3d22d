//! Explicit copies: permute/transpose, slice, concat, and the pad that is a slice's backward.

use super::{binding_room, check_f32, dims8, strides, MAX_DIMS};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const COPY: Kernel = Kernel::new("copy", "copy_strided", 1, 1);

kernel_params! {
    /// `copy.wgsl`'s uniforms.
    pub struct CopyParams in ["copy"] {
        /// Elements in the region.
        n: u32,
        /// Dims of the region.
        ndim: u32,
        /// Element shift of the source within its (aligned-down) binding.
        src_off: u32,
        /// The same for the destination.
        dst_off: u32,
        /// The region's extents.
        shape: [[u32; 4]; 2],
        /// Source strides.
        src_stride: [[u32; 4]; 2],
        /// Destination strides.
        dst_stride: [[u32; 4]; 2],
    }
}

/// Copies the region `shape` from `x` (at `src_off`, strides `src_st`) into `out`. Each side
/// is bound only over the span the region touches; a region whose span exceeds one binding is
/// split along its widest dim, so one clip past the binding limit still copies in pieces.
fn copy_region(
    x: &Tensor,
    out: &Tensor,
    shape: &[usize],
    src_off: usize,
    src_st: &[usize],
    dst_off: usize,
    dst_st: &[usize],
) -> Result<()> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    let span = |st: &[usize]| {
        1 + shape
            .iter()
            .zip(st)
            .map(|(&e, &s)| (e - 1) * s)
            .sum::<usize>()
    };
    let (ss, ds) = (span(src_st), span(dst_st));
    let gpu = x.gpu();
    let room = binding_room(gpu);
    if ss.max(ds) > room {
        // Halve the dim that spreads the region most; a single element always fits.
        let d = (0..shape.len())
            .filter(|&d| shape[d] > 1)
            .max_by_key(|&d| (shape[d] - 1) * src_st[d].max(dst_st[d]))
            .expect("a region of one element fits any binding");
        let half = shape[d] / 2;
        let mut part = shape.to_vec();
        part[d] = half;
        copy_region(x, out, &part, src_off, src_st, dst_off, dst_st)?;
        part[d] = shape[d] - half;
        return copy_region(
            x,
            out,
            &part,
            src_off + half * src_st[d],
            src_st,
            dst_off + half * dst_st[d],
            dst_st,
        );
    }
    let (xr, so) = x.bind_shifted(src_off, ss);
    let (or, doff) = out.bind_shifted(dst_off, ds);
    let params = CopyParams {
        n: n as u32,
        ndim: shape.len() as u32,
        src_off: so,
        dst_off: doff,
        shape: dims8(shape),
        src_stride: dims8(src_st),
        dst_stride: dims8(dst_st),
    };
    gpu.dispatch(&COPY, &params, &[xr, or], grid(n as u64, 256))
}

/// Frames `t0..t0+len` of clip `b` of `x` [B, C, T], as a new [1, C, len] tensor: a time
/// window for kernels that work on clips too long for one binding.
pub fn time_window(x: &Tensor, b: usize, t0: usize, len: usize) -> Result<Tensor> {
    let [_, c, t] = *x.shape() else {
        return shape_err(
            "time_window",
            format!("expects [batch, channels, time], got {:?}", x.shape()),
        );
    };
    let out = Tensor::uninit(x.gpu(), &[1, c, len], DType::F32)?;
    copy_region(x, &out, &[c, len], b * c * t + t0, &[t, 1], 0, &[len, 1])?;
    Ok(out)
}

/// Writes `w` [1, C, len] into frames `t0..t0+len` of clip `b` of `out` [B, C, T]: the
/// inverse of [`time_window`].
pub fn write_time_window(out: &Tensor, b: usize, t0: usize, w: &Tensor) -> Result<()> {
    let (&[_, c, t], &[1, wc, len]) = (out.shape(), w.shape()) else {
        return shape_err(
            "write_time_window",
            format!("{:?} into {:?}", w.shape(), out.shape()),
        );
    };
    if wc != c || t0 + len > t {
        return shape_err(
            "write_time_window",
            format!("{:?} at frame {t0} into {:?}", w.shape(), out.shape()),
        );
    }
    copy_region(w, out, &[c, len], 0, &[len, 1], b * c * t + t0, &[t, 1])
}

/// Elements `start..start+len` of `x` (flattened) as a new 1-D tensor.
pub fn flat_range(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    if start + len > x.numel() {
        return shape_err(
            "flat_range",
            format!("{start}..{} of {:?}", start + len, x.shape()),
        );
    }
    let out = Tensor::uninit(x.gpu(), &[len], DType::F32)?;
    copy_region(x, &out, &[len], start, &[1], 0, &[1])?;
    Ok(out)
}

/// Writes `src` (flattened) into elements `start..` of `out`: the inverse of [`flat_range`].
pub fn write_flat(out: &Tensor, start: usize, src: &Tensor) -> Result<()> {
    if start + src.numel() > out.numel() {
        return shape_err(
            "write_flat",
            format!("{:?} at {start} into {:?}", src.shape(), out.shape()),
        );
    }
    copy_region(src, out, &[src.numel()], 0, &[1], start, &[1])
}

/// Reorders dims: `out.shape[i] = x.shape[perm[i]]`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    check_f32("permute", &[x])?;
    let s = x.shape();
    let mut seen = vec![false; s.len()];
    if perm.len() != s.len()
        || perm
            .iter()
            .any(|&p| p >= s.len() || std::mem::replace(&mut seen[p], true))
    {
        return shape_err(
            "permute",
            format!("{perm:?} is not a permutation of the dims of {s:?}"),
        );
    }
    if s.len() > MAX_DIMS {
        return shape_err("permute", format!("{} dims; at most {MAX_DIMS}", s.len()));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let st = strides(s);
    let src_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let out = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    copy_region(x, &out, &shape, 0, &src_st, 0, &strides(&shape))?;
    Ok(out)
}

/// Swaps two dims (a copy).
pub fn transpose(x: &Tensor, d0: usize, d1: usize) -> Result<Tensor> {
    let mut perm: Vec<usize> = (0..x.shape().len()).collect();
    if d0 >= perm.len() || d1 >= perm.len() {
        return shape_err(
            "transpose",
            format!("dims {d0}, {d1} out of range for {:?}", x.shape()),
        );
    }
    perm.swap(d0, d1);
    permute(x, &perm)
}

/// Rows `start..start+len` of x along dim 0: a view where they start on an aligned offset,
/// else a copy.
pub fn rows(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let row: usize = x.shape()[1..].iter().product();
    let mut shape = x.shape().to_vec();
    shape[0] = len;
    match x.view(start * row, &shape) {
        Ok(v) => Ok(v),
        Err(_) => slice(x, 0, start, len),
    }
}

/// x[..., start..start+len, ...] along `dim` (a copy).
pub fn slice(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    check_f32("slice", &[x])?;
    let s = x.shape();
    if dim >= s.len() || start + len > s[dim] {
        return shape_err(
            "slice",
            format!(
                "{start}..{} of dim {dim} out of range for {s:?}",
                start + len
            ),
        );
    }
    let mut shape = s.to_vec();
    shape[dim] = len;
    let st = strides(s);
    let out = Tensor::uninit(x.gpu(), &shape, DType::F32)?;
    copy_region(x, &out, &shape, start * st[dim], &st, 0, &strides(&shape))?;
    Ok(out)
}

/// Backward of [`slice()`]: `dy` placed at `start` along `dim` in zeros of `full` shape.
pub fn pad_into(dy: &Tensor, full: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    check_f32("slice_backward", &[dy])?;
    let out = Tensor::zeros(dy.gpu(), full)?;
    let st = strides(full);
    copy_region(
        dy,
        &out,
        dy.shape(),
        0,
        &strides(dy.shape()),
        start * st[dim],
        &st,
    )?;
    Ok(out)
}

/// Joins tensors along `dim`; all other dims must agree.
pub fn concat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = xs.first().ok_or(crate::engine::Error::Shape {
        op: "concat",
        msg: "no inputs".into(),
    })?;
    let mut shape = first.shape().to_vec();
    if dim >= shape.len() {
        return shape_err("concat", format!("dim {dim} out of range for {shape:?}"));
    }
    shape[dim] = 0;
    for x in xs {
        check_f32("concat", &[x])?;
        let mut s = x.shape().to_vec();
        if s.len() != shape.len() {
            return shape_err(
                "concat",
                format!("{:?} and {:?} differ in rank", first.shape(), s),
            );
        }
        shape[dim] += s[dim];
        s[dim] = shape[dim];
        if s != shape {
            return shape_err(
                "concat",
                format!(
                    "{:?} and {:?} differ outside dim {dim}",
                    first.shape(),
                    x.shape()
                ),
            );
        }
    }
    let out = Tensor::uninit(first.gpu(), &shape, DType::F32)?;
    let st = strides(&shape);
    let mut at = 0;
    for x in xs {
        copy_region(
            x,
            &out,
            x.shape(),
            0,
            &strides(x.shape()),
            at * st[dim],
            &st,
        )?;
        at += x.shape()[dim];
    }
    Ok(out)
}
