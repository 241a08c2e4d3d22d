//! Explicit copies: permute/transpose, slice, concat, and the pad that is a slice's backward.

use super::{check_f32, dims8, strides, MAX_DIMS};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Kernel};
use crate::tensor::{DType, Tensor};

const COPY: Kernel = Kernel {
    file: "copy",
    entry: "copy_strided",
    reads: 1,
    writes: 1,
};

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
    let mut params = vec![n as u32, shape.len() as u32, src_off as u32, dst_off as u32];
    params.extend(dims8(shape));
    params.extend(dims8(src_st));
    params.extend(dims8(dst_st));
    x.gpu()
        .dispatch(&COPY, &params, &[x.bind(), out.bind()], grid(n as u64, 256))
}

/// Reorders dims: out.shape[i] = x.shape[perm[i]].
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

/// Backward of [`slice`]: `dy` placed at `start` along `dim` in zeros of `full` shape.
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
    let first = xs.first().ok_or(crate::error::Error::Shape {
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
