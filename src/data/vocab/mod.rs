//! The CTC vocabulary and a tokenizer that encodes and decodes exactly as Hugging Face's
//! `Wav2Vec2CTCTokenizer` (transformers 5.x) does, with the files `Wav2Vec2Processor` loads.

mod files;

use super::DataError;
use files::TokenizerConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Token names used by vocabularies built here (the notebook's).
pub const UNK: &str = "[UNK]";
/// Padding token, also the CTC blank.
pub const PAD: &str = "[PAD]";
/// Word delimiter: stands for the space between words.
pub const WORD_DELIMITER: &str = "|";

/// Labels for training, and what the vocabulary could not represent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Token ids, each below [`Vocab::head_size`].
    pub ids: Vec<u32>,
    /// Pieces of the text that became the unknown token (characters it lacks, or special
    /// tokens beyond the CTC head).
    pub unknown: Vec<String>,
}

/// A word of a CTC transcript and the output frames it spans, `start..end`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WordOffset {
    /// The word.
    pub word: String,
    /// Its first frame.
    pub start: usize,
    /// One past its last frame.
    pub end: usize,
}

/// A character vocabulary: token strings, their ids, and the tokenizer's special tokens.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// Token of each id (`None` for ids a sparse vocab.json leaves out).
    tokens: Vec<Option<String>>,
    ids: HashMap<String, u32>,
    /// Id of the padding token, which is the CTC blank.
    pub pad: u32,
    /// Id of the unknown token.
    pub unk: u32,
    unk_token: String,
    pad_token: String,
    word_delimiter: String,
    /// Whole strings that are matched before splitting into characters, with whether they eat
    /// the whitespace around them (HF's `AddedToken(lstrip=True, rstrip=True)`).
    added: Vec<(String, bool)>,
    do_lower_case: bool,
    clean_up_spaces: bool,
    /// Beginning/end-of-sentence tokens (`None`: the tokenizer has none).
    bos: Option<String>,
    eos: Option<String>,
    /// Ids vocab.json itself defines: one past its largest id (special tokens it lacks come
    /// after).
    file_ids: usize,
}

impl Vocab {
    /// Whether both vocabularies map the same ids to the same tokens.
    pub fn same_tokens(&self, other: &Vocab) -> bool {
        self.len() == other.len() && (0..self.len() as u32).all(|i| self.token(i) == other.token(i))
    }

