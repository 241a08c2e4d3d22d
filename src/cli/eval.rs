//! `xlsr transcribe` and `xlsr eval`.

use anyhow::Result;
use std::path::PathBuf;

/// Language-model decoding options of `xlsr transcribe` and `xlsr eval`.
#[derive(clap::Args, Debug)]
pub struct LmArgs {
    /// Beam search with this ARPA n-gram model (word level) instead of greedy decoding, as
    /// pyctcdecode with kenlm
    #[arg(long)]
    pub lm: Option<PathBuf>,
    /// With --lm: weight of the language model
    #[arg(long, default_value_t = 0.5, requires = "lm")]
    pub alpha: f64,
    /// With --lm: bonus per word
    #[arg(long, default_value_t = 1.5, requires = "lm")]
    pub beta: f64,
    /// With --lm: beams kept per frame
    #[arg(long, default_value_t = 100, requires = "lm")]
    pub beam_width: usize,
}

/// Most beams `--beam-width` keeps: memory and time grow with it (100,000 on a 1 s clip took
/// gigabytes and minutes); pyctcdecode's default is 100.
const MAX_BEAMS: usize = 10_000;

impl LmArgs {
    /// Refuses weights that are not finite and a beam width outside 1..=[`MAX_BEAMS`] (a NaN
    /// alpha once decoded every clip to an empty transcript).
    fn check(&self) -> Result<()> {
        if self.lm.is_none() {
            return Ok(());
        }
        for (flag, v) in [("--alpha", self.alpha), ("--beta", self.beta)] {
            if !v.is_finite() {
                anyhow::bail!("{flag} {v}: must be a finite number");
            }
        }
        if !(1..=MAX_BEAMS).contains(&self.beam_width) {
            anyhow::bail!("--beam-width {}: must be 1 to {MAX_BEAMS}", self.beam_width);
        }
        Ok(())
    }

    /// The decoder `--lm` asks for (warning on stderr about a model that does not fit).
    fn load(&self, t: &crate::transcribe::Transcriber) -> Result<Option<crate::decode::LmDecoder>> {
        let Some(path) = &self.lm else {
            return Ok(None);
        };
        let (mut d, warning) =
            crate::decode::LmDecoder::load(path, &t.vocab, t.model.config.vocab_size)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        d.options.alpha = self.alpha;
        d.options.beta = self.beta;
        d.options.beam_width = self.beam_width;
        Ok(Some(d))
    }
}

/// Command-line arguments of `xlsr transcribe`.
#[derive(clap::Args, Debug)]
pub struct TranscribeArgs {
    /// Model folder: config.json, model.safetensors, vocab.json
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Also write each file's raw logits [frames, vocab] to this safetensors file
    #[arg(long)]
    pub logits: Option<std::path::PathBuf>,
    /// MMS model: the language whose adapter, head and vocabulary to use
    /// (adapter.LANG.safetensors; default: the tokenizer's target_lang)
    #[arg(long)]
    pub target_lang: Option<String>,
    /// Audio longer than this runs in windows of this many seconds (transformers' pipeline
    /// `chunk_length_s`), so a long file needs bounded memory
    #[arg(long, default_value_t = 20.0)]
    pub chunk_seconds: f64,
    /// Context on each side of a window, whose logits are dropped (default: chunk / 6)
    #[arg(long)]
    pub stride_seconds: Option<f64>,
    #[command(flatten)]
    pub lm: LmArgs,
    /// After each file's line, one line per word: TAB WORD TAB START TAB END (seconds)
    #[arg(long)]
    pub timestamps: bool,
    /// Print one JSON object per file: {"file", "text", "words": [{"word", "start", "end"}]}
    #[arg(long)]
    pub json: bool,
    /// Audio files (WAV, MP3, FLAC, OGG Vorbis; any rate, mono or stereo)
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

/// Command-line arguments of `xlsr eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Model folder: config.json, model.safetensors, vocab.json
    #[arg(long)]
    pub model: PathBuf,
    /// Corpus: a prep folder (`xlsr prepare`) or a Common Voice folder
    #[arg(long)]
    pub data: PathBuf,
    /// Which split: test (the evaluation set) or train
    #[arg(long, default_value = "test")]
    pub split: String,
    #[command(flatten)]
    pub lm: LmArgs,
    /// With --lm: search alpha and beta on this split and report the best pair (what
    /// pyctcdecode users do by hand)
    #[arg(long, requires = "lm")]
    pub tune: bool,
    /// MMS model: the language whose adapter, head and vocabulary to use
    #[arg(long)]
    pub target_lang: Option<String>,
    /// Utterances per batch
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Evaluate at most this many utterances
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object (wer, cer, ctc_loss, utterances, skipped)
    #[arg(long)]
    pub json: bool,
}

