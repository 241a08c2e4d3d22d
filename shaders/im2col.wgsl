// A convolution's input unfolded for a GEMM, in f16: cols[b, t, c * K + k] =
// f16(x[b, c, t * stride + k - pad]), zero where that falls in the padding. Under --fp16 the
// frozen feature encoder's convs run as cols [B, Lout, Cin K] times the weight viewed as
// [Cout, Cin K] (transposed), one f16 GEMM on the tensor cores where the GPU has them
// (ops::conv::forward_f16), as torch's autocast runs them in f16. Rows of cols are
// output frames, so the GEMM's operands have the 16-byte aligned rows the tensor cores need
// whatever the (odd) frame counts; the GEMM's [B, Lout, Cout] comes back transposed.
// f16 goes out as packed words, like cast.wgsl's, so this file needs no `enable f16`.

// `struct Params` (binding 0) is written in by the loader from `Im2colParams` in
// src/ops/conv/f16.rs, whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;   // [B, Cin, Lin]
@group(0) @binding(2) var<storage, read_write> cols: array<u32>;   // [B, Lout, Cin K], 2 a word

// f16 bits of element i of cols.
fn col(i: u32) -> u32 {
    let ck = p.cin * p.k;
    let j = i % ck;
    let bt = i / ck;
    let t = bt % p.lout;
    let b = bt / p.lout;
    let pos = t * p.stride + j % p.k;   // in the padded input
    if pos < p.pad || pos >= p.pad + p.lin { return 0u; }
    return half_bits(bitcast<u32>(x[p.off_x + (b * p.cin + j / p.k) * p.lin + pos - p.pad]));
}

// One thread per word of cols (its element count is even: Cin K is a multiple of 8).
@compute @workgroup_size(256)
fn im2col_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = lin(gid, nwg);
    if 2u * w >= p.n { return; }
    cols[w] = col(2u * w) | (col(2u * w + 1u) << 16u);
}
