//! `xlsr transcribe` and `xlsr eval`.

use anyhow::Result;
use std::path::PathBuf;

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
    /// Beam search with this ARPA n-gram model (word level) instead of greedy decoding, as
    /// pyctcdecode with kenlm
    #[arg(long)]
    pub lm: Option<std::path::PathBuf>,
    /// With --lm: weight of the language model
    #[arg(long, default_value_t = 0.5, requires = "lm")]
    pub alpha: f64,
    /// With --lm: bonus per word
    #[arg(long, default_value_t = 1.5, requires = "lm")]
    pub beta: f64,
    /// With --lm: beams kept per frame
    #[arg(long, default_value_t = 100, requires = "lm")]
    pub beam_width: usize,
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
    if let Some(path) = logits {
        crate::transcribe::check_logits_path(path, files)?;
    }
    let gpu = crate::Gpu::new()?;
    let mut t =
        crate::transcribe::Transcriber::load_lang(&gpu, model, args.target_lang.as_deref())?;
    t.chunking = crate::transcribe::Chunking {
        chunk_seconds: args.chunk_seconds,
        stride_seconds: args.stride_seconds,
    };
    if let Some(path) = &args.lm {
        if args.timestamps {
            anyhow::bail!(
                "--timestamps with --lm: word times come from greedy decoding only, for now"
            );
        }
        let (mut d, warning) =
            crate::decode::LmDecoder::load(path, &t.vocab, t.model.config.vocab_size)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        d.options.alpha = args.alpha;
        d.options.beta = args.beta;
        d.options.beam_width = args.beam_width.max(1);
        t.lm = Some(d);
    }
    let mut done = Vec::new();
    let mut failed = 0;
    for f in files {
        match t.transcribe(f) {
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
    if let Some(path) = logits {
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
    let gpu = crate::Gpu::new()?;
    let t = crate::transcribe::Transcriber::load_lang(&gpu, model, args.target_lang.as_deref())?;
    // A Common Voice folder is prepared (once) into a cache under the temp dir.
    let cache = std::env::temp_dir().join(format!(
        "xlsr-prepared-{:016x}",
        data.display()
            .to_string()
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64)
                .wrapping_mul(0x100000001b3))
    ));
    let prepared = crate::train::open_data(data, &cache)?;
    let r = crate::train::evaluate(&t.model, &t.vocab, &prepared, split, batch_size, limit)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
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
