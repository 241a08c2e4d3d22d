// Prelude: the loader puts this in front of every kernel file (after its `enable` lines).
// Helpers only; no bindings, so files that use none of it pay nothing.

// The linear thread index of a 1-D launch of 256-thread workgroups that `grid` spread over x
// and y to stay within the 65535-per-dimension limit.
fn lin(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
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

// The 64x64 SIMT GEMM core (conv1d_gemm, matmul_tiled64): one k of this thread's 4x4 outputs,
// the outer product of 4 rows of A and 4 columns of B read from the staged tiles. Staging
// and storing differ per kernel; this part is the same.
fn outer4(av: vec4<f32>, bv: vec4<f32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    (*acc)[0] = fma(vec4<f32>(av.x), bv, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(av.y), bv, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(av.z), bv, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(av.w), bv, (*acc)[3]);
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
