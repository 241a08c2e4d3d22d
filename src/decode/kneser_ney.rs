//! Building an n-gram model: interpolated modified Kneser-Ney smoothing, the method of KenLM's
//! `lmplz`, written as ARPA. Highest-order n-grams keep their counts; lower orders count the
//! distinct words before them (continuation counts; n-grams starting with `<s>`, which
//! nothing precedes, keep theirs). Three discounts per order come from the counts of counts:
//! with t_k the number of n-grams counted k times and Y = t1 / (t1 + 2 t2), D1 = 1 - 2Y t2/t1,
//! D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3. Then p(w | h) = (a(hw) - D(a(hw))) / a(h·) +
//! γ(h) p(w | h'), γ(h) = (D1 N1(h·) + D2 N2(h·) + D3+ N3+(h·)) / a(h·), down to the unigrams,
//! interpolated with the uniform distribution over the vocabulary (`</s>` and `<unk>`
//! included, `<s>` not). Every conditional distribution sums to one.

use crate::error::{file_err, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Word ids: these three first.
const BOS: u32 = 0;
const EOS: u32 = 1;
const UNK: u32 = 2;

/// Per context: the sum of its n-grams' adjusted counts and how many have 1, 2, 3+.
type Context = (f64, [f64; 3]);

/// Counts n-grams of sentences, then estimates and writes the model.
pub struct KneserNey {
    order: usize,
    words: HashMap<String, u32>,
    names: Vec<String>,
    /// Raw counts of every order (index n - 1).
    counts: Vec<HashMap<Vec<u32>, u64>>,
}

/// What [`KneserNey::write_arpa`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    /// N-grams per order.
    pub ngrams: Vec<usize>,
    /// Discounts (D1, D2, D3+) per order.
    pub discounts: Vec<[f64; 3]>,
}

impl KneserNey {
    /// An empty model of `order` (at least 1).
    pub fn new(order: usize) -> KneserNey {
        let names: Vec<String> = ["<s>", "</s>", "<unk>"].map(String::from).to_vec();
        KneserNey {
            order: order.max(1),
            words: names.iter().cloned().zip(0..).collect(),
            names,
            counts: vec![HashMap::new(); order.max(1)],
        }
    }

    /// Counts one sentence (already normalised; words split on whitespace).
    pub fn add_sentence(&mut self, sentence: &str) {
        let mut ids = vec![BOS];
        for w in sentence.split_whitespace() {
            let next = self.names.len() as u32;
            let id = *self.words.entry(w.to_string()).or_insert(next);
            if id == next {
                self.names.push(w.to_string());
            }
            ids.push(id);
        }
        if ids.len() == 1 {
            return;
        }
        ids.push(EOS);
        for n in 1..=self.order {
            for gram in ids.windows(n) {
                if n == 1 && gram[0] == BOS {
                    continue;
                }
                *self.counts[n - 1].entry(gram.to_vec()).or_default() += 1;
            }
        }
    }

