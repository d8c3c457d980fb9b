// Throughput and MFU measurement (`softmoe bench`, `make bench`).
#pragma once
#include "../core/config.h"

// Best sgemm GFLOP/s on n x n x n over reps timed calls (after one warm-up).
double bench_sgemm_peak(int n, int reps);
// Times bench.steps training steps after warm-up and prints img/s, GFLOP/s, MFU.
void bench_run(const Config *c);
