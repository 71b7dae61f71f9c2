#!/usr/bin/python3
"""PyTorch (CPU) side of bench/clip_bench.ts: the same OpenCLIP ViT-B/16 image tower (86 M
parameters, 224 x 224, random weights; the plain-torch reference model of
tests/fixtures/make_clip_fixture.py), forward only under no_grad, L2-normalised, float32.

    /usr/bin/python3 bench/clip_torch_bench.py [--batch 4] [--n 3] [--threads 0]

Prints images/s per timed iteration and their median.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "fixtures"))
from make_clip_fixture import QuickGELU, VisionTransformer  # noqa: E402

VIT_B_16 = {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "head_width": 64,
            "mlp_ratio": 4.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = VisionTransformer(VIT_B_16, 512, torch.nn.GELU).eval()
    assert QuickGELU  # same module as the fixture; GELU as in OpenCLIP's ViT-B-16
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(a.batch, 3, 224, 224)
    rates = []
    with torch.no_grad():
        F.normalize(model(x), dim=-1)  # warm-up
        for _ in range(a.n):
            t0 = time.perf_counter()
            F.normalize(model(x), dim=-1)
            s = time.perf_counter() - t0
            rates.append(a.batch / s)
            print(f"  torch ViT-B-16: {a.batch} images in {s:.2f} s = {a.batch / s:.2f} images/s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {params / 1e6:.1f} M "
          f"parameters, batch {a.batch}: median {statistics.median(rates):.2f} images/s")


if __name__ == "__main__":
    main()
