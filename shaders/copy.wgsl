// Strided copy: the one kernel behind transpose/permute, slice, concat and their backward
// (a slice's gradient is a copy into a zeroed region; a concat's is slices).
// out[dst_off + sum c_d * dst_stride_d] = x[src_off + sum c_d * src_stride_d]
// for every coordinate c of the copied region `shape`.
// The uniform arrays are indexed in place: passing one to a helper by value copies it into
// local memory for every element, which is slow on GPUs.

// `struct Params` (binding 0) is written in by the loader from `CopyParams` in src/ops/copy.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let o = offsets(i, p.ndim, p.shape, p.src_stride, p.dst_stride);
    out[p.dst_off + o.y] = x[p.src_off + o.x];
}
