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
        use std::ops::Bound::{Included, Unbounded};
        self.unigrams
            .range::<str, _>((Included(prefix), Unbounded))
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

    /// `LanguageModel.score_partial_token`, given whether a known word starts with `part`.
    fn score_partial(&self, part: &str, known: bool, o: &BeamOptions) -> f64 {
        let mut s = if known { 0.0 } else { o.unk_score_offset };
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

/// One hypothesis: its words (a node of [`Strings::texts`]), the word just completed and not
/// yet scored and the partial word (nodes of [`Strings::parts`], 0 for none), the last token,
/// the frames of each word and of the partial word, and the summed log probability of its
/// paths. Strings are ids, so that extending, merging and caching hash small integers.
#[derive(Clone, Debug)]
struct Beam {
    text: u32,
    next_word: u32,
    part: u32,
    last: Option<u32>,
    word_frames: Rc<Vec<Frames>>,
    part_frames: Frames,
    logit: f64,
}

impl Beam {
    /// The word frames with the partial word's appended, if there is one.
    fn frames_with_part(&self) -> Rc<Vec<Frames>> {
        if self.part == 0 {
            self.word_frames.clone()
        } else {
            let mut f = (*self.word_frames).clone();
            f.push(self.part_frames);
            Rc::new(f)
        }
    }
}

/// The strings of one search, interned: partial words (a word so far, by its string, so that
/// two spellings of one string are one, as pyctcdecode's strings are) and texts (a sequence of
/// words, as a parent text and a last word). Id 0 is the empty string / text.
struct Strings<'a> {
    labels: &'a [String],
    /// For each token, the first token with the same label (pyctcdecode compares strings).
    canon: Vec<u32>,
    part_ids: HashMap<(u32, u32), u32>,
    part_by_string: HashMap<Rc<str>, u32>,
    parts: Vec<Rc<str>>,
    /// A part one label shorter than each part (any, if several spell it).
    part_parent: Vec<u32>,
    text_ids: HashMap<(u32, u32), u32>,
    /// (parent text, last word) per text.
    texts: Vec<(u32, u32)>,
}

impl<'a> Strings<'a> {
    fn new(labels: &'a [String]) -> Strings<'a> {
        let canon = (0..labels.len())
            .map(|i| labels.iter().position(|l| *l == labels[i]).unwrap() as u32)
            .collect();
        let empty: Rc<str> = Rc::from("");
        Strings {
            labels,
            canon,
            part_ids: HashMap::default(),
            part_by_string: [(empty.clone(), 0)].into_iter().collect(),
            parts: vec![empty],
            part_parent: vec![0],
            text_ids: HashMap::default(),
            texts: vec![(0, 0)],
        }
    }

    /// The partial word `part` followed by token `c`'s label.
    fn extend_part(&mut self, part: u32, c: u32) -> u32 {
        if let Some(&id) = self.part_ids.get(&(part, c)) {
            return id;
        }
        let (head, tail) = (&self.parts[part as usize], &self.labels[c as usize]);
        let mut s = String::with_capacity(head.len() + tail.len());
        s.push_str(head);
        s.push_str(tail);
        let s: Rc<str> = s.into();
        let next = self.parts.len() as u32;
        let id = *self.part_by_string.entry(s.clone()).or_insert(next);
        if id == next {
            self.parts.push(s);
            self.part_parent.push(part);
        }
        self.part_ids.insert((part, c), id);
        id
    }

    /// `text` followed by the word `part` (`text` itself when `part` is empty).
    fn extend_text(&mut self, text: u32, part: u32) -> u32 {
        if part == 0 {
            return text;
        }
        let next = self.texts.len() as u32;
        let id = *self.text_ids.entry((text, part)).or_insert(next);
        if id == next {
            self.texts.push((text, part));
        }
        id
    }

    /// The words of `text`, the last `limit` at most, newest first.
    fn words(&self, mut text: u32, limit: usize) -> impl Iterator<Item = u32> + '_ {
        std::iter::from_fn(move || {
            (text != 0).then(|| {
                let (parent, word) = self.texts[text as usize];
                text = parent;
                word
            })
        })
        .take(limit)
    }

