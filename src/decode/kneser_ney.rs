//! Building an n-gram model: interpolated modified Kneser-Ney smoothing, the method of KenLM's
//! `lmplz`, written as ARPA. Highest-order n-grams keep their counts; lower orders count the
//! distinct words before them (continuation counts; n-grams starting with `<s>`, which
//! nothing precedes, keep theirs). Three discounts per order come from the counts of counts:
//! with t_k the number of n-grams counted k times and Y = t1 / (t1 + 2 t2), D1 = 1 - 2Y t2/t1,
//! D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3. Then p(w | h) = (a(hw) - D(a(hw))) / a(h·) +
//! γ(h) p(w | h'), γ(h) = (D1 N1(h·) + D2 N2(h·) + D3+ N3+(h·)) / a(h·), down to the unigrams,
//! interpolated with the uniform distribution over the vocabulary (`</s>` and `<unk>`
//! included, `<s>` not). Every conditional distribution sums to one.
//!
//! Pruning (lmplz's `--prune 0 0 1`) drops n-grams of order 3 and above seen once, unless a
//! kept longer n-gram needs them as its context or its back-off; their discounted mass moves
//! to their context's back-off weight, so distributions still sum to one.
//!
//! Memory: the vocabulary is known before counting (a first pass over the text), so an
//! n-gram packs into one 128-bit integer; each distinct n-gram costs one hash-map entry of
//! 32 bytes (plus its context's), whatever the text's size. There is no spilling to disk:
//! the distinct n-grams must fit in memory.

use crate::error::{file_err, Error, Result};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;

/// Word ids: these three first, then the words in sorted order.
const BOS: u32 = 0;
const EOS: u32 = 1;
const UNK: u32 = 2;

/// Word ids packed into one integer, the first word in the highest bits, so that integer
/// order is the n-grams' lexicographic order. The length is known from the map it sits in.
type Gram = u128;

/// Hash maps keyed by packed n-grams. FxHash (rustc-hash 1) leaves the low bits of the hash,
/// which pick the bucket, to the key's low bits: n-grams ending in the same word would
/// collide. This mixes every bit (splitmix64's finaliser).
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<MixHasher>>;

/// See [`HashMap`].
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, x: u64) {
        let mut z = (self.0 ^ x).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = z ^ (z >> 31);
    }

    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One n-gram: its count (raw, then adjusted), whether it is written, its probability.
#[derive(Clone, Copy, Default)]
struct Entry {
    count: u32,
    keep: bool,
    prob: f32,
}

/// Per context: the sum of its n-grams' adjusted counts, how many have 1, 2, 3+, and the
/// discounted mass of its pruned n-grams.
#[derive(Clone, Copy, Default)]
struct Context {
    sum: u32,
    by_count: [u32; 3],
    pruned: f64,
}

/// Counts n-grams of sentences over a fixed vocabulary, then estimates and writes the model.
pub struct KneserNey {
    order: usize,
    bits: u32,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Per order (index n - 1).
    grams: Vec<HashMap<Gram, Entry>>,
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
    /// An empty model of `order` (at least 1) over `words` (the text's words, read in a first
    /// pass); fails when n-grams of that order over so many words do not fit 128 bits.
    pub fn new(order: usize, words: impl IntoIterator<Item = String>) -> Result<KneserNey> {
        let order = order.max(1);
        let mut words: Vec<String> = words.into_iter().collect();
        words.sort_unstable();
        words.dedup();
        let mut names: Vec<String> = ["<s>", "</s>", "<unk>"].map(String::from).to_vec();
        let special = |w: &String| matches!(w.as_str(), "<s>" | "</s>" | "<unk>");
        names.extend(words.into_iter().filter(|w| !special(w)));
        let bits = u32::BITS - (names.len() as u32).leading_zeros();
        if bits as usize * order > 128 {
            return Err(Error::Usage(format!(
                "--order {order} over {} words needs {} bits per n-gram, at most 128: choose \
                 an order up to {}",
                names.len(),
                bits as usize * order,
                128 / bits
            )));
        }
        Ok(KneserNey {
            order,
            bits,
            ids: names.iter().cloned().zip(0..).collect(),
            names,
            grams: vec![HashMap::default(); order],
        })
    }

