#!/usr/bin/env python3
"""Side by side on one GPU: xlsr's kernels and training step against PyTorch's.

Needs an NVIDIA GPU with a Vulkan driver (for xlsr), PyTorch and transformers; no network
(the XLSR-53 model is built from its config with random weights). Prints one markdown table
and writes it to --out.

    python3 tools/compare_torch.py --xlsr target/release/xlsr --out compare.md
    python3 tools/compare_torch.py --quick      # tiny shapes: lavapipe + CPU PyTorch, a smoke test
                                                # (tests/compare_torch.rs runs it where torch is)

Every row runs in the same process order: xlsr first (its own process, one per row), then
torch. Kernel rows: xlsr's time is the sum of its GPU timestamps per iteration, torch's comes
from CUDA events around the same number of iterations after warm-up (median of repeats).
Training-step rows: median wall-clock time of a synchronised step after a warm-up step, for
both; peak memory is xlsr's own accounting and torch.cuda.max_memory_allocated.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

# Dense peak TFLOP/s (fp32 SIMT, fp16 tensor cores with fp32 accumulation) by GPU name substring.
KNOWN_PEAKS = [
    ("H200", 66.9, 989.0),
    ("H100 PCIe", 51.2, 756.0),
    ("H100", 66.9, 989.0),
    ("A100", 19.5, 312.0),
    ("L40S", 91.6, 362.0),
    ("4090", 82.6, 165.2),
    ("V100", 15.7, 125.0),
]


def run_xlsr(xlsr, args, env_extra=None, timeout=900):
    """Runs `xlsr bench ... --json`; returns the parsed report (stderr is passed through)."""
    cmd = [xlsr, "bench", "--json"] + args
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=timeout, check=True, env=env)
    return json.loads(out.stdout)


def xlsr_case(xlsr, quick, prefix):
    """Milliseconds of the one kernel case whose name starts with `prefix`."""
    # Without --quick, the shapes torch runs: xlsr shrinks them on a CPU adapter unless told.
    full = None if quick else {"XLSR_BENCH_FULL": "1"}
    rep = run_xlsr(xlsr, (["--quick"] if quick else []) + ["--filter", prefix], full)
    hits = [r for r in rep["results"] if r["name"].startswith(prefix)]
    if not hits:
        raise RuntimeError(f"xlsr bench has no case {prefix!r} on {rep['adapter']}")
    return hits[0]["ms"], rep


def torch_time(torch, dev, fn, iters, repeats=5):
    """Median milliseconds per call of `fn` over `repeats` runs of `iters` calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if dev == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def sync(torch, dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def torch_gemm(torch, dev, s, dtype, iters):
    g = torch.Generator(device="cpu").manual_seed(0)
    a = (torch.rand(s, s, generator=g) - 0.5).to(dev, dtype)
    b = (torch.rand(s, s, generator=g) - 0.5).to(dev, dtype)
    return torch_time(torch, dev, lambda: torch.mm(a, b), iters)


def torch_ctc(torch, dev, iters, quick):
    import torch.nn.functional as F

    b, t, v, l = (4, 100, 40, 20) if quick else (16, 500, 40, 100)
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.rand(t, b, v, generator=g) - 0.5).to(dev).requires_grad_()
    targets = torch.tensor([1 + (i * 7 % (v - 1)) for i in range(b * l)], device=dev).view(b, l)
    il = torch.full((b,), t, dtype=torch.long, device=dev)
    tl = torch.full((b,), l, dtype=torch.long, device=dev)

    def step():
        logits.grad = None
        lp = logits.log_softmax(-1)
        F.ctc_loss(lp, targets, il, tl, blank=0, reduction="mean", zero_infinity=True).backward()

    return torch_time(torch, dev, step, iters)


def torch_attention(torch, dev, b, h, t, d, dtype, iters):
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = [
        (torch.rand(b, h, t, d, generator=g) - 0.5).to(dev, dtype).requires_grad_() for _ in range(3)
    ]
    do = torch.rand(b, h, t, d, generator=g).to(dev, dtype)

    def step():
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, scale=0.125)
        o.backward(do)

    return torch_time(torch, dev, step, iters)


