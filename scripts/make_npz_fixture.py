#!/usr/bin/python3
"""Tiny big_vision-style ViT checkpoints (.npz) and their reference logits.

Writes, for tests/test_npz.c:
  tests/data/bv_vit_tiny.npz      big_vision's layout (Transformer/encoderblock_i/
                                  MultiHeadDotProductAttention_0, MlpBlock_0, a top-level
                                  pos_embedding over the patches only, cls), compressed
  tests/data/bv_vit_tiny_old.npz  the older vision_transformer layout
                                  (MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3,
                                  Transformer/posembed_input/pos_embedding including the
                                  cls position), stored uncompressed
  tests/data/ref_npz_bv.bin       the model config, input images and the float64 PyTorch
                                  logits (make_reference.py's forward, an implementation
                                  independent of the C code) for the same arrays

Both files hold the same model: in big_vision the position embedding is added
to the patch tokens before the cls token is prepended, which equals adding a
position embedding whose cls row is zero after prepending it; the old layout
stores exactly that.

    /usr/bin/python3 scripts/make_npz_fixture.py [--out tests/data]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as ref  # noqa: E402

CASE = dict(name="npz_bv", seed=3001, batch=3,
            model=dict(ref.BASE, pool="tok", posemb="learn", qk_norm=False, loss="softmax_xent"))


def layouts(ours):
    """Our (vmoe) names -> (big_vision dict, old vision_transformer dict)."""
    new, old = {}, {}
    for name, v in ours.items():
        a = v.numpy().astype("<f4")
        if name == "Encoder/posembed_input/pos_embedding":
            new["pos_embedding"] = a[:, 1:, :]           # patches only
            old["Transformer/posembed_input/pos_embedding"] = a
            continue
        n_new = n_old = name
        if name.startswith("Encoder/encoderblock_"):
            i, mod, rest = name[len("Encoder/encoderblock_"):].split("/", 2)
            bv = {"LayerNorm_0": ("LayerNorm_0", "LayerNorm_0"),
                  "SelfAttention": ("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1"),
                  "LayerNorm_1": ("LayerNorm_1", "LayerNorm_2"),
                  "Mlp": ("MlpBlock_0", "MlpBlock_3")}[mod]
            n_new = "Transformer/encoderblock_%s/%s/%s" % (i, bv[0], rest)
            n_old = "Transformer/encoderblock_%s/%s/%s" % (i, bv[1], rest)
        elif name.startswith("Encoder/encoder_norm/"):
            n_new = n_old = "Transformer/" + name[len("Encoder/"):]
        new[n_new] = a
        old[n_old] = a
    return new, old


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    args = ap.parse_args()
    params, images, targets = ref.build(CASE)
    # big_vision's model has no position for the cls token: zero in ours
    params["Encoder/posembed_input/pos_embedding"][:, 0, :] = 0
    with torch.no_grad():
        logits, _, _ = ref.forward(CASE, params, images, targets)
    new, old = layouts(params)
    np.savez_compressed(os.path.join(args.out, "bv_vit_tiny.npz"), **new)
    np.savez(os.path.join(args.out, "bv_vit_tiny_old.npz"), **old)
    rec = [("TEXT", "config", ref.config_text(CASE)),
           ("F32 ", "input/images", images.numpy().astype("<f4")),
           ("F32 ", "output/logits", logits.numpy().astype("<f4"))]
    path = os.path.join(args.out, "ref_npz_bv.bin")
    with open(path, "wb") as f:
        f.write(ref.encode(rec))
    print("wrote %s (%d + %d arrays) and %s" % (os.path.join(args.out, "bv_vit_tiny*.npz"),
                                                len(new), len(old), path))


if __name__ == "__main__":
    main()
