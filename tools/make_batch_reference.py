"""Write tests/fixtures/batching.json: HF's length grouping and feature-extractor padding.

    ../refenv/bin/python tools/make_batch_reference.py

Seeded and re-runnable; tests/data.rs reads the JSON and never needs Python.
  grouping   transformers' get_length_grouped_indices (what group_by_length=True uses) on a few
             length lists, with the torch.randperm permutation it drew, so the Rust grouping
             can be checked on the same permutation (torch's generator is not reproduced)
  padding    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True) on clips
             of different lengths, padded to the longest
"""

import json
import os
import random

import numpy as np
import torch
import transformers
from transformers import Wav2Vec2FeatureExtractor
from transformers.trainer_pt_utils import get_length_grouped_indices

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "batching.json")


def main():
    rng = random.Random(5)
    grouping = []
    for n, batch_size, seed, distinct in [(37, 4, 1, 5), (1000, 8, 2, 10**6), (5, 16, 3, 3),
                                          (403, 16, 4, 40)]:
        # Few distinct lengths in some cases, to exercise ties (stable sort, first argmax).
        lengths = [rng.randrange(distinct) * 160 + 1600 for _ in range(n)]
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g).tolist()
        g = torch.Generator().manual_seed(seed)
        grouped = get_length_grouped_indices(lengths, batch_size, generator=g)
        grouping.append({"lengths": lengths, "batch_size": batch_size, "permutation": perm,
                         "grouped": grouped})

    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                  do_normalize=True, return_attention_mask=True)
    np_rng = np.random.default_rng(5)
    clips = [(np_rng.standard_normal(n) * 0.1 + 0.02).astype(np.float32) for n in (700, 1234, 5)]
    out = fe(clips, sampling_rate=16000, padding=True, return_tensors="np")
    padding = {
        "clips": [c.tolist() for c in clips],
        "input_values": out.input_values.tolist(),
        "attention_mask": out.attention_mask.tolist(),
    }
    with open(OUT, "w") as f:
        json.dump({"transformers": transformers.__version__, "grouping": grouping,
                   "padding": padding}, f)
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
