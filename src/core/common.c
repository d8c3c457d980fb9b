// Fatal errors, checked allocation and I/O, clocks.
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>

char sm_rank_tag[32];
void (*sm_fatal_exit)(int code);

int sm_rank_nonzero;

void sm_die_at(const char *file, int line, const char *fmt, ...) {
    fflush(stdout);
    // Under MPI an error in the input (a path, a setting) stops every rank at
    // once. Rank 0 reports at once and its abort ends the job; the others
    // wait a moment first, so such an error is printed once, while an error
    // of one rank alone is still reported by that rank, 2 s later. The abort
    // reaches them as SIGTERM, which training catches (preemption): back to
    // the default action, or it would only cut the wait short.
    if (sm_rank_nonzero) {
        signal(SIGTERM, SIG_DFL);
        sleep(2);
    }
    fprintf(stderr, "softmoe: error: %s", sm_rank_tag);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    // The source location helps developers, not users: SOFTMOE_DEBUG=1 adds it.
    const char *dbg = getenv("SOFTMOE_DEBUG");
    if (dbg && strcmp(dbg, "0")) fprintf(stderr, "\n  (at %s:%d)", file, line);
    fputc('\n', stderr);
    fflush(stderr);
    if (sm_fatal_exit) sm_fatal_exit(1);
    exit(1);
}

void *sm_malloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) sm_die_at(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *sm_calloc_at(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) sm_die_at(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

// Blocks of HUGE_MIN bytes and more (parameters, gradients, Adam moments,
// activations) are 2 MB aligned and advised to use transparent huge pages,
// which Debian's kernels give only on request (THP mode "madvise"): the
// experts and Adam stream through hundreds of MB, and on 4 KB pages an
// expert's weight rows (6 KB apart) each cost a TLB miss.
#define HUGE_MIN ((size_t)32 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)

void *sm_aligned_at(size_t n, const char *file, int line) {
    void *p = NULL;
    size_t align = n >= HUGE_MIN ? HUGE_ALIGN : 64;
    size_t rounded = (n + align - 1) / align * align;
    if (posix_memalign(&p, align, rounded ? rounded : 64) != 0)
        sm_die_at(file, line, "out of memory allocating %zu bytes (aligned)", n);
#ifdef MADV_HUGEPAGE
    if (align == HUGE_ALIGN) madvise(p, rounded, MADV_HUGEPAGE); // advice: failure is harmless
#endif
    return p;
}

FILE *sm_fopen_at(const char *path, const char *mode, const char *file, int line) {
    FILE *f = fopen(path, mode);
    if (!f) sm_die_at(file, line, "cannot open '%s' (mode %s): %s", path, mode, strerror(errno));
    return f;
}

void sm_fread_at(void *p, size_t size, size_t n, FILE *f, const char *path,
                 const char *file, int line) {
    if (fread(p, size, n, f) != n)
        sm_die_at(file, line, "read from '%s' failed (%s)", path,
                  feof(f) ? "unexpected end of file" : strerror(errno));
}

void sm_fclose_at(FILE *f, const char *path, const char *file, int line) {
    if (fclose(f) != 0)
        sm_die_at(file, line, "closing '%s' failed: %s", path, strerror(errno));
}

double sm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t sm_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024;  // Linux reports KiB
}

#include <sys/stat.h>

void sm_mkdirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    SM_CHECK(n > 0 && n < sizeof buf, "bad directory path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            sm_die("cannot create directory '%s': %s", buf, strerror(errno));
        buf[i] = c;
    }
}

void sm_fmt_duration(double s, char *buf, size_t n) {
    if (s < 0 || s != s) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

int sm_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}
