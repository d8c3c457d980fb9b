#!/usr/bin/python3
"""Independent PyTorch reference for the C model: writes tests/data/ref_*.bin.

Each fixture holds a model config, random parameters and inputs, and the
float64 autograd results (logits, pre-logits, loss, every parameter gradient)
that the C forward/backward must reproduce. The maths is written out here from
DESIGN.md / big_vision rather than borrowed from torch.nn modules, so that it
is a second implementation, not a re-statement of the C code's choices.

Values are drawn in float32 and only then widened to float64, so the C side,
which computes in float32, starts from bit-identical parameters and inputs and
the only difference left is its own rounding.

    /usr/bin/python3 scripts/make_reference.py [--out DIR] [--only NAME ...] [--gradcheck]

File format (little-endian): magic b"SMREF01\\n", then records until EOF:
    char kind[4] ("F32 " | "TEXT"), u32 name_len, name, u32 ndim, u64 dims[ndim],
    data (prod(dims) float32, or dims[0] bytes of text).
Reader: tests/fixture.h.
"""
import argparse
import math
import os
import struct
import sys

import numpy as np
import torch

MAGIC = b"SMREF01\n"
LN_EPS = 1e-6

# Scales of the random draws. Large enough that every path carries a gradient
# well above float32 noise, small enough that softmaxes stay unsaturated
# (attention logits come out with std ~1).
KERNEL_STD = 0.25
EMBED_STD = 0.5      # posemb, cls, MAP probe: stand-alone vectors, not products
BIAS_STD = 0.1
SCALE_STD = 0.1      # LayerNorm/QK-norm scales are 1 + SCALE_STD * N(0,1)
MU_STD = 0.5         # Soft MoE Router/mu (only its direction matters: normalised per slot)
ROUTER_SCALE_STD = 0.3  # Soft MoE Router/scale is 1 + ROUTER_SCALE_STD * N(0,1), not
                        # exactly 1, so a wrong d/d scale cannot hide behind a unit value
NORM_EPS = 1e-6      # Soft MoE: x * rsqrt(sum x^2 + NORM_EPS)


# --------------------------------------------------------------------------
# Cases. A case is a model config (the C side's [model]/[moe] keys), a batch
# size and a seed; `blocks` optionally names the MLP kind of each encoder
# block, otherwise `moe` (the C side's [moe] keys) chooses them: "soft" for the
# blocks moe.layers selects when moe.experts > 0, "dense" for the rest.

BASE = dict(width=32, depth=2, heads=2, mlp_dim=64, image_size=8, patch=4,
            channels=3, classes=10)

