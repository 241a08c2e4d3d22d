//! A tape-based autograd over GPU tensors.
//!
//! Every differentiable op on [`Var`]s runs its forward kernel at once and, when a tape is
//! recording and some input needs a gradient, pushes a node holding a closure that runs the
//! backward kernels. [`Tape::backward`] walks the nodes in reverse and adds each parameter's
//! gradient into [`Param::grad`], so calling it over several micro-batches accumulates.

use crate::engine::Tensor;
use crate::error::{Error, Result};
use crate::ops;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

mod grad_sink;
mod param;
mod var_ops;

pub use grad_sink::GradSink;
pub use param::Param;

thread_local! {
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
    static READY: RefCell<Option<ReadyListener>> = const { RefCell::new(None) };
    /// Backward passes running on this thread (a checkpointed layer's inside the outer one).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Told parameters whose gradients are complete (added into their slots): by a backward pass
/// as soon as no node left in it uses them, and at its end for the rest; the flag says whether
/// more of the backward is still to come (false only at the end of the outermost pass).
pub type ReadyListener = Rc<dyn Fn(&[Rc<Param>], bool) -> Result<()>>;

/// Runs `f` with `ready` told, in every backward pass inside it (a checkpointed layer's
/// recomputation included), which parameters' gradients are complete, as soon as they are
/// (see [`ReadyListener`]): a data-parallel step sends a range of gradients to the other
/// ranks as soon as its last parameter is final, while the GPU goes on with the layers below.
pub fn with_ready_listener<R>(ready: ReadyListener, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ReadyListener>);
    impl Drop for Restore {
        fn drop(&mut self) {
            READY.with(|r| *r.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(READY.with(|r| r.borrow_mut().replace(ready)));
    f()
}

/// Runs `f` with mixed precision on (or off), as PyTorch's `autocast`: inside, matmuls and
/// attention read f16 copies of their inputs (what backward keeps) and activations keep an f16
/// copy of their input for backward; arithmetic, outputs and gradients stay f32. Precision is
/// one setting of a forward pass, not a choice of methods.
pub fn autocast<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(on)));
    f()
}

/// Whether ops run under [`autocast`].
pub fn is_autocast() -> bool {
    AUTOCAST.with(|a| a.get())
}

type BackwardFn = Box<dyn FnOnce(&Tensor, &mut [Option<GradInto>]) -> Result<Vec<Option<Tensor>>>>;

/// Where a backward may put an input's gradient itself, so that no separate pass adds it to
/// what is there. A backward that takes an offer (`Option::take`) honours it; one that leaves
/// it returns the plain gradient and the tape adds it as usual.
pub enum GradInto {
    /// Add into this parameter's slot of the optimiser's flat gradient buffer, in place, and
    /// return `None` for the input.
    Slot(Tensor),
    /// Return `earlier + gradient` for the input: `earlier` is what other consumers of the
    /// same var have given it (a residual stream's skip path).
    Sum(Tensor),
}

struct Node {
    out: usize,
    inputs: Vec<Option<usize>>,
    backward: BackwardFn,
}

/// Records differentiable ops for one forward pass.
pub struct Tape {
    nodes: RefCell<Vec<Node>>,
    params: RefCell<Vec<(usize, Rc<Param>)>>,
    /// Vars whose values are views of parameters' values (joined weights): held anyway.
    views: RefCell<Vec<usize>>,
    /// Vars that join parameters' values without a copy (q, k, v), with the joined vars' ids:
    /// their gradient can go straight into the joined slots.
    joins: RefCell<Vec<(usize, Vec<usize>)>>,
    next_id: Cell<usize>,
    enabled: Cell<bool>,
    /// A checkpointed layer's recomputation: its backward follows at once, so what its
    /// backward closures keep is held for one layer's backward only.
    recompute: Cell<bool>,
}

/// A tensor in a computation: constant, leaf, or the output of a recorded op.
#[derive(Clone)]
pub struct Var {
    /// The forward value.
    pub value: Tensor,
    id: Option<usize>,
    tape: Option<Rc<Tape>>,
}

impl Tape {
    /// A new, recording tape.
    pub fn new() -> Rc<Tape> {
        Rc::new(Tape {
            nodes: RefCell::new(Vec::new()),
            params: RefCell::new(Vec::new()),
            views: RefCell::new(Vec::new()),
            joins: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            enabled: Cell::new(true),
            recompute: Cell::new(false),
        })
    }

