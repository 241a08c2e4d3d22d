//! The CTC vocabulary and a tokenizer that encodes and decodes exactly as Hugging Face's
//! `Wav2Vec2CTCTokenizer` (transformers 5.x) does, with the files `Wav2Vec2Processor` loads.

use super::DataError;
use serde_json::{json, Map, Value};
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

    /// Writes `vocab.json`, `tokenizer_config.json` and `preprocessor_config.json`, which
    /// `Wav2Vec2Processor.from_pretrained(dir)` loads.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        // vocab.json holds the head's ids; tokens past them are added tokens at their ids.
        let mut vocab = Map::new();
        let mut added = Map::new();
        for (id, tok) in self.tokens.iter().enumerate() {
            match tok {
                Some(tok) if id < self.file_ids => {
                    vocab.insert(tok.clone(), json!(id));
                }
                Some(tok) => {
                    added.insert(
                        id.to_string(),
                        json!({"content": tok, "special": true, "lstrip": false,
                               "rstrip": false, "normalized": false, "single_word": false}),
                    );
                }
                None => {}
            }
        }
        // bos/eos null where the tokenizer has none: otherwise HF appends `<s>` and `</s>` as
        // two extra ids.
        let mut tokenizer = json!({
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
            "processor_class": "Wav2Vec2Processor",
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
            "word_delimiter_token": self.word_delimiter,
            "bos_token": self.bos,
            "eos_token": self.eos,
            "do_lower_case": self.do_lower_case,
            "replace_word_delimiter_char": " ",
            "clean_up_tokenization_spaces": self.clean_up_spaces,
        });
        if !added.is_empty() {
            tokenizer["added_tokens_decoder"] = Value::Object(added);
        }
        let preprocessor = json!({
            "feature_extractor_type": "Wav2Vec2FeatureExtractor",
            "processor_class": "Wav2Vec2Processor",
            "feature_size": 1,
            "sampling_rate": super::audio::SAMPLE_RATE,
            "padding_value": 0.0,
            "padding_side": "right",
            "do_normalize": true,
            "return_attention_mask": true,
        });
        for (name, value) in [
            ("vocab.json", Value::Object(vocab)),
            ("tokenizer_config.json", tokenizer),
            ("preprocessor_config.json", preprocessor),
        ] {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value).expect("JSON values serialise");
            std::fs::write(&path, text + "\n").map_err(|e| DataError::io(&path, e))?;
        }
        Ok(())
    }

    /// Reads any HF CTC vocabulary: `vocab.json`, plus the special tokens of
    /// `tokenizer_config.json` when there is one (defaults: `[UNK]`, `[PAD]`, `|`, as the
    /// notebook's; a vocab.json holding `<pad>`/`<unk>` instead, as facebook/wav2vec2-base-960h,
    /// works without a config too).
    pub fn load(dir: &Path) -> Result<Vocab, DataError> {
        Self::load_files(&dir.join("vocab.json"), dir, None)
    }

    /// [`Vocab::load`] of one language of a multilingual (MMS) vocab.json, `{lang: {token:
    /// id}}`, as `Wav2Vec2CTCTokenizer(target_lang=LANG)`; `None` takes the tokenizer config's
    /// `target_lang`. A flat vocab.json has no languages to pick from.
    pub fn load_lang(dir: &Path, lang: Option<&str>) -> Result<Vocab, DataError> {
        Self::load_files(&dir.join("vocab.json"), dir, lang)
    }

    /// [`Vocab::load`] from a model or prep folder, or from a vocabulary file (the tokenizer
    /// files beside it, if any, give its special tokens).
    pub fn load_any(path: &Path) -> Result<Vocab, DataError> {
        if path.is_dir() {
            return Self::load(path);
        }
        Self::load_files(path, path.parent().unwrap_or(Path::new(".")), None)
    }

    fn load_files(path: &Path, dir: &Path, lang: Option<&str>) -> Result<Vocab, DataError> {
        let path = path.to_path_buf();
        let value = read_json(&path)?;
        let obj = value
            .as_object()
            .ok_or_else(|| DataError::format(&path, "expected a JSON object {token: id}"))?;
        let nested = !obj.is_empty() && obj.values().all(Value::is_object);
        let obj = if nested {
            let cfg_lang = read_json(&dir.join("tokenizer_config.json"))
                .ok()
                .and_then(|v| v.get("target_lang")?.as_str().map(String::from));
            let langs = || obj.keys().cloned().collect::<Vec<_>>().join(", ");
            let Some(lang) = lang.map(String::from).or(cfg_lang) else {
                return Err(DataError::format(
                    &path,
                    format!(
                        "has vocabularies for several languages ({}): pass --target-lang",
                        langs()
                    ),
                ));
            };
            obj.get(&lang).and_then(Value::as_object).ok_or_else(|| {
                DataError::format(
                    &path,
                    format!(
                        "has no vocabulary for language {lang:?} (it has {})",
                        langs()
                    ),
                )
            })?
        } else {
            // One vocabulary (a folder `xlsr train --target-lang` wrote): it is the language's.
            obj
        };
        let mut map = Vec::with_capacity(obj.len());
        let mut seen: HashMap<u32, &String> = HashMap::new();
        for (tok, id) in obj {
            let id = id
                .as_u64()
                .filter(|&id| id < u32::MAX as u64)
                .ok_or_else(|| {
                    DataError::format(
                        &path,
                        format!("token {tok:?}: id {id} is not an integer id"),
                    )
                })?;
            if let Some(other) = seen.insert(id as u32, tok) {
                return Err(DataError::format(
                    &path,
                    format!("tokens {other:?} and {tok:?} share id {id}: each id needs one token"),
                ));
            }
            map.push((tok.clone(), id as u32));
        }
        let mut cfg = TokenizerConfig::default();
        if !obj.contains_key(UNK) && obj.contains_key("<unk>") {
            cfg.unk = "<unk>".into();
        }
        if !obj.contains_key(PAD) && obj.contains_key("<pad>") {
            cfg.pad = "<pad>".into();
        }
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let v = read_json(&cfg_path)?;
            let token = |key: &str| -> Option<Option<String>> {
                match v.get(key)? {
                    Value::Null => Some(None),
                    Value::String(s) => Some(Some(s.clone())),
                    // AddedToken serialised as {"content": ...}
                    Value::Object(o) => Some(o.get("content")?.as_str().map(String::from)),
                    _ => None,
                }
            };
            if let Some(Some(t)) = token("unk_token") {
                cfg.unk = t;
            }
            if let Some(Some(t)) = token("pad_token") {
                cfg.pad = t;
            }
            if let Some(Some(t)) = token("word_delimiter_token") {
                cfg.word_delimiter = t;
            }
            // HF's defaults for bos/eos are `<s>`/`</s>`; null removes them.
            cfg.bos = token("bos_token").unwrap_or(Some("<s>".into()));
            cfg.eos = token("eos_token").unwrap_or(Some("</s>".into()));
            cfg.do_lower_case = v.get("do_lower_case").and_then(Value::as_bool) == Some(true);
            if let Some(Value::Object(dec)) = v.get("added_tokens_decoder") {
                for (id, t) in dec {
                    let tok = t.get("content").and_then(Value::as_str);
                    if let (Ok(id), Some(tok)) = (id.parse::<u32>(), tok) {
                        cfg.added.push((tok.to_string(), id));
                    }
                }
            }
            cfg.clean_up_spaces = v
                .get("clean_up_tokenization_spaces")
                .and_then(Value::as_bool)
                == Some(true);
        } else {
            cfg.bos = Some("<s>".into());
            cfg.eos = Some("</s>".into());
        }
        let added_path = dir.join("added_tokens.json");
        if added_path.exists() {
            let v = read_json(&added_path)?;
            let obj = v.as_object().ok_or_else(|| {
                DataError::format(&added_path, "expected a JSON object {token: id}")
            })?;
            for (tok, id) in obj {
                let id = id
                    .as_u64()
                    .filter(|&id| id < u32::MAX as u64)
                    .ok_or_else(|| {
                        DataError::format(&added_path, format!("token {tok:?}: {id} is not an id"))
                    })?;
                cfg.added.push((tok.clone(), id as u32));
            }
        }
        // Lowest id first, so that gaps fill in order.
        cfg.added.sort_by_key(|(_, id)| *id);
        Ok(Self::from_map(map, &cfg))
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

/// The tokenizer settings `tokenizer_config.json` carries.
struct TokenizerConfig {
    unk: String,
    pad: String,
    word_delimiter: String,
    bos: Option<String>,
    eos: Option<String>,
    do_lower_case: bool,
    clean_up_spaces: bool,
    /// Added tokens and their ids (`added_tokens_decoder`, `added_tokens.json`).
    added: Vec<(String, u32)>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            unk: UNK.into(),
            pad: PAD.into(),
            word_delimiter: WORD_DELIMITER.into(),
            bos: None,
            eos: None,
            do_lower_case: false,
            clean_up_spaces: false,
            added: Vec::new(),
        }
    }
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::format(path, format!("invalid JSON: {e}")))
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
