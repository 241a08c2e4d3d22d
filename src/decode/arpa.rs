//! N-gram language models in the ARPA format, scored as KenLM scores them: log10
//! probabilities with back-off, `<s>` to begin a sentence and `</s>` to end it, and words
//! the model does not know scored (and kept in the context) as `<unk>`.

use crate::error::{file_err, Result};
use rustc_hash::FxHashMap as HashMap;
use std::io::BufRead;
use std::path::Path;

/// The longest n-grams read (scoring builds n-grams on the stack).
const MAX_ORDER: usize = 16;

/// An ARPA n-gram model held in hash maps (word ids per order).
pub struct ArpaLm {
    /// Highest order.
    pub order: usize,
    words: HashMap<String, u32>,
    /// Per order (index n - 1): n-gram of word ids -> (log10 prob, log10 back-off).
    grams: Vec<HashMap<Vec<u32>, (f32, f32)>>,
    unk: Option<u32>,
    /// Unigram lines of three tab-separated fields (with a back-off): the known words as
    /// pyctcdecode reads them from an ARPA file (`load_unigram_set_from_arpa`).
    listed: Vec<String>,
}

/// `path` for reading, through a gzip decoder when it starts with gzip's magic bytes.
fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    if file.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::bufread::MultiGzDecoder::new(file);
        Ok(Box::new(std::io::BufReader::new(gz)))
    } else {
        Ok(Box::new(file))
    }
}

/// The words a score is conditioned on: the last `order - 1` at most, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LmState(Vec<u32>);

