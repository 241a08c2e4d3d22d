#!/usr/bin/env python3
"""Writes tests/fixtures/decoder/: a small trigram ARPA model (lm.arpa), noisy CTC logits of
sentences (logits.safetensors) and what pyctcdecode 0.5 with kenlm decodes from them
(expected.json: transcripts and the frames of each word), to check `xlsr::decode` against it.

    ../refenv/bin/pip install pyctcdecode kenlm
    ../refenv/bin/python tools/make_decoder_reference.py

Seeded and re-runnable. The ARPA is made here from a toy Spanish corpus (maximum-likelihood
n-grams discounted by a constant, constant back-offs: any valid ARPA serves to compare
scorers), written as lmplz writes it (tab-separated, every unigram but </s> with a back-off).
The logits favour each sentence's characters, with a confusable second choice per frame, so
that the language model changes some transcripts. Parameter sets: pyctcdecode's defaults,
a stronger LM, a narrow beam, no LM.
"""
import json
import math
import os
import random
from collections import Counter

import numpy as np
from pyctcdecode import build_ctcdecoder
from safetensors.numpy import save_file

OUT = "tests/fixtures/decoder"
CORPUS = """el perro come pan
el gato come pescado
la casa es grande
el perro es grande
la niña come pan con queso
el niño bebe agua
la gata bebe leche
el perro bebe agua
la casa tiene un perro
el gato tiene hambre""".split("\n")
LABELS = ["[PAD]", "|", "a", "b", "c", "d", "e", "g", "h", "i", "l", "m", "n", "o", "p", "q", "r",
          "s", "t", "u", "ñ", "[UNK]"]
SENTENCES = ["el perro come pan", "la gata bebe agua", "el niño tiene hambre",
             "la casa es grande", "el gato come queso", "un perro grande bebe leche"]
CONFUSE = {"a": "e", "e": "a", "o": "u", "u": "o", "p": "b", "b": "p", "c": "g", "g": "c",
           "n": "m", "m": "n", "l": "r", "r": "l", "s": "c", "d": "t", "t": "d", "i": "e",
           "h": "a", "q": "c", "ñ": "n"}


def arpa(path):
    counts = [Counter(), Counter(), Counter()]
    for line in CORPUS:
        w = ["<s>"] + line.split() + ["</s>"]
        for n in range(1, 4):
            for i in range(len(w) - n + 1):
                counts[n - 1][tuple(w[i:i + n])] += 1
    counts[0][("<unk>",)] = 0
    total = sum(c for g, c in counts[0].items() if g != ("<s>",))
    lines = ["", "\\data\\"] + [f"ngram {n + 1}={len(counts[n])}" for n in range(3)] + [""]
    for n in range(3):
        lines.append(f"\\{n + 1}-grams:")
        for g in sorted(counts[n]):
            if n == 0:
                if g == ("<s>",):
                    p = -99.0
                elif g == ("<unk>",):
                    p = -4.0
                else:
                    p = math.log10(counts[0][g] / total * 0.9)
            else:
                p = math.log10(counts[n][g] / counts[n - 1][g[:-1]] * 0.7)
            fields = [f"{p:.6f}", " ".join(g)]
            if n < 2 and g != ("</s>",):
                fields.append(f"{math.log10(0.3 + 0.1 * (len(g[0]) % 3)):.6f}")
            lines.append("\t".join(fields))
        lines.append("")
    lines.append("\\end\\")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def logits_for(sentence, rng):
    ids = {c: i for i, c in enumerate(LABELS)}
    frames = []
    for ch in sentence.replace(" ", "|"):
        for _ in range(rng.choice([1, 2])):
            frames.append((ids[ch], ids.get(CONFUSE.get(ch, ch), ids[ch])))
        frames.append((0, None))
    x = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 1, (len(frames), len(LABELS)))
    for t, (a, b) in enumerate(frames):
        x[t, a] += 6.0
        if b is not None and b != a:
            # A close second: the acoustics alone cannot tell, the language model can.
            x[t, b] += 6.0 - rng.uniform(0.0, 1.5)
    return x.astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    lm_path = f"{OUT}/lm.arpa"
    arpa(lm_path)
    rng = random.Random(11)
    logits = {f"utt{i}": logits_for(s, rng) for i, s in enumerate(SENTENCES)}
    save_file(logits, f"{OUT}/logits.safetensors")
    params = [
        {"name": "defaults"},
        {"name": "strong_lm", "alpha": 1.5, "beta": 0.5},
        {"name": "narrow", "beam_width": 4, "alpha": 0.8, "beta": 1.0, "beam_prune_logp": -5.0},
        {"name": "no_lm", "lm": False},
    ]
    cases = []
    for p in params:
        kw = {k: p[k] for k in ("alpha", "beta") if k in p}
        dec = build_ctcdecoder(LABELS, kenlm_model_path=lm_path if p.get("lm", True) else None,
                               **kw)
        dkw = {k: p[k] for k in ("beam_width", "beam_prune_logp") if k in p}
        texts = {name: dec.decode(x, **dkw) for name, x in logits.items()}
        # The best beam's words and the frames each spans (`text_frames`), as
        # Wav2Vec2ProcessorWithLM's `output_word_offsets` reports them.
        words = {name: [[w, list(f)] for w, f in
                        dec.decode_beams(x, prune_history=True, **dkw)[0][2]]
                 for name, x in logits.items()}
        greedy = {name: "".join(LABELS[i] for i in x.argmax(-1)) for name, x in logits.items()}
        cases.append({**p, "texts": texts, "words": words})
        print(p["name"], texts)
    with open(f"{OUT}/expected.json", "w", encoding="utf-8") as f:
        json.dump({"labels": LABELS, "sentences": SENTENCES, "cases": cases,
                   "greedy_frames": greedy}, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
