// Batched matrix multiply C[b] = op(A[b]) * op(B[b]) (+ bias), op = optional transpose.
// A is [M,K] (or [K,M] when trans_a), B is [K,N] (or [N,K] when trans_b), all row-major.
// The backward pass is this same kernel with other transpose flags (dA = dC op(B)^T,
// dB = op(A)^T dC) plus reduce.wgsl's `sum_axis` for the bias (the column sums of dC).
//
// `matmul_nn/nt/tn/tt`: the tiled kernel below, one entry per transpose combination.
// When the output has too few tiles to fill a large GPU, K is split into slices whose partial
// products `splitk_sum` adds (split-K). `matmul_naive`: one thread per output, the baseline
// the benchmark compares against.
//
// Mixed precision: the `matmul_f16` build of this file (engine::pipelines) reads A and B as f16 and
// converts as it loads, so the tiles, the FMAs and C stay f32 (f16 inputs, f32 accumulation,
// as tensor-core GEMMs do). Bias and C are f32 in both builds.

alias In = f32;

// `struct Params` (binding 0) is written in by the loader from `MatmulParams` in src/ops/matmul/mod.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<In>;   // scalar build
@group(0) @binding(2) var<storage, read> b: array<In>;   // scalar build
//v4 @group(0) @binding(1) var<storage, read> a: array<vec4<In>>;
//v4 @group(0) @binding(2) var<storage, read> b: array<vec4<In>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read_write> sums: array<f32>;

// The `matmul_v4` build (engine::pipelines: the `//v4` lines replace those marked "scalar
// build") binds A and B as vec4 arrays, for shapes whose every operand row, offset and batch
// stride is a multiple of 4 elements (ops::matmul::v4_fits): the tiled kernel's fetches of
// 4 consecutive elements then are one 16-byte load (8 bytes in f16) with one bounds check.
// Every read of A and B goes through these four functions.
const V4: bool = false;   // scalar build
//v4 const V4: bool = true;

// Element i of A (of B).
fn a_at(i: u32) -> f32 { return f32(a[i]); }   // scalar build
fn b_at(i: u32) -> f32 { return f32(b[i]); }   // scalar build
//v4 fn a_at(i: u32) -> f32 { return f32(a[i / 4u][i % 4u]); }
//v4 fn b_at(i: u32) -> f32 { return f32(b[i / 4u][i % 4u]); }

// Elements i..i+4 of A (of B); i is a multiple of 4 in the v4 build.
fn a_at4(i: u32) -> vec4<f32> { return vec4<f32>(a_at(i), a_at(i + 1u), a_at(i + 2u), a_at(i + 3u)); }   // scalar build
fn b_at4(i: u32) -> vec4<f32> { return vec4<f32>(b_at(i), b_at(i + 1u), b_at(i + 2u), b_at(i + 3u)); }   // scalar build
//v4 fn a_at4(i: u32) -> vec4<f32> { return vec4<f32>(a[i / 4u]); }
//v4 fn b_at4(i: u32) -> vec4<f32> { return vec4<f32>(b[i / 4u]); }

fn load_a(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.m || col >= p.k { return 0.0; }
    let base = p.off_a + batch * p.stride_a;
    if p.trans_a == 1u { return a_at(base + col * p.m + row); }
    return a_at(base + row * p.k + col);
}

fn load_b(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.k || col >= p.n { return 0.0; }
    let base = p.off_b + batch * p.stride_b;
    if p.trans_b == 1u { return b_at(base + col * p.k + row); }
    return b_at(base + row * p.n + col);
}

// The tiled kernel: a 128x128 tile of C per workgroup of 256 threads, each thread 8x8 outputs
// (rows ty*4..+4 and 64+ty*4..+4, the same for columns, so its workgroup-memory reads are
// four vec4 per k and conflict-free), K walked 8 at a time through two workgroup buffers:
// the next slab is fetched from global memory into registers while the current one is
// multiplied, then stored into the other buffer, so there is one barrier per slab.
// The `matmul_k16` build (engine::pipelines) walks K 16 at a time: half the barriers and slab
// turns per FMA, two fetches of each operand in flight a thread, twice the workgroup memory.
const TILE: u32 = 128u;
const BK: u32 = 8u;
const SLAB: u32 = BK * 32u;   // vec4 per buffer: BK rows of TILE/4
const KV: u32 = BK / 4u;   // vec4 along K in a row of the slab
// [buffer][k][m/4] and [buffer][k][n/4].
var<workgroup> As: array<vec4<f32>, 2u * SLAB>;
var<workgroup> Bs: array<vec4<f32>, 2u * SLAB>;

