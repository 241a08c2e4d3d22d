// AdamW, one fused pass per parameter tensor: weight decay, moment updates and the parameter
// update in place, with the clip factor of torch.nn.utils.clip_grad_norm_ computed here from
// the global gradient norm so the host never has to read it back before stepping.
//
// The arithmetic follows torch.optim.AdamW's single-tensor loop operation by operation
// (decay, lerp for m, mul + addcmul for v, sqrt / bc2_sqrt + eps, addcdiv), and the host passes
// the scalars it computes in f64 (lr / bias_correction1, sqrt(bias_correction2), 1 - lr * wd),
// so results match PyTorch's f32 to rounding.

struct Params {
    n: u32,
    has_norm: u32,      // 1: `norm` holds the global grad norm; do nothing if it is not finite
    max_norm: f32,      // > 0: scale gradients by min(1, max_norm / (norm + 1e-6))
    decay: f32,         // 1 - lr * weight_decay
    one_minus_b1: f32,  // lerp weight of m towards the gradient
    b2: f32,
    one_minus_b2: f32,
    step_size: f32,     // lr / (1 - beta1^t)
    bc2_sqrt: f32,      // sqrt(1 - beta2^t)
    eps: f32,
    inv_scale: f32,     // undoes loss scaling (1 without it); `norm` is already unscaled
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> norm: array<f32>;        // [global grad norm]
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

// Bit test rather than x == x: float comparisons may be folded away by fast-math compilers.
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    var g = grad[i] * p.inv_scale;
    if p.has_norm == 1u {
        let total = norm[0];
        // A non-finite norm means some gradient is inf or NaN: leave everything untouched
        // (the host sees the same norm and does not count the step).
        if !finite(total) { return; }
        if p.max_norm > 0.0 {
            g = g * min(p.max_norm / (total + 1e-6), 1.0);
        }
    }
    let x = param[i] * p.decay;
    let m1 = m[i] + p.one_minus_b1 * (g - m[i]);
    let v1 = v[i] * p.b2 + p.one_minus_b2 * g * g;
    let denom = sqrt(v1) / p.bc2_sqrt + p.eps;
    param[i] = x - p.step_size * m1 / denom;
    m[i] = m1;
    v[i] = v1;
}
