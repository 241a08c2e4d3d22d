// Fused multi-head attention, softmax(q k^T * scale + key_mask) with dropout, times v, forward
// and backward side by side (FlashAttention-2). The point is memory: the unfused path stores
// the [B, H, T, T] probabilities for backward, which at long clips dwarfs everything else a
// layer keeps. Here nothing T x T is ever written. Forward keeps, per query row, a running max
// and running sum of exponentials (online softmax) while it walks the keys in tiles, rescaling
// its output accumulator whenever the max grows, so one pass gives the exact softmax; it saves
// only the row's logsumexp L. Backward recomputes each probability as exp(s - L) from q and k.
//
// Dropout draws as dropout.wgsl does (`dropout_draw`, common.wgsl), on the index the
// probability would have had in the full [B, H, T, T] tensor, ((bh * T) + i) * T + j, so the
// fused result equals softmax -> dropout -> matmul mask for mask, and backward regenerates the
// mask for free.
//
// Backward, with P = softmax, M the keep mask, P~ = P * M / (1 - p) and dO the upstream grad:
//   dV_j = sum_i P~_ij dO_i
//   dS_ij = P_ij (dP~_ij M_ij / (1 - p) - Drow_i),  dP~_ij = dO_i . v_j,  Drow_i = dO_i . O_i
//   dQ_i = scale sum_j dS_ij k_j,  dK_j = scale sum_i dS_ij q_i
// (Drow_i = sum_j P~_ij dP~_ij, the softmax backward's row sum, is the cheap dot dO_i . O_i.)
// WGSL has no float atomics, so instead of one kernel scattering into dQ we run three, each
// owning what it writes: `attn_bwd_stats` (thread per query row: L and Drow side by side),
// `attn_bwd_kv` (thread per key row, walking query tiles: dK, dV) and `attn_bwd_q` (thread per
// query row, walking key tiles: dQ). The score recomputation is done twice; that is the price.
//
// Layout: q, k, v, O, dO, dQ, dK, dV are [BH, T, D] contiguous, or with `tokens_first`
// [B, T, H, D], the layout the projections make and read, so no permute copies run on either
// side; D <= MAX_D (row_at finds a row either way). With `qkv_rows` = 3, q, k and v are one
// [B, T, 3, H, D] tensor, the output of one GEMM over the joined projection weights (k at
// column `col_k`, v at `col_v`), and dQ, dK, dV are written the same way into one tensor
// that feeds one GEMM back (qkv_at finds those rows). L and the stats are [BH, T].
//
// Threads: LANES threads share a row, adjacent invocations and so (on every driver we know,
// with subgroups of 4 or more lanes) adjacent lanes of one subgroup, each holding every
// LANES-th vec4 of the row's vectors (zero past D) in private arrays, and a dot product is
// completed across them by `lane_sum`. This file is the LANES = 1 build, a thread per row; the
// `attention_lanes` build (engine::pipelines, adapters with subgroups) has LANES = 4 and sums
// with subgroup shuffles. At wav2vec2's T = 250 a thread per row gives a big GPU only B*H*T
// threads, each with 64-float rows that crowd its registers; four lanes give 4x the threads
// with a quarter of the state each. Workgroups are (row tile, bh). Each kernel body takes its
// vec4 count as an argument and the entry point calls it with the constant N4 when D = 64:
// after inlining, the D loops have a constant trip count, unroll, and the rows live in
// registers. The forward keeps no per-tile score array (indexed by a loop counter, it would
// sit in local memory): it rescales its running sums only when a score beats the running max.
// The dropout scales of a tile are drawn once into workgroup memory (the lanes of a row would
// each draw them). The key mask is
// [B, T] additive (0 or f32::MIN), batch = bh / heads. Scores stay finite: the running max
// starts at the lowest finite f32, and score + f32::MIN is finite (it rounds to f32::MIN), so a
// row whose every key is masked comes out uniform, as softmax.wgsl makes it.
//
// q, k, v are `array<In>`: every load goes through f32(), so an f16 variant of this file is
// the alias line swapped. All arithmetic is f32.

alias In = f32;

