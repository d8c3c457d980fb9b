// Class names of a data source (see classes.h).
#include "classes.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/common.h"

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// Appends a copy of s to a growing list.
static void push(char ***names, int *n, int *cap, const char *s) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *names = realloc(*names, (size_t)*cap * sizeof(char *));
        SM_CHECK(*names, "out of memory listing class names");
    }
    (*names)[*n] = strdup(s);
    SM_CHECK((*names)[*n], "out of memory listing class names");
    (*n)++;
}

int classes_of_folder(const char *dir, char ***names, int *n) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int cap = 0;
    *names = NULL, *n = 0;
    char path[4096];
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) push(names, n, &cap, e->d_name);
    }
    closedir(d);
    if (*n) qsort(*names, (size_t)*n, sizeof(char *), cmp_str);
    return 0;
}

int classes_read(const char *path, char ***names, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int cap = 0;
    *names = NULL, *n = 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        push(names, n, &cap, line);
    }
    int bad = ferror(f);
    fclose(f);  // read-only
    if (bad) {
        classes_free(*names, *n);
        return -1;
    }
    return 0;
}

int classes_write(const char *path, char *const *names, int n, char *err, size_t errlen) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return sm_fail(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
    int ok = 1;
    for (int i = 0; i < n && ok; i++) ok = fprintf(f, "%s\n", names[i]) >= 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return sm_fail(err, errlen, "writing '%s' failed: %s", path, strerror(e));
    }
    return 0;
}

void classes_dir(const char *source, const char *paths, char *out, size_t outlen) {
    if (!strcmp(source, "folder")) {
        snprintf(out, outlen, "%s", paths);
        return;
    }
    size_t first = strcspn(paths, ",");
    const char *slash = NULL;
    for (const char *p = paths; p < paths + first; p++)
        if (*p == '/') slash = p;
    if (slash) snprintf(out, outlen, "%.*s", (int)(slash - paths), paths);
    else snprintf(out, outlen, ".");
}

int classes_of_source(const char *source, const char *paths, char ***names, int *n) {
    char dir[4096], file[4200];
    *names = NULL, *n = 0;
    if (!paths[0]) return -1;
    classes_dir(source, paths, dir, sizeof dir);
    // a training folder numbers its classes by its sorted subfolders, as the loader does
    if (!strcmp(source, "folder")) return classes_of_folder(dir, names, n) == 0 && *n > 0 ? 0 : -1;
    snprintf(file, sizeof file, "%s/classes.txt", dir);
    if (classes_read(file, names, n) == 0 && *n > 0) return 0;
    return -1;
}

int classes_find(char *const *names, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return i;
    return -1;
}

void classes_free(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}
