# softmoe — build, test, train, bench.
#   make            build build/softmoe (installs missing Debian packages first)
#   make test       every test a contributor must keep green
#   make train      default run (configs/fmnist_softmoe.ini); CONFIG=name ARGS="k=v ..."
#   make bench      throughput, GFLOP/s and MFU against this machine's sgemm peak
#   make deps       apt-get the Debian packages (scripts/install-deps.sh)
#   make fuzz       libFuzzer harnesses (tests/fuzz/), FUZZ_S seconds each, in build-fuzz/
#   make bench-peer  softmoe against PyTorch (fp32 and bf16), one invocation
#   make bench-gemm  every S/16 product shape alone: sgemm, few-row kernels, bf16
# Switches: NO_MPI=1 (MPI is optional), NO_DNNL=1 (oneDNN is optional: bf16
# then runs on rounded inputs through sgemm), DEBUG=1 (-O0 -g, ASan+UBSan, any
# report fatal), BUILD=dir (another build directory, e.g. BUILD=build-debug DEBUG=1).

CC      ?= gcc
BUILD   ?= build
CONFIG  ?= fmnist_softmoe
ARGS    ?=

ifeq ($(FUZZ),1)
  # The library for libFuzzer: coverage-instrumented, sanitized (make fuzz sets CC=clang).
  OPT := -O1 -g -march=native -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
else ifeq ($(DEBUG),1)
  OPT := -O0 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else
  OPT := -O3 -march=native -g
endif
CFLAGS  += -Isrc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -fopenmp -fno-math-errno
LDFLAGS += -fopenmp $(if $(filter 1,$(DEBUG) $(FUZZ)),-fsanitize=address$(comma)undefined)
LDLIBS  += -lm
comma := ,

# A fresh machine: install the Debian packages before probing (not for clean/deps).
ifneq ($(filter-out clean deps,$(or $(MAKECMDGOALS),all)),)
  ifneq ($(shell pkg-config --exists openblas inih check hdf5-serial libpng libjpeg libarchive zlib libzip && command -v mpicc >/dev/null && command -v jq >/dev/null && echo ok),ok)
    $(info softmoe: Debian packages missing, running scripts/install-deps.sh)
    $(shell sh scripts/install-deps.sh >&2)
  endif
endif

# Probe the libraries with pkg-config; say what was found.
have = $(shell pkg-config --exists $(1) 2>/dev/null && echo 1)
BLAS_PC := $(firstword $(foreach p,openblas blas,$(if $(call have,$(p)),$(p))))
HDF5_PC := $(if $(call have,hdf5-serial),hdf5-serial)
PKGS    := $(BLAS_PC) $(if $(call have,inih),inih) $(HDF5_PC) \
           $(if $(call have,libpng),libpng) $(if $(call have,libjpeg),libjpeg) \
           $(if $(call have,libarchive),libarchive) $(if $(call have,zlib),zlib) \
           $(if $(call have,libzip),libzip)

ifeq ($(NO_MPI),1)
  MPICC :=
else
  MPICC := $(shell command -v mpicc 2>/dev/null)
endif

# oneDNN (Debian's libdnnl-dev ships no pkg-config file): header and library.
ifeq ($(NO_DNNL),1)
  DNNL :=
else
  DNNL := $(shell printf '\043include <oneapi/dnnl/dnnl.h>\nint main(void){return dnnl_version()==0;}\n' | \
            $(CC) -x c - -ldnnl -o /dev/null 2>/dev/null && echo 1)
endif
ifeq ($(DNNL),1)
  CFLAGS += -DSM_DNNL
  LDLIBS += -ldnnl
endif

ifneq ($(strip $(PKGS)),)
  CFLAGS += $(shell pkg-config --cflags $(PKGS))
  LDLIBS += $(shell pkg-config --libs $(PKGS))
endif
ifneq ($(MPICC),)
  CFLAGS += -DSM_MPI $(shell mpicc --showme:compile 2>/dev/null)
  LDLIBS += $(shell mpicc --showme:link 2>/dev/null)
endif
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)

SRC   := $(shell find src -name '*.c' ! -name main.c | sort)
OBJ   := $(SRC:%.c=$(BUILD)/%.o)
LIB   := $(BUILD)/libsoftmoe.a
BIN   := $(BUILD)/softmoe
TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

.PHONY: all deps found test train bench bench-peer bench-gemm bench-experts bench-mpi paper clean fuzz fuzz-bins fuzz-seeds
all: found $(BIN)