CASES = [
    dict(name="gap_learn", seed=1001, batch=3,
         model=dict(BASE, pool="gap", posemb="learn", qk_norm=False, loss="softmax_xent")),
    dict(name="tok_sincos_qk", seed=1002, batch=2,
         model=dict(BASE, pool="tok", posemb="sincos2d", qk_norm=True, loss="sigmoid_xent")),
    # Depth 1: the MAP head adds ~8.5k parameters and a second block would
    # push the file past 200 KB; block-to-block backward is covered above.
    dict(name="map_learn_qk", seed=1003, batch=2,
         model=dict(BASE, depth=1, pool="map", posemb="learn", qk_norm=True, loss="softmax_xent")),
    # Soft MoE. image_size 12 gives N = 9 patch tokens (10 with cls), so a
    # group is more than a handful of tokens. mlp_dim is cut (it sizes every
    # expert) to keep the files under 200 KB (176 and 191 KB): 64 would give
    # ~240 KB here and ~440 KB for five experts in both blocks.
    # Block 0 dense, block 1 Soft MoE (last_half of depth 2), P = 2 slots each.
    dict(name="softmoe_gap", seed=1004, batch=3,
         model=dict(BASE, image_size=12, mlp_dim=32, pool="gap", posemb="learn",
                    qk_norm=False, loss="softmax_xent"),
         moe=dict(experts=3, slots=2, layers="last_half", router="soft")),
    # Both blocks Soft MoE, one slot per expert (S = E = 5 < N = 10): the
    # block-to-block backward through two routers, and cls-token routing.
    dict(name="softmoe_every", seed=1005, batch=2,
         model=dict(BASE, image_size=12, mlp_dim=16, pool="tok", posemb="sincos2d",
                    qk_norm=True, loss="sigmoid_xent"),
         moe=dict(experts=5, slots=1, layers="every:1", router="soft")),
    # Sparse routers (DESIGN.md "Sparse routers and ablations"), in training
    # mode: `input/noise` holds the N(0,1) draws (B*N, E) every MoE block adds
    # (times noise_std / E) to its logits, so the load loss is in. The loss
    # whose gradients are stored is the classification loss plus the
    # auxiliary loss (`output/aux_loss`). N = 9 tokens per image.
    # Tokens Choice k=2 with BPR in groups of 2 images; capacity
    # ceil(18 * 2 * 0.75 / 4) = 7 of 9 choices per expert on average: drops.
    dict(name="tokens_choice_k2", seed=1006, batch=4,
         model=dict(BASE, image_size=12, mlp_dim=16, pool="gap", posemb="learn",
                    qk_norm=False, loss="softmax_xent"),
         moe=dict(experts=4, router="tokens_choice", k=2, bpr="true", group_size=2,
                  capacity_factor=0.75, layers="last_half", noise_std=1.0,
                  importance_weight=0.1, load_weight=0.1)),
    # Tokens Choice k=1 without BPR, one image per group, in both blocks;
    # capacity ceil(9 / 4) = 3 of 2.25 choices per expert on average.
    dict(name="tokens_choice_k1", seed=1007, batch=3,
         model=dict(BASE, image_size=12, mlp_dim=16, pool="gap", posemb="learn",
                    qk_norm=False, loss="softmax_xent"),
         moe=dict(experts=4, router="tokens_choice", k=1, bpr="false", group_size=1,
                  capacity_factor=1.0, layers="every:1", noise_std=1.0,
                  importance_weight=0.1, load_weight=0.1)),
    # Experts Choice in groups of 2 images: C = round(18 * 1.2 / 4) = 5.
    dict(name="experts_choice", seed=1008, batch=4,
         model=dict(BASE, image_size=12, mlp_dim=16, pool="gap", posemb="learn",
                    qk_norm=False, loss="softmax_xent"),
         moe=dict(experts=4, router="experts_choice", group_size=2, capacity_factor=1.2,
                  layers="last_half", noise_std=1.0)),
]


def config_text(case):
    """The section.key=value overrides that rebuild this model in C."""
    m = case["model"]
    lines = []
    for k in ("width", "depth", "heads", "mlp_dim", "image_size", "patch",
              "channels", "classes", "pool", "posemb", "qk_norm", "loss"):
        v = m[k]
        lines.append("model.%s=%s" % (k, ("true" if v else "false") if isinstance(v, bool) else v))
    # Said explicitly so a change of the C default can never turn a dense
    # fixture into an MoE model silently.
    for k, v in case.get("moe", {"experts": 0}).items():
        lines.append("moe.%s=%s" % (k, v))
    lines.append("train.batch_size=%d" % case["batch"])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Parameter specs: ordered (name, shape, kind), kind choosing the draw.

def attention_specs(prefix, D, H, qk_norm):
    Dh = D // H
    s = []
    for p in ("query", "key", "value"):
        s += [(prefix + p + "/kernel", (D, H, Dh), "kernel"),
              (prefix + p + "/bias", (H, Dh), "bias")]
    s += [(prefix + "out/kernel", (H, Dh, D), "kernel"),
          (prefix + "out/bias", (D,), "bias")]
    if qk_norm:
        s += [(prefix + "query_ln/scale", (Dh,), "scale"),
              (prefix + "key_ln/scale", (Dh,), "scale")]
    return s


def layernorm_specs(prefix, D):
    return [(prefix + "scale", (D,), "scale"), (prefix + "bias", (D,), "bias")]


def dense_mlp_specs(prefix, m, moe=None):
    D, M = m["width"], m["mlp_dim"]
    return [(prefix + "Dense_0/kernel", (D, M), "kernel"), (prefix + "Dense_0/bias", (M,), "bias"),
            (prefix + "Dense_1/kernel", (M, D), "kernel"), (prefix + "Dense_1/bias", (D,), "bias")]


