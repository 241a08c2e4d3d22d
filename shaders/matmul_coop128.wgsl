// The tensor-core GEMM staged through workgroup memory (see matmul_coop.wgsl for the matrix
// types and the transpose variants): a workgroup of 4 subgroups computes a 128x128 tile of C,
// each subgroup 64x64 as 4x4 16x16 accumulators. K advances 32 at a time: the workgroup copies
// the 128x32 slab of A and the 32x128 slab of B into workgroup memory with 16-byte loads (A
// and B are bound as vec4<u32>, 8 f16 each; zeros past M, N and K), and every subgroup reads
// its fragments from there, so each element leaves device memory once per workgroup. The next
// slab's loads are issued before the current slab's products, so they are in flight while the
// matrix units work. Results go out through a per-subgroup 16x16 scratch, where bias,
// accumulation and the M/N edges are handled element by element. Needs 16-byte aligned rows
// (`coop_fits`, M and N of any size).
enable f16;
enable wgpu_cooperative_matrix;

const TA: bool = false;
const TB: bool = false;

// `struct Params` (binding 0) is written in by the loader from `MatmulParams` in src/ops/matmul/mod.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Slab row strides in f16: a row of 32 k or of 128 m (n), padded by 8 (16 bytes). A fragment
// load reads 8 rows of 16 bytes at a time; unpadded rows 64 or 256 bytes apart would put them
// in the same 4 of the 32 banks (4-way and 8-way conflicts), padded ones fall in 8 different
// groups of 4. Both stay multiples of 16 bytes, as cooperative loads require.
const SK: u32 = 40u;
const SW: u32 = 136u;
// A slab: [128 m][SK] (row-major A) or [32 k][SW] (transposed A); B: [32 k][SW] or [128 n][SK].
var<workgroup> sa: array<f16, 5120>;
var<workgroup> sb: array<f16, 5120>;
var<workgroup> scratch: array<f32, 1024>;   // one 16x16 tile per subgroup

// Eight f16 starting at element `e` (a multiple of 8), or zeros.
fn chunk_a(e: u32, inside: bool) -> vec4<u32> {
    if inside { return a[e / 8u]; }
    return vec4<u32>(0u);
}

fn chunk_b(e: u32, inside: bool) -> vec4<u32> {
    if inside { return b[e / 8u]; }
    return vec4<u32>(0u);
}

// Chunk q (of 512) of the A slab at k0: 8 f16 along memory's contiguous direction (m for a
// transposed A, k otherwise). Rows are multiples of 8 long, so a chunk is inside or out whole.
fn src_a(q: u32, abase: u32, row0: u32, k0: u32) -> vec4<u32> {
    if TA {
        let k = k0 + q / 16u;
        let m = row0 + (q % 16u) * 8u;
        return chunk_a(abase + k * p.m + m, k < p.k && m < p.m);
    }
    let m = row0 + q / 4u;
    let k = k0 + (q % 4u) * 8u;
    return chunk_a(abase + m * p.k + k, m < p.m && k < p.k);
}

fn src_b(q: u32, bbase: u32, col0: u32, k0: u32) -> vec4<u32> {
    if TB {
        let n = col0 + q / 4u;
        let k = k0 + (q % 4u) * 8u;
        return chunk_b(bbase + n * p.k + k, n < p.n && k < p.k);
    }
    let k = k0 + q / 16u;
    let n = col0 + (q % 16u) * 8u;
    return chunk_b(bbase + k * p.n + n, k < p.k && n < p.n);
}

// Where chunk q goes in its slab.
fn dst_a(q: u32) -> u32 {
    if TA { return (q / 16u) * SW + (q % 16u) * 8u; }
    return (q / 4u) * SK + (q % 4u) * 8u;
}

fn dst_b(q: u32) -> u32 {
    if TB { return (q / 4u) * SK + (q % 4u) * 8u; }
    return (q / 16u) * SW + (q % 16u) * 8u;
}

