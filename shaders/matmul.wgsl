// Batched matrix multiply C[b] = op(A[b]) * op(B[b]) (+ bias), op = optional transpose.
// A is [M,K] (or [K,M] when trans_a), B is [K,N] (or [N,K] when trans_b), all row-major.
// The backward pass is this same kernel with other transpose flags (dA = dC op(B)^T,
// dB = op(A)^T dC) plus reduce.wgsl's `sum_axis` for the bias (the column sums of dC).
//
// `matmul_tiled`: a 64x64 output tile per workgroup of 16x16 threads, 4x4 outputs per thread
// held in registers, K walked in steps of 16 through workgroup memory stored as vec4 so the
// inner loop is two vec4 loads and sixteen FMAs. `matmul_naive`: one thread per output, the
// baseline the benchmark compares against.
//
// Mixed precision: the `matmul_f16` build of this file (gpu.rs) reads A and B as f16 and
// converts as it loads, so the tiles, the FMAs and C stay f32 (f16 inputs, f32 accumulation,
// as tensor-core GEMMs do). Bias and C are f32 in both builds.

alias In = f32;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,   // bit 0: add bias; bit 1: add into C (split-K slices after the first)
    stride_a: u32,   // batch strides in elements (0 = shared across the batch)
    stride_b: u32,
    stride_c: u32,
    off_a: u32,      // element offsets of this chunk within its (aligned-down) binding
    off_b: u32,
    off_c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<In>;
@group(0) @binding(2) var<storage, read> b: array<In>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn load_a(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.m || col >= p.k { return 0.0; }
    let base = p.off_a + batch * p.stride_a;
    if p.trans_a == 1u { return f32(a[base + col * p.m + row]); }
    return f32(a[base + row * p.k + col]);
}

fn load_b(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.k || col >= p.n { return 0.0; }
    let base = p.off_b + batch * p.stride_b;
    if p.trans_b == 1u { return f32(b[base + col * p.k + row]); }
    return f32(b[base + row * p.n + col]);
}

const BK: u32 = 16u;
// As[k][m/4] and Bs[k][n/4]: 16 rows of 64 floats each, as vec4.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let batch = wid.z;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }

    // Each thread stages one vec4 of A (4 rows at one k) and one vec4 of B (4 cols at one k).
    let lk = tid / 16u;          // 0..15: k within the tile
    let l4 = (tid % 16u) * 4u;   // 0..60: first of 4 rows (A) / cols (B)
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        let kk = k0 + lk;
        As[lk * 16u + tid % 16u] = vec4<f32>(
            load_a(batch, row0 + l4, kk), load_a(batch, row0 + l4 + 1u, kk),
            load_a(batch, row0 + l4 + 2u, kk), load_a(batch, row0 + l4 + 3u, kk));
        Bs[lk * 16u + tid % 16u] = vec4<f32>(
            load_b(batch, kk, col0 + l4), load_b(batch, kk, col0 + l4 + 1u),
            load_b(batch, kk, col0 + l4 + 2u), load_b(batch, kk, col0 + l4 + 3u));
        workgroupBarrier();
        for (var k = 0u; k < BK; k = k + 1u) {
            let av = As[k * 16u + lid.y];
            let bv = Bs[k * 16u + lid.x];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        workgroupBarrier();
    }

    let cbase = p.off_c + batch * p.stride_c;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + lid.y * 4u + i;
        if row >= p.m { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x * 4u + j;
            if col >= p.n { continue; }
            var v = acc[i][j];
            if (p.has_bias & 1u) != 0u { v = v + bias[col]; }
            if (p.has_bias & 2u) != 0u { v = v + c[cbase + row * p.n + col]; }
            c[cbase + row * p.n + col] = v;
        }
    }
}

@compute @workgroup_size(16, 16)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    let row = gid.y;
    let batch = gid.z;
    if row >= p.m || col >= p.n { return; }
    var acc = 0.0;
    for (var k = 0u; k < p.k; k = k + 1u) {
        acc = acc + load_a(batch, row, k) * load_b(batch, k, col);
    }
    if (p.has_bias & 1u) != 0u { acc = acc + bias[col]; }
    let ci = p.off_c + batch * p.stride_c + row * p.n + col;
    if (p.has_bias & 2u) != 0u { acc = acc + c[ci]; }
    c[ci] = acc;
}
