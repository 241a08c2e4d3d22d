// Moves of raw 32-bit words, for any dtype: `fill_words` sets a range to one word (zeros),
// `copy_words` copies host data from the upload arena into a tensor. Both run inside the
// step's compute pass, where a buffer clear or copy command would end it. u32 moves keep every
// bit (f16 pairs, integer labels that as f32 would be denormals a float copy could flush).

// `struct Params` (binding 0) is written in by the loader from `WordsParams` in src/engine/transfer.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn fill_words(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    dst[p.dst_off + i] = p.value;
}

@compute @workgroup_size(256)
fn copy_words(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = lin(gid, nwg);
    if i >= p.n { return; }
    dst[p.dst_off + i] = src[p.src_off + i];
}
