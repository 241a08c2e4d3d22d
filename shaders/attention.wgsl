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

// The forward as small GEMMs: `attn_fwd_tiled`. A workgroup of 128 threads takes TQ = 32
// query rows and walks the keys TK = 64 at a time. Thread (ty, tx) = (lid / 16, lid % 16)
// computes the scores of rows ty*4..+4 against keys tx, tx+16, tx+32, tx+48 (16 dot products
// from 8 vec4 reads of workgroup memory per 4 dims, where the row kernels read one vec4 per 4
// FMAs), then P V for the same rows and dims tx*4..+4. The row max of each key tile is shared
// through workgroup memory, so every thread of a row rescales by the same running max and
// keeps a partial row sum, added up once at the end. 128 threads and 32 KiB of workgroup
// memory: Q [32][16 vec4], K then V [64][16 vec4], P [32][64]. Rows are stored with their
// vec4s permuted (an xor of the column with a few bits of the row), so the reads of a warp
// fall in different banks without padding (which would not fit in 32 KiB).
const TQ: u32 = 32u;
const TK: u32 = 64u;
var<workgroup> tq: array<vec4<f32>, 512>;    // q rows, at at_g
var<workgroup> tkv: array<vec4<f32>, 1024>;  // k rows at at_r, then v rows in order
var<workgroup> tp: array<vec4<f32>, 512>;    // P (see p_at); also the row maxima and sums

// Where dims 4 dq..+4 of row r sit in a tiled kernel's block of rows. Rows that one thread
// reads 4 at a time (ty*4..+4: q in the forward, a backward kernel's own rows) are permuted
// by their group of 4 (`at_g`); rows that neighbouring threads read one each (tx, tx+16, ..)
// by the row itself (`at_r`). Either way a warp's reads fall in different banks.
fn at_g(r: u32, dq: u32) -> u32 {
    return r * MAX_D4 + (dq ^ ((r >> 2u) & 7u));
}

fn at_r(c: u32, dq: u32) -> u32 {
    return c * MAX_D4 + (dq ^ (c & 7u));
}

// Where score (row r, key c) of P sits: a vec4 of 4 keys, every other row group's quads
// flipped by 4 (16 banks), so two row groups of a warp write different banks.
fn p_at(r: u32, c: u32) -> u32 {
    return r * 16u + ((c >> 2u) ^ (((r >> 2u) & 1u) << 2u));
}

// Row r's 16 partial values (one per tx) at tp[r * 4..+4], reduced by max or sum.
fn row_max(r: u32) -> f32 {
    let a = max(max(tp[r * 4u], tp[r * 4u + 1u]), max(tp[r * 4u + 2u], tp[r * 4u + 3u]));
    return max(max(a.x, a.y), max(a.z, a.w));
}

fn row_sum(r: u32) -> f32 {
    return hsum(tp[r * 4u] + tp[r * 4u + 1u] + tp[r * 4u + 2u] + tp[r * 4u + 3u]);
}

fn put_partial(r: u32, tx: u32, x: f32) {
    let e = r * 16u + tx;
    tp[e / 4u][e % 4u] = x;
}

// acc + w.x r0 + w.y r1 + w.z r2 + w.w r3: one row of weights (4 keys or queries) times
// their 4 rows' vec4 of dims.
fn mix4(w: vec4<f32>, r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32>, acc: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(w.x), r0, fma(vec4<f32>(w.y), r1, fma(vec4<f32>(w.z), r2, fma(vec4<f32>(w.w), r3, acc))));
}

