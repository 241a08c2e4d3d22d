// The tensor-core GEMM staged through workgroup memory (see matmul_coop.wgsl for the matrix
// types, the fragment size F, the subgroup size S and the transpose variants): a workgroup of
// 4 subgroups computes a W x W tile of C (W = 8F: 128 for F = 16), each subgroup 4F x 4F as
// 4x4 accumulators. The `_wide` build (engine::pipelines) has 8 subgroups, each 2F x 4F as
// 2x4 accumulators: half the registers a lane, twice the subgroups to hide latency with. K advances 2F at a time: the workgroup copies the W x 2F slab of A and
// the 2F x W slab of B into workgroup memory with 16-byte loads (A and B are bound as
// vec4<u32>, 8 f16 each; zeros past M, N and K), and every subgroup reads its fragments from
// there, so each element leaves device memory once per workgroup. The next slab's loads are
// issued before the current slab's products, so they are in flight while the matrix units
// work. The accumulators start at the bias. Tiles inside M and N are stored straight to C;
// edge tiles go out through a per-subgroup F x F scratch, element by element. Needs 16-byte aligned rows (`coop_fits`, M and N
// of any size) and 1, 2 or 4 chunks of a slab per thread (`coop_staged_fits`).
enable f16;
enable wgpu_cooperative_matrix;

const TA: bool = false;
const TB: bool = false;
const F: u32 = 16u;   // fragment size
const S: u32 = 32u;   // subgroup size
const W: u32 = 8u * F;   // the tile of C, W x W
const BK: u32 = 2u * F;   // K per slab
const SG_ROWS: u32 = 2u;   // subgroups down the tile (2 columns of them across)
const AR: u32 = 8u / SG_ROWS;   // accumulator rows per subgroup: 4, or 2 in the wide build
const THREADS: u32 = 2u * SG_ROWS * S;
// Chunks of 8 f16 per thread per slab of A (and of B): 2F^2 chunks over the threads.
const CH: u32 = W * BK / 8u / THREADS;
const KC: u32 = BK / 8u;   // chunks along a slab row of BK
const WC: u32 = W / 8u;   // chunks along a slab row of W

// `struct Params` (binding 0) is written in by the loader from `MatmulParams` in src/ops/matmul/mod.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// Slab row strides in f16: a row of BK k or of W m (n), padded by 8 (16 bytes). A fragment
// load reads 8 rows of 16 bytes at a time; unpadded rows 64 or 256 bytes apart (F = 16) would
// put them in the same 4 of the 32 banks (4-way and 8-way conflicts), padded ones fall in 8
// different groups of 4. Both stay multiples of 16 bytes, as cooperative loads require.
const SK: u32 = BK + 8u;
const SW: u32 = W + 8u;
// A slab: [W m][SK] (row-major A) or [BK k][SW] (transposed A); B: [BK k][SW] or [W n][SK].
// W * SK is the larger of the two.
// Held as vec4<f16> (8 bytes): a chunk goes in with two stores instead of eight, and the
// fragment loads read through vector pointers, so the driver sees wide accesses on both
// sides (NVIDIA's cooperative-matrix sample keeps its slabs as 16-byte words; naga types a
// cooperative load by its pointer's scalar, so ours must be f16). Offsets and strides are
// then in vec4s: SK / 4, SW / 4.
var<workgroup> sa: array<vec4<f16>, W * SK / 4u>;
var<workgroup> sb: array<vec4<f16>, W * SK / 4u>;
var<workgroup> scratch: array<f32, 2u * SG_ROWS * F * F>;   // one F x F tile per subgroup

// Eight f16 starting at element `e` (a multiple of 8), or zeros.
fn chunk_a(e: u32, inside: bool) -> vec4<u32> {
    if inside { return a[e / 8u]; }
    return vec4<u32>(0u);
}

fn chunk_b(e: u32, inside: bool) -> vec4<u32> {
    if inside { return b[e / 8u]; }
    return vec4<u32>(0u);
}

