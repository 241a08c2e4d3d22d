// 1-D convolution with stride, zero padding, groups and bias (PyTorch's Conv1d):
//   y[b, o, t] = bias[o] + sum_{i in group(o), k} w[o, i, k] * x[b, i, t * stride - pad + k]
// x [B, Cin, Lin], w [Cout, Cin/groups, K], y [B, Cout, Lout]. Forward and the three
// backward passes (input and weight through one implicit-GEMM kernel, bias) side by side.
// `accum` adds into the output so a batch processed in chunks sums its weight gradients.

// `struct Params` (binding 0) is written in by the loader from `Conv1dParams` in src/ops/conv.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;   // bias (fwd) or dy (bwd)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;


// Forward and the input / weight gradients are each an implicit GEMM, C = A * B over a
// reduction index r, with the im2col matrix never materialised: its entries are computed from
// x (or dy) as the tiles are loaded. `p.mode` picks the formulation:
//   0 forward, per (b, g):   y[o, t]  = sum_{r=(i,k)} w[o, i, k]  * x[i, t*stride - pad + k]
//   1 input grad, per (b, g): dx[i, s] = sum_{r=(o,k)} w[o, i, k]  * dy[o, (s + pad - k) / stride]
//                              (only where the division is exact and in range)
//   2 weight grad, per g:     dw[o, (i,k)] = sum_{r=(b,t)} dy[b, o, t] * x[b, i, t*stride - pad + k]
// Two builds of the tiling, chosen on the host by the output's size (ops::conv): `conv1d_gemm`,
// a 64x64 tile of C per workgroup, 4x4 per thread, r walked 16 at a time through workgroup
// memory (matmul_tiled64's core, `outer4`); and `conv1d_gemm128`, matmul.wgsl's tiled core: a
// 128x128 tile, 8x8 per thread (`outer8x8`), r walked 8 at a time through two workgroup
// buffers, the next slab fetched while the current one is multiplied.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;
var<workgroup> As2: array<vec4<f32>, 512>;   // [buffer][r][m/4]
var<workgroup> Bs2: array<vec4<f32>, 512>;   // [buffer][r][n/4]

struct Gemm {
    m: u32,
    n: u32,
    r: u32,   // end of this workgroup's reduction range
    b: u32,   // batch element (modes 0, 1)
    g: u32,   // group
    r0: u32,  // start of the reduction range
    s: u32,   // mode 2: which split (its partial sums go to their own slice of out)
}

fn cig() -> u32 { return p.cin / p.groups; }
fn cog() -> u32 { return p.cout / p.groups; }

fn load_a(q: Gemm, m: u32, r: u32) -> f32 {
    if m >= q.m || r >= q.r { return 0.0; }
    if p.mode == 0u {
        return w[(q.g * cog() + m) * q.r + r];
    }
    if p.mode == 1u {
        let o = r / p.k;
        return w[((q.g * cog() + o) * cig() + m) * p.k + r % p.k];
    }
    let b = r / p.lout;
    return aux[p.off_aux + (b * p.cout + q.g * cog() + m) * p.lout + r % p.lout];
}

fn load_b(q: Gemm, r: u32, n: u32) -> f32 {
    if r >= q.r || n >= q.n { return 0.0; }
    if p.mode == 0u {
        let s = i32(n * p.stride + r % p.k) - i32(p.pad);
        if s < 0 || u32(s) >= p.lin { return 0.0; }
        return x[p.off_x + (q.b * p.cin + q.g * cig() + r / p.k) * p.lin + u32(s)];
    }
    if p.mode == 1u {
        let num = i32(n + p.pad) - i32(r % p.k);
        if num < 0 || u32(num) % p.stride != 0u { return 0.0; }
        let t = u32(num) / p.stride;
        if t >= p.lout { return 0.0; }
        return aux[p.off_aux + (q.b * p.cout + q.g * cog() + r / p.k) * p.lout + t];
    }
    let b = r / p.lout;
    let s = i32((r % p.lout) * p.stride + n % p.k) - i32(p.pad);
    if s < 0 || u32(s) >= p.lin { return 0.0; }
    return x[p.off_x + (b * p.cin + q.g * cig() + n / p.k) * p.lin + u32(s)];
}

