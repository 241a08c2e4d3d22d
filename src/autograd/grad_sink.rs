//! Gradients that go straight into flat buffers. The optimiser keeps its parameters'
//! gradients in one buffer per bucket (see `optim`); backward adds each contribution into the
//! parameter's slot there, several slots per dispatch, instead of keeping a gradient tensor
//! per parameter until the step.

use crate::engine::Tensor;
use crate::error::Result;
use crate::ops::reduce::{accumulate_into, MULTI_TENSOR_INPUTS};
use std::cell::RefCell;
use std::rc::Rc;

/// Contributions waiting to be added into their slots (one dispatch per batch of them).
#[derive(Default)]
pub struct GradSink {
    pending: RefCell<Vec<(Tensor, Tensor)>>,
}

impl GradSink {
    /// An empty sink.
    pub fn new() -> Rc<GradSink> {
        Rc::new(GradSink::default())
    }

    /// Queues `slot += g`; adds the queue first when it is full, when `slot` is already in it
    /// (two adds into one slot must not run in one dispatch), or when the slots would no
    /// longer fit one binding.
    pub fn push(&self, slot: &Tensor, g: Tensor) -> Result<()> {
        let must_flush = {
            let pending = self.pending.borrow();
            pending.first().is_some_and(|(first, _)| {
                let lo = pending
                    .iter()
                    .map(|(s, _)| s.byte_offset())
                    .chain([slot.byte_offset()])
                    .min()
                    .unwrap_or(0);
                let hi = pending
                    .iter()
                    .map(|(s, _)| s.byte_offset() + s.bytes())
                    .chain([slot.byte_offset() + slot.bytes()])
                    .max()
                    .unwrap_or(0);
                pending.len() == MULTI_TENSOR_INPUTS
                    || !first.same_storage(slot)
                    || pending.iter().any(|(s, _)| s.same_data(slot))
                    || hi - lo > slot.gpu().max_binding()
            })
        };
        if must_flush {
            self.flush()?;
        }
        self.pending.borrow_mut().push((slot.clone(), g));
        Ok(())
    }

    /// Adds the queue first if it holds something for `slot` (before a direct add into it).
    pub fn flush_for(&self, slot: &Tensor) -> Result<()> {
        let queued = self.pending.borrow().iter().any(|(s, _)| s.same_data(slot));
        match queued {
            true => self.flush(),
            false => Ok(()),
        }
    }

    /// Adds everything queued into its slot.
    pub fn flush(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let pairs: Vec<(&Tensor, &Tensor)> = pending.iter().map(|(s, g)| (s, g)).collect();
        Ok(accumulate_into(&pairs)?)
    }
}