// `struct Params` (binding 0) is written in by the loader from `AttentionParams` in src/ops/attention.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<In>;
@group(0) @binding(2) var<storage, read> k: array<In>;
@group(0) @binding(3) var<storage, read> v: array<In>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;   // key mask [B, T]; L for attn_bwd_stats
@group(0) @binding(5) var<storage, read> fa: array<f32>;     // O (stats) or dO (kv, q)
@group(0) @binding(6) var<storage, read> fb: array<f32>;     // dO (stats) or stats (kv, q)
@group(0) @binding(7) var<storage, read_write> out0: array<f32>;  // O, stats, dK or dQ
@group(0) @binding(8) var<storage, read_write> out1: array<f32>;  // L or dV

const MAX_D: u32 = 64u;
const MAX_D4: u32 = 16u;   // MAX_D in vec4s: rows are staged as vec4, zero-padded
const ROWS: u32 = 64u;     // rows per workgroup
const TILE: u32 = 32u;     // rows of the other operand staged per step
const LANES: u32 = 1u;     // threads per row
const WG: u32 = ROWS * LANES;
const N4: u32 = MAX_D4 / LANES;   // vec4s of a row each thread holds
const KS: u32 = TILE + 1u;        // row stride of the dropout tile (odd: no bank conflicts)
const LOWEST: f32 = -3.40282347e38;

var<workgroup> ta: array<vec4<f32>, TILE * MAX_D4>;   // k (fwd, bwd_q) or q (bwd_kv)
var<workgroup> tb: array<vec4<f32>, TILE * MAX_D4>;   // v (fwd, bwd_q) or dO (bwd_kv)
var<workgroup> tc: array<f32, TILE>;                  // key mask, or L of the staged queries
var<workgroup> td: array<f32, TILE>;                  // Drow of the staged queries
var<workgroup> tk: array<f32, ROWS * KS>;             // dropout scales of (own row, staged row)

// The sum of x over the LANES threads of a row (each gets it; a butterfly, so bit-identical
// in every lane).
fn lane_sum(x: f32) -> f32 {
    return x; // one lane
}

fn lane_sum2(x: vec2<f32>) -> vec2<f32> {
    return x; // one lane
}

// Mask / (1 - p) for probability (bh, i, j): 0 for a dropped element.
fn keep_scale(bh: u32, i: u32, j: u32) -> f32 {
    if p.p <= 0.0 { return 1.0; }
    let idx = ((p.drop_bh0 + p.bh0 + bh) * p.t + i) * p.t + j;
    return select(0.0, 1.0 / (1.0 - p.p), dropout_draw(idx, p.seed_lo, p.seed_hi) >= p.p);
}

fn key_mask(bh: u32, j: u32) -> f32 {
    if p.has_mask == 0u { return 0.0; }
    return mask[((p.bh0 + bh) / p.heads) * p.t + j];
}

fn bh_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y + wid.z * nwg.y;
}

// Where row i of (batch, head) bh starts in q, k, v, O and their gradients (bh counts from this
// chunk's first row; chunks hold whole batches).
fn row_at(bh: u32, i: u32) -> u32 {
    if p.tokens_first == 1u {
        return (((bh / p.heads) * p.t + i) * p.heads + bh % p.heads) * p.d;
    }
    return (bh * p.t + i) * p.d;
}

// The same for q (add col_k for k, col_v for v) and their gradients.
fn qkv_at(bh: u32, i: u32) -> u32 {
    if p.tokens_first == 1u {
        return (((bh / p.heads) * p.t + i) * p.qkv_rows * p.heads + bh % p.heads) * p.d;
    }
    return (bh * p.t + i) * p.d;
}

fn d4() -> u32 {
    return (p.d + 3u) / 4u;
}

// How many of a row's vec4s the thread at `lane` holds: those at lane, lane + LANES, ...
fn own4(lane: u32) -> u32 {
    return min(N4, (d4() + LANES - 1u - lane) / LANES);
}

// Elements c*4..c*4+4 of the row starting at `base`, zero past D (never read past the row).
// One loader per buffer: WGSL cannot pass a storage array to a function.
fn ld_q(base: u32, c: u32) -> vec4<f32> {
    let e = c * 4u;
    if e + 4u <= p.d {
        return vec4<f32>(f32(q[p.off_in + base + e]), f32(q[p.off_in + base + e + 1u]), f32(q[p.off_in + base + e + 2u]), f32(q[p.off_in + base + e + 3u]));
    }
    var r = vec4<f32>(0.0);
    for (var x = 0u; e + x < p.d; x = x + 1u) { r[x] = f32(q[p.off_in + base + e + x]); }
    return r;
}

