// Prelude: the loader puts this in front of every kernel file (after its `enable` lines).
// Helpers only; no bindings, so files that use none of it pay nothing.

// The linear thread index of a 1-D launch of 256-thread workgroups that `grid` spread over x
// and y to stay within the 65535-per-dimension limit.
fn lin(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// f32 bits -> f16 bits, round to nearest even; a magnitude past f16's range, inf or NaN
// becomes +-inf (cast.wgsl says why). pack2x16float is indeterminate out of range, so those
// are decided on the bits first.
fn half_bits(bits: u32) -> u32 {
    let sign = (bits >> 16u) & 0x8000u;
    let mag = bits & 0x7fffffffu;
    // 65520 (0x477ff000) is where round-to-nearest reaches f16 infinity.
    if mag >= 0x477ff000u { return sign | 0x7c00u; }
    return pack2x16float(vec2<f32>(bitcast<f32>(bits), 0.0)) & 0xffffu;
}

// PCG-style hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// The dropout draw of element `i`, uniform in [0, 1): a pure function of (seed, index), so a
// backward pass regenerates the mask, and dropout.wgsl and the fused attention draw the same
// mask for the same index. The hash runs twice to mix in both seed words; its 24 high bits
// make the float.
fn dropout_draw(i: u32, seed_lo: u32, seed_hi: u32) -> f32 {
    let h = pcg(pcg(i ^ seed_lo) + seed_hi);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// exp(s - L): the attention weight of score s in a row of `t` keys whose logsumexp is L, as
// the fused backward kernels recompute it. A row whose every key is masked has scores of
// f32::MIN and L = f32::MIN + ln t, which rounds back to f32::MIN, so exp(s - L) would be 1;
// the forward made that row uniform, so its weights are 1/t.
fn attn_prob(s: f32, lse: f32, t: u32) -> f32 {
    if lse <= -3.40282347e38 { return 1.0 / f32(t); }
    return exp(s - lse);
}

fn attn_prob4(s: vec4<f32>, lse: vec4<f32>, t: u32) -> vec4<f32> {
    return select(exp(s - lse), vec4<f32>(1.0 / f32(t)), lse <= vec4<f32>(-3.40282347e38));
}

// The 64x64 SIMT GEMM core (conv1d_gemm, matmul_tiled64): one k of this thread's 4x4 outputs,
// the outer product of 4 rows of A and 4 columns of B read from the staged tiles. Staging
// and storing differ per kernel; this part is the same.
fn outer4(av: vec4<f32>, bv: vec4<f32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    (*acc)[0] = fma(vec4<f32>(av.x), bv, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(av.y), bv, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(av.z), bv, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(av.w), bv, (*acc)[3]);
}

// The 128x128 SIMT GEMM core (matmul_nn..tt, conv1d_gemm128): one k of this thread's 8x8
// outputs, the outer product of rows a0 (4 rows) and a1 (the 4 rows 64 further) with columns
// b0 and b1 (likewise), read from the staged tiles; acc[2i + j] is row i's column half j.
// Only constants index acc: a dynamic index would make the driver place it in local memory.
fn outer8x8(a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>,
            acc: ptr<function, array<vec4<f32>, 16>>) {
    (*acc)[0] = fma(vec4<f32>(a0.x), b0, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(a0.x), b1, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(a0.y), b0, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(a0.y), b1, (*acc)[3]);
    (*acc)[4] = fma(vec4<f32>(a0.z), b0, (*acc)[4]);
    (*acc)[5] = fma(vec4<f32>(a0.z), b1, (*acc)[5]);
    (*acc)[6] = fma(vec4<f32>(a0.w), b0, (*acc)[6]);
    (*acc)[7] = fma(vec4<f32>(a0.w), b1, (*acc)[7]);
    (*acc)[8] = fma(vec4<f32>(a1.x), b0, (*acc)[8]);
    (*acc)[9] = fma(vec4<f32>(a1.x), b1, (*acc)[9]);
    (*acc)[10] = fma(vec4<f32>(a1.y), b0, (*acc)[10]);
    (*acc)[11] = fma(vec4<f32>(a1.y), b1, (*acc)[11]);
    (*acc)[12] = fma(vec4<f32>(a1.z), b0, (*acc)[12]);
    (*acc)[13] = fma(vec4<f32>(a1.z), b1, (*acc)[13]);
    (*acc)[14] = fma(vec4<f32>(a1.w), b0, (*acc)[14]);
    (*acc)[15] = fma(vec4<f32>(a1.w), b1, (*acc)[15]);
}

// Shapes and strides of up to 8 dimensions, packed as the params structs carry them.
alias Dims = array<vec4<u32>, 2>;

// Entry `u` of packed dims.
fn dim(v: Dims, u: u32) -> u32 {
    return v[u / 4u][u % 4u];
}

// The offsets, through strides `sa` and `sb`, of the element at linear index `i` of a
// row-major `shape` of `ndim` dimensions: its coordinates dotted with each stride.
fn offsets(i: u32, ndim: u32, shape: Dims, sa: Dims, sb: Dims) -> vec2<u32> {
    var rem = i;
    var o = vec2<u32>(0u);
    for (var d = i32(ndim) - 1; d >= 0; d = d - 1) {
        let u = u32(d);
        let c = rem % dim(shape, u);
        rem = rem / dim(shape, u);
        o = o + c * vec2<u32>(dim(sa, u), dim(sb, u));
    }
    return o;
}

// The row of a one-workgroup-per-row launch that `grid` spread over x and y.
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
