//! CTC prefix beam search with shallow fusion of a word n-gram model, as `pyctcdecode` 0.5
//! does it (`BeamSearchDecoderCTC.decode_beams`), so that the same logits, labels, model and
//! parameters give the same transcript: log-softmax clipped at 1e-15, tokens below
//! `token_min_logp` skipped unless a frame's best, beams merged on (text, partial word, last
//! token), each complete word scored `alpha * ln p(word | history) + beta` (KenLM's log10
//! converted), a partial word no known word starts with offset by `unk_score_offset`, beams
//! `beam_prune_logp` below the best dropped, `beam_width` kept, and `</s>` scored at the end.

use super::arpa::{ArpaLm, LmState};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeSet;
use std::rc::Rc;

/// pyctcdecode's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeamOptions {
    /// Beams kept after each frame.
    pub beam_width: usize,
    /// Beams scoring this far (natural log) below the best are dropped.
    pub beam_prune_logp: f64,
    /// Tokens with a log probability below this are not tried (except a frame's best).
    pub token_min_logp: f64,
    /// Weight of the language model.
    pub alpha: f64,
    /// Bonus per word.
    pub beta: f64,
    /// Log score added for a word or partial word the language model does not know.
    pub unk_score_offset: f64,
    /// Score `<s>` at the start and `</s>` at the end.
    pub score_boundary: bool,
    /// After each frame keep one beam per recent history (the last `order - 1` words, the
    /// partial word, the last token): what `decode` does, as only the best beam is wanted.
    pub prune_history: bool,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beam_width: 100,
            beam_prune_logp: -10.0,
            token_min_logp: -5.0,
            alpha: 0.5,
            beta: 1.5,
            unk_score_offset: -10.0,
            score_boundary: true,
            prune_history: false,
        }
    }
}

/// Characters per word past which an unknown partial word's penalty grows.
const AVG_TOKEN_LEN: usize = 6;
/// kenlm's log10 to natural log.
const LOG_BASE_CHANGE: f64 = std::f64::consts::LN_10;

/// A word-level language model as pyctcdecode's `LanguageModel` uses one.
pub struct WordLm {
    lm: ArpaLm,
    /// The words an unknown-word check and the partial-word prefixes use.
    unigrams: BTreeSet<String>,
}

impl WordLm {
    /// Wraps `lm`; `unigrams` are pyctcdecode's (the ARPA unigram lines with a back-off).
    pub fn new(lm: ArpaLm, unigrams: impl IntoIterator<Item = String>) -> WordLm {
        let unigrams = unigrams.into_iter().filter(|w| lm.contains(w)).collect();
        WordLm { lm, unigrams }
    }

    /// Wraps `lm` with the known words pyctcdecode reads from an ARPA file
    /// ([`ArpaLm::listed_unigrams`]).
    pub fn from_arpa(lm: ArpaLm) -> WordLm {
        let listed = lm.listed_unigrams().to_vec();
        WordLm::new(lm, listed)
    }

    /// Whether some known word starts with `prefix`.
    fn has_prefix(&self, prefix: &str) -> bool {
        self.unigrams
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|w| w.starts_with(prefix))
    }

    fn start(&self, o: &BeamOptions) -> LmState {
        if o.score_boundary {
            self.lm.begin_sentence()
        } else {
            self.lm.null_context()
        }
    }

    /// `LanguageModel.score`: the fused score of `word` after `state`, and the next state.
    fn score(&self, state: &LmState, word: &str, last: bool, o: &BeamOptions) -> (f64, LmState) {
        let (s, next) = self.lm.score(state, word);
        let mut s = s as f64;
        if !self.unigrams.is_empty() && !self.unigrams.contains(word) || !self.lm.contains(word) {
            s += o.unk_score_offset;
        }
        if last && o.score_boundary {
            s += self.lm.score(&next, "</s>").0 as f64;
        }
        (o.alpha * s * LOG_BASE_CHANGE + o.beta, next)
    }

    /// `LanguageModel.score_partial_token`.
    fn score_partial(&self, part: &str, o: &BeamOptions) -> f64 {
        let mut s = if self.has_prefix(part) {
            0.0
        } else {
            o.unk_score_offset
        };
        let n = part.chars().count();
        if n > AVG_TOKEN_LEN {
            s = s * n as f64 / AVG_TOKEN_LEN as f64;
        }
        s
    }
}