    fn fresh(&self) -> usize {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Runs `f` without recording: ops inside produce constants (inference, evaluation).
    pub fn no_grad<R>(&self, f: impl FnOnce() -> R) -> R {
        let was = self.enabled.replace(false);
        let r = f();
        self.enabled.set(was);
        r
    }

    /// Whether ops are being recorded (false inside [`Tape::no_grad`]).
    pub fn is_recording(&self) -> bool {
        self.enabled.get()
    }

    /// Gradient checkpointing: runs `f(tape, x)` without recording anything inside, and
    /// records one node whose backward recomputes `f` on a fresh tape and backpropagates
    /// through it (parameter gradients accumulate as usual). Only `x` is held between the
    /// passes. `f` must give the same result twice (fixed dropout seeds).
    pub fn checkpoint(
        self: &Rc<Self>,
        x: &Var,
        f: impl Fn(&Rc<Tape>, &Var) -> Result<Var> + 'static,
    ) -> Result<Var> {
        let y = self.no_grad(|| f(self, x))?;
        if !self.enabled.get() {
            return Ok(Var::constant(y.value));
        }
        let id = self.fresh();
        let xv = x.value.clone();
        let track_x = x.id.is_some();
        self.nodes.borrow_mut().push(Node {
            out: id,
            inputs: vec![x.id],
            backward: Box::new(move |g, _| {
                let sub = Tape::new();
                sub.recompute.set(true);
                let xi = sub.input(xv, track_x);
                let yi = f(&sub, &xi)?;
                if !yi.requires_grad() {
                    return Ok(vec![None]);
                }
                let grads = sub.backward_with(&yi, Some(g.clone()), &[&xi])?;
                Ok(grads)
            }),
        });
        Ok(Var {
            value: y.value,
            id: Some(id),
            tape: Some(self.clone()),
        })
    }

    /// A leaf for a parameter: tracked unless frozen or not recording.
    pub fn param(self: &Rc<Self>, p: &Rc<Param>) -> Var {
        if p.is_frozen() || !self.enabled.get() {
            return Var::constant(p.value());
        }
        let id = self.fresh();
        self.params.borrow_mut().push((id, p.clone()));
        Var {
            value: p.value(),
            id: Some(id),
            tape: Some(self.clone()),
        }
    }

    /// A leaf for an input; with `requires_grad` its gradient is returned by [`Tape::backward`].
    pub fn input(self: &Rc<Self>, t: Tensor, requires_grad: bool) -> Var {
        if !requires_grad || !self.enabled.get() {
            return Var::constant(t);
        }
        Var {
            value: t,
            id: Some(self.fresh()),
            tape: Some(self.clone()),
        }
    }

    /// Backpropagates from a scalar: adds parameter gradients into their `grad`, and returns
    /// the gradients of the vars listed in `wrt` (inputs made with `requires_grad`).
    pub fn backward(&self, loss: &Var, wrt: &[&Var]) -> Result<Vec<Option<Tensor>>> {
        self.backward_with(loss, None, wrt)
    }

    /// Like [`Tape::backward`] from any var, seeded with `grad` (ones when `None`).
    pub fn backward_with(
        &self,
        out: &Var,
        grad: Option<Tensor>,
        wrt: &[&Var],
    ) -> Result<Vec<Option<Tensor>>> {
        let Some(root) = out.id else {
            return Err(Error::Autograd(
                "backward from a value that does not require grad".into(),
            ));
        };
        let seed = match grad {
            Some(g) if g.shape() == out.value.shape() => g,
            Some(g) => {
                return Err(Error::Autograd(format!(
                    "seed gradient {:?} for output {:?}",
                    g.shape(),
                    out.value.shape()
                )))
            }
            None if out.value.numel() == 1 => {
                ops::elementwise::fill(out.value.gpu(), out.value.shape(), 1.0)?
            }
            None => {
                return Err(Error::Autograd(format!(
                    "backward from non-scalar {:?} needs a seed gradient",
                    out.value.shape()
                )))
            }
        };
        struct Depth;
        impl Drop for Depth {
            fn drop(&mut self) {
                DEPTH.with(|d| d.set(d.get() - 1));
            }
        }
        DEPTH.with(|d| d.set(d.get() + 1));
        let _depth = Depth;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.next_id.get()];
        grads[root] = Some(seed);
        // Gradients of parameters with a flat slot go there as soon as they are made.
        let homed: std::collections::HashMap<usize, Rc<Param>> = self
            .params
            .borrow()
            .iter()
            .filter(|(_, p)| p.has_grad_home())
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        let owners = self.slot_owners(&homed);
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        // With a listener: how many nodes may still add to each homed parameter (by the
        // parameter, whatever vars it was recorded as), so it can be told as soon as none can.
        let listener = READY.with(|r| r.borrow().clone());
        let mut uses: std::collections::HashMap<*const Param, usize> = Default::default();
        if listener.is_some() {
            for i in nodes.iter().flat_map(|n| n.inputs.iter().flatten()) {
                if let Some(p) = homed.get(i) {
                    *uses.entry(Rc::as_ptr(p)).or_default() += 1;
                }
            }
        }
        let mut told: std::collections::HashSet<*const Param> = Default::default();
        for node in nodes.into_iter().rev() {
            let inputs = node.inputs.clone();
            Tape::backward_node(node, &mut grads, &homed, &owners)?;
            let Some(ready) = &listener else { continue };
            // A node that got no gradient adds none either: its inputs are done with it too.
            let mut now = Vec::new();
            for p in inputs.iter().flatten().filter_map(|i| homed.get(i)) {
                let left = uses.get_mut(&Rc::as_ptr(p)).expect("counted above");
                *left -= 1;
                if *left == 0 && told.insert(Rc::as_ptr(p)) && p.grad().is_some() {
                    now.push(p.clone());
                }
            }
            if !now.is_empty() {
                now[0].flush_grad()?;
                ready(&now, true)?;
            }
        }
        let mut given = Vec::new();
        for (id, p) in self.params.borrow_mut().drain(..) {
            if let Some(g) = grads[id].take() {
                p.accumulate(g)?;
            }
            given.push(p);
        }
        for p in homed.values() {
            p.flush_grad()?;
        }
        if let Some(ready) = &listener {
            given.retain(|p| p.grad().is_some() && !told.contains(&Rc::as_ptr(p)));
            ready(&given, DEPTH.with(|d| d.get()) > 1)?;
        }
        Ok(wrt
            .iter()
            .map(|v| v.id.and_then(|i| grads[i].take()))
            .collect())
    }
}

