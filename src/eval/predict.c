// `softmoe predict` (see predict.h): images -> decode -> pp_eval -> forward
// in batches of eval.batch_size -> softmax (or sigmoid) -> top k.
#include "predict.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/common.h"
#include "../data/classes.h"
#include "../data/image.h"
#include "../model/layers.h"
#include "../model/vit.h"
#include "../train/ckpt.h"

int predict_ckpt_config(const char *ckpt, int nover, char **over, Config *c, long *step,
                        char *err, size_t errlen) {
    Vit probe;
    memset(&probe, 0, sizeof probe);
    CkptInfo info = {0};
    if (ckpt_load(ckpt, &probe.pt, NULL, NULL, NULL, &info, err, errlen) != 0) return -1;
    char name[CFG_PATH + 64];
    snprintf(name, sizeof name, "checkpoint '%s', dataset /config", ckpt);
    *step = info.step;
    int rc = config_load_text(c, name, info.config, nover, over, err, errlen);
    ckpt_info_free(&info);
    return rc == 0 ? vit_check_config(c, err, errlen) : -1;
}

typedef struct { char **v; int n, cap; } List;

static void list_add(List *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, (size_t)l->cap * sizeof(char *));
        SM_CHECK(l->v, "out of memory");
    }
    l->v[l->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Files under a folder, recursively, in sorted order (hidden ones skipped).
static void add_folder(List *l, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) sm_die("cannot read folder '%s': %s", dir, strerror(errno));
    List here = {0};
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') list_add(&here, e->d_name);
    closedir(d);
    if (here.n) qsort(here.v, (size_t)here.n, sizeof(char *), cmp_str);
    char path[4096];
    for (int i = 0; i < here.n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, here.v[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) add_folder(l, path);
        else if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && strcmp(here.v[i], "classes.txt"))
            list_add(l, path);
        free(here.v[i]);
    }
    free(here.v);
}

// Reads, decodes and preprocesses one file into out (S,S,C). 0 or -1 with err.
static int load_image(const char *path, const PpChain *pp, int S, int C, float *out, char *err,
                      size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return sm_fail(err, errlen, "cannot open: %s", strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) { free(buf); fclose(f); return sm_fail(err, errlen, "out of memory"); }
            buf = nb;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    int rd = ferror(f);
    fclose(f);  // read-only
    if (rd) { free(buf); return sm_fail(err, errlen, "read error"); }
    Image im;
    int rc = image_decode(buf, len, C, pp_min_side(pp), &im, err, errlen);
    free(buf);
    if (rc != 0) return -1;
    Rng r;
    rng_seed(&r, 0, 0);  // the eval chain has no random op; a fixed stream regardless
    rc = pp_apply(pp, &im, out, S, &r, err, errlen);
    image_free(&im);
    return rc;
}

