# The two commands of the README: `make demo` and `make test`. Both install what is missing (apt),
# then build in build/ (Release). `make test` then also builds with clang-14 under AddressSanitizer
# + UndefinedBehaviorSanitizer with -Wthread-safety -Werror in build-asan/, runs the suite there too,
# and runs the fuzzer briefly.
BUILD_DIR ?= build
SAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
BUILD_TYPE ?= Release
JOBS ?= 2
CMAKE_FLAGS ?=

.PHONY: all deps bench-deps build demo demo-torch python test sanitize-build sanitize-test tsan-build tsan-test bench compression-table \
	outer-optimizer-table \
	time-to-accuracy overlap-table bench-memory bench-many-workers soak chaos compose-demo container-test container-clean reproduce reproduce-stich-quick clean

all: build

deps:
	./deploy/install-deps.sh

bench-deps:
	./deploy/install-deps.sh --bench

$(BUILD_DIR)/CMakeCache.txt:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS)

build: deps $(BUILD_DIR)/CMakeCache.txt
	cmake --build $(BUILD_DIR) -j$(JOBS)

demo: build
	./deploy/demo.sh $(BUILD_DIR)

# The PyTorch demo: a CNN on Fashion-MNIST, 4 torch workers + 1 ps-server, DiLoCo with outer
# Nesterov, 4-bit QSGD both ways (examples/torch_cnn.py; about 4 minutes here).
demo-torch: build
	PYTHONPATH=$(BUILD_DIR)/python /usr/bin/python3 examples/torch_cnn.py --launch 4 \
	  --ps_server $(BUILD_DIR)/server/ps-server --out $(BUILD_DIR)/demo-torch

# The Python package, built in $(BUILD_DIR)/python (pip install ./python also works: docs/python.md).
python: build
	@echo "slowlink is built: PYTHONPATH=$(CURDIR)/$(BUILD_DIR)/python /usr/bin/python3 -c 'import slowlink'"

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)
	$(MAKE) sanitize-test
	$(MAKE) tsan-test

$(SAN_DIR)/CMakeCache.txt:
	CC=clang-14 CXX=clang++-14 cmake -S . -B $(SAN_DIR) -DCMAKE_BUILD_TYPE=Release -DPS_SANITIZE=ON \
	  -DPS_WERROR=ON $(CMAKE_FLAGS)

sanitize-build: deps $(SAN_DIR)/CMakeCache.txt
	cmake --build $(SAN_DIR) -j$(JOBS)

# halt_on_error: the first report fails the test. Leak checking stays on. The process-kill tests
# (label `fault`) run in the release build only, for time: sanitized they take minutes each; so
# does the container test (label `container`), which runs no binary of this build, and the soak
# (label `soak`), whose RSS check means nothing under ASan's quarantine.
sanitize-test: sanitize-build
	cd $(SAN_DIR) && ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ctest --output-on-failure -j$(JOBS) -LE 'fault|container|soak'

$(TSAN_DIR)/CMakeCache.txt:
	CC=clang-14 CXX=clang++-14 cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=Release -DPS_TSAN=ON \
	  -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST \
	  -DPS_WERROR=ON $(CMAKE_FLAGS)

# Only what the unit and integration tests need (no binaries, fuzzer or benchmarks).
TSAN_TARGETS = ps_common_test ps_app_test ps_checkpoint_test ps_server_test ps_client_test ps_worker_test ps_models_test \
	ps_data_test local_sgd_test bad_input_test large_model_test training_test compression_test \
	security_test durability_test sharding_test health_test model_layout_test tsan_planted_race

# Configured again first: a target added since the last configure is otherwise unknown to make.
tsan-build: deps $(TSAN_DIR)/CMakeCache.txt
	cmake -S . -B $(TSAN_DIR) > /dev/null
	cmake --build $(TSAN_DIR) -j$(JOBS) --target $(TSAN_TARGETS)

# Debian's gRPC, protobuf and Abseil are not instrumented: accesses inside them are ignored, and
# Abseil's locks are made visible by common/tsan_absl_sync.cc; races in our code are reported
# (tsan_catches_a_planted_race checks that). tests/tsan.supp says what is not checked.
tsan-test: tsan-build
	cd $(TSAN_DIR) && TSAN_OPTIONS=ignore_noninstrumented_modules=1:halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/tsan.supp \
	  ctest --output-on-failure -j$(JOBS) -L 'unit|integration'