impl Tape {
    /// Runs one node's backward: offers its inputs their destinations ([`GradInto`]) and adds
    /// what it returns where each input's gradient goes.
    fn backward_node(
        node: Node,
        grads: &mut [Option<Tensor>],
        homed: &std::collections::HashMap<usize, Rc<Param>>,
        owners: &std::collections::HashMap<usize, Vec<Rc<Param>>>,
    ) -> Result<()> {
        // Dropping the output's gradient here frees it as soon as it is consumed.
        let Some(g) = grads[node.out].take() else {
            return Ok(());
        };
        let mut into: Vec<Option<GradInto>> = Vec::with_capacity(node.inputs.len());
        for inp in &node.inputs {
            let offer = match *inp {
                None => None,
                Some(i) => match owners
                    .get(&i)
                    .map(|o| joined_slot(o))
                    .transpose()?
                    .flatten()
                {
                    Some(slot) => Some(GradInto::Slot(slot)),
                    None => grads[i].take().map(GradInto::Sum),
                },
            };
            into.push(offer);
        }
        let offered_slot: Vec<bool> = into
            .iter()
            .map(|o| matches!(o, Some(GradInto::Slot(_))))
            .collect();
        let results = (node.backward)(&g, &mut into)?;
        let answers = node.inputs.iter().zip(results).zip(into).zip(offered_slot);
        for (((inp, r), offer), slot) in answers {
            let Some(i) = *inp else { continue };
            match offer {
                // Taken: the backward added into the slot itself.
                None if slot => {
                    for p in owners.get(&i).into_iter().flatten() {
                        p.mark_touched();
                    }
                    continue;
                }
                // Left: this input's earlier gradient goes back before adding.
                Some(GradInto::Sum(earlier)) => grads[i] = Some(earlier),
                _ => {}
            }
            let Some(r) = r else { continue };
            if let Some(p) = homed.get(&i) {
                p.accumulate(r)?;
                continue;
            }
            grads[i] = Some(match grads[i].take() {
                Some(prev) => ops::elementwise::add(&prev, &r)?,
                None => r,
            });
        }
        Ok(())
    }

