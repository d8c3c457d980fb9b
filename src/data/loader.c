// The threaded, deterministic input pipeline (see loader.h). One producer
// thread reads shards (or folder files) in the epoch's order through the
// shuffle buffer and numbers the samples of the stream; decode threads turn
// numbered samples into preprocessed floats in a ring; loader_next takes the
// ring in stream order, skipping samples that failed.
#include "loader.h"
#include "folder.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../core/common.h"
#include "../core/rng.h"
#include "image.h"
#include "shards.h"

enum { SLOT_EMPTY, SLOT_RAW, SLOT_BUSY, SLOT_DONE, SLOT_END };

typedef struct {
    uint8_t *bytes;
    size_t len;
    int nlabels, labels[SHARD_MAX_LABELS];
    char why[300];            // non-empty: skip this sample, for this reason
    char where[SHARD_KEY + 600];  // shard and key, for the log
} Raw;

typedef struct {
    int state;
    uint64_t gidx;            // position in the ring's stream since (re)start
    uint64_t epoch, ord;      // epoch, and index in that epoch's stream
    Raw raw;
    int ok;
    float *img;               // (S,S,C)
} Slot;

typedef struct {
    char *path;               // shard path or image file
    int label;                // folder mode: the class index
} Unit;

struct Loader {
    LoaderSpec sp;
    PpChain pp;
    Unit *units;
    int nunits, folder;
    // ring
    Slot *ring;
    int Q;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t producer, *workers;
    int stop;
    // producer state
    LoaderPos start;
    uint64_t prod_gidx;
    // consumer state
    uint64_t cons_gidx, cur_epoch, taken, skipped, ok_in_epoch, epoch_size;
    int done;
    char fatal[512];
};

static void raw_free(Raw *r) {
    free(r->bytes);
    memset(r, 0, sizeof *r);
}

// ---- sources ----

static int add_unit(Loader *l, int *cap, char *path, int label) {
    if (l->nunits == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        l->units = realloc(l->units, (size_t)*cap * sizeof(Unit));
        SM_CHECK(l->units, "out of memory");
    }
    l->units[l->nunits++] = (Unit){path, label};
    return 0;
}

static int open_folder(Loader *l, char *err, size_t n) {
    FolderSpec fs = {.root = l->sp.paths, .names = l->sp.class_names, .nnames = l->sp.nclass_names,
                     .names_from = l->sp.names_from, .labels = l->sp.labels,
                     .per_class = l->sp.per_class, .K = l->sp.K, .warn = l->sp.rank == 0};
    FolderFile *files;
    int nf, cap = 0;
    if (folder_list(&fs, &files, &nf, err, n) != 0) return -1;
    for (int i = 0; i < nf; i++) add_unit(l, &cap, files[i].path, files[i].label);
    free(files);  // the paths now belong to the units
    return 0;
}

static int open_shards(Loader *l, char *err, size_t n) {
    char **paths;
    int np, cap = 0;
    if (shards_expand(l->sp.paths, &paths, &np, err, n) != 0) return -1;
    for (int i = 0; i < np; i++) {
        struct stat st;
        if (stat(paths[i], &st) != 0) {
            snprintf(err, n, "data: shard '%s' (from '%s') does not exist", paths[i], l->sp.paths);
            shards_free_list(paths, np);
            return -1;
        }
        add_unit(l, &cap, strdup(paths[i]), -1);
    }
    shards_free_list(paths, np);
    if (l->nunits == 0) {
        snprintf(err, n, "data: '%s' names no shard", l->sp.paths);
        return -1;
    }
    if (l->nunits < l->sp.world && l->sp.train) {
        snprintf(err, n, "data: %d shards cannot be split over %d ranks; write more shards",
                 l->nunits, l->sp.world);
        return -1;
    }
    return 0;
}

// ---- producer ----

// Hands one numbered sample to the ring (blocks while the ring is full).
// Returns 0, or -1 when the loader is stopping.
static int emit(Loader *l, Raw *r, uint64_t epoch, uint64_t ord, int end) {
    uint64_t g = l->prod_gidx++;
    Slot *s = &l->ring[g % (uint64_t)l->Q];
    pthread_mutex_lock(&l->mu);
    while (s->state != SLOT_EMPTY && !l->stop) pthread_cond_wait(&l->cv, &l->mu);
    if (l->stop) {
        pthread_mutex_unlock(&l->mu);
        raw_free(r);
        return -1;
    }
    s->gidx = g, s->epoch = epoch, s->ord = ord, s->ok = 0;
    if (r) s->raw = *r;
    else memset(&s->raw, 0, sizeof s->raw);
    s->state = end ? SLOT_END : SLOT_RAW;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    return 0;
}

