#!/usr/bin/python3
"""What the attention capture adds to the example FT-Transformer's pass.

    /usr/bin/python3 bench/capture_cost.py [--reps R] [--batches 1,8,64,256]

The model of examples/ft_transformer.py (30 numerical features + CLS,
n = 31 tokens, 3 layers, 4 heads, d = 32; untrained weights: the cost
does not depend on them), in eval mode, one torch thread, on the CPU.
Per batch size B, CPU time (process, median of R timed loops) of:

  forward        the model's own forward under no_grad (what a live model
                 pays without explanations)
  capture full   AttentionCapture.run: forward with the probabilities
                 kept, backward of the target scores to them, every head
                 copied to the host (attn, grad as numpy)
  capture fused  the same, fused on the model's device (fused=True): only
                 the head means and statistics are copied
  capture fused f16  ... rounded to half on the device (fused="f16")

and the capture's added time (capture - forward), per batch and per
trade. Prints a markdown table (bench/RESULTS.md). No GPU on this
machine: on a GPU the fusing runs on the device, and the copy to the host
is what the fused form saves.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE, "client", "python"))
sys.path.insert(0, os.path.join(SOURCE, "examples"))

import torch                                     # noqa: E402

from xplain.torch_capture import AttentionCapture  # noqa: E402
import ft_transformer                            # noqa: E402


def cpu_per_call(f, min_seconds=0.3):
    f()                                          # warm-up
    calls, t0 = 0, time.process_time()
    while True:
        f()
        calls += 1
        dt = time.process_time() - t0
        if dt >= min_seconds and calls >= 3:
            return dt / calls


def main(argv):
    reps, batches = 5, [1, 8, 64, 256]
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--reps":
            reps = int(args.pop(0))
        elif a == "--batches":
            batches = [int(x) for x in args.pop(0).split(",")]
        else:
            print(__doc__)
            return 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ft_transformer.FTTransformer(30).eval()
    cap = AttentionCapture(model)
    cap.install()
    rows = []
    for B in batches:
        x = torch.randn(B, 30)

        def fwd():
            with torch.no_grad():
                model(x)
        runs = {"forward": fwd,
                "capture full": lambda: cap.run(x),
                "capture fused": lambda: cap.run(x, fused=True),
                "capture fused f16": lambda: cap.run(x, fused="f16")}
        med = {}
        for name, f in runs.items():
            ts = sorted(cpu_per_call(f) for _ in range(reps))
            med[name] = ts[len(ts) // 2]
            print("B=%d %s: %.1f us" % (B, name, med[name] * 1e6), file=sys.stderr, flush=True)
        rows.append((B, med))
    print("| B | forward us | capture full us (added) | capture fused us (added) | capture fused f16 us (added) "
          "| added per trade: full / fused / fused f16 us |")
    print("|---|---|---|---|---|---|")
    for B, m in rows:
        f = m["forward"]
        add = [m[k] - f for k in ("capture full", "capture fused", "capture fused f16")]
        print("| %d | %.0f | %.0f (+%.0f) | %.0f (+%.0f) | %.0f (+%.0f) | %.1f / %.1f / %.1f |" % (
            B, f * 1e6, m["capture full"] * 1e6, add[0] * 1e6, m["capture fused"] * 1e6, add[1] * 1e6,
            m["capture fused f16"] * 1e6, add[2] * 1e6, add[0] / B * 1e6, add[1] / B * 1e6, add[2] / B * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