    /// Counts one sentence (already normalised; words split on whitespace; a word outside
    /// the vocabulary counts as `<unk>`).
    pub fn add_sentence(&mut self, sentence: &str) {
        let mut ids = vec![BOS];
        ids.extend(
            sentence
                .split_whitespace()
                .map(|w| self.ids.get(w).copied().unwrap_or(UNK)),
        );
        if ids.len() == 1 {
            return;
        }
        ids.push(EOS);
        for n in 1..=self.order {
            for window in ids.windows(n) {
                if n == 1 && window[0] == BOS {
                    continue;
                }
                let g = window.iter().fold(0, |g, &w| self.push(g, w));
                self.grams[n - 1].entry(g).or_default().count += 1;
            }
        }
    }

    fn push(&self, g: Gram, w: u32) -> Gram {
        (g << self.bits) | w as Gram
    }

    fn last(&self, g: Gram) -> u32 {
        (g & ((1 << self.bits) - 1)) as u32
    }

    /// The context: all but the last word.
    fn prefix(&self, g: Gram) -> Gram {
        g >> self.bits
    }

    /// The back-off: all but the first word of an n-gram of length `n`.
    fn suffix(&self, g: Gram, n: usize) -> Gram {
        g & ((1 << (self.bits as usize * (n - 1))) - 1)
    }

    fn name(&self, g: Gram, n: usize) -> String {
        let mut words: Vec<&str> = (0..n)
            .map(|i| {
                self.names[((g >> (self.bits as usize * i)) & ((1 << self.bits) - 1)) as usize]
                    .as_str()
            })
            .collect();
        words.reverse();
        words.join(" ")
    }

    /// Estimates the model and writes it as ARPA (log10), n-grams sorted, gzipped when `path`
    /// ends in `.gz`; with `prune`, drops singletons of order 3 and above.
    pub fn write_arpa(mut self, path: &Path, prune: bool) -> Result<Built> {
        let top = self.order;
        // Which n-grams are written: longest first, as a kept n-gram keeps its context and
        // its back-off.
        for n in (1..=top).rev() {
            let singles = prune && n >= 3;
            for e in self.grams[n - 1].values_mut() {
                e.keep = !singles || e.count > 1;
            }
            if n < top && singles {
                let kept: Vec<Gram> = self.grams[n]
                    .iter()
                    .filter(|(_, e)| e.keep)
                    .map(|(&g, _)| g)
                    .collect();
                for g in kept {
                    for h in [self.prefix(g), self.suffix(g, n + 1)] {
                        if let Some(e) = self.grams[n - 1].get_mut(&h) {
                            e.keep = true;
                        }
                    }
                }
            }
        }
        // Continuation counts below the highest order: each (n+1)-gram adds one to its
        // back-off n-gram (every text n-gram not at a sentence's start is one).
        for n in (1..top).rev() {
            let (lower, upper) = self.grams.split_at_mut(n);
            let bits = self.bits as usize;
            for (&g, e) in lower[n - 1].iter_mut() {
                if (g >> (bits * (n - 1))) as u32 != BOS {
                    e.count = 0;
                }
            }
            let mask = (1 << (bits * n)) - 1;
            for &g in upper[0].keys() {
                if let Some(e) = lower[n - 1].get_mut(&(g & mask)) {
                    e.count += 1;
                }
            }
        }
        for w in [EOS, UNK] {
            self.grams[0].entry(w as Gram).or_insert(Entry {
                count: 0,
                keep: true,
                prob: 0.0,
            });
        }
        let discounts: Vec<[f64; 3]> = self.grams.iter().map(discounts).collect();
        let discount = |n: usize, a: u32| {
            if a == 0 {
                0.0
            } else {
                discounts[n - 1][(a.min(3) - 1) as usize]
            }
        };
        let mut contexts: Vec<HashMap<Gram, Context>> = vec![HashMap::default(); top];
        for n in 1..=top {
            for (&g, e) in &self.grams[n - 1] {
                let c = contexts[n - 1].entry(self.prefix(g)).or_default();
                c.sum += e.count;
                if e.count > 0 {
                    c.by_count[(e.count.min(3) - 1) as usize] += 1;
                }
                if !e.keep {
                    c.pruned += e.count as f64 - discount(n, e.count);
                }
            }
        }
        let gamma = |n: usize, h: Gram| -> Option<f64> {
            contexts[n - 1].get(&h).map(|c| {
                let d = discounts[n - 1];
                let k = c.by_count.map(|k| k as f64);
                (d[0] * k[0] + d[1] * k[1] + d[2] * k[2] + c.pruned) / c.sum as f64
            })
        };
        let vocab = self.grams[0].len() as f64;
        for n in 1..=top {
            let (lower, this) = self.grams.split_at_mut(n - 1);
            for (&g, e) in this[0].iter_mut() {
                let h = g >> self.bits;
                let sum = contexts[n - 1][&h].sum as f64;
                let backoff = if n == 1 {
                    1.0 / vocab
                } else {
                    let s = g & ((1 << (self.bits as usize * (n - 1))) - 1);
                    lower[n - 2][&s].prob as f64
                };
                let own = if sum > 0.0 {
                    (e.count as f64 - discount(n, e.count)) / sum
                } else {
                    0.0
                };
                e.prob = (own + gamma(n, h).unwrap_or(0.0) * backoff) as f32;
            }
        }
        let ngrams: Vec<usize> = (1..=top)
            .map(|n| self.grams[n - 1].values().filter(|e| e.keep).count() + (n == 1) as usize)
            .collect();
        let written = self.write(path, &ngrams, |n, g| {
            // Back-off weights of n-grams that are contexts; lmplz also gives one (0) to
            // every lower-order n-gram but those ending in </s>.
            (n < top && self.last(g) != EOS).then(|| gamma(n + 1, g).map_or(0.0, f64::log10))
        });
        if let Err(e) = written {
            return file_err(path, format!("cannot write: {e}"));
        }
        Ok(Built { ngrams, discounts })
    }

