// Folder sources (see folder.h).
#include "folder.h"

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../core/common.h"
#include "classes.h"

typedef struct { FolderFile *v; int n, cap; } Files;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void add(Files *f, const char *dir, const char *name, int label) {
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 256;
        f->v = realloc(f->v, (size_t)f->cap * sizeof *f->v);
        SM_CHECK(f->v, "out of memory listing '%s'", dir);
    }
    char *p = sm_malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    f->v[f->n++] = (FolderFile){p, label};
}

// Sorted regular files of dir (hidden ones and classes.txt skipped).
static int list_files(const char *dir, char ***names, int *n) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0;
    *names = NULL, *n = 0;
    char path[4096];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "classes.txt")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 256;
            *names = realloc(*names, (size_t)cap * sizeof(char *));
            SM_CHECK(*names, "out of memory listing '%s'", dir);
        }
        (*names)[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    return 0;
}

// Appends "a, b, c" (at most 10 names, then "... (N in all)") to out.
static void name_list(char *out, size_t len, char *const *v, int n) {
    size_t o = strlen(out);
    for (int i = 0; i < n && i < 10 && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", v[i]);
    if (n > 10 && o < len) snprintf(out + o, len - o, ", ... (%d in all)", n);
}

// The label of a labels-file entry: a class name, or a 1-based class number.
static int resolve(const FolderSpec *fs, const char *lab, int K) {
    if (fs->names) {
        int k = classes_find(fs->names, fs->nnames, lab);
        if (k >= 0) return k;
    }
    char *end;
    long v = strtol(lab, &end, 10);
    if (end != lab && !*end && v >= 1 && (K <= 0 || v <= K)) return (int)v - 1;
    return -1;
}

typedef struct { const char *name; size_t len; int i; } Stem;  // a file name without extension

static int stem_cmp(const char *a, size_t la, const char *b, size_t lb) {
    int c = strncmp(a, b, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

static int cmp_stem(const void *x, const void *y) {
    const Stem *a = x, *b = y;
    return stem_cmp(a->name, a->len, b->name, b->len);
}

// The index of the file named `name` exactly (files sorted) or by its stem
// ("ILSVRC2012_val_00000001" for ILSVRC2012_val_00000001.JPEG); -1 if none.
static int find_file(char **files, const Stem *stems, int nf, const char *name) {
    char *const *hit = bsearch(&name, files, (size_t)nf, sizeof *files, cmp_str);
    if (hit) return (int)(hit - files);
    size_t ln = strlen(name);
    int lo = 0, hi = nf - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = stem_cmp(name, ln, stems[mid].name, stems[mid].len);
        if (!c) return stems[mid].i;
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return -1;
}

// A flat folder: file names with labels from a CSV (file,label ...) or from a
// list of one label per line in sorted file order.
static int flat(const FolderSpec *fs, Files *out, char *err, size_t errlen) {
    char **files;
    int nf;
    if (list_files(fs->root, &files, &nf) != 0 || nf == 0)
        return sm_fail(err, errlen, "data: folder '%s' has no images", fs->root);
    qsort(files, (size_t)nf, sizeof *files, cmp_str);
    FILE *f = fopen(fs->labels, "r");
    if (!f) {
        classes_free(files, nf);
        return sm_fail(err, errlen, "data: cannot read labels file '%s' (data.val_labels)", fs->labels);
    }
    // (stem, index) sorted by stem: a CSV names 50,000 files, found by bisection
    Stem *stems = sm_malloc((size_t)nf * sizeof *stems);
    for (int i = 0; i < nf; i++) {
        stems[i].name = files[i], stems[i].i = i;
        const char *dot = strrchr(files[i], '.');
        stems[i].len = dot ? (size_t)(dot - files[i]) : strlen(files[i]);
    }
    qsort(stems, (size_t)nf, sizeof *stems, cmp_stem);
    int K = fs->K > 0 ? fs->K : fs->nnames, lineno = 0, listed = 0, rc = 0;
    char line[4096];
    int *label = sm_malloc((size_t)nf * sizeof(int));
    for (int i = 0; i < nf; i++) label[i] = -1;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        char *comma = strchr(line, ','), *lab = comma ? comma + 1 : line;
        while (isspace((unsigned char)*lab)) lab++;
        lab[strcspn(lab, " \t")] = '\0';  // LOC_val_solution.csv: "wnid x y x y ..."
        int idx;
        if (comma) {
            *comma = '\0';
            idx = find_file(files, stems, nf, line);
            if (idx < 0) {
                if (lineno == 1) continue;  // a header line ("ImageId,PredictionString")
                rc = sm_fail(err, errlen, "data: %s:%d: no file '%s' in '%s'", fs->labels, lineno,
                             line, fs->root);
                break;
            }
        } else {
            idx = listed++;
            if (idx >= nf) {
                rc = sm_fail(err, errlen, "data: %s has more labels than '%s' has files (%d)",
                             fs->labels, fs->root, nf);
                break;
            }
        }
        if ((label[idx] = resolve(fs, lab, K)) < 0)
            rc = sm_fail(err, errlen, "data: %s:%d: label '%s' is neither a training class name "
                         "nor a class number 1..%d", fs->labels, lineno, lab, K);
    }
    fclose(f);  // read-only
    if (rc == 0 && listed && listed != nf)
        rc = sm_fail(err, errlen, "data: %s lists %d labels for the %d files of '%s' (one per file "
                     "in sorted order)", fs->labels, listed, nf, fs->root);
    for (int i = 0; i < nf && rc == 0; i++) {
        if (label[i] < 0)
            rc = sm_fail(err, errlen, "data: %s has no label for '%s'", fs->labels, files[i]);
        else
            add(out, fs->root, files[i], label[i]);
    }
    free(label), free(stems);
    classes_free(files, nf);
    return rc;
}

// A training run checks its sources before any work and reads them again
// later: the missing-classes warning is said once per folder and process.
static int first_warning(const char *root) {
    static char said[16][256];
    static int nsaid;
    for (int i = 0; i < nsaid; i++)
        if (!strncmp(said[i], root, sizeof said[i] - 1)) return 0;
    if (nsaid < 16) snprintf(said[nsaid++], sizeof said[0], "%s", root);
    return 1;
}

int folder_list(const FolderSpec *fs, FolderFile **files, int *n, char *err, size_t errlen) {
    Files out = {0};
    char **sub;
    int nsub;
    *files = NULL, *n = 0;
    if (classes_of_folder(fs->root, &sub, &nsub) != 0)
        return sm_fail(err, errlen, "data: cannot read image folder '%s'", fs->root);
    if (nsub == 0) {
        classes_free(sub, nsub);
        if (!fs->labels || !fs->labels[0])
            return sm_fail(err, errlen, "data: image folder '%s' has no class subfolders (for a flat "
                           "ImageNet validation folder set data.val_labels to its labels file: a "
                           "list with one class per line in file order, or a CSV of file,wnid)",
                           fs->root);
        int rc = flat(fs, &out, err, errlen);
        if (rc != 0) { folder_free(out.v, out.n); return -1; }
        *files = out.v, *n = out.n;
        return 0;
    }
    // Subfolder -> class index: by name among fs->names, else sorted position.
    int nnames = fs->names ? fs->nnames : nsub;
    char **extra = sm_calloc((size_t)nsub + 1, sizeof(char *)), **absent;
    int nextra = 0, nabsent = 0;
    unsigned char *present = sm_calloc((size_t)nnames + 1, 1);
    for (int c = 0; c < nsub; c++) {
        int k = fs->names ? classes_find(fs->names, fs->nnames, sub[c]) : c;
        if (k < 0) { extra[nextra++] = sub[c]; continue; }
        present[k] = 1;
        char dir[4096], **fl;
        int nf;
        snprintf(dir, sizeof dir, "%s/%s", fs->root, sub[c]);
        if (list_files(dir, &fl, &nf) != 0) continue;
        qsort(fl, (size_t)nf, sizeof *fl, cmp_str);
        for (int i = 0; i < nf; i++)
            if (fs->per_class <= 0 || i < fs->per_class) add(&out, dir, fl[i], k);
        classes_free(fl, nf);
    }
    absent = sm_calloc((size_t)nnames + 1, sizeof(char *));
    for (int k = 0; fs->names && k < nnames; k++)
        if (!present[k]) absent[nabsent++] = fs->names[k];
    if (fs->warn && (nextra || nabsent) && first_warning(fs->root)) {
        char msg[2048] = "";
        if (nabsent) {
            snprintf(msg, sizeof msg, "%d of the %d training classes have no folder here (scored "
                     "as never seen): ", nabsent, nnames);
            name_list(msg, sizeof msg, absent, nabsent);
        }
        if (nextra) {
            size_t o = strlen(msg);
            snprintf(msg + o, sizeof msg - o, "%s%d folders are not training classes (skipped): ",
                     nabsent ? "; " : "", nextra);
            name_list(msg, sizeof msg, extra, nextra);
        }
        fprintf(stderr, "softmoe: warning: image folder '%s' against the classes of %s: %s\n",
                fs->root, fs->names_from ? fs->names_from : "training", msg);
    }
    free(extra), free(absent), free(present);
    classes_free(sub, nsub);
    if (out.n == 0)
        return sm_fail(err, errlen, "data: image folder '%s' has no images in class subfolders%s",
                       fs->root, fs->names ? " named like the training classes" : "");
    if (fs->K > 0 && nnames > fs->K) {
        folder_free(out.v, out.n);
        return sm_fail(err, errlen, "data: folder '%s' has %d classes but model.classes = %d",
                       fs->root, nnames, fs->K);
    }
    *files = out.v, *n = out.n;
    return 0;
}

void folder_free(FolderFile *files, int n) {
    for (int i = 0; i < n; i++) free(files[i].path);
    free(files);
}