def dense_mlp_forward(p, prefix, y, m, moe=None, tap=None):
    return mlp(y, p[prefix + "Dense_0/kernel"], p[prefix + "Dense_0/bias"],
               p[prefix + "Dense_1/kernel"], p[prefix + "Dense_1/bias"])


def soft_moe_specs(prefix, m, moe):
    D, M, E, P = m["width"], m["mlp_dim"], moe["experts"], moe["slots"]
    # Expert kernels are one (E, ...) draw: independent per expert, unlike the
    # C side's default shared init, so that every expert computes something else.
    return [(prefix + "Router/mu", (D, E, P), "mu"), (prefix + "Router/scale", (), "router_scale"),
            (prefix + "Mlp/Dense_0/kernel", (E, D, M), "kernel"),
            (prefix + "Mlp/Dense_0/bias", (E, M), "bias"),
            (prefix + "Mlp/Dense_1/kernel", (E, M, D), "kernel"),
            (prefix + "Mlp/Dense_1/bias", (E, D), "bias")]


def l2_normalise(x, dim):
    return x * torch.rsqrt((x * x).sum(dim, keepdim=True) + NORM_EPS)


def soft_moe_forward(p, prefix, y, m, moe, tap=None):
    """Soft MoE on y (B,N,D), one group = one image (DESIGN.md). If `tap` is a
    dict, the intermediate tensors are stored in it."""
    B, N, D = y.shape
    E, P = moe["experts"], moe["slots"]
    S = E * P
    mun = l2_normalise(p[prefix + "Router/mu"].reshape(D, S), 0)      # each slot's column over D
    logits = p[prefix + "Router/scale"] * (l2_normalise(y, -1) @ mun)  # (B,N,S)
    dispatch = torch.softmax(logits, dim=1)                            # over tokens: columns sum to 1
    combine = torch.softmax(logits, dim=2)                             # over slots: rows sum to 1
    slots_in = dispatch.transpose(1, 2) @ y                            # (B,S,D), from the raw y
    slots_out = torch.cat([
        mlp(slots_in[:, e * P:(e + 1) * P],
            p[prefix + "Mlp/Dense_0/kernel"][e], p[prefix + "Mlp/Dense_0/bias"][e],
            p[prefix + "Mlp/Dense_1/kernel"][e], p[prefix + "Mlp/Dense_1/bias"][e])
        for e in range(E)], dim=1)                                     # (B,S,D)
    out = combine @ slots_out                                          # (B,N,D)
    if tap is not None:
        tap.update(moe_dispatch=dispatch, moe_combine=combine, moe_slots_in=slots_in, moe_out=out)
    return out


def sparse_specs(prefix, m, moe):
    D, M, E = m["width"], m["mlp_dim"], moe["experts"]
    return [(prefix + "Router/dense/kernel", (D, E), "kernel"),
            (prefix + "Mlp/Dense_0/kernel", (E, D, M), "kernel"),
            (prefix + "Mlp/Dense_0/bias", (E, M), "bias"),
            (prefix + "Mlp/Dense_1/kernel", (E, M, D), "kernel"),
            (prefix + "Mlp/Dense_1/bias", (E, D), "bias")]


def capacity(moe, group_tokens):
    """vmoe's compute_capacity: TC ceil(T*k*cf/E), EC round(T*cf/E), then up
    to a multiple of capacity_multiple_of, at least 1 (EC: at most T)."""
    E, cf, mult = moe["experts"], moe["capacity_factor"], moe.get("capacity_multiple_of", 1)
    if moe["router"] == "tokens_choice":
        c = int(math.ceil(group_tokens * moe["k"] * cf / E))
    else:
        c = int(round(group_tokens * cf / E))
    c = max(c, 1)
    c += (-c) % mult
    return c if moe["router"] == "tokens_choice" else min(c, group_tokens)


MARGIN = 1e-5  # selections closer than this in float64 could flip in float32
# Choices dropped past capacity (Tokens Choice) and tokens no expert took
# (Experts Choice) in the last forward: compute() insists on some, so the
# fixtures exercise those paths.
SPARSE_STATS = {}


