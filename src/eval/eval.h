// Evaluation: pre-logits features of a dataset, prec@1 and loss on a
// validation split, and the few-shot linear probe on configured datasets
// (fewshot.<name> = <train source>|<test source>), as `softmoe eval` and
// during training.
#pragma once
#include <stdio.h>

#include "../core/config.h"
#include "../model/vit.h"

// A dataset source: shard patterns (anything naming a .tar) or a folder.
const char *eval_source_kind(const char *paths);

// Labels of a few-shot set must be below this (ImageNet-21k has 21843
// classes); the probe's weights are (D+1, classes) doubles.
#define EVAL_MAX_CLASSES 65536

// Pre-logits features (n, D) and first labels of `paths` read once in order
// with the eval preprocessing, at most per_class images per class (0: all),
// in batches of m->B. A folder's classes are numbered by the class names of
// the source names_src (NULL: its own sorted subfolders), so a test folder
// matches its train folder by name. Under MPI the ranks split the data and
// every rank gets all features, in rank order (collective). *X, *y malloc'd.
// Returns n; dies naming the source on errors.
int eval_features(Vit *m, const Config *c, const char *paths, int per_class,
                  const char *names_src, float **X, int **y);

// Checks an evaluation source before any work (exists, has images, a flat
// folder's labels file resolves), with its classes numbered as the
// evaluation will: by names_src's class names (c->train for data.val, a
// few-shot train part for its test part; NULL: none). 0, or -1 with err.
int eval_check_source(const Config *c, const char *paths, const char *names_src,
                      const char *labels, char *err, size_t errlen);

// How many of B images have their top logit on one of their labels:
// logits and targets (B,K).
int eval_correct(const float *logits, const float *targets, int B, int K);

// prec@1 (top class among the labels) and mean loss over data.val, and the
// number of images in *n (if not NULL). Under MPI the ranks split the data
// and every rank gets the totals (collective). Returns 0 when data.val is
// not set.
int eval_val(Vit *m, const Config *c, double *prec1, double *loss, long *n);

// Few-shot accuracy for every configured dataset and shot count, written as
// one JSON line {"step": s, "fewshot/<name>/<k>shot": acc, ...} to out (if
// not NULL) and summarised on stderr unless quiet.
void eval_fewshot(Vit *m, const Config *c, long step, FILE *out, const char *out_name, int quiet);
