// Test helper: damages a checkpoint the ways tests/test_faults.sh needs.
//   h5edit FILE nan DATASET      first value -> NaN, its crc32 recomputed (a
//                                "well-formed" checkpoint holding a NaN)
//   h5edit FILE flip DATASET     first value's sign bit flipped, crc32 kept
//                                (silent corruption)
//   h5edit FILE step N           the root attribute step -> N
//   h5edit FILE config TEXT      /config replaced by TEXT
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int die(const char *m) {
    fprintf(stderr, "h5edit: %s\n", m);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) return die("usage: h5edit FILE nan|flip DATASET | h5edit FILE step N");
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(argv[1], H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return die("cannot open the file");
    if (!strcmp(argv[2], "step")) {
        int64_t step = atoll(argv[3]);
        hid_t a = H5Aopen(f, "step", H5P_DEFAULT);
        if (a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &step) < 0) return die("cannot write step");
        H5Aclose(a);
        return H5Fclose(f) < 0 ? die("close failed") : 0;
    }
    if (!strcmp(argv[2], "config")) {
        if (H5Ldelete(f, "/config", H5P_DEFAULT) < 0) return die("no /config");
        hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
        H5Tset_size(t, strlen(argv[3]) ? strlen(argv[3]) : 1);
        hid_t d = H5Dcreate2(f, "/config", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (d < 0 || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, argv[3]) < 0)
            return die("cannot write /config");
        H5Dclose(d), H5Sclose(sp), H5Tclose(t);
        return H5Fclose(f) < 0 ? die("close failed") : 0;
    }
    hid_t d = H5Dopen2(f, argv[3], H5P_DEFAULT);
    if (d < 0) return die("no such dataset");
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    float *v = malloc((size_t)n * sizeof(float));
    if (!v || H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0)
        return die("cannot read the dataset");
    if (!strcmp(argv[2], "nan")) {
        v[0] = NAN;
    } else {
        uint32_t bits;
        memcpy(&bits, v, 4);
        bits ^= 0x80000000u;
        memcpy(v, &bits, 4);
    }
    if (H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0)
        return die("cannot write the dataset");
    if (!strcmp(argv[2], "nan") && H5Aexists(d, "crc32") > 0) {
        // one crc for a plain tensor; for stacked experts, the first expert's
        hid_t a = H5Aopen(d, "crc32", H5P_DEFAULT), asp = H5Aget_space(a);
        hssize_t k = H5Sget_simple_extent_npoints(asp);
        uint32_t *crc = calloc((size_t)k, sizeof *crc);
        H5Aread(a, H5T_NATIVE_UINT32, crc);
        size_t len = (size_t)n / (size_t)k;
        crc[0] = (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), (const Bytef *)v, len * sizeof(float));
        if (H5Awrite(a, H5T_NATIVE_UINT32, crc) < 0) return die("cannot write crc32");
        free(crc);
        H5Sclose(asp), H5Aclose(a);
    }
    free(v);
    H5Sclose(sp), H5Dclose(d);
    return H5Fclose(f) < 0 ? die("close failed") : 0;
}
