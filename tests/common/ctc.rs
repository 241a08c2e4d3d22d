//! The CPU CTC reference: loss and logits gradient of one utterance in f64 log space (exact
//! where probabilities would underflow, e.g. logits of +-1e4), as PyTorch's `ctc_loss`
//! defines them. Tests compare the kernels against it; `cargo bench` times it as the baseline.

fn lse(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        m
    } else {
        m + ((a - m).exp() + (b - m).exp()).ln()
    }
}

/// -log p(target | logits[..t_len]) and its gradient with respect to the `[t_len, v]` logits
/// (softmax minus the alignment posterior). An impossible target gives an infinite loss and
/// a NaN-free gradient of zeros.
pub fn ctc_reference(
    logits: &[f64],
    t_len: usize,
    v: usize,
    target: &[usize],
    blank: usize,
) -> (f64, Vec<f64>) {
    let ext: Vec<usize> = std::iter::once(blank)
        .chain(target.iter().flat_map(|&c| [c, blank]))
        .collect();
    let s_len = ext.len();
    if t_len == 0 {
        return (f64::INFINITY, Vec::new());
    }
    let lp: Vec<f64> = logits[..t_len * v]
        .chunks(v)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let z = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            row.iter().map(move |x| x - z)
        })
        .collect();
    let ninf = f64::NEG_INFINITY;
    let mut alpha = vec![ninf; t_len * s_len];
    let mut beta = vec![ninf; t_len * s_len];
    alpha[0] = lp[ext[0]];
    if s_len > 1 {
        alpha[1] = lp[ext[1]];
    }
    let skip = |s: usize| ext[s] != blank && ext[s] != ext[s - 2];
    for t in 1..t_len {
        for s in 0..s_len {
            let mut a = alpha[(t - 1) * s_len + s];
            if s >= 1 {
                a = lse(a, alpha[(t - 1) * s_len + s - 1]);
            }
            if s >= 2 && skip(s) {
                a = lse(a, alpha[(t - 1) * s_len + s - 2]);
            }
            alpha[t * s_len + s] = a + lp[t * v + ext[s]];
        }
    }
    for s in s_len.saturating_sub(2)..s_len {
        beta[(t_len - 1) * s_len + s] = lp[(t_len - 1) * v + ext[s]];
    }
    for t in (0..t_len - 1).rev() {
        for s in 0..s_len {
            let mut b = beta[(t + 1) * s_len + s];
            if s + 1 < s_len {
                b = lse(b, beta[(t + 1) * s_len + s + 1]);
            }
            if s + 2 < s_len && skip(s + 2) {
                b = lse(b, beta[(t + 1) * s_len + s + 2]);
            }
            beta[t * s_len + s] = b + lp[t * v + ext[s]];
        }
    }
    let last = (t_len - 1) * s_len;
    let ll = if s_len > 1 {
        lse(alpha[last + s_len - 1], alpha[last + s_len - 2])
    } else {
        alpha[last]
    };
    let mut grad = vec![0.0; t_len * v];
    if ll == ninf {
        return (f64::INFINITY, grad);
    }
    for t in 0..t_len {
        let mut post = vec![ninf; v];
        for s in 0..s_len {
            let i = t * s_len + s;
            post[ext[s]] = lse(post[ext[s]], alpha[i] + beta[i]);
        }
        for c in 0..v {
            let l = lp[t * v + c];
            grad[t * v + c] = l.exp() - (post[c] - ll - l).exp();
        }
    }
    (-ll, grad)
}
