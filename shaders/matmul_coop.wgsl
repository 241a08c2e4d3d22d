// Tensor-core GEMM through cooperative matrices (WGSL's `wgpu_cooperative_matrix`, Vulkan's
// VK_KHR_cooperative_matrix): C = op(A) op(B) (+ bias) with f16 A and B and f32 C, the products
// accumulated in f32 by the GPU's matrix units. The `--fp16` path's GEMMs run here where the
// adapter offers 16x16x16 f16 -> f32 matrices at a subgroup size of 32.
//
// One workgroup is one subgroup of 32 lanes and computes a 64x64 tile of C as 4x4 16x16
// accumulators, loading its A and B fragments straight from storage (L1 serves the reuse
// between neighbouring workgroups). coopLoadT reads a row-major fragment, coopLoad a
// column-major one, so a transposed operand is only a different load: the host builds one
// variant per transpose combination by setting TA and TB below (engine::pipelines, `matmul_coop_XY`).
//
// The host sends only shapes this kernel serves (`ops::matmul::coop_fits`): M, N >= 64; every
// fragment row 16-byte aligned (the leading dimension of each operand, its offsets and batch
// strides multiples of 8); no accumulating into C. Edge tiles are shifted inward so that they end at M or N: they overlap
// their neighbour and write the same values there. K's tail (below 16) is staged through workgroup memory, zero-padded.
enable f16;
enable wgpu_cooperative_matrix;

const TA: bool = false;
const TB: bool = false;

// `struct Params` (binding 0) is written in by the loader from `MatmulParams` in src/ops/matmul/mod.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> tail_a: array<f16, 1024>;   // 64 rows x 16 k, row-major
var<workgroup> tail_b: array<f16, 1024>;   // 16 k x 64 columns, row-major
var<workgroup> bias_t: array<f32, 1024>;   // 4 column tiles of 16 x 16, each row the bias

fn elem_a(base: u32, row: u32, k: u32) -> f16 {
    if TA { return a[base + k * p.m + row]; }
    return a[base + row * p.k + k];
}

fn elem_b(base: u32, k: u32, col: u32) -> f16 {
    if TB { return b[base + col * p.k + k]; }
    return b[base + k * p.n + col];
}

