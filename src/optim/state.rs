//! The optimiser's state in a checkpoint: its moments and step counts as named tensors, so
//! `--resume` continues exactly where a run stopped.

use super::{AdamW, NamedTensor, State};
use crate::engine::Tensor;
use crate::error::{Error, Result};

impl AdamW {
    /// The optimiser state for a checkpoint: for each parameter updated at least once,
    /// `NAME.exp_avg`, `NAME.exp_avg_sq` (its shape) and `NAME.step` (shape `[]`), plus the
    /// optimiser's own `step`. Reads the moments back from the GPU.
    pub fn state_tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut out = vec![("step".to_string(), vec![], vec![self.step as f32])];
        for slot in &self.slots {
            if let Some(s) = &slot.state {
                let name = &slot.param.name;
                out.push((
                    format!("{name}.exp_avg"),
                    s.m.shape().to_vec(),
                    s.m.to_vec()?,
                ));
                out.push((
                    format!("{name}.exp_avg_sq"),
                    s.v.shape().to_vec(),
                    s.v.to_vec()?,
                ));
                out.push((format!("{name}.step"), vec![], vec![s.step as f32]));
            }
        }
        Ok(out)
    }

    /// Restores what [`AdamW::state_tensors`] saved. Every entry must belong to a parameter of
    /// this optimiser with the saved shape; parameters with no saved state start fresh.
    pub fn load_state(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        let find = |key: &str| tensors.iter().find(|(n, _, _)| n == key);
        let scalar = |key: &str| -> Result<Option<u64>> {
            match find(key) {
                None => Ok(None),
                Some((_, _, v)) if v.len() == 1 && v[0] >= 0.0 && v[0].fract() == 0.0 => {
                    Ok(Some(v[0] as u64))
                }
                Some((_, s, v)) => Err(Error::State(format!(
                    "{key}: expected one whole number, got shape {s:?} values {v:?}"
                ))),
            }
        };
        // Check every entry first, so a bad file leaves the optimiser as it was.
        let mut known = vec!["step".to_string()];
        let mut states = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let name = &slot.param.name;
            let shape = slot.param.value().shape().to_vec();
            let keys = [
                format!("{name}.exp_avg"),
                format!("{name}.exp_avg_sq"),
                format!("{name}.step"),
            ];
            let found: Vec<_> = keys.iter().map(|k| find(k)).collect();
            let state = match (found[0], found[1], scalar(&keys[2])?) {
                (None, None, None) => None,
                (Some(m), Some(v), Some(step)) => {
                    for (key, s, data) in [m, v] {
                        let n: usize = s.iter().product();
                        if *s != shape || data.len() != n {
                            return Err(Error::State(format!(
                                "{key}: saved shape {s:?} ({} values), parameter has {shape:?}",
                                data.len()
                            )));
                        }
                    }
                    // Moments that are not finite, or a negative second moment, would make
                    // the first update NaN and then be blamed on the learning rate.
                    let bad_m = m.2.iter().position(|x| !x.is_finite());
                    let bad_v = v.2.iter().position(|x| !(x.is_finite() && *x >= 0.0));
                    for (key, at, data, what) in [
                        (&m.0, bad_m, &m.2, "finite"),
                        (&v.0, bad_v, &v.2, "finite and >= 0"),
                    ] {
                        if let Some(i) = at {
                            return Err(Error::State(format!(
                                "{key}: value {} at {i}; a moment must be {what} (a damaged file?)",
                                data[i]
                            )));
                        }
                    }
                    Some((m.2.clone(), v.2.clone(), step))
                }
                _ => {
                    return Err(Error::State(format!(
                        "{name}: exp_avg, exp_avg_sq and step must be saved together"
                    )))
                }
            };
            states.push(state);
            known.extend(keys);
        }
        if let Some((n, _, _)) = tensors.iter().find(|(n, _, _)| !known.contains(n)) {
            return Err(Error::State(format!(
                "saved optimiser state has {n}, which is no parameter of this model"
            )));
        }
        let step = scalar("step")?.unwrap_or(0);
        for (slot, state) in self.slots.iter_mut().zip(states) {
            let x = slot.param.value();
            slot.state = match (state, &self.flat, slot.at) {
                (None, Some(flat), Some(at)) => {
                    // Fresh moments are zeros in the flat buffers too.
                    let b = &flat.buckets[at.bucket];
                    b.m.view(at.start, x.shape())?
                        .write(&vec![0.0; x.numel()])?;
                    b.v.view(at.start, x.shape())?
                        .write(&vec![0.0; x.numel()])?;
                    None
                }
                (None, _, _) => None,
                (Some((m, v, step)), Some(flat), Some(at)) => {
                    let b = &flat.buckets[at.bucket];
                    let (mt, vt) = (
                        b.m.view(at.start, x.shape())?,
                        b.v.view(at.start, x.shape())?,
                    );
                    mt.write(&m)?;
                    vt.write(&v)?;
                    Some(State { m: mt, v: vt, step })
                }
                (Some((m, v, step)), _, _) => Some(State {
                    m: Tensor::from_slice(x.gpu(), &m, x.shape())?,
                    v: Tensor::from_slice(x.gpu(), &v, x.shape())?,
                    step,
                }),
            };
        }
        self.step = step;
        Ok(())
    }
}
