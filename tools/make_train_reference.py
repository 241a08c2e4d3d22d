#!/usr/bin/env python3
"""Writes the reference fixtures for the training loop's parts (optimiser, schedule, metrics).

Run from the repository root with torch, transformers and jiwer installed (CPU is fine):
    ../refenv/bin/python tools/make_train_reference.py
Seeded and deterministic: re-running rewrites identical files.

tests/fixtures/adamw.safetensors: five steps of torch.optim.AdamW (betas 0.9/0.999, eps 1e-8,
  weight decay 0.01 on the parameters HF's Trainer decays, 0 on the rest), the learning rate from
  get_linear_schedule_with_warmup through LambdaLR, clip_grad_norm_(max_norm=1.0) before each
  step, as HF's Trainer does them. One parameter gets no gradient on two steps (as under
  LayerDrop), so its step count and bias corrections lag the others'. Stores the initial values,
  each step's gradients, each step's parameters after the update, the grad norms clip_grad_norm_
  returned, the learning rates, and the final optimiser state.
tests/fixtures/train.json: learning rates of get_linear_schedule_with_warmup for several
  (warmup, total) pairs, and which parameter names of the two tiny wav2vec2 fixture models
  Trainer.get_decay_parameter_names decays.
tests/fixtures/metrics.json: reference/hypothesis pairs with jiwer's wer and cer, per pair and
  for the whole corpus, and the code points Python's str.isspace accepts (jiwer's whitespace).
"""
import importlib.metadata
import json
import sys

import jiwer
import torch
from safetensors.torch import save_file
from transformers import Trainer, Wav2Vec2Config, Wav2Vec2ForCTC, get_linear_schedule_with_warmup

sys.path.insert(0, "tools")
from make_reference import W2V2_TINY, W2V2_VARIANTS, canonical  # noqa: E402

torch.manual_seed(1234)
torch.use_deterministic_algorithms(True)

# --- AdamW + clipping + schedule -----------------------------------------------------------------

ADAMW_PARAMS = {
    # name: shape. Names follow wav2vec2's so the decay rule is the real one.
    "lm_head.weight": (5, 37),
    "lm_head.bias": (5,),
    "wav2vec2.encoder.layer_norm.weight": (37,),
    "wav2vec2.masked_spec_embed": (37,),
    "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight": (6, 4),
}
LAYERDROPPED = "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"
DROPPED_AT = (1, 2)  # 0-based steps at which that parameter gets no gradient
GRAD_SCALES = [3.0, 0.05, 0.4, 8.0, 0.02]  # some steps clip (norm > 1), some do not
BASE_LR, WARMUP, TOTAL, WEIGHT_DECAY, MAX_NORM = 0.05, 2, 6, 0.01, 1.0


def decays(name):
    """Whether HF's Trainer applies weight decay, by its name patterns (the tiny models below
    check that these are all that matter for wav2vec2)."""
    import re

    pats = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return not any(re.search(p, name.lower()) for p in pats)


