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
//! n-gram packs into one 128-bit integer. Counts gather in a bounded hash map per order that
//! is sorted and merged into a sorted array when full; the estimate then works on the sorted
//! arrays (contexts are runs, back-offs binary searches), at 29 bytes per distinct n-gram
//! (key, count, probability, back-off, kept) whatever the text's size. There is no spilling
//! to disk: the distinct n-grams must fit in memory.

use crate::error::{file_err, Error, Result};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;

/// Word ids: these three first, then the words in sorted order.
const BOS: u32 = 0;
const EOS: u32 = 1;
const UNK: u32 = 2;

/// Word ids packed into one integer, the first word in the highest bits, so that integer
/// order is the n-grams' lexicographic order (an n-gram's continuations are one run). The
/// length is known from the array it sits in.
type Gram = u128;

/// Distinct n-grams an order's hash map gathers before it is merged into the sorted array.
const GATHER: usize = 1 << 20;

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

/// One order's n-grams, sorted, with parallel columns.
#[derive(Default)]
struct Order {
    keys: Vec<Gram>,
    /// Raw counts, then adjusted ones.
    counts: Vec<u32>,
    /// Counts not yet merged into `keys`.
    gathering: HashMap<Gram, u32>,
    keep: Vec<bool>,
    prob: Vec<f32>,
    /// log10 back-off weight as a context (0 when not one).
    backoff: Vec<f32>,
}

impl Order {
    /// Merges the gathered counts into the sorted columns (in place, from the back).
    fn merge(&mut self) {
        let mut new: Vec<(Gram, u32)> = self.gathering.drain().collect();
        new.sort_unstable_by_key(|e| e.0);
        let (n, m) = (self.keys.len(), new.len());
        // Exactly: a doubling growth would waste up to half of the largest arrays.
        self.keys.reserve_exact(m);
        self.counts.reserve_exact(m);
        self.keys.resize(n + m, 0);
        self.counts.resize(n + m, 0);
        let (mut i, mut j, mut at) = (n, m, n + m);
        while j > 0 {
            at -= 1;
            if i > 0 && self.keys[i - 1] >= new[j - 1].0 {
                let same = self.keys[i - 1] == new[j - 1].0;
                self.keys[at] = self.keys[i - 1];
                self.counts[at] = self.counts[i - 1] + if same { new[j - 1].1 } else { 0 };
                i -= 1;
                j -= same as usize;
            } else {
                self.keys[at] = new[j - 1].0;
                self.counts[at] = new[j - 1].1;
                j -= 1;
            }
        }
        // Keys counted before and again leave a gap between the untouched head [0, i) and the
        // merged tail [at, n + m): close it.
        if at > i {
            let gap = at - i;
            self.keys.copy_within(at.., i);
            self.counts.copy_within(at.., i);
            self.keys.truncate(n + m - gap);
            self.counts.truncate(n + m - gap);
        }
    }

    fn find(&self, g: Gram) -> Option<usize> {
        self.keys.binary_search(&g).ok()
    }
}