// The A element (row, k) of this batch item, zero outside [m, kend). `ta` is a constant in
// each entry point, so the branch folds away.
fn ga(base: u32, row: u32, k: u32, kend: u32, ta: bool) -> f32 {
    if row >= p.m || k >= kend { return 0.0; }
    if ta { return a_at(base + k * p.m + row); }
    return a_at(base + row * p.k + k);
}

fn gb(base: u32, k: u32, col: u32, kend: u32, tb: bool) -> f32 {
    if col >= p.n || k >= kend { return 0.0; }
    if tb { return b_at(base + col * p.k + k); }
    return b_at(base + k * p.n + col);
}

// Vec4 q of one slab (a thread takes q = tid, and tid + 256 when BK = 16): 4 values of A or
// of B, read along memory's contiguous direction (k for a row-major A, m for a transposed
// one; likewise for B).
fn fetch_a(base: u32, row0: u32, k0: u32, kend: u32, q: u32, ta: bool) -> vec4<f32> {
    if ta {
        let k = k0 + q / 32u;
        let r = row0 + (q % 32u) * 4u;
        if V4 {
            if r < p.m && k < kend { return a_at4(base + k * p.m + r); }
            return vec4<f32>(0.0);
        }
        return vec4<f32>(ga(base, r, k, kend, ta), ga(base, r + 1u, k, kend, ta),
                         ga(base, r + 2u, k, kend, ta), ga(base, r + 3u, k, kend, ta));
    }
    let r = row0 + q / KV;
    let k = k0 + (q % KV) * 4u;
    if V4 {
        if r < p.m && k < kend { return a_at4(base + r * p.k + k); }
        return vec4<f32>(0.0);
    }
    return vec4<f32>(ga(base, r, k, kend, ta), ga(base, r, k + 1u, kend, ta),
                     ga(base, r, k + 2u, kend, ta), ga(base, r, k + 3u, kend, ta));
}

fn fetch_b(base: u32, col0: u32, k0: u32, kend: u32, q: u32, tb: bool) -> vec4<f32> {
    if tb {
        let c = col0 + q / KV;
        let k = k0 + (q % KV) * 4u;
        if V4 {
            if c < p.n && k < kend { return b_at4(base + c * p.k + k); }
            return vec4<f32>(0.0);
        }
        return vec4<f32>(gb(base, k, c, kend, tb), gb(base, k + 1u, c, kend, tb),
                         gb(base, k + 2u, c, kend, tb), gb(base, k + 3u, c, kend, tb));
    }
    let k = k0 + q / 32u;
    let c = col0 + (q % 32u) * 4u;
    if V4 {
        if c < p.n && k < kend { return b_at4(base + k * p.n + c); }
        return vec4<f32>(0.0);
    }
    return vec4<f32>(gb(base, k, c, kend, tb), gb(base, k, c + 1u, kend, tb),
                     gb(base, k, c + 2u, kend, tb), gb(base, k, c + 3u, kend, tb));
}

fn stash_a(buf: u32, v: vec4<f32>, q: u32, ta: bool) {
    if ta {
        As[buf * SLAB + q] = v;
        return;
    }
    let r = q / KV;
    let k = (q % KV) * 4u;
    let at = buf * SLAB + r / 4u;
    As[at + k * 32u][r % 4u] = v.x;
    As[at + (k + 1u) * 32u][r % 4u] = v.y;
    As[at + (k + 2u) * 32u][r % 4u] = v.z;
    As[at + (k + 3u) * 32u][r % 4u] = v.w;
}

fn stash_b(buf: u32, v: vec4<f32>, q: u32, tb: bool) {
    if !tb {
        Bs[buf * SLAB + q] = v;
        return;
    }
    let c = q / KV;
    let k = (q % KV) * 4u;
    let at = buf * SLAB + c / 4u;
    Bs[at + k * 32u][c % 4u] = v.x;
    Bs[at + (k + 1u) * 32u][c % 4u] = v.y;
    Bs[at + (k + 2u) * 32u][c % 4u] = v.z;
    Bs[at + (k + 3u) * 32u][c % 4u] = v.w;
}