def torch_step(torch, dev, layers, batch, seconds, amp, checkpointing, steps):
    """Median seconds and peak bytes of a Wav2Vec2ForCTC training step at the XLSR-53 shape."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    cfg = Wav2Vec2Config(
        vocab_size=40,
        pad_token_id=39,
        hidden_size=1024,
        num_hidden_layers=layers,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        conv_bias=True,
        do_stable_layer_norm=True,
        mask_time_prob=0.075,
        layerdrop=0.0,
        hidden_dropout=0.1,
        activation_dropout=0.1,
        attention_dropout=0.1,
        feat_proj_dropout=0.0,
        final_dropout=0.1,
        ctc_loss_reduction="mean",
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(cfg).to(dev)
    model.freeze_feature_encoder()
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    scaler = torch.amp.GradScaler(dev, enabled=amp)
    samples = int(seconds * 16000)
    audio = torch.randn(batch, samples, device=dev)
    label = [1 + i % 38 for i in range(int(seconds * 12))]
    labels = torch.tensor([label] * batch, device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.float16, enabled=amp):
            loss = model(audio, labels=labels).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync(torch, dev)

    step()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else float("nan")
    del model, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), peak


def fmt_ms(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xlsr", default="target/release/xlsr", help="the xlsr binary")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (lavapipe + CPU torch)")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--peak-tflops", help="F32,F16 dense peaks of the GPU (else looked up by name)")
    ap.add_argument("--rows", default="gemm,ctc,attention,step", help="comma-separated subset")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per step row")
    ap.add_argument("--step-variants", default="f32,f32-ckpt,fp16-ckpt",
                    help="training-step rows: f32, f32-ckpt, fp16, fp16-ckpt")
    args = ap.parse_args()

    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu_name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    peaks = None
    if args.peak_tflops:
        f32, f16 = (float(x) for x in args.peak_tflops.split(","))
        peaks = (f32, f16)
    else:
        for key, f32, f16 in KNOWN_PEAKS:
            if key in gpu_name:
                peaks = (f32, f16)
                break
    rows = set(args.rows.split(","))
    quick = args.quick
    table = []  # (case, xlsr ms, torch ms, xlsr % peak, torch % peak, note)
    adapter = "?"

    def row(case, xlsr_fn, torch_fn, flops=None, peak=None, note=""):
        nonlocal adapter
        xm = tm = None
        errs = []
        try:
            xm, rep = xlsr_fn()
            adapter = f"{rep['adapter']} ({rep['backend']}, {rep['driver']})"
        except Exception as e:  # one broken row must not hide the others
            errs.append(f"xlsr: {e}")
        try:
            tm = torch_fn()
        except Exception as e:
            errs.append(f"torch: {e}")
        pct = lambda ms: (f"{100 * flops / (ms * 1e-3) / (peak * 1e12):.0f}%"
                          if ms and flops and peak else "-")
        ratio = f"{xm / tm:.2f}" if xm and tm else "-"
        table.append((case, fmt_ms(xm), fmt_ms(tm), ratio, pct(xm), pct(tm), "; ".join(errs) or note))
        print(f"{case}: xlsr {fmt_ms(xm)} ms, torch {fmt_ms(tm)} ms {'; '.join(errs)}", file=sys.stderr, flush=True)

    it = 3 if quick else 10
    if "gemm" in rows:
        s = 256 if quick else 4096
        fl = 2.0 * s**3
        row(f"GEMM f32 {s}^3 (torch: TF32 off)",
            lambda: xlsr_case(args.xlsr, quick, f"gemm f32 {s}x"),
            lambda: torch_gemm(torch, dev, s, torch.float32, it),
            fl, peaks and peaks[0])
        row(f"GEMM f16 inputs, f32 accumulation {s}^3",
            lambda: xlsr_case(args.xlsr, quick, f"gemm f16 inputs {s}x"),
            lambda: torch_gemm(torch, dev, s, torch.float16 if dev == "cuda" else torch.bfloat16, it),
            fl, peaks and peaks[1])
    if "ctc" in rows:
        row("CTC loss + gradient " + ("B4 T100 L20 V40" if quick else "B16 T500 L100 V40"),
            lambda: xlsr_case(args.xlsr, quick, "ctc loss+grad B"),
            lambda: torch_ctc(torch, dev, it, quick))
    if "attention" in rows:
        b, t = (2, 50) if quick else (8, 250)
        fl = 12.0 * b * 16 * t * t * 64
        row(f"attention fwd+bwd B{b} H16 T{t} D64 dropout 0.1, f32 (torch: SDPA)",
            lambda: xlsr_case(args.xlsr, quick, "attention fused fwd+bwd"),
            lambda: torch_attention(torch, dev, b, 16, t, 64, torch.float32, it),
            fl, peaks and peaks[0])
        if dev == "cuda":
            row(f"attention fwd+bwd B{b} H16 T{t} D64, torch SDPA fp16 (xlsr: f32)",
                lambda: xlsr_case(args.xlsr, quick, "attention fused fwd+bwd"),
                lambda: torch_attention(torch, dev, b, 16, t, 64, torch.float16, it),
                fl, peaks and peaks[1])
    step_rows = []
    if "step" in rows:
        layers, batch, secs = (1, 1, 0.5) if quick else (24, 8, 5.0)
        variants = args.step_variants.split(",")
        if quick:
            variants = variants[:1]
        for variant in variants:
            fp16 = variant.startswith("fp16")
            ckpt = variant.endswith("ckpt")
            steps = 1 if quick else args.steps
            flags = ["--batch", str(batch), "--seconds", str(secs), "--layers", str(layers),
                     "--steps", str(steps)]
            flags += ["--fp16"] if fp16 else []
            flags += ["--checkpointing"] if ckpt else []
            xs = ts = xp = tp = None
            errs = []
            try:
                rep = run_xlsr(args.xlsr, flags)
                adapter = f"{rep['adapter']} ({rep['backend']}, {rep['driver']})"
                ms = rep["model_step"]
                xs, xp = ms["step_s"], ms["peak_device_bytes"]
            except Exception as e:
                errs.append(f"xlsr: {e}")
            try:
                amp = fp16 and dev == "cuda"
                ts, tp = torch_step(torch, dev, layers, batch, secs, amp, ckpt, steps)
            except Exception as e:
                errs.append(f"torch: {e}")
            name = (f"XLSR-53 step {batch}x{secs:g} s, {layers} layers, "
                    f"{'fp16 (torch AMP)' if fp16 else 'f32 (torch eager fp32)'}{' + checkpointing' if ckpt else ''}")
            gb = lambda b: f"{b / 1e9:.2f}" if b is not None and not math.isnan(b) else "-"
            step_rows.append((name, fmt_ms(xs and xs * 1e3), fmt_ms(ts and ts * 1e3),
                              f"{xs / ts:.2f}" if xs and ts else "-", gb(xp), gb(tp), "; ".join(errs)))
            print(f"{name}: xlsr {xs} s, torch {ts} s {'; '.join(errs)}", file=sys.stderr, flush=True)

    lines = [
        f"GPU: {gpu_name}; xlsr adapter: {adapter}; torch {torch.__version__}"
        + (f", CUDA {torch.version.cuda}" if dev == "cuda" else "")
        + f"; {time.strftime('%Y-%m-%d')}" + ("; --quick" if quick else ""),
        "",
        "| case | xlsr ms | torch ms | xlsr / torch | xlsr % of peak | torch % of peak | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    if step_rows:
        lines += [
            "",
            "| training step | xlsr ms | torch ms | xlsr / torch | xlsr peak GB | torch peak GB | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in step_rows]
    if peaks:
        lines += ["", f"Peaks used: {peaks[0]} TFLOP/s f32, {peaks[1]} TFLOP/s f16 tensor cores (dense)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    failed = [r for r in table + step_rows if r[6].startswith(("xlsr:", "torch:"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
