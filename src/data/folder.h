// Image folders as data sources: ROOT/<class>/<image>, with classes numbered
// by the sorted names of the training classes (an evaluation folder maps its
// subfolders by name), or a flat folder of images with a labels file (an
// ImageNet validation directory as distributed).
#pragma once
#include <stddef.h>

typedef struct {
    char *path;   // malloc'd
    int label;
} FolderFile;

typedef struct {
    const char *root;
    char *const *names;    // class names defining the index (NULL: root's sorted subfolders)
    int nnames;
    const char *names_from; // where names came from, for the warning
    const char *labels;    // labels file for a flat root ("" or NULL: none)
    int per_class;         // at most this many files per class (0: all)
    int K;                 // model.classes (0: unchecked)
    int warn;              // print the missing-classes warning
} FolderSpec;

// Lists the files and their labels. Subfolders whose name is not among
// names are skipped, and a warning lists the classes missing on either side.
// Returns 0, or -1 with a message naming the folder (or labels file and line).
int folder_list(const FolderSpec *fs, FolderFile **files, int *n, char *err, size_t errlen);
void folder_free(FolderFile *files, int n);