/// Frames a word spans, [start, end); (-1, -1) before its first character.
type Frames = (i32, i32);
const NO_FRAMES: Frames = (-1, -1);

/// One hypothesis: decoded words, the word just completed (not yet scored), the partial word,
/// the last token, the frames of each decoded word and of the partial word, and the summed
/// log probability of its paths.
/// Strings and frame lists are shared (`Rc`): most extensions (blanks, repeats) keep them.
#[derive(Clone, Debug)]
struct Beam {
    text: Rc<str>,
    next_word: Rc<str>,
    part: Rc<str>,
    last: Option<usize>,
    word_frames: Rc<Vec<Frames>>,
    part_frames: Frames,
    logit: f64,
}

impl Beam {
    /// The word frames with the partial word's appended, if there is one.
    fn frames_with_part(&self) -> Rc<Vec<Frames>> {
        if self.part.is_empty() {
            self.word_frames.clone()
        } else {
            let mut f = (*self.word_frames).clone();
            f.push(self.part_frames);
            Rc::new(f)
        }
    }
}

fn merge_words(a: &Rc<str>, b: &Rc<str>) -> Rc<str> {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.clone(),
        (true, _) => b.clone(),
        _ => format!("{a} {b}").into(),
    }
}

fn log_add(a: f64, b: f64) -> f64 {
    if a >= b {
        a + (1.0 + (b - a).exp()).ln()
    } else {
        b + (1.0 + (a - b).exp()).ln()
    }
}

/// The labels pyctcdecode's `Alphabet` makes of a CTC vocabulary: the word delimiter `|`
/// becomes a space, `<pad>`/`[PAD]` the blank "", `<unk>`/`[UNK]` "⁇".
pub fn alphabet(tokens: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tokens.to_vec();
    if !out.iter().any(|t| t == " ") {
        if let Some(i) = out.iter().position(|t| t == "|") {
            out[i] = " ".into();
        }
    }
    let special = |t: &str, name: &str| {
        let inner = t
            .strip_prefix(['<', '['])
            .and_then(|t| t.strip_suffix(['>', ']']));
        inner.is_some_and(|i| i.eq_ignore_ascii_case(name))
    };
    for t in &mut out {
        if special(t, "pad") {
            *t = String::new();
        }
    }
    if !out.iter().any(|t| t.is_empty()) {
        if let Some(i) = out.iter().position(|t| t == "_") {
            out[i] = String::new();
        }
    }
    for t in &mut out {
        if special(t, "unk") {
            *t = "⁇".into();
        }
    }
    out
}

/// Log-softmax of one frame in f32 as numpy computes it, clipped to [ln 1e-15, 0].
fn log_probs(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = if max.is_finite() { max } else { 0.0 };
    let tmp: Vec<f32> = row.iter().map(|x| x - max).collect();
    let sum: f32 = tmp.iter().map(|x| x.exp()).sum();
    let ln = sum.ln();
    let floor = (1e-15f64).ln();
    tmp.iter()
        .map(|x| ((x - ln) as f64).clamp(floor, 0.0))
        .collect()
}

/// Beam search over `logits` ([frames, labels] row-major) with `labels` from [`alphabet`];
/// returns the best transcript (words joined by single spaces). As pyctcdecode's `decode`,
/// with `prune_history` on.
pub fn decode(logits: &[f32], labels: &[String], lm: Option<&WordLm>, o: &BeamOptions) -> String {
    best(logits, labels, lm, o).text
}

/// [`decode`]'s best beam, with its scores and word frames.
pub fn best(logits: &[f32], labels: &[String], lm: Option<&WordLm>, o: &BeamOptions) -> Hypothesis {
    let o = BeamOptions {
        prune_history: true,
        ..*o
    };
    decode_beams(logits, labels, lm, &o)
        .into_iter()
        .next()
        .unwrap_or(Hypothesis {
            text: String::new(),
            logit_score: 0.0,
            score: 0.0,
            words: Vec::new(),
        })
}

