//! Data-parallel ranks: each one's share of a batch, and the gradient exchange, overlapped
//! with the backward pass as DDP does it: the optimiser's flat gradient buffers are cut into
//! ranges of whole parameters; during the last micro-batch's backward, a range is copied out
//! to the host as soon as every one of its parameters has its final gradient (backward runs
//! from the head down, so the top layers' ranges go first; `autograd::with_ready_listener`
//! says when), and once the whole backward is recorded the host sums each range over the
//! ranks, in the order they were sent, while the GPU is still on the layers below, then
//! writes it back before the update. Ranges whose parameters got no gradient in that pass
//! (LayerDrop, frozen parts) are sent at the end. Sums are those of the exchange at the end,
//! bit for bit: the same values summed by the same MPI call.

use super::Share;
use crate::autograd::{Param, ReadyListener};
use crate::data::{collate, Batch, Prepared, Split};
use crate::dist::Dist;
use crate::engine::{LateRead, Tensor};
use crate::error::Result;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Elements of a range (32 MiB of f32; `XLSR_EXCHANGE_KB` sets it, for tests of small models).
fn range_elems() -> usize {
    let kb = std::env::var("XLSR_EXCHANGE_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(32 * 1024);
    (kb * 256).max(1)
}

/// One step's exchange, from the first ready range to the last write-back.
pub struct Exchange {
    /// The ranges and how many of their parameters still wait for their gradient.
    ranges: Vec<(Tensor, usize)>,
    /// Which range each parameter belongs to.
    range_of: HashMap<*const Param, usize>,
    /// Ranges copied out, in the order they were.
    sent: Vec<(usize, LateRead)>,
    /// Parameters already counted (a parameter may be recorded twice).
    seen: std::collections::HashSet<*const Param>,
    /// The gradients of parameters outside the flat buffers, summed at the end.
    own: Vec<Tensor>,
    /// Ranges sent while more of the backward was still to come.
    early: usize,
}

impl Exchange {
    /// An exchange of `opt`'s gradients, nothing sent yet.
    pub fn new(opt: &crate::optim::AdamW) -> Result<Rc<RefCell<Exchange>>> {
        let (ranges, own) = opt.gradient_ranges(range_elems())?;
        let mut range_of = HashMap::new();
        for (i, (_, params)) in ranges.iter().enumerate() {
            for p in params {
                range_of.insert(Rc::as_ptr(p), i);
            }
        }
        let ranges = ranges.into_iter().map(|(t, ps)| (t, ps.len())).collect();
        Ok(Rc::new(RefCell::new(Exchange {
            ranges,
            range_of,
            sent: Vec::new(),
            seen: Default::default(),
            own,
            early: 0,
        })))
    }

    /// What backward calls as it completes parameters' gradients: sends the ranges that are
    /// now complete.
    pub fn listener(this: &Rc<RefCell<Exchange>>) -> ReadyListener {
        let this = this.clone();
        Rc::new(move |params: &[Rc<Param>], more_to_come: bool| {
            let mut x = this.borrow_mut();
            for p in params {
                let ptr = Rc::as_ptr(p);
                let Some(&r) = x.range_of.get(&ptr) else {
                    continue;
                };
                if !x.seen.insert(ptr) {
                    continue;
                }
                x.ranges[r].1 -= 1;
                if x.ranges[r].1 == 0 {
                    x.send(r)?;
                    x.early += more_to_come as usize;
                }
            }
            Ok(())
        })
    }

    fn send(&mut self, r: usize) -> Result<()> {
        let t = &self.ranges[r].0;
        let read = t.gpu().read_later(&[t])?;
        self.sent.push((r, read));
        Ok(())
    }

    /// After the backward: sends what is left, then sums every range over the ranks in the
    /// order sent and writes it back, then the other gradients and `extra` (the loss).
    /// Returns how many ranges there were and how many went during the backward.
    pub fn finish(&mut self, dist: &Dist, extra: &[Tensor]) -> Result<ExchangeReport> {
        let x = self;
        let report = ExchangeReport {
            ranges: x.ranges.len(),
            during_backward: x.early,
        };
        for r in 0..x.ranges.len() {
            if x.ranges[r].1 > 0 {
                x.send(r)?;
            }
        }
        for (r, read) in std::mem::take(&mut x.sent) {
            let mut v = read.get()?;
            dist.sum(&mut v);
            x.ranges[r].0.write(&v)?;
        }
        let rest: Vec<Tensor> = x.own.iter().chain(extra).cloned().collect();
        dist.sum_tensors(&rest)?;
        Ok(report)
    }
}

/// How a step's exchange went.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExchangeReport {
    /// Ranges of the flat gradient buffers.
    pub ranges: usize,
    /// Of them, sent while the backward of layers below was still to be recorded.
    pub during_backward: usize,
}

/// This rank's share of the batch `idx` (clips in order, split as evenly as the ranks allow),
/// padded as the whole batch; a rank left without clips steps on a copy of the first with
/// weight 0.
pub(super) fn share_of(
    data: &Prepared,
    idx: &[usize],
    lengths: &[usize],
    dist: &Dist,
    seed: u64,
) -> Result<(Batch, u64, Option<Share>)> {
    let (n, ranks, r) = (idx.len(), dist.size(), dist.rank());
    let (from, to) = (r * n / ranks, (r + 1) * n / ranks);
    let (mine, first, weight) = match from < to {
        true => (&idx[from..to], from, (to - from) as f32 / n as f32),
        false => (&idx[..1], 0, 0.0),
    };
    let mut batch = collate(data, Split::Train, mine)?;
    let whole: Vec<usize> = idx.iter().map(|&i| lengths[i]).collect();
    batch.pad_to(whole.iter().copied().max().unwrap_or(0));
    let share = Share {
        first,
        lengths: whole,
        weight,
    };
    Ok((batch, seed, Some(share)))
}
