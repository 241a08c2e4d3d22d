//! Decoding CTC output beyond greedy: ARPA n-gram language models ([`arpa`]), built with
//! modified Kneser-Ney smoothing ([`kneser_ney`]), and prefix beam search with shallow fusion
//! ([`beam`]), as `pyctcdecode` with KenLM.

pub mod arpa;
pub mod beam;
pub mod kneser_ney;

pub use arpa::ArpaLm;
pub use beam::{alphabet, best, decode, decode_beams, BeamOptions, Hypothesis, WordLm};
pub use kneser_ney::KneserNey;

use crate::data::Vocab;
use crate::error::Result;
use std::path::Path;

/// Beam search with a language model over a CTC vocabulary: what `--lm` sets up.
pub struct LmDecoder {
    path: std::path::PathBuf,
    lm: WordLm,
    labels: Vec<String>,
    /// Beam search settings (pyctcdecode's defaults unless changed).
    pub options: BeamOptions,
}

impl LmDecoder {
    /// Loads the ARPA model at `path` for `vocab`'s first `outputs` tokens (the CTC head's).
    /// Returns a warning too when the model's words cannot be spelled with those tokens (a
    /// model for another language or script decodes to garbage).
    pub fn load(path: &Path, vocab: &Vocab, outputs: usize) -> Result<(LmDecoder, Option<String>)> {
        let arpa = ArpaLm::load(path)?;
        let tokens: Vec<String> = (0..outputs as u32)
            .map(|i| vocab.token(i).unwrap_or("").to_string())
            .collect();
        let labels = alphabet(&tokens);
        let chars: std::collections::HashSet<char> =
            labels.iter().flat_map(|l| l.chars()).collect();
        let words: Vec<&String> = arpa
            .listed_unigrams()
            .iter()
            .filter(|w| !matches!(w.as_str(), "<s>" | "</s>" | "<unk>"))
            .collect();
        let spelled = words
            .iter()
            .filter(|w| w.chars().all(|c| chars.contains(&c)))
            .count();
        let no_backoffs = words.is_empty() && arpa.unigrams().count() > 3;
        let warning = if no_backoffs {
            Some(format!(
                "{}: none of its 1-grams has a back-off (an order-{} model?), and the decoder \
                 (as pyctcdecode) knows only words that do: every word is unknown to it; build \
                 one of order 2 or more",
                path.display(),
                arpa.order
            ))
        } else {
            (words.is_empty() || spelled * 10 < words.len()).then(|| {
                format!(
                "{}: only {spelled} of its {} words can be spelled with the model's {} tokens; \
                 is it for this model's language and letter case?",
                path.display(),
                words.len(),
                outputs
            )
            })
        };
        Ok((
            LmDecoder {
                path: path.to_path_buf(),
                lm: WordLm::from_arpa(arpa),
                labels,
                options: BeamOptions::default(),
            },
            warning,
        ))
    }

    /// The settings, as `eval --json` reports them.
    pub fn describe(&self) -> String {
        let o = &self.options;
        format!(
            "beam search with {} (alpha {}, beta {}, beam width {})",
            self.path.display(),
            o.alpha,
            o.beta,
            o.beam_width
        )
    }

    /// The best transcript of one utterance's logits, [frames, labels].
    pub fn decode(&self, logits: &[f32]) -> String {
        decode(logits, &self.labels, Some(&self.lm), &self.options)
    }

    /// The best beam of one utterance's logits, with the frames of its words.
    pub fn best(&self, logits: &[f32]) -> Hypothesis {
        best(logits, &self.labels, Some(&self.lm), &self.options)
    }
}