    /// The words of `text` joined by single spaces.
    fn text(&self, text: u32) -> Vec<&str> {
        let mut words: Vec<&str> = self
            .words(text, usize::MAX)
            .map(|w| &*self.parts[w as usize])
            .collect();
        words.reverse();
        words
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

/// The language model's running scores of one search: per text, the fused score of its
/// words and the state after them (pyctcdecode's `cached_lm_scores`); per partial word, its
/// penalty.
struct LmCache<'a> {
    lm: &'a WordLm,
    texts: Vec<Option<(f64, LmState)>>,
    at_end: HashMap<u32, f64>,
    /// Per partial word: its penalty, and whether a known word starts with it.
    parts: Vec<Option<(f64, bool)>>,
}

impl LmCache<'_> {
    /// The fused score of `text` (its words after `parent`'s, `word` the last), ending the
    /// sentence when `eos`.
    fn text(
        &mut self,
        s: &Strings,
        parent: u32,
        word: u32,
        text: u32,
        eos: bool,
        o: &BeamOptions,
    ) -> f64 {
        if !eos {
            if let Some(Some((score, _))) = self.texts.get(text as usize) {
                return *score;
            }
        } else if let Some(&score) = self.at_end.get(&text) {
            return score;
        }
        let (prev, state) = self.texts[parent as usize].as_ref().unwrap();
        let (score, next) = self.lm.score(state, &s.parts[word as usize], eos, o);
        let total = prev + score;
        if eos {
            self.at_end.insert(text, total);
        } else {
            if self.texts.len() <= text as usize {
                self.texts.resize(text as usize + 1, None);
            }
            self.texts[text as usize] = Some((total, next));
        }
        total
    }

    /// The penalty of the partial word `part`.
    fn part(&mut self, s: &Strings, part: u32, o: &BeamOptions) -> f64 {
        if let Some(Some((score, _))) = self.parts.get(part as usize) {
            return *score;
        }
        // No known word starts with it if none starts with its parent: most noise stops
        // there without a search of the words.
        let parent = s.part_parent[part as usize];
        let parent_known = match self.parts.get(parent as usize) {
            _ if parent == 0 => true,
            Some(Some((_, known))) => *known,
            _ => self.lm.has_prefix(&s.parts[parent as usize]),
        };
        let known = parent_known && self.lm.has_prefix(&s.parts[part as usize]);
        let score = self.lm.score_partial(&s.parts[part as usize], known, o);
        if self.parts.len() <= part as usize {
            self.parts.resize(part as usize + 1, None);
        }
        self.parts[part as usize] = Some((score, known));
        score
    }
}

