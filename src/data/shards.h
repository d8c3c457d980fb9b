// WebDataset tar shards (docs/formats.md "Image shards"): brace-pattern shard
// lists, sequential reading with libarchive (plain tar, .tar.gz, .tar.zst),
// samples = runs of adjacent members sharing the name up to the first dot.
// Also the `softmoe shards` writer (shards_write.c).
#pragma once
#include <stddef.h>
#include <stdint.h>

// Expands "a-{000..003}.tar,b.tar" (comma-separated patterns, each with at
// most one numeric brace range keeping its zero padding) into *paths (n
// entries, each malloc'd, the array too). Does not touch the filesystem.
// Returns 0, or -1 with a message naming the pattern.
int shards_expand(const char *patterns, char ***paths, int *n, char *err, size_t errlen);
void shards_free_list(char **paths, int n);

#define SHARD_KEY 256
#define SHARD_MAX_LABELS 64
// Larger members are treated as corrupt samples (img NULL, too_big set), so
// one bad file cannot make a decode thread allocate without bound.
#define SHARD_MAX_MEMBER ((size_t)64 << 20)

// One sample as found in a shard. img/cls point into reader-owned buffers
// valid until the next shard_next call.
typedef struct {
    char key[SHARD_KEY];
    const unsigned char *img;   // bytes of the first .jpg/.jpeg/.png member, NULL if none
    size_t img_len;
    int nlabels;                // labels parsed from .cls (comma-separated), 0 if none
    int labels[SHARD_MAX_LABELS];
    int bad_label;              // .cls present but not parsable as non-negative integers
    uint64_t index;             // 0-based sample index within the shard
    int too_big;                // an image member exceeded SHARD_MAX_MEMBER (img is NULL)
    int ambiguous;              // two .cls members with different labels (nlabels is 0)
    int damaged;                // the shard broke inside one of its members (img NULL, no labels)
} ShardSample;

typedef struct ShardReader ShardReader;

// Opens a shard (compression detected by libarchive). NULL with err filled
// (naming the path) when it cannot be opened.
ShardReader *shard_open(const char *path, char *err, size_t errlen);
// Next sample: 1 = got one, 0 = end of shard, -1 = the archive is truncated
// or corrupt from here on (err names the shard and the last key); the caller
// counts it and moves to the next shard. No sample before the damage is lost:
// when a member header is damaged, the sample whose members were all read
// before it is returned first (with what it has: the caller skips and counts
// it if that lacks an image or label); when the damage is inside a member's
// data, that sample is returned with `damaged` set, to be counted. gzip
// shards are decompressed here with zlib, so a truncated small .tar.gz still
// yields its leading samples (libarchive's gzip filter fails the whole first
// 64 KiB block, and so the open, when the stream ends early).
int shard_next(ShardReader *r, ShardSample *s, char *err, size_t errlen);
void shard_close(ShardReader *r);

// Parses .cls text: one or more comma-separated non-negative decimal integers,
// whitespace allowed around each. Returns how many (1..max), or -1 when the
// text is empty, malformed, out of int range or has more than max labels.
int shards_parse_labels(const char *txt, size_t len, int *labels, int max);

// Writes Fashion-MNIST (idx files, gzip or plain) as PNG+cls shards:
// prefix-000000.tar, ... with per_shard samples each. split = "train" or
// "t10k" picks the idx file pair in dir. Returns the number of samples, or -1.
long shards_write_idx(const char *dir, const char *split, const char *prefix, int per_shard,
                      char *err, size_t errlen);
// Writes an image folder root/<class>/<image> as shards (labels: classes in
// sorted order), the samples permuted across the shards by seed, image bytes
// copied as they are; and classes.txt (line i = class i) beside the shards.
long shards_write_folder(const char *root, const char *prefix, int per_shard, uint64_t seed,
                         char *err,
                         size_t errlen);

// A shard writer for other modules: samples KEY.<ext> + KEY.cls, per_shard a
// shard, each written under a temporary name and renamed when complete.
typedef struct ShardWriterPublic ShardWriterPublic;
ShardWriterPublic *shard_writer_open(const char *prefix, int per_shard, char *err, size_t errlen);
int shard_writer_add(ShardWriterPublic *w, const char *ext, const void *img, size_t len,
                     int label, char *err, size_t errlen);
// ok = 0 abandons the shard in progress. Returns the samples written or -1.
long shard_writer_close(ShardWriterPublic *w, int ok, char *err, size_t errlen);
// Seeded synthetic JPEG shards (w x h RGB gratings, K classes), for benchmarks.
long shards_write_synthetic(const char *prefix, long n, int per_shard, int w, int h, int K,
                            uint64_t seed, char *err, size_t errlen);