@compute @workgroup_size(128)
fn attn_fwd_tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    let tx = lid % 16u;
    let ty = lid / 16u;
    let i0 = wid.x * TQ;
    // Rows past T load row T - 1 and store nothing; dims past D load as zeros.
    for (var e = lid; e < TQ * MAX_D4; e = e + 128u) {
        let r = e / MAX_D4;
        let dq = e % MAX_D4;
        tq[at_g(r, dq)] = ld_q(qkv_at(bh, min(i0 + r, p.t - 1u)), dq);
    }
    let flip = (ty & 1u) << 2u;
    var m = vec4<f32>(LOWEST);   // running max of rows ty*4 + i, in component i
    var l = vec4<f32>(0.0);      // this thread's part of their running sums
    var o0 = vec4<f32>(0.0);     // row ty*4 + i, dims tx*4..+4
    var o1 = vec4<f32>(0.0);
    var o2 = vec4<f32>(0.0);
    var o3 = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < p.t; j0 = j0 + TK) {
        let n = min(TK, p.t - j0);
        workgroupBarrier();
        for (var e = lid; e < TK * MAX_D4; e = e + 128u) {
            let c = e / MAX_D4;
            let dq = e % MAX_D4;
            tkv[at_r(c, dq)] = ld_k(qkv_at(bh, min(j0 + c, p.t - 1u)), dq);
        }
        workgroupBarrier();
        // s_i: row ty*4 + i against keys tx + 16 j in component j.
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        for (var dq = 0u; dq < MAX_D4; dq = dq + 1u) {
            let q0 = tq[at_g(ty * 4u, dq)];
            let q1 = tq[at_g(ty * 4u + 1u, dq)];
            let q2 = tq[at_g(ty * 4u + 2u, dq)];
            let q3 = tq[at_g(ty * 4u + 3u, dq)];
            let k0 = tkv[at_r(tx, dq)];
            let k1 = tkv[at_r(tx + 16u, dq)];
            let k2 = tkv[at_r(tx + 32u, dq)];
            let k3 = tkv[at_r(tx + 48u, dq)];
            s0 = s0 + vec4<f32>(dot(q0, k0), dot(q0, k1), dot(q0, k2), dot(q0, k3));
            s1 = s1 + vec4<f32>(dot(q1, k0), dot(q1, k1), dot(q1, k2), dot(q1, k3));
            s2 = s2 + vec4<f32>(dot(q2, k0), dot(q2, k1), dot(q2, k2), dot(q2, k3));
            s3 = s3 + vec4<f32>(dot(q3, k0), dot(q3, k1), dot(q3, k2), dot(q3, k3));
        }
        // Scale and key mask; keys past T are left out of the max and weigh 0.
        var valid = vec4<bool>(false);
        var bias = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j = j + 1u) {
            let c = tx + 16u * j;
            valid[j] = c < n;
            bias[j] = key_mask(bh, min(j0 + c, p.t - 1u));
        }
        s0 = s0 * p.scale + bias;
        s1 = s1 * p.scale + bias;
        s2 = s2 * p.scale + bias;
        s3 = s3 * p.scale + bias;
        let low = vec4<f32>(LOWEST);
        let t0 = select(low, s0, valid);
        let t1 = select(low, s1, valid);
        let t2 = select(low, s2, valid);
        let t3 = select(low, s3, valid);
        put_partial(ty * 4u, tx, max(max(t0.x, t0.y), max(t0.z, t0.w)));
        put_partial(ty * 4u + 1u, tx, max(max(t1.x, t1.y), max(t1.z, t1.w)));
        put_partial(ty * 4u + 2u, tx, max(max(t2.x, t2.y), max(t2.z, t2.w)));
        put_partial(ty * 4u + 3u, tx, max(max(t3.x, t3.y), max(t3.z, t3.w)));
        workgroupBarrier();
        let mt = vec4<f32>(row_max(ty * 4u), row_max(ty * 4u + 1u), row_max(ty * 4u + 2u), row_max(ty * 4u + 3u));
        workgroupBarrier();
        let mn = max(m, mt);
        let alpha = exp(m - mn);
        m = mn;
        l = l * alpha;
        o0 = o0 * alpha.x;
        o1 = o1 * alpha.y;
        o2 = o2 * alpha.z;
        o3 = o3 * alpha.w;
        let zero = vec4<f32>(0.0);
        let e0 = select(zero, exp(s0 - m.x), valid);
        let e1 = select(zero, exp(s1 - m.y), valid);
        let e2 = select(zero, exp(s2 - m.z), valid);
        let e3 = select(zero, exp(s3 - m.w), valid);
        l = l + vec4<f32>(hsum(e0), hsum(e1), hsum(e2), hsum(e3));
        for (var j = 0u; j < 4u; j = j + 1u) {
            let c = tx + 16u * j;
            let jg = min(j0 + c, p.t - 1u);
            let r = ty * 4u;
            tp[p_at(r, c)][c & 3u] = e0[j] * keep_scale(bh, min(i0 + r, p.t - 1u), jg);
            tp[p_at(r + 1u, c)][c & 3u] = e1[j] * keep_scale(bh, min(i0 + r + 1u, p.t - 1u), jg);
            tp[p_at(r + 2u, c)][c & 3u] = e2[j] * keep_scale(bh, min(i0 + r + 2u, p.t - 1u), jg);
            tp[p_at(r + 3u, c)][c & 3u] = e3[j] * keep_scale(bh, min(i0 + r + 3u, p.t - 1u), jg);
        }
        // Every thread is past its reads of k (the barrier above): v replaces it.
        for (var e = lid; e < TK * MAX_D4; e = e + 128u) {
            let c = e / MAX_D4;
            tkv[e] = ld_v(qkv_at(bh, min(j0 + c, p.t - 1u)), e % MAX_D4);
        }
        workgroupBarrier();
        for (var kq = 0u; kq < (n + 3u) / 4u; kq = kq + 1u) {
            let p0 = tp[(ty * 4u) * 16u + (kq ^ flip)];
            let p1 = tp[(ty * 4u + 1u) * 16u + (kq ^ flip)];
            let p2 = tp[(ty * 4u + 2u) * 16u + (kq ^ flip)];
            let p3 = tp[(ty * 4u + 3u) * 16u + (kq ^ flip)];
            let v0 = tkv[(kq * 4u) * MAX_D4 + tx];
            let v1 = tkv[(kq * 4u + 1u) * MAX_D4 + tx];
            let v2 = tkv[(kq * 4u + 2u) * MAX_D4 + tx];
            let v3 = tkv[(kq * 4u + 3u) * MAX_D4 + tx];
            o0 = mix4(p0, v0, v1, v2, v3, o0);
            o1 = mix4(p1, v0, v1, v2, v3, o1);
            o2 = mix4(p2, v0, v1, v2, v3, o2);
            o3 = mix4(p3, v0, v1, v2, v3, o3);
        }
    }
    workgroupBarrier();
    put_partial(ty * 4u, tx, l.x);
    put_partial(ty * 4u + 1u, tx, l.y);
    put_partial(ty * 4u + 2u, tx, l.z);
    put_partial(ty * 4u + 3u, tx, l.w);
    workgroupBarrier();
    let lt = vec4<f32>(row_sum(ty * 4u), row_sum(ty * 4u + 1u), row_sum(ty * 4u + 2u), row_sum(ty * 4u + 3u));
    let inv = 1.0 / lt;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = i0 + ty * 4u + i;
        if row >= p.t { break; }
        var o = o3;
        if i == 0u { o = o0; } else if i == 1u { o = o1; } else if i == 2u { o = o2; }
        st_out0(p.off_f + row_at(bh, row), tx, o * inv[i]);
        if tx == 0u { out1[p.off_l + bh * p.t + row] = m[i] + log(lt[i]); }
    }
}

