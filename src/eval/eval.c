// Evaluators over a trained ViT (see eval.h): features, validation prec@1 and
// loss, and big_vision's few-shot linear probe.
#include "eval.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"
#include "../core/jsonl.h"
#include "../data/classes.h"
#include "../data/loader.h"
#include "../dist/dist.h"
#include "../model/layers.h"
#include "fewshot.h"

const char *eval_source_kind(const char *paths) { return strstr(paths, ".tar") ? "shards" : "folder"; }

// The loader spec of an evaluation source. Under MPI each rank reads its
// share of the shards (or folder files). A folder's classes are numbered by
// the names of the source names_src (of kind names_kind) when it names them:
// the training data for data.val, a few-shot set's train part for its test
// part; *names (to free after opening) holds them. labels: a flat folder's file.
static LoaderSpec eval_spec(const Config *c, const char *paths, int K, int B, int per_class,
                            const char *names_kind, const char *names_src, const char *labels,
                            char ***names, int *nnames, char *from, size_t fromlen) {
    LoaderSpec sp = loader_spec_config(c, 0);
    sp.source = eval_source_kind(paths), sp.paths = paths, sp.K = K, sp.B = B;
    sp.quiet = 1, sp.per_class = per_class;
    sp.rank = dist_rank(), sp.world = dist_world();
    sp.labels = labels && labels[0] ? labels : NULL;
    *names = NULL, *nnames = 0;
    if (!strcmp(sp.source, "folder") && names_src && names_src[0] && strcmp(names_src, paths) &&
        strcmp(names_kind, "synthetic")) {
        if (classes_of_source(names_kind, names_src, names, nnames) == 0) {
            snprintf(from, fromlen, "'%s'", names_src);
            sp.class_names = *names, sp.nclass_names = *nnames, sp.names_from = from;
        } else if (dist_rank() == 0 && !sp.labels) {
            // said once: the sources are checked before a run and read again later
            static char warned[CFG_PATH];
            if (strcmp(warned, paths)) {
                snprintf(warned, sizeof warned, "%s", paths);
                fprintf(stderr, "softmoe: warning: '%s' names no classes (no classes.txt beside "
                        "its shards, or no folder there): the image folder '%s' is numbered by "
                        "its sorted subfolders\n", names_src, paths);
            }
        }
    }
    return sp;
}

static Loader *open_eval(const Vit *m, const Config *c, const char *paths, int K, int per_class,
                         const char *names_kind, const char *names_src, const char *labels) {
    char **names, err[1024], from[CFG_PATH + 32];
    int nnames;
    LoaderSpec sp = eval_spec(c, paths, K, m->B, per_class, names_kind, names_src, labels, &names,
                              &nnames, from, sizeof from);
    Loader *l = loader_open(&sp, err, sizeof err);
    classes_free(names, nnames);  // used while opening only
    if (!l) sm_die("%s (evaluation data '%s')", err, paths);
    return l;
}

int eval_check_source(const Config *c, const char *paths, const char *names_src,
                      const char *labels, char *err, size_t errlen) {
    char **names, from[CFG_PATH + 32];
    int nnames;
    const char *kind = names_src == c->train ? c->source : names_src ? eval_source_kind(names_src) : "";
    LoaderSpec sp = eval_spec(c, paths, 0, 1, 0, kind, names_src, labels, &names, &nnames, from,
                              sizeof from);
    int rc = loader_check(&sp, err, errlen);
    classes_free(names, nnames);
    return rc;
}

// On a terminal (rank 0), one updating line while an evaluation reads its
// data: a Fashion-MNIST evaluation is otherwise tens of seconds of silence.
typedef struct { const char *what; double t0, last; long n; int tty; } Progress;

static void progress_start(Progress *p, const char *what) {
    *p = (Progress){.what = what, .t0 = sm_now(), .tty = dist_rank() == 0 && isatty(2)};
}

static void progress_add(Progress *p, int got) {
    p->n += got;
    double now = sm_now();
    if (!p->tty || (p->last > 0 && now - p->last < 0.5)) return;
    p->last = now;
    fprintf(stderr, "\r\033[Kevaluating %.60s: %ld images (%.0f img/s)", p->what,
            p->n * dist_world(), p->n * dist_world() / (now - p->t0 + 1e-9));
    fflush(stderr);
}

