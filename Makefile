# The two commands of the README: `make demo` and `make test`. Both install what is missing (apt),
# then build in build/ (Release).
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= 2
CMAKE_FLAGS ?=

.PHONY: all deps build demo test bench compression-table clean

all: build

deps:
	./deploy/install-deps.sh

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j$(JOBS)

demo: build
	./deploy/demo.sh $(BUILD_DIR)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

bench: build
	./bench/run_push_pull.sh $(BUILD_DIR)
	$(BUILD_DIR)/bench/ps_codec_bench --benchmark_min_time=0.3 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

compression-table: build
	./bench/compression_table.sh $(BUILD_DIR)

clean:
	rm -rf $(BUILD_DIR)