// dQ as small GEMMs: `attn_bwd_q_tiled`, the counterpart of attn_bwd_q. A workgroup of 128
// threads takes 32 query rows (their q and dO in workgroup memory) and walks the keys 32 at
// a time. Thread (ty, tx) computes, for rows ty*4..+4 against keys tx and tx+16, the scores
// and dO . v from one pass over the dims, then dS, which goes through workgroup memory (in
// v's place) for dQ of rows ty*4..+4, dims tx*4..+4. Workgroup memory: q and dO [32][16 vec4],
// k and v (then dS) [32][16 vec4], 32 KiB; the same xor permutations as attn_fwd_tiled.
const TK2: u32 = 32u;

// Rows ty*4..+4 of tq and of tp (32 rows, stored with the row permutation) against rows tx
// and tx+16 of tkv's two halves (32 rows each, the column permutation), over all dims: the
// tiled backward kernels' scores (tq . tkv) and dO . v products (tp . tkv[512..]); row i's
// pair in s_i, d_i.
struct Dots {
    s0: vec2<f32>, s1: vec2<f32>, s2: vec2<f32>, s3: vec2<f32>,
    d0: vec2<f32>, d1: vec2<f32>, d2: vec2<f32>, d3: vec2<f32>,
}

fn dots4x2(tx: u32, ty: u32) -> Dots {
    var r: Dots;
    for (var dq = 0u; dq < MAX_D4; dq = dq + 1u) {
        let a0 = tkv[at_r(tx, dq)];
        let a1 = tkv[at_r(tx + 16u, dq)];
        let b0 = tkv[512u + at_r(tx, dq)];
        let b1 = tkv[512u + at_r(tx + 16u, dq)];
        let x0 = tq[at_g(ty * 4u, dq)];
        let x1 = tq[at_g(ty * 4u + 1u, dq)];
        let x2 = tq[at_g(ty * 4u + 2u, dq)];
        let x3 = tq[at_g(ty * 4u + 3u, dq)];
        r.s0 = r.s0 + vec2<f32>(dot(x0, a0), dot(x0, a1));
        r.s1 = r.s1 + vec2<f32>(dot(x1, a0), dot(x1, a1));
        r.s2 = r.s2 + vec2<f32>(dot(x2, a0), dot(x2, a1));
        r.s3 = r.s3 + vec2<f32>(dot(x3, a0), dot(x3, a1));
        let y0 = tp[at_g(ty * 4u, dq)];
        let y1 = tp[at_g(ty * 4u + 1u, dq)];
        let y2 = tp[at_g(ty * 4u + 2u, dq)];
        let y3 = tp[at_g(ty * 4u + 3u, dq)];
        r.d0 = r.d0 + vec2<f32>(dot(y0, b0), dot(y0, b1));
        r.d1 = r.d1 + vec2<f32>(dot(y1, b0), dot(y1, b1));
        r.d2 = r.d2 + vec2<f32>(dot(y2, b0), dot(y2, b1));
        r.d3 = r.d3 + vec2<f32>(dot(y3, b0), dot(y3, b1));
    }
    return r;
}

