//! Transcript normalisation as the seed notebook does it: remove a set of punctuation
//! characters, lowercase, and (unlike the notebook) collapse runs of whitespace.

/// The notebook's character class `[\,\?\.\!\-\;\:\"\“\%\‘\”\�]`.
pub const DEFAULT_CHARS_TO_REMOVE: &str = ",?.!-;:\"“%‘”�";

/// How sentences are normalised before they become labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextNorm {
    /// Characters deleted from every sentence.
    pub chars_to_remove: String,
    /// Lowercase `I` as `ı` and `İ` as `i` (Turkish, Azerbaijani), which plain Unicode
    /// lowercasing gets wrong (`I`→`i`, `İ`→`i̇` with a combining dot).
    pub turkish: bool,
}

impl Default for TextNorm {
    fn default() -> Self {
        TextNorm {
            chars_to_remove: DEFAULT_CHARS_TO_REMOVE.to_string(),
            turkish: false,
        }
    }
}

impl TextNorm {
    /// Normalises one sentence: drop `chars_to_remove`, lowercase, collapse whitespace runs to
    /// one space and trim. The result may be empty.
    pub fn apply(&self, sentence: &str) -> String {
        let kept: String = sentence
            .chars()
            .filter(|&c| !self.chars_to_remove.contains(c))
            .map(|c| match c {
                'I' if self.turkish => 'ı',
                'İ' if self.turkish => 'i',
                _ => c,
            })
            .collect();
        // `str::to_lowercase` (not per char) so Greek final sigma matches Python's `str.lower`.
        let lower = kept.to_lowercase();
        lower.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}
