//! A trainable tensor: its value, its accumulated gradient (a tensor of its own, or a slot
//! in the optimiser's flat gradient buffer), and whether it is frozen.

use super::GradSink;
use crate::engine::Tensor;
use crate::error::Result;
use crate::ops;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A trainable tensor with its accumulated gradient.
pub struct Param {
    /// Name (as in the checkpoint).
    pub name: String,
    value: RefCell<Tensor>,
    grad: RefCell<Option<Tensor>>,
    frozen: Cell<bool>,
    /// Where the gradient accumulates when the optimiser keeps it in a flat buffer.
    home: RefCell<Option<GradHome>>,
    /// The optimiser should pack the next parameter right after this one (q, k and v of a
    /// layer, so their projections run as one GEMM over the joined weights).
    pack_with_next: Cell<bool>,
}

/// A parameter's gradient slot in a flat buffer, the sink that adds into it, and whether
/// anything was added since the slot was last zeroed.
struct GradHome {
    slot: Tensor,
    sink: Rc<GradSink>,
    touched: Cell<bool>,
}

impl Param {
    /// Wraps a tensor as a trainable parameter.
    pub fn new(name: impl Into<String>, value: Tensor) -> Rc<Param> {
        Rc::new(Param {
            name: name.into(),
            value: RefCell::new(value),
            grad: RefCell::new(None),
            frozen: Cell::new(false),
            home: RefCell::new(None),
            pack_with_next: Cell::new(false),
        })
    }

    /// Asks the optimiser to pack the parameter after this one (in the list it is given)
    /// directly behind it, in the same buffer.
    pub fn pack_with_next(&self) {
        self.pack_with_next.set(true);
    }

    /// Whether [`Param::pack_with_next`] was asked.
    pub fn packs_with_next(&self) -> bool {
        self.pack_with_next.get()
    }

    /// From now on the gradient accumulates into `slot` (zeroed, of the value's size) through
    /// `sink`; a gradient held so far is added into it.
    pub fn set_grad_home(&self, slot: Tensor, sink: Rc<GradSink>) -> Result<()> {
        let held = self.grad.borrow_mut().take();
        *self.home.borrow_mut() = Some(GradHome {
            slot,
            sink,
            touched: Cell::new(false),
        });
        match held {
            Some(g) => self.accumulate(g),
            None => Ok(()),
        }
    }

    /// The flat gradient slot, with anything queued for it added first (`None` without a
    /// home): for a backward that adds into it directly, then [`Param::mark_touched`].
    pub(super) fn grad_slot(&self) -> Result<Option<Tensor>> {
        let home = self.home.borrow();
        let Some(h) = home.as_ref() else {
            return Ok(None);
        };
        h.sink.flush_for(&h.slot)?;
        Ok(Some(h.slot.clone()))
    }

    /// Records that something was added into the flat slot directly.
    pub(super) fn mark_touched(&self) {
        if let Some(h) = &*self.home.borrow() {
            h.touched.set(true);
        }
    }

    /// Whether the gradient lives in a flat buffer ([`Param::set_grad_home`]).
    pub fn has_grad_home(&self) -> bool {
        self.home.borrow().is_some()
    }

    /// Marks the gradient absent without touching its slot, for the owner of the flat buffer
    /// that zeroes all slots at once.
    pub(crate) fn forget_grad(&self) {
        if let Some(h) = &*self.home.borrow() {
            h.touched.set(false);
        }
        *self.grad.borrow_mut() = None;
    }

    /// Adds everything queued for this parameter's slot (backward does it at its end).
    pub fn flush_grad(&self) -> Result<()> {
        match &*self.home.borrow() {
            Some(h) => h.sink.flush(),
            None => Ok(()),
        }
    }

    /// Current value.
    pub fn value(&self) -> Tensor {
        self.value.borrow().clone()
    }

    /// Replaces the value (optimiser step, checkpoint load).
    pub fn set_value(&self, t: Tensor) {
        *self.value.borrow_mut() = t;
    }

    /// Accumulated gradient, if any backward pass reached this parameter.
    pub fn grad(&self) -> Option<Tensor> {
        match &*self.home.borrow() {
            Some(h) => h.touched.get().then(|| h.slot.clone()),
            None => self.grad.borrow().clone(),
        }
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) -> Result<()> {
        if let Some(h) = &*self.home.borrow() {
            if h.touched.replace(false) {
                h.slot
                    .gpu()
                    .zero_at(h.slot.buffer(), h.slot.byte_offset(), h.slot.bytes())?;
            }
        }
        *self.grad.borrow_mut() = None;
        Ok(())
    }

    /// Frozen parameters take part in the forward pass but get no gradient.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.set(frozen);
    }

    /// Whether the parameter is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen.get()
    }

    pub(super) fn accumulate(&self, g: Tensor) -> Result<()> {
        if let Some(h) = &*self.home.borrow() {
            h.touched.set(true);
            return h.sink.push(&h.slot, g);
        }
        let mut slot = self.grad.borrow_mut();
        *slot = Some(match slot.take() {
            Some(prev) => ops::elementwise::add(&prev, &g)?,
            None => g,
        });
        Ok(())
    }
}
