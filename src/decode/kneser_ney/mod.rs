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
//! Memory is bounded (`--memory`, as lmplz's `-S`): the vocabulary is known before counting
//! (a first pass over the text), so an n-gram packs into one 128-bit integer; counts gather
//! in a bounded hash map per order, which is sorted into a run file when full. Every later
//! stage is a pass over tables sorted by n-gram, or a sort by the n-grams' suffixes and a
//! merge join (`sorted`): continuation counts and pruning top-down, probabilities
//! bottom-up (each n-gram meets its back-off n-gram's probability in suffix order), then the
//! ARPA file, each order joined with its contexts' back-off weights.

mod sorted;

use crate::error::{file_err, Error, Result};
use sorted::{Cursor, Entry, Scratch, Sorter, Table, ENTRY_BYTES};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

/// Word ids: these three first, then the words in sorted order.
const BOS: u32 = 0;
const EOS: u32 = 1;
const UNK: u32 = 2;

/// Word ids packed into one integer, the first word in the highest bits, so that integer
/// order is the n-grams' lexicographic order (an n-gram's continuations are one run). The
/// length is known from the array it sits in.
type Gram = u128;

/// Bytes a gathering hash map spends per distinct n-gram (key, count, the table's slack).
const MAP_BYTES: usize = 40;

/// Bit 0 of [`Entry::flags`]: the n-gram is written.
const KEEP: u32 = 1;

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

/// Counts n-grams of sentences over a fixed vocabulary, then estimates and writes the model.
pub struct KneserNey {
    order: usize,
    bits: u32,
    ids: HashMap<String, u32>,
    names: Vec<String>,
    scratch: Rc<Scratch>,
    /// Records a sort holds in memory (two sorts run at once).
    sort_cap: usize,
    /// Distinct n-grams an order's hash map gathers before it is sorted into a run.
    gather_cap: usize,
    /// Per order (index n - 1): counts not yet handed to `counted`.
    gathering: Vec<HashMap<Gram, u32>>,
    /// Per order: the counts, sorted and combined.
    counted: Vec<Sorter>,
}

/// What [`KneserNey::write_arpa`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    /// N-grams per order.
    pub ngrams: Vec<usize>,
    /// Discounts (D1, D2, D3+) per order.
    pub discounts: Vec<[f64; 3]>,
    /// Sorted runs of counts written to disk (0: counting fit in memory).
    pub spilled: usize,
}

/// The estimate before it is written: per order, the n-grams with their probabilities (`x`)
/// and kept flags, and (below the highest order) the contexts' log10 back-off weights (`y`).
struct Estimate {
    probs: Vec<Table>,
    backoffs: Vec<Table>,
    built: Built,
}

/// Sorts and joins by the whole n-gram.
fn by_key() -> sorted::SortKey {
    Box::new(|e: &Entry| e.key())
}

impl KneserNey {
    /// An empty model of `order` (at least 1) over `words` (the text's words, read in a first
    /// pass) that holds about `memory` bytes of counts in memory and spills the rest to
    /// temporary files in `temp_dir`; fails when n-grams of that order over so many words do
    /// not fit 128 bits.
    pub fn new(
        order: usize,
        words: impl IntoIterator<Item = String>,
        memory: usize,
        temp_dir: &Path,
    ) -> Result<KneserNey> {
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
        let scratch = match Scratch::new(temp_dir) {
            Ok(s) => s,
            Err(e) => return file_err(temp_dir, format!("cannot make temporary files: {e}")),
        };
        // Counting: each order's map and the sorted batch it hands over share the budget.
        let gather_cap = (memory / order / (MAP_BYTES + ENTRY_BYTES)).max(64);
        Ok(KneserNey {
            order,
            bits,
            ids: names.iter().cloned().zip(0..).collect(),
            names,
            sort_cap: (memory / (2 * ENTRY_BYTES)).max(64),
            gather_cap,
            gathering: (0..order).map(|_| HashMap::default()).collect(),
            counted: (0..order)
                .map(|_| Sorter::new(&scratch, gather_cap, true, by_key()))
                .collect(),
            scratch,
        })
    }

