// Strided copy: the one kernel behind transpose/permute, slice, concat and their backward
// (a slice's gradient is a copy into a zeroed region; a concat's is slices).
// out[dst_off + sum c_d * dst_stride_d] = x[src_off + sum c_d * src_stride_d]
// for every coordinate c of the copied region `shape`.
// The uniform arrays are indexed in place: passing one to a helper by value copies it into
// local memory for every element, which is slow on GPUs.

struct Params {
    n: u32,
    ndim: u32,
    src_off: u32,
    dst_off: u32,
    shape: array<vec4<u32>, 2>,
    src_stride: array<vec4<u32>, 2>,
    dst_stride: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn copy_strided(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i >= p.n { return; }
    var rem = i;
    var s = p.src_off;
    var d = p.dst_off;
    for (var k = i32(p.ndim) - 1; k >= 0; k = k - 1) {
        let u = u32(k);
        let e = p.shape[u / 4u][u % 4u];
        let c = rem % e;
        rem = rem / e;
        s = s + c * p.src_stride[u / 4u][u % 4u];
        d = d + c * p.dst_stride[u / 4u][u % 4u];
    }
    out[d] = x[s];
}