// Chunk q of the A slab at k0: 8 f16 along memory's contiguous direction (m for a
// transposed A, k otherwise). Rows are multiples of 8 long, so a chunk is inside or out whole.
fn src_a(q: u32, abase: u32, row0: u32, k0: u32, kend: u32) -> vec4<u32> {
    if TA {
        let k = k0 + q / WC;
        let m = row0 + (q % WC) * 8u;
        return chunk_a(abase + k * p.m + m, k < kend && m < p.m);
    }
    let m = row0 + q / KC;
    let k = k0 + (q % KC) * 8u;
    return chunk_a(abase + m * p.k + k, m < p.m && k < kend);
}

fn src_b(q: u32, bbase: u32, col0: u32, k0: u32, kend: u32) -> vec4<u32> {
    if TB {
        let n = col0 + q / KC;
        let k = k0 + (q % KC) * 8u;
        return chunk_b(bbase + n * p.k + k, n < p.n && k < kend);
    }
    let k = k0 + q / WC;
    let n = col0 + (q % WC) * 8u;
    return chunk_b(bbase + k * p.n + n, k < kend && n < p.n);
}

// Where chunk q goes in its slab.
fn dst_a(q: u32) -> u32 {
    if TA { return (q / WC) * SW + (q % WC) * 8u; }
    return (q / KC) * SK + (q % KC) * 8u;
}

fn dst_b(q: u32) -> u32 {
    if TB { return (q / KC) * SK + (q % KC) * 8u; }
    return (q / WC) * SW + (q % WC) * 8u;
}

// Two u32 as the 4 f16 they hold (naga 30 has no bit cast from u32 to f16 vectors; f16 ->
// f32 -> f16 is exact).
fn halves(x: u32, y: u32) -> vec4<f16> {
    return vec4<f16>(vec2<f16>(unpack2x16float(x)), vec2<f16>(unpack2x16float(y)));
}

// A chunk of 8 f16 (as 4 u32) into a slab at f16 offset `dst`, a multiple of 8.
fn put_a(dst: u32, v: vec4<u32>) {
    sa[dst / 4u] = halves(v.x, v.y);
    sa[dst / 4u + 1u] = halves(v.z, v.w);
}

fn put_b(dst: u32, v: vec4<u32>) {
    sb[dst / 4u] = halves(v.x, v.y);
    sb[dst / 4u + 1u] = halves(v.z, v.w);
}

// A lane's CH chunks of a slab of A (or of B), in registers: only constants index it (an
// index from a loop counter would move it to local memory), and CH is a constant, so the
// branches on it fold away.
alias Chunks = array<vec4<u32>, 4>;

// This lane's chunks of the slabs at k0, which the next slab's products overlap.
fn fetch(lane: u32, abase: u32, bbase: u32, row0: u32, col0: u32, k0: u32, kend: u32,
         pa: ptr<function, Chunks>, pb: ptr<function, Chunks>) {
    (*pa)[0] = src_a(lane, abase, row0, k0, kend);
    (*pb)[0] = src_b(lane, bbase, col0, k0, kend);
    if CH > 1u {
        (*pa)[1] = src_a(lane + THREADS, abase, row0, k0, kend);
        (*pb)[1] = src_b(lane + THREADS, bbase, col0, k0, kend);
    }
    if CH > 2u {
        (*pa)[2] = src_a(lane + 2u * THREADS, abase, row0, k0, kend);
        (*pb)[2] = src_b(lane + 2u * THREADS, bbase, col0, k0, kend);
        (*pa)[3] = src_a(lane + 3u * THREADS, abase, row0, k0, kend);
        (*pb)[3] = src_b(lane + 3u * THREADS, bbase, col0, k0, kend);
    }
}

// This lane's chunks into the slabs.
fn put_chunks(lane: u32, pa: ptr<function, Chunks>, pb: ptr<function, Chunks>) {
    put_a(dst_a(lane), (*pa)[0]);
    put_b(dst_b(lane), (*pb)[0]);
    if CH > 1u {
        put_a(dst_a(lane + THREADS), (*pa)[1]);
        put_b(dst_b(lane + THREADS), (*pb)[1]);
    }
    if CH > 2u {
        put_a(dst_a(lane + 2u * THREADS), (*pa)[2]);
        put_b(dst_b(lane + 2u * THREADS), (*pb)[2]);
        put_a(dst_a(lane + 3u * THREADS), (*pa)[3]);
        put_b(dst_b(lane + 3u * THREADS), (*pb)[3]);
    }
}

