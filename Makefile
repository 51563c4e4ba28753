# The two commands a new user runs: `make demo` and `make test`. Both install what is missing,
# configure and build, then run. Everything else here is for developers.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)

# What `make demo` runs (scripts/demo.sh): the three executables, not the tests and benchmarks.
DEMO_TARGETS = shardtune shardtune-worker shardtune-server

.PHONY: all deps configure build build-demo demo test test-asan bench fuzz format package clean

all: build

deps:
	@bash scripts/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ]; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE); \
	fi

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

build-demo: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS) --target $(DEMO_TARGETS)

demo: build-demo
	@bash scripts/demo.sh $(BUILD_DIR)

test: build
	@bash scripts/test.sh $(BUILD_DIR)

# shardtune_<version>_amd64.deb in $(BUILD_DIR) (docs/server.md, "Installing as a service").
package: build-demo
	@cd $(BUILD_DIR) && cpack -G DEB

bench: build
	@bash bench/run.sh $(BUILD_DIR)

# The whole suite under AddressSanitizer + UBSan, in build-asan/ (docs/fuzzing.md).
test-asan: deps
	@bash scripts/test-asan.sh build-asan

# The libFuzzer targets for FUZZ_SECONDS (60) each, in build-fuzz/ (docs/fuzzing.md).
fuzz:
	@bash scripts/install-deps.sh fuzz
	@bash scripts/fuzz.sh

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR)
