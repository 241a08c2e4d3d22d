// Pointwise activations, forward and backward side by side.
// GELU is the exact erf form (PyTorch's default `gelu`), not the tanh approximation.
// With p > 0 the output is dropped as dropout.wgsl drops it (the same mask of element
// base + i, the same y / (1 - p)), so the feed-forward block's act -> dropout is one pass each
// way; backward drops the upstream gradient with that mask before the chain rule.

// `struct Params` (binding 0) is written in by the loader from `ActivationParams` in src/ops/activation.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// y as dropout.wgsl leaves element i: 0 where dropped, else y / (1 - p).
fn dropped(i: u32, y: f32) -> f32 {
    if p.p <= 0.0 { return y; }
    return select(0.0, y / (1.0 - p.p), dropout_draw(p.base + i, p.seed_lo, p.seed_hi) >= p.p);
}

// erf(z) with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); WGSL has no erf.
fn erf(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * abs(z));
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, z >= 0.0);
}

@compute @workgroup_size(256)
fn gelu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    out[i] = dropped(i, 0.5 * v * (1.0 + erf(v * 0.70710678118654752)));
}

@compute @workgroup_size(256)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    let cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752));
    let pdf = 0.3989422804014327 * exp(-0.5 * v * v);
    out[i] = dropped(i, dy[i]) * (cdf + v * pdf);
}

@compute @workgroup_size(256)
fn relu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    out[i] = dropped(i, max(x[i], 0.0));
}

@compute @workgroup_size(256)
fn relu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    out[i] = select(0.0, dropped(i, dy[i]), x[i] > 0.0);
}

// GELU, tanh approximation (HF's `gelu_new`). tanh's argument is clamped: beyond 10 it is
// +-1 in f32 anyway, and some drivers return NaN for huge arguments.
fn gelu_tanh_inner(v: f32) -> f32 {
    return clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -10.0, 10.0);
}

@compute @workgroup_size(256)
fn gelu_tanh_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    out[i] = dropped(i, 0.5 * v * (1.0 + tanh(gelu_tanh_inner(v))));
}

@compute @workgroup_size(256)
fn gelu_tanh_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    let t = tanh(gelu_tanh_inner(v));
    let du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
    out[i] = dropped(i, dy[i]) * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
}

// SiLU / swish: x * sigmoid(x).
fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn silu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    out[i] = dropped(i, v * sigmoid(v));
}

@compute @workgroup_size(256)
fn silu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let v = x[i];
    let s = sigmoid(v);
    out[i] = dropped(i, dy[i]) * s * (1.0 + v * (1.0 - s));
}
