// Connectionist temporal classification loss (Graves et al., 2006) in log space, forward and
// backward side by side. `lp` holds log-softmax outputs [B, T, V] (computed by softmax.wgsl).
//   ctc_alpha_beta: one workgroup per utterance runs the alpha (forward) recursion and then the
//     beta (backward) recursion over time, parallel over the extended label positions s
//     (blank, l1, blank, l2, ..., blank; S = 2L + 1). Rows live in workgroup memory; all rows are
//     also written to `alpha`/`beta` [B, T, S] for the gradient. Writes nll[b] (inf if
//     no alignment exists).
//   ctc_grad: one thread per (b, t, c): the gradient w.r.t. the logits (through the
//     log-softmax), as PyTorch's ctc_loss_backward: exp(lp) - exp(log sum_{s: l'_s = c}
//     alpha_t(s) beta_t(s) + nll - lp), times dloss/dnll_b (reduction weight x upstream grad;
//     zero for utterances without an alignment, whose loss is inf or, with zero_infinity, 0).

// `struct Params` (binding 0) is written in by the loader from `CtcParams` in src/ops/ctc.rs,
// whose fields say what each one means.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lp: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;   // [B, l_max]
@group(0) @binding(3) var<storage, read> lens: array<u32>;      // [B, 2]: input length, target length
@group(0) @binding(4) var<storage, read> nll_in: array<f32>;    // grad: nll [B]
@group(0) @binding(5) var<storage, read> weights: array<f32>;   // grad: dloss/dnll_b [B]
@group(0) @binding(6) var<storage, read_write> alpha: array<f32>;
@group(0) @binding(7) var<storage, read_write> beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>; // nll [B] or grad [B, T, V]

const NEG: f32 = -1e30;
const MAX_S: u32 = 2048u;
// Two rows, ping-ponged by time parity so each step needs a single barrier.
var<workgroup> rows: array<f32, 4096>;

fn lse2(a: f32, b: f32) -> f32 {
    let m = max(a, b);
    if m <= NEG { return NEG; }
    return m + log(exp(a - m) + exp(b - m));
}

fn label(b: u32, s: u32) -> u32 {
    if s % 2u == 0u { return p.blank; }
    return targets[b * p.l_max + s / 2u];
}

fn inf() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

@compute @workgroup_size(256)
fn ctc_alpha_beta(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    let lid = lid3.x;
    let t_len = lens[2u * b];
    let l_len = lens[2u * b + 1u];
    let s_len = 2u * l_len + 1u;
    let lp0 = b * p.t_max * p.vocab;
    let ab0 = b * p.t_max * p.s_max;
    if t_len == 0u {
        if lid == 0u { out[b] = select(inf(), 0.0, p.zero_inf == 1u); }
        return;
    }

    // alpha_0: only the first blank and the first label can start a path.
    for (var s = lid; s < s_len; s = s + 256u) {
        var v = NEG;
        if s < 2u { v = lp[lp0 + label(b, s)]; }
        rows[s] = v;
        alpha[ab0 + s] = v;
    }
    workgroupBarrier();
    for (var t = 1u; t < t_len; t = t + 1u) {
        let prev = ((t + 1u) % 2u) * MAX_S;
        let cur = (t % 2u) * MAX_S;
        for (var s = lid; s < s_len; s = s + 256u) {
            let c = label(b, s);
            var v = rows[prev + s];
            if s >= 1u { v = lse2(v, rows[prev + s - 1u]); }
            if s >= 2u && c != p.blank && c != label(b, s - 2u) { v = lse2(v, rows[prev + s - 2u]); }
            if v > NEG { v = v + lp[lp0 + t * p.vocab + c]; }
            rows[cur + s] = v;
            alpha[ab0 + t * p.s_max + s] = v;
        }
        workgroupBarrier();
    }
    let last = ((t_len + 1u) % 2u) * MAX_S;
    var ll = rows[last + s_len - 1u];
    if s_len >= 2u { ll = lse2(ll, rows[last + s_len - 2u]); }
    workgroupBarrier();

    // beta_{T-1}: paths end in the last blank or the last label.
    let tl = t_len - 1u;
    for (var s = lid; s < s_len; s = s + 256u) {
        var v = NEG;
        if s + 2u >= s_len { v = lp[lp0 + tl * p.vocab + label(b, s)]; }
        rows[s] = v;
        beta[ab0 + tl * p.s_max + s] = v;
    }
    workgroupBarrier();
    for (var tt = 1u; tt < t_len; tt = tt + 1u) {
        let t = tl - tt;
        let prev = ((tt + 1u) % 2u) * MAX_S;
        let cur = (tt % 2u) * MAX_S;
        for (var s = lid; s < s_len; s = s + 256u) {
            let c = label(b, s);
            var v = rows[prev + s];
            if s + 1u < s_len { v = lse2(v, rows[prev + s + 1u]); }
            if s + 2u < s_len && c != p.blank && c != label(b, s + 2u) { v = lse2(v, rows[prev + s + 2u]); }
            if v > NEG { v = v + lp[lp0 + t * p.vocab + c]; }
            rows[cur + s] = v;
            beta[ab0 + t * p.s_max + s] = v;
        }
        workgroupBarrier();
    }
    if lid == 0u {
        var nll = -ll;
        if ll <= NEG { nll = select(inf(), 0.0, p.zero_inf == 1u); }
        out[b] = nll;
    }
}

@compute @workgroup_size(256)
fn ctc_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = lin(gid, nwg);
    if idx >= p.batch * p.t_max * p.vocab { return; }
    let c = idx % p.vocab;
    let t = (idx / p.vocab) % p.t_max;
    let b = idx / (p.vocab * p.t_max);
    let weight = weights[b];
    if t >= lens[2u * b] || weight == 0.0 {
        out[idx] = 0.0;
        return;
    }
    let ab0 = (b * p.t_max + t) * p.s_max;
    let l = lp[idx];
    // Only positions carrying class c contribute: every blank, or the labels equal to c.
    var lcab = NEG;
    let l_len = lens[2u * b + 1u];
    if c == p.blank {
        for (var j = 0u; j <= l_len; j = j + 1u) { lcab = lse2(lcab, alpha[ab0 + 2u * j] + beta[ab0 + 2u * j]); }
    } else {
        for (var j = 0u; j < l_len; j = j + 1u) {
            if targets[b * p.l_max + j] == c {
                lcab = lse2(lcab, alpha[ab0 + 2u * j + 1u] + beta[ab0 + 2u * j + 1u]);
            }
        }
    }
    var g = exp(l);
    if lcab > NEG { g = g - exp(lcab + nll_in[b] - l); }
    out[idx] = g * weight;
}
