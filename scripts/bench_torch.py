#!/usr/bin/python3
"""`make bench-peer`: softmoe against PyTorch on the same models, one invocation.

Rows: ViT-S/16, Soft MoE S/16 32x4 and Soft MoE S/16 128x1 (the last six MLP
blocks Soft MoE, as configs/vit_s16_softmoe.ini), batch 8, 224 px, 1000
classes, softmax cross-entropy, 2 threads, a full training step (forward,
backward, global-norm clipping, Adam). Columns: softmoe fp32, softmoe bf16
(train.precision=bf16), PyTorch fp32, PyTorch bf16 autocast
(torch.autocast("cpu", dtype=torch.bfloat16): bf16 matmuls through oneDNN,
fp32 weights and optimiser).

Each measurement is its own process (so each peak RSS is its own), run one
after another (the 128x1 rows need ~15 GB each). The four columns of a row
are interleaved over --reps rounds and each keeps its best step time, so a
burst of load from another user of the machine hits every column alike.
Ratios are taken within this one invocation only.

    /usr/bin/python3 scripts/bench_torch.py [--bin build/softmoe] [--reps 3]
        [--steps 4] [--models vit_s16,moe32x4,moe128x1] [--json out.json]

The PyTorch model is written here from DESIGN.md with torch.nn modules
(nn.Linear, nn.LayerNorm, nn.Conv2d); the Soft MoE layer and the stacked
experts use torch.matmul / torch.baddbmm so autocast covers every product.
"""
import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time

MODELS = {
    "vit_s16": ("ViT-S/16", 0, 0, ["configs/vit_s16.ini"]),
    "moe32x4": ("Soft MoE S/16 32x4", 32, 4,
                ["configs/vit_s16_softmoe.ini", "moe.experts=32", "moe.slots=4"]),
    "moe128x1": ("Soft MoE S/16 128x1", 128, 1,
                 ["configs/vit_s16_softmoe.ini", "moe.experts=128", "moe.slots=1"]),
}
COMMON = ["train.batch_size=8", "model.classes=1000", "model.loss=softmax_xent",
          "data.source=synthetic"]
D, L, H, M, PATCH, IMG, K, BATCH = 384, 12, 6, 1536, 16, 224, 1000, 8


# ---------------------------------------------------------------- PyTorch model

