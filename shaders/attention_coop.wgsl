// The fused attention on tensor cores, for f16 q, k, v where the adapter has cooperative
// matrices: the forward `attn_fwd_coop` here, the backward (`attn_bwd_kv_coop`,
// `attn_bwd_q_coop`) further down. The loader appends this file to the attention_f16 build of
// attention.wgsl (whose helpers it uses: qkv_at, row_at, key_mask, keep_scale, ld_fa) and
// sets F and S to the adapter's fragment and subgroup sizes, as for the tensor-core GEMMs
// (engine::pipelines). The results equal the other builds' but for the rounding of P~ (and in
// the backward dS) to f16 before their products, as PyTorch's fp16 SDPA rounds them; L, the
// row sums and every accumulator stay f32.
//
// Forward: one workgroup is one subgroup and takes F query rows; it walks the keys 4F at a
// time:
//   1. stage the key tile (f16, zero past D) into workgroup memory;
//   2. S = q kᵀ on the matrix units, F x 4F in 4 accumulators over D/F steps;
//   3. through workgroup memory, the lanes (S / F a row, each every (S / F)-th key) fold the
//      tile into the row's running max and their part of its sum (online softmax) and write
//      P~ = exp(s - max) * dropout scale as f16, and stage the value tile in the key tile's
//      place;
//   4. P~ V on the matrix units (a fresh accumulator per F dims), and the lanes add it to the
//      running output, rescaled by exp(old max - new max) per row. The output stays in
//      workgroup memory, f32: a matrix unit's accumulator cannot be scaled row by row.
// Rows past T load row T - 1 and store nothing; keys past T weigh 0; dims past D are zeros.
const F: u32 = 16u;   // fragment size
const S: u32 = 32u;   // subgroup size
const CK: u32 = 4u * F;   // keys per tile
const CDP: u32 = MAX_D + 8u;   // f16 row stride of q, k, v tiles (16 bytes of padding)
const CPS: u32 = CK + 8u;   // f16 row stride of P~
const ND: u32 = MAX_D / F;   // dim blocks at most
const LPR: u32 = S / F;   // lanes a row in the softmax (the host needs S >= F)

// The f16 tiles are held as vec4<f16>: a staged chunk of 4 is one store, and fragments load
// through vector pointers (as the tensor-core GEMMs do; see matmul_coop128.wgsl). Row strides
// and fragment offsets are multiples of 4 f16, so both are counted in vec4s there.
var<workgroup> cq: array<vec4<f16>, (F * CDP) / 4u>;   // the workgroup's q rows
var<workgroup> ckv: array<vec4<f16>, (CK * CDP) / 4u>;   // a key tile's k rows, then its v rows
var<workgroup> cs: array<f32, F * MAX_D>;   // scores [F][CK], then P~ V [F][MAX_D]
var<workgroup> cp: array<vec4<f16>, (F * CPS) / 4u>;   // P~
var<workgroup> co: array<f32, F * MAX_D>;   // the running output
var<workgroup> crow: array<f32, F>;   // per row: this tile's rescale
var<workgroup> cred: array<f32, S>;   // per lane: its part of a row's max or sum
var<workgroup> cmask: array<f32, CK>;   // the key tile's mask
// The backward's besides: own rows' second operand, dP~ (or its transpose), dS in f16, and a
// query tile's L and Drow.
// Each backward workgroup is one subgroup, so every KiB here decides how many fit on a
// multiprocessor: the tiles are sized to the backward's CT keys (or queries), not CK.
var<workgroup> cw: array<vec4<f16>, (F * CDP) / 4u>;
var<workgroup> cdp: array<f32, F * CT>;
var<workgroup> cpb: array<vec4<f16>, (F * CTS) / 4u>;   // P~ᵀ (attn_bwd_kv_coop)
var<workgroup> cds: array<vec4<f16>, (F * CTS) / 4u>;
var<workgroup> cst: array<f32, 2u * CT>;
var<workgroup> clo: array<vec4<f16>, (2u * F * CDP) / 4u>;   // dO's low parts (a tile's, or the own rows')

