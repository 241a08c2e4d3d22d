//! `xlsr demo`: trains a tiny convolutional classifier on synthetic tones, end to end on the
//! engine (conv1d, GroupNorm, GELU, LayerNorm, matmul, log-softmax, autograd, SGD), and prints
//! the loss and accuracy falling. It stands in for the wav2vec2 fine-tuning demo until the
//! model, CTC loss and data pipeline exist.

use crate::error::Result;
use crate::ops::{self, conv::Conv1d};
use crate::{Gpu, Param, Tape, Tensor, Var};
use std::rc::Rc;
use std::time::Instant;

const CLASSES: usize = 4;
const SAMPLES: usize = 400;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// A batch of noisy tones: class c is a sine at (c+1) * 400 Hz (16 kHz audio), random phase.
fn batch(gpu: &Gpu, rng: &mut Lcg, n: usize) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let mut x = Vec::with_capacity(n * SAMPLES);
    let mut onehot = vec![0.0; n * CLASSES];
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (rng.next() * CLASSES as f32) as usize % CLASSES;
        let phase = rng.next() * std::f32::consts::TAU;
        let f = (c + 1) as f32 * 400.0 / 16_000.0;
        for t in 0..SAMPLES {
            x.push((std::f32::consts::TAU * f * t as f32 + phase).sin() + 0.5 * (rng.next() - 0.5));
        }
        onehot[i * CLASSES + c] = 1.0;
        labels.push(c);
    }
    Ok((
        Tensor::from_slice(gpu, &x, &[n, 1, SAMPLES])?,
        Tensor::from_slice(gpu, &onehot, &[n, CLASSES])?,
        labels,
    ))
}

fn init(gpu: &Gpu, rng: &mut Lcg, name: &str, shape: &[usize], fan_in: usize) -> Result<Rc<Param>> {
    let n: usize = shape.iter().product();
    let bound = (1.0 / fan_in as f32).sqrt();
    let v: Vec<f32> = (0..n).map(|_| (2.0 * rng.next() - 1.0) * bound).collect();
    Ok(Param::new(name, Tensor::from_slice(gpu, &v, shape)?))
}

/// Runs `steps` SGD steps, prints progress, and returns the (first, last) logged losses.
pub fn run(gpu: &Gpu, steps: usize) -> Result<(f32, f32)> {
    println!("xlsr demo on {} ({:?})", gpu.info.name, gpu.info.backend);
    println!("task: tell 4 noisy tones apart; model: conv(1->16,k10,s5) GroupNorm GELU conv(16->32,k3,s2) LayerNorm GELU mean-pool linear(32->4)");
    let mut rng = Lcg(42);
    let w0 = init(gpu, &mut rng, "conv0.weight", &[16, 1, 10], 10)?;
    let g0 = Param::new("norm0.weight", ops::elementwise::fill(gpu, &[16], 1.0)?);
    let b0 = Param::new("norm0.bias", Tensor::zeros(gpu, &[16])?);
    let w1 = init(gpu, &mut rng, "conv1.weight", &[32, 16, 3], 48)?;
    let c1b = Param::new("conv1.bias", Tensor::zeros(gpu, &[32])?);
    let g1 = Param::new("norm1.weight", ops::elementwise::fill(gpu, &[32], 1.0)?);
    let b1 = Param::new("norm1.bias", Tensor::zeros(gpu, &[32])?);
    let wo = init(gpu, &mut rng, "head.weight", &[32, CLASSES], 32)?;
    let bo = Param::new("head.bias", Tensor::zeros(gpu, &[CLASSES])?);
    let params = [&w0, &g0, &b0, &w1, &c1b, &g1, &b1, &wo, &bo];
    let (lr, bs) = (0.1f32, 32);
    let t0 = Instant::now();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let (x, y, labels) = batch(gpu, &mut rng, bs)?;
        let tape = Tape::new();
        let p = |q: &Rc<Param>| tape.param(q);
        let h = Var::constant(x).conv1d(
            &p(&w0),
            None,
            Conv1d {
                stride: 5,
                padding: 0,
                groups: 1,
            },
        )?;
        let h = h.group_norm(Some(&p(&g0)), Some(&p(&b0)), 1e-5)?.gelu()?;
        let h = h.conv1d(
            &p(&w1),
            Some(&p(&c1b)),
            Conv1d {
                stride: 2,
                padding: 0,
                groups: 1,
            },
        )?;
        let h = h
            .transpose(1, 2)?
            .layer_norm(Some(&p(&g1)), Some(&p(&b1)), 1e-5)?
            .gelu()?;
        let frames = h.shape()[1];
        let pooled = h.sum_axis(1, 1.0 / frames as f32)?;
        let logp = pooled
            .matmul(&p(&wo), false, false, Some(&p(&bo)))?
            .log_softmax(None)?;
        let loss = logp
            .mul(&Var::constant(y))?
            .sum()?
            .scale(-1.0 / bs as f32, 0.0)?;
        tape.backward(&loss, &[])?;
        for q in params {
            if let Some(g) = q.grad() {
                q.set_value(ops::elementwise::sub(
                    &q.value(),
                    &ops::elementwise::scale(&g, lr, 0.0)?,
                )?);
                q.zero_grad();
            }
        }
        // The only read-backs: the loss and predictions, every 25 steps.
        if step % 25 == 0 || step == 1 {
            let lp = logp.value.to_vec()?;
            let correct = labels
                .iter()
                .enumerate()
                .filter(|(i, &c)| {
                    let row = &lp[i * CLASSES..(i + 1) * CLASSES];
                    row.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map(|m| m.0)
                        == Some(c)
                })
                .count();
            let l = loss.value.item()?;
            losses.push(l);
            println!(
                "step {step:>4}  loss {l:.4}  batch accuracy {:>5.1}%  ({:.1} s)",
                100.0 * correct as f32 / bs as f32,
                t0.elapsed().as_secs_f32()
            );
        }
    }
    Ok((losses[0], *losses.last().unwrap_or(&losses[0])))
}
