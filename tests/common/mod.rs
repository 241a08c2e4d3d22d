//! Test helpers: a shared GPU, the library's seeded RNG, the CPU CTC reference, fixture paths, fresh temp folders, and a gradient
//! checker that compares the GPU's forward with a CPU f64 reference and the GPU's backward with
//! central finite differences of that reference.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use xlsr::{Gpu, Tape, Tensor, Var};

/// `tests/fixtures/<path>` (found through the crate root, from any working directory).
pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A fresh empty folder under the system temp dir, unique per test binary and `tag`.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xlsr-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Largest |got - want| of two equally long slices; infinite where either holds a NaN or an
/// infinity the other does not (`f64::max` would skip a NaN and call the slices equal).
pub fn max_abs_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| abs_err(a as f64, b as f64))
        .fold(0.0, f64::max)
}

/// |a - b|, infinite unless both are finite or both the same infinity.
pub fn abs_err(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() {
        (a - b).abs()
    } else if a == b {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Runs the `xlsr` binary expecting it to fail (cleanly: no panic); its stderr.
pub fn xlsr_err(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = xlsr_run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs the `xlsr` binary with the default kernels.
fn xlsr_run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap()
}

/// Runs the `xlsr` binary with `args`, asserts it succeeded (showing its stderr if not) and
/// returns its stdout.
pub fn xlsr_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = xlsr_run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One device per test binary (tests run on threads).
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().expect("a GPU adapter (lavapipe in CI)"))
        .clone()
}

pub mod ctc;
#[allow(unused_imports)]
pub use ctc::ctc_reference;

/// The library's seeded generator, the one RNG of the project.
pub use xlsr::rng::Rng;

/// Test inputs from the [`Rng`].
pub trait RngExt {
    /// `n` values uniform in [-1, 1).
    fn vec(&mut self, n: usize) -> Vec<f64>;
}

impl RngExt for Rng {
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| 2.0 * self.uniform() - 1.0).collect()
    }
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn upload(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(&gpu(), &to_f32(v), shape).unwrap()
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let excess = err - (atol + rtol * w.abs());
        // NaN compares false: a non-finite value on either side must fail by itself.
        if excess > worst.0 || !g.is_finite() || !w.is_finite() {
            worst = (excess.max(f64::MIN_POSITIVE), i);
        }
    }
    if worst.0 > 0.0 {
        let i = worst.1;
        panic!(
            "{what}: element {i}: got {} want {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        );
    }
}

/// A gradient check of one op.
pub struct Check<'a> {
    pub name: &'a str,
    pub inputs: Vec<(Vec<f64>, Vec<usize>)>,
    /// Which inputs are differentiated (others are constants, e.g. masks).
    pub diff: Vec<bool>,
    pub fwd_tol: (f64, f64),
    pub grad_tol: (f64, f64),
    pub h: f64,
}

impl<'a> Check<'a> {
    pub fn new(name: &'a str, inputs: Vec<(Vec<f64>, Vec<usize>)>) -> Self {
        let n = inputs.len();
        Check {
            name,
            inputs,
            diff: vec![true; n],
            fwd_tol: (1e-5, 1e-4),
            grad_tol: (2e-4, 2e-3),
            h: 1e-6,
        }
    }

    /// Runs the check: `gpu_op` builds the op on vars, `cpu_op` is the f64 reference.
    pub fn run(self, gpu_op: impl Fn(&[Var]) -> Var, cpu_op: impl Fn(&[Vec<f64>]) -> Vec<f64>) {
        let tape = Tape::new();
        let vars: Vec<Var> = self
            .inputs
            .iter()
            .zip(&self.diff)
            .map(|((v, s), &d)| tape.input(upload(v, s), d))
            .collect();
        let out = gpu_op(&vars);
        let vals: Vec<Vec<f64>> = self.inputs.iter().map(|(v, _)| v.clone()).collect();
        let want = cpu_op(&vals);
        let got = out.value.to_vec().unwrap();
        assert_close(
            &format!("{} forward", self.name),
            &got,
            &want,
            self.fwd_tol.0,
            self.fwd_tol.1,
        );
        // An op that dropped off the tape would skip the gradient check without a word.
        assert!(
            out.requires_grad() || !self.diff.contains(&true),
            "{}: the output is not on the tape",
            self.name
        );
        if !out.requires_grad() {
            return;
        }
        let mut rng = Rng::new(99);
        let r = rng.vec(want.len());
        let seed = upload(&r, out.shape());
        let refs: Vec<&Var> = vars.iter().collect();
        let grads = tape.backward_with(&out, Some(seed), &refs).unwrap();
        let loss =
            |vals: &[Vec<f64>]| -> f64 { cpu_op(vals).iter().zip(&r).map(|(a, b)| a * b).sum() };
        for (i, g) in grads.iter().enumerate() {
            if !self.diff[i] {
                continue;
            }
            let mut num = vec![0.0; vals[i].len()];
            let mut v = vals.clone();
            for j in 0..num.len() {
                let x0 = v[i][j];
                v[i][j] = x0 + self.h;
                let lp = loss(&v);
                v[i][j] = x0 - self.h;
                let lm = loss(&v);
                v[i][j] = x0;
                num[j] = (lp - lm) / (2.0 * self.h);
            }
            let got = match g {
                Some(t) => t.to_vec().unwrap(),
                None => vec![0.0; num.len()],
            };
            assert_close(
                &format!("{} grad of input {i}", self.name),
                &got,
                &num,
                self.grad_tol.0,
                self.grad_tol.1,
            );
        }
    }
}