// f rounded to f16, as f32, through a pack and unpack: a compiler may fold the plain
// conversion pair f32(f16(f)) to f (lavapipe's does), which would leave dO no low part; and
// the high part staged is this same value, whatever rounding the pack uses.
fn dO_hi(f: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(pack2x16float(f.xy)), unpack2x16float(pack2x16float(f.zw)));
}

// Stages rows r0..r0+n of q (src 0), k (1), v (2), dO rounded to f16 (3) or what that
// rounding left (4) of (bh) as f16 into cq (dst 0) or ckv (1) from row `at`, row stride CDP;
// rows past T repeat row T - 1, dims past D are zeros. `stage_bwd` does the same into cw
// (dst 2) or clo (3): apart, so that the forward, which never calls it, keeps those two out of
// its workgroup memory (7 KiB of one subgroup's 29 KiB: more subgroups fit a multiprocessor).
fn stage(src: u32, dst: u32, at: u32, bh: u32, r0: u32, n: u32, lane: u32) {
    for (var e = lane; e < n * MAX_D4; e = e + S) {
        let h = staged(src, bh, r0, e);
        if dst == 0u { cq[slot(at, e)] = h; } else { ckv[slot(at, e)] = h; }
    }
}

fn stage_bwd(src: u32, dst: u32, at: u32, bh: u32, r0: u32, n: u32, lane: u32) {
    for (var e = lane; e < n * MAX_D4; e = e + S) {
        let h = staged(src, bh, r0, e);
        if dst == 2u { cw[slot(at, e)] = h; } else { clo[slot(at, e)] = h; }
    }
}

// Where vec4 e of the rows staged from tile row `at` goes: row at + e / MAX_D4, stride CDP.
fn slot(at: u32, e: u32) -> u32 {
    return ((at + e / MAX_D4) * CDP + (e % MAX_D4) * 4u) / 4u;
}

// Vec4 e of rows r0.. of (bh) of the source `stage` names, as f16. q, k, v are copied as they
// are; dO as the sum of its two parts keeps 22 bits.
fn staged(src: u32, bh: u32, r0: u32, e: u32) -> vec4<f16> {
    let row = min(r0 + e / MAX_D4, p.t - 1u);
    let c = e % MAX_D4;
    if src < 3u {
        let g = qkv_at(bh, row);
        return vec4<f16>(at16(src, g, c * 4u), at16(src, g, c * 4u + 1u), at16(src, g, c * 4u + 2u),
                         at16(src, g, c * 4u + 3u));
    }
    let f = ld_fa(row_at(bh, row), c);
    let hi = dO_hi(f);
    return vec4<f16>(select(f - hi, hi, src == 3u));
}

// Element e of the row of q (src 0), k (1) or v (2) at `base`, as stored (f16 in this build:
// no round trip through f32), 0 past D.
fn at16(src: u32, base: u32, e: u32) -> f16 {
    if e >= p.d { return f16(0.0); }
    switch src {
        case 0u: { return q[p.off_in + base + e]; }
        case 1u: { return k[p.off_in + base + p.col_k + e]; }
        default: { return v[p.off_in + base + p.col_v + e]; }
    }
}

// Fragment b of P~ V's output into cs, row-major, F x F at dims b*F.
fn put_o(m: coop_mat16x16<f32, C>, b: u32) {
    // naga 30 needs the index and stride of coopStore as named values.
    let at = b * F;
    let ld = MAX_D;
    coopStoreT(m, &cs[at], ld);
}

fn put_s(m: coop_mat16x16<f32, C>, b: u32) {
    let at = b * F;
    let ld = CK;
    coopStoreT(m, &cs[at], ld);
}

// P~ V over one key tile, dims b*F..+F: 4 key blocks of F.
fn pv(b: u32) -> coop_mat16x16<f32, C> {
    var o = coop_mat16x16<f32, C>();
    for (var kb = 0u; kb < 4u; kb = kb + 1u) {
        let pa = coopLoadT<coop_mat16x16<f16, A>>(&cp[(kb * F) / 4u], CPS / 4u);
        let vb = coopLoadT<coop_mat16x16<f16, B>>(&ckv[(kb * F * CDP + b * F) / 4u], CDP / 4u);
        o = coopMultiplyAdd(pa, vb, o);
    }
    return o;
}