found:
	@printf '%s\n' \
	  "$(if $(BLAS_PC),✓ OpenBLAS ($(BLAS_PC)),✗ OpenBLAS)" \
	  "$(if $(call have,inih),✓ libinih,✗ libinih)" \
	  "$(if $(HDF5_PC),✓ HDF5 ($(HDF5_PC)),✗ HDF5)" \
	  "$(if $(call have,libpng),✓ libpng,✗ libpng)" \
	  "$(if $(call have,libjpeg),✓ libjpeg-turbo,✗ libjpeg-turbo)" \
	  "$(if $(call have,libarchive),✓ libarchive,✗ libarchive)" \
	  "$(if $(call have,libzip),✓ libzip (.npz),✗ libzip (.npz))" \
	  "$(if $(call have,check),✓ Check (tests),✗ Check (tests))" \
	  "✓ OpenMP ($(CC) -fopenmp)" \
	  "$(if $(MPICC),✓ MPI ($(MPICC)),✗ MPI$(if $(filter 1,$(NO_MPI)), (NO_MPI=1),))" \
	  "$(if $(DNNL),✓ oneDNN (bf16 matmul),✗ oneDNN$(if $(filter 1,$(NO_DNNL)), (NO_DNNL=1),) (bf16 on rounded inputs through sgemm))"

deps:
	@sh scripts/install-deps.sh

# The router list, generated from the router files (src/model/moe.h: adding
# a router is one file): SM_ROUTERS for moe.c's table, SM_ROUTER_CHOICES for
# the moe.router key. Rewritten only when it changes.
ROUTER_SRC   := $(wildcard src/model/router_*.c)
ROUTER_NAMES := $(sort $(shell sed -n 's/^const MoeRouter moe_router_\([a-z0-9_]*\) = .*/\1/p' $(ROUTER_SRC)))
GEN          := $(BUILD)/gen/moe_routers.h
empty :=
space := $(empty) $(empty)
CFLAGS += -I$(BUILD)/gen
$(GEN): $(ROUTER_SRC)
	@mkdir -p $(dir $@)
	@printf '%s\n' '// Generated by the Makefile from src/model/router_*.c; do not edit.' \
	  '#define SM_ROUTERS $(foreach r,$(ROUTER_NAMES),X($(r)))' \
	  '#define SM_ROUTER_CHOICES "$(subst $(space),|,$(ROUTER_NAMES))"' >$@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

$(BUILD)/%.o: %.c $(shell find src -name '*.h' -o -name '*.def') $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/src/main.o $(LIB)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -Isrc $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS) $(CHECK_LIBS)