    /// Counts one sentence (already normalised; words split on whitespace; a word outside
    /// the vocabulary counts as `<unk>`).
    pub fn add_sentence(&mut self, sentence: &str) -> Result<()> {
        let mut ids = vec![BOS];
        ids.extend(
            sentence
                .split_whitespace()
                .map(|w| self.ids.get(w).copied().unwrap_or(UNK)),
        );
        if ids.len() == 1 {
            return Ok(());
        }
        ids.push(EOS);
        for n in 1..=self.order {
            for window in ids.windows(n) {
                if n == 1 && window[0] == BOS {
                    continue;
                }
                let g = window.iter().fold(0, |g, &w| self.push(g, w));
                let map = &mut self.gathering[n - 1];
                *map.entry(g).or_default() += 1;
                if map.len() >= self.gather_cap {
                    if let Err(e) = self.hand_over(n - 1) {
                        return self.scratch_err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves order `i + 1`'s gathered counts into its sort.
    fn hand_over(&mut self, i: usize) -> std::io::Result<()> {
        for (g, c) in self.gathering[i].drain() {
            self.counted[i].push(Entry::new(g, c))?;
        }
        Ok(())
    }

    fn scratch_err<T>(&self, e: std::io::Error) -> Result<T> {
        file_err(self.scratch.dir(), format!("temporary files: {e}"))
    }

    fn push(&self, g: Gram, w: u32) -> Gram {
        (g << self.bits) | w as Gram
    }

    fn last(&self, g: Gram) -> u32 {
        (g & ((1 << self.bits) - 1)) as u32
    }

    /// The last `n` words of an n-gram.
    fn low(&self, n: usize) -> u128 {
        match self.bits as usize * n {
            128.. => u128::MAX,
            b => (1 << b) - 1,
        }
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
        let est = match self.estimate(prune) {
            Ok(est) => est,
            Err(e) => return self.scratch_err(e),
        };
        // Under a temporary name first, so that a crash never leaves half a model.
        let partial = crate::files::with_suffix(path, ".partial");
        let written = self.write(&partial, path, &est);
        let synced = || std::fs::File::open(&partial)?.sync_all();
        if let Err(e) = written
            .and_then(|_| synced())
            .and_then(|_| std::fs::rename(&partial, path))
        {
            let _ = std::fs::remove_file(&partial);
            return file_err(path, format!("cannot write: {e}"));
        }
        Ok(est.built)
    }

    fn estimate(&mut self, prune: bool) -> std::io::Result<Estimate> {
        let (counted, spilled) = self.sorted_counts()?;
        let (adjusted, discounts, ngrams) = self.adjust(counted, prune)?;
        let (probs, backoffs) = self.probabilities(adjusted, &discounts)?;
        let built = Built {
            ngrams,
            discounts,
            spilled,
        };
        Ok(Estimate {
            probs,
            backoffs,
            built,
        })
    }

    /// Each order's raw counts, sorted by n-gram, and how many run files they went through.
    fn sorted_counts(&mut self) -> std::io::Result<(Vec<Table>, usize)> {
        // <s> is a unigram (a context) with no probability of its own: in the table with
        // count 0 so that it holds its back-off, left out of the vocabulary.
        for w in [BOS, EOS, UNK] {
            self.gathering[0].entry(w as Gram).or_insert(0);
        }
        let mut spilled = 0;
        let mut counted = Vec::with_capacity(self.order);
        for i in 0..self.order {
            self.hand_over(i)?;
            self.gathering[i] = HashMap::default();
        }
        for sort in std::mem::take(&mut self.counted) {
            spilled += sort.spilled();
            counted.push(Table::write(&self.scratch, sort.finish()?)?);
        }
        Ok((counted, spilled))
    }

    /// Top-down: which n-grams are written (a kept n-gram keeps its context and its
    /// back-off), and the adjusted counts: below the highest order, the number of distinct
    /// words before an n-gram (each (n+1)-gram adds one to its last n words), except for
    /// n-grams starting with <s>, which keep their own. Returns the tables, the discounts
    /// and the n-grams kept per order.
    #[allow(clippy::type_complexity)]
    fn adjust(
        &self,
        counted: Vec<Table>,
        prune: bool,
    ) -> std::io::Result<(Vec<Table>, Vec<[f64; 3]>, Vec<usize>)> {
        let (top, bits, cap) = (self.order, self.bits as usize, self.sort_cap);
        let mut adjusted: Vec<Option<Table>> = (0..top).map(|_| None).collect();
        let mut discounts = vec![[0.0; 3]; top];
        let mut ngrams = vec![0; top];
        for n in (1..=top).rev() {
            let prunes = prune && n >= 3;
            let (mut cont, mut needed) = (None, None);
            if let Some(upper) = adjusted.get(n).and_then(Option::as_ref) {
                let low = self.low(n);
                let mut c = Sorter::new(&self.scratch, cap, true, by_key());
                let mut k = Sorter::new(&self.scratch, cap, true, by_key());
                for e in upper.read()? {
                    let e = e?;
                    let g = e.key();
                    c.push(Entry::new(g & low, 1))?;
                    if prunes && e.flags & KEEP != 0 {
                        k.push(Entry::new(g >> bits, 0))?;
                        k.push(Entry::new(g & low, 0))?;
                    }
                }
                cont = Some(Cursor::new(c.finish()?, by_key())?);
                needed = Some(Cursor::new(k.finish()?, by_key())?);
            }
            let (mut t, mut kept) = ([0f64; 5], 0);
            let records = counted[n - 1].read()?.map(|e| {
                let mut e = e?;
                let g = e.key();
                let wanted = match &mut needed {
                    Some(c) => c.find(g)?.is_some(),
                    None => false,
                };
                if !prunes || e.count > 1 || wanted {
                    e.flags |= KEEP;
                    kept += 1;
                }
                let starts_bos = (g >> (bits * (n - 1))) as u32 == BOS;
                if let (Some(c), false) = (&mut cont, starts_bos) {
                    e.count = c.find(g)?.map_or(0, |c| c.count);
                }
                if (1..=4).contains(&e.count) {
                    t[e.count as usize] += 1.0;
                }
                Ok(e)
            });
            adjusted[n - 1] = Some(Table::write(&self.scratch, records)?);
            discounts[n - 1] = discounts_of(t);
            ngrams[n - 1] = kept;
        }
        let adjusted = adjusted
            .into_iter()
            .map(|t| t.expect("every order"))
            .collect();
        Ok((adjusted, discounts, ngrams))
    }

    /// Bottom-up: p(w | h) = (a(hw) - D(a(hw))) / a(h.) + gamma(h) p(w | h'). A context's
    /// continuations are one run of the sorted n-grams; the lower-order p comes from sorting
    /// the run's shares by suffix and joining with the order below. Returns each order's
    /// probabilities and (below the highest) its contexts' back-off weights.
    fn probabilities(
        &self,
        adjusted: Vec<Table>,
        discounts: &[[f64; 3]],
    ) -> std::io::Result<(Vec<Table>, Vec<Table>)> {
        let (bits, cap) = (self.bits as usize, self.sort_cap);
        let vocab = (adjusted[0].len - 1) as f64;
        let discount = |n: usize, a: u32| match a {
            0 => 0.0,
            a => discounts[n - 1][(a.min(3) - 1) as usize],
        };
        let (mut probs, mut backoffs): (Vec<Table>, Vec<Table>) = (vec![], vec![]);
        for (table, n) in adjusted.into_iter().zip(1..) {
            // Unigrams' probabilities are final here; higher orders' (share, weight) wait
            // for their back-off n-gram's probability.
            let mut unigrams = sorted::TableWriter::new(&self.scratch)?;
            let low = self.low(n - 1);
            let mut shares =
                Sorter::new(&self.scratch, cap, false, Box::new(move |e| e.key() & low));
            let mut weights = sorted::TableWriter::new(&self.scratch)?;
            let mut run: Vec<Entry> = Vec::new();
            let mut rows = table.read()?;
            loop {
                let next = rows.next().transpose()?;
                let same = |e: &Entry| {
                    run.last()
                        .is_none_or(|l| l.key() >> bits == e.key() >> bits)
                };
                if let Some(e) = next.filter(same) {
                    run.push(e);
                    continue;
                }
                let (mut sum, mut by_count, mut pruned) = (0.0, [0.0; 3], 0.0);
                for e in &run {
                    let a = e.count;
                    sum += a as f64;
                    if a > 0 {
                        by_count[(a.min(3) - 1) as usize] += 1.0;
                    }
                    if e.flags & KEEP == 0 {
                        pruned += a as f64 - discount(n, a);
                    }
                }
                let d = discounts[n - 1];
                let gamma =
                    (d[0] * by_count[0] + d[1] * by_count[1] + d[2] * by_count[2] + pruned) / sum;
                // The context's back-off weight, on its own line one order down.
                if n > 1 && sum > 0.0 {
                    let mut w = Entry::new(run[0].key() >> bits, 0);
                    w.y = gamma.log10() as f32 as f64;
                    weights.push(&w)?;
                }
                for mut e in run.drain(..) {
                    let a = e.count;
                    e.x = if sum > 0.0 {
                        (a as f64 - discount(n, a)) / sum
                    } else {
                        0.0
                    };
                    e.y = if sum > 0.0 { gamma } else { 0.0 };
                    if n == 1 {
                        e.x = (e.x + e.y * (1.0 / vocab)) as f32 as f64;
                        unigrams.push(&e)?;
                    } else {
                        shares.push(e)?;
                    }
                }
                match next {
                    Some(e) => run.push(e),
                    None => break,
                }
            }
            if n == 1 {
                probs.push(unigrams.finish()?);
                continue;
            }
            let mut below = Cursor::new(probs[n - 2].read()?, by_key())?;
            let mut out = Sorter::new(&self.scratch, cap, false, by_key());
            for e in shares.finish()? {
                let mut e = e?;
                let lower = below
                    .find(e.key() & low)?
                    .expect("a back-off n-gram exists");
                e.x = (e.x + e.y * lower.x) as f32 as f64;
                out.push(e)?;
            }
            probs.push(Table::write(&self.scratch, out.finish()?)?);
            backoffs.push(weights.finish()?);
        }
        Ok((probs, backoffs))
    }

    /// Writes the kept n-grams, sorted, with their back-offs: every lower-order n-gram but
    /// those ending in `</s>` gets one (0 when it is no context), as lmplz writes them. The
    /// file goes to `to`, in the format `path`'s name asks for.
    fn write(&self, to: &Path, path: &Path, est: &Estimate) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(to)?);
        let mut f: Box<dyn Write> = if path.extension().is_some_and(|e| e == "gz") {
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            Box::new(std::io::BufWriter::new(gz))
        } else {
            Box::new(file)
        };
        writeln!(f, "\n\\data\\")?;
        for (n, c) in est.built.ngrams.iter().enumerate() {
            writeln!(f, "ngram {}={c}", n + 1)?;
        }
        for n in 1..=self.order {
            writeln!(f, "\n\\{n}-grams:")?;
            let mut weights = match est.backoffs.get(n - 1) {
                Some(t) => Some(Cursor::new(t.read()?, by_key())?),
                None => None,
            };
            for e in est.probs[n - 1].read()? {
                let e = e?;
                if e.flags & KEEP == 0 {
                    continue;
                }
                let g = e.key();
                let lp = match n == 1 && g == BOS as Gram {
                    true => -99.0,
                    false => e.x.log10(),
                };
                let name = self.name(g, n);
                if n < self.order && self.last(g) != EOS {
                    let backoff = match &mut weights {
                        Some(c) => c.find(g)?.map_or(0.0, |c| c.y),
                        None => 0.0,
                    };
                    writeln!(f, "{lp:.7}\t{name}\t{backoff:.7}")?;
                } else {
                    writeln!(f, "{lp:.7}\t{name}")?;
                }
            }
        }
        writeln!(f, "\n\\end\\")?;
        f.flush()
    }
}

/// Modified Kneser-Ney discounts from one order's counts of adjusted counts `t[k]`, k = 1..4
/// (lmplz's formulas; 0.5, 1, 1.5 when a count of counts is zero, as on tiny corpora).
fn discounts_of(t: [f64; 5]) -> [f64; 3] {
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