@compute @workgroup_size(S)
fn attn_fwd_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    // Workgroups past the last (batch, head) row (the grid's z rounds up) redo the last one
    // and store nothing: cooperative matrices need every lane to reach them, so no return.
    let live = bh_of(wid, nwg) < p.bh;
    let bh = min(bh_of(wid, nwg), p.bh - 1u);
    let i0 = wid.x * F;
    let nd = (p.d + F - 1u) / F;
    // This lane's row in the softmax, and its first key there.
    let r = lane / LPR;
    let x0 = lane % LPR;
    let i = min(i0 + r, p.t - 1u);
    stage(0u, 0u, 0u, bh, i0, F, lane);
    for (var e = lane; e < F * MAX_D; e = e + S) { co[e] = 0.0; }
    var m = LOWEST;   // row r's running max
    var l = 0.0;   // this lane's part of row r's running sum
    for (var j0 = 0u; j0 < p.t; j0 = j0 + CK) {
        let n = min(CK, p.t - j0);
        workgroupBarrier();
        stage(1u, 1u, 0u, bh, j0, CK, lane);
        for (var c = lane; c < CK; c = c + S) { cmask[c] = key_mask(bh, min(j0 + c, p.t - 1u)); }
        workgroupBarrier();
        var s0 = coop_mat16x16<f32, C>();
        var s1 = s0;
        var s2 = s0;
        var s3 = s0;
        for (var db = 0u; db < nd; db = db + 1u) {
            let qa = coopLoadT<coop_mat16x16<f16, A>>(&cq[(db * F) / 4u], CDP / 4u);
            // kᵀ: column-major reads of the k rows.
            s0 = coopMultiplyAdd(qa, coopLoad<coop_mat16x16<f16, B>>(&ckv[(db * F) / 4u], CDP / 4u), s0);
            s1 = coopMultiplyAdd(qa, coopLoad<coop_mat16x16<f16, B>>(&ckv[(F * CDP + db * F) / 4u], CDP / 4u), s1);
            s2 = coopMultiplyAdd(qa, coopLoad<coop_mat16x16<f16, B>>(&ckv[(2u * F * CDP + db * F) / 4u], CDP / 4u), s2);
            s3 = coopMultiplyAdd(qa, coopLoad<coop_mat16x16<f16, B>>(&ckv[(3u * F * CDP + db * F) / 4u], CDP / 4u), s3);
        }
        put_s(s0, 0u);
        put_s(s1, 1u);
        put_s(s2, 2u);
        put_s(s3, 3u);
        workgroupBarrier();
        // Every lane is past its reads of k: v takes its place.
        stage(2u, 1u, 0u, bh, j0, CK, lane);
        // Scale and mask in place, and this lane's part of the tile's row max.
        var mt = LOWEST;
        for (var c = x0; c < n; c = c + LPR) {
            let sc = cs[r * CK + c] * p.scale + cmask[c];
            cs[r * CK + c] = sc;
            mt = max(mt, sc);
        }
        cred[lane] = mt;
        workgroupBarrier();
        for (var y = 0u; y < LPR; y = y + 1u) { mt = max(mt, cred[r * LPR + y]); }
        let mn = max(m, mt);
        let alpha = exp(m - mn);
        m = mn;
        l = l * alpha;
        for (var c = x0; c < CK; c = c + LPR) {
            var pe = 0.0;
            if c < n {
                let e = exp(cs[r * CK + c] - m);
                l = l + e;
                pe = e * keep_scale(bh, i, j0 + c);
            }
            cp[(r * CPS + c) / 4u][c % 4u] = f16(pe);
        }
        if x0 == 0u { crow[r] = alpha; }
        workgroupBarrier();
        put_o(pv(0u), 0u);
        if nd > 1u { put_o(pv(1u), 1u); }
        if nd > 2u { put_o(pv(2u), 2u); }
        if nd > 3u { put_o(pv(3u), 3u); }
        if ND > 4u && nd > 4u {
            put_o(pv(4u), 4u);
            if nd > 5u { put_o(pv(5u), 5u); }
            if nd > 6u { put_o(pv(6u), 6u); }
            if nd > 7u { put_o(pv(7u), 7u); }
        }
        workgroupBarrier();
        for (var e = lane; e < F * MAX_D; e = e + S) {
            co[e] = crow[e / MAX_D] * co[e] + cs[e];
        }
    }
    workgroupBarrier();
    cred[lane] = l;
    workgroupBarrier();
    if x0 == 0u {
        var sum = 0.0;
        for (var y = 0u; y < LPR; y = y + 1u) { sum = sum + cred[r * LPR + y]; }
        crow[r] = sum;
        if live && i0 + r < p.t { out1[p.off_l + bh * p.t + i0 + r] = m + log(sum); }
    }
    workgroupBarrier();
    for (var e = lane; e < F * MAX_D; e = e + S) {
        let row = i0 + e / MAX_D;
        let d = e % MAX_D;
        if live && row < p.t && d < p.d {
            out0[p.off_f + row_at(bh, row) + d] = co[e] / crow[e / MAX_D];
        }
    }
}