    /// The vars whose gradient may go straight into a flat gradient slot, with the parameters
    /// that slot belongs to: homed parameters, and joins of homed parameters (q, k, v).
    fn slot_owners(
        &self,
        homed: &std::collections::HashMap<usize, Rc<Param>>,
    ) -> std::collections::HashMap<usize, Vec<Rc<Param>>> {
        let mut out: std::collections::HashMap<usize, Vec<Rc<Param>>> =
            homed.iter().map(|(id, p)| (*id, vec![p.clone()])).collect();
        for (id, parts) in self.joins.borrow().iter() {
            let owners: Option<Vec<Rc<Param>>> =
                parts.iter().map(|i| homed.get(i).cloned()).collect();
            out.extend(owners.map(|o| (*id, o)));
        }
        out
    }
}

/// The one slot that `owners`' slots make when they lie back to back (a parameter's own, or a
/// join's). Anything still queued for them is added first, so additions keep their order
/// (and the result its bits).
fn joined_slot(owners: &[Rc<Param>]) -> Result<Option<Tensor>> {
    let mut slots = Vec::with_capacity(owners.len());
    for p in owners {
        match p.grad_slot()? {
            Some(s) => slots.push(s),
            None => return Ok(None),
        }
    }
    Ok(match slots.len() {
        1 => slots.pop(),
        _ => Tensor::join(&slots.iter().collect::<Vec<_>>()),
    })
}

impl Var {
    /// A value that needs no gradient.
    pub fn constant(t: Tensor) -> Var {
        Var {
            value: t,
            id: None,
            tape: None,
        }
    }

    /// Whether gradients flow into this var.
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    /// Shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Records `value = f(inputs)` with its backward, if any input is tracked.
    fn record(
        inputs: &[&Var],
        value: Tensor,
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        Var::record_into(inputs, value, move |g, _| backward(g))
    }

    /// [`Var::record`] of a backward that may take [`GradInto`] offers, one per input.
    fn record_into(
        inputs: &[&Var],
        value: Tensor,
        backward: impl FnOnce(&Tensor, &mut [Option<GradInto>]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let tape = inputs.iter().find_map(|v| v.id.and(v.tape.clone()));
        match tape {
            Some(tape) if tape.enabled.get() => {
                let id = tape.fresh();
                tape.nodes.borrow_mut().push(Node {
                    out: id,
                    inputs: inputs.iter().map(|v| v.id).collect(),
                    backward: Box::new(backward),
                });
                Var {
                    value,
                    id: Some(id),
                    tape: Some(tape),
                }
            }
            _ => Var::constant(value),
        }
    }

    /// Whether this var's tensor is held outside the graph anyway (a constant or a parameter),
    /// so a backward closure can keep it at no memory cost.
    fn held_elsewhere(&self) -> bool {
        match (self.id, &self.tape) {
            (None, _) => true,
            (Some(id), Some(t)) => {
                t.params.borrow().iter().any(|(p, _)| *p == id) || t.views.borrow().contains(&id)
            }
            (Some(_), None) => false,
        }
    }

    /// Whether this var is recorded on a checkpointed layer's recomputation tape, whose
    /// backward runs right after it (see [`Tape::checkpoint`]).
    fn in_recompute(&self) -> bool {
        self.tape.as_ref().is_some_and(|t| t.recompute.get())
    }

    /// Notes that this var joins the values of parameters `parts` without a copy, so that its
    /// gradient may go straight into their joined gradient slots.
    fn mark_join_of(&self, parts: &[&Var]) {
        let (Some(id), Some(t)) = (self.id, &self.tape) else {
            return;
        };
        let params = t.params.borrow();
        let ids: Option<Vec<usize>> = parts
            .iter()
            .map(|v| v.id.filter(|i| params.iter().any(|(p, _)| p == i)))
            .collect();
        if let Some(ids) = ids {
            t.joins.borrow_mut().push((id, ids));
        }
    }

    /// Marks this var's value as a view of tensors held elsewhere (see
    /// [`Var::held_elsewhere`]).
    fn mark_held(&self) {
        if let (Some(id), Some(t)) = (self.id, &self.tape) {
            t.views.borrow_mut().push(id);
        }
    }
}