fn store(q: Gemm, m: u32, n: u32, acc: f32) {
    if p.mode == 0u {
        let o = q.g * cog() + m;
        var v = acc;
        if p.has_bias == 1u { v = v + aux[o]; }
        out[p.off_out + (q.b * p.cout + o) * p.lout + n] = v;
    } else if p.mode == 1u {
        out[p.off_out + (q.b * p.cin + q.g * cig() + m) * p.lin + n] = acc;
    } else {
        let i = q.s * p.cout * q.n + (q.g * cog() + m) * q.n + n;
        var v = acc;
        if p.accum == 1u { v = v + out[i]; }
        out[i] = v;
    }
}

// The GEMM that workgroup z computes in this mode.
fn gemm_of(z: u32) -> Gemm {
    if p.mode == 0u {
        return Gemm(cog(), p.lout, cig() * p.k, z / p.groups, z % p.groups, 0u, 0u);
    }
    if p.mode == 1u {
        return Gemm(cig(), p.lin, cog() * p.k, z / p.groups, z % p.groups, 0u, 0u);
    }
    // The reduction runs over every (b, t): split it so that small weights still get
    // enough workgroups. Ranges are multiples of 16, the deeper of the two tiles' steps.
    let total = p.batch * p.lout;
    let s = z % p.splits;
    let per = ((total + p.splits - 1u) / p.splits + 15u) / 16u * 16u;
    return Gemm(cog(), cig() * p.k, min(total, (s + 1u) * per), 0u, z / p.splits, s * per, s);
}

@compute @workgroup_size(16, 16)
fn conv1d_gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = gemm_of(wid.z);
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }
    let lk = tid / 16u;
    let l4 = (tid % 16u) * 4u;
    for (var k0 = q.r0; k0 < q.r; k0 = k0 + 16u) {
        let kk = k0 + lk;
        As[lk * 16u + tid % 16u] = vec4<f32>(
            load_a(q, row0 + l4, kk), load_a(q, row0 + l4 + 1u, kk),
            load_a(q, row0 + l4 + 2u, kk), load_a(q, row0 + l4 + 3u, kk));
        Bs[lk * 16u + tid % 16u] = vec4<f32>(
            load_b(q, kk, col0 + l4), load_b(q, kk, col0 + l4 + 1u),
            load_b(q, kk, col0 + l4 + 2u), load_b(q, kk, col0 + l4 + 3u));
        workgroupBarrier();
        for (var k = 0u; k < 16u; k = k + 1u) {
            outer4(As[k * 16u + lid.y], Bs[k * 16u + lid.x], &acc);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = row0 + lid.y * 4u + i;
        if m >= q.m { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let n = col0 + lid.x * 4u + j;
            if n >= q.n { continue; }
            store(q, m, n, acc[i][j]);
        }
    }
}

// This thread's share of one slab of the 128 build: 4 consecutive r of one row of A (the
// direction the weights and dy are contiguous in), and 4 consecutive columns of one r of B.
fn fetch_a128(q: Gemm, row0: u32, r0: u32, tid: u32) -> vec4<f32> {
    let m = row0 + tid / 2u;
    let r = r0 + (tid % 2u) * 4u;
    return vec4<f32>(load_a(q, m, r), load_a(q, m, r + 1u), load_a(q, m, r + 2u), load_a(q, m, r + 3u));
}

fn fetch_b128(q: Gemm, col0: u32, r0: u32, tid: u32) -> vec4<f32> {
    let r = r0 + tid / 32u;
    let n = col0 + (tid % 32u) * 4u;
    return vec4<f32>(load_b(q, r, n), load_b(q, r, n + 1u), load_b(q, r, n + 2u), load_b(q, r, n + 3u));
}

