// Normalisation over the last dim of a [rows, cols] view, forward and backward.
//   mode 0, LayerNorm: gamma/beta indexed by column (wav2vec2's LayerNorms).
//   mode 1, GroupNorm with one group per channel (wav2vec2-base's first conv): rows are
//     (batch, channel) pairs over time, gamma/beta indexed by channel = row % channels.
//   LayerNorm over the channels of [B, C, T] (wav2vec2's conv LayerNorms, without transposing):
//     mode 0 with `inner` = T, so row (b, t) has its C elements T apart.
// Statistics are kept per row as (mean, rstd) so backward need not recompute them.
// Two passes (mean, then centred variance) for accuracy. `norm_fwd`/`norm_bwd`: one workgroup
// of 256 threads per row, for long rows. `norm_fwd_rows`/`norm_bwd_rows`: RL lanes per row, for
// short rows and the strided channel layout (where neighbouring rows are neighbouring
// addresses).

// `struct Params` (binding 0) is written in by the loader from `NormParams` in src/ops/norm.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;     // beta (fwd) or dy (bwd)
@group(0) @binding(4) var<storage, read> stats_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

fn reduce2(lid: u32, a: f32, b: f32) -> vec2<f32> {
    red[lid] = a;
    red2[lid] = b;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] = red[lid] + red[lid + s];
            red2[lid] = red2[lid] + red2[lid + s];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red[0], red2[0]);
    workgroupBarrier();
    return r;
}

// Rows of an [outer, cols, inner] view: row = o * inner + i, its element c at stride inner.
fn at(row: u32, c: u32) -> u32 {
    return p.off + (row / p.inner) * p.cols * p.inner + row % p.inner + c * p.inner;
}

fn weight(row: u32, col: u32) -> u32 {
    if p.mode == 0u { return col; }
    return (p.row_base + row) % p.channels;
}

@compute @workgroup_size(256)
fn norm_fwd(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if row >= p.rows { return; }
    let lid = lid3.x;
    let base = p.off + row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) { s = s + x[base + c]; }
    let mean = reduce2(lid, s, 0.0).x / f32(p.cols);
    var v = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) { let d = x[base + c] - mean; v = v + d * d; }
    let rstd = inverseSqrt(reduce2(lid, v, 0.0).x / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c = c + 256u) {
        var y = (x[base + c] - mean) * rstd;
        if p.affine == 1u { let w = weight(row, c); y = y * gamma[w] + aux[w]; }
        out[base + c] = y;
    }
    if lid == 0u { out2[p.off_stats + 2u * row] = mean; out2[p.off_stats + 2u * row + 1u] = rstd; }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
@compute @workgroup_size(256)
fn norm_bwd(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if row >= p.rows { return; }
    let lid = lid3.x;
    let base = p.off + row * p.cols;
    let mean = stats_in[p.off_stats + 2u * row];
    let rstd = stats_in[p.off_stats + 2u * row + 1u];
    var sg = 0.0;
    var sgx = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) {
        var g = aux[base + c];
        if p.affine == 1u { g = g * gamma[weight(row, c)]; }
        let xh = (x[base + c] - mean) * rstd;
        sg = sg + g;
        sgx = sgx + g * xh;
    }
    let r = reduce2(lid, sg, sgx) / f32(p.cols);
    for (var c = lid; c < p.cols; c = c + 256u) {
        var g = aux[base + c];
        if p.affine == 1u { g = g * gamma[weight(row, c)]; }
        let xh = (x[base + c] - mean) * rstd;
        let dx = rstd * (g - r.x - xh * r.y);
        if p.add_earlier == 1u { out[base + c] = out2[base + c] + dx; } else { out[base + c] = dx; }
    }
}

// The short-row kernels give each row RL lanes of one workgroup (RW rows a workgroup), each
// lane every RL-th element of the row, and add the lanes' partial sums through workgroup
// memory. A thread per row left a GPU latency-bound: one 5 s clip's first conv LayerNorm is
// 16,000 rows, a few warps per multiprocessor, each walking 512 strided channels three times.
// In the channel layout a warp is 32 consecutive frames of one channel (one 128-byte read);
// with rows in memory order (inner = 1) it is 4 rows of 8 consecutive elements.
const RL: u32 = 8u;
const RW: u32 = 32u;
var<workgroup> lanes: array<vec2<f32>, 256>;

// (row within the workgroup, lane) of thread `lid`.
fn row_lane(lid: u32) -> vec2<u32> {
    if p.inner == 1u { return vec2<u32>(lid / RL, lid % RL); }
    return vec2<u32>(lid % RW, lid / RW);
}

// The sum over a row's RL lanes of each lane's `v` (every thread of the workgroup calls it).
fn lanes_sum(rl: vec2<u32>, v: vec2<f32>) -> vec2<f32> {
    lanes[rl.y * RW + rl.x] = v;
    workgroupBarrier();
    var s = vec2<f32>(0.0);
    for (var j = 0u; j < RL; j = j + 1u) { s = s + lanes[j * RW + rl.x]; }
    workgroupBarrier();
    return s;
}

