#!/opt/pyref/bin/python
"""PyTorch (CPU) side of bench/timm_bench.ts: UNI's architecture built by timm itself
(`timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
num_classes=0, dynamic_img_size=True)`, random weights, 303 M parameters), forward only under
no_grad, float32, features [B, 1024].

    /opt/pyref/bin/python bench/timm_torch_bench.py [--batch 4] [--n 3] [--threads 0]

Prints images/s per timed iteration and their median. Pin both benches to the same cores
(e.g. `taskset -c 0-1`) for a like-for-like comparison.
"""
import argparse
import statistics
import time

import timm
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
                              init_values=1e-5, num_classes=0, dynamic_img_size=True).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(a.batch, 3, 224, 224)
    rates = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(a.n):
            t0 = time.perf_counter()
            model(x)
            s = time.perf_counter() - t0
            rates.append(a.batch / s)
            print(f"  torch ViT-L/16: {a.batch} images in {s:.2f} s = {a.batch / s:.2f} images/s")
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{params / 1e6:.1f} M parameters, batch {a.batch}: median "
          f"{statistics.median(rates):.2f} images/s")


if __name__ == "__main__":
    main()