@compute @workgroup_size(32)
fn matmul_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let batch = wid.z;
    let row0 = min(wid.y * 64u, p.m - 64u);
    let col0 = min(wid.x * 64u, p.n - 64u);
    let abase = p.off_a + batch * p.stride_a;
    let bbase = p.off_b + batch * p.stride_b;
    let lda = select(p.k, p.m, TA);
    let ldb = select(p.n, p.k, TB);

    for (var i = lane; i < 1024u; i = i + 32u) {
        if (p.has_bias & 1u) != 0u {
            bias_t[i] = bias[col0 + (i / 256u) * 16u + i % 16u];
        } else {
            bias_t[i] = 0.0;
        }
    }
    workgroupBarrier();
    var c00 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[0u], 16u);
    var c01 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[256u], 16u);
    var c02 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[512u], 16u);
    var c03 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[768u], 16u);
    var c10 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[0u], 16u);
    var c11 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[256u], 16u);
    var c12 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[512u], 16u);
    var c13 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[768u], 16u);
    var c20 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[0u], 16u);
    var c21 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[256u], 16u);
    var c22 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[512u], 16u);
    var c23 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[768u], 16u);
    var c30 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[0u], 16u);
    var c31 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[256u], 16u);
    var c32 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[512u], 16u);
    var c33 = coopLoadT<coop_mat16x16<f32, C>>(&bias_t[768u], 16u);

    let kfull = p.k - p.k % 16u;
    for (var k = 0u; k < kfull; k = k + 16u) {
        var a0: coop_mat16x16<f16, A>;
        if TA {
            a0 = coopLoad<coop_mat16x16<f16, A>>(&a[abase + k * p.m + row0 + 0u], lda);
        } else {
            a0 = coopLoadT<coop_mat16x16<f16, A>>(&a[abase + (row0 + 0u) * p.k + k], lda);
        }
        var a1: coop_mat16x16<f16, A>;
        if TA {
            a1 = coopLoad<coop_mat16x16<f16, A>>(&a[abase + k * p.m + row0 + 16u], lda);
        } else {
            a1 = coopLoadT<coop_mat16x16<f16, A>>(&a[abase + (row0 + 16u) * p.k + k], lda);
        }
        var a2: coop_mat16x16<f16, A>;
        if TA {
            a2 = coopLoad<coop_mat16x16<f16, A>>(&a[abase + k * p.m + row0 + 32u], lda);
        } else {
            a2 = coopLoadT<coop_mat16x16<f16, A>>(&a[abase + (row0 + 32u) * p.k + k], lda);
        }
        var a3: coop_mat16x16<f16, A>;
        if TA {
            a3 = coopLoad<coop_mat16x16<f16, A>>(&a[abase + k * p.m + row0 + 48u], lda);
        } else {
            a3 = coopLoadT<coop_mat16x16<f16, A>>(&a[abase + (row0 + 48u) * p.k + k], lda);
        }
        var b0: coop_mat16x16<f16, B>;
        if TB {
            b0 = coopLoad<coop_mat16x16<f16, B>>(&b[bbase + (col0 + 0u) * p.k + k], ldb);
        } else {
            b0 = coopLoadT<coop_mat16x16<f16, B>>(&b[bbase + k * p.n + col0 + 0u], ldb);
        }
        var b1: coop_mat16x16<f16, B>;
        if TB {
            b1 = coopLoad<coop_mat16x16<f16, B>>(&b[bbase + (col0 + 16u) * p.k + k], ldb);
        } else {
            b1 = coopLoadT<coop_mat16x16<f16, B>>(&b[bbase + k * p.n + col0 + 16u], ldb);
        }
        var b2: coop_mat16x16<f16, B>;
        if TB {
            b2 = coopLoad<coop_mat16x16<f16, B>>(&b[bbase + (col0 + 32u) * p.k + k], ldb);
        } else {
            b2 = coopLoadT<coop_mat16x16<f16, B>>(&b[bbase + k * p.n + col0 + 32u], ldb);
        }
        var b3: coop_mat16x16<f16, B>;
        if TB {
            b3 = coopLoad<coop_mat16x16<f16, B>>(&b[bbase + (col0 + 48u) * p.k + k], ldb);
        } else {
            b3 = coopLoadT<coop_mat16x16<f16, B>>(&b[bbase + k * p.n + col0 + 48u], ldb);
        }
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

    if kfull < p.k {
        for (var i = lane; i < 1024u; i = i + 32u) {
            let kk = i % 16u;
            let r = i / 16u;
            let inside = kfull + kk < p.k;
            tail_a[i] = select(f16(0.0), elem_a(abase, row0 + r, min(kfull + kk, p.k - 1u)), inside);
            let kb = i / 64u;
            let cc = i % 64u;
            let inside_b = kfull + kb < p.k;
            tail_b[i] = select(f16(0.0), elem_b(bbase, min(kfull + kb, p.k - 1u), col0 + cc), inside_b);
        }
        workgroupBarrier();
        let ta0 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[0u], 16u);
        let ta1 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[256u], 16u);
        let ta2 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[512u], 16u);
        let ta3 = coopLoadT<coop_mat16x16<f16, A>>(&tail_a[768u], 16u);
        let tb0 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[0u], 64u);
        let tb1 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[16u], 64u);
        let tb2 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[32u], 64u);
        let tb3 = coopLoadT<coop_mat16x16<f16, B>>(&tail_b[48u], 64u);
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

    // naga 30 needs the index and stride of coopStore as named values.
    let ldc = p.n;
    let cbase = p.off_c + batch * p.stride_c + row0 * p.n + col0;
    let i00 = cbase + 0u * p.n + 0u;
    coopStoreT(c00, &c[i00], ldc);
    let i01 = cbase + 0u * p.n + 16u;
    coopStoreT(c01, &c[i01], ldc);
    let i02 = cbase + 0u * p.n + 32u;
    coopStoreT(c02, &c[i02], ldc);
    let i03 = cbase + 0u * p.n + 48u;
    coopStoreT(c03, &c[i03], ldc);
    let i10 = cbase + 16u * p.n + 0u;
    coopStoreT(c10, &c[i10], ldc);
    let i11 = cbase + 16u * p.n + 16u;
    coopStoreT(c11, &c[i11], ldc);
    let i12 = cbase + 16u * p.n + 32u;
    coopStoreT(c12, &c[i12], ldc);
    let i13 = cbase + 16u * p.n + 48u;
    coopStoreT(c13, &c[i13], ldc);
    let i20 = cbase + 32u * p.n + 0u;
    coopStoreT(c20, &c[i20], ldc);
    let i21 = cbase + 32u * p.n + 16u;
    coopStoreT(c21, &c[i21], ldc);
    let i22 = cbase + 32u * p.n + 32u;
    coopStoreT(c22, &c[i22], ldc);
    let i23 = cbase + 32u * p.n + 48u;
    coopStoreT(c23, &c[i23], ldc);
    let i30 = cbase + 48u * p.n + 0u;
    coopStoreT(c30, &c[i30], ldc);
    let i31 = cbase + 48u * p.n + 16u;
    coopStoreT(c31, &c[i31], ldc);
    let i32 = cbase + 48u * p.n + 32u;
    coopStoreT(c32, &c[i32], ldc);
    let i33 = cbase + 48u * p.n + 48u;
    coopStoreT(c33, &c[i33], ldc);
}