def cv2(x):
    return (x.std(unbiased=False) / x.mean()) ** 2


def sparse_forward(p, prefix, y, m, moe, tap=None):
    """Tokens Choice / Experts Choice on y (B,N,D) with the noise in moe["_noise"]:
    each token's output is the gate-weighted sum of the experts that took it,
    every expert applied to the token itself (an expert's output on a row
    depends on that row alone, so no buffer layout is needed here)."""
    B, N, D = y.shape
    E, G = moe["experts"], moe.get("group_size", 1)
    T = G * N
    C = capacity(moe, T)
    sigma = moe.get("noise_std", 1.0) / E
    expert = [lambda v, e=e: mlp(v, p[prefix + "Mlp/Dense_0/kernel"][e], p[prefix + "Mlp/Dense_0/bias"][e],
                                 p[prefix + "Mlp/Dense_1/kernel"][e], p[prefix + "Mlp/Dense_1/bias"][e])
              for e in range(E)]
    logits_all = y.reshape(B * N, D) @ p[prefix + "Router/dense/kernel"]
    noise = moe["_noise"]
    outs, imps, loads, gates_all = [], [], [], []
    for q in range(B // G):
        x = y[q * G:(q + 1) * G].reshape(T, D)
        logits = logits_all[q * T:(q + 1) * T]
        noisy = logits + sigma * noise[q * T:(q + 1) * T]
        gates = torch.softmax(noisy, -1)
        gates_all.append(gates)
        ys = torch.stack([expert[e](x) for e in range(E)], 1)      # (T,E,D) every pair
        weight = torch.zeros((T, E), dtype=torch.float64)          # combine weight of kept pairs
        g = gates.detach()
        if moe["router"] == "tokens_choice":
            k = moe["k"]
            vals, idx = torch.topk(g, E, dim=-1)                    # full order, for margins
            assert bool(((vals[:, k - 1] - vals[:, k]) > MARGIN).all()), "top-k tie"
            if moe.get("bpr", "true") == "true":
                top1 = vals[:, 0]
                order = sorted(range(T), key=lambda t: (-float(top1[t]), t))
                srt = torch.sort(top1).values
                assert bool(((srt[1:] - srt[:-1]) > MARGIN).all()), "BPR tie"
            else:
                order = list(range(T))
            fill = [0] * E
            for kk in range(k):                                    # k-major priority
                for t in order:
                    e = int(idx[t, kk])
                    if fill[e] < C:
                        fill[e] += 1
                        weight[t, e] = 1.0
                    else:
                        SPARSE_STATS["dropped"] = SPARSE_STATS.get("dropped", 0) + 1
            imps.append(cv2(torch.softmax(logits, -1).sum(0)))    # clean gates, as vmoe
            thr = noisy.gather(1, idx[:, k - 1:k])                 # k-th largest noisy logit
            P = 1.0 - torch.distributions.Normal(0.0, 1.0).cdf((thr - logits) / sigma)
            loads.append(cv2(P.mean(0)))
        else:
            for e in range(E):
                col = torch.sort(g[:, e], descending=True).values
                assert C >= T or float(col[C - 1] - col[C]) > MARGIN, "top-C tie"
                weight[torch.topk(g[:, e], C).indices, e] = 1.0
            SPARSE_STATS["unprocessed"] = (SPARSE_STATS.get("unprocessed", 0) +
                                           int((weight.sum(1) == 0).sum()))
        outs.append(((weight * gates)[:, :, None] * ys).sum(1).reshape(G, N, D))
    out = torch.cat(outs, 0)
    if moe["router"] == "tokens_choice":
        nq = len(imps)
        moe["_aux"].append(moe["importance_weight"] * sum(imps) / nq +
                           moe["load_weight"] * sum(loads) / nq)
    if tap is not None:
        tap.update(router_logits=logits_all, router_gates=torch.cat(gates_all, 0))
    return out


# kind -> (checkpoint sub-prefix inside the block, specs(prefix, model, moe),
#          forward(p, prefix, y, model, moe, tap))
MLP_KINDS = {
    "dense": ("Mlp/", dense_mlp_specs, dense_mlp_forward),
    "soft": ("Moe/", soft_moe_specs, soft_moe_forward),
    "tokens_choice": ("Moe/", sparse_specs, sparse_forward),
    "experts_choice": ("Moe/", sparse_specs, sparse_forward),
}


def moe_layers(spec, L):
    """The block indices moe.layers selects in a depth-L encoder."""
    if spec == "last_half":
        return {l for l in range(L) if l >= L - L // 2}
    if spec.startswith("last:"):
        k = int(spec[5:])
        return {l for l in range(L) if l >= L - k}
    if spec.startswith("every:"):
        k = int(spec[6:])
        return {l for l in range(L) if (l + 1) % k == 0}
    chosen = {int(t) for t in spec.split(",")}
    assert all(0 <= l < L for l in chosen), spec
    return chosen


def block_kinds(case):
    L = case["model"]["depth"]
    if "blocks" in case:
        return case["blocks"]
    moe = case.get("moe", {})
    if moe.get("experts", 0) > 0:
        kind = moe.get("router", "soft")
        assert kind in MLP_KINDS, "router %s is not written out" % kind
        sel = moe_layers(moe.get("layers", "last_half"), L)
        return [kind if l in sel else "dense" for l in range(L)]
    return ["dense"] * L


def param_specs(case):
    m = case["model"]
    D, H, P, C, K = m["width"], m["heads"], m["patch"], m["channels"], m["classes"]
    G = m["image_size"] // P
    N = G * G + (1 if m["pool"] == "tok" else 0)
    s = [("embedding/kernel", (P, P, C, D), "kernel"), ("embedding/bias", (D,), "bias")]
    if m["pool"] == "tok":
        s.append(("cls", (1, 1, D), "embed"))
    if m["posemb"] == "learn":
        s.append(("Encoder/posembed_input/pos_embedding", (1, N, D), "embed"))
    for i, kind in enumerate(block_kinds(case)):
        b = "Encoder/encoderblock_%d/" % i
        s += layernorm_specs(b + "LayerNorm_0/", D)
        s += attention_specs(b + "SelfAttention/", D, H, m["qk_norm"])
        s += layernorm_specs(b + "LayerNorm_1/", D)
        sub, specs, _ = MLP_KINDS[kind]
        s += specs(b + sub, m, case.get("moe"))
    s += layernorm_specs("Encoder/encoder_norm/", D)
    if m["pool"] == "map":
        h = "MAPHead_0/"
        s.append((h + "probe", (1, 1, D), "embed"))
        s += attention_specs(h + "MultiHeadDotProductAttention_0/", D, H, False)
        s += layernorm_specs(h + "LayerNorm_0/", D)
        s += dense_mlp_specs(h + "MlpBlock_0/", m)
    s += [("head/kernel", (D, K), "kernel"), ("head/bias", (K,), "bias")]
    return s


def draw(gen, shape, kind):
    """float32 draw widened to float64: the C side sees the same numbers."""
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    if kind == "scale":
        z = 1.0 + SCALE_STD * z
    elif kind == "router_scale":
        z = 1.0 + ROUTER_SCALE_STD * z
    else:
        z = z * {"kernel": KERNEL_STD, "embed": EMBED_STD, "bias": BIAS_STD, "mu": MU_STD}[kind]
    return z.to(torch.float32).to(torch.float64)


def draw_inputs(gen, case):
    m = case["model"]
    B, S, C, K = case["batch"], m["image_size"], m["channels"], m["classes"]
    # Images in value_range(-1, 1), as the preprocessing produces.
    images = (torch.rand((B, S, S, C), generator=gen, dtype=torch.float32) * 2 - 1).to(torch.float64)
    targets = torch.zeros((B, K), dtype=torch.float64)
    if m["loss"] == "softmax_xent":
        cls = torch.randint(0, K, (B,), generator=gen)
        targets[torch.arange(B), cls] = 1.0
    else:
        # Multi-hot with 2..4 labels per row, so both terms of the sigmoid
        # loss are exercised on every row.
        for b in range(B):
            n = int(torch.randint(2, 5, (1,), generator=gen))
            targets[b, torch.randperm(K, generator=gen)[:n]] = 1.0
    return images, targets


# --------------------------------------------------------------------------
# The model, written out.

def layernorm(x, scale, bias=None):
    """Over the last axis, biased variance (flax); bias absent for QK-norm."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + LN_EPS) * scale
    return y if bias is None else y + bias


def gelu_tanh(u):
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))


def mlp(y, k0, b0, k1, b1):
    return gelu_tanh(y @ k0 + b0) @ k1 + b1


def attention(p, prefix, xq, xkv, qk_norm):
    """Multi-head attention, queries from xq (B,Nq,D), keys/values from xkv (B,N,D)."""
    D, H, Dh = p[prefix + "query/kernel"].shape

    def proj(x, name):  # -> (B, H, n, Dh)
        y = x @ p[prefix + name + "/kernel"].reshape(D, H * Dh) + p[prefix + name + "/bias"].reshape(H * Dh)
        return y.reshape(x.shape[0], x.shape[1], H, Dh).transpose(1, 2)

    q, k, v = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
    if qk_norm:
        q = layernorm(q, p[prefix + "query_ln/scale"])
        k = layernorm(k, p[prefix + "key_ln/scale"])
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(Dh), dim=-1)  # (B,H,Nq,N)
    o = (att @ v).transpose(1, 2).reshape(xq.shape[0], xq.shape[1], H * Dh)
    return o @ p[prefix + "out/kernel"].reshape(H * Dh, D) + p[prefix + "out/bias"]


def posemb_sincos_2d(G, D, temperature=10000.0):
    """big_vision's posemb_sincos_2d(G, G, D): (G*G, D)."""
    assert D % 4 == 0
    y, x = torch.meshgrid(torch.arange(G, dtype=torch.float64),
                          torch.arange(G, dtype=torch.float64), indexing="ij")
    omega = torch.arange(D // 4, dtype=torch.float64) / (D // 4 - 1)
    omega = 1.0 / temperature ** omega
    x = x.flatten()[:, None] * omega[None]
    y = y.flatten()[:, None] * omega[None]
    return torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=1)


def patchify(images, P):
    """(B,S,S,C) -> (B, G*G, P*P*C), patches in row-major grid order, each
    flattened in (row, col, channel) order to match embedding/kernel (P,P,C,D)."""
    B, S, _, C = images.shape
    G = S // P
    t = images.reshape(B, G, P, G, P, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(B, G * G, P * P * C)


def forward(case, p, images, targets, tap=None, noise=None):
    """Returns (logits (B,K), prelogits (B,D), loss (), aux ()): aux is the
    sparse routers' auxiliary loss summed over blocks (0 otherwise). If `tap`
    is a dict, the first MoE block stores its intermediates there; `noise`
    (B*N, E) is the sparse routers' N(0,1) draws."""
    m = case["model"]
    moe = dict(case.get("moe", {}), _noise=noise, _aux=[])
    P, D = m["patch"], m["width"]
    B = images.shape[0]
    G = m["image_size"] // P

    x = patchify(images, P) @ p["embedding/kernel"].reshape(-1, D) + p["embedding/bias"]
    if m["posemb"] == "sincos2d":
        x = x + posemb_sincos_2d(G, D)[None]          # patch tokens only
    if m["pool"] == "tok":
        x = torch.cat([p["cls"].expand(B, 1, D), x], dim=1)
    if m["posemb"] == "learn":
        x = x + p["Encoder/posembed_input/pos_embedding"]  # includes the cls slot

    for i, kind in enumerate(block_kinds(case)):
        b = "Encoder/encoderblock_%d/" % i
        y = layernorm(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
        x = x + attention(p, b + "SelfAttention/", y, y, m["qk_norm"])
        y = layernorm(x, p[b + "LayerNorm_1/scale"], p[b + "LayerNorm_1/bias"])
        sub, _, mlp_forward = MLP_KINDS[kind]
        first_moe = kind != "dense" and kind not in block_kinds(case)[:i]
        x = x + mlp_forward(p, b + sub, y, m, moe, tap if first_moe else None)
    x = layernorm(x, p["Encoder/encoder_norm/scale"], p["Encoder/encoder_norm/bias"])

    if m["pool"] == "gap":
        pooled = x.mean(1)
    elif m["pool"] == "tok":
        pooled = x[:, 0]
    elif m["pool"] == "map":
        h = "MAPHead_0/"
        a = attention(p, h + "MultiHeadDotProductAttention_0/", p[h + "probe"].expand(B, 1, D), x, False)
        y = layernorm(a, p[h + "LayerNorm_0/scale"], p[h + "LayerNorm_0/bias"])
        a = a + dense_mlp_forward(p, h + "MlpBlock_0/", y, m)
        pooled = a[:, 0]
    else:
        raise ValueError("unknown pool " + m["pool"])

    logits = pooled @ p["head/kernel"] + p["head/bias"]
    if m["loss"] == "softmax_xent":
        loss = -(targets * torch.log_softmax(logits, -1)).sum(-1).mean()
    elif m["loss"] == "sigmoid_xent":
        lp = torch.nn.functional.logsigmoid
        loss = -(targets * lp(logits) + (1 - targets) * lp(-logits)).sum(-1).mean()
    else:
        raise ValueError("unknown loss " + m["loss"])
    aux = sum(moe["_aux"]) if moe["_aux"] else torch.zeros((), dtype=torch.float64)
    return logits, pooled, loss, aux


def is_sparse(case):
    return case.get("moe", {}).get("router", "soft") in ("tokens_choice", "experts_choice")


def build(case):
    """Draws params, inputs and (sparse routers) the routing noise for a case
    (deterministic in its seed)."""
    gen = torch.Generator().manual_seed(case["seed"])
    params = {name: draw(gen, shape, kind) for name, shape, kind in param_specs(case)}
    images, targets = draw_inputs(gen, case)
    noise = None
    if is_sparse(case):
        m = case["model"]
        N = (m["image_size"] // m["patch"]) ** 2 + (1 if m["pool"] == "tok" else 0)
        noise = torch.randn((case["batch"] * N, case["moe"]["experts"]), generator=gen,
                            dtype=torch.float32).to(torch.float64)
    return params, images, targets, noise


def compute(case):
    """Returns the ordered list of records (kind, name, array|text) for a case."""
    params, images, targets, noise = build(case)
    for t in params.values():
        t.requires_grad_(True)
    tap = {}
    SPARSE_STATS.clear()
    logits, pooled, loss, aux = forward(case, params, images, targets, tap, noise)
    if is_sparse(case):
        what = "dropped" if case["moe"]["router"] == "tokens_choice" else "unprocessed"
        assert SPARSE_STATS.get(what, 0) > 0, case["name"] + ": no token " + what
        print("%s: %d %s" % (case["name"], SPARSE_STATS[what], what))
    names = list(params)
    grads = torch.autograd.grad(loss + aux, [params[n] for n in names])
    if "moe_dispatch" in tap:
        check_moe_weights(tap)
    rec = [("TEXT", "config", config_text(case)),
           ("F32 ", "input/images", images),
           ("F32 ", "input/targets", targets)]
    if noise is not None:
        rec.append(("F32 ", "input/noise", noise))
    rec += [("F32 ", "params/" + n, params[n].detach()) for n in names]
    rec += [("F32 ", "output/logits", logits.detach()),
            ("F32 ", "output/prelogits", pooled.detach()),
            ("F32 ", "output/loss", loss.detach())]
    if is_sparse(case):
        rec.append(("F32 ", "output/aux_loss", aux.detach()))
    rec += [("F32 ", "grads/" + n, g) for n, g in zip(names, grads)]
    # Intermediates of the first Soft MoE block, for debugging a mismatch.
    rec += [("F32 ", "debug/" + k, tap[k].detach())
            for k in ("moe_dispatch", "moe_combine", "moe_slots_in", "moe_out", "router_logits",
                      "router_gates") if k in tap]
    return [(k, n, v if k == "TEXT" else v.numpy().astype("<f4")) for k, n, v in rec]


def check_moe_weights(tap):
    """Dispatch columns (over tokens) and combine rows (over slots) sum to 1."""
    one = torch.ones((), dtype=torch.float64)
    for k, dim in (("moe_dispatch", 1), ("moe_combine", 2)):
        w = tap[k].detach()
        assert bool(((w.sum(dim) - one).abs() < 1e-12).all()), k + " does not sum to 1"
        assert bool((w > 0).all()), k + " has a non-positive weight"


def gradcheck(case):
    """torch.autograd.gradcheck of the float64 loss against every parameter
    (finite differences; slow, so only on request: --gradcheck)."""
    params, images, targets, noise = build(case)
    names = list(params)
    inputs = tuple(params[n].clone().requires_grad_(True) for n in names)

    def loss_of(*ts):
        r = forward(case, dict(zip(names, ts)), images, targets, None, noise)
        return r[2] + r[3]

    return torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------
# Fixture I/O.

def encode(records):
    out = [MAGIC]
    for kind, name, v in records:
        nb = name.encode()
        out += [kind.encode(), struct.pack("<I", len(nb)), nb]
        if kind == "TEXT":
            data = v.encode()
            dims = (len(data),)
        else:
            data = np.ascontiguousarray(v, dtype="<f4").tobytes()
            dims = v.shape
        out += [struct.pack("<I", len(dims)), struct.pack("<%dQ" % len(dims), *dims), data]
    return b"".join(out)


def decode(buf):
    """Parses a fixture back into [(kind, name, value)]; raises on any damage."""
    if buf[:8] != MAGIC:
        raise ValueError("bad magic")
    pos, recs = 8, []

    def take(n):
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError("truncated at byte %d" % pos)
        pos += n
        return buf[pos - n:pos]

    while pos < len(buf):
        kind = take(4).decode()
        (nl,) = struct.unpack("<I", take(4))
        name = take(nl).decode()
        (nd,) = struct.unpack("<I", take(4))
        dims = struct.unpack("<%dQ" % nd, take(8 * nd))
        if kind == "TEXT":
            if nd != 1:
                raise ValueError("%s: TEXT with ndim %d" % (name, nd))
            recs.append((kind, name, take(dims[0]).decode()))
        elif kind == "F32 ":
            n = int(np.prod(dims, dtype=np.int64))
            recs.append((kind, name, np.frombuffer(take(4 * n), "<f4").reshape(dims)))
        else:
            raise ValueError("%s: unknown kind %r" % (name, kind))
    return recs


def verify(path, records):
    """Re-reads what was written and insists it is exactly what we meant."""
    with open(path, "rb") as f:
        back = decode(f.read())
    assert len(back) == len(records), path
    names = [n for _, n, _ in back]
    assert len(set(names)) == len(names), path + ": duplicate record names"
    for (k0, n0, v0), (k1, n1, v1) in zip(records, back):
        assert (k0, n0) == (k1, n1), (path, n0, n1)
        if k0 == "TEXT":
            assert v0 == v1, (path, n0)
        else:
            assert v0.shape == v1.shape and np.array_equal(v0, v1), (path, n0)
            assert np.all(np.isfinite(v1)), (path, n0, "non-finite")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "data"))
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--gradcheck", action="store_true",
                    help="also check each case's autograd gradients by finite differences")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # float64 sums in one fixed order: byte-identical reruns
    os.makedirs(args.out, exist_ok=True)
    known = {c["name"] for c in CASES}
    for n in args.only or []:
        if n not in known:
            sys.exit("make_reference: unknown case %r (have %s)" % (n, ", ".join(sorted(known))))
    for case in CASES:
        if args.only and case["name"] not in args.only:
            continue
        records = compute(case)
        path = os.path.join(args.out, "ref_%s.bin" % case["name"])
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(encode(records))
        os.replace(tmp, path)
        verify(path, records)
        loss = next(v for _, n, v in records if n == "output/loss")
        print("%-40s %7d bytes  %3d records  loss %.6f"
              % (os.path.relpath(path), os.path.getsize(path), len(records), float(loss)))
        if args.gradcheck:
            gradcheck(case)  # raises with the offending parameter on failure
            print("%-40s gradcheck ok" % os.path.relpath(path))


if __name__ == "__main__":
    main()
