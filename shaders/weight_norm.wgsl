// Weight normalisation as torch.nn.utils.weight_norm(dim=2) does it for wav2vec2's positional
// conv: w = g * v / ||v||, the norm taken over all dims but the last, so v [O, I, K] has one
// norm (and one g) per kernel tap k. Forward and backward side by side; one workgroup per k.

// `struct Params` (binding 0) is written in by the loader from `WeightNormParams` in src/ops/weight_norm.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> norm_in: array<f32>;
@group(0) @binding(4) var<storage, read> dw: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;    // w, or dv
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;   // ||v|| per k, or dg

var<workgroup> red: array<f32, 256>;

fn block_sum(lid: u32, x: f32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn weight_norm_fwd(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = wid.x;
    var acc = 0.0;
    for (var r = lid.x; r < p.rows; r = r + 256u) {
        let x = v[r * p.k + k];
        acc = acc + x * x;
    }
    let n = sqrt(block_sum(lid.x, acc));
    let s = g[k] / n;
    for (var r = lid.x; r < p.rows; r = r + 256u) {
        out[r * p.k + k] = s * v[r * p.k + k];
    }
    if lid.x == 0u {
        out2[k] = n;
    }
}

// dg = <dw, v> / n;  dv = g / n * (dw - <dw, v> / n^2 * v).
@compute @workgroup_size(256)
fn weight_norm_bwd(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = wid.x;
    var acc = 0.0;
    for (var r = lid.x; r < p.rows; r = r + 256u) {
        acc = acc + dw[r * p.k + k] * v[r * p.k + k];
    }
    let dot = block_sum(lid.x, acc);
    let n = norm_in[k];
    let s = g[k] / n;
    let c = dot / (n * n);
    for (var r = lid.x; r < p.rows; r = r + 256u) {
        let i = r * p.k + k;
        out[i] = s * (dw[i] - c * v[i]);
    }
    if lid.x == 0u {
        out2[k] = dot / n;
    }
}
