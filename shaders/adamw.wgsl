// AdamW over many parameter tensors in one dispatch: weight decay, moment updates and the
// parameter update in place, with the clip factor of torch.nn.utils.clip_grad_norm_ computed
// here from the global gradient norm so the host never has to read it back before stepping.
//
// The bound ranges are a window of the optimiser's flat buffers (values, gradients, moments
// at the same offsets). Element j of the window is element base + j of the flat buffer; the
// segment table says which parameter it belongs to (segments seg_lo..seg_hi, sorted by start)
// and that parameter's own scalars: parameters differ in weight decay and, when LayerDrop
// left some without a gradient on some steps, in their step count. Elements in no segment
// (alignment padding, parameters without a gradient this step) are left alone.
//
// The arithmetic follows torch.optim.AdamW's single-tensor loop operation by operation
// (decay, lerp for m, mul + addcmul for v, sqrt / bc2_sqrt + eps, addcdiv), and the host
// computes the per-parameter scalars in f64 (lr / bias_correction1, sqrt(bias_correction2),
// 1 - lr * wd) as torch does in Python floats, so results match PyTorch's f32 to rounding.

// `struct Params` (binding 0) is written in by the loader from `AdamwParams` in src/optim/mod.rs,
// whose fields say what each one means.

// One parameter's range of the flat buffer and its scalars for this step.
struct Segment {
    start: u32,
    len: u32,
    decay: f32,         // 1 - lr * weight_decay
    step_size: f32,     // lr / (1 - beta1^t)
    bc2_sqrt: f32,      // sqrt(1 - beta2^t)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> norm: array<f32>;        // [global grad norm]
@group(0) @binding(3) var<storage, read> segs: array<Segment>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;

// Bit test rather than x == x: float comparisons may be folded away by fast-math compilers.
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let at = p.base + i;
    // The last segment starting at or before `at` (binary search over a few hundred).
    var lo = p.seg_lo;
    var hi = p.seg_hi;
    while hi - lo > 1u {
        let mid = (lo + hi) / 2u;
        if segs[mid].start <= at { lo = mid; } else { hi = mid; }
    }
    let s = segs[lo];
    if at < s.start || at >= s.start + s.len { return; }
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
    let x = param[i] * s.decay;
    let m1 = m[i] + p.one_minus_b1 * (g - m[i]);
    let v1 = v[i] * p.b2 + p.one_minus_b2 * g * g;
    let denom = sqrt(v1) / s.bc2_sqrt + p.eps;
    param[i] = x - s.step_size * m1 / denom;
    m[i] = m1;
    v[i] = v1;
}
