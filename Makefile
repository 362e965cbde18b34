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
# main.c makes build/isthmus-<net>, its other files build/lib<net>gw.a, which the unit tests link
# too. Each gateway's own libraries come from pkg-config, used for that directory only.
GW_SRC := $(wildcard transports/common/*.c)
GW_OBJ := $(GW_SRC:transports/%.c=$(BUILD)/obj/transports/%.o)
GWLIB := $(BUILD)/libgw.a
GW_NETS := irc sms mail purple
irc_PKGS :=
sms_PKGS := libcurl libmicrohttpd
mail_PKGS := libcurl gmime-3.0
purple_PKGS := purple glib-2.0
pkg_cflags = $(if $($(1)_PKGS),$(shell pkg-config --cflags $($(1)_PKGS)))
pkg_libs = $(if $($(1)_PKGS),$(shell pkg-config --libs $($(1)_PKGS)))
net_src = $(filter-out transports/$(1)/main.c,$(wildcard transports/$(1)/*.c))
net_obj = $(patsubst transports/%.c,$(BUILD)/obj/transports/%.o,$(call net_src,$(1)))
# Only directories that have a main.c are built (a gateway in progress does not break make).
NETS_BUILT := $(foreach n,$(GW_NETS),$(if $(wildcard transports/$(n)/main.c),$(n)))
GATEWAYS := $(NETS_BUILT:%=$(BUILD)/isthmus-%)
NET_LIBS := $(foreach n,$(NETS_BUILT),$(if $(call net_src,$(n)),$(BUILD)/lib$(n)gw.a))
NET_PKG_LIBS := $(foreach n,$(NETS_BUILT),$(call pkg_libs,$(n)))
TRANSPORT_INC := -Itransports/common $(NETS_BUILT:%=-Itransports/%)
IRC_SRC := $(call net_src,irc)
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
	$(CC) $(CFLAGS) $(TRANSPORT_INC) $(call pkg_cflags,$(firstword $(subst /, ,$*))) -c -o $@ $<

$(GWLIB): $(GW_OBJ)
	rm -f $@
	ar rcs $@ $^

define gateway_rules
$(BUILD)/lib$(1)gw.a: $(call net_obj,$(1))
	rm -f $$@
	ar rcs $$@ $$^

$(BUILD)/isthmus-$(1): $(BUILD)/obj/transports/$(1)/main.o $(if $(call net_src,$(1)),$(BUILD)/lib$(1)gw.a) $(GWLIB) $(LIB)
	$(CC) $(LDFLAGS) -o $$@ $$^ $(call pkg_libs,$(1)) $(LDLIBS)
endef
$(foreach n,$(NETS_BUILT),$(eval $(call gateway_rules,$(n))))

$(BUILD)/isthmus: $(BUILD)/obj/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/isthmusctl: $(BUILD)/obj/ctl.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(NET_LIBS) $(GWLIB) $(LIB) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CFLAGS)) -Itests/unit $(TRANSPORT_INC) \
	  $(foreach n,$(NETS_BUILT),$(call pkg_cflags,$(n))) $(LDFLAGS) -o $@ $< \
	  $(NET_LIBS) $(GWLIB) $(LIB) $(NET_PKG_LIBS) $(LDLIBS)

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
# (sh has no pipefail: the target's status is kept apart from tail's; crash inputs go to
# $(BUILD)/fuzz/, not into the source tree.)
fuzz-run: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do echo "fuzzing $$f for $(FUZZ_SECONDS)s"; \
	  out=$$($$f -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -print_final_stats=0 \
	    -artifact_prefix=$(BUILD)/fuzz/ 2>&1); rc=$$?; printf '%s\n' "$$out" | tail -2; \
	  [ $$rc -eq 0 ] || { printf '%s\n' "$$out" | grep -A12 'ERROR\|SUMMARY' | head -40; \
	    echo "$$f failed ($$rc)"; exit 1; }; done
# Gateway fuzz targets (fuzz_sms, fuzz_mail): that gateway's sources but main.c, compiled and
# linked with its pkg-config libraries. Explicit rules, so they win over the pattern rule below.
define fuzz_net_rule
$$(BUILD)/fuzz/fuzz_$(1): tests/fuzz/fuzz_$(1).c $$(CORE_SRC) $$(GW_SRC) $$(call net_src,$(1))
	@mkdir -p $$(dir $$@)
	$$(FUZZ_CC) $$(FUZZ_FLAGS) $$(TRANSPORT_INC) -Itransports/$(1) $$(call pkg_cflags,$(1)) -o $$@ \
	  $$< $$(CORE_SRC) $$(GW_SRC) $$(call net_src,$(1)) $$(call pkg_libs,$(1)) $$(LDLIBS)
endef
$(foreach n,sms mail,$(if $(wildcard tests/fuzz/fuzz_$(n).c),$(eval $(call fuzz_net_rule,$(n)))))
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

-include $(CORE_OBJ:.o=.d) $(GW_OBJ:.o=.d) $(BUILD)/obj/main.d $(BUILD)/obj/ctl.d \
  $(foreach n,$(NETS_BUILT),$(patsubst %.o,%.d,$(call net_obj,$(n))) $(BUILD)/obj/transports/$(n)/main.d)
