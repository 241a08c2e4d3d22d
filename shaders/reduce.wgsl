// Reductions and their backward.
//   sum_all / sum_all (square=1): whole-tensor sum or sum of squares, in two passes over
//     per-workgroup partials; the global L2 norm for gradient clipping is built from these.
//   l2_bwd: d||x|| / dx = dy * x / ||x||.
//   sum_axis: sum (or mean, via alpha) over the middle axis of [outer, n, inner]; its
//     backward is `expand`, which broadcasts dy back over that axis.
//   reduce_to: sums a gradient over broadcast dims, the backward of every broadcasting op.

// `struct Params` (binding 0) is written in by the loader from `ReduceParams` in src/ops/reduce.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> s1: array<f32>;
@group(0) @binding(3) var<storage, read> s2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

// One workgroup per partial: grid-stride loop, then a tree reduction in shared memory.
@compute @workgroup_size(256)
fn sum_all(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    var acc = 0.0;
    var i = wid.x * 256u + lid.x;
    let stride = nwg.x * 256u;
    while i < p.len {
        let v = x[i];
        acc = acc + select(v, v * v, p.square == 1u);
        i = i + stride;
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s { red[lid.x] = red[lid.x] + red[lid.x + s]; }
        workgroupBarrier();
    }
    if lid.x == 0u { out[p.out_index + wid.x] = red[0] * p.alpha; }
}

@compute @workgroup_size(256)
fn sqrt_at(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x == 0u { out[p.out_index] = p.alpha * sqrt(x[0]); }
}

// s1[0] = ||x||, s2[0] = upstream gradient of the norm.
@compute @workgroup_size(256)
fn l2_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let nrm = s1[0];
    out[i] = select(0.0, s2[0] * x[i] / nrm, nrm > 0.0);
}

// With `out_index` = c > 0, each thread sums only its part of c rows, writing
// [outer, ceil(len / c), inner] partials that a second call (c = 0) adds up: a column sum over
// thousands of rows then runs on many workgroups instead of one thread per column.
@compute @workgroup_size(256)
fn sum_axis(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let chunk = select(p.len, p.out_index, p.out_index > 0u);
    let parts = (p.len + chunk - 1u) / chunk;
    let r = i % p.inner;
    let q = i / p.inner;
    let part = q % parts;
    let o = q / parts;
    let first = part * chunk;
    let rows = min(chunk, p.len - first);
    var acc = 0.0;
    var k = (o * p.len + first) * p.inner + r;
    for (var j = 0u; j < rows; j = j + 1u) {
        acc = acc + x[k];
        k = k + p.inner;
    }
    if p.accumulate == 1u { out[i] = out[i] + acc * p.alpha; } else { out[i] = acc * p.alpha; }
}

@compute @workgroup_size(256)
fn expand(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let inner = i % p.inner;
    let o = i / (p.inner * p.len);
    out[i] = x[o * p.inner + inner] * p.alpha;
}

@compute @workgroup_size(256)
fn reduce_to(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let start = offsets(i, p.ndim, p.kshape, p.kstride, p.kstride).x;
    var total = 1u;
    for (var d = 0u; d < p.rn; d = d + 1u) { total = total * dim(p.rshape, d); }
    var acc = 0.0;
    for (var r = 0u; r < total; r = r + 1u) {
        acc = acc + x[start + offsets(r, p.rn, p.rshape, p.rstride, p.rstride).x];
    }
    out[i] = acc;
}
