//! f32 <-> f16 conversion for mixed precision; each direction is the other's backward.

use crate::engine::error::{Error, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const TO_F16: Kernel = Kernel::new("cast", "to_f16", 1, 1);
const TO_F32: Kernel = Kernel::new("cast", "to_f32", 1, 1);

kernel_params! {
    /// `cast.wgsl`'s uniforms.
    pub struct CastParams in ["cast"] {
        /// Elements in this chunk.
        n: u32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
        /// Padding.
        _p2: u32,
    }
}

/// Elements per chunk granule: 128 f16 are 256 bytes, so chunk starts stay offset-aligned on
/// both the f32 and the f16 side.
const GRANULE: usize = 128;

fn cast(x: &Tensor, from: DType, to: DType, k: &Kernel) -> Result<Tensor> {
    if x.dtype() != from {
        return Err(Error::DType {
            op: k.entry,
            found: x.dtype(),
            expected: from,
        });
    }
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), to)?;
    let n = x.numel();
    for (r0, nr) in super::row_chunks(gpu, k.entry, n.div_ceil(GRANULE), GRANULE)? {
        let s = r0 * GRANULE;
        let len = (nr * GRANULE).min(n - s);
        gpu.dispatch(
            k,
            &CastParams {
                n: len as u32,
                ..Default::default()
            },
            &[x.bind_range(s, len), out.bind_range(s, len)],
            grid(len.div_ceil(2) as u64, 256),
        )?;
    }
    Ok(out)
}

/// An f16 copy of an f32 tensor (round to nearest even; out of range or NaN becomes +-inf).
pub fn to_f16(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F16 {
        return Ok(x.clone());
    }
    let reused = REUSE.with_borrow(|r| {
        r.as_ref()?
            .iter()
            .find(|(src, _)| src.same_data(x))
            .map(|(_, y)| y.reshape(x.shape()))
    });
    if let Some(y) = reused {
        return y;
    }
    let y = cast(x, DType::F32, DType::F16, &TO_F16)?;
    REUSE.with_borrow_mut(|r| {
        if let Some(r) = r {
            r.push((x.clone(), y.clone()));
        }
    });
    Ok(y)
}

thread_local! {
    /// The casts made inside [`reusing_casts`]: (f32 source, f16 copy). Holding the source
    /// keeps its buffer from being reused for another tensor while the entry lives.
    static REUSE: std::cell::RefCell<Option<Vec<(Tensor, Tensor)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with each tensor cast to f16 at most once: a later [`to_f16`] of the same
/// elements returns the first copy. For a loop over clip groups that casts the same frozen
/// weights in every round; nothing inside may change a tensor it has cast.
pub fn reusing_casts<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            if self.0 {
                REUSE.with_borrow_mut(|r| *r = None);
            }
        }
    }
    let outermost = REUSE.with_borrow_mut(|r| {
        let outermost = r.is_none();
        if outermost {
            *r = Some(Vec::new());
        }
        outermost
    });
    let _restore = Restore(outermost);
    f()
}

/// An f32 copy of an f16 tensor (exact).
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return Ok(x.clone());
    }
    cast(x, DType::F16, DType::F32, &TO_F32)
}