typedef struct {
    Raw *buf;
    int n, cap;
    Rng rng;
} ShufBuf;

// Reads unit u into the stream through the shuffle buffer; out(raw) is called
// for each sample leaving the buffer. Returns -1 when stopping.
typedef struct {
    Loader *l;
    uint64_t epoch, ord, skip_until;
} Stream;

static int stream_out(Stream *st, Raw *r) {
    if (st->ord < st->skip_until) {  // replaying up to a restored position
        raw_free(r);
        st->ord++;
        return 0;
    }
    return emit(st->l, r, st->epoch, st->ord++, 0);
}

static int shuf_push(Stream *st, ShufBuf *sb, Raw *r) {
    if (sb->cap <= 1) return stream_out(st, r);
    if (sb->n < sb->cap) {
        sb->buf[sb->n++] = *r;
        return 0;
    }
    uint32_t j = rng_below(&sb->rng, (uint32_t)sb->n);
    Raw out = sb->buf[j];
    sb->buf[j] = *r;
    return stream_out(st, &out);
}

static int shuf_drain(Stream *st, ShufBuf *sb) {
    while (sb->n > 0) {
        uint32_t j = rng_below(&sb->rng, (uint32_t)sb->n);
        Raw out = sb->buf[j];
        sb->buf[j] = sb->buf[--sb->n];
        if (stream_out(st, &out) != 0) return -1;
    }
    return 0;
}

static void set_why(Raw *r, const char *why) { snprintf(r->why, sizeof r->why, "%s", why); }

static int read_unit(Loader *l, const Unit *u, Stream *st, ShufBuf *sb) {
    if (l->folder) {
        Raw r = {0};
        snprintf(r.where, sizeof r.where, "%s", u->path);
        r.nlabels = 1, r.labels[0] = u->label;
        FILE *f = fopen(u->path, "rb");
        if (!f) set_why(&r, "cannot open the file");
        else {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            if (n <= 0 || n > (64L << 20)) set_why(&r, n <= 0 ? "empty file" : "file over 64 MiB");
            else {
                r.bytes = sm_malloc((size_t)n);
                r.len = fread(r.bytes, 1, (size_t)n, f);
                if (r.len != (size_t)n) set_why(&r, "short read");
            }
            fclose(f);
        }
        return shuf_push(st, sb, &r);
    }
    char err[512];
    ShardReader *rd = shard_open(u->path, err, sizeof err);
    if (!rd) {
        Raw r = {0};
        snprintf(r.where, sizeof r.where, "%s", u->path);
        set_why(&r, "shard cannot be opened");
        return shuf_push(st, sb, &r);
    }
    ShardSample s;
    int rc;
    while ((rc = shard_next(rd, &s, err, sizeof err)) == 1) {
        Raw r = {0};
        snprintf(r.where, sizeof r.where, "shard %s, key %s", u->path, s.key);
        if (s.damaged) set_why(&r, "a member cut short by damage in the shard");
        else if (s.ambiguous) set_why(&r, "ambiguous: two .cls members with different labels");
        else if (!s.img || s.img_len == 0) set_why(&r, "no image member");
        else if (s.bad_label) set_why(&r, "unparsable .cls label");
        else if (s.nlabels == 0) set_why(&r, "no .cls label");
        else {
            r.bytes = sm_malloc(s.img_len);
            memcpy(r.bytes, s.img, s.img_len);
            r.len = s.img_len;
            r.nlabels = s.nlabels;
            memcpy(r.labels, s.labels, sizeof r.labels);
        }
        if (shuf_push(st, sb, &r) != 0) {
            shard_close(rd);
            return -1;
        }
    }
    shard_close(rd);
    if (rc < 0) {
        Raw r = {0};
        snprintf(r.where, sizeof r.where, "%s", err);
        set_why(&r, "truncated or corrupt shard (rest of the shard lost)");
        return shuf_push(st, sb, &r);
    }
    return 0;
}

