// Reading a config file whole, refusing what is not one: directories,
// devices (/dev/zero), FIFOs and sockets, files over CONFIG_MAX_FILE bytes and
// text with a NUL byte. Used by config.c, which parses the text with libinih.
#pragma once
#include <stddef.h>

// No real config comes near this; a bigger file is a wrong path (a dataset,
// a checkpoint) and reading it whole would only waste memory.
#define CONFIG_MAX_FILE ((size_t)1 << 20)

// Reads path into *text (malloc'd, NUL-terminated, *len bytes without the
// NUL). Returns 0; or -1 with *line set (0 when no line applies) and a reason
// in why ("is a directory", "contains a NUL byte", ...) without the path.
int config_read_file(const char *path, char **text, size_t *len, int *line, char *why,
                     size_t whylen);