static void progress_end(const Progress *p) {
    if (p->tty && p->last > 0) fprintf(stderr, "\r\033[K"), fflush(stderr);
}

// The next evaluation batch of this rank (none once *done), padded so that
// every rank runs the same forwards with the same batch size: the Soft MoE
// all-to-alls pair up across ranks, and an image's outputs do not depend on
// the others in its batch, so zero images are harmless filler. Returns the
// batch to run (0: every rank is done); *got: this rank's real images.
static int next_eval_batch(Loader *l, const Vit *m, float *img, float *tgt, int *lab, int *done,
                           int *got) {
    const VitDims *d = &m->d;
    int g = *done ? 0 : loader_next(l, img, tgt, lab);
    if (g <= 0) g = 0, *done = 1;
    int B = dist_max(g);  // the largest batch of any rank
    size_t px = (size_t)d->img * d->img * d->C;
    if (g < B) {
        memset(img + (size_t)g * px, 0, (size_t)(B - g) * px * sizeof(float));
        if (tgt) memset(tgt + (size_t)g * d->K, 0, (size_t)(B - g) * d->K * sizeof(float));
    }
    *got = g;
    return B;
}

int eval_features(Vit *m, const Config *c, const char *paths, int per_class,
                  const char *names_src, float **X, int **y) {
    const int D = m->d.D, B = m->B;
    // A few-shot set has its own classes (not model.classes); a label past
    // EVAL_MAX_CLASSES is a damaged sample, skipped and counted by the loader.
    Loader *l = open_eval(m, c, paths, EVAL_MAX_CLASSES, per_class,
                         names_src ? eval_source_kind(names_src) : "", names_src, NULL);
    float *img = sm_aligned((size_t)B * m->d.img * m->d.img * m->d.C * sizeof(float));
    int *lab = sm_malloc((size_t)B * sizeof(int)), *count = NULL, ncount = 0;
    int n = 0, cap = 0, got, full = 0, done = 0, Bs;
    long since_new = 0;  // samples read since a class last gained an image
    Progress pr;
    progress_start(&pr, paths);
    float *Xl = NULL;
    int *yl = NULL;
    // Shards carry no class count: with a per-class cap, stop once every
    // class seen is full and 20 caps' worth of samples brought nothing new.
    while ((Bs = next_eval_batch(l, m, img, NULL, lab, &done, &got)) > 0) {
        vit_forward(m, img, NULL, Bs);
        progress_add(&pr, got);
        for (int b = 0; b < got; b++) {
            int k = lab[b];
            if (k >= ncount) {
                count = realloc(count, (size_t)(k + 1) * sizeof(int));
                SM_CHECK(count, "out of memory");
                memset(count + ncount, 0, (size_t)(k + 1 - ncount) * sizeof(int));
                ncount = k + 1;
            }
            if (per_class > 0 && count[k] >= per_class) {
                since_new++;
                continue;
            }
            since_new = 0;
            full += ++count[k] == per_class;
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                Xl = realloc(Xl, (size_t)cap * D * sizeof(float));
                yl = realloc(yl, (size_t)cap * sizeof(int));
                SM_CHECK(Xl && yl, "out of memory collecting features of '%s'", paths);
            }
            memcpy(Xl + (size_t)n * D, m->a.pooled + (size_t)b * D, (size_t)D * sizeof(float));
            yl[n++] = k;
        }
        if (per_class > 0 && full == ncount && since_new > 20L * per_class) done = 1;
    }
    progress_end(&pr);
    loader_close(l);
    free(img), free(lab), free(count);
    // Every rank gets every rank's features (in rank order); the cap is then
    // applied again over the whole set, since each rank capped its own share.
    float *Xa;
    int *ya;
    size_t na = dist_allgather_rows(Xl, yl, (size_t)n, D, &Xa, &ya);
    free(Xl), free(yl);
    n = 0;
    if (per_class > 0) {
        int kmax = 0;
        for (size_t i = 0; i < na; i++) kmax = ya[i] + 1 > kmax ? ya[i] + 1 : kmax;
        int *cnt = sm_calloc((size_t)kmax + 1, sizeof(int));
        for (size_t i = 0; i < na; i++) {
            if (cnt[ya[i]]++ >= per_class) continue;
            if ((size_t)n != i) memmove(Xa + (size_t)n * D, Xa + i * D, (size_t)D * sizeof(float));
            ya[n++] = ya[i];
        }
        free(cnt);
    } else {
        n = (int)na;
    }
    *X = Xa, *y = ya;
    SM_CHECK(n > 0, "evaluation data '%s' gave no usable image", paths);
    return n;
}

