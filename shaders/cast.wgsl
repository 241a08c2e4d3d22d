// Precision casts for mixed-precision training, each the other's backward:
//   to_f16: f32 -> f16 (inputs of the f16 matmul and attention kernels; the upstream gradient
//           on the way back), round to nearest even;
//   to_f32: f16 -> f32, exact.
// f16 data is handled as packed u32 words (two halves, the lower index in the low bits), so
// this file needs no `enable f16` and both entry points share untyped word bindings.
// A magnitude beyond f16's range, or a NaN, becomes +-inf rather than being clamped: under
// loss scaling an overflow must show up as a non-finite gradient norm so the step is skipped
// and the scale halved (PyTorch GradScaler's rule); `half_bits` (common.wgsl) does it.

// `struct Params` (binding 0) is written in by the loader from `CastParams` in src/ops/cast.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

// One thread per output word: two f32 in, one packed word out.
@compute @workgroup_size(256)
fn to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = lin(gid, nwg);
    let i = 2u * w;
    if i >= p.n { return; }
    var hi = 0u;
    if i + 1u < p.n { hi = half_bits(src[i + 1u]); }
    dst[w] = half_bits(src[i]) | (hi << 16u);
}

// One thread per input word: one packed word in, two f32 out.
@compute @workgroup_size(256)
fn to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = lin(gid, nwg);
    let i = 2u * w;
    if i >= p.n { return; }
    let v = unpack2x16float(src[w]);
    dst[i] = bitcast<u32>(v.x);
    if i + 1u < p.n { dst[i + 1u] = bitcast<u32>(v.y); }
}
