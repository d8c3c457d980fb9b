// Fuzzes the WebDataset shard reader (src/data/shards.c): the input is a
// shard file (plain tar, gzip, zstd, anything libarchive bids on), read to
// its end through shard_open/shard_next as the loader does, plus the .cls
// label parser on the raw bytes. Invariants checked: indices count up from
// 0, a returned image is within SHARD_MAX_MEMBER, labels are in range, an
// ambiguous or damaged sample has no labels, and the end is sticky.
#include "fuzz.h"

#include "data/shards.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int labels[SHARD_MAX_LABELS];
    int n = shards_parse_labels((const char *)data, size, labels, SHARD_MAX_LABELS);
    if (n == 0 || n > SHARD_MAX_LABELS) abort();
    for (int i = 0; i < n; i++)
        if (labels[i] < 0) abort();

    const char *path = fuzz_path("shard.tar");
    fuzz_write(path, data, size);
    char err[1024];
    ShardReader *r = shard_open(path, err, sizeof err);
    if (!r) {
        if (!strstr(err, path)) abort();  // the message must name the shard
        return 0;
    }
    ShardSample s;
    uint64_t count = 0;
    int rc;
    volatile uint8_t sink = 0;
    while ((rc = shard_next(r, &s, err, sizeof err)) == 1) {
        if (s.index != count++ || s.nlabels < 0 || s.nlabels > SHARD_MAX_LABELS) abort();
        if (s.img && s.img_len > SHARD_MAX_MEMBER) abort();
        if ((s.ambiguous || s.damaged) && s.nlabels != 0) abort();
        if (s.img && s.img_len) sink ^= s.img[0] ^ s.img[s.img_len - 1];  // readable
        if (count > 1000000) abort();  // more samples than bytes/512 would mean a loop
    }
    ShardSample again;
    if (rc < 0 && !strstr(err, path)) abort();
    if (shard_next(r, &again, err, sizeof err) != rc) abort();
    shard_close(r);
    (void)sink;
    return 0;
}
