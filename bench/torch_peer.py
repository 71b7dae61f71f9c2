#!/usr/bin/env python3
"""PyTorch peer for the kernel benchmarks: the same work as bench/gpu_bench.ts, timed the same way
(mean wall time of `iters` runs after warm-up, synchronised), on CUDA when available else CPU.

Usage: python3 bench/torch_peer.py [--device cuda|cpu] [--quick] [--out FILE.json]
fp32 throughout; TF32 is switched OFF so matmuls are true fp32 like the WGSL kernels (a second
matmul row reports TF32 for reference).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def timeit(fn, sync, iters=10, warmup=3):
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    sizes = [1024, 2048, 4096]
    if dev.type == "cpu":
        sizes = [1024]
    for n in sizes:
        x, y = rnd(n, n), rnd(n, n)
        t = timeit(lambda: x @ y, sync)
        rows.append({"op": "matmul fp32", "size": f"{n}^3", "ms": t * 1e3, "gflops": 2 * n**3 / t / 1e9})
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        x, y = rnd(4096, 4096), rnd(4096, 4096)
        t = timeit(lambda: x @ y, sync)
        rows.append({"op": "matmul tf32 (reference)", "size": "4096^3", "ms": t * 1e3, "gflops": 2 * 4096**3 / t / 1e9})
        torch.backends.cuda.matmul.allow_tf32 = False

    for B in [8, 64] if dev.type == "cuda" else [8]:
        H, T, D = 12, 197, 64
        q, k, v = rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, D)
        flops = 4 * B * H * T * T * D
        size = f"B{B} H{H} T{T} D{D}"
        if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0
            t = timeit(lambda: F.scaled_dot_product_attention(q, k, v), sync)
            rows.append({"op": "attention sdpa", "size": size, "ms": t * 1e3, "gflops": flops / t / 1e9})
        t = timeit(lambda: torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1) @ v, sync)
        rows.append({"op": "attention unfused", "size": size, "ms": t * 1e3, "gflops": flops / t / 1e9})

    s = rnd(4096, 1024)
    t = timeit(lambda: torch.softmax(s, -1), sync)
    rows.append({"op": "softmax", "size": "4096x1024", "ms": t * 1e3, "gbs": 2 * s.numel() * 4 / t / 1e9})
    ln = rnd(8 * 197, 768)
    w, b = rnd(768), rnd(768)
    t = timeit(lambda: F.layer_norm(ln, (768,), w, b), sync)
    rows.append({"op": "layerNorm", "size": "1576x768", "ms": t * 1e3, "gbs": 2 * ln.numel() * 4 / t / 1e9})

    N, M, d = (8192, 20000, 512) if dev.type == "cuda" else (1024, 20000, 512)
    qq = F.normalize(rnd(N, d), dim=-1)
    kk = F.normalize(rnd(M, d), dim=-1)
    t = timeit(lambda: torch.topk(qq @ kk.T, 10, dim=-1), sync, iters=5)
    rows.append({"op": "cosine top-10 (matmul+topk)", "size": f"{N}x{M}x{d}", "ms": t * 1e3, "gflops": 2 * N * M * d / t / 1e9})

    try:
        import torchvision

        if dev.type != "cuda":
            raise RuntimeError("skipped on the CPU (see bench/clip_bench.ts for the CPU comparison)")
        vit = torchvision.models.vit_b_16().to(dev).eval()
        bs = 64 if dev.type == "cuda" else 4
        img = rnd(bs, 3, 224, 224)
        with torch.no_grad():
            t = timeit(lambda: vit(img), sync, iters=5, warmup=2)
        rows.append({"op": "ViT-B/16 forward (torchvision)", "size": f"batch {bs}", "ms": t * 1e3, "images_per_s": bs / t})
        # Training step: forward + backward into every weight + AdamW, batch 32 (what
        # bench/gpu_bench.ts times for this engine's ViT-B/16 image tower).
        vit.train()
        opt = torch.optim.AdamW(vit.parameters(), lr=1e-5)
        tb = 32
        timg = rnd(tb, 3, 224, 224)

        def step():
            vit(timg).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = timeit(step, sync, iters=5, warmup=2)
        rows.append({"op": "ViT-B/16 train step fwd+bwd+AdamW (torchvision)", "size": f"batch {tb}", "ms": t * 1e3, "images_per_s": tb / t})
    except Exception as e:  # torchvision missing: say so
        rows.append({"op": "ViT-B/16 forward", "error": str(e)})

    out = {"peer": f"PyTorch {torch.__version__}", "device": name, "rows": rows}
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
