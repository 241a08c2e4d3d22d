//! The cost of data parallelism: summing a model's gradients over the MPI ranks as
//! `TrainStep` does (read back from the device, `MPI_Allreduce`, written back), timed.

use crate::dist::Dist;
use crate::error::Result;
use crate::{Gpu, Tensor};
use std::time::Instant;

/// What [`allreduce`] measured (medians over the timed rounds, milliseconds).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AllreduceReport {
    /// Ranks taking part.
    pub ranks: usize,
    /// Gradient bytes summed per step.
    pub bytes: u64,
    /// Device to host.
    pub read_ms: f64,
    /// `MPI_Allreduce` (0 for one rank: the trainer skips the whole exchange then).
    pub reduce_ms: f64,
    /// Host to device.
    pub write_ms: f64,
    /// All three.
    pub total_ms: f64,
}

/// Sums `bytes` of f32 gradients (in buckets of at most 256 MiB, as the optimiser's flat
/// buffers) over `dist`'s ranks `rounds` times after one warm-up; medians.
pub fn allreduce(gpu: &Gpu, dist: &Dist, bytes: u64, rounds: usize) -> Result<AllreduceReport> {
    const BUCKET: u64 = 256 << 20;
    let mut left = bytes / 4 * 4;
    let mut grads = Vec::new();
    while left > 0 {
        let n = (left.min(BUCKET) / 4) as usize;
        grads.push(Tensor::from_slice(gpu, &vec![1e-3f32; n], &[n])?);
        left -= n as u64 * 4;
    }
    let mut times: Vec<[f64; 3]> = Vec::new();
    for round in 0..=rounds {
        dist.barrier();
        let mut t = [0.0; 3];
        for g in &grads {
            let t0 = Instant::now();
            let mut v = g.to_vec()?;
            let t1 = Instant::now();
            if dist.size() > 1 {
                dist.sum(&mut v);
            }
            let t2 = Instant::now();
            g.write(&v)?;
            gpu.sync()?;
            t[0] += (t1 - t0).as_secs_f64() * 1e3;
            t[1] += (t2 - t1).as_secs_f64() * 1e3;
            t[2] += t2.elapsed().as_secs_f64() * 1e3;
        }
        if round > 0 {
            times.push(t);
        }
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (read_ms, reduce_ms, write_ms) = (median(0), median(1), median(2));
    Ok(AllreduceReport {
        ranks: dist.size(),
        bytes,
        read_ms,
        reduce_ms,
        write_ms,
        total_ms: read_ms + reduce_ms + write_ms,
    })
}