/// Transcribes each file, printing FILE<TAB>TEXT (with `--timestamps` its words' times, with
/// `--json` one object per file); a file that fails is reported and counted.
pub fn transcribe(args: &TranscribeArgs) -> Result<()> {
    let (model, logits, files) = (&args.model, args.logits.as_deref(), &args.files);
    args.lm.check()?;
    if let Some(path) = logits {
        crate::transcribe::check_logits_path(path, files)?;
    }
    let gpu = super::open_gpu(0)?;
    let mut t =
        crate::transcribe::Transcriber::load_lang(&gpu, model, args.target_lang.as_deref())?;
    t.chunking = crate::transcribe::Chunking {
        chunk_seconds: args.chunk_seconds,
        stride_seconds: args.stride_seconds,
    };
    let config = &t.model.config;
    t.chunking
        .check(config.conv_stride.iter().product(), config.min_samples())?;
    t.lm = args.lm.load(&t)?;
    let mut done = Vec::new();
    let mut failed = 0;
    for f in files {
        match t.transcribe(f).map_err(|e| e.in_model(model)) {
            Ok(r) => {
                if args.json {
                    let words = serde_json::to_value(&r.words)?;
                    let line = serde_json::json!({
                        "file": f.display().to_string(),
                        "text": r.text,
                        "words": words,
                    });
                    println!("{line}");
                } else {
                    println!("{}\t{}", f.display(), r.text);
                    for w in r.words.iter().filter(|_| args.timestamps) {
                        println!("\t{}\t{:.2}\t{:.2}", w.word, w.start, w.end);
                    }
                }
                done.push(r);
            }
            Err(e) => {
                eprintln!("xlsr: {e}");
                failed += 1;
            }
        }
    }
    // Nothing transcribed, nothing written: an earlier logits file is not replaced by none.
    if let Some(path) = logits.filter(|_| !done.is_empty()) {
        crate::transcribe::save_logits(path, &done, t.model.config.vocab_size)?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be transcribed", files.len());
    }
    Ok(())
}

/// Evaluates a model folder on a corpus split and prints WER, CER and the CTC loss.
pub fn eval(args: &EvalArgs) -> Result<()> {
    use crate::data::Split;
    let (model, data, batch_size, limit) = (&args.model, &args.data, args.batch_size, args.limit);
    let split = match args.split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => anyhow::bail!("--split {other}: expected test or train"),
    };
    if batch_size == 0 {
        anyhow::bail!("--batch-size 0: must be at least 1");
    }
    args.lm.check()?;
    let gpu = super::open_gpu(0)?;
    let mut t =
        crate::transcribe::Transcriber::load_lang(&gpu, model, args.target_lang.as_deref())?;
    t.lm = args.lm.load(&t)?;
    // A Common Voice folder is prepared (once) into a cache under the temp dir.
    let key = crate::rng::fnv1a([data.as_os_str().as_encoded_bytes()]);
    let cache = std::env::temp_dir().join(format!("xlsr-prepared-{key:016x}"));
    let prepared = crate::train::open_data(data, &cache)?;
    let opts = crate::train::EvalOptions {
        split,
        batch_size,
        limit,
        lm: t.lm.as_ref(),
    };
    let mut r = crate::train::evaluate(&t.model, &t.vocab, &prepared, &opts)
        .map_err(|e| e.in_model(model))?;
    let mut tuned = None;
    if let (true, Some(d)) = (args.tune, t.lm.as_mut()) {
        let grid = tune(d, &r)?;
        eprintln!("alpha  beta   WER");
        for g in &grid {
            eprintln!("{:5.2} {:5.2} {:.4}", g.alpha, g.beta, g.wer);
        }
        let best = grid
            .iter()
            .fold(grid[0], |b, &g| if g.wer < b.wer { g } else { b });
        println!("best: --alpha {} --beta {}", best.alpha, best.beta);
        d.options.alpha = best.alpha;
        d.options.beta = best.beta;
        let refs: Vec<&str> = r.pairs.iter().map(|p| p.0.as_str()).collect();
        let hyps: Vec<String> = r.logits.iter().map(|x| d.decode(x)).collect();
        let hyps: Vec<&str> = hyps.iter().map(String::as_str).collect();
        r.wer = crate::metrics::wer(&refs, &hyps)?;
        r.cer = crate::metrics::cer(&refs, &hyps)?;
        r.decoding = d.describe();
        tuned = Some(grid);
    }
    if args.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(grid) = tuned {
            v["tuned"] = serde_json::to_value(grid)?;
        }
        println!("{v}");
    } else {
        for (reference, prediction) in r.pairs.iter().take(5) {
            println!("ref:  {reference}\npred: {prediction}");
        }
        println!(
            "WER {:.4}  CER {:.4}  CTC loss {:.4}  ({} utterances, {} clips skipped)",
            r.wer, r.cer, r.ctc_loss, r.utterances, r.skipped
        );
    }
    Ok(())
}

/// One point of the `--tune` grid.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Tuned {
    alpha: f64,
    beta: f64,
    wer: f64,
}

/// pyctcdecode users' hand search, done here: WER over a grid of alpha (0 to 2 by 0.25) and
/// beta (0 to 3 by 0.5) from the logits the evaluation kept.
fn tune(d: &mut crate::decode::LmDecoder, r: &crate::train::EvalResult) -> Result<Vec<Tuned>> {
    use rayon::prelude::*;
    let refs: Vec<&str> = r.pairs.iter().map(|p| p.0.as_str()).collect();
    let mut grid = Vec::new();
    for ai in 0..=8 {
        for bi in 0..=6 {
            let (alpha, beta) = (ai as f64 * 0.25, bi as f64 * 0.5);
            d.options.alpha = alpha;
            d.options.beta = beta;
            let dd = &*d;
            let hyps: Vec<String> = r.logits.par_iter().map(|x| dd.decode(x)).collect();
            let hyps: Vec<&str> = hyps.iter().map(String::as_str).collect();
            let wer = crate::metrics::wer(&refs, &hyps)?;
            grid.push(Tuned { alpha, beta, wer });
        }
    }
    Ok(grid)
}