// Prints one image's top k (probabilities from logits z of K classes).
static void report(const char *file, const float *z, int K, int top, int sigmoid, char **names,
                   int nnames, int json) {
    double *p = sm_malloc((size_t)K * sizeof(double)), mx = z[0], sum = 0;
    int *idx = sm_malloc((size_t)K * sizeof(int));
    for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
    for (int k = 0; k < K; k++) {
        p[k] = sigmoid ? 1.0 / (1.0 + exp(-(double)z[k])) : exp((double)z[k] - mx);
        sum += p[k];
        idx[k] = k;
    }
    if (!sigmoid)
        for (int k = 0; k < K; k++) p[k] /= sum;
    // partial selection sort: k is small; ties go to the lower class index
    for (int i = 0; i < top; i++)
        for (int j = i + 1; j < K; j++)
            if (p[idx[j]] > p[idx[i]] || (p[idx[j]] == p[idx[i]] && idx[j] < idx[i])) {
                int t = idx[i]; idx[i] = idx[j]; idx[j] = t;
            }
    if (json) {
        printf("{\"file\": \"");
        for (const char *c = file; *c; c++) printf(*c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
        printf("\", \"top\": [");
    } else {
        printf("%s:", file);
    }
    for (int i = 0; i < top; i++) {
        int k = idx[i];
        const char *name = k < nnames ? names[k] : NULL;
        if (json) {
            printf("%s{\"class\": %d", i ? ", " : "", k);
            if (name) {
                printf(", \"name\": \"");
                for (const char *c = name; *c; c++) printf(*c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
                printf("\"");
            }
            printf(", \"prob\": %.6g}", p[k]);
        } else {
            printf("  %d", k);
            if (name) printf(" %s", name);
            printf(" %.4f", p[k]);
        }
    }
    printf(json ? "]}\n" : "\n");
    free(p), free(idx);
}

static int usage_error(const char *msg) {
    fprintf(stderr, "softmoe: error: %s\nusage: softmoe predict CKPT.h5 IMAGE|FOLDER... [--top K] "
            "[--json] [section.key=value ...]\n", msg);
    return 2;
}

int predict_main(int argc, char **argv) {
    if (argc < 3) return usage_error("predict needs a checkpoint and at least one image");
    const char *ckpt = argv[1];
    int top = 5, json = 0, nover = 0;
    char **over = sm_calloc((size_t)argc, sizeof(char *));
    List files = {0};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--top")) {
            char *end;
            long k = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || *end || k < 1) return usage_error("--top needs a positive integer");
            top = (int)k, i++;
        } else if (eq && memchr(a, '.', (size_t)(eq - a)) && access(a, F_OK) != 0) {
            over[nover++] = argv[i];  // section.key=value (and not a file of that name)
        } else {
            struct stat st;
            if (stat(a, &st) != 0) {
                fprintf(stderr, "softmoe: error: image '%s': %s\n", a, strerror(errno));
                return 1;
            }
            if (S_ISDIR(st.st_mode)) add_folder(&files, a);
            else list_add(&files, a);
        }
    }
    if (!files.n) return usage_error("no image given (or the folders hold none)");
    Config c;
    long step;
    char err[1024];
    if (predict_ckpt_config(ckpt, nover, over, &c, &step, err, sizeof err) != 0) {
        fprintf(stderr, "softmoe: error: %s\n", err);
        return 1;
    }
    PpChain pp;
    if (pp_parse(c.pp_eval, &pp, err, sizeof err) != 0) sm_die("data.pp_eval: %s", err);
    Vit m;
    const int B = c.eval_batch_size;
    vit_build(&m, &c);
    vit_alloc(&m, B);
    vit_init(&m, c.seed);
    CkptInfo info = {0};
    if (ckpt_load(ckpt, &m.pt, m.params, NULL, NULL, &info, err, sizeof err) != 0) sm_die("%s", err);
    ckpt_info_free(&info);
    const VitDims *d = &m.d;
    if (top > d->K) top = d->K;
    char **names = NULL;
    int nnames = 0;
    if (classes_of_source(c.source, c.train, &names, &nnames) == 0 && nnames != d->K) {
        fprintf(stderr, "softmoe: warning: %d class names for data.train '%s', the model has %d "
                "classes: names not shown\n", nnames, c.train, d->K);
        classes_free(names, nnames), names = NULL, nnames = 0;
    }
    const size_t px = (size_t)d->img * d->img * d->C;
    float *img = sm_aligned((size_t)B * px * sizeof(float));
    int *which = sm_malloc((size_t)B * sizeof(int)), status = 0;
    for (int i0 = 0; i0 < files.n;) {
        int nb = 0;
        for (; i0 < files.n && nb < B; i0++) {
            if (load_image(files.v[i0], &pp, d->img, d->C, img + (size_t)nb * px, err, sizeof err)) {
                fprintf(stderr, "softmoe: error: image '%s': %s\n", files.v[i0], err);
                status = 1;
                continue;
            }
            which[nb++] = i0;
        }
        if (!nb) continue;
        vit_forward(&m, img, NULL, nb);
        for (int b = 0; b < nb; b++)
            report(files.v[which[b]], m.a.logits + (size_t)b * d->K, d->K, top,
                   d->loss == LOSS_SIGMOID_XENT, names, nnames, json);
    }
    fflush(stdout);
    for (int i = 0; i < files.n; i++) free(files.v[i]);
    free(files.v), free(img), free(which), free(over);
    classes_free(names, nnames);
    vit_free(&m);
    return status;
}
