# softmoe — build, test, train, bench.
#   make            build build/softmoe (installs missing Debian packages first)
#   make test       every test a contributor must keep green
#   make train      default run (configs/fmnist_softmoe.ini); CONFIG=name ARGS="k=v ..."
#   make bench      throughput, GFLOP/s and MFU against this machine's sgemm peak
#   make deps       apt-get the Debian packages (scripts/install-deps.sh)
# Switches: NO_MPI=1 (MPI is optional), DEBUG=1 (-O0 -g, sanitizers).

CC      ?= gcc
BUILD   := build
CONFIG  ?= fmnist_softmoe
ARGS    ?=

ifeq ($(DEBUG),1)
  OPT := -O0 -g -fsanitize=address,undefined
else
  OPT := -O3 -march=native -g
endif
CFLAGS  += -Isrc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter $(OPT) -fopenmp -fno-math-errno
LDFLAGS += -fopenmp $(if $(filter 1,$(DEBUG)),-fsanitize=address$(comma)undefined)
LDLIBS  += -lm
comma := ,

# A fresh machine: install the Debian packages before probing (not for clean/deps).
ifneq ($(filter-out clean deps,$(or $(MAKECMDGOALS),all)),)
  ifneq ($(shell pkg-config --exists openblas inih check hdf5-serial libpng libjpeg libarchive zlib libzip && command -v mpicc >/dev/null && echo ok),ok)
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

.PHONY: all deps found test train bench bench-experts bench-mpi paper clean
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
	  "$(if $(MPICC),✓ MPI ($(MPICC)),✗ MPI$(if $(filter 1,$(NO_MPI)), (NO_MPI=1),))"

deps:
	@sh scripts/install-deps.sh

$(BUILD)/%.o: %.c $(shell find src -name '*.h')
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
test: found $(BIN) $(TESTS) $(HELPERS)
	@sh scripts/run-tests.sh $(BIN) $(TESTS)

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
	rm -rf $(BUILD)