def adamw_case():
    t = {}
    params = {n: torch.nn.Parameter(torch.randn(*s)) for n, s in ADAMW_PARAMS.items()}
    for n, p in params.items():
        t[f"init.{n}"] = p.detach().clone()
    groups = [
        {"params": [p for n, p in params.items() if decays(n)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in params.items() if not decays(n)], "weight_decay": 0.0},
    ]
    # foreach=False: the plain per-tensor loop, the arithmetic our kernel copies.
    opt = torch.optim.AdamW(groups, lr=BASE_LR, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    sched = get_linear_schedule_with_warmup(opt, WARMUP, TOTAL)
    lrs, norms = [], []
    for k, scale in enumerate(GRAD_SCALES):
        for n, p in params.items():
            if n == LAYERDROPPED and k in DROPPED_AT:
                p.grad = None
                continue
            g = scale * torch.randn_like(p)
            p.grad = g.clone()
            t[f"grad.{k}.{n}"] = g
        present = [p for p in params.values() if p.grad is not None]
        norms.append(torch.nn.utils.clip_grad_norm_(present, MAX_NORM).item())
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        for n, p in params.items():
            t[f"param.{k}.{n}"] = p.detach().clone()
    for n, p in params.items():
        st = opt.state[p]
        t[f"exp_avg.{n}"] = st["exp_avg"].clone()
        t[f"exp_avg_sq.{n}"] = st["exp_avg_sq"].clone()
        t[f"step.{n}"] = st["step"].reshape(1).float()
    t["lr"] = torch.tensor(lrs, dtype=torch.float64)
    t["grad_norm"] = torch.tensor(norms, dtype=torch.float32)
    print("adamw: grad norms", [round(x, 4) for x in norms], "lrs", lrs)
    save_file({k: v.contiguous() for k, v in t.items()}, "tests/fixtures/adamw.safetensors")


def schedule_cases():
    out = []
    for warmup, total, base in [(2, 6, 0.05), (500, 10000, 3e-4), (0, 7, 1.0), (10, 4, 1e-3),
                                (3, 3, 0.5)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
        steps = sorted(set(list(range(0, min(total + 3, 40))) + [warmup - 1, warmup, warmup + 1,
                                                                  total // 2, total - 1, total,
                                                                  total + 5]))
        steps = [s for s in steps if s >= 0]
        lrs = []
        done = 0
        for s in steps:
            while done < s:
                opt.step()
                sched.step()
                done += 1
            lrs.append(sched.get_last_lr()[0])
        out.append(dict(warmup=warmup, total=total, base_lr=base, steps=steps, lrs=lrs))
    return out


def decay_names():
    out = {}
    for name, v in W2V2_VARIANTS.items():
        v = dict(v)
        old_wn = v.pop("old_weight_norm")
        model = Wav2Vec2ForCTC(Wav2Vec2Config(**W2V2_TINY, **v))
        decayed = set(Trainer.get_decay_parameter_names(None, model))
        rows = []
        for n, _ in model.named_parameters():
            assert (n in decayed) == decays(n), n
            rows.append([canonical(n) if old_wn else n, n in decayed])
        out[name] = rows
    return out


# --- WER / CER -----------------------------------------------------------------------------------

PAIRS = [
    ("el gato come pescado", "el gato come pescado"),
    ("el gato come pescado", "el pato come pescado"),
    ("el gato come pescado", "el gato pescado"),
    ("el gato come pescado", "el gato come mucho pescado"),
    ("¿dónde está la estación?", "donde esta la estacion"),
    ("¡qué niño tan pequeño!", "que nino tan pequeno"),
    ("mañana llegará el camión", "mañana llegara el camion"),
    ("el pingüino bebe agua", "el pinguino bebe agua"),
    ("canción", "cancio\u0301n"),  # composed vs decomposed accent: different code points
    ("bugün hava çok güzel", "bugun hava cok guzel"),
    ("ışık ılık süt", "isik ilik sut"),
    ("İstanbul'da yaşıyorum", "istanbul'da yasiyorum"),
    ("öğretmen öğrencilere ödev verdi", "öğretmen öğrencilere ödev verdi"),
    ("çağdaş türk şiiri", "çağdaş şiiri türk"),
    ("yarın görüşürüz", ""),
    ("hola", ""),
    ("una frase", "   "),
    ("  espacios   al   principio", "espacios al principio  "),
    ("dos  espacios", "dos espacios"),
    ("tab\tinside", "tab inside"),
    ("newline\nhere", "newline here"),
    ("nbsp\u00a0word", "nbsp word"),
    ("a b c d e f", "f e d c b a"),
    ("la la la", "la"),
    ("la", "la la la la"),
    ("x", "y z w"),
    ("el perro ladra", "elperro ladra"),
    ("güneş doğdu", "güneş doğdu ve battı"),
    ("números 123 y 45", "numeros 123 y 4 5"),
    ("ÑANDÚ", "ñandú"),
    ("", "algo dicho"),
]


def metrics_cases():
    refs = [r for r, _ in PAIRS]
    hyps = [h for _, h in PAIRS]
    pairs = [
        dict(reference=r, hypothesis=h, wer=float(jiwer.wer(r, h)), cer=float(jiwer.cer(r, h)))
        for r, h in PAIRS
    ]
    nonempty = [i for i, r in enumerate(refs) if r.strip()]
    corpus = [
        dict(name="all", wer=float(jiwer.wer(refs, hyps)), cer=float(jiwer.cer(refs, hyps)),
             indices=list(range(len(PAIRS)))),
        dict(name="nonempty_refs",
             wer=float(jiwer.wer([refs[i] for i in nonempty], [hyps[i] for i in nonempty])),
             cer=float(jiwer.cer([refs[i] for i in nonempty], [hyps[i] for i in nonempty])),
             indices=nonempty),
        dict(name="first_five", wer=float(jiwer.wer(refs[:5], hyps[:5])),
             cer=float(jiwer.cer(refs[:5], hyps[:5])), indices=list(range(5))),
    ]
    isspace = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    return dict(jiwer_version=importlib.metadata.version("jiwer"),
                pairs=pairs, corpus=corpus, isspace=isspace)


if __name__ == "__main__":
    adamw_case()
    with open("tests/fixtures/train.json", "w") as f:
        json.dump(dict(schedule=schedule_cases(), decay=decay_names()), f, indent=1,
                  ensure_ascii=False)
    with open("tests/fixtures/metrics.json", "w") as f:
        json.dump(metrics_cases(), f, indent=1, ensure_ascii=False)
