//! Evaluation: greedy (or language-model beam search) CTC transcripts of a prepared split,
//! WER and CER (as jiwer computes them) and the mean CTC loss per utterance (each utterance's
//! loss over its label length).

use crate::data::{collate, Prepared, Split, Targets, Vocab};
use crate::decode::LmDecoder;
use crate::dist::Dist;
use crate::error::{file_err, Result};
use crate::metrics;
use crate::model::{Forward, Wav2Vec2ForCtc};
use crate::ops::ctc::{ctc_loss, CtcOptions, Reduction};
use crate::{Tape, Tensor};
use serde::Serialize;

/// What an evaluation found.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Word error rate over the whole split.
    pub wer: f64,
    /// Character error rate over the whole split.
    pub cer: f64,
    /// Mean over utterances of CTC loss / label length.
    pub ctc_loss: f64,
    /// Utterances evaluated.
    pub utterances: usize,
    /// Clips of this split that `prepare` skipped.
    pub skipped: usize,
    /// How the transcripts were decoded: `greedy`, or the beam search's settings.
    pub decoding: String,
    /// (reference, prediction) for each utterance, in evaluation order.
    #[serde(skip)]
    pub pairs: Vec<(String, String)>,
    /// With a language model: each utterance's logits [frames, vocab], to decode again.
    #[serde(skip)]
    pub logits: Vec<Vec<f32>>,
}

/// One evaluated batch: its place in the evaluation order, its (reference, prediction) pairs
/// and each utterance's loss over its label length.
type BatchResult = (usize, Vec<(String, String)>, Vec<f64>);

/// What [`evaluate`] runs: the first `limit` utterances of `split` (all when `None`),
/// `batch_size` at a time; with `lm` the transcripts come from its beam search (in parallel
/// over the utterances) and the result keeps the logits.
#[derive(Clone, Copy)]
pub struct EvalOptions<'a> {
    /// The split evaluated.
    pub split: Split,
    /// Utterances per forward pass.
    pub batch_size: usize,
    /// Only the first this many utterances.
    pub limit: Option<usize>,
    /// Beam search with this language model instead of greedy decoding.
    pub lm: Option<&'a LmDecoder>,
}

/// Evaluates `model` on `data` as `opts` says, shortest utterances first so padding stays
/// small. `vocab` is the model's tokenizer: it decodes the predictions; the loss takes the
/// batches' targets, re-encoded only when `vocab` is not the one the data was prepared with.
pub fn evaluate(
    model: &Wav2Vec2ForCtc,
    vocab: &Vocab,
    data: &Prepared,
    opts: &EvalOptions,
) -> Result<EvalResult> {
    evaluate_shared(model, vocab, data, opts, &Dist::single())
}