# Fuzz harnesses (tests/fuzz/fuzz_<target>.c). make test replays the committed
# corpus and crash inputs through each harness linked with replay.c's main()
# (no libFuzzer, so no clang needed; tests/test_fuzz.sh runs them).
FUZZ_TARGETS := config shards image ckpt
FUZZ_HDRS    := $(wildcard tests/fuzz/*.h)
REPLAYS      := $(FUZZ_TARGETS:%=$(BUILD)/tests/replay_%)

$(BUILD)/tests/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(FUZZ_HDRS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/fuzz tests/fuzz/replay.c $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)

# Helpers of the shell tests: the fault-injection shim (LD_PRELOAD) and a
# checkpoint damager, both used by tests/test_faults.sh.
HELPERS := $(BUILD)/tests/faultinj.so $(BUILD)/tests/h5edit
$(BUILD)/tests/faultinj.so: tests/faultinj.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl
$(BUILD)/tests/h5edit: tests/h5edit.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LDLIBS)

# Tests: one executable per module plus shell tests of the command, summed
# into one closing line by scripts/run-tests.sh.
test: found $(BIN) $(TESTS) $(HELPERS) $(REPLAYS)
	@sh scripts/run-tests.sh $(BIN) $(TESTS)

# make fuzz FUZZ_S=60: each harness for FUZZ_S seconds, one after the other
# (new inputs go to build-fuzz/corpus/<target>, crashes to
# tests/fuzz/crashes/<target>/ to be committed and fixed). Needs clang.
FUZZ_S     ?= 60
FUZZ_BUILD ?= build-fuzz
FUZZ_FLAGS ?= -timeout=20 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang: WITH_FUZZ=1 make deps"; exit 1; }
	$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=clang FUZZ=1 NO_MPI=1 fuzz-bins
	@status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t tests/fuzz/crashes/$$t; \
	  echo "== fuzz $$t for $(FUZZ_S) s"; \
	  LSAN_OPTIONS=suppressions=tests/fuzz/lsan.supp $(FUZZ_BUILD)/fuzz_$$t $(FUZZ_FLAGS) -max_total_time=$(FUZZ_S) \
	    -artifact_prefix=tests/fuzz/crashes/$$t/ $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t \
	    || status=1; \
	done; exit $$status

fuzz-bins: $(FUZZ_TARGETS:%=$(BUILD)/fuzz_%)

$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_HDRS) $(LIB)
	$(CC) $(CFLAGS) -fsanitize=fuzzer -Itests/fuzz $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)

# The checkpoint fuzzer's seeds: real checkpoints of its tiny table.
fuzz-seeds: $(BUILD)/tests/ckpt_seed
	$(BUILD)/tests/ckpt_seed tests/fuzz/corpus/ckpt
	cd tests/fuzz/corpus/ckpt && for f in ckpt-*.h5; do mv "$$f" "seed-$$f"; done

$(BUILD)/tests/ckpt_seed: tests/fuzz/ckpt_seed.c $(FUZZ_HDRS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/fuzz $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)

# The default run trains on Fashion-MNIST shards, written once from the idx
# files of Debian's dataset-fashion-mnist (60k train, 10k test).
FMNIST_IDX ?= /usr/share/datasets/fashion-mnist
FMNIST_PER_SHARD ?= 10000
FMNIST     := data/fmnist
$(FMNIST)/test-000000.tar: | $(BIN)
	$(BIN) shards fmnist $(FMNIST_IDX) $(FMNIST) $(FMNIST_PER_SHARD)

train: found $(BIN) $(if $(filter fmnist_softmoe fmnist_tokens_choice fmnist_experts_choice finetune_fmnist,$(CONFIG)),$(FMNIST)/test-000000.tar)
	$(BIN) train configs/$(CONFIG).ini $(ARGS)

# ViT-S/16 at 224 px, batch 8, 1000 classes: dense, Soft MoE 32x4, the sparse
# baselines with 32 experts at Soft MoE 32x4's 128 expert rows per image
# (Tokens Choice k=1 and k=2 in groups of 8 images: capacity 32 per expert and
# group; Experts Choice per image: 4 per expert), Soft MoE 128x1 (needs ~15 GB
# of RAM), then the default config on its Fashion-MNIST shards (written first
# if missing). Random images for S/16: the paper configs name JFT shards
# (jft.ini), which bench would otherwise open.
S16 := train.batch_size=8 model.classes=1000 model.loss=softmax_xent data.source=synthetic
bench: found $(BIN) $(FMNIST)/test-000000.tar
	$(BIN) bench configs/vit_s16.ini $(S16) $(ARGS)
	$(BIN) bench configs/vit_s16_softmoe.ini $(S16) moe.experts=32 moe.slots=4 $(ARGS)
	$(BIN) bench configs/vit_s16_tokens_choice.ini $(S16) moe.capacity_factor=0.65 $(ARGS)
	$(BIN) bench configs/vit_s16_tokens_choice_k2.ini $(S16) moe.capacity_factor=0.325 $(ARGS)
	$(BIN) bench configs/vit_s16_experts_choice.ini $(S16) moe.capacity_factor=0.65 $(ARGS)
	$(BIN) bench configs/vit_s16_softmoe.ini $(S16) $(ARGS)
	$(BIN) bench configs/fmnist_softmoe.ini $(ARGS)

# softmoe fp32 and bf16 against PyTorch fp32 and bf16 autocast on ViT-S/16
# and Soft MoE S/16 32x4 and 128x1 (batch 8, 224 px, 2 threads), one
# invocation (scripts/bench_torch.py; needs python3-torch: WITH_PYTHON=1 make
# deps). The 128x1 rows need ~15 GB each and run one after another.
PEER_REPS ?= 3
bench-peer: found $(BIN)
	/usr/bin/python3 scripts/bench_torch.py --bin $(BIN) --reps $(PEER_REPS) $(ARGS)

# Each product shape of an S/16 step alone: sgemm, few-row kernels, bf16
# (bench/bench_gemm.c), on one thread and on two.
$(BUILD)/bench_gemm: bench/bench_gemm.c $(LIB)
	$(CC) $(CFLAGS) $< $(LIB) -o $@ $(LDFLAGS) $(LDLIBS)
bench-gemm: found $(BUILD)/bench_gemm
	OMP_NUM_THREADS=1 $(BUILD)/bench_gemm
	OMP_NUM_THREADS=2 $(BUILD)/bench_gemm

# The paper's comparisons at small scale (scripts/paper.sh): dense ViTs, Soft
# MoE, Tokens Choice, Experts Choice and the routing ablations on
# Fashion-MNIST, then the plots (scripts/plot.py paper) beside results.csv.
# PAPER_STEPS=N and PAPER_ONLY="patterns" for quick tries.
paper: found $(BIN) $(FMNIST)/test-000000.tar
	sh scripts/paper.sh
	@if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then \
	  /usr/bin/python3 scripts/plot.py paper $${PAPER_OUT:-runs/paper}/results.csv; \
	else echo "SKIP: paper plots (python3-matplotlib missing: WITH_PYTHON=1 make deps)"; fi

# Step and MoE block time against the number of experts (8..1024) at one
# expert row per token, for every router (scripts/bench_experts.sh).
bench-experts: found $(BIN)
	sh scripts/bench_experts.sh $(BIN)

# 1 rank against 2 ranks (scripts/bench_mpi.sh): the default config, then
# Soft MoE S/16 32x4 at global batch 8.
bench-mpi: found $(BIN)
	sh scripts/bench_mpi.sh $(BIN) configs/fmnist_softmoe.ini $(ARGS)
	STEPS=4 sh scripts/bench_mpi.sh $(BIN) configs/vit_s16_softmoe.ini $(S16) moe.experts=32 moe.slots=4 $(ARGS)

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)
