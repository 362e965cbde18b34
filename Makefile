# Isthmus — one GNU Makefile. `make` builds build/isthmus and build/isthmusctl;
# `make test` runs every test; `make SANITIZE=address,undefined test` runs them under sanitizers;
# `make fuzz` builds the libFuzzer targets (clang).

CC ?= cc
BUILD ?= build
PKGS := expat openssl sqlite3 libidn libidn2 libcares
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS := $(shell pkg-config --libs $(PKGS))

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror
CFLAGS ?= -O2 -g
CFLAGS += -std=c11 -D_GNU_SOURCE $(WARN) -Iinclude $(PKG_CFLAGS) -MMD -MP
LDLIBS += $(PKG_LIBS) -lm

ifneq ($(SANITIZE),)
CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

CORE_SRC := $(filter-out src/main.c src/ctl.c,$(wildcard src/*.c))
CORE_OBJ := $(CORE_SRC:src/%.c=$(BUILD)/obj/%.o)
LIB := $(BUILD)/libisthmus.a
# Gateways: the framework (transports/common) and one directory per gateway; each gateway's
# main.c makes build/isthmus-<net>, its other files a library the unit tests link too.
GW_SRC := $(wildcard transports/common/*.c)
GW_OBJ := $(GW_SRC:transports/%.c=$(BUILD)/obj/transports/%.o)
GWLIB := $(BUILD)/libgw.a
IRC_SRC := $(filter-out transports/irc/main.c,$(wildcard transports/irc/*.c))
IRC_OBJ := $(IRC_SRC:transports/%.c=$(BUILD)/obj/transports/%.o)
IRCLIB := $(BUILD)/libircgw.a
GATEWAYS := $(BUILD)/isthmus-irc
TRANSPORT_INC := -Itransports/common -Itransports/irc
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# Rebuild everything when the flags change (e.g. switching SANITIZE on or off).
FLAGS_STAMP := $(BUILD)/.flags-$(shell echo '$(CC) $(CFLAGS) $(LDFLAGS)' | md5sum | cut -c1-12)

.PHONY: all clean test unit e2e fuzz fuzz-run bench format run check-config deps test-deps
all: $(BUILD)/isthmus $(BUILD)/isthmusctl $(GATEWAYS) $(UNIT_BIN)

# Installs missing Debian packages (as root; otherwise prints the apt-get line).
deps:
	@contrib/install-deps
test-deps:
	@contrib/install-deps --test

$(FLAGS_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.flags-*
	@touch $@

$(BUILD)/obj/%.o: src/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(CORE_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/obj/transports/%.o: transports/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(TRANSPORT_INC) -c -o $@ $<

$(GWLIB): $(GW_OBJ)
	rm -f $@
	ar rcs $@ $^

$(IRCLIB): $(IRC_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/isthmus-irc: $(BUILD)/obj/transports/irc/main.o $(IRCLIB) $(GWLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/isthmus: $(BUILD)/obj/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/isthmusctl: $(BUILD)/obj/ctl.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(IRCLIB) $(GWLIB) $(LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Itests/unit $(TRANSPORT_INC) $(LDFLAGS) -o $@ $< \
	  $(IRCLIB) $(GWLIB) $(LIB) $(LDLIBS)

# Benchmark tools are standalone clients: they do not link the server's code.
$(BUILD)/bench/%: bench/%.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< $(PKG_LIBS) -lm

# A second, independent client stack for the end-to-end tests (libstrophe).
$(BUILD)/tests/strophe_client: tests/e2e/strophe_client.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g -o $@ $< $(shell pkg-config --cflags --libs libstrophe)

# Our resolver on our loop, against the DNS server that tests/e2e/test_dns.py starts.
$(BUILD)/tests/resolve_tool: tests/e2e/resolve_tool.c $(LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do $$t || fail=1; done; exit $$fail

test: test-deps
	$(MAKE) all $(BUILD)/tests/strophe_client $(BUILD)/tests/resolve_tool
	ISTHMUS_BUILD=$(BUILD) tests/run

e2e: all $(BUILD)/tests/strophe_client $(BUILD)/tests/resolve_tool
	ISTHMUS_BUILD=$(BUILD) tests/run e2e

# libFuzzer targets: clang, ASan + UBSan, the core sources compiled in directly.
FUZZ_CC ?= clang
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE -Iinclude $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined
fuzz: $(FUZZ_BIN)
# A short run of every fuzz target (FUZZ_SECONDS each); crashes fail the build.
FUZZ_SECONDS ?= 30
fuzz-run: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do echo "fuzzing $$f for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -print_final_stats=0 2>&1 | tail -2 || exit 1; done
$(BUILD)/fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(GW_SRC) $(IRC_SRC)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(TRANSPORT_INC) -o $@ $< $(CORE_SRC) $(GW_SRC) $(IRC_SRC) $(LDLIBS)

bench: $(BENCH_BIN) $(BUILD)/isthmus $(BUILD)/isthmusctl

run: deps
	$(MAKE) $(BUILD)/isthmus $(BUILD)/isthmusctl
	$(BUILD)/isthmus -c conf/isthmus.conf

check-config: $(BUILD)/isthmus
	$(BUILD)/isthmus -t -c conf/isthmus.conf

format:
	clang-format -i src/*.c include/isthmus/*.h transports/*/*.[ch] tests/unit/*.c tests/fuzz/*.c \
	  $(BENCH_SRC)

clean:
	rm -rf $(BUILD)

-include $(CORE_OBJ:.o=.d) $(GW_OBJ:.o=.d) $(IRC_OBJ:.o=.d) $(BUILD)/obj/main.d $(BUILD)/obj/ctl.d \
  $(BUILD)/obj/transports/irc/main.d
