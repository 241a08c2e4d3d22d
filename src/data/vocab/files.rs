//! The Hugging Face tokenizer files: `vocab.json` (flat, or one vocabulary per language for
//! MMS), `tokenizer_config.json`, `added_tokens.json` and `preprocessor_config.json`, read
//! and written as `Wav2Vec2Processor` reads and writes them.

use super::{Vocab, PAD, UNK, WORD_DELIMITER};
use crate::data::DataError;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

impl Vocab {
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
            "sampling_rate": crate::data::audio::SAMPLE_RATE,
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
            crate::files::write_atomic_io(&path, (text + "\n").as_bytes())
                .map_err(|e| DataError::io(&path, e))?;
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
                        format!("token {tok:?}: id {id} is not an integer id below 2^32 - 1"),
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

/// The tokenizer settings `tokenizer_config.json` carries.
pub(super) struct TokenizerConfig {
    pub(super) unk: String,
    pub(super) pad: String,
    pub(super) word_delimiter: String,
    pub(super) bos: Option<String>,
    pub(super) eos: Option<String>,
    pub(super) do_lower_case: bool,
    pub(super) clean_up_spaces: bool,
    /// Added tokens and their ids (`added_tokens_decoder`, `added_tokens.json`).
    pub(super) added: Vec<(String, u32)>,
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
    // A FIFO or device under the name would block the read forever.
    if path.exists() && !path.is_file() {
        return Err(DataError::format(path, "is not a regular file"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::format(path, format!("invalid JSON: {e}")))
}