fn put8(dst: u32, v: vec4<u32>, is_a: bool) {
    let h0 = vec2<f16>(unpack2x16float(v.x));
    let h1 = vec2<f16>(unpack2x16float(v.y));
    let h2 = vec2<f16>(unpack2x16float(v.z));
    let h3 = vec2<f16>(unpack2x16float(v.w));
    if is_a {
        sa[dst] = h0.x; sa[dst + 1u] = h0.y; sa[dst + 2u] = h1.x; sa[dst + 3u] = h1.y;
        sa[dst + 4u] = h2.x; sa[dst + 5u] = h2.y; sa[dst + 6u] = h3.x; sa[dst + 7u] = h3.y;
    } else {
        sb[dst] = h0.x; sb[dst + 1u] = h0.y; sb[dst + 2u] = h1.x; sb[dst + 3u] = h1.y;
        sb[dst + 4u] = h2.x; sb[dst + 5u] = h2.y; sb[dst + 6u] = h3.x; sb[dst + 7u] = h3.y;
    }
}

// Fragment (i, kk) of A for the subgroup's rows r0: 16 rows x 16 k from the slab.
fn frag_a(r: u32, kk: u32) -> coop_mat16x16<f16, A> {
    if TA { return coopLoad<coop_mat16x16<f16, A>>(&sa[kk * SW + r], SW); }
    return coopLoadT<coop_mat16x16<f16, A>>(&sa[r * SK + kk], SK);
}

fn frag_b(col: u32, kk: u32) -> coop_mat16x16<f16, B> {
    if TB { return coopLoad<coop_mat16x16<f16, B>>(&sb[col * SK + kk], SK); }
    return coopLoadT<coop_mat16x16<f16, B>>(&sb[kk * SW + col], SW);
}

// Writes one accumulator through the subgroup's scratch tile: bias, accumulate, edges.
fn emit(sg: u32, sl: u32, row: u32, col: u32, cbase: u32) {
    for (var e = sl; e < 256u; e = e + 32u) {
        let r = row + e / 16u;
        let cc = col + e % 16u;
        if r < p.m && cc < p.n {
            var v = scratch[sg * 256u + e];
            if (p.has_bias & 1u) != 0u { v = v + bias[cc]; }
            let ci = cbase + r * p.n + cc;
            if (p.has_bias & 2u) != 0u { v = v + c[ci]; }
            c[ci] = v;
        }
    }
}