    /// Builds the notebook's vocabulary from normalised sentences: every distinct character,
    /// sorted by code point, the space renamed `|` (keeping its id), then `[UNK]` and `[PAD]`.
    /// A corpus without spaces still gets `|` (before `[UNK]`), so words can be delimited.
    pub fn build<'a>(sentences: impl IntoIterator<Item = &'a str>) -> Vocab {
        let chars: BTreeSet<char> = sentences.into_iter().flat_map(|s| s.chars()).collect();
        let mut tokens: Vec<String> = chars
            .into_iter()
            .map(|c| {
                if c == ' ' {
                    WORD_DELIMITER.to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        if !tokens.iter().any(|t| t == WORD_DELIMITER) {
            tokens.push(WORD_DELIMITER.to_string());
        }
        tokens.push(UNK.to_string());
        tokens.push(PAD.to_string());
        let map = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        Self::from_map(map, &TokenizerConfig::default())
    }

    fn from_map(map: Vec<(String, u32)>, cfg: &TokenizerConfig) -> Vocab {
        let size = map
            .iter()
            .map(|(_, id)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut tokens = vec![None; size];
        let mut ids = HashMap::new();
        let file_ids = size;
        for (tok, id) in map {
            tokens[id as usize] = Some(tok.clone());
            ids.insert(tok, id);
        }
        // HF adds every multi-character vocab.json entry as a no-split token that strips the
        // whitespace around it, and the special tokens as no-split tokens that do not.
        let mut added: Vec<(String, bool)> = ids
            .keys()
            .filter(|t| t.chars().count() > 1)
            .map(|t| (t.clone(), true))
            .collect();
        // Added tokens at the ids the tokenizer files give them (`<s>`, `</s>` past the head of
        // a model transformers fine-tuned).
        for (tok, id) in &cfg.added {
            if ids.contains_key(tok) {
                continue;
            }
            let id = *id as usize;
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            if tokens[id].is_none() {
                tokens[id] = Some(tok.clone());
                ids.insert(tok.clone(), id as u32);
            }
        }
        // HF appends special tokens missing from vocab.json as new ids, in this order.
        let specials: Vec<&String> = [cfg.bos.as_ref(), cfg.eos.as_ref()]
            .into_iter()
            .flatten()
            .chain([&cfg.unk, &cfg.pad, &cfg.word_delimiter])
            .collect();
        for s in &specials {
            if !ids.contains_key(*s) {
                ids.insert((*s).clone(), tokens.len() as u32);
                tokens.push(Some((*s).clone()));
            }
        }
        let pad = ids[&cfg.pad];
        let unk = ids[&cfg.unk];
        for s in specials.into_iter().chain(cfg.added.iter().map(|(t, _)| t)) {
            if !added.iter().any(|(t, _)| t == s) {
                added.push((s.clone(), false));
            }
        }
        // Longest first, so the earliest match at a position is the longest one.
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Vocab {
            tokens,
            ids,
            pad,
            unk,
            unk_token: cfg.unk.clone(),
            pad_token: cfg.pad.clone(),
            word_delimiter: cfg.word_delimiter.clone(),
            added,
            do_lower_case: cfg.do_lower_case,
            clean_up_spaces: cfg.clean_up_spaces,
            bos: cfg.bos.clone(),
            eos: cfg.eos.clone(),
            file_ids,
        }
    }

    /// Checks this vocabulary against a CTC head of `outputs` rows (`path` is the vocab.json
    /// named in the error): every output needs a token, and every id vocab.json defines must
    /// be an output. Special tokens vocab.json lacks (`<s>`, `</s>`) may lie past the head.
    pub fn check_head(&self, path: &Path, outputs: usize) -> Result<(), DataError> {
        if self.file_ids > outputs {
            return Err(DataError::format(
                path,
                format!(
                    "defines ids up to {} ({} tokens), but the model's CTC head has {outputs} \
                     outputs: not this model's vocabulary",
                    self.file_ids - 1,
                    self.file_ids
                ),
            ));
        }
        if let Some(id) = (0..outputs).find(|&i| self.tokens.get(i).is_none_or(|t| t.is_none())) {
            return Err(DataError::format(
                path,
                format!(
                    "has no token for id {id}, but the model's CTC head has {outputs} outputs \
                     (the vocabulary has {} ids): not this model's vocabulary",
                    self.len()
                ),
            ));
        }
        Ok(())
    }

    /// The padding token (the CTC blank), `[PAD]` unless the tokenizer names another.
    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }

    /// Number of ids, HF's `len(tokenizer)`: one past the largest id in vocab.json, plus any
    /// special token vocab.json lacks.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Outputs of the CTC head this vocabulary labels for: the ids vocab.json defines. Added
    /// special tokens past them (`<s>`, `</s>`) are never labels, as in transformers, where
    /// the head has `config.vocab_size` outputs.
    pub fn head_size(&self) -> usize {
        self.file_ids
    }

    /// Training labels for normalised `text`: [`Vocab::encode`] after matching the letter
    /// case of the vocabulary (a `do_lower_case: false` vocabulary of uppercase letters, as
    /// facebook/wav2vec2-base-960h's, gets uppercased text); ids past the head become the
    /// unknown token. Returns what became unknown, for the caller to report.
    pub fn labels(&self, text: &str) -> Labels {
        let text = self.match_case(text);
        let mut unknown = Vec::new();
        let mut ids = self.encode_inner(&text, &mut |piece| unknown.push(piece.to_string()));
        for id in &mut ids {
            if *id as usize >= self.file_ids {
                unknown.push(self.token_or_unk(*id).to_string());
                *id = self.unk;
            }
        }
        Labels { ids, unknown }
    }

    /// `text` in the letter case of this vocabulary's tokens (uppercased for an uppercase
    /// vocabulary): how labels are made, and what transcripts are compared with.
    pub fn match_case(&self, text: &str) -> String {
        match self.letter_case() {
            Some(true) => text.to_uppercase(),
            Some(false) => text.to_lowercase(),
            None => text.to_string(),
        }
    }

    /// `Some(true)` when the letters of the vocabulary are all uppercase, `Some(false)` when
    /// all lowercase, `None` when mixed, absent, or the tokenizer changes case itself.
    fn letter_case(&self) -> Option<bool> {
        if self.do_lower_case {
            return None;
        }
        let letters: Vec<char> = self
            .tokens
            .iter()
            .flatten()
            .filter_map(|t| {
                let mut cs = t.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) if c.is_alphabetic() => Some(c),
                    _ => None,
                }
            })
            .collect();
        let upper = letters.iter().any(|c| c.is_uppercase());
        let lower = letters.iter().any(|c| c.is_lowercase());
        match (upper, lower) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    }

    /// True for an empty vocabulary.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token of `id`, if any.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// The id of `token`, if any.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Tokenizes as `Wav2Vec2CTCTokenizer(text).input_ids`: special and multi-character tokens
    /// are matched whole, the rest is split into characters with each space becoming the word
    /// delimiter; characters not in the vocabulary become `unk`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_inner(text, &mut |_| {})
    }

    /// [`Vocab::encode`], calling `unknown` with each piece that becomes the unknown token.
    fn encode_inner(&self, text: &str, unknown: &mut dyn FnMut(&str)) -> Vec<u32> {
        // Split into (piece, is_added_token), as HF's trie does.
        let mut pieces: Vec<(&str, bool)> = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some((tok, _)) = self
                .added
                .iter()
                .find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if start < i {
                    pieces.push((&text[start..i], false));
                }
                pieces.push((&text[i..i + tok.len()], true));
                i += tok.len();
                start = i;
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            pieces.push((&text[start..], false));
        }
        // Stripping added tokens eat the whitespace next to them.
        for k in 0..pieces.len() {
            let (tok, is_added) = pieces[k];
            if !is_added || !self.strips(tok) {
                continue;
            }
            if k > 0 && !pieces[k - 1].1 {
                pieces[k - 1].0 = pieces[k - 1].0.trim_end();
            }
            if k + 1 < pieces.len() && !pieces[k + 1].1 {
                pieces[k + 1].0 = pieces[k + 1].0.trim_start();
            }
        }
        let mut out = Vec::new();
        for (piece, is_added) in pieces {
            if is_added {
                out.push(self.id(piece).unwrap_or_else(|| {
                    unknown(piece);
                    self.unk
                }));
                continue;
            }
            let piece = if self.do_lower_case {
                piece.to_uppercase()
            } else {
                piece.to_string()
            };
            let mut buf = [0u8; 4];
            for c in piece.chars() {
                let t: &str = if c == ' ' {
                    &self.word_delimiter
                } else {
                    c.encode_utf8(&mut buf)
                };
                out.push(self.id(t).unwrap_or_else(|| {
                    unknown(t);
                    self.unk
                }));
            }
        }
        out
    }

    fn strips(&self, tok: &str) -> bool {
        self.added.iter().any(|(t, s)| t == tok && *s)
    }

    /// Greedy CTC decoding as `Wav2Vec2CTCTokenizer.decode(ids)`: collapse repeats, drop the
    /// pad (blank), word delimiter to space, trim.
    pub fn decode_ctc(&self, ids: &[u32]) -> String {
        self.decode(ids, true)
    }

    /// `Wav2Vec2CTCTokenizer.decode(ids, group_tokens=group)`; `group = false` is how the
    /// notebook turns reference labels back into text. Unknown ids decode as the unk token.
    pub fn decode(&self, ids: &[u32], group: bool) -> String {
        let mut text = String::new();
        let mut prev: Option<&str> = None;
        for &id in ids {
            // Repeats are grouped on tokens, not ids: out-of-range ids and unk are one token.
            let tok = self.token_or_unk(id);
            if group && prev == Some(tok) {
                continue;
            }
            prev = Some(tok);
            if tok == self.pad_token {
                continue;
            }
            if tok == self.word_delimiter {
                text.push(' ');
            } else {
                text.push_str(tok);
            }
        }
        let mut text = text.trim().to_string();
        if self.do_lower_case {
            // HF uppercases on the way in and lowercases on the way out.
            text = text.to_lowercase();
        }
        if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }

    /// The words of the greedy transcript of `ids` (one id per frame) with the frames each
    /// spans, as `Wav2Vec2CTCTokenizer.decode(ids, output_word_offsets=True)` gives them: runs
    /// of one token are one character spanning the run, blanks are dropped, and a word runs
    /// from its first character's start to its last character's end (exclusive). Words are
    /// the raw tokens, not lowercased or cleaned up, as in transformers.
    pub fn word_offsets(&self, ids: &[u32]) -> Vec<WordOffset> {
        let mut words = Vec::new();
        let mut current: Option<WordOffset> = None;
        let mut start = 0;
        for run in ids.chunk_by(|a, b| self.token_or_unk(*a) == self.token_or_unk(*b)) {
            let tok = self.token_or_unk(run[0]);
            let end = start + run.len();
            if tok == self.word_delimiter {
                words.extend(current.take());
            } else if tok != self.pad_token {
                match &mut current {
                    Some(w) => {
                        w.word.push_str(tok);
                        w.end = end;
                    }
                    None => {
                        current = Some(WordOffset {
                            word: tok.to_string(),
                            start,
                            end,
                        })
                    }
                }
            }
            start = end;
        }
        words.extend(current);
        words
    }

    /// The token of `id`, or the unk token for ids past the vocabulary (as transformers).
    fn token_or_unk(&self, id: u32) -> &str {
        self.token(id).unwrap_or(&self.unk_token)
    }
}

/// How many times each piece of text became the unknown token, most first, as
/// `'x' x3, 'y' x1` (at most ten named).
pub fn unknown_summary(counts: &BTreeMap<String, usize>) -> String {
    let mut v: Vec<(&String, &usize)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut parts: Vec<String> = v
        .iter()
        .take(10)
        .map(|(t, n)| format!("{t:?} x{n}"))
        .collect();
    if v.len() > 10 {
        parts.push(format!("and {} more", v.len() - 10));
    }
    parts.join(", ")
}

/// HF's `clean_up_tokenization`: English-centric removal of spaces before punctuation.
fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
