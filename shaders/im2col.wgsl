// A convolution's input unfolded for a GEMM: cols[b, t, c * K + k] = x[b, c, t * stride + k - pad],
// zero where that falls in the padding. A conv nobody differentiates (the frozen feature
// encoder; every conv in evaluation) runs as cols [B, Lout, Cin K] times the weight viewed as
// [Cout, Cin K] (transposed), one GEMM (ops::conv::forward_unfolded): in f16 under --fp16 (on
// the tensor cores where the GPU has them, as torch's autocast runs these convs in f16), else
// in f32. Rows of cols are output frames, so the GEMM's operands have the 16-byte aligned rows
// that the tensor cores and vec4 loads need whatever the (odd) frame counts; the GEMM's
// [B, Lout, Cout] comes back transposed. f16 goes out as packed words, like cast.wgsl's, so
// this file needs no `enable f16`; f32 as its bits.

// `struct Params` (binding 0) is written in by the loader from `Im2colParams` in
// src/ops/conv/unfold.rs, whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;   // [B, Cin, Lin]
@group(0) @binding(2) var<storage, read_write> cols: array<u32>;   // [B, Lout, Cin K]

// Element i of cols.
fn col(i: u32) -> f32 {
    let ck = p.cin * p.k;
    let j = i % ck;
    let bt = i / ck;
    let t = bt % p.lout;
    let b = bt / p.lout;
    let pos = t * p.stride + j % p.k;   // in the padded input
    if pos < p.pad || pos >= p.pad + p.lin { return 0.0; }
    return x[p.off_x + (b * p.cin + j / p.k) * p.lin + pos - p.pad];
}

// One thread per word of cols, two f16 (its element count is even: Cin K is a multiple of 8).
@compute @workgroup_size(256)
fn im2col_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = lin(gid, nwg);
    if 2u * w >= p.n { return; }
    let lo = half_bits(bitcast<u32>(col(2u * w)));
    let hi = half_bits(bitcast<u32>(col(2u * w + 1u)));
    cols[w] = lo | (hi << 16u);
}

// One thread per f32 element of cols.
@compute @workgroup_size(256)
fn im2col_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    cols[i] = bitcast<u32>(col(i));
}
