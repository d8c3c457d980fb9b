// LD_PRELOAD shim for the fault-injection tests (tests/test_faults.sh): makes
// one write, fsync or rename of a chosen file fail the way a full or broken
// disk does, without root and without strace.
//
//   SM_FAULT_MATCH  substring of the file's path (default ".h5.tmp"): only
//                   calls on such files are counted (fds are resolved through
//                   /proc/self/fd; rename matches its source path)
//   SM_FAULT_OP     write (write/pwrite/writev and their 64 forms) | fsync
//                   (fsync/fdatasync) | rename
//   SM_FAULT_N      fail the Nth matching call of that op (1-based)
//   SM_FAULT_ERRNO  ENOSPC (default) | EIO
//   SM_FAULT_STICKY 1: every later matching call fails too (a disk that stays full)
//   SM_FAULT_COUNT  file to which the number of matching calls of each op is
//                   appended at exit ("write 123 fsync 2 rename 1"), to size the loop
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { OP_WRITE, OP_FSYNC, OP_RENAME, OP_N };
static const char *op_names[OP_N] = {"write", "fsync", "rename"};
static long counts[OP_N];
static int fault_op = -1, fault_errno = ENOSPC, sticky;
static long fault_n;
static const char *match = ".h5.tmp";

static void dump_counts(void) {
    const char *path = getenv("SM_FAULT_COUNT");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "write %ld fsync %ld rename %ld\n", counts[0], counts[1], counts[2]);
    fclose(f);
}

__attribute__((constructor)) static void setup(void) {
    const char *s = getenv("SM_FAULT_MATCH");
    if (s && *s) match = s;
    s = getenv("SM_FAULT_OP");
    for (int i = 0; s && i < OP_N; i++)
        if (!strcmp(s, op_names[i])) fault_op = i;
    s = getenv("SM_FAULT_N");
    fault_n = s ? atol(s) : 0;
    s = getenv("SM_FAULT_ERRNO");
    if (s && !strcmp(s, "EIO")) fault_errno = EIO;
    s = getenv("SM_FAULT_STICKY");
    sticky = s && *s == '1';
    atexit(dump_counts);
}

static int fd_matches(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    return strstr(path, match) != NULL;
}

// 1 when this (matching) call must fail.
static int hit(int op) {
    long k = ++counts[op];
    if (op != fault_op || fault_n <= 0) return 0;
    if (k == fault_n || (sticky && k > fault_n)) {
        return 1;
    }
    return 0;
}

#define REAL(name, ret, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write, ssize_t, int, const void *, size_t);
    if (fd > 2 && fd_matches(fd) && hit(OP_WRITE)) return errno = fault_errno, -1;
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    if (fd_matches(fd) && hit(OP_WRITE)) return errno = fault_errno, -1;
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off64_t);
    if (fd_matches(fd) && hit(OP_WRITE)) return errno = fault_errno, -1;
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(writev, ssize_t, int, const struct iovec *, int);
    if (fd_matches(fd) && hit(OP_WRITE)) return errno = fault_errno, -1;
    return real_writev(fd, iov, cnt);
}

int fsync(int fd) {
    REAL(fsync, int, int);
    if (fd_matches(fd) && hit(OP_FSYNC)) return errno = fault_errno, -1;
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    if (fd_matches(fd) && hit(OP_FSYNC)) return errno = fault_errno, -1;
    return real_fdatasync(fd);
}

int rename(const char *from, const char *to) {
    REAL(rename, int, const char *, const char *);
    if (strstr(from, match) && hit(OP_RENAME)) return errno = fault_errno, -1;
    return real_rename(from, to);
}
