// The parameter table: every tensor of the model, with its checkpoint name
// (vmoe/big_vision naming, docs/formats.md), shape, init rule and offset into one
// contiguous float block. Params, grads and Adam moments are each one block
// with the same layout, so the optimiser is one loop, an allreduce is one
// call and a checkpoint is one table walk.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define PARAM_NAME 128
#define PARAM_MAXDIM 4

typedef enum {
    INIT_ZEROS,
    INIT_ONES,
    INIT_CONST,          // value = arg
    INIT_NORMAL,         // N(0, arg)
    INIT_XAVIER_UNIFORM, // U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    INIT_LECUN_NORMAL,   // truncated normal, std sqrt(1/fan_in) (flax)
} InitKind;

typedef struct {
    char name[PARAM_NAME];    // e.g. "Encoder/encoderblock_0/Mlp/Dense_0/kernel"
    int ndim;
    int shape[PARAM_MAXDIM];
    size_t numel;
    size_t offset;            // into the block, in floats
    InitKind init;
    float init_arg;
    int fan_in, fan_out;      // for the variance-scaling inits
    int n_stack;              // >1 for stacked expert tensors (E, ...): init each slice
    // Stacked expert tensors under expert parallelism hold n_stack of the
    // stack_total experts, starting at global expert stack_first; shape[0] is
    // the local n_stack, the checkpoint's dataset has stack_total.
    int stack_total, stack_first;
} ParamSpec;

typedef struct {
    int n, cap;
    ParamSpec *t;
    size_t total;             // floats
} ParamTable;

void ptable_init(ParamTable *pt);
void ptable_free(ParamTable *pt);
// Appends a tensor; shape given as ndim ints. Offsets are assigned in order,
// each tensor 16-float aligned within the block. Returns its index.
int ptable_add(ParamTable *pt, const char *name, InitKind init, float init_arg,
               int fan_in, int fan_out, int ndim, const int *shape);
// Index of the tensor with this exact name, or -1.
int ptable_find(const ParamTable *pt, const char *name);
// Formats "(D,H,Dh)" style shape text (the local shape).
void ptable_shape_str(const ParamSpec *s, char *buf, size_t n);
// The whole tensor's shape and size (stack_total experts, as in a checkpoint).
void ptable_global_shape(const ParamSpec *s, int *shape);
size_t ptable_global_numel(const ParamSpec *s);
int ptable_is_expert(const ParamSpec *s);
// Parameters of the whole model (every expert), without padding.
size_t ptable_global_total(const ParamTable *pt);
