// Inverted dropout with a counter-based RNG: the keep mask is a pure function of
// (seed, element index), so backward regenerates it instead of storing it, and a run is
// reproducible from its seed whatever the chunking or dispatch order. With `residual` it
// adds `res` as it goes (the transformer's x + dropout(branch), one pass instead of two).

// `struct Params` (binding 0) is written in by the loader from `DropoutParams` in src/ops/dropout.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> res: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn keep(i: u32) -> bool {
    return dropout_draw(i, p.seed_lo, p.seed_hi) >= p.p;
}

// Forward and backward are the same map: multiply by mask / (1 - p) (and the residual's
// gradient is the upstream one, untouched).
@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    let y = select(0.0, x[i] / (1.0 - p.p), keep(p.base + i));
    out[i] = select(y, res[i] + y, p.residual == 1u);
}