static void *producer_main(void *arg) {
    Loader *l = arg;
    const LoaderSpec *sp = &l->sp;
    int *order = sm_malloc((size_t)l->nunits * sizeof(int));
    ShufBuf sb = {.cap = sp->train ? sp->shuffle_buffer : 0};
    sb.buf = sm_calloc((size_t)(sb.cap > 1 ? sb.cap : 1), sizeof(Raw));
    for (uint64_t epoch = l->start.epoch;; epoch++) {
        for (int i = 0; i < l->nunits; i++) order[i] = i;
        if (sp->train) {
            Rng r;
            rng_seed(&r, sp->seed, 0x5a4d0000ULL + epoch);
            for (int i = l->nunits - 1; i > 0; i--) {
                int j = (int)rng_below(&r, (uint32_t)i + 1), t = order[i];
                order[i] = order[j], order[j] = t;
            }
        }
        rng_seed(&sb.rng, sp->seed, 0xb0f0000000ULL + epoch * 65536 + (uint64_t)sp->rank);
        Stream st = {l, epoch, 0, epoch == l->start.epoch ? l->start.taken : 0};
        for (int i = sp->rank; i < l->nunits; i += sp->world)
            if (read_unit(l, &l->units[order[i]], &st, &sb) != 0) goto out;
        if (shuf_drain(&st, &sb) != 0) goto out;
        if (st.ord == 0 && sp->train) {
            pthread_mutex_lock(&l->mu);
            snprintf(l->fatal, sizeof l->fatal,
                     "data: epoch %llu of rank %d read no sample from '%s'",
                     (unsigned long long)epoch, sp->rank, sp->paths);
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
            goto out;
        }
        if (!sp->train) {
            emit(l, NULL, epoch, st.ord, 1);
            goto out;
        }
    }
out:
    for (int i = 0; i < sb.n; i++) raw_free(&sb.buf[i]);
    free(sb.buf);
    free(order);
    return NULL;
}

// ---- decode workers ----

static void decode_slot(Loader *l, Slot *s) {
    const LoaderSpec *sp = &l->sp;
    Raw *r = &s->raw;
    if (r->why[0]) return;
    for (int i = 0; i < r->nlabels; i++)
        if (r->labels[i] < 0 || (sp->K > 0 && r->labels[i] >= sp->K)) {
            snprintf(r->why, sizeof r->why, "label %d outside 0..%d (model.classes)", r->labels[i],
                     sp->K - 1);
            return;
        }
    char err[256];
    Image im;
    int min_side = pp_min_side(&l->pp);
    if (image_decode(r->bytes, r->len, sp->C, min_side, &im, err, sizeof err) != 0) {
        snprintf(r->why, sizeof r->why, "%s", err);
        return;
    }
    Rng rng;
    rng_seed(&rng, sp->seed + s->epoch * 0x9E3779B97F4A7C15ULL, 0x99000000000ULL + s->ord);
    if (pp_apply(&l->pp, &im, s->img, sp->S, &rng, err, sizeof err) != 0)
        snprintf(r->why, sizeof r->why, "%s", err);
    else
        s->ok = 1;
    image_free(&im);
}

static void *worker_main(void *arg) {
    Loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        Slot *pick = NULL;
        for (int i = 0; i < l->Q; i++) {
            Slot *s = &l->ring[i];
            if (s->state == SLOT_RAW && (!pick || s->gidx < pick->gidx)) pick = s;
        }
        if (l->stop) break;
        if (!pick) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        pick->state = SLOT_BUSY;
        pthread_mutex_unlock(&l->mu);
        decode_slot(l, pick);
        free(pick->raw.bytes);
        pick->raw.bytes = NULL;
        pthread_mutex_lock(&l->mu);
        pick->state = SLOT_DONE;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

// ---- lifecycle ----

static void start_threads(Loader *l, LoaderPos pos) {
    l->start = pos;
    l->stop = 0;
    l->prod_gidx = 0, l->cons_gidx = 0;
    l->cur_epoch = pos.epoch, l->taken = pos.taken;
    // samples taken before the restore count as this epoch's (usable) ones
    l->ok_in_epoch = pos.taken, l->done = 0;
    for (int i = 0; i < l->Q; i++) l->ring[i].state = SLOT_EMPTY;
    SM_CHECK(pthread_create(&l->producer, NULL, producer_main, l) == 0, "data: cannot start thread");
    for (int i = 0; i < l->sp.threads; i++)
        SM_CHECK(pthread_create(&l->workers[i], NULL, worker_main, l) == 0,
                 "data: cannot start thread");
}

static void stop_threads(Loader *l) {
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->producer, NULL);
    for (int i = 0; i < l->sp.threads; i++) pthread_join(l->workers[i], NULL);
    for (int i = 0; i < l->Q; i++) raw_free(&l->ring[i].raw);
}

LoaderSpec loader_spec_config(const Config *c, int train) {
    return (LoaderSpec){.source = c->source, .paths = train ? c->train : c->val,
                        .pp = train ? c->pp_train : c->pp_eval, .S = c->image_size,
                        .C = c->channels, .K = c->classes,
                        .B = train ? c->batch_size : c->eval_batch_size, .seed = c->seed,
                        .rank = 0, .world = 1, .threads = c->threads,
                        .shuffle_buffer = c->shuffle_buffer, .train = train};
}