fn ld_k(at: u32, c: u32) -> vec4<f32> {
    let base = at + p.col_k;
    let e = c * 4u;
    if e + 4u <= p.d {
        return vec4<f32>(f32(k[p.off_in + base + e]), f32(k[p.off_in + base + e + 1u]), f32(k[p.off_in + base + e + 2u]), f32(k[p.off_in + base + e + 3u]));
    }
    var r = vec4<f32>(0.0);
    for (var x = 0u; e + x < p.d; x = x + 1u) { r[x] = f32(k[p.off_in + base + e + x]); }
    return r;
}

fn ld_v(at: u32, c: u32) -> vec4<f32> {
    let base = at + p.col_v;
    let e = c * 4u;
    if e + 4u <= p.d {
        return vec4<f32>(f32(v[p.off_in + base + e]), f32(v[p.off_in + base + e + 1u]), f32(v[p.off_in + base + e + 2u]), f32(v[p.off_in + base + e + 3u]));
    }
    var r = vec4<f32>(0.0);
    for (var x = 0u; e + x < p.d; x = x + 1u) { r[x] = f32(v[p.off_in + base + e + x]); }
    return r;
}

fn ld_fa(base: u32, c: u32) -> vec4<f32> {
    let e = c * 4u;
    if e + 4u <= p.d {
        return vec4<f32>(fa[p.off_f + base + e], fa[p.off_f + base + e + 1u], fa[p.off_f + base + e + 2u], fa[p.off_f + base + e + 3u]);
    }
    var r = vec4<f32>(0.0);
    for (var x = 0u; e + x < p.d; x = x + 1u) { r[x] = fa[p.off_f + base + e + x]; }
    return r;
}

// Stores at `base`, the element index in the binding (shift included).
fn st_out0(base: u32, c: u32, val: vec4<f32>) {
    for (var x = 0u; x < 4u && c * 4u + x < p.d; x = x + 1u) { out0[base + c * 4u + x] = val[x]; }
}

fn st_out1(base: u32, c: u32, val: vec4<f32>) {
    for (var x = 0u; x < 4u && c * 4u + x < p.d; x = x + 1u) { out1[base + c * 4u + x] = val[x]; }
}

fn hsum(x: vec4<f32>) -> f32 {
    return x.x + x.y + x.z + x.w;
}

// Draws the dropout scales of this workgroup's ROWS rows against the n staged rows into tk:
// rows are queries i0 + r against keys j0 + x, or with `rows_are_keys` keys j0 + r against
// queries i0 + x.
fn stage_keep(bh: u32, i0: u32, j0: u32, n: u32, lid: u32, rows_are_keys: bool) {
    if p.p <= 0.0 { return; }
    for (var e = lid; e < ROWS * TILE; e = e + WG) {
        let r = e / TILE;
        let x = min(e % TILE, n - 1u);
        let i = min(select(i0 + r, i0 + x, rows_are_keys), p.t - 1u);
        let j = min(select(j0 + x, j0 + r, rows_are_keys), p.t - 1u);
        tk[r * KS + e % TILE] = keep_scale(bh, i, j);
    }
}

// The dropout scale of own row r against staged row x (see stage_keep).
fn keep_at(r: u32, x: u32) -> f32 {
    if p.p <= 0.0 { return 1.0; }
    return tk[r * KS + x];
}

// Stages keys j0..j0+TILE of (bh) into ta (k), tb (v) and tc (mask), and their dropout scales
// against this workgroup's queries (from i0); returns how many keys exist.
fn stage_keys(bh: u32, i0: u32, j0: u32, lid: u32) -> u32 {
    let n = min(TILE, p.t - j0);
    let n4 = d4();
    for (var e = lid; e < n * n4; e = e + WG) {
        let jj = e / n4;
        let c = e % n4;
        let g = qkv_at(bh, j0 + jj);
        ta[jj * MAX_D4 + c] = ld_k(g, c);
        tb[jj * MAX_D4 + c] = ld_v(g, c);
    }
    if lid < n { tc[lid] = key_mask(bh, j0 + lid); }
    stage_keep(bh, i0, j0, n, lid, false);
    return n;
}