// Row c of tkv's half at `half` (0 or 512), dims 4 tx..+4 (undoing the column permutation).
fn tkv_row(half: u32, c: u32, tx: u32) -> vec4<f32> {
    return tkv[half + at_r(c, tx)];
}

// Where dS (row r, key c) of a [32][32] block sits (see p_at: 8 quads a row).
fn ds_at(r: u32, c: u32) -> u32 {
    return r * 8u + ((c >> 2u) ^ (((r >> 2u) & 1u) << 2u));
}

@compute @workgroup_size(128)
fn attn_bwd_q_tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    let tx = lid % 16u;
    let ty = lid / 16u;
    let i0 = wid.x * TQ;
    for (var e = lid; e < TQ * MAX_D4; e = e + 128u) {
        let r = e / MAX_D4;
        let dq = e % MAX_D4;
        let i = min(i0 + r, p.t - 1u);
        let at = at_g(r, dq);
        tq[at] = ld_q(qkv_at(bh, i), dq);
        tp[at] = ld_fa(row_at(bh, i), dq);
    }
    // L and Drow of rows ty*4 + i, in component i.
    var lse = vec4<f32>(0.0);
    var drow = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = bh * p.t + min(i0 + ty * 4u + i, p.t - 1u);
        lse[i] = fb[p.off_s + 2u * row];
        drow[i] = fb[p.off_s + 2u * row + 1u];
    }
    var g0 = vec4<f32>(0.0);   // dQ of row ty*4 + i, dims tx*4..+4
    var g1 = vec4<f32>(0.0);
    var g2 = vec4<f32>(0.0);
    var g3 = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < p.t; j0 = j0 + TK2) {
        let n = min(TK2, p.t - j0);
        workgroupBarrier();
        for (var e = lid; e < TK2 * MAX_D4; e = e + 128u) {
            let c = e / MAX_D4;
            let dq = e % MAX_D4;
            let g = qkv_at(bh, min(j0 + c, p.t - 1u));
            tkv[at_r(c, dq)] = ld_k(g, dq);
            tkv[512u + at_r(c, dq)] = ld_v(g, dq);
        }
        workgroupBarrier();
        // Row ty*4 + i against keys tx (x) and tx + 16 (y): q . k and dO . v.
        let t = dots4x2(tx, ty);
        // Every thread is past its reads of v: dS takes its place.
        workgroupBarrier();
        for (var j = 0u; j < 2u; j = j + 1u) {
            let c = tx + 16u * j;
            let jg = min(j0 + c, p.t - 1u);
            let mk = key_mask(bh, jg);
            let live = c < n;
            let r = ty * 4u;
            var ds = vec4<f32>(0.0);
            let s = vec4<f32>(t.s0[j], t.s1[j], t.s2[j], t.s3[j]) * p.scale + mk;
            let dp = vec4<f32>(t.d0[j], t.d1[j], t.d2[j], t.d3[j]);
            let pr = attn_prob4(s, lse, p.t);
            for (var i = 0u; i < 4u; i = i + 1u) {
                let ks = keep_scale(bh, min(i0 + r + i, p.t - 1u), jg);
                ds[i] = pr[i] * (dp[i] * ks - drow[i]);
            }
            ds = select(vec4<f32>(0.0), ds, live);
            tkv[512u + ds_at(r, c)][c & 3u] = ds.x;
            tkv[512u + ds_at(r + 1u, c)][c & 3u] = ds.y;
            tkv[512u + ds_at(r + 2u, c)][c & 3u] = ds.z;
            tkv[512u + ds_at(r + 3u, c)][c & 3u] = ds.w;
        }
        workgroupBarrier();
        let flip = (ty & 1u) << 2u;
        for (var kq = 0u; kq < (n + 3u) / 4u; kq = kq + 1u) {
            let a0 = tkv[512u + (ty * 4u) * 8u + (kq ^ flip)];
            let a1 = tkv[512u + (ty * 4u + 1u) * 8u + (kq ^ flip)];
            let a2 = tkv[512u + (ty * 4u + 2u) * 8u + (kq ^ flip)];
            let a3 = tkv[512u + (ty * 4u + 3u) * 8u + (kq ^ flip)];
            let c = kq * 4u;
            let k0 = tkv_row(0u, c, tx);
            let k1 = tkv_row(0u, c + 1u, tx);
            let k2 = tkv_row(0u, c + 2u, tx);
            let k3 = tkv_row(0u, c + 3u, tx);
            g0 = mix4(a0, k0, k1, k2, k3, g0);
            g1 = mix4(a1, k0, k1, k2, k3, g1);
            g2 = mix4(a2, k0, k1, k2, k3, g2);
            g3 = mix4(a3, k0, k1, k2, k3, g3);
        }
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = i0 + ty * 4u + i;
        if row >= p.t { break; }
        var g = g3;
        if i == 0u { g = g0; } else if i == 1u { g = g1; } else if i == 2u { g = g2; }
        st_out0(p.off_g + qkv_at(bh, row), tx, g * p.scale);
    }
}

