// Elementwise arithmetic with NumPy broadcasting, and the helpers autograd needs around it.
// Forward: `binary` (add/sub/mul/div/max), `scale` (y = alpha*x + beta), `fill`.
// Backward of broadcasting lives in reduce.wgsl (`reduce_to`); of mul/div it is `binary` again.
// Indices are linear: idx = gid.x + gid.y * num_workgroups.x * 256 (2-D grid beats the
// 65535-workgroup limit). `base` is the chunk's first element when a tensor is split.

// `struct Params` (binding 0) is written in by the loader from `ElementwiseParams` in src/ops/elementwise.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn apply(op: u32, x: f32, y: f32) -> f32 {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        default: { return max(x, y); }
    }
}

@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    var ia = i;
    var ib = i;
    if (p.flags & 3u) != 3u {
        // Walk the output coordinates of the global index and map them through the strides.
        let o = offsets(p.base + i, p.ndim, p.shape, p.sa, p.sb);
        if (p.flags & 1u) == 0u { ia = o.x; }
        if (p.flags & 2u) == 0u { ib = o.y; }
    }
    out[i] = apply(p.op, a[ia], b[ib]);
}

@compute @workgroup_size(256)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    out[i] = p.alpha * a[i] + p.beta;
}

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    out[i] = p.alpha;
}
