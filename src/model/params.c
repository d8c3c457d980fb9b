// Parameter table bookkeeping (see params.h).
#include "params.h"

#include <stdio.h>
#include <string.h>

#include "../core/common.h"

void ptable_init(ParamTable *pt) { memset(pt, 0, sizeof *pt); }

void ptable_free(ParamTable *pt) {
    free(pt->t);
    memset(pt, 0, sizeof *pt);
}

int ptable_add(ParamTable *pt, const char *name, InitKind init, float init_arg,
               int fan_in, int fan_out, int ndim, const int *shape) {
    SM_CHECK(ndim >= 0 && ndim <= PARAM_MAXDIM, "tensor %s: bad rank %d", name, ndim);
    SM_CHECK(strlen(name) < PARAM_NAME, "tensor name too long: %s", name);
    if (pt->n == pt->cap) {
        pt->cap = pt->cap ? 2 * pt->cap : 64;
        pt->t = realloc(pt->t, (size_t)pt->cap * sizeof *pt->t);
        SM_CHECK(pt->t, "out of memory growing the parameter table");
    }
    ParamSpec *s = &pt->t[pt->n];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->numel = 1;
    for (int i = 0; i < ndim; i++) {
        s->shape[i] = shape[i];
        s->numel *= (size_t)shape[i];
    }
    s->init = init;
    s->init_arg = init_arg;
    s->fan_in = fan_in;
    s->fan_out = fan_out;
    s->n_stack = 1;
    s->stack_total = 1;
    s->stack_first = 0;
    s->offset = pt->total;
    pt->total += (s->numel + 15) / 16 * 16;
    return pt->n++;
}

int ptable_find(const ParamTable *pt, const char *name) {
    for (int i = 0; i < pt->n; i++)
        if (strcmp(pt->t[i].name, name) == 0) return i;
    return -1;
}

void ptable_shape_str(const ParamSpec *s, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < s->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ",%d" : "%d", s->shape[i]);
    if (k < n) snprintf(buf + k, n - k, ")");
}

int ptable_is_expert(const ParamSpec *s) { return s->stack_total > 1; }

void ptable_global_shape(const ParamSpec *s, int *shape) {
    for (int k = 0; k < s->ndim; k++) shape[k] = s->shape[k];
    if (ptable_is_expert(s)) shape[0] = s->stack_total;
}

size_t ptable_global_numel(const ParamSpec *s) {
    return ptable_is_expert(s) ? s->numel / (size_t)s->n_stack * (size_t)s->stack_total : s->numel;
}

size_t ptable_global_total(const ParamTable *pt) {
    size_t n = 0;
    for (int i = 0; i < pt->n; i++) n += ptable_global_numel(&pt->t[i]);
    return n;
}