// Fragment of A at slab row r (m), slab column kk: F rows x F k.
// r, col and kk are multiples of F (>= 8), so every fragment starts on a vec4.
fn frag_a(r: u32, kk: u32) -> coop_mat16x16<f16, A> {
    if TA { return coopLoad<coop_mat16x16<f16, A>>(&sa[(kk * SW + r) / 4u], SW / 4u); }
    return coopLoadT<coop_mat16x16<f16, A>>(&sa[(r * SK + kk) / 4u], SK / 4u);
}

fn frag_b(col: u32, kk: u32) -> coop_mat16x16<f16, B> {
    if TB { return coopLoad<coop_mat16x16<f16, B>>(&sb[(col * SK + kk) / 4u], SK / 4u); }
    return coopLoadT<coop_mat16x16<f16, B>>(&sb[(kk * SW + col) / 4u], SW / 4u);
}

// The bias of columns col..col + F as an accumulator (each row the bias), built in the
// subgroup's scratch tile. Columns past N repeat the last one; they are never written.
fn bias_frag(sg: u32, sl: u32, col: u32) -> coop_mat16x16<f32, C> {
    let at = sg * F * F;
    for (var e = sl; e < F * F; e = e + S) {
        scratch[at + e] = bias[min(col + e % F, p.n - 1u)];
    }
    workgroupBarrier();
    let m = coopLoadT<coop_mat16x16<f32, C>>(&scratch[at], F);
    workgroupBarrier();
    return m;
}

// One accumulator straight to C (the tile lies inside M and N and overwrites C).
fn put(m: coop_mat16x16<f32, C>, row: u32, col: u32, cbase: u32) {
    // naga 30 needs the index and stride of coopStore as named values.
    let at = cbase + row * p.n + col;
    let ld = p.n;
    coopStoreT(m, &c[at], ld);
}