fn gemm(lid: vec3<u32>, wid: vec3<u32>, ta: bool, tb: bool) {
    let batch = wid.z / p.splits;
    let slice = wid.z % p.splits;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    let kbeg = slice * p.k_slice;
    let kend = min(p.k, kbeg + p.k_slice);
    let abase = p.off_a + batch * p.stride_a;
    let bbase = p.off_b + batch * p.stride_b;
    // [row i][column half j] at 2i + j (see outer8x8 in common.wgsl).
    var acc = array<vec4<f32>, 16>();
    // A linear layer's bias gradient rides on its weight gradient (dW = dYᵀX, db = the row
    // sums of dYᵀ): the first column of tiles adds up the A slabs it stages anyway, 4 rows
    // per thread.
    let row_sums = (p.has_bias & 4u) != 0u && wid.x == 0u && tid < 32u;
    var rsum = vec4<f32>(0.0);

    // The second vec4 of each operand a thread fetches when BK = 16 (a constant: the
    // branches on it fold away).
    let q2 = tid + 256u;
    stash_a(0u, fetch_a(abase, row0, kbeg, kend, tid, ta), tid, ta);
    stash_b(0u, fetch_b(bbase, col0, kbeg, kend, tid, tb), tid, tb);
    if BK > 8u {
        stash_a(0u, fetch_a(abase, row0, kbeg, kend, q2, ta), q2, ta);
        stash_b(0u, fetch_b(bbase, col0, kbeg, kend, q2, tb), q2, tb);
    }
    workgroupBarrier();
    var buf = 0u;
    for (var k0 = kbeg; k0 < kend; k0 = k0 + BK) {
        let more = k0 + BK < kend;
        var na = vec4<f32>(0.0);
        var nb = vec4<f32>(0.0);
        var na2 = vec4<f32>(0.0);
        var nb2 = vec4<f32>(0.0);
        if more {
            na = fetch_a(abase, row0, k0 + BK, kend, tid, ta);
            nb = fetch_b(bbase, col0, k0 + BK, kend, tid, tb);
            if BK > 8u {
                na2 = fetch_a(abase, row0, k0 + BK, kend, q2, ta);
                nb2 = fetch_b(bbase, col0, k0 + BK, kend, q2, tb);
            }
        }
        let s = buf * SLAB;
        if row_sums {
            for (var k = 0u; k < BK; k = k + 1u) { rsum = rsum + As[s + k * 32u + tid]; }
        }
        for (var k = 0u; k < BK; k = k + 1u) {
            let a0 = As[s + k * 32u + lid.y];
            let a1 = As[s + k * 32u + 16u + lid.y];
            let b0 = Bs[s + k * 32u + lid.x];
            let b1 = Bs[s + k * 32u + 16u + lid.x];
            outer8x8(a0, a1, b0, b1, &acc);
        }
        if more {
            stash_a(1u - buf, na, tid, ta);
            stash_b(1u - buf, nb, tid, tb);
            if BK > 8u {
                stash_a(1u - buf, na2, q2, ta);
                stash_b(1u - buf, nb2, q2, tb);
            }
        }
        workgroupBarrier();
        buf = 1u - buf;
    }

    // Split-K slices write raw partial products to their own part of the workspace (bound
    // as C); `splitk_sum` adds them up with the bias.
    let cbase = p.off_c + batch * p.stride_c + slice * p.slice_stride;
    let r = row0 + lid.y * 4u;
    let col = col0 + lid.x * 4u;
    put_row(cbase, r, col, acc[0], acc[1]);
    put_row(cbase, r + 1u, col, acc[2], acc[3]);
    put_row(cbase, r + 2u, col, acc[4], acc[5]);
    put_row(cbase, r + 3u, col, acc[6], acc[7]);
    put_row(cbase, r + 64u, col, acc[8], acc[9]);
    put_row(cbase, r + 65u, col, acc[10], acc[11]);
    put_row(cbase, r + 66u, col, acc[12], acc[13]);
    put_row(cbase, r + 67u, col, acc[14], acc[15]);
    if row_sums {
        // Split-K slices leave theirs after their partial C, for `splitk_sum`.
        for (var j = 0u; j < 4u; j = j + 1u) {
            let r = row0 + tid * 4u + j;
            if r >= p.m { break; }
            if p.splits > 1u { c[cbase + p.m * p.n + r] = rsum[j]; } else { put_sum(r, rsum[j]); }
        }
    }
}

