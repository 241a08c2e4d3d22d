// Inverted dropout with a counter-based RNG: the keep mask is a pure function of
// (seed, element index), so backward regenerates it instead of storing it, and a run is
// reproducible from its seed whatever the chunking or dispatch order.

struct Params {
    n: u32,
    base: u32,       // global index of this chunk's first element
    seed_lo: u32,
    seed_hi: u32,
    p: f32,          // drop probability
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn lin(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// PCG-style hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020), applied twice
// to mix in both seed words.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn keep(i: u32) -> bool {
    let h = pcg(pcg(i ^ p.seed_lo) + p.seed_hi);
    // 24 high-quality bits -> uniform in [0, 1).
    let u = f32(h >> 8u) * (1.0 / 16777216.0);
    return u >= p.p;
}

// Forward and backward are the same map: multiply by mask / (1 - p).
@compute @workgroup_size(256)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    out[i] = select(0.0, x[i] / (1.0 - p.p), keep(p.base + i));
}
