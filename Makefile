# The two commands of the README: `make demo` and `make test`. Both install what is missing (apt),
# then build in build/ (Release).
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= 2
CMAKE_FLAGS ?=

.PHONY: all deps build demo test bench clean

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

clean:
	rm -rf $(BUILD_DIR)
