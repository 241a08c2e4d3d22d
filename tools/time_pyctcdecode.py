#!/usr/bin/env python3
"""Times pyctcdecode 0.5 + kenlm on tests/fixtures/decoder (best of five rounds), to compare with
`cargo test --release --test decode time_beam_search -- --ignored --nocapture`.

    ../refenv/bin/python tools/time_pyctcdecode.py
"""
import json, time
from safetensors.numpy import load_file
from pyctcdecode import build_ctcdecoder
fx=json.load(open("tests/fixtures/decoder/expected.json"))
xs=load_file("tests/fixtures/decoder/logits.safetensors")
d=build_ctcdecoder(fx["labels"], kenlm_model_path="tests/fixtures/decoder/lm.arpa")
for x in xs.values(): d.decode(x)
best=1e9
for r in range(5):
    t=time.time(); reps=10
    for _ in range(reps):
        for x in xs.values(): d.decode(x)
    best=min(best,(time.time()-t)*1e3/(reps*len(xs)))
print("pyctcdecode: best of 5: %.3f ms per utterance" % best)
