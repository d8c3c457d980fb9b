// Reads a config file whole before parsing (config_io.h): opened without
// blocking and checked with fstat, so a FIFO or /dev/zero is refused at once
// instead of hanging the reader, and the size cap and the NUL check see the
// exact bytes that libinih will parse.
#include "config_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int why_fail(char *why, size_t n, const char *msg) {
    snprintf(why, n, "%s", msg);
    return -1;
}

static const char *kind(mode_t m) {
    return S_ISDIR(m)  ? "is a directory, not a config file"
         : S_ISCHR(m)  ? "is a character device, not a config file"
         : S_ISBLK(m)  ? "is a block device, not a config file"
         : S_ISFIFO(m) ? "is a FIFO, not a config file"
         : S_ISSOCK(m) ? "is a socket, not a config file"
                       : "is not a regular file";
}

int config_read_file(const char *path, char **text, size_t *len, int *line, char *why,
                     size_t whylen) {
    *text = NULL;
    *len = 0;
    *line = 0;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return why_fail(why, whylen, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return why_fail(why, whylen, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return why_fail(why, whylen, kind(st.st_mode));
    }
    if ((unsigned long long)st.st_size > CONFIG_MAX_FILE) {
        close(fd);
        snprintf(why, whylen, "is %lld bytes, larger than the %zu bytes (1 MiB) a config file may have",
                 (long long)st.st_size, CONFIG_MAX_FILE);
        return -1;
    }
    // One byte beyond the size fstat gave shows a file that grew meanwhile.
    size_t want = (size_t)st.st_size + 1;
    char *buf = malloc(want + 1);
    if (!buf) {
        close(fd);
        return why_fail(why, whylen, "out of memory");
    }
    size_t n = 0;
    while (n < want) {
        ssize_t got = read(fd, buf + n, want - n);
        if (got == 0) break;
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            close(fd);
            snprintf(why, whylen, "read error: %s", strerror(e));
            return -1;
        }
        n += (size_t)got;
    }
    close(fd);  // read-only: a failing close loses nothing
    if (n == want) {
        free(buf);
        return why_fail(why, whylen, "grew while being read");
    }
    buf[n] = '\0';
    const char *nul = memchr(buf, '\0', n);
    if (nul) {
        int l = 1;
        for (const char *p = buf; p < nul; p++) l += *p == '\n';
        free(buf);
        *line = l;
        return why_fail(why, whylen, "contains a NUL byte (config files are text)");
    }
    *text = buf;
    *len = n;
    return 0;
}
