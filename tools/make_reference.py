#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures the Rust tests compare against.

Run from the repository root with torch installed (CPU is fine):
    python3 -m venv ../refenv && ../refenv/bin/pip install torch transformers soundfile jiwer
    ../refenv/bin/python tools/make_reference.py
Seeded and deterministic: re-running rewrites identical files.

tests/fixtures/ctc.safetensors: for each case, logits [B, T, V], padded targets, lengths and the
blank id, and torch.nn.functional.ctc_loss's loss and the gradient w.r.t. the logits (through
log_softmax) for each reduction / zero_infinity variant.
"""
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
torch.use_deterministic_algorithms(True)


def ctc_case(tensors, name, logits, targets, input_lengths, blank, variants):
    b = len(targets)
    l_max = max([len(t) for t in targets] + [0])
    padded = torch.zeros(b, l_max, dtype=torch.int64)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    tl = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    il = torch.tensor(input_lengths, dtype=torch.int64)
    tensors[f"{name}.logits"] = logits.float().contiguous()
    tensors[f"{name}.targets"] = padded
    tensors[f"{name}.target_lengths"] = tl
    tensors[f"{name}.input_lengths"] = il
    tensors[f"{name}.blank"] = torch.tensor([blank], dtype=torch.int64)
    for reduction, zero_inf in variants:
        x = logits.clone().double().requires_grad_(True)
        lp = x.log_softmax(-1).transpose(0, 1)  # [T, B, V], as ctc_loss expects
        loss = torch.nn.functional.ctc_loss(
            lp, padded, il, tl, blank=blank, reduction=reduction, zero_infinity=zero_inf
        )
        key = f"{name}.{reduction}.{'zi' if zero_inf else 'nozi'}"
        tensors[f"{key}.loss"] = loss.detach().float().reshape(-1)
        if torch.isfinite(loss).all():
            loss.sum().backward()
            tensors[f"{key}.grad"] = x.grad.float()


# --- wav2vec2 ---------------------------------------------------------------------------------

W2V2_TINY = dict(
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    num_conv_pos_embedding_groups=4,
    vocab_size=12,
    pad_token_id=11,
    layer_norm_eps=1e-5,
    # Dropout, LayerDrop and SpecAugment are off in eval mode; mask_time_prob > 0 only so the
    # checkpoint carries `masked_spec_embed` as real ones do.
    mask_time_prob=0.05,
    ctc_loss_reduction="mean",
    ctc_zero_infinity=True,
)
W2V2_VARIANTS = {
    # wav2vec2-base layout: GroupNorm in the first conv only, no conv bias, post-LN encoder,
    # even positional kernel (HF trims one frame), weight norm saved as weight_g / weight_v.
    "w2v2_base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
                      num_conv_pos_embeddings=16, hidden_act="gelu", old_weight_norm=True),
    # XLSR / large layout: LayerNorm in every conv, conv bias, pre-LN "stable" encoder, odd
    # positional kernel, tanh GELU, weight norm saved as parametrizations.weight.original0/1.
    "w2v2_large": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                       num_conv_pos_embeddings=7, hidden_act="gelu_new", old_weight_norm=False),
}
W2V2_LENGTHS = [1600, 1213, 877]
W2V2_LABELS = [[1, 2, 2, 3, 4, 10, 5, 6, 7], [8, 9, 1, 1, 2, 3], [4, 5, 6, 4]]
W2V2_VOCAB = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "|", "[UNK]", "[PAD]"]


def canonical(name):
    """Our checkpoint names: weight norm as weight_g / weight_v (the released XLSR-53 names)."""
    return name.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v")


def normalise(x):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)


def w2v2_case(name, seed):
    import json
    import os
    import numpy as np
    import soundfile
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

    torch.manual_seed(seed)
    v = dict(W2V2_VARIANTS[name])
    old_wn = v.pop("old_weight_norm")
    config = Wav2Vec2Config(**W2V2_TINY, **v)
    config._attn_implementation = "eager"
    model = Wav2Vec2ForCTC(config).eval()
    # Random affine norms and biases, so a swapped weight/bias or a missed bias shows.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n or n.endswith("bias"):
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))

    out_dir = f"tests/fixtures/{name}"
    os.makedirs(out_dir, exist_ok=True)
    cfg = config.to_dict()
    cfg["architectures"] = ["Wav2Vec2ForCTC"]
    with open(f"{out_dir}/config.json", "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(f"{out_dir}/vocab.json", "w") as f:
        json.dump({t: i for i, t in enumerate(W2V2_VOCAB)}, f, indent=2)
    sd = {}
    for n, p in model.state_dict().items():
        sd[canonical(n) if old_wn else n] = p.detach().contiguous()
    save_file(sd, f"{out_dir}/model.safetensors", metadata={"format": "pt"})

    b, t_max = len(W2V2_LENGTHS), max(W2V2_LENGTHS)
    audio = torch.zeros(b, t_max)
    mask = torch.zeros(b, t_max, dtype=torch.int64)
    for i, n in enumerate(W2V2_LENGTHS):
        audio[i, :n] = normalise(torch.randn(n))
        mask[i, :n] = 1
    labels = torch.full((b, max(map(len, W2V2_LABELS))), -100, dtype=torch.int64)
    for i, l in enumerate(W2V2_LABELS):
        labels[i, : len(l)] = torch.tensor(l)

    acts = {}

    def keep(key):
        def hook(_module, _inputs, output):
            acts[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    w = model.wav2vec2
    w.feature_extractor.register_forward_hook(keep("conv_features"))
    w.feature_projection.register_forward_hook(keep("projected"))
    w.encoder.pos_conv_embed.register_forward_hook(keep("pos_embed"))
    for i, layer in enumerate(w.encoder.layers):
        layer.register_forward_hook(keep(f"layer{i}"))
    out = model(audio, attention_mask=mask, labels=labels)
    out.loss.backward()

    t = {"audio": audio, "attention_mask": mask, "labels": labels,
         "logits": out.logits.detach(), "loss": out.loss.detach().reshape(1)}
    for k, a in acts.items():
        t[k] = a
    for n, p in model.named_parameters():
        if p.grad is not None:
            t[f"grad.{canonical(n)}"] = p.grad.detach().clone()

    # SpecAugment's substitution: a fixed time mask replaces frames by masked_spec_embed.
    model.zero_grad()
    t_frames = out.logits.shape[1]
    mask_time = torch.zeros(b, t_frames, dtype=torch.bool)
    mask_time[0, 3:13] = True
    mask_time[1, 20:30] = True
    mask_time[2, 0:4] = True
    outm = model(audio, attention_mask=mask, labels=labels, mask_time_indices=mask_time)
    outm.loss.backward()
    t["mask_time"] = mask_time.float()
    t["masked.logits"] = outm.logits.detach()
    t["masked.loss"] = outm.loss.detach().reshape(1)
    t["masked.grad.wav2vec2.masked_spec_embed"] = w.masked_spec_embed.grad.detach().clone()

    # One utterance alone, written as 16-bit WAV for `xlsr transcribe`; the logits are HF's on
    # the clip as Wav2Vec2FeatureExtractor normalises it.
    clip = (torch.sin(torch.arange(8000) * 0.05) * 0.3 + 0.05 * torch.randn(8000)).numpy()
    pcm = np.round(np.clip(clip, -1, 1) * 32767).astype(np.int16)
    soundfile.write(f"{out_dir}/clip.wav", pcm, 16000, subtype="PCM_16")
    x = torch.from_numpy(pcm.astype(np.float32) / 32768.0)
    with torch.no_grad():
        t["clip_logits"] = model(normalise(x)[None]).logits[0]
    # transformers' own transcript of those logits (greedy ids, processor.decode), so the
    # test checks our CTC decoding and vocabulary handling end to end, not only the logits.
    tok = Wav2Vec2CTCTokenizer(f"{out_dir}/vocab.json", unk_token="[UNK]", pad_token="[PAD]", word_delimiter_token="|")
    with open(f"{out_dir}/clip.hf.txt", "w") as f:
        f.write(tok.decode(t["clip_logits"].argmax(-1).tolist()) + "\n")
    save_file({k: v.contiguous() for k, v in t.items()}, f"tests/fixtures/{name}.safetensors")


def main():
    t = {}
    all_variants = [("mean", True), ("sum", True), ("none", True), ("mean", False), ("sum", False)]
    ctc_case(t, "repeats", torch.randn(3, 12, 6) * 3, [[1, 1, 2], [3, 4], [2, 2, 2, 5]], [12, 9, 10], 0, all_variants)
    ctc_case(t, "empty", torch.randn(2, 7, 5) * 3, [[], [1, 2]], [7, 7], 0, all_variants)
    ctc_case(t, "barely", torch.randn(2, 6, 4) * 3, [[1, 1, 2, 2], [1, 2, 1]], [6, 3], 3, all_variants)
    ctc_case(t, "impossible", torch.randn(2, 6, 5) * 3, [[1, 2], [3, 3, 1]], [6, 3], 0, all_variants)
    ctc_case(t, "vocab100", torch.randn(2, 40, 100) * 2, [list(range(1, 30)), [99, 98, 98, 7]], [40, 33], 0, all_variants)
    long_targets = [[1 + (i * 7) % 39 for i in range(100)], [1 + (i * 3) % 39 for i in range(60)]]
    ctc_case(t, "long", torch.randn(2, 1500, 40), long_targets, [1500, 1200], 0, [("mean", True), ("sum", False)])
    save_file(t, "tests/fixtures/ctc.safetensors")
    w2v2_case("w2v2_base", 1)
    w2v2_case("w2v2_large", 2)


if __name__ == "__main__":
    main()
