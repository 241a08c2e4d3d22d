//! What a run sets up before its first step: the corpus, a fine-tuned model's vocabulary,
//! and a resumed run's options.

use super::TrainOptions;
use crate::data::prepare::{self, Options, Source};
use crate::data::{Prepared, Vocab};
use crate::error::{file_err, Result};
use std::path::Path;

/// Opens `--data`: a prep folder, or a Common Voice folder prepared into `RUN_DIR/prepared`.
pub fn open_data(data: &Path, run_dir: &Path) -> Result<Prepared> {
    if data.join("index.json").is_file() {
        return Ok(Prepared::open(data)?);
    }
    if data.join("train.tsv").is_file() {
        let out = run_dir.join("prepared");
        let opts = Options::new(Source::common_voice(data), &out);
        let summary = prepare::run(&opts)?;
        println!("{summary}");
        return Ok(Prepared::open(&out)?);
    }
    file_err(
        data,
        "neither a prep folder (index.json, from `xlsr prepare`) nor a Common Voice folder (train.tsv)",
    )
}

/// The vocabulary of a fine-tuned model folder whose CTC head has `rows` outputs.
/// (`resumed`: the folder is the run's own checkpoint, whose head a new one must not replace.)
pub(super) fn model_vocab(
    dir: &Path,
    rows: usize,
    lang: Option<&str>,
    resumed: bool,
) -> Result<Vocab> {
    let path = dir.join("vocab.json");
    if !path.is_file() {
        let or_new_head = match resumed {
            true => "",
            false => ", or pass --new-head to train a new head on the corpus's vocabulary",
        };
        return file_err(
            dir,
            format!(
                "the checkpoint has a CTC head ({rows} outputs) but no vocab.json to say what \
                 they are: copy the tokenizer files of the model here{or_new_head}"
            ),
        );
    }
    let vocab = Vocab::load_lang(dir, lang)?;
    vocab.check_head(&path, rows)?;
    // The head was trained with config.json's pad_token_id as its blank; training on takes
    // vocab.json's pad token. Two ids would quietly retrain the blank as another token. (An
    // MMS language's own vocabulary decides its blank, whatever the shared config says.)
    let blank = crate::model::Config::load(&dir.join("config.json"))?.pad_token_id;
    if lang.is_none() && blank.is_some_and(|b| b != vocab.pad as usize) {
        return file_err(
            dir.join("config.json"),
            format!(
                "pad_token_id is {}, but vocab.json's pad token has id {}: the head's CTC blank \
                 is ambiguous; make them agree, or pass --new-head",
                blank.unwrap_or_default(),
                vocab.pad
            ),
        );
    }
    Ok(vocab)
}

/// Says how the corpus was encoded with a model's vocabulary.
pub(super) fn report_relabel(dir: &Path, vocab: &Vocab, r: &crate::data::prepared::Relabelled) {
    println!(
        "encoded the corpus with the model's vocabulary ({} tokens, {})",
        vocab.head_size(),
        dir.join("vocab.json").display()
    );
    if !r.unknown.is_empty() {
        let n: usize = r.unknown.values().sum();
        println!(
            "  {n} characters it lacks became its unknown token: {} (pass --new-head to train \
             a head on the corpus's own vocabulary instead)",
            crate::data::vocab::unknown_summary(&r.unknown)
        );
    }
    if !r.dropped.is_empty() {
        println!(
            "  {} clips left out: their transcripts, so encoded, are too long for the audio",
            r.dropped.len()
        );
    }
}

/// A resumed run whose checkpoint `st` is at or past its last step (`total`): trains nothing.
/// Writes `final/` from the checkpoint where a crash left none (the last step's checkpoint is
/// the final model), and never replaces an existing one, which may be newer.
pub(super) fn finished(
    args: &TrainOptions,
    model: &crate::model::Wav2Vec2ForCtc,
    vocab: &Vocab,
    st: &super::TrainerState,
    total: u64,
    root: bool,
) -> Result<super::RunSummary> {
    let final_dir = args.out.join("final");
    let step = st.global_step;
    if final_dir.exists() || step > total {
        let at = match super::state::final_step(&args.out) {
            Some(f) => format!(", final/ at step {f},"),
            None => String::new(),
        };
        return file_err(
            &args.out,
            format!(
                "--resume: the newest checkpoint is at step {step}{at} and the run ends at step \
                 {total}: nothing to train ({}); to train on, raise --max-steps or --epochs and \
                 pass --override",
                match final_dir.exists() {
                    true => "final/ holds the run's model and is left as it is",
                    false => "final/ is not written from an older step",
                }
            ),
        );
    }
    if root {
        super::state::save_final(&args.out, model, vocab, st)?;
        println!(
            "the run had finished at step {step}; its final model is now in {}",
            final_dir.display()
        );
    }
    Ok(super::RunSummary {
        final_dir,
        steps: step,
        skipped_steps: st.skipped_steps,
        losses: Vec::new(),
        eval: None,
    })
}

/// The options a resumed run uses: the checkpoint's (saved in its trainer_state.json), with
/// the differences on the command line listed, or with `--override` the command line's. The
/// weights always come from the checkpoint, whatever `--model` says.
pub(super) fn resumed_args(args: &TrainOptions, checkpoint: &Path) -> TrainOptions {
    use serde_json::Value;
    const OWN: [&str; 4] = ["out", "resume", "overwrite", "override"];
    let Some(state) = std::fs::read_to_string(checkpoint.join("trainer_state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        // Loading the state names what is wrong with it, and the checkpoint before.
        return args.clone();
    };
    let saved = state.get("args").and_then(|a| a.as_object().cloned());
    // Paths as the checkpoint keeps them (absolute), so the same folder never differs.
    let now = serde_json::to_value(args.absolute()).ok();
    let (Some(saved), Some(Value::Object(now))) = (saved, now) else {
        // A checkpoint from before options were saved, or an edited one.
        eprintln!(
            "warning: {} holds no training options (`args`); resuming with the command \
             line's, which may not be the run's",
            checkpoint.join("trainer_state.json").display()
        );
        return args.clone();
    };
    let differ: Vec<String> = now
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let old = saved.get(k).unwrap_or(&Value::Null);
            // f32 options print as f32 (3e-4, not 0.0003000000142492354).
            let show = |v: &Value| match v.as_f64() {
                Some(x) if v.is_f64() && (x as f32) as f64 == x => format!("{}", x as f32),
                _ => v.to_string(),
            };
            (old != v).then(|| format!("--{k} {} (checkpoint: {})", show(v), show(old)))
        })
        .collect();
    if differ.is_empty() {
        return args.clone();
    }
    if args.r#override {
        eprintln!(
            "note: --override: resuming with the command line's options where they differ from \
             the checkpoint's (the weights still come from the checkpoint): {}",
            differ.join(", ")
        );
        return args.clone();
    }
    let mut merged = saved;
    for k in OWN {
        if let Some(v) = now.get(k) {
            merged.insert(k.into(), v.clone());
        }
    }
    match serde_json::from_value::<TrainOptions>(Value::Object(merged)) {
        Ok(a) => {
            eprintln!(
                "note: resuming with the checkpoint's options; this command's (as given, or \
                 their defaults) differ and are not used (pass --override to use them): {}",
                differ.join(", ")
            );
            a
        }
        Err(_) => args.clone(),
    }
}