// dK and dV as small GEMMs: `attn_bwd_kv_tiled`, the counterpart of attn_bwd_kv. A workgroup
// of 128 threads takes 32 keys (their k in workgroup memory) and walks the queries 32 at a
// time (q and dO in workgroup memory). Thread (ty, tx) computes, for keys ty*4..+4 against
// queries tx and tx+16, k . q and v . dO in one pass over the dims, then P~ and dS, which go
// through workgroup memory for dV and dK of keys ty*4..+4, dims tx*4..+4. The keys' v shares
// its 8 KiB with the P~ and dS blocks, so it is read again for each query tile (from cache).
@compute @workgroup_size(128)
fn attn_bwd_kv_tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>) {
    let bh = bh_of(wid, nwg);
    if bh >= p.bh { return; }
    let tx = lid % 16u;
    let ty = lid / 16u;
    let j0 = wid.x * TQ;
    for (var e = lid; e < TQ * MAX_D4; e = e + 128u) {
        let r = e / MAX_D4;
        let dq = e % MAX_D4;
        tq[at_g(r, dq)] = ld_k(qkv_at(bh, min(j0 + r, p.t - 1u)), dq);
    }
    // The key mask of keys ty*4 + i, in component i.
    var mk = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i = i + 1u) {
        mk[i] = key_mask(bh, min(j0 + ty * 4u + i, p.t - 1u));
    }
    let flip = (ty & 1u) << 2u;
    var dk0 = vec4<f32>(0.0);   // key ty*4 + i, dims tx*4..+4
    var dk1 = vec4<f32>(0.0);
    var dk2 = vec4<f32>(0.0);
    var dk3 = vec4<f32>(0.0);
    var dv0 = vec4<f32>(0.0);
    var dv1 = vec4<f32>(0.0);
    var dv2 = vec4<f32>(0.0);
    var dv3 = vec4<f32>(0.0);
    for (var i0 = 0u; i0 < p.t; i0 = i0 + TK2) {
        let n = min(TK2, p.t - i0);
        workgroupBarrier();
        for (var e = lid; e < TK2 * MAX_D4; e = e + 128u) {
            let c = e / MAX_D4;
            let dq = e % MAX_D4;
            let i = min(i0 + c, p.t - 1u);
            tkv[at_r(c, dq)] = ld_q(qkv_at(bh, i), dq);
            tkv[512u + at_r(c, dq)] = ld_fa(row_at(bh, i), dq);
            tp[at_g(c, dq)] = ld_v(qkv_at(bh, min(j0 + c, p.t - 1u)), dq);
        }
        workgroupBarrier();
        // Key ty*4 + i against queries tx (x) and tx + 16 (y): k . q and v . dO.
        let t = dots4x2(tx, ty);
        // Every thread is past its reads of v: P~ (tp[0..256]) and dS (tp[256..512]) replace it.
        workgroupBarrier();
        for (var j = 0u; j < 2u; j = j + 1u) {
            let c = tx + 16u * j;
            let ig = min(i0 + c, p.t - 1u);
            let srow = bh * p.t + ig;
            let lse = fb[p.off_s + 2u * srow];
            let drow = fb[p.off_s + 2u * srow + 1u];
            let live = c < n;
            let r = ty * 4u;
            let pr = attn_prob4(vec4<f32>(t.s0[j], t.s1[j], t.s2[j], t.s3[j]) * p.scale + mk, vec4<f32>(lse), p.t);
            let dp = vec4<f32>(t.d0[j], t.d1[j], t.d2[j], t.d3[j]);
            var ks = vec4<f32>(0.0);
            for (var i = 0u; i < 4u; i = i + 1u) {
                ks[i] = keep_scale(bh, ig, min(j0 + r + i, p.t - 1u));
            }
            let zero = vec4<f32>(0.0);
            let pd = select(zero, pr * ks, live);
            let ds = select(zero, pr * (dp * ks - drow), live);
            tp[ds_at(r, c)][c & 3u] = pd.x;
            tp[ds_at(r + 1u, c)][c & 3u] = pd.y;
            tp[ds_at(r + 2u, c)][c & 3u] = pd.z;
            tp[ds_at(r + 3u, c)][c & 3u] = pd.w;
            tp[256u + ds_at(r, c)][c & 3u] = ds.x;
            tp[256u + ds_at(r + 1u, c)][c & 3u] = ds.y;
            tp[256u + ds_at(r + 2u, c)][c & 3u] = ds.z;
            tp[256u + ds_at(r + 3u, c)][c & 3u] = ds.w;
        }
        workgroupBarrier();
        for (var qq = 0u; qq < (n + 3u) / 4u; qq = qq + 1u) {
            let c = qq * 4u;
            let o0 = tkv_row(512u, c, tx);
            let o1 = tkv_row(512u, c + 1u, tx);
            let o2 = tkv_row(512u, c + 2u, tx);
            let o3 = tkv_row(512u, c + 3u, tx);
            let q0 = tkv_row(0u, c, tx);
            let q1 = tkv_row(0u, c + 1u, tx);
            let q2 = tkv_row(0u, c + 2u, tx);
            let q3 = tkv_row(0u, c + 3u, tx);
            let a0 = tp[(ty * 4u) * 8u + (qq ^ flip)];
            let a1 = tp[(ty * 4u + 1u) * 8u + (qq ^ flip)];
            let a2 = tp[(ty * 4u + 2u) * 8u + (qq ^ flip)];
            let a3 = tp[(ty * 4u + 3u) * 8u + (qq ^ flip)];
            dv0 = mix4(a0, o0, o1, o2, o3, dv0);
            dv1 = mix4(a1, o0, o1, o2, o3, dv1);
            dv2 = mix4(a2, o0, o1, o2, o3, dv2);
            dv3 = mix4(a3, o0, o1, o2, o3, dv3);
            let b0 = tp[256u + (ty * 4u) * 8u + (qq ^ flip)];
            let b1 = tp[256u + (ty * 4u + 1u) * 8u + (qq ^ flip)];
            let b2 = tp[256u + (ty * 4u + 2u) * 8u + (qq ^ flip)];
            let b3 = tp[256u + (ty * 4u + 3u) * 8u + (qq ^ flip)];
            dk0 = mix4(b0, q0, q1, q2, q3, dk0);
            dk1 = mix4(b1, q0, q1, q2, q3, dk1);
            dk2 = mix4(b2, q0, q1, q2, q3, dk2);
            dk3 = mix4(b3, q0, q1, q2, q3, dk3);
        }
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let key = j0 + ty * 4u + i;
        if key >= p.t { break; }
        var dk = dk3;
        var dv = dv3;
        if i == 0u { dk = dk0; dv = dv0; } else if i == 1u { dk = dk1; dv = dv1; } else if i == 2u { dk = dk2; dv = dv2; }
        let at = qkv_at(bh, key);
        st_out0(p.off_g + p.col_k + at, tx, dk * p.scale);
        st_out1(p.off_g + p.col_v + at, tx, dv);
    }
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
            let pr = attn_prob(sums.x * p.scale + mj, tc[ii], p.t);
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
            let pr = attn_prob(sums.x * p.scale + tc[jj], lse, p.t);
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