// The preprocessing chain and the list of shards (or folder files), without
// decode threads: a loader that can be checked and closed again.
static Loader *open_sources(const LoaderSpec *spec, char *err, size_t n) {
    Loader *l = sm_calloc(1, sizeof *l);
    l->sp = *spec;
    if (l->sp.threads < 1) l->sp.threads = 1;
    l->folder = !strcmp(spec->source, "folder");
    if (pp_parse(spec->pp, &l->pp, err, n) != 0 ||
        (l->folder ? open_folder(l, err, n) : open_shards(l, err, n)) != 0) {
        loader_close(l);
        return NULL;
    }
    if (pp_output_size(&l->pp) != spec->S) {
        snprintf(err, n, "data: preprocessing '%s' gives %d px images but model.image_size = %d",
                 spec->pp, pp_output_size(&l->pp), spec->S);
        loader_close(l);
        return NULL;
    }
    return l;
}

int loader_check(const LoaderSpec *spec, char *err, size_t n) {
    Loader *l = open_sources(spec, err, n);
    if (!l) return -1;
    loader_close(l);
    return 0;
}

Loader *loader_open(const LoaderSpec *spec, char *err, size_t n) {
    Loader *l = open_sources(spec, err, n);
    if (!l) return NULL;
    l->Q = 2 * spec->B + 4 * l->sp.threads;
    l->ring = sm_calloc((size_t)l->Q, sizeof(Slot));
    for (int i = 0; i < l->Q; i++)
        l->ring[i].img = sm_malloc((size_t)spec->S * spec->S * spec->C * sizeof(float));
    l->workers = sm_calloc((size_t)l->sp.threads, sizeof(pthread_t));
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    start_threads(l, (LoaderPos){0, 0});
    return l;
}

static void log_skip(Loader *l, const Slot *s) {
    l->skipped++;
    if (l->sp.quiet || s->epoch != 0) return;  // each bad sample is logged once
    if (l->skipped <= 50 || l->skipped % 1000 == 0)
        fprintf(stderr, "softmoe: data: skipped %s: %s (%llu skipped so far)\n", s->raw.where,
                s->raw.why, (unsigned long long)l->skipped);
}

int loader_next(Loader *l, float *images, float *targets, int *labels) {
    const LoaderSpec *sp = &l->sp;
    const size_t px = (size_t)sp->S * sp->S * sp->C;
    if (targets) memset(targets, 0, (size_t)sp->B * sp->K * sizeof(float));
    int got = 0;
    pthread_mutex_lock(&l->mu);
    while (got < sp->B && !l->done) {
        Slot *s = &l->ring[l->cons_gidx % (uint64_t)l->Q];
        while (!l->fatal[0] &&
               !((s->state == SLOT_DONE || s->state == SLOT_END) && s->gidx == l->cons_gidx))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->fatal[0]) sm_die("%s", l->fatal);
        if (s->epoch != l->cur_epoch) {
            // the stream moved on to the next epoch
            if (l->ok_in_epoch == 0)
                sm_die("data: a whole epoch of '%s' gave no usable sample (%llu skipped); check "
                       "the data and model.classes", sp->paths, (unsigned long long)l->skipped);
            if (!l->epoch_size) l->epoch_size = l->taken;
            l->cur_epoch = s->epoch, l->taken = 0, l->ok_in_epoch = 0;
        }
        if (s->state == SLOT_END) {
            l->done = 1;
            break;
        }
        if (s->ok) {
            memcpy(images + (size_t)got * px, s->img, px * sizeof(float));
            for (int i = 0; targets && i < s->raw.nlabels; i++)
                targets[(size_t)got * sp->K + s->raw.labels[i]] = 1.0f;
            if (labels) labels[got] = s->raw.labels[0];
            got++;
            l->ok_in_epoch++;
        } else {
            log_skip(l, s);
        }
        raw_free(&s->raw);
        s->state = SLOT_EMPTY;
        l->cons_gidx++, l->taken++;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return got;
}

LoaderPos loader_pos(const Loader *l) { return (LoaderPos){l->cur_epoch, l->taken}; }
uint64_t loader_skipped(const Loader *l) { return l->skipped; }
uint64_t loader_epoch_size(const Loader *l) { return l->epoch_size; }

void loader_seek(Loader *l, LoaderPos pos) {
    stop_threads(l);
    start_threads(l, pos);
}

void loader_close(Loader *l) {
    if (!l) return;
    if (l->ring) {
        stop_threads(l);
        for (int i = 0; i < l->Q; i++) free(l->ring[i].img);
        free(l->ring);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
    }
    for (int i = 0; i < l->nunits; i++) free(l->units[i].path);
    free(l->units);
    free(l->workers);
    free(l);
}
