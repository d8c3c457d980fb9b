// The input pipeline: image shards or an ImageNet-style folder -> decoded,
// preprocessed batches, produced by threads running ahead of training.
//
// Determinism: epoch e orders the shards by a permutation drawn from (seed,
// e), rank r of W takes every W-th shard of that order, a seeded shuffle
// buffer mixes their samples into one stream, and sample i of the stream is
// preprocessed with randomness drawn from (seed, e, i). A batch is the next
// B samples of the stream that decode; which samples fail is a property of
// the data, so the batches never depend on thread timing. The position
// (epoch, samples taken from the stream) restores the exact same batches.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../core/config.h"

typedef struct {
    const char *source;     // "shards" | "folder"
    const char *paths;      // shard patterns, or the folder root
    const char *pp;         // preprocessing chain
    int S, C, K;            // image size, channels, classes (K = 0: labels unchecked,
                            // loader_next's targets must be NULL)
    int B;                  // images per batch (this rank)
    uint64_t seed;
    int rank, world;
    int threads;            // decode threads
    int shuffle_buffer;     // samples; <= 1 disables shuffling
    int train;              // 1: shuffle, repeat epochs; 0: one pass in order
    int quiet;              // no skip log lines
    int per_class;          // folder source: at most this many images per class (0: all)
    // folder source: class index = position of the subfolder's name here
    // (the training classes); NULL: the folder's own sorted subfolders
    char *const *class_names;
    int nclass_names;
    const char *names_from; // where class_names came from (for the warning)
    const char *labels;     // flat folder: labels file (data.val_labels), else NULL
} LoaderSpec;

typedef struct {
    uint64_t epoch;         // current epoch
    uint64_t taken;         // samples taken from this epoch's stream (incl. skipped)
} LoaderPos;

typedef struct Loader Loader;

// The spec a config describes: train = 1 reads data.train with pp_train,
// train.batch_size and shuffling; train = 0 reads data.val once, in order,
// with pp_eval and eval.batch_size. Callers adjust fields as needed.
LoaderSpec loader_spec_config(const Config *c, int train);

// Checks the sources (patterns that match no file, unreadable folder) and
// starts the threads. NULL with a message in err on any problem.
Loader *loader_open(const LoaderSpec *spec, char *err, size_t errlen);
// What loader_open checks before it starts reading (the preprocessing chain,
// every shard present, a folder with images), with nothing left running.
// Returns 0, or -1 with err naming the source.
int loader_check(const LoaderSpec *spec, char *err, size_t errlen);
// Fills images (B,S,S,C), targets (B,K) (one- or multi-hot) and labels (B,
// first label; may be NULL). Returns the number of images: B, fewer at the
// end of an eval pass, 0 when an eval pass is over. Dies with a clear message
// when a whole training epoch yields no usable sample.
int loader_next(Loader *l, float *images, float *targets, int *labels);
// Position after the last batch returned; restore with loader_seek.
LoaderPos loader_pos(const Loader *l);
void loader_seek(Loader *l, LoaderPos pos);
// Samples skipped so far (undecodable, unlabeled, label out of range, ...).
uint64_t loader_skipped(const Loader *l);
// Samples in one epoch of this rank, counted on the first complete epoch (0
// until then).
uint64_t loader_epoch_size(const Loader *l);
void loader_close(Loader *l);
