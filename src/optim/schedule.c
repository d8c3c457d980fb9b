// The learning-rate schedule: warmup, decay, cooldown as a pure function of the step.
#include <math.h>
#include <string.h>

#include "../core/common.h"
#include "optim.h"

int sched_decay_kind(const char *name) {
    static const char *names[] = {"rsqrt", "cosine", "linear", "constant"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

// Fraction of the post-warmup steps done, in [0, 1]. When there are no
// post-warmup steps every step is warmup, so decay has not started yet.
static double progress(long step, long warmup, long total) {
    if (total <= warmup) return step > warmup ? 1.0 : 0.0;
    double p = (double)(step - warmup) / (double)(total - warmup);
    return p < 0 ? 0 : p > 1 ? 1 : p;
}

// The decay shape alone, before warmup and cooldown are applied.
static double decayed(const Config *c, long step) {
    double base = c->lr, p = progress(step, c->warmup_steps, c->steps);
    switch (sched_decay_kind(c->decay)) {
    case SCHED_LINEAR: return base * (1.0 - p);
    case SCHED_COSINE: return base * 0.5 * (1.0 + cos(M_PI * p));
    case SCHED_CONSTANT: return base;
    case SCHED_RSQRT: {
        // The shift makes the decay start at exactly base right after warmup.
        double shift = c->timescale - (double)c->warmup_steps;
        if (step <= c->warmup_steps) return base;
        SM_CHECK(c->timescale > 0, "schedule.timescale = %g: rsqrt decay needs a "
                 "timescale > 0 (in steps)", c->timescale);
        return base / sqrt(((double)step + shift) / c->timescale);
    }
    }
    sm_die("schedule.decay: unknown decay '%s' (use rsqrt, cosine, linear or constant)",
           c->decay);
}

double sched_lr(const Config *c, long step) {
    double lr = decayed(c, step);
    if (c->warmup_steps > 0) lr *= fmin(1.0, (double)step / (double)c->warmup_steps);
    if (c->cooldown_steps > 0) {
        // Clamped at 0 so a step past the end never yields a negative lr.
        double f = (double)(c->steps - step) / (double)c->cooldown_steps;
        lr *= f < 0 ? 0 : fmin(1.0, f);
    }
    return lr;
}