    /// Estimates the model and writes it as ARPA (log10), n-grams sorted.
    pub fn write_arpa(&self, path: &Path) -> Result<Built> {
        let n_max = self.order;
        // Adjusted counts: continuation counts below the highest order.
        let mut adjusted: Vec<HashMap<Vec<u32>, u64>> = vec![HashMap::new(); n_max];
        adjusted[n_max - 1] = self.counts[n_max - 1].clone();
        for n in (1..n_max).rev() {
            let mut a: HashMap<Vec<u32>, u64> = HashMap::new();
            for gram in self.counts[n].keys() {
                *a.entry(gram[1..].to_vec()).or_default() += 1;
            }
            for (gram, &c) in &self.counts[n - 1] {
                if gram[0] == BOS {
                    a.insert(gram.clone(), c);
                }
            }
            a.retain(|g, _| !(g.len() == 1 && g[0] == BOS));
            adjusted[n - 1] = a;
        }
        adjusted[0].entry(vec![UNK]).or_insert(0);
        adjusted[0].entry(vec![EOS]).or_insert(0);
        let discounts: Vec<[f64; 3]> = adjusted.iter().map(discounts).collect();
        // Per context: (sum of adjusted counts, N1, N2, N3+).
        let mut ctx: Vec<HashMap<Vec<u32>, Context>> = vec![HashMap::new(); n_max];
        for n in 0..n_max {
            for (gram, &a) in &adjusted[n] {
                let e = ctx[n].entry(gram[..n].to_vec()).or_default();
                e.0 += a as f64;
                if a > 0 {
                    e.1[(a.min(3) - 1) as usize] += 1.0;
                }
            }
        }
        let gamma = |n: usize, h: &[u32]| -> f64 {
            ctx[n].get(h).map_or(0.0, |(sum, k)| {
                let d = discounts[n];
                (d[0] * k[0] + d[1] * k[1] + d[2] * k[2]) / sum
            })
        };
        let vocab = adjusted[0].len() as f64;
        let mut prob: Vec<HashMap<Vec<u32>, f64>> = vec![HashMap::new(); n_max];
        for n in 0..n_max {
            let mut p = HashMap::with_capacity(adjusted[n].len());
            for (gram, &a) in &adjusted[n] {
                let h = &gram[..n];
                let sum = ctx[n][h].0;
                let d = if a == 0 {
                    0.0
                } else {
                    discounts[n][(a.min(3) - 1) as usize]
                };
                let lower = if n == 0 {
                    1.0 / vocab
                } else {
                    prob[n - 1][&gram[1..]]
                };
                let u = if sum > 0.0 { (a as f64 - d) / sum } else { 0.0 };
                p.insert(gram.clone(), u + gamma(n, h) * lower);
            }
            prob[n] = p;
        }
        let mut f = match std::fs::File::create(path) {
            Ok(f) => std::io::BufWriter::new(f),
            Err(e) => return file_err(path, format!("cannot write: {e}")),
        };
        let name = |g: &[u32]| -> String {
            g.iter()
                .map(|&i| self.names[i as usize].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let bos = vec![BOS];
        let mut text = String::from("\n\\data\\\n");
        // <s> is a unigram (a context) with no probability of its own.
        let counts: Vec<usize> = (0..n_max)
            .map(|n| prob[n].len() + (n == 0) as usize)
            .collect();
        for (n, c) in counts.iter().enumerate() {
            text += &format!("ngram {}={c}\n", n + 1);
        }
        for n in 0..n_max {
            text += &format!("\n\\{}-grams:\n", n + 1);
            let mut grams: Vec<(&Vec<u32>, f64)> = prob[n].iter().map(|(g, &p)| (g, p)).collect();
            if n == 0 {
                grams.push((&bos, f64::NAN));
            }
            grams.sort_by_key(|(g, _)| name(g));
            for (g, p) in grams {
                let lp = if p.is_nan() { -99.0 } else { p.log10() };
                let is_ctx = n + 1 < n_max && ctx[n + 1].contains_key(g.as_slice());
                if is_ctx || (n + 1 < n_max && g[g.len() - 1] != EOS) {
                    let b = if is_ctx { gamma(n + 1, g).log10() } else { 0.0 };
                    text += &format!("{lp:.7}\t{}\t{b:.7}\n", name(g));
                } else {
                    text += &format!("{lp:.7}\t{}\n", name(g));
                }
            }
        }
        text += "\n\\end\\\n";
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|_| f.flush()) {
            return file_err(path, format!("cannot write: {e}"));
        }
        Ok(Built {
            ngrams: counts,
            discounts,
        })
    }
}

/// Modified Kneser-Ney discounts from one order's adjusted counts (lmplz's formulas; 0.5, 1,
/// 1.5 when a count of counts is zero, as on tiny corpora).
fn discounts(adjusted: &HashMap<Vec<u32>, u64>) -> [f64; 3] {
    let mut t = [0f64; 5];
    for &a in adjusted.values() {
        if (1..=4).contains(&a) {
            t[a as usize] += 1.0;
        }
    }
    let y = t[1] / (t[1] + 2.0 * t[2]);
    let d = [
        1.0 - 2.0 * y * t[2] / t[1],
        2.0 - 3.0 * y * t[3] / t[2],
        3.0 - 4.0 * y * t[4] / t[3],
    ];
    let ok = d
        .iter()
        .enumerate()
        .all(|(k, &x)| x.is_finite() && x > 0.0 && x < (k + 1) as f64);
    if ok {
        d
    } else {
        [0.5, 1.0, 1.5]
    }
}
