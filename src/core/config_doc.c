// One line of documentation per config key, for `softmoe keys`. Kept apart
// from the key table in config.c so that adding a key touches one row there
// and one here; test_config fails when a key has no line (or a line names no
// key), so the list cannot fall behind the table.
#include <string.h>

#include "config.h"

static const struct { const char *name, *doc; } DOCS[] = {
    {"model.variant", "ViT size Ti|S|B|L|H, optionally with the patch (S/16); fills width, depth, heads, mlp_dim, patch unless given"},
    {"model.width", "D, the token width"},
    {"model.depth", "L, the number of encoder blocks"},
    {"model.heads", "H, attention heads (must divide the width)"},
    {"model.mlp_dim", "M, the hidden width of each MLP and expert"},
    {"model.patch", "patch size in pixels (must divide the image size)"},
    {"model.image_size", "square input resolution in pixels"},
    {"model.channels", "C, image channels (1 gray, 3 RGB)"},
    {"model.classes", "K, the number of classes (the head's outputs)"},
    {"model.pool", "gap (mean of tokens), tok (a cls token), map (attention-pooling head)"},
    {"model.posemb", "learn (learned, N(0, 0.02)) or sincos2d (fixed)"},
    {"model.qk_norm", "LayerNorm (scale only) on queries and keys per head"},
    {"model.loss", "softmax_xent (one label) or sigmoid_xent (multi-hot targets)"},
    {"moe.experts", "E, experts per Soft MoE layer; 0 = a dense model"},
    {"moe.slots", "P, slots per expert, or auto: round(N * capacity_factor / E), at least 1"},
    {"moe.capacity_factor", "slots per token over all experts, used when moe.slots = auto"},
    {"moe.layers", "which blocks are Soft MoE: last_half, last:K, every:K, or a list 6,7,8"},
    {"moe.shared_init", "all experts start from the same weights (vmoe); false: one stream per expert"},
    {"moe.router", "soft (Soft MoE), tokens_choice, experts_choice (the sparse baselines), identity (an ablation); the choices are the src/model/router_*.c files"},
    {"moe.k", "tokens_choice: experts per token, 1 or 2"},
    {"moe.bpr", "tokens_choice: Batch Priority Routing (tokens by their top gate, highest first)"},
    {"moe.group_size", "sparse routers: images per routing group (must divide the images per rank)"},
    {"moe.capacity_multiple_of", "sparse routers: the expert capacity rounded up to a multiple of this"},
    {"moe.noise_std", "training adds N(0, (noise_std/E)^2) to the router logits"},
    {"moe.importance_weight", "tokens_choice: weight of the importance auxiliary loss"},
    {"moe.load_weight", "tokens_choice: weight of the load auxiliary loss"},
    {"moe.dispatch", "soft router ablation: uniform = every slot is the mean of the tokens"},
    {"moe.combine", "soft router ablation: uniform = every token gets the mean of the slot outputs"},
    {"data.source", "synthetic (seeded random task), shards (WebDataset tars) or folder (ROOT/<class>/<image>)"},
    {"data.train", "training data: shard patterns ({000000..000009} ranges, comma-separated) or a folder"},
    {"data.val", "held-out data for val/prec@1 and val/loss (shards or a folder); empty: none"},
    {"data.val_labels", "labels of a flat data.val folder: one class per line in file order, or a CSV file,wnid"},
    {"data.pp_train", "training preprocessing chain, ops joined by |; must end at model.image_size"},
    {"data.pp_eval", "evaluation preprocessing chain (validation, few-shot, predict)"},
    {"data.threads", "image decode threads of the loader"},
    {"data.shuffle_buffer", "samples in the training shuffle buffer; 0 = shard order"},
    {"optim.lr", "peak learning rate (after warmup)"},
    {"optim.b1", "Adam beta1"},
    {"optim.b2", "Adam beta2"},
    {"optim.eps", "Adam epsilon"},
    {"optim.clip", "global gradient-norm clipping threshold; 0 = off"},
    {"optim.wd", "decoupled weight decay per name pattern, first match wins: 'head/kernel:3.0, */kernel:0.03'"},
    {"schedule.warmup_steps", "steps of linear warmup from 0 to optim.lr (at most train.steps)"},
    {"schedule.decay", "after warmup: rsqrt, cosine, linear or constant"},
    {"schedule.timescale", "rsqrt decay timescale in steps"},
    {"schedule.cooldown_steps", "final steps of linear cooldown to 0 (at most train.steps)"},
    {"train.batch_size", "global batch (split evenly over MPI ranks)"},
    {"train.microbatch", "images per rank per forward/backward (0: the per-rank batch); gradients of batch_size/(ranks*microbatch) micro-steps accumulate into one update"},
    {"train.steps", "training steps"},
    {"train.seed", "seed of the init, the data order and augmentation, and the synthetic task"},
    {"train.workdir", "directory for config.ini, metrics.jsonl and checkpoints (relative: to the current directory)"},
    {"train.log_every", "steps between progress lines and metrics.jsonl entries"},
    {"train.ckpt_every", "steps between checkpoints (0: only at the end and on a signal)"},
    {"train.keep_ckpts", "newest checkpoints kept"},
    {"train.keep_every", "also keep every checkpoint whose step is a multiple of this (0: none)"},
    {"train.init", "start from another run's parameters: a softmoe .h5 or a big_vision/vmoe .npz"},
    {"train.allow_config_change", "resume even when the checkpoint was trained with another recipe (changed keys are listed)"},
    {"train.allow_oversubscribe_memory", "start even when the memory estimate exceeds the machine's memory"},
    {"train.resume", "latest (the newest checkpoint or an error), latest_valid (fall back), none"},
    {"train.precision", "fp32, or bf16: every product on bf16 inputs with fp32 accumulation; weights, Adam and checkpoints stay fp32"},
    {"eval.every", "steps between validation evaluations during training (0: only at the end)"},
    {"eval.batch_size", "batch of evaluation forwards (softmoe eval, predict)"},
    {"eval.synthetic_images", "held-out images of the final evaluation on data.source = synthetic"},
    {"fewshot.every", "steps between few-shot evaluations during training (0: only at the end)"},
    {"fewshot.shots", "comma-separated shot counts k, reported as fewshot/<name>/<k>shot"},
    {"fewshot.seeds", "draws of the k shots per class, averaged"},
    {"fewshot.l2", "ridge regularisation of the linear probe"},
    {"fewshot.l2_sweep", "comma-separated l2 values; the best mean is reported (empty: fewshot.l2)"},
    {"fewshot.per_class", "training images read per class for the probe"},
    {"dist.expert_parallel", "ranks per expert-parallel group (0: all ranks); must divide ranks and experts"},
    {"bench.steps", "timed steps of softmoe bench (after its warm-up steps)"},
    {"debug.stop_at_step", "test only: behave as if SIGTERM arrived during this step (0: off)"},
    {"debug.stop_rank", "test only: debug.stop_at_step on this rank alone, as a signal to one node (-1: every rank)"},
    {"debug.fail_at_step", "test only: a fatal error at this step (0: off)"},
    {"debug.fail_rank", "test only: debug.fail_at_step on this rank alone (-1: every rank)"},
    {"debug.poison_at_step", "test only: a NaN into Adam's v of the first tensor after this step's update (0: off)"},
    {"debug.crash_before_rename", "test only: exit(3) after writing this step's checkpoint, before its rename (0: off)"},
    {"debug.fp32_sgemm", "fp32 products through sgemm and the few-row kernels even where oneDNN's fp32 matmul would run, to compare the two paths (bool)"},
};

const char *config_key_doc(const char *section, const char *key) {
    size_t ns = strlen(section);
    for (size_t i = 0; i < sizeof DOCS / sizeof *DOCS; i++)
        if (!strncmp(DOCS[i].name, section, ns) && DOCS[i].name[ns] == '.' &&
            !strcmp(DOCS[i].name + ns + 1, key))
            return DOCS[i].doc;
    return NULL;
}

int config_doc_count(void) { return (int)(sizeof DOCS / sizeof *DOCS); }
