// Kernels over up to seven tensors in one dispatch, so that work on a model's hundreds of
// parameter tensors takes tens of dispatches instead of hundreds. Seven inputs and the output
// keep to eight storage bindings, as every adapter allows. Tensor t is worked on by groups[t]
// workgroups (a grid stride), in row wid.y = t of the grid.
//
// sum_squares: workgroup (g, t) writes the sum of squares of its part of tensor t to
//   out[slot[t] + g]; reduce.wgsl's sum_all then adds the partials (the global gradient norm).
// accumulate: out[slot[t] + i] += x_t[i], gradients into their slots of the optimiser's flat
//   gradient buffer (the slots of one dispatch never overlap).

// `struct Params` (binding 0) is written in by the loader from `MultiTensorParams` in src/ops/reduce.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x0: array<f32>;
@group(0) @binding(2) var<storage, read> x1: array<f32>;
@group(0) @binding(3) var<storage, read> x2: array<f32>;
@group(0) @binding(4) var<storage, read> x3: array<f32>;
@group(0) @binding(5) var<storage, read> x4: array<f32>;
@group(0) @binding(6) var<storage, read> x5: array<f32>;
@group(0) @binding(7) var<storage, read> x6: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

// WGSL cannot index bindings, so the tensor is chosen by a switch.
fn load(t: u32, i: u32) -> f32 {
    switch t {
        case 0u: { return x0[i]; }
        case 1u: { return x1[i]; }
        case 2u: { return x2[i]; }
        case 3u: { return x3[i]; }
        case 4u: { return x4[i]; }
        case 5u: { return x5[i]; }
        default: { return x6[i]; }
    }
}

// Tensor t's (workgroups, elements, slot); no workgroups past this dispatch's tensors.
fn part(t: u32) -> vec3<u32> {
    if t >= p.count { return vec3<u32>(0u); }
    return vec3<u32>(p.groups[t / 4u][t % 4u], p.len[t / 4u][t % 4u], p.slot[t / 4u][t % 4u]);
}

@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let q = part(t);
    if wid.x >= q.x { return; }
    var acc = 0.0;
    for (var i = wid.x * 256u + lid.x; i < q.y; i = i + q.x * 256u) {
        let v = load(t, i);
        acc = acc + v * v;
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid.x < s { red[lid.x] = red[lid.x] + red[lid.x + s]; }
        workgroupBarrier();
    }
    if lid.x == 0u { out[q.z + wid.x] = red[0]; }
}

@compute @workgroup_size(256)
fn accumulate(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    let q = part(t);
    if wid.x >= q.x { return; }
    for (var i = wid.x * 256u + lid.x; i < q.y; i = i + q.x * 256u) {
        out[q.z + i] = out[q.z + i] + load(t, i);
    }
}
