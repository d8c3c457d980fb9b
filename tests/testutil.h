// Shared test helpers on the Check framework (Debian package `check`): each
// tests/test_<module>.c defines its cases and ends with SM_TEST_MAIN(suite).
#pragma once
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

// Runs one suite in no-fork mode (so gdb/valgrind see the failing case) and
// exits non-zero when any case failed. Check prints its summary line.
#define SM_TEST_MAIN(make_suite)                                  \
    int main(void) {                                              \
        SRunner *sr = srunner_create(make_suite());               \
        srunner_set_fork_status(sr, CK_NOFORK);                   \
        srunner_run_all(sr, CK_NORMAL);                           \
        int nf = srunner_ntests_failed(sr);                       \
        srunner_free(sr);                                         \
        return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;             \
    }

// Max |a-b| / (max|b| + floor): a relative error on the scale of the tensor,
// so near-zero entries of a tensor with large entries do not dominate.
static inline double sm_rel_err(const float *a, const float *b, size_t n, double floor) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || d != d) maxdiff = d != d ? INFINITY : d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxdiff / (maxref + floor);
}