impl ArpaLm {
    /// Reads an ARPA file, plain or gzipped (told by its first bytes, not its name); a
    /// malformed line is an error naming its line number.
    pub fn load(path: &Path) -> Result<ArpaLm> {
        let file = match open(path) {
            Ok(f) => f,
            Err(e) => return file_err(path, format!("cannot read: {e}")),
        };
        let mut lm = ArpaLm {
            order: 0,
            words: HashMap::default(),
            grams: Vec::new(),
            unk: None,
            listed: Vec::new(),
        };
        let mut counts: Vec<usize> = Vec::new();
        let mut section: Option<usize> = None; // None: header, Some(0): \data\, Some(n): n-grams
        for (i, line) in file.lines().enumerate() {
            let bad = |msg: String| file_err(path, format!("line {}: {msg}", i + 1));
            let line = match line {
                Ok(l) => l,
                Err(e) => return bad(format!("cannot read: {e}")),
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if line == "\\data\\" {
                section = Some(0);
                continue;
            }
            if line == "\\end\\" {
                break;
            }
            if let Some(n) = line
                .strip_prefix('\\')
                .and_then(|l| l.strip_suffix("-grams:"))
            {
                let Ok(n) = n.parse::<usize>() else {
                    return bad(format!("unknown section {line:?}"));
                };
                if n == 0 || n > counts.len() {
                    return bad(format!(
                        "{n}-grams, but \\data\\ announces {} orders",
                        counts.len()
                    ));
                }
                section = Some(n);
                continue;
            }
            match section {
                None => continue,
                Some(0) => {
                    let Some((n, c)) = line
                        .strip_prefix("ngram ")
                        .and_then(|l| l.split_once('='))
                        .and_then(|(n, c)| {
                            Some((
                                n.trim().parse::<usize>().ok()?,
                                c.trim().parse::<usize>().ok()?,
                            ))
                        })
                    else {
                        return bad(format!("expected `ngram N=COUNT`, got {line:?}"));
                    };
                    if n != counts.len() + 1 {
                        return bad(format!("ngram {n} out of order"));
                    }
                    if n > MAX_ORDER {
                        return bad(format!("order {n}: at most {MAX_ORDER} is supported"));
                    }
                    counts.push(c);
                    // The count is only the header's word: capped, so that a corrupt one
                    // cannot ask for terabytes before a single n-gram is read.
                    lm.grams.push(HashMap::with_capacity_and_hasher(
                        c.min(1 << 20),
                        Default::default(),
                    ));
                }
                Some(n) => {
                    let mut parts = line.split_whitespace();
                    let prob = parts.next().and_then(|p| p.parse::<f32>().ok());
                    let toks: Vec<&str> = parts.collect();
                    let (Some(prob), true) = (prob, toks.len() >= n) else {
                        return bad(format!(
                            "expected `LOG10PROB w1 .. w{n} [BACKOFF]`, got {line:?}"
                        ));
                    };
                    // As KenLM: a log10 probability is at most 0 (-inf, or -99 for `<s>`,
                    // means never), a back-off is finite.
                    if prob.is_nan() || prob > 0.0 {
                        return bad(format!(
                            "log10 probability {prob} (must be <= 0) in {line:?}"
                        ));
                    }
                    let backoff = match toks.len() - n {
                        0 => 0.0,
                        1 => match toks[n].parse::<f32>() {
                            Ok(b) if b.is_finite() => b,
                            _ => return bad(format!("bad back-off {:?}", toks[n])),
                        },
                        _ => return bad(format!("too many fields for a {n}-gram: {line:?}")),
                    };
                    let mut ids = Vec::with_capacity(n);
                    for w in &toks[..n] {
                        let next = lm.words.len() as u32;
                        let id = *lm.words.entry(w.to_string()).or_insert(next);
                        // The unigrams list the whole vocabulary; a longer n-gram's word
                        // outside it would never be reached by scoring (which looks words
                        // up among the unigrams), so the file is damaged or hand-edited.
                        if n > 1 && !lm.grams[0].contains_key(&[id][..]) {
                            return bad(format!(
                                "{w:?} in this {n}-gram is not a unigram (the 1-grams \
                                 list every word first): {line:?}"
                            ));
                        }
                        ids.push(id);
                    }
                    if lm.grams[n - 1].insert(ids, (prob, backoff)).is_some() {
                        return bad(format!("{n}-gram listed twice: {line:?}"));
                    }
                    if n == 1 && line.split('\t').count() == 3 {
                        lm.listed.push(toks[0].to_string());
                    }
                }
            }
        }
        if counts.is_empty() || lm.grams[0].is_empty() {
            return file_err(path, "no \\data\\ section or no unigrams: not an ARPA file");
        }
        for (n, (&said, grams)) in counts.iter().zip(&lm.grams).enumerate() {
            if said != grams.len() {
                return file_err(
                    path,
                    format!(
                        "\\data\\ announces {said} {}-grams, the file lists {} (truncated or edited?)",
                        n + 1,
                        grams.len()
                    ),
                );
            }
        }
        lm.order = counts.len();
        lm.unk = lm.words.get("<unk>").copied();
        Ok(lm)
    }

    /// Whether the model has `word` as a unigram (`word in kenlm.Model`).
    pub fn contains(&self, word: &str) -> bool {
        self.words
            .get(word)
            .is_some_and(|id| self.grams[0].contains_key(&[*id][..]))
    }

    /// The unigrams (words) of the model, `<s>`, `</s>` and `<unk>` included.
    pub fn unigrams(&self) -> impl Iterator<Item = &str> {
        self.words
            .iter()
            .filter(|(_, id)| self.grams[0].contains_key(&[**id][..]))
            .map(|(w, _)| w.as_str())
    }

    /// The words pyctcdecode takes as known from this file: unigram lines with a back-off.
    pub fn listed_unigrams(&self) -> &[String] {
        &self.listed
    }

    /// The context at the start of a sentence (`<s>`).
    pub fn begin_sentence(&self) -> LmState {
        LmState(
            self.words
                .get("<s>")
                .map(|&id| vec![id])
                .unwrap_or_default(),
        )
    }

    /// An empty context.
    pub fn null_context(&self) -> LmState {
        LmState(Vec::new())
    }

    /// log10 p(`word` | `state`) with back-off (KenLM's `BaseScore`), and the state after it.
    pub fn score(&self, state: &LmState, word: &str) -> (f32, LmState) {
        let id = self
            .words
            .get(word)
            .copied()
            .filter(|id| self.grams[0].contains_key(&[*id][..]));
        let Some(id) = id.or(self.unk) else {
            return (f32::NEG_INFINITY, LmState::default());
        };
        let ctx = &state.0;
        let mut backoff = 0.0;
        let mut score = None;
        // Longest context first: p(w | h) = backoff(h) + p(w | h minus its oldest word).
        let mut buf = [0u32; MAX_ORDER];
        for start in 0..=ctx.len() {
            let n = ctx.len() - start + 1;
            buf[..n - 1].copy_from_slice(&ctx[start..]);
            buf[n - 1] = id;
            let gram = &buf[..n];
            if let Some((p, _)) = self.grams.get(n - 1).and_then(|g| g.get(gram)) {
                score = Some(backoff + p);
                break;
            }
            if let Some((_, b)) = self.grams.get(n - 2).and_then(|g| g.get(&ctx[start..])) {
                backoff += b;
            }
        }
        let score = score.unwrap_or(f32::NEG_INFINITY);
        // An unknown word is `<unk>` in the context too, as in KenLM (its back-off applies).
        let mut next = ctx.clone();
        next.push(id);
        let keep = self.order.saturating_sub(1);
        if next.len() > keep {
            next.drain(..next.len() - keep);
        }
        (score, LmState(next))
    }
}
