// 1-D convolution with stride, zero padding, groups and bias (PyTorch's Conv1d):
//   y[b, o, t] = bias[o] + sum_{i in group(o), k} w[o, i, k] * x[b, i, t * stride - pad + k]
// x [B, Cin, Lin], w [Cout, Cin/groups, K], y [B, Cout, Lout]. Forward and the three
// backward kernels (input, weight, bias) side by side. `accum` adds into the output so a
// batch processed in chunks sums its weight gradients.

struct Params {
    batch: u32,
    cin: u32,
    lin: u32,
    cout: u32,
    lout: u32,
    k: u32,
    stride: u32,
    pad: u32,
    groups: u32,
    has_bias: u32,
    accum: u32,
    off_x: u32,      // element offsets of this batch chunk within its (aligned-down) binding
    off_aux: u32,
    off_out: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;   // bias (fwd) or dy (bwd)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn lin(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn conv1d_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = lin(gid, nwg);
    if idx >= p.batch * p.cout * p.lout { return; }
    let t = idx % p.lout;
    let o = (idx / p.lout) % p.cout;
    let b = idx / (p.lout * p.cout);
    let cig = p.cin / p.groups;
    let g = o / (p.cout / p.groups);
    var acc = 0.0;
    if p.has_bias == 1u { acc = aux[o]; }
    let start = i32(t * p.stride) - i32(p.pad);
    for (var i = 0u; i < cig; i = i + 1u) {
        let xrow = p.off_x + (b * p.cin + g * cig + i) * p.lin;
        let wrow = (o * cig + i) * p.k;
        for (var k = 0u; k < p.k; k = k + 1u) {
            let s = start + i32(k);
            if s >= 0 && u32(s) < p.lin { acc = acc + w[wrow + k] * x[xrow + u32(s)]; }
        }
    }
    out[p.off_out + idx] = acc;
}

// dx[b, i, s] = sum over outputs o of i's group and taps k with t*stride - pad + k = s.
@compute @workgroup_size(256)
fn conv1d_bwd_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = lin(gid, nwg);
    if idx >= p.batch * p.cin * p.lin { return; }
    let s = idx % p.lin;
    let i = (idx / p.lin) % p.cin;
    let b = idx / (p.lin * p.cin);
    let cig = p.cin / p.groups;
    let cog = p.cout / p.groups;
    let g = i / cig;
    let il = i % cig;
    var acc = 0.0;
    for (var k = 0u; k < p.k; k = k + 1u) {
        let num = i32(s + p.pad) - i32(k);
        if num < 0 || u32(num) % p.stride != 0u { continue; }
        let t = u32(num) / p.stride;
        if t >= p.lout { continue; }
        for (var ol = 0u; ol < cog; ol = ol + 1u) {
            let o = g * cog + ol;
            acc = acc + w[(o * cig + il) * p.k + k] * aux[p.off_aux + (b * p.cout + o) * p.lout + t];
        }
    }
    out[p.off_out + idx] = acc;
}

// dw[o, i, k] = sum_{b, t} dy[b, o, t] * x[b, g*cig + i, t*stride - pad + k].
@compute @workgroup_size(256)
fn conv1d_bwd_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cig = p.cin / p.groups;
    let idx = lin(gid, nwg);
    if idx >= p.cout * cig * p.k { return; }
    let k = idx % p.k;
    let il = (idx / p.k) % cig;
    let o = idx / (p.k * cig);
    let g = o / (p.cout / p.groups);
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        let xrow = p.off_x + (b * p.cin + g * cig + il) * p.lin;
        let dyrow = p.off_aux + (b * p.cout + o) * p.lout;
        for (var t = 0u; t < p.lout; t = t + 1u) {
            let s = i32(t * p.stride + k) - i32(p.pad);
            if s >= 0 && u32(s) < p.lin { acc = acc + aux[dyrow + t] * x[xrow + u32(s)]; }
        }
    }
    if p.accum == 1u { acc = acc + out[idx]; }
    out[idx] = acc;
}

@compute @workgroup_size(256)
fn conv1d_bwd_bias(@builtin(global_invocation_id) gid: vec3<u32>) {
    let o = gid.x;
    if o >= p.cout { return; }
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b = b + 1u) {
        let row = p.off_aux + (b * p.cout + o) * p.lout;
        for (var t = 0u; t < p.lout; t = t + 1u) { acc = acc + aux[row + t]; }
    }
    if p.accum == 1u { acc = acc + out[o]; }
    out[o] = acc;
}
