// What changed between a checkpoint's resolved config and the run's: a
// resume that would silently follow another optimisation recipe (loss, lr,
// schedule, batch, seed, training data) is refused unless
// train.allow_config_change is set; other changes (steps, evaluation,
// logging, workdir) are only reported.
#pragma once
#include <stddef.h>

// old_ini, new_ini: config_to_ini texts. Writes "section.key: old -> new"
// lines into report (empty when nothing changed). Returns the number of
// changed keys that alter the training trajectory (0: safe to resume).
int cfgdiff(const char *old_ini, const char *new_ini, char *report, size_t n);