// The backward on tensor cores, for f16 q, k, v: `attn_bwd_kv_coop` (dK, dV) and
// `attn_bwd_q_coop` (dQ), in place of attn_bwd_kv and attn_bwd_q, from the same row
// statistics (L, Drow: attn_bwd_stats) and the same dropout draws. One subgroup owns F rows
// (keys, or queries) and walks the other side CT = 2F rows at a time:
//   kv: Sᵀ = k qᵀ and dP~ᵀ = v dOᵀ (F x CT) on the matrix units; through workgroup memory the
//       lanes form P~ᵀ = exp(s - L_i) * keep and dSᵀ = P (dP~ * keep - Drow_i) in f16; then
//       dV += P~ᵀ dO and dK += dSᵀ q on the matrix units, accumulated over every query tile
//       (the backward rescales nothing, so the accumulators stay in registers).
//   q:  S = q kᵀ and dP~ = dO vᵀ, dS likewise, dQ += dS k.
// dO is f32 (the output projection's gradient): it goes to the matrix units as two f16
// parts, hi = f16(dO) and lo = f16(dO - hi), in two products, so dP~ stays consistent with
// Drow (f32) and dV keeps dO's precision; only P~ and dS are rounded to f16. The own rows sit
// in cq (k, or q) and cw (v, or dO's hi), the tile's in ckv: rows 0.. (q, or k) and CT..
// (dO's hi, or v); dO's lo parts in clo.
const CT: u32 = 2u * F;
const CTS: u32 = CT + 8u;   // f16 row stride of P~ᵀ and dS (16 bytes of padding)

fn put_cs(m: coop_mat16x16<f32, C>, b: u32) {
    let at = b * F;
    let ld = CT;
    coopStoreT(m, &cs[at], ld);
}

fn put_cdp(m: coop_mat16x16<f32, C>, b: u32) {
    let at = b * F;
    let ld = CT;
    coopStoreT(m, &cdp[at], ld);
}

// Sᵀ = k qᵀ into cs and dP~ᵀ = v dOᵀ into cdp (F keys x CT queries), for attn_bwd_kv_coop.
fn scores_kv(nd: u32) {
    var x0 = coop_mat16x16<f32, C>();
    var x1 = x0;
    var y0 = x0;
    var y1 = x0;
    for (var db = 0u; db < nd; db = db + 1u) {
        let k = coopLoadT<coop_mat16x16<f16, A>>(&cq[(db * F) / 4u], CDP / 4u);
        let v = coopLoadT<coop_mat16x16<f16, A>>(&cw[(db * F) / 4u], CDP / 4u);
        x0 = coopMultiplyAdd(k, coopLoad<coop_mat16x16<f16, B>>(&ckv[(db * F) / 4u], CDP / 4u), x0);
        x1 = coopMultiplyAdd(k, coopLoad<coop_mat16x16<f16, B>>(&ckv[(F * CDP + db * F) / 4u], CDP / 4u), x1);
        y0 = coopMultiplyAdd(v, coopLoad<coop_mat16x16<f16, B>>(&ckv[(CT * CDP + db * F) / 4u], CDP / 4u), y0);
        y1 = coopMultiplyAdd(v, coopLoad<coop_mat16x16<f16, B>>(&ckv[((CT + F) * CDP + db * F) / 4u], CDP / 4u), y1);
        y0 = coopMultiplyAdd(v, coopLoad<coop_mat16x16<f16, B>>(&clo[(db * F) / 4u], CDP / 4u), y0);
        y1 = coopMultiplyAdd(v, coopLoad<coop_mat16x16<f16, B>>(&clo[(F * CDP + db * F) / 4u], CDP / 4u), y1);
    }
    put_cs(x0, 0u);
    put_cs(x1, 1u);
    put_cdp(y0, 0u);
    put_cdp(y1, 1u);
}