@compute @workgroup_size(128)
fn matmul_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let batch = wid.z;
    let row0 = wid.y * 128u;
    let col0 = wid.x * 128u;
    // Subgroups are 32 consecutive invocations (the host requires a subgroup size of 32).
    let sg = lane / 32u;
    let sl = lane % 32u;
    let r0 = (sg / 2u) * 64u;
    let c0 = (sg % 2u) * 64u;
    let abase = (p.off_a + batch * p.stride_a);
    let bbase = (p.off_b + batch * p.stride_b);

    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>();
    var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>();
    var c13 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>();
    var c21 = coop_mat16x16<f32, C>();
    var c22 = coop_mat16x16<f32, C>();
    var c23 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>();
    var c31 = coop_mat16x16<f32, C>();
    var c32 = coop_mat16x16<f32, C>();
    var c33 = coop_mat16x16<f32, C>();
    // Each lane's 4 chunks of A and 4 of B, held in named registers (an array indexed by a
    // loop counter would be moved to local memory).
    var pa0 = src_a(lane, abase, row0, 0u);
    var pa1 = src_a(lane + 128u, abase, row0, 0u);
    var pa2 = src_a(lane + 256u, abase, row0, 0u);
    var pa3 = src_a(lane + 384u, abase, row0, 0u);
    var pb0 = src_b(lane, bbase, col0, 0u);
    var pb1 = src_b(lane + 128u, bbase, col0, 0u);
    var pb2 = src_b(lane + 256u, bbase, col0, 0u);
    var pb3 = src_b(lane + 384u, bbase, col0, 0u);
    for (var k0 = 0u; k0 < p.k; k0 = k0 + 32u) {
        put8(dst_a(lane), pa0, true);
        put8(dst_a(lane + 128u), pa1, true);
        put8(dst_a(lane + 256u), pa2, true);
        put8(dst_a(lane + 384u), pa3, true);
        put8(dst_b(lane), pb0, false);
        put8(dst_b(lane + 128u), pb1, false);
        put8(dst_b(lane + 256u), pb2, false);
        put8(dst_b(lane + 384u), pb3, false);
        workgroupBarrier();
        let kn = k0 + 32u;
        if kn < p.k {
            pa0 = src_a(lane, abase, row0, kn);
            pa1 = src_a(lane + 128u, abase, row0, kn);
            pa2 = src_a(lane + 256u, abase, row0, kn);
            pa3 = src_a(lane + 384u, abase, row0, kn);
            pb0 = src_b(lane, bbase, col0, kn);
            pb1 = src_b(lane + 128u, bbase, col0, kn);
            pb2 = src_b(lane + 256u, bbase, col0, kn);
            pb3 = src_b(lane + 384u, bbase, col0, kn);
        }
        for (var kk = 0u; kk < 32u; kk = kk + 16u) {
            let a0 = frag_a(r0 + 0u, kk);
            let a1 = frag_a(r0 + 16u, kk);
            let a2 = frag_a(r0 + 32u, kk);
            let a3 = frag_a(r0 + 48u, kk);
            let b0 = frag_b(c0 + 0u, kk);
            let b1 = frag_b(c0 + 16u, kk);
            let b2 = frag_b(c0 + 32u, kk);
            let b3 = frag_b(c0 + 48u, kk);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
            c20 = coopMultiplyAdd(a2, b0, c20);
            c21 = coopMultiplyAdd(a2, b1, c21);
            c22 = coopMultiplyAdd(a2, b2, c22);
            c23 = coopMultiplyAdd(a2, b3, c23);
            c30 = coopMultiplyAdd(a3, b0, c30);
            c31 = coopMultiplyAdd(a3, b1, c31);
            c32 = coopMultiplyAdd(a3, b2, c32);
            c33 = coopMultiplyAdd(a3, b3, c33);
        }
        workgroupBarrier();
    }

    // naga 30 needs the index and stride of coopStore as named values.
    let cbase = p.off_c + batch * p.stride_c;
    let at = sg * 256u;
    let ld = 16u;
    coopStoreT(c00, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 0u, col0 + c0 + 0u, cbase);
    workgroupBarrier();
    coopStoreT(c01, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 0u, col0 + c0 + 16u, cbase);
    workgroupBarrier();
    coopStoreT(c02, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 0u, col0 + c0 + 32u, cbase);
    workgroupBarrier();
    coopStoreT(c03, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 0u, col0 + c0 + 48u, cbase);
    workgroupBarrier();
    coopStoreT(c10, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 16u, col0 + c0 + 0u, cbase);
    workgroupBarrier();
    coopStoreT(c11, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 16u, col0 + c0 + 16u, cbase);
    workgroupBarrier();
    coopStoreT(c12, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 16u, col0 + c0 + 32u, cbase);
    workgroupBarrier();
    coopStoreT(c13, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 16u, col0 + c0 + 48u, cbase);
    workgroupBarrier();
    coopStoreT(c20, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 32u, col0 + c0 + 0u, cbase);
    workgroupBarrier();
    coopStoreT(c21, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 32u, col0 + c0 + 16u, cbase);
    workgroupBarrier();
    coopStoreT(c22, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 32u, col0 + c0 + 32u, cbase);
    workgroupBarrier();
    coopStoreT(c23, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 32u, col0 + c0 + 48u, cbase);
    workgroupBarrier();
    coopStoreT(c30, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 48u, col0 + c0 + 0u, cbase);
    workgroupBarrier();
    coopStoreT(c31, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 48u, col0 + c0 + 16u, cbase);
    workgroupBarrier();
    coopStoreT(c32, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 48u, col0 + c0 + 32u, cbase);
    workgroupBarrier();
    coopStoreT(c33, &scratch[at], ld);
    workgroupBarrier();
    emit(sg, sl, row0 + r0 + 48u, col0 + c0 + 48u, cbase);
    workgroupBarrier();
}
