#!/usr/bin/env python3
"""Writes tests/fixtures/mms/: a tiny random MMS-style model folder as transformers makes and
reads it, and tests/fixtures/mms.safetensors: its logits for each language.

    ../refenv/bin/python tools/make_mms_reference.py

Seeded and re-runnable. The folder has what facebook/mms-1b-all has, at toy size: a large
(pre-LN) wav2vec2 with `adapter_attn_dim` (an attention adapter after every encoder layer),
the English adapter and head in model.safetensors, `adapter.spa.safetensors` and
`adapter.tur.safetensors` (adapter layers + heads of other vocabulary sizes; and
`adapter.eng.safetensors`), and one nested
vocab.json {lang: {token: id}} with `target_lang` in tokenizer_config.json. The logits are
`Wav2Vec2ForCTC.from_pretrained(dir, target_lang=LANG)`'s on a fixed input batch, for
LANG = eng, spa and tur.
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

OUT = "tests/fixtures/mms"
VOCABS = {
    "eng": ["<pad>", "<s>", "</s>", "<unk>", "|", "e", "t", "a", "o", "n"],
    "spa": ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "e", "o", "s", "n", "r", "l", "d", "ñ"],
    "tur": ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "e", "ı", "k"],
}
LENGTHS = [1600, 1111]


def config(vocab_size):
    c = Wav2Vec2Config(
        conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        num_conv_pos_embedding_groups=4, num_conv_pos_embeddings=7, feat_extract_norm="layer",
        do_stable_layer_norm=True, conv_bias=True, hidden_act="gelu", adapter_attn_dim=8,
        vocab_size=vocab_size, pad_token_id=0, layer_norm_eps=1e-5, mask_time_prob=0.0,
        ctc_loss_reduction="mean", ctc_zero_infinity=True)
    c._attn_implementation = "eager"
    return c


def randomise(module):
    """Random affine norms and biases, so a swapped weight/bias or a missed bias shows."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))


def main():
    torch.manual_seed(7)
    os.makedirs(OUT, exist_ok=True)
    model = Wav2Vec2ForCTC(config(len(VOCABS["eng"]))).eval()
    randomise(model)
    model.save_pretrained(OUT)
    # Each language's adapter layers and head, as load_adapter reads them (English's are also
    # the ones in model.safetensors, as in mms-1b-all).
    for lang in VOCABS:
        m = model
        if lang != "eng":
            m = Wav2Vec2ForCTC(config(len(VOCABS[lang]))).eval()
            randomise(m)
        weights = {k: v.detach().contiguous() for k, v in m._get_adapters().items()}
        save_file(weights, f"{OUT}/adapter.{lang}.safetensors", metadata={"format": "pt"})
    with open(f"{OUT}/vocab.json", "w", encoding="utf-8") as f:
        json.dump({lang: {t: i for i, t in enumerate(v)} for lang, v in VOCABS.items()}, f,
                  ensure_ascii=False, indent=1)
    with open(f"{OUT}/tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "Wav2Vec2CTCTokenizer", "unk_token": "<unk>",
                   "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                   "word_delimiter_token": "|", "do_lower_case": False, "target_lang": "eng"},
                  f, indent=1)

    audio = torch.zeros(len(LENGTHS), max(LENGTHS))
    mask = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        x = torch.randn(n)
        audio[i, :n] = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        mask[i, :n] = 1
    t = {"audio": audio, "attention_mask": mask}
    for lang in VOCABS:
        m = Wav2Vec2ForCTC.from_pretrained(OUT, target_lang=lang).eval()
        with torch.no_grad():
            t[f"logits.{lang}"] = m(audio, attention_mask=mask).logits.contiguous()
    save_file(t, "tests/fixtures/mms.safetensors")
    print("wrote", OUT, "and tests/fixtures/mms.safetensors:", {k: tuple(v.shape) for k, v in t.items()})


if __name__ == "__main__":
    main()