// S = q kᵀ into cs and dP~ = dO vᵀ into cdp (F queries x CT keys), for attn_bwd_q_coop.
fn scores_q(nd: u32) {
    var x0 = coop_mat16x16<f32, C>();
    var x1 = x0;
    var y0 = x0;
    var y1 = x0;
    for (var db = 0u; db < nd; db = db + 1u) {
        let q = coopLoadT<coop_mat16x16<f16, A>>(&cq[(db * F) / 4u], CDP / 4u);
        let hi = coopLoadT<coop_mat16x16<f16, A>>(&cw[(db * F) / 4u], CDP / 4u);
        let lo = coopLoadT<coop_mat16x16<f16, A>>(&clo[(db * F) / 4u], CDP / 4u);
        x0 = coopMultiplyAdd(q, coopLoad<coop_mat16x16<f16, B>>(&ckv[(db * F) / 4u], CDP / 4u), x0);
        x1 = coopMultiplyAdd(q, coopLoad<coop_mat16x16<f16, B>>(&ckv[(F * CDP + db * F) / 4u], CDP / 4u), x1);
        let v0 = coopLoad<coop_mat16x16<f16, B>>(&ckv[(CT * CDP + db * F) / 4u], CDP / 4u);
        let v1 = coopLoad<coop_mat16x16<f16, B>>(&ckv[((CT + F) * CDP + db * F) / 4u], CDP / 4u);
        y0 = coopMultiplyAdd(lo, v0, coopMultiplyAdd(hi, v0, y0));
        y1 = coopMultiplyAdd(lo, v1, coopMultiplyAdd(hi, v1, y1));
    }
    put_cs(x0, 0u);
    put_cs(x1, 1u);
    put_cdp(y0, 0u);
    put_cdp(y1, 1u);
}

// acc + (F x CT of P~ᵀ in cpb) times the tile's dO (both parts), dims b*F..+F; `by_ds`: acc +
// dS (cds) times the tile's rows from block `tb` (0: rows 0.., 1: rows CT..). Separate
// functions: a branch on an argument would not be uniform control flow to naga, which
// cooperative loads need.
fn by_p(b: u32, acc: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    var o = acc;
    for (var kb = 0u; kb < CT / F; kb = kb + 1u) {
        let pa = coopLoadT<coop_mat16x16<f16, A>>(&cpb[(kb * F) / 4u], CTS / 4u);
        let hi = coopLoadT<coop_mat16x16<f16, B>>(&ckv[((CT + kb * F) * CDP + b * F) / 4u], CDP / 4u);
        let lo = coopLoadT<coop_mat16x16<f16, B>>(&clo[(kb * F * CDP + b * F) / 4u], CDP / 4u);
        o = coopMultiplyAdd(pa, lo, coopMultiplyAdd(pa, hi, o));
    }
    return o;
}

fn by_ds(tb: u32, b: u32, acc: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    var o = acc;
    for (var kb = 0u; kb < CT / F; kb = kb + 1u) {
        let da = coopLoadT<coop_mat16x16<f16, A>>(&cds[(kb * F) / 4u], CTS / 4u);
        let rb = coopLoadT<coop_mat16x16<f16, B>>(&ckv[((tb * CT + kb * F) * CDP + b * F) / 4u], CDP / 4u);
        o = coopMultiplyAdd(da, rb, o);
    }
    return o;
}

