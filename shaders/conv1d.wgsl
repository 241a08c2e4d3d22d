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

// The forward as an implicit GEMM, per (batch, group): Y[o, t] = W[o, (i, k)] * X[(i, k), t]
// where X[(i, k), t] = x[i, t * stride - pad + k] is never materialised (im2col on the fly).
// Same tiling as matmul.wgsl's `matmul_tiled`: a 64x64 output tile per workgroup, 4x4
// outputs per thread, the reduction walked 16 at a time through workgroup memory.
var<workgroup> Ws: array<vec4<f32>, 256>;
var<workgroup> Xs: array<vec4<f32>, 256>;

fn tile_w(o_base: u32, coutg: u32, red: u32, m: u32, kk: u32) -> f32 {
    if m >= coutg || kk >= red { return 0.0; }
    return w[(o_base + m) * red + kk];
}

fn tile_x(xbase: u32, kk: u32, red: u32, t: u32) -> f32 {
    if kk >= red || t >= p.lout { return 0.0; }
    let i = kk / p.k;
    let s = i32(t * p.stride + kk % p.k) - i32(p.pad);
    if s < 0 || u32(s) >= p.lin { return 0.0; }
    return x[xbase + i * p.lin + u32(s)];
}

@compute @workgroup_size(16, 16)
fn conv1d_fwd_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.z / p.groups;
    let g = wid.z % p.groups;
    let cig = p.cin / p.groups;
    let coutg = p.cout / p.groups;
    let red = cig * p.k;
    let o_base = g * coutg;
    let xbase = p.off_x + (b * p.cin + g * cig) * p.lin;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }
    let lk = tid / 16u;
    let l4 = (tid % 16u) * 4u;
    for (var k0 = 0u; k0 < red; k0 = k0 + 16u) {
        let kk = k0 + lk;
        Ws[lk * 16u + tid % 16u] = vec4<f32>(
            tile_w(o_base, coutg, red, row0 + l4, kk), tile_w(o_base, coutg, red, row0 + l4 + 1u, kk),
            tile_w(o_base, coutg, red, row0 + l4 + 2u, kk), tile_w(o_base, coutg, red, row0 + l4 + 3u, kk));
        Xs[lk * 16u + tid % 16u] = vec4<f32>(
            tile_x(xbase, kk, red, col0 + l4), tile_x(xbase, kk, red, col0 + l4 + 1u),
            tile_x(xbase, kk, red, col0 + l4 + 2u), tile_x(xbase, kk, red, col0 + l4 + 3u));
        workgroupBarrier();
        for (var k = 0u; k < 16u; k = k + 1u) {
            let av = Ws[k * 16u + lid.y];
            let bv = Xs[k * 16u + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = row0 + lid.y * 4u + i;
        if m >= coutg { continue; }
        let o = o_base + m;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let t = col0 + lid.x * 4u + j;
            if t >= p.lout { continue; }
            var v = acc[i][j];
            if p.has_bias == 1u { v = v + aux[o]; }
            out[p.off_out + (b * p.cout + o) * p.lout + t] = v;
        }
    }
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
