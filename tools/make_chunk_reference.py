#!/usr/bin/env python3
"""Writes tests/fixtures/chunked.json: what transformers' ASR pipeline gives for a clip cut
into windows (chunk_length_s, stride_length_s), to check `xlsr transcribe --chunk-seconds`.

    ../refenv/bin/python tools/make_chunk_reference.py

Deterministic (fixed model and clip, no randomness). The model is tests/fixtures/w2v2_large
(conv strides 5, 2, 2: 20 samples per frame) and the clip its clip.wav (8000 samples, 0.5 s);
windows of 0.1 s with 0.02 s of context on each side, and 0.2 s with the default context
(chunk / 6), so the clip runs in several windows. For each setting: the pipeline's text and
its frame ids (the argmax of the joined logits after the strides are cut).
"""
import json
import os
import shutil
import tempfile

import numpy as np
import soundfile
import torch
from transformers import (Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          pipeline)

FIX = "tests/fixtures"


def main():
    model_dir = f"{FIX}/w2v2_large"
    with tempfile.TemporaryDirectory() as d:
        for f in ["config.json", "model.safetensors", "vocab.json"]:
            shutil.copy(f"{model_dir}/{f}", d)
        tok = Wav2Vec2CTCTokenizer(f"{d}/vocab.json", unk_token="[UNK]", pad_token="[PAD]",
                                   word_delimiter_token="|")
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                      do_normalize=True, return_attention_mask=True)
        model = Wav2Vec2ForCTC.from_pretrained(d).eval()
        asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tok,
                       feature_extractor=fe, device="cpu")
        pcm, sr = soundfile.read(f"{model_dir}/clip.wav", dtype="int16")
        assert sr == 16000
        audio = pcm.astype(np.float32) / 32768.0
        cases = []
        for chunk, stride in [(0.1, 0.02), (0.2, None)]:
            kwargs = {"chunk_length_s": chunk}
            if stride is not None:
                kwargs["stride_length_s"] = stride
            text = asr(audio.copy(), **kwargs)["text"]
            # The frame ids the text was decoded from: the same pipeline, tokens kept.
            ids = []
            for item in asr.preprocess(audio.copy(), **kwargs):
                out = asr._forward(item)
                total_n, left, right = out["stride"]
                ids.extend(out["tokens"][0, left:total_n - right].tolist())
            assert tok.decode(ids) == text
            cases.append({"chunk_seconds": chunk, "stride_seconds": stride, "text": text,
                          "ids": ids})
        whole = asr(audio.copy())["text"]
    out = {"clip": "w2v2_large/clip.wav", "model": "w2v2_large", "whole": whole, "cases": cases}
    with open(f"{FIX}/chunked.json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", f"{FIX}/chunked.json", [(c["chunk_seconds"], len(c["ids"]), c["text"]) for c in cases], whole)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