int eval_correct(const float *logits, const float *targets, int B, int K) {
    int correct = 0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        int best = 0;
        for (int k = 1; k < K; k++) best = z[k] > z[best] ? k : best;
        correct += targets[(size_t)b * K + best] > 0.5f;
    }
    return correct;
}

int eval_val(Vit *m, const Config *c, double *prec1, double *loss, long *n) {
    if (!c->val[0]) return 0;
    const VitDims *d = &m->d;
    Loader *l = open_eval(m, c, c->val, d->K, 0, c->source, c->train, c->val_labels);
    float *img = sm_aligned((size_t)m->B * d->img * d->img * d->C * sizeof(float));
    float *tgt = sm_malloc((size_t)m->B * d->K * sizeof(float));
    double v[3] = {0, 0, 0};  // correct, seen, loss sum (summed over ranks)
    int Bs, got, done = 0;
    Progress pr;
    progress_start(&pr, c->val);
    while ((Bs = next_eval_batch(l, m, img, tgt, NULL, &done, &got)) > 0) {
        vit_forward(m, img, NULL, Bs);
        progress_add(&pr, got);
        if (got == 0) continue;
        v[2] += loss_forward(NULL, m->a.logits, tgt, got, d->K, d->loss) * got;
        v[0] += eval_correct(m->a.logits, tgt, got, d->K);
        v[1] += got;
    }
    progress_end(&pr);
    loader_close(l);
    free(img), free(tgt);
    dist_sum(v, 3);
    SM_CHECK(v[1] > 0, "data.val '%s' gave no usable sample", c->val);
    if (n) *n = (long)v[1];
    *prec1 = v[0] / v[1];
    *loss = v[2] / v[1];
    return 1;
}

void eval_fewshot(Vit *m, const Config *c, long step, FILE *out, const char *out_name, int quiet) {
    // fewshot.l2_sweep, or fewshot.l2 alone
    const double *l2s = c->n_l2_sweep ? c->l2_sweep : &c->fewshot_l2;
    const int nl2 = c->n_l2_sweep ? c->n_l2_sweep : 1, nshots = c->n_shots;
    const int *shots = c->shots;
    for (int f = 0; f < c->n_fewshot; f++) {
        const char *train = c->fewshot_train[f], *test = c->fewshot_test[f];
        float *Xtr, *Xte;
        int *ytr, *yte, K = 0;
        int ntr = eval_features(m, c, train, c->fewshot_per_class, NULL, &Xtr, &ytr);
        int nte = eval_features(m, c, test, 0, train, &Xte, &yte);
        for (int i = 0; i < ntr; i++) K = ytr[i] + 1 > K ? ytr[i] + 1 : K;
        for (int i = 0; i < nte; i++) K = yte[i] + 1 > K ? yte[i] + 1 : K;
        JsonLine j;
        jsonl_begin(&j, out, out_name);
        jsonl_int(&j, "step", step);
        for (int s = 0; s < nshots; s++) {
            double best_l2 = 0;
            double acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, m->d.D, K, (int)shots[s],
                                      c->fewshot_seeds, l2s, nl2, &best_l2);
            if (acc == -2) continue;  // the solver failed and said so, naming the l2
            if (acc < 0) {
                if (!quiet)
                    fprintf(stderr, "softmoe: fewshot/%s: a class has fewer than %d train "
                            "images (fewshot.per_class = %d); %d-shot skipped\n",
                            c->fewshot_name[f], (int)shots[s], c->fewshot_per_class, (int)shots[s]);
                continue;
            }
            jsonl_numf(&j, 6, acc, "fewshot/%s/%dshot", c->fewshot_name[f], (int)shots[s]);
            if (!quiet)
                fprintf(stderr, "softmoe: step %ld: fewshot/%s/%dshot %.4f (l2 %g, %d seeds, %d "
                        "classes, %d test images)\n", step, c->fewshot_name[f], (int)shots[s], acc,
                        best_l2, c->fewshot_seeds, K, nte);
        }
        jsonl_end(&j);
        free(Xtr), free(ytr), free(Xte), free(yte);
    }
}