/// One result of [`decode_beams`].
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// The transcript, words joined by single spaces.
    pub text: String,
    /// Log probability of its CTC paths.
    pub logit_score: f64,
    /// That plus the language model's fused score: what the beams are ranked by.
    pub score: f64,
    /// Each word with the frames it spans, [start, end), as pyctcdecode's `text_frames`: from
    /// the frame of its first character to the last frame of its last character.
    pub words: Vec<(String, (usize, usize))>,
}

/// [`decode`]'s final beams, best first (pyctcdecode's `decode_beams`).
pub fn decode_beams(
    logits: &[f32],
    labels: &[String],
    lm: Option<&WordLm>,
    o: &BeamOptions,
) -> Vec<Hypothesis> {
    let v = labels.len();
    // (text, eos) -> (fused LM score so far, state after it).
    let empty: Rc<str> = Rc::from("");
    let mut cache: HashMap<(Rc<str>, bool), (f64, LmState)> = HashMap::default();
    if let Some(lm) = lm {
        cache.insert((empty.clone(), false), (0.0, lm.start(o)));
    }
    let mut partial_cache: HashMap<Rc<str>, f64> = HashMap::default();
    let mut beams = vec![Beam {
        text: empty.clone(),
        next_word: empty.clone(),
        part: empty.clone(),
        last: None,
        word_frames: Rc::new(Vec::new()),
        part_frames: NO_FRAMES,
        logit: 0.0,
    }];
    for (t, row) in logits.chunks(v).enumerate() {
        let t = t as i32;
        let lp = log_probs(row);
        let best = (0..v).fold(0, |b, i| if lp[i] > lp[b] { i } else { b });
        // Ascending ids, the best one included (pyctcdecode's set of them).
        let tried: Vec<usize> = (0..v)
            .filter(|&i| lp[i] >= o.token_min_logp || i == best)
            .collect();
        let mut next = Vec::new();
        for &c in &tried {
            let ch = labels[c].as_str();
            for b in &beams {
                let same = b.last.is_some_and(|l| labels[l] == ch);
                let mut n = b.clone();
                n.last = Some(c);
                n.logit = b.logit + lp[c];
                if ch.is_empty() {
                } else if same {
                    n.part_frames.1 = t + 1;
                } else if ch == " " {
                    n.word_frames = b.frames_with_part();
                    n.next_word = b.part.clone();
                    n.part = empty.clone();
                    n.part_frames = NO_FRAMES;
                } else {
                    n.part = format!("{}{ch}", b.part).into();
                    n.part_frames = if b.part_frames.0 < 0 {
                        (t, t + 1)
                    } else {
                        (b.part_frames.0, t + 1)
                    };
                }
                next.push(n);
            }
        }
        let merged = merge(next);
        let scored = score_beams(merged, lm, &mut cache, &mut partial_cache, false, o);
        beams = prune(scored, o);
        if o.prune_history {
            let order = lm.map_or(1, |l| l.lm.order);
            beams = prune_history(beams, order.saturating_sub(1).max(1));
        }
    }
    // The partial word becomes the last word; `</s>` is scored.
    let last: Vec<Beam> = beams
        .into_iter()
        .map(|b| Beam {
            word_frames: b.frames_with_part(),
            part_frames: NO_FRAMES,
            next_word: b.part,
            part: empty.clone(),
            last: None,
            ..b
        })
        .collect();
    let scored = score_beams(merge(last), lm, &mut cache, &mut partial_cache, true, o);
    prune_scored(scored, o)
        .into_iter()
        .map(|(b, score)| Hypothesis {
            text: b.text.split_whitespace().collect::<Vec<_>>().join(" "),
            logit_score: b.logit,
            score,
            words: b
                .text
                .split_whitespace()
                .zip(b.word_frames.iter())
                .map(|(w, &(s, e))| (w.to_string(), (s.max(0) as usize, e.max(0) as usize)))
                .collect(),
        })
        .collect()
}

