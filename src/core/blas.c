// Which BLAS kernels run, for `softmoe bench`: OpenBLAS picks its kernels
// from the CPU when it loads unless OPENBLAS_CORETYPE names a core (then it
// runs that core's kernels, e.g. AVX2 "Haswell" ones on an AVX-512 CPU), so
// a benchmark says which it got and whether the environment chose.
#include "common.h"

#include <stdio.h>
#include <stdlib.h>

// OpenBLAS only; absent (NULL) with another BLAS.
extern char *openblas_get_corename(void) __attribute__((weak));

void sm_blas_describe(char *out, size_t n) {
    if (!openblas_get_corename) {
        snprintf(out, n, "not OpenBLAS");
        return;
    }
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (env)
        snprintf(out, n, "OpenBLAS, %s kernels (OPENBLAS_CORETYPE=%s in the environment chose "
                 "them; unset, OpenBLAS picks the CPU's own)", openblas_get_corename(), env);
    else
        snprintf(out, n, "OpenBLAS, %s kernels (its choice for this CPU)", openblas_get_corename());
}