/// A prep folder (in `dir`) of the built-in corpus's first `n` training clips, which serve as
/// the test split too.
pub fn demo_subset(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    use xlsr::data::prepare::{self, Options, Source};
    let corpus = xlsr::demo::corpus_dir();
    let tsv = std::fs::read_to_string(corpus.join("train.tsv")).unwrap();
    let mut manifest = String::new();
    for line in tsv.lines().skip(1).take(n) {
        let cols: Vec<&str> = line.split('\t').collect();
        manifest += &format!(
            "{}\t{}\n",
            corpus.join("clips").join(cols[1]).display(),
            cols[2]
        );
    }
    let m = dir.join("train_manifest.tsv");
    std::fs::write(&m, manifest).unwrap();
    let prep = dir.join("prep");
    let mut opts = Options::new(
        Source::Manifests {
            train: vec![m.clone()],
            test: vec![m],
        },
        &prep,
    );
    opts.progress = false;
    prepare::run(&opts).unwrap();
    prep
}

/// Shapes of matmul operands: A is [batch, m, k] ([batch, k, m] transposed), B is [k, n]
/// ([n, k] transposed), with a leading batch dim unless `shared`.
pub fn matmul_shapes(
    (batch, m, n, k): (usize, usize, usize, usize),
    (ta, tb, shared): (bool, bool, bool),
) -> (Vec<usize>, Vec<usize>) {
    let ashape = if ta {
        vec![batch, k, m]
    } else {
        vec![batch, m, k]
    };
    let bdims = if tb { vec![n, k] } else { vec![k, n] };
    let bshape = if shared {
        bdims
    } else {
        [vec![batch], bdims].concat()
    };
    (ashape, bshape)
}

/// A fresh temp folder `tag` holding a prep folder of the built-in corpus's first `clips`
/// clips ([`demo_subset`]) and a tiny model for it ([`tiny_model`]): (folder, prep, model).
pub fn tiny_run(tag: &str, clips: usize) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(tag);
    let prep = demo_subset(&dir, clips);
    let model = tiny_model(&dir, &prep);
    (dir, prep, model)
}

/// A 2-layer, 32-wide wav2vec2 for `prep`'s vocabulary with random weights, saved as a model
/// folder `dir/init` (with `masked_spec_embed`, for SpecAugment).
pub fn tiny_model(dir: &std::path::Path, prep: &std::path::Path) -> std::path::PathBuf {
    let data = xlsr::data::Prepared::open(prep).unwrap();
    let mut cfg = xlsr::demo::small_config(data.vocab.len(), data.vocab.pad as usize);
    cfg.hidden_size = 32;
    cfg.intermediate_size = 48;
    cfg.conv_dim = vec![16; 7];
    cfg.num_hidden_layers = 2;
    cfg.mask_time_prob = 0.05;
    let m = xlsr::model::Wav2Vec2ForCtc::random(&gpu(), cfg, 1).unwrap();
    let out = dir.join("init");
    xlsr::train::state::save_model(&out, &m, &data.vocab).unwrap();
    out
}

/// Each value rounded to the nearest f16.
pub fn round16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect()
}

/// C = op(A) op(B) + bias in f64 for [batch, m, k] x [k, n] (or batched B).
pub fn reference_matmul(
    a: &[f64],
    b: &[f64],
    bias: Option<&[f64]>,
    (batch, m, n, k): (usize, usize, usize, usize),
    (ta, tb, b_shared): (bool, bool, bool),
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for z in 0..batch {
        let (ao, bo) = (z * m * k, if b_shared { 0 } else { z * k * n });
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |v| v[j]);
                for p in 0..k {
                    let av = if ta {
                        a[ao + p * m + i]
                    } else {
                        a[ao + i * k + p]
                    };
                    let bv = if tb {
                        b[bo + j * k + p]
                    } else {
                        b[bo + p * n + j]
                    };
                    s += av * bv;
                }
                c[z * m * n + i * n + j] = s;
            }
        }
    }
    c
}

/// conv1d in f64: x [b, cin, lin], w [cout, cin / groups, k] -> [b, cout, lout].
#[allow(clippy::too_many_arguments)]
pub fn cpu_conv(
    x: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    b: usize,
    cin: usize,
    lin: usize,
    cout: usize,
    k: usize,
    c: xlsr::ops::conv::Conv1d,
) -> Vec<f64> {
    let lout = c.out_len(lin, k);
    let cig = cin / c.groups;
    let cog = cout / c.groups;
    let mut y = vec![0.0; b * cout * lout];
    for bi in 0..b {
        for o in 0..cout {
            let g = o / cog;
            for t in 0..lout {
                let mut s = bias.map_or(0.0, |bs| bs[o]);
                for i in 0..cig {
                    for kk in 0..k {
                        let pos = (t * c.stride + kk) as isize - c.padding as isize;
                        if pos >= 0 && (pos as usize) < lin {
                            s += w[(o * cig + i) * k + kk]
                                * x[(bi * cin + g * cig + i) * lin + pos as usize];
                        }
                    }
                }
                y[(bi * cout + o) * lout + t] = s;
            }
        }
    }
    y
}

/// Writes `samples` as a mono 32-bit float WAV at 16 kHz.
pub fn write_float_wav(path: &std::path::Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &x in samples {
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
}