    /// Writes the kept n-grams, sorted, with `backoff(n, gram)` where it gives one.
    fn write(
        &self,
        path: &Path,
        ngrams: &[usize],
        backoff: impl Fn(usize, Gram) -> Option<f64>,
    ) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut f: Box<dyn Write> = if path.extension().is_some_and(|e| e == "gz") {
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            Box::new(std::io::BufWriter::new(gz))
        } else {
            Box::new(file)
        };
        writeln!(f, "\n\\data\\")?;
        for (n, c) in ngrams.iter().enumerate() {
            writeln!(f, "ngram {}={c}", n + 1)?;
        }
        for n in 1..=self.order {
            writeln!(f, "\n\\{n}-grams:")?;
            let mut kept: Vec<Gram> = self.grams[n - 1]
                .iter()
                .filter(|(_, e)| e.keep)
                .map(|(&g, _)| g)
                .collect();
            if n == 1 {
                // <s> is a unigram (a context) with no probability of its own.
                kept.push(BOS as Gram);
            }
            kept.sort_unstable();
            for g in kept {
                let lp = match self.grams[n - 1].get(&g) {
                    Some(e) => (e.prob as f64).log10(),
                    None => -99.0,
                };
                let name = self.name(g, n);
                match backoff(n, g) {
                    Some(b) => writeln!(f, "{lp:.7}\t{name}\t{b:.7}")?,
                    None => writeln!(f, "{lp:.7}\t{name}")?,
                }
            }
        }
        writeln!(f, "\n\\end\\")?;
        f.flush()
    }
}

/// Modified Kneser-Ney discounts from one order's adjusted counts (lmplz's formulas; 0.5, 1,
/// 1.5 when a count of counts is zero, as on tiny corpora).
fn discounts(grams: &HashMap<Gram, Entry>) -> [f64; 3] {
    let mut t = [0f64; 5];
    for e in grams.values() {
        if (1..=4).contains(&e.count) {
            t[e.count as usize] += 1.0;
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
