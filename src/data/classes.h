// Class names: the sorted subfolder names of an image folder, or the
// classes.txt that `softmoe shards` writes beside its shards (one name per
// line, line i = class index i).
#pragma once
#include <stddef.h>

// The sorted names of the subdirectories of dir (hidden ones skipped).
// Returns 0, or -1 when dir cannot be read.
int classes_of_folder(const char *dir, char ***names, int *n);
// Reads a classes.txt. Returns 0, or -1 when it cannot be read.
int classes_read(const char *path, char ***names, int *n);
// Writes names, one a line, to path (via path.tmp and a rename). 0 or -1 with err.
int classes_write(const char *path, char *const *names, int n, char *err, size_t errlen);
// The class names a data source has: a folder's sorted subfolders (the
// loader's numbering); shards: classes.txt in the directory of the first pattern.
// Returns 0 with *n > 0, or -1 when the source names no classes.
int classes_of_source(const char *source, const char *paths, char ***names, int *n);
// The directory holding a source's classes.txt (for shards: of the first
// pattern), into out.
void classes_dir(const char *source, const char *paths, char *out, size_t outlen);
// Index of name in names, or -1.
int classes_find(char *const *names, int n, const char *name);
void classes_free(char **names, int n);