def torch_model(experts, slots):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

        def forward(self, x):
            b, n, _ = x.shape
            sh = lambda t: t.view(b, n, H, D // H).transpose(1, 2)
            q, k, v = sh(self.q(x)), sh(self.k(x)), sh(self.v(x))
            a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D // H), dim=-1)
            return self.o(torch.matmul(a, v).transpose(1, 2).reshape(b, n, D))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(D, M), nn.Linear(M, D)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))

    class SoftMoe(nn.Module):
        def __init__(self):
            super().__init__()
            E, P = experts, slots
            self.E, self.P = E, P
            self.mu = nn.Parameter(torch.randn(D, E * P) / math.sqrt(D))
            self.scale = nn.Parameter(torch.ones(()))
            lim1, lim2 = math.sqrt(6 / (D + M)), math.sqrt(6 / (M + D))
            self.w1 = nn.Parameter(torch.empty(E, D, M).uniform_(-lim1, lim1))
            self.b1 = nn.Parameter(torch.zeros(E, 1, M))
            self.w2 = nn.Parameter(torch.empty(E, M, D).uniform_(-lim2, lim2))
            self.b2 = nn.Parameter(torch.zeros(E, 1, D))

        def forward(self, x):  # x (B,N,D)
            b, n, _ = x.shape
            xn = x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)
            mun = self.mu * torch.rsqrt((self.mu * self.mu).sum(0, keepdim=True) + 1e-6)
            logits = self.scale * torch.matmul(xn, mun)                 # (B,N,S)
            dw = torch.softmax(logits, dim=1)                           # over tokens
            cw = torch.softmax(logits, dim=2)                           # over slots
            xs = torch.matmul(dw.transpose(1, 2), x)                    # (B,S,D)
            # expert-major (E, B*P, D): each expert one batched product
            xe = xs.view(b, self.E, self.P, D).transpose(0, 1).reshape(self.E, b * self.P, D)
            h = F.gelu(torch.baddbmm(self.b1, xe, self.w1), approximate="tanh")
            ye = torch.baddbmm(self.b2, h, self.w2)
            ys = ye.view(self.E, b, self.P, D).transpose(0, 1).reshape(b, self.E * self.P, D)
            return torch.matmul(cw, ys)                                 # (B,N,D)

    class Block(nn.Module):
        def __init__(self, moe):
            super().__init__()
            self.ln0, self.ln1 = nn.LayerNorm(D, eps=1e-6), nn.LayerNorm(D, eps=1e-6)
            self.attn = Attention()
            self.mlp = SoftMoe() if moe else Mlp()

        def forward(self, x):
            x = x + self.attn(self.ln0(x))
            return x + self.mlp(self.ln1(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            n = (IMG // PATCH) ** 2
            self.embed = nn.Conv2d(3, D, PATCH, stride=PATCH)
            self.pos = nn.Parameter(0.02 * torch.randn(1, n, D))
            self.blocks = nn.ModuleList(Block(experts > 0 and l >= L - L // 2) for l in range(L))
            self.norm = nn.LayerNorm(D, eps=1e-6)
            self.head = nn.Linear(D, K)

        def forward(self, img):
            x = self.embed(img).flatten(2).transpose(1, 2) + self.pos
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.norm(x).mean(1))

    return ViT()


def torch_child(model, autocast, steps):
    """One PyTorch measurement in this process; prints a JSON line."""
    import torch
    torch.set_num_threads(2)
    torch.manual_seed(0)
    _, experts, slots, _ = MODELS[model]
    net = torch_model(experts, slots)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    img = torch.randn(BATCH, 3, IMG, IMG)
    tgt = torch.arange(BATCH) % K
    times = []
    for s in range(2 + steps):  # 2 warm-up steps, as softmoe bench
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(net(img), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step": min(times), "rss": rss, "loss": float(loss),
                      "torch": torch.__version__}))


# ---------------------------------------------------------------- the runs

def run_softmoe(binary, model, precision, steps):
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    cmd = [binary, "bench"] + MODELS[model][3] + COMMON + ["train.precision=" + precision,
                                                         "bench.steps=%d" % steps]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("bench_torch: %s failed (exit %d):\n%s" % (" ".join(cmd), out.returncode,
                                                           out.stderr))
    text = out.stdout
    best = float(re.search(r"^best_step: ([0-9.]+) s", text, re.M).group(1))
    rss = float(re.search(r"^peak_rss_mb: ([0-9.]+)", text, re.M).group(1)) * 1048576
    path = re.search(r"^precision: (.*)$", text, re.M).group(1)
    mfu = re.search(r"^mfu: (.*)$", text, re.M).group(1)
    return {"step": best, "rss": rss, "path": path, "mfu": mfu}


def run_torch(model, autocast, steps):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model,
           "--steps", str(steps)] + (["--autocast"] if autocast else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("bench_torch: PyTorch %s%s failed (exit %d):\n%s" %
                 (model, " bf16" if autocast else "", out.returncode, out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


COLUMNS = [("softmoe fp32", lambda a, m: run_softmoe(a.bin, m, "fp32", a.steps)),
           ("softmoe bf16", lambda a, m: run_softmoe(a.bin, m, "bf16", a.steps)),
           ("PyTorch fp32", lambda a, m: run_torch(m, False, a.steps)),
           ("PyTorch bf16 autocast", lambda a, m: run_torch(m, True, a.steps))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="build/softmoe")
    ap.add_argument("--reps", type=int, default=3, help="rounds over the four columns")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per process")
    ap.add_argument("--models", default="vit_s16,moe32x4,moe128x1")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--autocast", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return torch_child(a.child, a.autocast, a.steps)
    try:
        import torch
    except ImportError:
        sys.exit("bench_torch: needs python3-torch (WITH_PYTHON=1 make deps)")
    if not os.access(a.bin, os.X_OK):
        sys.exit("bench_torch: %s not found; run make first" % a.bin)
    models = a.models.split(",")
    for m in models:
        if m not in MODELS:
            sys.exit("bench_torch: unknown model %s (choose from %s)" % (m, ",".join(MODELS)))
    print("bench-peer: batch %d, %d px, %d threads, best step of %d per process, best of %d "
          "rounds; PyTorch %s; OPENBLAS_CORETYPE %s (both programs' BLAS kernels)"
          % (BATCH, IMG, 2, a.steps, a.reps, torch.__version__,
             os.environ.get("OPENBLAS_CORETYPE", "unset")), flush=True)
    results = {}
    for m in models:
        best = {}
        for r in range(a.reps):
            for name, fn in COLUMNS:
                res = fn(a, m)
                print("  %-20s %-22s round %d: %.3f s/step, %.0f MB" %
                      (MODELS[m][0], name, r + 1, res["step"], res["rss"] / 1048576), flush=True)
                if name not in best or res["step"] < best[name]["step"]:
                    rss = max(res["rss"], best[name]["rss"]) if name in best else res["rss"]
                    best[name] = dict(res, rss=rss)
                else:
                    best[name]["rss"] = max(best[name]["rss"], res["rss"])
        results[m] = best
    print()
    hdr = "| model | " + " | ".join("%s img/s (peak RSS)" % n for n, _ in COLUMNS) + \
          " | bf16/bf16 | fp32/fp32 | softmoe bf16/fp32 |"
    print(hdr)
    print("|" + " --- |" * (hdr.count("|") - 1))
    for m in models:
        b = results[m]
        ips = {n: BATCH / b[n]["step"] for n, _ in COLUMNS}
        cells = ["%.2f (%.2f GB)" % (ips[n], b[n]["rss"] / 2**30) for n, _ in COLUMNS]
        print("| %s | %s | %.2fx | %.2fx | %.2fx |" % (
            MODELS[m][0], " | ".join(cells), ips["softmoe bf16"] / ips["PyTorch bf16 autocast"],
            ips["softmoe fp32"] / ips["PyTorch fp32"], ips["softmoe bf16"] / ips["softmoe fp32"]))
    print()
    for m in models:
        b = results[m]
        print("%s: softmoe fp32 MFU %s; softmoe bf16 MFU %s; bf16 path: %s" %
              (MODELS[m][0], b["softmoe fp32"]["mfu"], b["softmoe bf16"]["mfu"],
               b["softmoe bf16"]["path"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