/// What makes two beams one: the text they will read, the partial word, the last token.
type MergeKey = (Rc<str>, Rc<str>, Option<usize>);

/// `_merge_beams`: beams that will read the same are one, their probabilities added; the
/// merged beam keeps its first place but the last one's fields, as pyctcdecode's dict does
/// (which matters: a word completed by a space and one still open score differently).
fn merge(beams: Vec<Beam>) -> Vec<Beam> {
    let mut index: HashMap<MergeKey, usize> = HashMap::default();
    let mut out: Vec<Beam> = Vec::new();
    for b in beams {
        let key = (merge_words(&b.text, &b.next_word), b.part.clone(), b.last);
        match index.get(&key) {
            Some(&i) => {
                let logit = log_add(out[i].logit, b.logit);
                out[i] = Beam { logit, ..b };
            }
            None => {
                index.insert(key, out.len());
                out.push(b);
            }
        }
    }
    out
}

/// `_get_lm_beams`: the completed word joins the text and every beam gets its fused score.
fn score_beams(
    beams: Vec<Beam>,
    lm: Option<&WordLm>,
    cache: &mut HashMap<(Rc<str>, bool), (f64, LmState)>,
    partial: &mut HashMap<Rc<str>, f64>,
    eos: bool,
    o: &BeamOptions,
) -> Vec<(Beam, f64)> {
    beams
        .into_iter()
        .map(|b| {
            let text = merge_words(&b.text, &b.next_word);
            let Some(lm) = lm else {
                let logit = b.logit;
                return (
                    Beam {
                        text,
                        next_word: Rc::from(""),
                        ..b
                    },
                    logit,
                );
            };
            let mut score = match cache.get(&(text.clone(), eos)) {
                Some(c) => c.0,
                None => {
                    let (prev, state) = &cache[&(b.text.clone(), false)];
                    let (s, next) = lm.score(state, &b.next_word, eos, o);
                    let total = prev + s;
                    cache.insert((text.clone(), eos), (total, next));
                    total
                }
            };
            if !b.part.is_empty() {
                score += *partial
                    .entry(b.part.clone())
                    .or_insert_with(|| lm.score_partial(&b.part, o));
            }
            let fused = b.logit + score;
            (
                Beam {
                    text,
                    next_word: Rc::from(""),
                    ..b
                },
                fused,
            )
        })
        .collect()
}

/// `_prune_history`: of beams alike in their last `words` words, partial word and last token,
/// the best (first) stays.
fn prune_history(beams: Vec<Beam>, words: usize) -> Vec<Beam> {
    // Texts are words joined by single spaces: the history is the text after its last
    // `words` spaces.
    fn recent(t: &str, words: usize) -> &str {
        let mut at = t.len();
        for _ in 0..words {
            match t[..at].rfind(' ') {
                Some(i) => at = i,
                None => return t,
            }
        }
        &t[at + 1..]
    }
    let keep: Vec<bool> = {
        let mut seen = HashSet::default();
        beams
            .iter()
            .map(|b| seen.insert((recent(&b.text, words), &*b.part, b.last)))
            .collect()
    };
    beams
        .into_iter()
        .zip(keep)
        .filter_map(|(b, k)| k.then_some(b))
        .collect()
}

/// Drops beams `beam_prune_logp` below the best, keeps the `beam_width` best (earlier first
/// among equals, as `heapq.nlargest`).
fn prune(scored: Vec<(Beam, f64)>, o: &BeamOptions) -> Vec<Beam> {
    prune_scored(scored, o)
        .into_iter()
        .map(|(b, _)| b)
        .collect()
}

fn prune_scored(scored: Vec<(Beam, f64)>, o: &BeamOptions) -> Vec<(Beam, f64)> {
    let max = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    let mut kept: Vec<(Beam, f64)> = scored
        .into_iter()
        .filter(|s| s.1 >= max + o.beam_prune_logp)
        .collect();
    kept.sort_by(|a, b| b.1.total_cmp(&a.1));
    kept.truncate(o.beam_width);
    kept
}
