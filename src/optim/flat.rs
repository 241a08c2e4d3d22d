//! The optimiser's flat buffers. Trainable parameters are packed into buckets; a bucket is one
//! buffer of values, one of gradients and one for each AdamW moment, every parameter at the
//! same offset in all four. Then the update, the gradient norm and clipping take a few
//! dispatches per step instead of several per parameter (what PyTorch's fused AdamW and DDP's
//! gradient buckets do), and backward adds gradients straight into their slots.

use crate::autograd::{GradSink, Param};
use crate::engine::{Gpu, Tensor};
use crate::error::Result;
use crate::ops::binding_room;
use std::rc::Rc;

/// Values, gradients and moments of the parameters packed into one bucket.
pub(super) struct Bucket {
    pub values: Tensor,
    pub grads: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

/// Where a parameter lives: its bucket and first element there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Placement {
    pub bucket: usize,
    pub start: usize,
}

/// The buckets (the parameters hold the sink that adds gradients into them).
pub(super) struct Flat {
    pub buckets: Vec<Bucket>,
}

impl Flat {
    /// Moves the trainable f32 parameters among `params` into buckets (their values are then
    /// views of a bucket, their gradients accumulate into its gradient buffer); returns each
    /// parameter's placement (`None`: frozen now, or too big for a bucket, so the optimiser
    /// updates it on its own). `None` when nothing can be packed.
    pub fn adopt(params: &[Rc<Param>]) -> Result<Option<(Flat, Vec<Option<Placement>>)>> {
        let Some(gpu) = params.first().map(|p| p.value().gpu().clone()) else {
            return Ok(None);
        };
        let align = (gpu.offset_align() / 4) as usize;
        // A bucket is bound whole (or in windows) by the update and the norm: it must fit a
        // binding and a buffer.
        let capacity =
            binding_room(&gpu).min((gpu.limits().max_buffer_size / 4) as usize) / align * align;
        let packable = |p: &Param| {
            let x = p.value();
            !p.is_frozen() && x.dtype() == crate::engine::DType::F32 && x.numel() <= capacity
        };
        let mut sizes: Vec<usize> = Vec::new();
        let mut placements = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            if !packable(p) {
                placements.push(None);
                continue;
            }
            // A chain of parameters packed back to back (`Param::pack_with_next`) starts in
            // a bucket with room for all of it.
            let chain_starts = i == 0 || !params[i - 1].packs_with_next();
            let mut need = p.value().numel();
            if chain_starts {
                let mut j = i;
                while params[j].packs_with_next() && j + 1 < params.len() {
                    j += 1;
                    need = need.next_multiple_of(align) + params[j].value().numel();
                }
            }
            let fits = |used: usize| used.next_multiple_of(align) + need.min(capacity) <= capacity;
            let start = match sizes.last() {
                Some(&used) if fits(used) => used.next_multiple_of(align),
                _ => {
                    sizes.push(0);
                    0
                }
            };
            *sizes.last_mut().expect("a bucket") = start + p.value().numel();
            placements.push(Some(Placement {
                bucket: sizes.len() - 1,
                start,
            }));
        }
        if sizes.is_empty() {
            return Ok(None);
        }
        // Values first, then the old tensors go: while packing, the weights exist twice, so
        // the three other buffers are made only after the old ones are freed.
        let values: Vec<Tensor> = sizes
            .iter()
            .map(|&n| Tensor::zeros_exact(&gpu, &[n]))
            .collect::<std::result::Result<_, _>>()?;
        for (p, at) in params.iter().zip(&placements) {
            if let Some(at) = at {
                let view = values[at.bucket].view(at.start, p.value().shape())?;
                view.copy_from(&p.value())?;
                p.set_value(view);
            }
        }
        gpu.trim_pool();
        let sink = GradSink::new();
        let mut buckets = Vec::new();
        for (values, &n) in values.into_iter().zip(&sizes) {
            buckets.push(Bucket {
                values,
                grads: Tensor::zeros_exact(&gpu, &[n])?,
                m: Tensor::zeros_exact(&gpu, &[n])?,
                v: Tensor::zeros_exact(&gpu, &[n])?,
            });
        }
        for (p, at) in params.iter().zip(&placements) {
            if let Some(at) = at {
                let slot = buckets[at.bucket].grads.view(at.start, p.value().shape())?;
                p.set_grad_home(slot, sink.clone())?;
            }
        }
        Ok(Some((Flat { buckets }, placements)))
    }

    /// The view of `param`'s value in its bucket; when something replaced the value (a loaded
    /// checkpoint), the new value is copied in first and the parameter made a view again.
    pub fn sync_value(&self, param: &Param, at: Placement) -> Result<Tensor> {
        let x = param.value();
        let view = self.buckets[at.bucket].values.view(at.start, x.shape())?;
        if !x.same_data(&view) {
            view.copy_from(&x)?;
            param.set_value(view.clone());
        }
        Ok(view)
    }

    /// Zeroes every gradient buffer (one fill per bucket instead of one per parameter).
    pub fn zero_grads(&self, gpu: &Gpu) -> Result<()> {
        for b in &self.buckets {
            gpu.zero(b.grads.buffer(), b.grads.bytes())?;
        }
        Ok(())
    }
}
