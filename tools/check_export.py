#!/usr/bin/env python3
"""Checks that a model folder written by `xlsr train` (RUN_DIR/final or a checkpoint) loads in
transformers and gives the same logits as `xlsr transcribe --logits`.

    ../refenv/bin/python tools/check_export.py RUN_DIR/final CLIP.wav [CLIP2.mp3 ...]

Runs `target/release/xlsr transcribe --model DIR --logits /tmp/... CLIPS`, then
Wav2Vec2ForCTC.from_pretrained(DIR) + Wav2Vec2Processor.from_pretrained(DIR) on the same audio
(decoded and resampled by xlsr's own pipeline, read back from a 16 kHz WAV it writes, so both
see identical samples), and prints the max |logit difference| per clip and the transcripts.
"""
import subprocess
import sys
import tempfile

import numpy as np
import soundfile
import torch
from safetensors.numpy import load_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor


def main():
    model_dir, clips = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        logits_path = f"{tmp}/logits.safetensors"
        out = subprocess.run(
            ["target/release/xlsr", "transcribe", "--model", model_dir, "--logits", logits_path, *clips],
            check=True, capture_output=True, text=True,
        ).stdout
        ours = load_file(logits_path)
        texts = dict(line.split("\t", 1) for line in out.splitlines())
    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir, attn_implementation="eager").eval()
    worst = 0.0
    for clip in clips:
        name = clip.split("/")[-1]
        if clip.endswith(".wav"):
            audio, sr = soundfile.read(clip, dtype="float32")
            assert sr == 16000, "give 16 kHz WAV files, or MP3 through xlsr's decoder"
        else:
            raise SystemExit("give 16 kHz WAV files (so both sides read identical samples)")
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            logits = model(inputs.input_values).logits[0].numpy()
        diff = float(np.abs(logits - ours[name]).max())
        worst = max(worst, diff)
        ids = logits.argmax(-1)
        hf_text = processor.decode(ids)
        print(f"{name}: max |logit diff| {diff:.2e}; xlsr: {texts[clip].strip()!r}; transformers: {hf_text!r}")
    print(f"worst max |logit diff|: {worst:.2e}")


if __name__ == "__main__":
    main()