/// [`decode`]'s final beams, best first (pyctcdecode's `decode_beams`).
pub fn decode_beams(
    logits: &[f32],
    labels: &[String],
    lm: Option<&WordLm>,
    o: &BeamOptions,
) -> Vec<Hypothesis> {
    let v = labels.len();
    let mut s = Strings::new(labels);
    let mut cache = lm.map(|lm| LmCache {
        lm,
        texts: vec![Some((0.0, lm.start(o)))],
        at_end: HashMap::default(),
        parts: Vec::new(),
    });
    let history = lm.map_or(1, |l| l.lm.order).saturating_sub(1).max(1);
    let mut beams = vec![Beam {
        text: 0,
        next_word: 0,
        part: 0,
        last: None,
        word_frames: Rc::new(Vec::new()),
        part_frames: NO_FRAMES,
        logit: 0.0,
    }];
    let mut next = Vec::new();
    for (t, row) in logits.chunks(v).enumerate() {
        let t = t as i32;
        let lp = log_probs(row);
        let best = (0..v).fold(0, |b, i| if lp[i] > lp[b] { i } else { b });
        // Ascending ids, the best one included (pyctcdecode's set of them).
        for c in (0..v).filter(|&i| lp[i] >= o.token_min_logp || i == best) {
            let ch = labels[c].as_str();
            let canon = s.canon[c];
            for b in &beams {
                let mut n = b.clone();
                n.last = Some(canon);
                n.logit = b.logit + lp[c];
                if ch.is_empty() {
                } else if b.last == Some(canon) {
                    n.part_frames.1 = t + 1;
                } else if ch == " " {
                    n.word_frames = b.frames_with_part();
                    n.next_word = b.part;
                    n.part = 0;
                    n.part_frames = NO_FRAMES;
                } else {
                    n.part = s.extend_part(b.part, canon);
                    n.part_frames = if b.part_frames.0 < 0 {
                        (t, t + 1)
                    } else {
                        (b.part_frames.0, t + 1)
                    };
                }
                next.push(n);
            }
        }
        let merged = merge(&mut s, std::mem::take(&mut next));
        let scored = score_beams(&s, merged, cache.as_mut(), false, o);
        beams = prune(scored, o);
        if o.prune_history {
            beams = prune_history(&s, beams, history);
        }
    }
    // The partial word becomes the last word; `</s>` is scored.
    let last: Vec<Beam> = beams
        .into_iter()
        .map(|b| Beam {
            word_frames: b.frames_with_part(),
            part_frames: NO_FRAMES,
            next_word: b.part,
            part: 0,
            last: None,
            ..b
        })
        .collect();
    let merged = merge(&mut s, last);
    let scored = score_beams(&s, merged, cache.as_mut(), true, o);
    prune_scored(scored, o)
        .into_iter()
        .map(|(b, score)| {
            let words = s.text(b.text);
            Hypothesis {
                text: words.join(" "),
                logit_score: b.logit,
                score,
                words: words
                    .iter()
                    .zip(b.word_frames.iter())
                    .map(|(w, &(s, e))| (w.to_string(), (s.max(0) as usize, e.max(0) as usize)))
                    .collect(),
            }
        })
        .collect()
}

/// `_merge_beams`: beams that will read the same (text with the completed word, partial word,
/// last token) are one, their probabilities added; the merged beam keeps its first place but
/// the last one's fields, as pyctcdecode's dict does (which matters: a word completed by a
/// space and one still open score differently).
fn merge(s: &mut Strings, beams: Vec<Beam>) -> Vec<Beam> {
    let mut index: HashMap<(u32, u32, Option<u32>), usize> =
        HashMap::with_capacity_and_hasher(beams.len(), Default::default());
    let mut out: Vec<Beam> = Vec::with_capacity(beams.len());
    for b in beams {
        let key = (s.extend_text(b.text, b.next_word), b.part, b.last);
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
    s: &Strings,
    beams: Vec<Beam>,
    mut cache: Option<&mut LmCache>,
    eos: bool,
    o: &BeamOptions,
) -> Vec<(Beam, f64)> {
    beams
        .into_iter()
        .map(|b| {
            // Interned by `merge`.
            let text = match b.next_word {
                0 => b.text,
                w => s.text_ids[&(b.text, w)],
            };
            let mut score = b.logit;
            if let Some(c) = cache.as_deref_mut() {
                score += c.text(s, b.text, b.next_word, text, eos, o);
                if b.part != 0 {
                    score += c.part(s, b.part, o);
                }
            }
            let b = Beam {
                text,
                next_word: 0,
                ..b
            };
            (b, score)
        })
        .collect()
}

/// `_prune_history`: of beams alike in their last `words` words, partial word and last token,
/// the best (first) stays.
fn prune_history(s: &Strings, beams: Vec<Beam>, words: usize) -> Vec<Beam> {
    let mut seen = HashSet::with_capacity_and_hasher(beams.len(), Default::default());
    beams
        .into_iter()
        .filter(|b| {
            // An n-gram model's order is at most 16 (`ArpaLm`).
            let mut recent = [u32::MAX; 16];
            for (r, w) in recent.iter_mut().zip(s.words(b.text, words)) {
                *r = w;
            }
            seen.insert((recent, b.part, b.last))
        })
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
