// Softmax and log-softmax over the last dim of [rows, cols], with an optional additive mask
// (attention's key padding mask: rows that share a mask row come in groups of `mask_group`,
// e.g. heads x queries for a [batch, keys] mask). Forward and backward side by side:
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
// One workgroup per row; max-subtracted for stability.

// `struct Params` (binding 0) is written in by the loader from `SoftmaxParams` in src/ops/softmax.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;      // logits (fwd) or y (bwd)
@group(0) @binding(2) var<storage, read> aux: array<f32>;    // mask (fwd) or dy (bwd)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn logit(row: u32, c: u32) -> f32 {
    var v = x[row * p.cols + c];
    if p.has_mask == 1u { v = v + aux[((p.row_base + row) / p.mask_group) * p.cols + c]; }
    return v;
}

@compute @workgroup_size(256)
fn softmax_fwd(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if row >= p.rows { return; }
    let lid = lid3.x;
    // The lowest finite f32: a row whose every logit is masked (x + f32::MIN rounds to
    // f32::MIN) then has m = f32::MIN and comes out uniform, as torch makes it.
    var m = -3.40282347e38;
    for (var c = lid; c < p.cols; c = c + 256u) { m = max(m, logit(row, c)); }
    m = reduce(lid, m, true);
    var s = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) { s = s + exp(logit(row, c) - m); }
    s = reduce(lid, s, false);
    // Relative to m, not through m + log(s): near f32::MIN that sum rounds back to m.
    let inv = 1.0 / s;
    let ls = log(s);
    for (var c = lid; c < p.cols; c = c + 256u) {
        let d = logit(row, c) - m;
        out[row * p.cols + c] = select(exp(d) * inv, d - ls, p.log == 1u);
    }
}

@compute @workgroup_size(256)
fn softmax_bwd(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if row >= p.rows { return; }
    let lid = lid3.x;
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) {
        s = s + select(aux[base + c] * x[base + c], aux[base + c], p.log == 1u);
    }
    s = reduce(lid, s, false);
    for (var c = lid; c < p.cols; c = c + 256u) {
        let y = x[base + c];
        let dy = aux[base + c];
        out[base + c] = select(y * (dy - s), dy - exp(y) * s, p.log == 1u);
    }
}