// Stores a slab share: A transposed into [r][m/4], B as it came.
fn stash128(buf: u32, va: vec4<f32>, vb: vec4<f32>, tid: u32) {
    let m = tid / 2u;
    let r = (tid % 2u) * 4u;
    let at = buf * 256u + m / 4u;
    As2[at + r * 32u][m % 4u] = va.x;
    As2[at + (r + 1u) * 32u][m % 4u] = va.y;
    As2[at + (r + 2u) * 32u][m % 4u] = va.z;
    As2[at + (r + 3u) * 32u][m % 4u] = va.w;
    Bs2[buf * 256u + tid] = vb;
}

// One thread's 8 outputs of row m: columns n..n+4 and n+64..n+68.
fn store8(q: Gemm, m: u32, n: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if m >= q.m { return; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        if n + j < q.n { store(q, m, n + j, lo[j]); }
        if n + 64u + j < q.n { store(q, m, n + 64u + j, hi[j]); }
    }
}

@compute @workgroup_size(16, 16)
fn conv1d_gemm128(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let q = gemm_of(wid.z);
    let row0 = wid.y * 128u;
    let col0 = wid.x * 128u;
    let tid = lid.y * 16u + lid.x;
    var acc = array<vec4<f32>, 16>();
    stash128(0u, fetch_a128(q, row0, q.r0, tid), fetch_b128(q, col0, q.r0, tid), tid);
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = q.r0; k0 < q.r; k0 = k0 + 8u) {
        let more = k0 + 8u < q.r;
        var na = vec4<f32>(0.0);
        var nb = vec4<f32>(0.0);
        if more {
            na = fetch_a128(q, row0, k0 + 8u, tid);
            nb = fetch_b128(q, col0, k0 + 8u, tid);
        }
        let s = buf * 256u;
        for (var k = 0u; k < 8u; k = k + 1u) {
            outer8x8(As2[s + k * 32u + lid.y], As2[s + k * 32u + 16u + lid.y],
                     Bs2[s + k * 32u + lid.x], Bs2[s + k * 32u + 16u + lid.x], &acc);
        }
        if more { stash128(1u - buf, na, nb, tid); }
        workgroupBarrier();
        buf = 1u - buf;
    }
    let m = row0 + lid.y * 4u;
    let n = col0 + lid.x * 4u;
    store8(q, m, n, acc[0], acc[1]);
    store8(q, m + 1u, n, acc[2], acc[3]);
    store8(q, m + 2u, n, acc[4], acc[5]);
    store8(q, m + 3u, n, acc[6], acc[7]);
    store8(q, m + 64u, n, acc[8], acc[9]);
    store8(q, m + 65u, n, acc[10], acc[11]);
    store8(q, m + 66u, n, acc[12], acc[13]);
    store8(q, m + 67u, n, acc[14], acc[15]);
}

var<workgroup> red: array<f32, 256>;

// dbias[o] = the sum of dy[b, o, t] over b and t: a workgroup per channel, its threads over
// consecutive frames (a thread per channel would walk 8 x 249 elements alone: 4 workgroups
// for the positional conv's 1024 channels).
@compute @workgroup_size(256)
fn conv1d_bwd_bias(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = wid.x + wid.y * nwg.x;
    let lid = lid3.x;
    var acc = 0.0;
    if o < p.cout {
        for (var b = 0u; b < p.batch; b = b + 1u) {
            let row = p.off_aux + (b * p.cout + o) * p.lout;
            for (var t = lid; t < p.lout; t = t + 256u) { acc = acc + aux[row + t]; }
        }
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    if lid != 0u || o >= p.cout { return; }
    var total = red[0];
    if p.accum == 1u { total = total + out[o]; }
    out[o] = total;
}
