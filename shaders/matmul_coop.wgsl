// Tensor-core GEMM through cooperative matrices (WGSL's `wgpu_cooperative_matrix`, Vulkan's
// VK_KHR_cooperative_matrix, Metal's simdgroup matrices): C = op(A) op(B) (+ bias) with f16 A
// and B and f32 C, the products accumulated in f32 by the GPU's matrix units. The `--fp16`
// path's GEMMs run here where the adapter offers F x F x F f16 -> f32 matrices (F = 16 or 8)
// at one fixed subgroup size S; the loader writes both into the `const F` and `const S` lines
// below (and the matrix type's size), from what `engine::coop_shape` found.
//
// One workgroup is one subgroup and computes a 4F x 4F tile of C (64x64 for F = 16) as 4x4
// accumulators, loading its A and B fragments straight from storage (L1 serves the reuse
// between neighbouring workgroups). coopLoadT reads a row-major fragment, coopLoad a
// column-major one, so a transposed operand is only a different load: the host builds one
// variant per transpose combination by setting TA and TB below (engine::pipelines, `matmul_coop_XY`).
//
// The host sends only shapes this kernel serves (`ops::matmul::coop_fits`): M, N >= 64; every
// fragment row 16-byte aligned (the leading dimension of each operand, its offsets and batch
// strides multiples of 8); no accumulating into C. Edge tiles are shifted inward so that they
// end at M or N: they overlap their neighbour and write the same values there. K's tail
// (below F) is staged through workgroup memory, zero-padded.
enable f16;
enable wgpu_cooperative_matrix;

const TA: bool = false;
const TB: bool = false;
const F: u32 = 16u;   // fragment size
const S: u32 = 32u;   // subgroup size
const T: u32 = 4u * F;   // the tile: 4 fragments a side
const FF: u32 = F * F;

// `struct Params` (binding 0) is written in by the loader from `MatmulParams` in src/ops/matmul/mod.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
// A, B and C bound as vectors: fragment loads and stores go through 8- and 16-byte pointers,
// so the driver sees wide accesses (NVIDIA's cooperative-matrix sample loads through 16-byte
// words; naga types a cooperative load by its pointer's scalar, so ours stay f16 and f32).
// `coop_fits` makes every fragment start on a vector: offsets, rows and batch strides of A
// and B are multiples of 8 f16, those of C multiples of 4 f32.
@group(0) @binding(1) var<storage, read> a: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

var<workgroup> tail_a: array<f16, 4u * FF>;   // T rows x F k, row-major
var<workgroup> tail_b: array<f16, 4u * FF>;   // F k x T columns, row-major
var<workgroup> bias_t: array<f32, 4u * FF>;   // 4 column tiles of F x F, each row the bias

fn elem_a(base: u32, row: u32, k: u32) -> f16 {
    var e = base + row * p.k + k;
    if TA { e = base + k * p.m + row; }
    return a[e / 4u][e % 4u];
}

fn elem_b(base: u32, k: u32, col: u32) -> f16 {
    var e = base + k * p.n + col;
    if TB { e = base + col * p.k + k; }
    return b[e / 4u][e % 4u];
}

// Fragment row i (0..4) of A at k: rows row0 + iF.., columns k..k+F.
fn frag_a(abase: u32, row: u32, k: u32) -> coop_mat16x16<f16, A> {
    if TA { return coopLoad<coop_mat16x16<f16, A>>(&a[(abase + k * p.m + row) / 4u], p.m / 4u); }
    return coopLoadT<coop_mat16x16<f16, A>>(&a[(abase + row * p.k + k) / 4u], p.k / 4u);
}

fn frag_b(bbase: u32, k: u32, col: u32) -> coop_mat16x16<f16, B> {
    if TB { return coopLoad<coop_mat16x16<f16, B>>(&b[(bbase + col * p.k + k) / 4u], p.k / 4u); }
    return coopLoadT<coop_mat16x16<f16, B>>(&b[(bbase + k * p.n + col) / 4u], p.n / 4u);
}

