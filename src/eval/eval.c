// Evaluators over a trained ViT (see eval.h): features, validation prec@1 and
// loss, and big_vision's few-shot linear probe.
#include "eval.h"

#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../data/loader.h"
#include "fewshot.h"

const char *eval_source_kind(const char *paths) { return strstr(paths, ".tar") ? "shards" : "folder"; }

static Loader *open_eval(const Vit *m, const Config *c, const char *paths, int K, int per_class) {
    LoaderSpec sp = loader_spec_config(c, 0);
    sp.source = eval_source_kind(paths), sp.paths = paths, sp.K = K, sp.B = m->B;
    sp.quiet = 1, sp.per_class = per_class;
    char err[1024];
    Loader *l = loader_open(&sp, err, sizeof err);
    if (!l) sm_die("%s (evaluation data '%s')", err, paths);
    return l;
}

int eval_features(Vit *m, const Config *c, const char *paths, int per_class, float **X, int **y) {
    const int D = m->d.D, B = m->B;
    Loader *l = open_eval(m, c, paths, 0, per_class);
    float *img = sm_aligned((size_t)B * m->d.S * m->d.S * m->d.C * sizeof(float));
    int *lab = sm_malloc((size_t)B * sizeof(int)), *count = NULL, ncount = 0;
    int n = 0, cap = 0, got, full = 0;
    long since_new = 0;  // samples read since a class last gained an image
    *X = NULL, *y = NULL;
    // Shards carry no class count: with a per-class cap, stop once every
    // class seen is full and 20 caps' worth of samples brought nothing new.
    while (!(per_class > 0 && full == ncount && since_new > 20L * per_class) &&
           (got = loader_next(l, img, NULL, lab)) > 0) {
        vit_forward(m, img, NULL, got);
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
                *X = realloc(*X, (size_t)cap * D * sizeof(float));
                *y = realloc(*y, (size_t)cap * sizeof(int));
                SM_CHECK(*X && *y, "out of memory collecting features of '%s'", paths);
            }
            memcpy(*X + (size_t)n * D, m->a.pooled + (size_t)b * D, (size_t)D * sizeof(float));
            (*y)[n++] = k;
        }
    }
    loader_close(l);
    free(img), free(lab), free(count);
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

int eval_val(Vit *m, const Config *c, double *prec1, double *loss) {
    if (!c->val[0]) return 0;
    const VitDims *d = &m->d;
    Loader *l = open_eval(m, c, c->val, d->K, 0);
    float *img = sm_aligned((size_t)m->B * d->S * d->S * d->C * sizeof(float));
    float *tgt = sm_malloc((size_t)m->B * d->K * sizeof(float));
    long correct = 0, seen = 0;
    double lsum = 0;
    int B;
    while ((B = loader_next(l, img, tgt, NULL)) > 0) {
        lsum += vit_forward(m, img, tgt, B) * B;
        correct += eval_correct(m->a.logits, tgt, B, d->K);
        seen += B;
    }
    loader_close(l);
    free(img), free(tgt);
    SM_CHECK(seen > 0, "data.val '%s' gave no usable sample", c->val);
    *prec1 = (double)correct / (double)seen;
    *loss = lsum / (double)seen;
    return 1;
}

// Comma-separated numbers into out (at most max); returns how many.
static int parse_list(const char *s, double *out, int max) {
    int n = 0;
    char *end;
    while (*s && n < max) {
        double v = strtod(s, &end);
        if (end == s) break;
        out[n++] = v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

void eval_fewshot(Vit *m, const Config *c, long step, FILE *out, int quiet) {
    double shots[16], l2s[32];
    int nshots = parse_list(c->fewshot_shots, shots, 16);
    int nl2 = c->fewshot_l2_sweep[0] ? parse_list(c->fewshot_l2_sweep, l2s, 32) : 0;
    if (nl2 == 0) l2s[0] = c->fewshot_l2, nl2 = 1;
    for (int f = 0; f < c->n_fewshot; f++) {
        char train[CFG_PATH], *test;
        snprintf(train, sizeof train, "%s", c->fewshot_data[f]);
        test = strchr(train, '|');
        *test++ = '\0';
        float *Xtr, *Xte;
        int *ytr, *yte, K = 0;
        int ntr = eval_features(m, c, train, c->fewshot_per_class, &Xtr, &ytr);
        int nte = eval_features(m, c, test, 0, &Xte, &yte);
        for (int i = 0; i < ntr; i++) K = ytr[i] + 1 > K ? ytr[i] + 1 : K;
        for (int i = 0; i < nte; i++) K = yte[i] + 1 > K ? yte[i] + 1 : K;
        if (out) fprintf(out, "{\"step\": %ld", step);
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
            if (out) fprintf(out, ", \"fewshot/%s/%dshot\": %.6g", c->fewshot_name[f], (int)shots[s], acc);
            if (!quiet)
                fprintf(stderr, "softmoe: step %ld: fewshot/%s/%dshot %.4f (l2 %g, %d seeds, %d "
                        "classes, %d test images)\n", step, c->fewshot_name[f], (int)shots[s], acc,
                        best_l2, c->fewshot_seeds, K, nte);
        }
        if (out) fprintf(out, "}\n"), fflush(out);
        free(Xtr), free(ytr), free(Xte), free(yte);
    }
}