/// [`evaluate`] shared among data-parallel ranks: each runs every `size`-th batch, and all
/// gather the transcripts and losses, so each gets the result one process would (the same
/// WER, CER and loss, summed in the same order). Only one process keeps logits for `lm`.
pub fn evaluate_shared(
    model: &Wav2Vec2ForCtc,
    vocab: &Vocab,
    data: &Prepared,
    opts: &EvalOptions,
    dist: &Dist,
) -> Result<EvalResult> {
    let EvalOptions {
        split,
        batch_size,
        limit,
        lm,
    } = *opts;
    use rayon::prelude::*;
    let utts = data.split(split);
    let n = limit.unwrap_or(utts.len()).min(utts.len());
    if n == 0 {
        // A perfect score over nothing is no score.
        let name = match split {
            Split::Train => "train",
            Split::Test => "test",
        };
        return file_err(
            &data.dir,
            format!(
                "the {name} split has no utterances to evaluate ({} clips skipped by prepare{})",
                skipped_in(data, split),
                if limit == Some(0) { "; --limit 0" } else { "" }
            ),
        );
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| utts[i].samples);
    let v = model.config.vocab_size;
    let same_vocab = vocab.same_tokens(&data.vocab);
    let mut done: Vec<BatchResult> = Vec::new();
    let mut kept = Vec::new();
    let (rank, ranks) = (dist.rank(), dist.size());
    let batches = order.chunks(batch_size.max(1)).enumerate();
    for (j, idx) in batches.filter(|(j, _)| j % ranks == rank) {
        let (mut pairs, mut losses_of) = (Vec::new(), Vec::new());
        let batch = collate(data, split, idx)?;
        let gpu = &model.gpu;
        let audio = Tensor::from_slice(gpu, &batch.audio, &[batch.len(), batch.max_samples])?;
        let tape = Tape::new();
        let out = tape.no_grad(|| {
            model.forward(
                &tape,
                &audio,
                Some(&batch.audio_lengths),
                &Forward::default(),
            )
        })?;
        let targets = if same_vocab {
            batch.targets
        } else {
            let rows: Vec<Vec<u32>> = idx
                .iter()
                .map(|&i| vocab.labels(&utts[i].text).ids)
                .collect();
            Targets::from_rows(&rows)
        };
        let opts = CtcOptions {
            blank: model.config.blank(),
            reduction: Reduction::None,
            zero_infinity: true,
        };
        let ctc = ctc_loss(&out.logits.value, &targets, &out.frames, opts)?;
        let losses = ctc.loss.to_vec()?;
        let logits = out.logits.value.to_vec()?;
        // CTC with zero_infinity would report 0 for non-finite logits, and the transcripts be
        // noise: a model that makes them is an error, not a score.
        crate::model::check_logits(&logits)?;
        let t = out.logits.shape()[1];
        let rows: Vec<&[f32]> = (0..idx.len())
            .map(|b| &logits[b * t * v..][..out.frames[b] * v])
            .collect();
        let hyps: Vec<String> = match lm {
            Some(d) => rows.par_iter().map(|r| d.decode(r)).collect(),
            None => rows
                .iter()
                .map(|r| Ok(vocab.decode_ctc(&metrics::greedy_decode(r, r.len() / v, v)?)))
                .collect::<Result<_>>()?,
        };
        if lm.is_some() {
            kept.extend(rows.iter().map(|r| r.to_vec()));
        }
        for ((b, &i), hyp) in idx.iter().enumerate().zip(hyps) {
            // The reference in the model's letter case (an uppercase vocabulary transcribes
            // in capitals).
            pairs.push((vocab.match_case(&utts[i].text), hyp));
            // The logits are finite (`check_logits`), so zero_infinity's 0 only ever stands
            // for an impossible alignment, as in torch.
            losses_of.push(losses[b] as f64 / targets.lengths[b].max(1) as f64);
        }
        done.push((j, pairs, losses_of));
    }
    if ranks > 1 {
        let mine =
            serde_json::to_vec(&done).map_err(|e| crate::error::Error::State(e.to_string()))?;
        done = Vec::new();
        for part in dist.all_gather_bytes(&mine) {
            let theirs: Vec<BatchResult> = serde_json::from_slice(&part)
                .map_err(|e| crate::error::Error::State(e.to_string()))?;
            done.extend(theirs);
        }
        done.sort_by_key(|d| d.0);
    }
    let mut pairs = Vec::with_capacity(n);
    let mut loss_sum = 0.0;
    for (_, p, l) in done {
        pairs.extend(p);
        for x in l {
            loss_sum += x;
        }
    }
    let refs: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let hyps: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let skipped = skipped_in(data, split);
    Ok(EvalResult {
        wer: metrics::wer(&refs, &hyps)?,
        cer: metrics::cer(&refs, &hyps)?,
        ctc_loss: loss_sum / n as f64,
        utterances: n,
        skipped,
        decoding: lm.map_or("greedy".to_string(), |d| d.describe()),
        pairs,
        logits: kept,
    })
}

/// Clips `prepare` skipped from the corpus splits that make up `split`.
pub fn skipped_in(data: &Prepared, split: Split) -> usize {
    use crate::data::prepare::Source;
    let names: Vec<String> = match (&data.options.source, split) {
        (Source::CommonVoice { train_splits, .. }, Split::Train) => train_splits.clone(),
        (Source::CommonVoice { test_splits, .. }, Split::Test) => test_splits.clone(),
        (Source::Manifests { train, .. }, Split::Train) => {
            train.iter().map(|p| p.display().to_string()).collect()
        }
        (Source::Manifests { test, .. }, Split::Test) => {
            test.iter().map(|p| p.display().to_string()).collect()
        }
    };
    data.summary
        .skipped
        .iter()
        .filter(|s| names.contains(&s.split))
        .count()
}

/// The evaluation a run makes every `--eval-steps` and at its end: shared among the ranks;
/// rank 0 (which holds `log`) logs it and redraws `RUN_DIR/training.svg`.
#[allow(clippy::too_many_arguments)]
pub(super) fn during_training(
    model: &Wav2Vec2ForCtc,
    vocab: &Vocab,
    data: &Prepared,
    opts: &EvalOptions,
    dist: &Dist,
    log: Option<&mut crate::metrics::MetricsLog>,
    step: u64,
    epoch: f64,
) -> Result<EvalResult> {
    use crate::metrics::MetricsLog;
    let r = evaluate_shared(model, vocab, data, opts, dist)?;
    if let Some(log) = log {
        log.eval(step, epoch, r.ctc_loss, r.wer, r.cer)?;
        let rows = MetricsLog::read(log.path())?;
        let svg = log.path().with_file_name("training.svg");
        crate::plot::training_plot(
            &svg,
            &MetricsLog::series(&rows, "loss"),
            &MetricsLog::series(&rows, "eval_wer"),
            &MetricsLog::series(&rows, "eval_cer"),
        )?;
    }
    Ok(r)
}