// The nd dim blocks of a backward kernel's gradient rows into cs ([F][MAX_D]).
fn put_dims(nd: u32, m0: coop_mat16x16<f32, C>, m1: coop_mat16x16<f32, C>, m2: coop_mat16x16<f32, C>,
            m3: coop_mat16x16<f32, C>, m4: coop_mat16x16<f32, C>, m5: coop_mat16x16<f32, C>,
            m6: coop_mat16x16<f32, C>, m7: coop_mat16x16<f32, C>) {
    put_o(m0, 0u);
    if nd > 1u { put_o(m1, 1u); }
    if nd > 2u { put_o(m2, 2u); }
    if nd > 3u { put_o(m3, 3u); }
    if ND > 4u && nd > 4u {
        put_o(m4, 4u);
        if nd > 5u { put_o(m5, 5u); }
        if nd > 6u { put_o(m6, 6u); }
        if nd > 7u { put_o(m7, 7u); }
    }
}

// Writes the own rows' gradient, staged in cs as [F][MAX_D], times `mul`, into out0 (dst 0)
// or out1 at column `col` of the gradient rows.
fn emit_rows(dst: u32, col: u32, mul: f32, bh: u32, r0: u32, lane: u32, live: bool) {
    for (var e = lane; e < F * MAX_D; e = e + S) {
        let row = r0 + e / MAX_D;
        let d = e % MAX_D;
        if live && row < p.t && d < p.d {
            let at = p.off_g + col + qkv_at(bh, row) + d;
            if dst == 0u { out0[at] = cs[e] * mul; } else { out1[at] = cs[e] * mul; }
        }
    }
}

@compute @workgroup_size(S)
fn attn_bwd_kv_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>) {
    let live = bh_of(wid, nwg) < p.bh;
    let bh = min(bh_of(wid, nwg), p.bh - 1u);
    let j0 = wid.x * F;
    let nd = (p.d + F - 1u) / F;
    stage(1u, 0u, 0u, bh, j0, F, lane);
    stage_bwd(2u, 2u, 0u, bh, j0, F, lane);
    for (var c = lane; c < F; c = c + S) { cmask[c] = key_mask(bh, min(j0 + c, p.t - 1u)); }
    var dk0 = coop_mat16x16<f32, C>();
    var dk1 = dk0;
    var dk2 = dk0;
    var dk3 = dk0;
    var dk4 = dk0;
    var dk5 = dk0;
    var dk6 = dk0;
    var dk7 = dk0;
    var dv0 = coop_mat16x16<f32, C>();
    var dv1 = dv0;
    var dv2 = dv0;
    var dv3 = dv0;
    var dv4 = dv0;
    var dv5 = dv0;
    var dv6 = dv0;
    var dv7 = dv0;
    for (var i0 = 0u; i0 < p.t; i0 = i0 + CT) {
        let n = min(CT, p.t - i0);
        workgroupBarrier();
        stage(0u, 1u, 0u, bh, i0, CT, lane);
        stage(3u, 1u, CT, bh, i0, CT, lane);
        stage_bwd(4u, 3u, 0u, bh, i0, CT, lane);
        for (var c = lane; c < CT; c = c + S) {
            let st = bh * p.t + min(i0 + c, p.t - 1u);
            cst[c] = fb[p.off_s + 2u * st];
            cst[CT + c] = fb[p.off_s + 2u * st + 1u];
        }
        workgroupBarrier();
        scores_kv(nd);
        workgroupBarrier();
        // Element (key r, query c).
        for (var e = lane; e < F * CT; e = e + S) {
            let r = e / CT;
            let c = e % CT;
            let j = min(j0 + r, p.t - 1u);
            var pt = 0.0;
            var ds = 0.0;
            if c < n {
                let pr = attn_prob(cs[e] * p.scale + cmask[r], cst[c], p.t);
                let ks = keep_scale(bh, i0 + c, j);
                pt = pr * ks;
                ds = pr * (cdp[e] * ks - cst[CT + c]);
            }
            cpb[(r * CTS + c) / 4u][c % 4u] = f16(pt);
            cds[(r * CTS + c) / 4u][c % 4u] = f16(ds);
        }
        workgroupBarrier();
        dv0 = by_p(0u, dv0); dk0 = by_ds(0u, 0u, dk0);
        if nd > 1u { dv1 = by_p(1u, dv1); dk1 = by_ds(0u, 1u, dk1); }
        if nd > 2u { dv2 = by_p(2u, dv2); dk2 = by_ds(0u, 2u, dk2); }
        if nd > 3u { dv3 = by_p(3u, dv3); dk3 = by_ds(0u, 3u, dk3); }
        if ND > 4u && nd > 4u {
            dv4 = by_p(4u, dv4); dk4 = by_ds(0u, 4u, dk4);
            if nd > 5u { dv5 = by_p(5u, dv5); dk5 = by_ds(0u, 5u, dk5); }
            if nd > 6u { dv6 = by_p(6u, dv6); dk6 = by_ds(0u, 6u, dk6); }
            if nd > 7u { dv7 = by_p(7u, dv7); dk7 = by_ds(0u, 7u, dk7); }
        }
    }
    workgroupBarrier();
    put_dims(nd, dk0, dk1, dk2, dk3, dk4, dk5, dk6, dk7);
    workgroupBarrier();
    emit_rows(0u, p.col_k, p.scale, bh, j0, lane, live);
    workgroupBarrier();
    put_dims(nd, dv0, dv1, dv2, dv3, dv4, dv5, dv6, dv7);
    workgroupBarrier();
    emit_rows(1u, p.col_v, 1.0, bh, j0, lane, live);
}