/// Counts n-grams of sentences over a fixed vocabulary, then estimates and writes the model.
pub struct KneserNey {
    order: usize,
    bits: u32,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Per order (index n - 1).
    grams: Vec<Order>,
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
            grams: (0..order).map(|_| Order::default()).collect(),
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
                let order = &mut self.grams[n - 1];
                *order.gathering.entry(g).or_default() += 1;
                if order.gathering.len() >= GATHER {
                    order.merge();
                }
            }
        }
    }

    fn push(&self, g: Gram, w: u32) -> Gram {
        (g << self.bits) | w as Gram
    }

    fn last(&self, g: Gram) -> u32 {
        (g & ((1 << self.bits) - 1)) as u32
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
        for o in &mut self.grams {
            o.merge();
            o.gathering = HashMap::default();
        }
        // <s> is a unigram (a context) with no probability of its own: in the table with
        // count 0 so that it holds its back-off, left out of the vocabulary.
        let uni = &mut self.grams[0];
        for w in [BOS, EOS, UNK] {
            uni.gathering.insert(w as Gram, 0);
        }
        uni.merge();
        for o in &mut self.grams {
            let n = o.keys.len();
            o.keep = vec![true; n];
            o.prob = vec![0.0; n];
            o.backoff = vec![0.0; n];
        }
        // Which n-grams are written: longest first, as a kept n-gram keeps its context and
        // its back-off.
        for n in (3..=top).rev().filter(|_| prune) {
            let (lower, upper) = self.grams.split_at_mut(n);
            let this = &mut lower[n - 1];
            for (k, &c) in this.keep.iter_mut().zip(&this.counts) {
                *k = c > 1;
            }
            if let Some(up) = upper.first() {
                for (&g, _) in up.keys.iter().zip(&up.keep).filter(|(_, &k)| k) {
                    let bits = self.bits as usize;
                    for h in [g >> bits, g & ((1 << (bits * n)) - 1)] {
                        if let Ok(i) = this.keys.binary_search(&h) {
                            this.keep[i] = true;
                        }
                    }
                }
            }
        }
        // Continuation counts below the highest order: each (n+1)-gram adds one to its
        // back-off n-gram (every text n-gram not at a sentence's start is one).
        for n in (1..top).rev() {
            let (lower, upper) = self.grams.split_at_mut(n);
            let this = &mut lower[n - 1];
            let bits = self.bits as usize;
            for (&g, c) in this.keys.iter().zip(this.counts.iter_mut()) {
                if (g >> (bits * (n - 1))) as u32 != BOS {
                    *c = 0;
                }
            }
            let mask = (1 << (bits * n)) - 1;
            for &g in &upper[0].keys {
                if let Ok(i) = this.keys.binary_search(&(g & mask)) {
                    this.counts[i] += 1;
                }
            }
        }
        let discounts: Vec<[f64; 3]> = self.grams.iter().map(|o| discounts(&o.counts)).collect();
        let discount = |n: usize, a: u32| match a {
            0 => 0.0,
            a => discounts[n - 1][(a.min(3) - 1) as usize],
        };
        let vocab = (self.grams[0].keys.len() - 1) as f64;
        for n in 1..=top {
            let (lower, this) = self.grams.split_at_mut(n - 1);
            let this = &mut this[0];
            // A context's continuations are one run of the sorted keys.
            let mut start = 0;
            while start < this.keys.len() {
                let h = this.keys[start] >> self.bits;
                let end = start + this.keys[start..].partition_point(|&g| g >> self.bits == h);
                let run = start..end;
                let (mut sum, mut by_count, mut pruned) = (0.0, [0.0; 3], 0.0);
                for i in run.clone() {
                    let a = this.counts[i];
                    sum += a as f64;
                    if a > 0 {
                        by_count[(a.min(3) - 1) as usize] += 1.0;
                    }
                    if !this.keep[i] {
                        pruned += a as f64 - discount(n, a);
                    }
                }
                let d = discounts[n - 1];
                let gamma =
                    (d[0] * by_count[0] + d[1] * by_count[1] + d[2] * by_count[2] + pruned) / sum;
                for i in run {
                    let g = this.keys[i];
                    let lower_p = match n {
                        1 => 1.0 / vocab,
                        _ => {
                            let o = &lower[n - 2];
                            let s = g & ((1 << (self.bits as usize * (n - 1))) - 1);
                            o.prob[o.find(s).expect("a back-off n-gram exists")] as f64
                        }
                    };
                    let a = this.counts[i];
                    let own = if sum > 0.0 {
                        (a as f64 - discount(n, a)) / sum
                    } else {
                        0.0
                    };
                    this.prob[i] = (own + if sum > 0.0 { gamma } else { 0.0 } * lower_p) as f32;
                }
                // The context's back-off weight, on its own line one order down.
                if n > 1 && sum > 0.0 {
                    let o = &mut lower[n - 2];
                    if let Some(i) = o.find(h) {
                        o.backoff[i] = gamma.log10() as f32;
                    }
                }
                start = end;
            }
        }
        let bos = self.grams[0]
            .find(BOS as Gram)
            .expect("<s> is in the table");
        let ngrams: Vec<usize> = self
            .grams
            .iter()
            .map(|o| o.keep.iter().filter(|&&k| k).count())
            .collect();
        let written = self.write(path, &ngrams, bos);
        if let Err(e) = written {
            return file_err(path, format!("cannot write: {e}"));
        }
        Ok(Built { ngrams, discounts })
    }

    /// Writes the kept n-grams, sorted, with their back-offs: every lower-order n-gram but
    /// those ending in `</s>` gets one (0 when it is no context), as lmplz writes them.
    fn write(&self, path: &Path, ngrams: &[usize], bos: usize) -> std::io::Result<()> {
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
            let o = &self.grams[n - 1];
            for i in (0..o.keys.len()).filter(|&i| o.keep[i]) {
                let g = o.keys[i];
                let lp = match n == 1 && i == bos {
                    true => -99.0,
                    false => (o.prob[i] as f64).log10(),
                };
                let name = self.name(g, n);
                if n < self.order && self.last(g) != EOS {
                    writeln!(f, "{lp:.7}\t{name}\t{:.7}", o.backoff[i] as f64)?;
                } else {
                    writeln!(f, "{lp:.7}\t{name}")?;
                }
            }
        }
        writeln!(f, "\n\\end\\")?;
        f.flush()
    }
}

/// Modified Kneser-Ney discounts from one order's adjusted counts (lmplz's formulas; 0.5, 1,
/// 1.5 when a count of counts is zero, as on tiny corpora).
fn discounts(counts: &[u32]) -> [f64; 3] {
    let mut t = [0f64; 5];
    for &c in counts {
        if (1..=4).contains(&c) {
            t[c as usize] += 1.0;
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