@compute @workgroup_size(S)
fn matmul_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Split K: workgroup z is batch * splits + slice, and each slice writes its partial
    // product to its own part of a workspace (`splitk_sum` adds them up; no bias then).
    let batch = wid.z / p.splits;
    let slice = wid.z % p.splits;
    let kbeg = slice * p.k_slice;
    let kend = max(kbeg, min(p.k, kbeg + p.k_slice));   // a slice past K is empty
    let row0 = min(wid.y * T, p.m - T);
    let col0 = min(wid.x * T, p.n - T);
    let abase = p.off_a + batch * p.stride_a;
    let bbase = p.off_b + batch * p.stride_b;

    for (var i = lane; i < 4u * FF; i = i + S) {
        if (p.has_bias & 1u) != 0u {
            bias_t[i] = bias[col0 + (i / FF) * F + i % F];
        } else {
            bias_t[i] = 0.0;
        }
    }
    workgroupBarrier();
    var c00 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[0u], F);
    var c01 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[FF], F);
    var c02 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[2u * FF], F);
    var c03 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[3u * FF], F);
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

    let kfull = kend - (kend - kbeg) % F;
    for (var k = kbeg; k < kfull; k = k + F) {
        let a0 = frag_a(abase, row0, k);
        let a1 = frag_a(abase, row0 + F, k);
        let a2 = frag_a(abase, row0 + 2u * F, k);
        let a3 = frag_a(abase, row0 + 3u * F, k);
        let b0 = frag_b(bbase, k, col0);
        let b1 = frag_b(bbase, k, col0 + F);
        let b2 = frag_b(bbase, k, col0 + 2u * F);
        let b3 = frag_b(bbase, k, col0 + 3u * F);
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

    if kfull < kend {
        for (var i = lane; i < 4u * FF; i = i + S) {
            let kk = i % F;
            let r = i / F;
            let inside = kfull + kk < kend;
            tail_a[i] = select(f16(0.0), elem_a(abase, row0 + r, min(kfull + kk, kend - 1u)), inside);
            let kb = i / T;
            let cc = i % T;
            let inside_b = kfull + kb < kend;
            tail_b[i] = select(f16(0.0), elem_b(bbase, min(kfull + kb, kend - 1u), col0 + cc), inside_b);
        }
        workgroupBarrier();
        let ta0 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[0u], F);
        let ta1 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[FF], F);
        let ta2 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[2u * FF], F);
        let ta3 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[3u * FF], F);
        let tb0 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[0u], T);
        let tb1 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[F], T);
        let tb2 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[2u * F], T);
        let tb3 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[3u * F], T);
        c00 = coopMultiplyAdd(ta0, tb0, c00);
        c01 = coopMultiplyAdd(ta0, tb1, c01);
        c02 = coopMultiplyAdd(ta0, tb2, c02);
        c03 = coopMultiplyAdd(ta0, tb3, c03);
        c10 = coopMultiplyAdd(ta1, tb0, c10);
        c11 = coopMultiplyAdd(ta1, tb1, c11);
        c12 = coopMultiplyAdd(ta1, tb2, c12);
        c13 = coopMultiplyAdd(ta1, tb3, c13);
        c20 = coopMultiplyAdd(ta2, tb0, c20);
        c21 = coopMultiplyAdd(ta2, tb1, c21);
        c22 = coopMultiplyAdd(ta2, tb2, c22);
        c23 = coopMultiplyAdd(ta2, tb3, c23);
        c30 = coopMultiplyAdd(ta3, tb0, c30);
        c31 = coopMultiplyAdd(ta3, tb1, c31);
        c32 = coopMultiplyAdd(ta3, tb2, c32);
        c33 = coopMultiplyAdd(ta3, tb3, c33);
    }

    let cbase = p.off_c + batch * p.stride_c + slice * p.slice_stride + row0 * p.n + col0;
    store(c00, cbase, 0u, 0u);
    store(c01, cbase, 0u, 1u);
    store(c02, cbase, 0u, 2u);
    store(c03, cbase, 0u, 3u);
    store(c10, cbase, 1u, 0u);
    store(c11, cbase, 1u, 1u);
    store(c12, cbase, 1u, 2u);
    store(c13, cbase, 1u, 3u);
    store(c20, cbase, 2u, 0u);
    store(c21, cbase, 2u, 1u);
    store(c22, cbase, 2u, 2u);
    store(c23, cbase, 2u, 3u);
    store(c30, cbase, 3u, 0u);
    store(c31, cbase, 3u, 1u);
    store(c32, cbase, 3u, 2u);
    store(c33, cbase, 3u, 3u);
}

// Accumulator (i, j) of the tile at cbase.
fn store(m: coop_mat16x16<f32, C>, cbase: u32, i: u32, j: u32) {
    // naga 30 needs the index and stride of coopStore as named values.
    let at = (cbase + i * F * p.n + j * F) / 4u;
    let ld = p.n / 4u;
    coopStoreT(m, &c[at], ld);
}
