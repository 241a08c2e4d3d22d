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


if __name__ == "__main__":
    main()
