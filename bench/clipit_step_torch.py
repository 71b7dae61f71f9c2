"""PyTorch side of bench/clipit_step_bench.ts: one CLIP-IT stage-2 training step with the real
libraries on the CPU (open_clip ViT-B-16, random weights; PEFT LoRA r=16, alpha=8 on both
towers: nn.MultiheadAttention (in_proj + out_proj), the MLP Linears, the token Embedding and the
patch Conv2d; the CLIP-IT heads; CE + lambda * (1 - cos); clip_grad_norm_ 0.5; Adam). PEFT
0.21 applies the out_proj delta twice (huggingface/peft PR #3774): one extra rank-16 product
per attention layer, immaterial to the time.

    /opt/pyref/bin/python bench/clipit_step_torch.py [--arch ViT-B-16] [--batch 8] [--steps 3]
        [--threads N] [--json FILE]

Prints seconds and images/s per timed step (after one warm-up) and their median.
"""
import argparse
import json
import statistics
import time

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clip = open_clip.create_model(a.arch, pretrained=None)
    cfg = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.0,
                     target_modules=r"(.*\.)?(conv1|token_embedding|attn|c_fc|c_proj)$")
    model = get_peft_model(clip, cfg).base_model.model
    d = model.text_projection.shape[1]
    C = 9
    fc, h_d, g = nn.Linear(d, C), nn.Linear(d, d), nn.Linear(2 * C, C)
    h_t = nn.Sequential(nn.Linear(d, d), nn.LeakyReLU(0.1), nn.Linear(d, C))
    params = [p for p in model.parameters() if p.requires_grad]
    for m in (fc, h_d, h_t, g):
        params += list(m.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    B, S, ctx = a.batch, model.visual.image_size[0], model.context_length
    images = torch.randn(B, 3, S, S)
    labels = torch.randint(0, C, (B,))
    ids = torch.randint(1, 49000, (B, ctx))
    ids[:, 0], ids[:, -1] = 49406, 49407
    trainable = sum(p.numel() for p in params)
    print(f"{a.arch} CLIP-IT step, batch {B}, LoRA r16 on both towers (PEFT), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {trainable / 1e6:.2f} M trainable")
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        t = F.normalize(model.encode_text(ids), dim=-1)
        v = model.encode_image(images)
        t_hat = h_d(v)
        out = g(torch.cat([fc(v), h_t(t_hat)], dim=1))
        loss = F.cross_entropy(out, labels) + (1 - F.cosine_similarity(t_hat, t, dim=-1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        s = time.perf_counter() - t0
        if i > 0:
            times.append(s)
        print(f"  {'warm-up' if i == 0 else f'step {i}'}: {s:.2f} s = {B / s:.3f} images/s "
              f"(loss {loss.item():.4f})")
    med = statistics.median(times)
    print(f"median: {med:.2f} s per step = {B / med:.3f} images/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"engine": f"torch {torch.__version__} + peft", "arch": a.arch, "batch": B,
                       "threads": torch.get_num_threads(), "seconds": times,
                       "images_per_s": B / med}, f)


if __name__ == "__main__":
    main()