@compute @workgroup_size(S)
fn attn_bwd_q_coop(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let live = bh_of(wid, nwg) < p.bh;
    let bh = min(bh_of(wid, nwg), p.bh - 1u);
    let i0 = wid.x * F;
    let nd = (p.d + F - 1u) / F;
    stage(0u, 0u, 0u, bh, i0, F, lane);
    stage_bwd(3u, 2u, 0u, bh, i0, F, lane);
    stage_bwd(4u, 3u, 0u, bh, i0, F, lane);
    for (var c = lane; c < F; c = c + S) {
        let st = bh * p.t + min(i0 + c, p.t - 1u);
        cst[c] = fb[p.off_s + 2u * st];
        cst[CT + c] = fb[p.off_s + 2u * st + 1u];
    }
    var dq0 = coop_mat16x16<f32, C>();
    var dq1 = dq0;
    var dq2 = dq0;
    var dq3 = dq0;
    var dq4 = dq0;
    var dq5 = dq0;
    var dq6 = dq0;
    var dq7 = dq0;
    for (var j0 = 0u; j0 < p.t; j0 = j0 + CT) {
        let n = min(CT, p.t - j0);
        workgroupBarrier();
        stage(1u, 1u, 0u, bh, j0, CT, lane);
        stage(2u, 1u, CT, bh, j0, CT, lane);
        for (var c = lane; c < CT; c = c + S) { cmask[c] = key_mask(bh, min(j0 + c, p.t - 1u)); }
        workgroupBarrier();
        scores_q(nd);
        workgroupBarrier();
        // Element (query r, key c).
        for (var e = lane; e < F * CT; e = e + S) {
            let r = e / CT;
            let c = e % CT;
            var ds = 0.0;
            if c < n {
                let pr = attn_prob(cs[e] * p.scale + cmask[c], cst[r], p.t);
                let ks = keep_scale(bh, min(i0 + r, p.t - 1u), j0 + c);
                ds = pr * (cdp[e] * ks - cst[CT + r]);
            }
            cds[(r * CTS + c) / 4u][c % 4u] = f16(ds);
        }
        workgroupBarrier();
        dq0 = by_ds(0u, 0u, dq0);
        if nd > 1u { dq1 = by_ds(0u, 1u, dq1); }
        if nd > 2u { dq2 = by_ds(0u, 2u, dq2); }
        if nd > 3u { dq3 = by_ds(0u, 3u, dq3); }
        if ND > 4u && nd > 4u {
            dq4 = by_ds(0u, 4u, dq4);
            if nd > 5u { dq5 = by_ds(0u, 5u, dq5); }
            if nd > 6u { dq6 = by_ds(0u, 6u, dq6); }
            if nd > 7u { dq7 = by_ds(0u, 7u, dq7); }
        }
    }
    workgroupBarrier();
    put_dims(nd, dq0, dq1, dq2, dq3, dq4, dq5, dq6, dq7);
    workgroupBarrier();
    emit_rows(0u, 0u, p.scale, bh, i0, lane, live);
}
