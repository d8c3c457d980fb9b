// Project-wide helpers: fatal errors with file:line, checked allocation and
// I/O. Every libc call whose failure we cannot recover from goes through
// these so the user always learns what failed and where.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

// Prints "softmoe: error: <msg>" (plus the source location when
// SOFTMOE_DEBUG=1) and exits 1.
void sm_die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define sm_die(...) sm_die_at(__FILE__, __LINE__, __VA_ARGS__)
// Set by the MPI layer: a tag such as "rank 3 of 8: " put in front of every
// fatal message, and the exit used instead of exit(1) (MPI_Abort, so that no
// other rank waits forever in a collective).
extern char sm_rank_tag[32];
extern void (*sm_fatal_exit)(int code);
// Set by the MPI layer on ranks other than 0: their fatal messages wait 2 s,
// so that an error every rank meets is printed once, by rank 0.
extern int sm_rank_nonzero;

// Assertions that stay on in release builds (ggml's habit).
#define SM_CHECK(cond, ...) \
    do { if (!(cond)) sm_die_at(__FILE__, __LINE__, __VA_ARGS__); } while (0)

void *sm_malloc_at(size_t n, const char *file, int line);
void *sm_calloc_at(size_t n, size_t size, const char *file, int line);
// 64-byte aligned, for the big parameter / activation blocks.
void *sm_aligned_at(size_t n, const char *file, int line);
#define sm_malloc(n) sm_malloc_at((n), __FILE__, __LINE__)
#define sm_calloc(n, s) sm_calloc_at((n), (s), __FILE__, __LINE__)
#define sm_aligned(n) sm_aligned_at((n), __FILE__, __LINE__)

FILE *sm_fopen_at(const char *path, const char *mode, const char *file, int line);
void sm_fread_at(void *p, size_t size, size_t n, FILE *f, const char *path,
                 const char *file, int line);
void sm_fclose_at(FILE *f, const char *path, const char *file, int line);
#define sm_fopen(p, m) sm_fopen_at((p), (m), __FILE__, __LINE__)
#define sm_fread(ptr, s, n, f, path) sm_fread_at((ptr), (s), (n), (f), (path), __FILE__, __LINE__)
#define sm_fclose(f, path) sm_fclose_at((f), (path), __FILE__, __LINE__)

// Wall-clock seconds (monotonic).
double sm_now(void);
// Peak resident set size of this process in bytes (from getrusage).
size_t sm_peak_rss(void);

// mkdir -p; dies naming the path on failure.
void sm_mkdirs(const char *path);
// Formats seconds as "1h02m", "3m04s" or "12s".
void sm_fmt_duration(double s, char *buf, size_t n);
// Formats an error message into err (if not NULL) and returns -1, for the
// `return sm_fail(err, n, "...", ...)` style of recoverable errors.
int sm_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// Which BLAS kernels run and who chose them (blas.c), for `softmoe bench`.
void sm_blas_describe(char *out, size_t n);