// One accumulator through the subgroup's scratch tile, element by element: the M/N edges,
// and adding into C.
fn emit(m: coop_mat16x16<f32, C>, sg: u32, sl: u32, row: u32, col: u32, cbase: u32) {
    let at = sg * F * F;
    let ld = F;
    coopStoreT(m, &scratch[at], ld);
    workgroupBarrier();
    for (var e = sl; e < F * F; e = e + S) {
        let r = row + e / F;
        let cc = col + e % F;
        if r < p.m && cc < p.n {
            var v = scratch[at + e];
            let ci = cbase + r * p.n + cc;
            if (p.has_bias & 2u) != 0u { v = v + c[ci]; }
            c[ci] = v;
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(THREADS)
fn matmul_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Split K as in matmul_coop.wgsl: z is batch * splits + slice, a slice covers K from
    // kbeg to kend and writes its own part of the workspace.
    let batch = wid.z / p.splits;
    let slice = wid.z % p.splits;
    let kbeg = slice * p.k_slice;
    let kend = max(kbeg, min(p.k, kbeg + p.k_slice));   // a slice past K is empty
    let row0 = wid.y * W;
    let col0 = wid.x * W;
    // Subgroups are S consecutive invocations (the host builds this file for the adapter's
    // one subgroup size), laid out SG_ROWS x 2 over the tile.
    let sg = lane / S;
    let sl = lane % S;
    let r0 = (sg / 2u) * AR * F;
    let c0 = (sg % 2u) * 4u * F;
    let abase = (p.off_a + batch * p.stride_a);
    let bbase = (p.off_b + batch * p.stride_b);

    // The accumulators start at the bias (the same for every row of a column).
    var c00 = coop_mat16x16<f32, C>();
    var c01 = c00;
    var c02 = c00;
    var c03 = c00;
    if (p.has_bias & 1u) != 0u {
        c00 = bias_frag(sg, sl, col0 + c0);
        c01 = bias_frag(sg, sl, col0 + c0 + F);
        c02 = bias_frag(sg, sl, col0 + c0 + 2u * F);
        c03 = bias_frag(sg, sl, col0 + c0 + 3u * F);
    }
    var c10 = c00;
    var c11 = c01;
    var c12 = c02;
    var c13 = c03;
    var c20 = c00;
    var c21 = c01;
    var c22 = c02;
    var c23 = c03;
    var c30 = c00;
    var c31 = c01;
    var c32 = c02;
    var c33 = c03;
    var pa: Chunks;
    var pb: Chunks;
    fetch(lane, abase, bbase, row0, col0, kbeg, kend, &pa, &pb);
    for (var k0 = kbeg; k0 < kend; k0 = k0 + BK) {
        put_chunks(lane, &pa, &pb);
        workgroupBarrier();
        if k0 + BK < kend {
            fetch(lane, abase, bbase, row0, col0, k0 + BK, kend, &pa, &pb);
        }
        for (var kk = 0u; kk < BK; kk = kk + F) {
            let a0 = frag_a(r0, kk);
            let a1 = frag_a(r0 + F, kk);
            let b0 = frag_b(c0, kk);
            let b1 = frag_b(c0 + F, kk);
            let b2 = frag_b(c0 + 2u * F, kk);
            let b3 = frag_b(c0 + 3u * F, kk);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
            if AR > 2u {
                let a2 = frag_a(r0 + 2u * F, kk);
                let a3 = frag_a(r0 + 3u * F, kk);
                c20 = coopMultiplyAdd(a2, b0, c20);
                c21 = coopMultiplyAdd(a2, b1, c21);
                c22 = coopMultiplyAdd(a2, b2, c22);
                c23 = coopMultiplyAdd(a2, b3, c23);
                c30 = coopMultiplyAdd(a3, b0, c30);
                c31 = coopMultiplyAdd(a3, b1, c31);
                c32 = coopMultiplyAdd(a3, b2, c32);
                c33 = coopMultiplyAdd(a3, b3, c33);
            }
        }
        workgroupBarrier();
    }

    let cbase = p.off_c + batch * p.stride_c + slice * p.slice_stride;
    let r = row0 + r0;
    let col = col0 + c0;
    // Whole tiles that overwrite C store straight to it; the others go element by element.
    if row0 + W <= p.m && col0 + W <= p.n && (p.has_bias & 2u) == 0u {
        put(c00, r, col, cbase);
        put(c01, r, col + F, cbase);
        put(c02, r, col + 2u * F, cbase);
        put(c03, r, col + 3u * F, cbase);
        put(c10, r + F, col, cbase);
        put(c11, r + F, col + F, cbase);
        put(c12, r + F, col + 2u * F, cbase);
        put(c13, r + F, col + 3u * F, cbase);
        if AR > 2u {
            put(c20, r + 2u * F, col, cbase);
            put(c21, r + 2u * F, col + F, cbase);
            put(c22, r + 2u * F, col + 2u * F, cbase);
            put(c23, r + 2u * F, col + 3u * F, cbase);
            put(c30, r + 3u * F, col, cbase);
            put(c31, r + 3u * F, col + F, cbase);
            put(c32, r + 3u * F, col + 2u * F, cbase);
            put(c33, r + 3u * F, col + 3u * F, cbase);
        }
    } else {
        emit(c00, sg, sl, r, col, cbase);
        emit(c01, sg, sl, r, col + F, cbase);
        emit(c02, sg, sl, r, col + 2u * F, cbase);
        emit(c03, sg, sl, r, col + 3u * F, cbase);
        emit(c10, sg, sl, r + F, col, cbase);
        emit(c11, sg, sl, r + F, col + F, cbase);
        emit(c12, sg, sl, r + F, col + 2u * F, cbase);
        emit(c13, sg, sl, r + F, col + 3u * F, cbase);
        if AR > 2u {
            emit(c20, sg, sl, r + 2u * F, col, cbase);
            emit(c21, sg, sl, r + 2u * F, col + F, cbase);
            emit(c22, sg, sl, r + 2u * F, col + 2u * F, cbase);
            emit(c23, sg, sl, r + 2u * F, col + 3u * F, cbase);
            emit(c30, sg, sl, r + 3u * F, col, cbase);
            emit(c31, sg, sl, r + 3u * F, col + F, cbase);
            emit(c32, sg, sl, r + 3u * F, col + 2u * F, cbase);
            emit(c33, sg, sl, r + 3u * F, col + 3u * F, cbase);
        }
    }
}