// A short-row thread's place: its (row within the workgroup, lane), its row, whether that
// row exists (rows past the end still take part in the workgroup's barriers), the last row
// in their stead, and where element 0 of that row sits (its elements are p.inner apart).
struct ShortRow {
    rl: vec2<u32>,
    row: u32,
    live: bool,
    r: u32,
    base: u32,
}

fn short_row(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) -> ShortRow {
    let rl = row_lane(lid);
    let row = row_of(wid, nwg) * RW + rl.x;
    let r = min(row, p.rows - 1u);
    let base = p.off + (r / p.inner) * p.cols * p.inner + r % p.inner;
    return ShortRow(rl, row, row < p.rows, r, base);
}

@compute @workgroup_size(256)
fn norm_fwd_rows(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = short_row(lid3.x, wid, nwg);
    var s = 0.0;
    if t.live {
        for (var c = t.rl.y; c < p.cols; c = c + RL) { s = s + x[t.base + c * p.inner]; }
    }
    let mean = lanes_sum(t.rl, vec2<f32>(s, 0.0)).x / f32(p.cols);
    var v = 0.0;
    if t.live {
        for (var c = t.rl.y; c < p.cols; c = c + RL) { let d = x[t.base + c * p.inner] - mean; v = v + d * d; }
    }
    let rstd = inverseSqrt(lanes_sum(t.rl, vec2<f32>(v, 0.0)).x / f32(p.cols) + p.eps);
    if !t.live { return; }
    for (var c = t.rl.y; c < p.cols; c = c + RL) {
        let i = t.base + c * p.inner;
        var y = (x[i] - mean) * rstd;
        if p.affine == 1u { let w = weight(t.row, c); y = y * gamma[w] + aux[w]; }
        out[i] = y;
    }
    if t.rl.y == 0u {
        out2[p.off_stats + 2u * t.row] = mean;
        out2[p.off_stats + 2u * t.row + 1u] = rstd;
    }
}

@compute @workgroup_size(256)
fn norm_bwd_rows(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = short_row(lid3.x, wid, nwg);
    let mean = stats_in[p.off_stats + 2u * t.r];
    let rstd = stats_in[p.off_stats + 2u * t.r + 1u];
    var sums = vec2<f32>(0.0);
    if t.live {
        for (var c = t.rl.y; c < p.cols; c = c + RL) {
            let i = t.base + c * p.inner;
            var g = aux[i];
            if p.affine == 1u { g = g * gamma[weight(t.row, c)]; }
            sums = sums + vec2<f32>(g, g * (x[i] - mean) * rstd);
        }
    }
    let m = lanes_sum(t.rl, sums) / f32(p.cols);
    if !t.live { return; }
    for (var c = t.rl.y; c < p.cols; c = c + RL) {
        let i = t.base + c * p.inner;
        var g = aux[i];
        if p.affine == 1u { g = g * gamma[weight(t.row, c)]; }
        let dx = rstd * (g - m.x - (x[i] - mean) * rstd * m.y);
        if p.add_earlier == 1u { out[i] = out2[i] + dx; } else { out[i] = dx; }
    }
}

// LayerNorm dgamma/dbeta, first stage: a thread per column sums one part of the rows (the
// workgroup's y), so a 2000 x 1024 gradient fills 64 workgroups instead of 4; the parts are
// then summed by reduce.wgsl's sum_axis.
@compute @workgroup_size(256)
fn norm_param_grad_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = gid.x;
    if c >= p.cols { return; }
    let per = (p.rows + p.parts - 1u) / p.parts;
    let r0 = wid.y * per;
    let r1 = min(p.rows, r0 + per);
    var dg = 0.0;
    var db = 0.0;
    for (var r = r0; r < r1; r = r + 1u) {
        let i = at(r, c);
        let xh = (x[i] - stats_in[p.off_stats + 2u * r]) * stats_in[p.off_stats + 2u * r + 1u];
        dg = dg + aux[i] * xh;
        db = db + aux[i];
    }
    let o = (p.part0 + wid.y) * p.cols + c;
    out[o] = dg;
    out[p.total_parts * p.cols + o] = db;
}

// GroupNorm dgamma/dbeta, first stage: per-row sums of dy*xhat and dy (then summed over the
// batch by reduce.wgsl's sum_axis).
@compute @workgroup_size(256)
fn norm_param_grad_rows(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if row >= p.rows { return; }
    let lid = lid3.x;
    let base = p.off + row * p.cols;
    let mean = stats_in[p.off_stats + 2u * row];
    let rstd = stats_in[p.off_stats + 2u * row + 1u];
    var dg = 0.0;
    var db = 0.0;
    for (var c = lid; c < p.cols; c = c + 256u) {
        let xh = (x[base + c] - mean) * rstd;
        dg = dg + aux[base + c] * xh;
        db = db + aux[base + c];
    }
    let r = reduce2(lid, dg, db);
    if lid == 0u { out[p.off_rows + row] = r.x; out2[p.off_rows + row] = r.y; }
}
