// `softmoe predict CKPT IMAGE|FOLDER... [--top K] [--json]`: the top-k
// classes and probabilities of each image under the checkpoint's model and
// evaluation preprocessing, with class names when its training data names
// them (classes.txt, or a folder's class subfolders).
#pragma once
#include "../core/config.h"

// The resolved config stored in a checkpoint, plus overrides; *step from the
// checkpoint. Returns 0, or -1 with err.
int predict_ckpt_config(const char *ckpt, int nover, char **over, Config *c, long *step,
                        char *err, size_t errlen);
// The whole command (argv as given to `softmoe predict`, argv[0] = "predict").
// Returns the exit status: 0, 1 when some image could not be read, 2 on usage errors.
int predict_main(int argc, char **argv);
