// Fuzzes the checkpoint loader (src/train/ckpt.c): the input is written to a
// temporary .h5 file and loaded with ckpt_load against a tiny parameter
// table (params and both Adam moments), and read with ckpt_read_any, as
// `softmoe train` resumes and `train.init` reads. A failure must name the
// file. The seeds (tests/fuzz/corpus/ckpt/) are real checkpoints of this
// table written by ckpt_seed.c.
#include "fuzz.h"

#include "ckpt_table.h"
#include "train/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ParamTable pt;
    static float *block;
    if (!block) {
        fuzz_ckpt_table(&pt);
        block = calloc(3 * pt.total, sizeof *block);
        if (!block) abort();
    }
    const char *path = fuzz_path("ckpt-00000001.h5");
    fuzz_write(path, data, size);
    char err[2048];
    CkptInfo info;
    memset(&info, 0, sizeof info);
    int rc = ckpt_load(path, &pt, block, block + pt.total, block + 2 * pt.total, &info, err, sizeof err);
    if (getenv("FUZZ_VERBOSE")) fprintf(stderr, "ckpt_load: %s\n", rc == 0 ? "ok" : err);
    if (rc == 0) ckpt_info_free(&info);
    else if (!strstr(err, path)) abort();
    float *any = NULL;
    int ndim = 0;
    long dims[8];
    // train.init allows 2^28 values; a smaller cap tests the same check
    // without gigabyte allocations slowing the fuzzer.
    if (ckpt_read_any(path, "/params/head/kernel", (size_t)1 << 20, &any, &ndim, dims, err, sizeof err) == 0) {
        if (ndim < 0 || ndim > 8) abort();
        free(any);
    } else if (!strstr(err, path)) {
        abort();
    }
    return 0;
}