fn attn_fwd_rows(lid: u32, wx: u32, bh: u32, n4: u32) {
    let r = lid / LANES;
    let lane = lid % LANES;
    let i0 = wx * ROWS;
    let i = i0 + r;
    // Rows past T compute on row T - 1 (the lanes stay in step) and store nothing.
    let ic = min(i, p.t - 1u);
    let qat = qkv_at(bh, ic);
    var qr: array<vec4<f32>, N4>;
    var acc: array<vec4<f32>, N4>;
    for (var cc = 0u; cc < n4; cc = cc + 1u) {
        qr[cc] = ld_q(qat, cc * LANES + lane);
        acc[cc] = vec4<f32>(0.0);
    }
    var m = LOWEST;
    var l = 0.0;
    for (var j0 = 0u; j0 < p.t; j0 = j0 + TILE) {
        workgroupBarrier();
        let n = stage_keys(bh, i0, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            var dp = vec4<f32>(0.0);
            for (var cc = 0u; cc < n4; cc = cc + 1u) { dp = fma(qr[cc], ta[jj * MAX_D4 + cc * LANES + lane], dp); }
            let s = lane_sum(hsum(dp)) * p.scale + tc[jj];
            // A new max: rescale what was summed under the old one (rarely, after the first keys).
            if s > m {
                let alpha = exp(m - s);
                l = l * alpha;
                for (var cc = 0u; cc < n4; cc = cc + 1u) { acc[cc] = acc[cc] * alpha; }
                m = s;
            }
            let e = exp(s - m);
            l = l + e;
            let w = vec4<f32>(e * keep_at(r, jj));
            for (var cc = 0u; cc < n4; cc = cc + 1u) { acc[cc] = fma(w, tb[jj * MAX_D4 + cc * LANES + lane], acc[cc]); }
        }
    }
    if i < p.t {
        let inv = 1.0 / l;
        let at = row_at(bh, i);
        for (var cc = 0u; cc < n4; cc = cc + 1u) { st_out0(p.off_f + at, cc * LANES + lane, acc[cc] * inv); }
        if lane == 0u { out1[p.off_l + bh * p.t + i] = m + log(l); }
    }
}

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    // A constant trip count lets the compiler unroll the D loops and keep rows in registers.
    if d4() == MAX_D4 { attn_fwd_rows(lid, wid.x, bh, N4); } else { attn_fwd_rows(lid, wid.x, bh, own4(lid % LANES)); }
}

// stats[2 r] = L_r, stats[2 r + 1] = Drow_r = dO_r . O_r. Thread per row of [BH * T].
@compute @workgroup_size(64)
fn attn_bwd_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    if r >= p.bh * p.t { return; }
    let at = row_at(r / p.t, r % p.t);
    var acc = 0.0;
    for (var dd = 0u; dd < p.d; dd = dd + 1u) {
        acc = fma(fb[p.off_f + at + dd], fa[p.off_f + at + dd], acc);
    }
    out0[p.off_s + 2u * r] = mask[p.off_l + r];
    out0[p.off_s + 2u * r + 1u] = acc;
}

// dK, dV: LANES threads per key row j, walking query tiles.
fn attn_bwd_kv_rows(lid: u32, wx: u32, bh: u32, n4: u32) {
    let r = lid / LANES;
    let lane = lid % LANES;
    let j0 = wx * ROWS;
    let j = j0 + r;
    let at = qkv_at(bh, min(j, p.t - 1u));
    var kr: array<vec4<f32>, N4>;
    var vr: array<vec4<f32>, N4>;
    var dk: array<vec4<f32>, N4>;
    var dv: array<vec4<f32>, N4>;
    for (var cc = 0u; cc < n4; cc = cc + 1u) {
        kr[cc] = ld_k(at, cc * LANES + lane);
        vr[cc] = ld_v(at, cc * LANES + lane);
        dk[cc] = vec4<f32>(0.0);
        dv[cc] = vec4<f32>(0.0);
    }
    let mj = key_mask(bh, min(j, p.t - 1u));
    let d4s = d4();
    for (var i0 = 0u; i0 < p.t; i0 = i0 + TILE) {
        workgroupBarrier();
        let n = min(TILE, p.t - i0);
        for (var e = lid; e < n * d4s; e = e + WG) {
            let ii = e / d4s;
            let c = e % d4s;
            ta[ii * MAX_D4 + c] = ld_q(qkv_at(bh, i0 + ii), c);
            tb[ii * MAX_D4 + c] = ld_fa(row_at(bh, i0 + ii), c);
        }
        if lid < n {
            let s = bh * p.t + i0 + lid;
            tc[lid] = fb[p.off_s + 2u * s];
            td[lid] = fb[p.off_s + 2u * s + 1u];
        }
        stage_keep(bh, i0, j0, n, lid, true);
        workgroupBarrier();
        for (var ii = 0u; ii < n; ii = ii + 1u) {
            var qk = vec4<f32>(0.0);
            var dpt = vec4<f32>(0.0);
            for (var cc = 0u; cc < n4; cc = cc + 1u) {
                qk = fma(ta[ii * MAX_D4 + cc * LANES + lane], kr[cc], qk);
                dpt = fma(tb[ii * MAX_D4 + cc * LANES + lane], vr[cc], dpt);
            }
            let sums = lane_sum2(vec2<f32>(hsum(qk), hsum(dpt)));
            let pr = exp(sums.x * p.scale + mj - tc[ii]);
            let ks = keep_at(r, ii);
            let pd = vec4<f32>(pr * ks);
            let ds = vec4<f32>(pr * (sums.y * ks - td[ii]));
            for (var cc = 0u; cc < n4; cc = cc + 1u) {
                dv[cc] = fma(pd, tb[ii * MAX_D4 + cc * LANES + lane], dv[cc]);
                dk[cc] = fma(ds, ta[ii * MAX_D4 + cc * LANES + lane], dk[cc]);
            }
        }
    }
    if j < p.t {
        for (var cc = 0u; cc < n4; cc = cc + 1u) {
            st_out0(p.off_g + p.col_k + at, cc * LANES + lane, dk[cc] * p.scale);
            st_out1(p.off_g + p.col_v + at, cc * LANES + lane, dv[cc]);
        }
    }
}