// Writes (or, with bit 3, adds) one row sum of op(A).
fn put_sum(row: u32, x: f32) {
    if (p.has_bias & 8u) != 0u { sums[row] = sums[row] + x; } else { sums[row] = x; }
}

// Writes one thread's 8 outputs of one row: columns col..col+4 and col+64..col+68.
fn put_row(cbase: u32, row: u32, col: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if row >= p.m { return; }
    put(cbase, row, col, lo.x);
    put(cbase, row, col + 1u, lo.y);
    put(cbase, row, col + 2u, lo.z);
    put(cbase, row, col + 3u, lo.w);
    put(cbase, row, col + 64u, hi.x);
    put(cbase, row, col + 65u, hi.y);
    put(cbase, row, col + 66u, hi.z);
    put(cbase, row, col + 67u, hi.w);
}

fn put(cbase: u32, row: u32, col: u32, x: f32) {
    if col >= p.n { return; }
    var v = x;
    if (p.has_bias & 1u) != 0u { v = v + bias[col]; }
    let ci = cbase + row * p.n + col;
    if (p.has_bias & 2u) != 0u { v = v + c[ci]; }
    c[ci] = v;
}

// One entry point per transpose combination (nn: neither, tn: A transposed, ...), chosen on
// the host, so no load carries a runtime transpose branch.
@compute @workgroup_size(16, 16)
fn matmul_nn(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    gemm(lid, wid, false, false);
}

@compute @workgroup_size(16, 16)
fn matmul_nt(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    gemm(lid, wid, false, true);
}

@compute @workgroup_size(16, 16)
fn matmul_tn(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    gemm(lid, wid, true, false);
}

@compute @workgroup_size(16, 16)
fn matmul_tt(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    gemm(lid, wid, true, true);
}

// C = sum of the split-K partials (bound as A, f32 build only: [splits][batch * m * n]) + bias
// (+ C when accumulating). One thread per output element.
@compute @workgroup_size(256)
fn splitk_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    let total = p.slice_stride;
    if i >= total { return; }
    var v = 0.0;
    for (var s = 0u; s < p.splits; s = s + 1u) { v = v + a_at(s * total + i); }
    let mn = p.m * p.n;
    if (p.has_bias & 4u) != 0u && i >= mn { put_sum(i - mn, v); return; }
    if (p.has_bias & 1u) != 0u { v = v + bias[i % p.n]; }
    let ci = p.off_c + i;
    if (p.has_bias & 2u) != 0u { v = v + c[ci]; }
    c[ci] = v;
}

// The previous design, kept to compare against (`XLSR_GEMM=tiled64`): a 64x64 tile per
// workgroup, 4x4 outputs per thread, runtime transpose flags, one workgroup buffer.
const BK64: u32 = 16u;
// As64[k][m/4] and Bs64[k][n/4]: 16 rows of 64 floats each, as vec4.
var<workgroup> As64: array<vec4<f32>, 256>;
var<workgroup> Bs64: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn matmul_tiled64(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let batch = wid.z;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i = i + 1u) { acc[i] = vec4<f32>(0.0); }

    // Each thread stages one vec4 of A (4 rows at one k) and one vec4 of B (4 cols at one k).
    let lk = tid / 16u;          // 0..15: k within the tile
    let l4 = (tid % 16u) * 4u;   // 0..60: first of 4 rows (A) / cols (B)
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK64) {
        let kk = k0 + lk;
        As64[lk * 16u + tid % 16u] = vec4<f32>(
            load_a(batch, row0 + l4, kk), load_a(batch, row0 + l4 + 1u, kk),
            load_a(batch, row0 + l4 + 2u, kk), load_a(batch, row0 + l4 + 3u, kk));
        Bs64[lk * 16u + tid % 16u] = vec4<f32>(
            load_b(batch, kk, col0 + l4), load_b(batch, kk, col0 + l4 + 1u),
            load_b(batch, kk, col0 + l4 + 2u), load_b(batch, kk, col0 + l4 + 3u));
        workgroupBarrier();
        for (var k = 0u; k < BK64; k = k + 1u) {
            outer4(As64[k * 16u + lid.y], Bs64[k * 16u + lid.x], &acc);
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