# Push/pull throughput beside iperf3 -P K (about 12 minutes): bench/results/push_pull.*
bench: build bench-deps
	/usr/bin/python3 bench/push_pull.py --build $(BUILD_DIR) --out bench/results/push_pull
	PYTHONPATH=$(BUILD_DIR)/python /usr/bin/python3 bench/python_binding.py --build $(BUILD_DIR)
	$(BUILD_DIR)/bench/ps_codec_bench --benchmark_min_time=0.3 --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

# Server memory against model size, 10^6 to 10^9 floats (about 15 minutes, 24 GiB):
# bench/results/memory.*
bench-memory: build
	TMPDIR=/var/tmp /usr/bin/python3 bench/memory.py --build $(BUILD_DIR) --out bench/results/memory

# Rounds per second with 16, 64 and 256 simulated workers (about 6 minutes):
# bench/results/many_workers.*
bench-many-workers: build
	/usr/bin/python3 bench/many_workers.py --build $(BUILD_DIR) --out bench/results/many_workers

compression-table: build bench-deps
	./bench/compression_table.sh $(BUILD_DIR)

# Bytes to accuracy with the server-side outer optimizer (MLP, K = 4, sync; about 8 minutes):
# bench/results/outer_optimizer.*
outer-optimizer-table: build bench-deps
	/usr/bin/python3 bench/outer_optimizer.py $(BUILD_DIR) --epochs 5

# Time to the target behind 10 and 100 Mbit/s links, with and without ps-worker --overlap (needs
# root; about 10 minutes): bench/results/overlap.*
overlap-table: build bench-deps
	tests/netns_run.sh /usr/bin/python3 bench/overlap.py $(BUILD_DIR) --repeats 3

# Workers behind 100 Mbit/s links in network namespaces (needs root): bench/results/time_to_accuracy.*
time-to-accuracy: build bench-deps
	tests/netns_run.sh /usr/bin/python3 bench/time_to_accuracy.py $(BUILD_DIR) --repeats 3

# The soak (bench/soak.py): 64 simulated workers for SOAK_SECONDS per mode, async then sync, with
# workers leaving and joining again all along; checks errors, RSS drift and the per-worker tables,
# and writes bench/results/soak.json and soak.png. A 30 s per mode version is in make test.
SOAK_SECONDS ?= 600
soak: build
	/usr/bin/python3 bench/soak.py --build $(BUILD_DIR) --seconds $(SOAK_SECONDS) --check

# A kill campaign outside `make test`: kill -9 of workers, of the server and of the server while it
# writes checkpoints, CHAOS_CYCLES runs each; a table of the runs, also in $(BUILD_DIR)/chaos.json.
CHAOS_CYCLES ?= 20
chaos: build
	/usr/bin/python3 bench/chaos.py $(BUILD_DIR) --cycles $(CHAOS_CYCLES)

# The containers: builds the images and runs docker-compose.yml (README, Containers). With a Docker
# engine it uses Docker; else a private podman store of deploy/install-deps.sh's packages.
compose-demo: deps
	./deploy/compose-demo.sh

# The container test alone (also part of `make test`).
container-test: deps
	/usr/bin/python3 tests/container_test.py $(CURDIR)

# The container test's image store, base image and compiler cache (~/.cache/ps-containers).
container-clean:
	rm -rf $${PS_CONTAINER_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/ps-containers}

# The papers' experiments (docs/reproduction.md): all of them (about 2.5 hours here), or one with
# make reproduce-NAME (stich, dqsgd, slowmo, backup, hetero); results in experiments/results/NAME.
REPRODUCE = stich dqsgd slowmo backup hetero
reproduce: $(addprefix reproduce-,$(REPRODUCE))

reproduce-%: build
	PS_BUILD=$(BUILD_DIR) /usr/bin/python3 experiments/$*.py

# The reduced Stich grid with its checks (also in make test, ctest label `reproduce`).
reproduce-stich-quick: build
	PS_BUILD=$(BUILD_DIR) /usr/bin/python3 experiments/stich.py --quick --check \
	  --out $(BUILD_DIR)/reproduce-stich-quick

clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR) $(TSAN_DIR)