@compute @workgroup_size(WG)
fn attn_bwd_kv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    // A constant trip count lets the compiler unroll the D loops and keep rows in registers.
    if d4() == MAX_D4 { attn_bwd_kv_rows(lid, wid.x, bh, N4); } else { attn_bwd_kv_rows(lid, wid.x, bh, own4(lid % LANES)); }
}

// dQ: LANES threads per query row i, walking key tiles.
fn attn_bwd_q_rows(lid: u32, wx: u32, bh: u32, n4: u32) {
    let r = lid / LANES;
    let lane = lid % LANES;
    let i0 = wx * ROWS;
    let i = i0 + r;
    let ic = min(i, p.t - 1u);
    let row = bh * p.t + ic;
    let at = row_at(bh, ic);
    let qat = qkv_at(bh, ic);
    var qr: array<vec4<f32>, N4>;
    var dor: array<vec4<f32>, N4>;
    var dq: array<vec4<f32>, N4>;
    for (var cc = 0u; cc < n4; cc = cc + 1u) {
        qr[cc] = ld_q(qat, cc * LANES + lane);
        dor[cc] = ld_fa(at, cc * LANES + lane);
        dq[cc] = vec4<f32>(0.0);
    }
    let lse = fb[p.off_s + 2u * row];
    let drow = fb[p.off_s + 2u * row + 1u];
    for (var j0 = 0u; j0 < p.t; j0 = j0 + TILE) {
        workgroupBarrier();
        let n = stage_keys(bh, i0, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < n; jj = jj + 1u) {
            var qk = vec4<f32>(0.0);
            var dpt = vec4<f32>(0.0);
            for (var cc = 0u; cc < n4; cc = cc + 1u) {
                qk = fma(qr[cc], ta[jj * MAX_D4 + cc * LANES + lane], qk);
                dpt = fma(dor[cc], tb[jj * MAX_D4 + cc * LANES + lane], dpt);
            }
            let sums = lane_sum2(vec2<f32>(hsum(qk), hsum(dpt)));
            let pr = exp(sums.x * p.scale + tc[jj] - lse);
            let ds = vec4<f32>(pr * (sums.y * keep_at(r, jj) - drow));
            for (var cc = 0u; cc < n4; cc = cc + 1u) { dq[cc] = fma(ds, ta[jj * MAX_D4 + cc * LANES + lane], dq[cc]); }
        }
    }
    if i < p.t {
        for (var cc = 0u; cc < n4; cc = cc + 1u) { st_out0(p.off_g + qat, cc * LANES + lane, dq[cc] * p.scale); }
    }
}

@compute @workgroup_size(WG)
fn attn_bwd_q(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    // A constant trip count lets the compiler unroll the D loops and keep rows in registers.
    if d4() == MAX_D4 { attn_bwd_q_rows(lid, wid.x, bh, N4); } else { attn_bwd_q_rows(lid, wid.x, bh, own4(lid % LANES)); }
}
