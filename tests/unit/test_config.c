/* test_config.c — the config reader: values, defaults, paths and every error message. */
#include "isthmus/config.h"
#include "isthmus/log.h"
#include "isthmus/util.h"

#include "test.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#define BASE "/etc/isthmus"

static char err[512];

static int parse(const char *text, struct config *cfg)
{
    return config_parse("t.conf", text, BASE, cfg, err, sizeof err);
}

static bool config_is_zero(const struct config *cfg)
{
    static const struct config zero;
    return memcmp(cfg, &zero, sizeof zero) == 0;
}

/* Parses text, expects failure with exactly `want`, and a config left zeroed. */
static void expect_error(const char *text, const char *want)
{
    struct config cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    int rc = parse(text, &cfg);
    CHECK(rc == -1);
    CHECK_STR(err, want);
    CHECK(config_is_zero(&cfg));
    config_fini(&cfg);
}

static const char full_file[] =
    "; every key, none at its default\n"
    "# a hash comment too\n"
    "\n"
    "[server]\n"
    "data_dir = /var/lib/isthmus\n"
    "log_level = debug\n"
    "log_file = logs/isthmus.log\n"
    "pidfile = /run/isthmus.pid\n"
    "hide_version = yes\n"
    "max_stanza_size = 512K\n"
    "max_depth = 64\n"
    "scram_iterations = 10000\n"
    "max_output_buffer = 2M\n"
    "\n"
    "[c2s]\n"
    "listen = 0.0.0.0:5222, [::]:5222\n"
    "tls_listen = [::1]:5223\n"
    "require_tls = off\n"
    "auth_timeout = 10\n"
    "idle_timeout = 300\n"
    "auth_failures = 3\n"
    "auth_failure_window = 120\n"
    "max_connections_per_ip = 20\n"
    "\n"
    "[tls]\n"
    "min_version = 1.3\n"
    "ciphers = HIGH:!aNULL:!MD5\n"
    "ciphersuites = TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\n"
    "\n"
    "[host Example.ORG]\n"
    "certificate = certs/example.pem\n"
    "key = /etc/ssl/private/example.key\n"
    "registration = true\n"
    "\n"
    "[host chat.example.net]\n";

static void test_full_file(void)
{
    struct config cfg;
    CHECK(parse(full_file, &cfg) == 0);
    CHECK_STR(err, "");
    CHECK_STR(cfg.path, "t.conf");
    CHECK_STR(cfg.data_dir, "/var/lib/isthmus");
    CHECK(cfg.log_level == LOG_DEBUG);
    CHECK_STR(cfg.log_file, BASE "/logs/isthmus.log");
    CHECK_STR(cfg.pidfile, "/run/isthmus.pid");
    CHECK(cfg.hide_version);
    CHECK(cfg.max_stanza_size == 512 * 1024);
    CHECK(cfg.max_depth == 64);
    CHECK(cfg.scram_iterations == 10000);
    CHECK(cfg.max_output_buffer == 2 * 1024 * 1024);

    CHECK(cfg.n_c2s_listen == 2);
    if (cfg.n_c2s_listen == 2) {
        CHECK_STR(cfg.c2s_listen[0].host, "0.0.0.0");
        CHECK(cfg.c2s_listen[0].port == 5222);
        CHECK_STR(cfg.c2s_listen[1].host, "::");
        CHECK(cfg.c2s_listen[1].port == 5222);
    }
    CHECK(cfg.n_c2s_tls_listen == 1);
    if (cfg.n_c2s_tls_listen == 1) {
        CHECK_STR(cfg.c2s_tls_listen[0].host, "::1");
        CHECK(cfg.c2s_tls_listen[0].port == 5223);
    }
    CHECK(!cfg.c2s_require_tls);
    CHECK(cfg.c2s_auth_timeout == 10);
    CHECK(cfg.c2s_idle_timeout == 300);
    CHECK(cfg.auth_failures == 3);
    CHECK(cfg.auth_failure_window == 120);
    CHECK(cfg.max_connections_per_ip == 20);

    CHECK(cfg.tls_min_version == 0x0304);
    CHECK_STR(cfg.tls_ciphers, "HIGH:!aNULL:!MD5");
    CHECK_STR(cfg.tls_ciphersuites, "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");

    CHECK(cfg.n_hosts == 2);
    if (cfg.n_hosts == 2) {
        CHECK_STR(cfg.hosts[0].name, "example.org");
        CHECK_STR(cfg.hosts[0].certificate, BASE "/certs/example.pem");
        CHECK_STR(cfg.hosts[0].key, "/etc/ssl/private/example.key");
        CHECK(cfg.hosts[0].registration);
        CHECK(cfg.hosts[0].line == 30);
        CHECK_STR(cfg.hosts[1].name, "chat.example.net");
        CHECK(cfg.hosts[1].certificate == NULL);
        CHECK(cfg.hosts[1].key == NULL);
        CHECK(!cfg.hosts[1].registration);
        CHECK(cfg.hosts[1].line == 35);
    }

    CHECK(config_host_find(&cfg, "example.org") == &cfg.hosts[0]);
    CHECK(config_host_find(&cfg, "EXAMPLE.org") == &cfg.hosts[0]);
    CHECK(config_host_find(&cfg, "Chat.Example.Net") == &cfg.hosts[1]);
    CHECK(config_host_find(&cfg, "example.com") == NULL);
    CHECK(config_host_find(&cfg, "example.or") == NULL);
    CHECK(config_host_find(&cfg, NULL) == NULL);

    config_fini(&cfg);
    CHECK(config_is_zero(&cfg));
    config_fini(&cfg); /* twice is harmless */
}

static void test_defaults(void)
{
    struct config cfg;
    CHECK(parse("[host localhost]\n", &cfg) == 0);
    CHECK_STR(cfg.data_dir, BASE "/data");
    CHECK(cfg.log_level == LOG_INFO);
    CHECK(cfg.log_file == NULL);
    CHECK(cfg.pidfile == NULL);
    CHECK(!cfg.hide_version);
    CHECK(cfg.max_stanza_size == 262144);
    CHECK(cfg.max_depth == 32);
    CHECK(cfg.scram_iterations == 4096);
    CHECK(cfg.max_output_buffer == 1024 * 1024);
    CHECK(cfg.n_c2s_listen == 1);
    if (cfg.n_c2s_listen == 1) {
        CHECK_STR(cfg.c2s_listen[0].host, "127.0.0.1");
        CHECK(cfg.c2s_listen[0].port == 5222);
    }
    CHECK(cfg.n_c2s_tls_listen == 1);
    if (cfg.n_c2s_tls_listen == 1) {
        CHECK_STR(cfg.c2s_tls_listen[0].host, "127.0.0.1");
        CHECK(cfg.c2s_tls_listen[0].port == 5223);
    }
    CHECK(cfg.c2s_require_tls);
    CHECK(cfg.c2s_auth_timeout == 30);
    CHECK(cfg.c2s_idle_timeout == 600);
    CHECK(cfg.auth_failures == 5);
    CHECK(cfg.auth_failure_window == 60);
    CHECK(cfg.max_connections_per_ip == 0);
    CHECK(cfg.tls_min_version == 0x0303);
    CHECK(cfg.tls_ciphers == NULL);
    CHECK(cfg.tls_ciphersuites == NULL);
    CHECK(cfg.n_hosts == 1);
    if (cfg.n_hosts == 1) {
        CHECK_STR(cfg.hosts[0].name, "localhost");
        CHECK(cfg.hosts[0].line == 1);
        CHECK(!cfg.hosts[0].registration);
    }
    config_fini(&cfg);

    /* Present-but-empty sections leave the defaults too. */
    CHECK(parse("[server]\n[c2s]\n[tls]\n[host a.example]\n", &cfg) == 0);
    CHECK(cfg.max_depth == 32 && cfg.c2s_require_tls && cfg.n_c2s_tls_listen == 1);
    config_fini(&cfg);
}

static void test_empty_values(void)
{
    struct config cfg;
    CHECK(parse("[c2s]\ntls_listen =\nlisten = \t \n[tls]\nciphers =\n"
                "[server]\nlog_file =\n[host a.example]\ncertificate=\nkey=\n",
                &cfg) == 0);
    CHECK(cfg.n_c2s_tls_listen == 0 && cfg.c2s_tls_listen == NULL);
    CHECK(cfg.n_c2s_listen == 0 && cfg.c2s_listen == NULL);
    CHECK(cfg.tls_ciphers == NULL);
    CHECK(cfg.log_file == NULL);
    CHECK(cfg.n_hosts == 1 && cfg.hosts[0].certificate == NULL && cfg.hosts[0].key == NULL);
    config_fini(&cfg);

    expect_error("[server]\ndata_dir =\n[host a.example]\n",
                 "t.conf:2: [server] data_dir: a value is required");
    expect_error("[server]\nhide_version =\n[host a.example]\n",
                 "t.conf:2: [server] hide_version: expected true/false, yes/no, on/off or 1/0, "
                 "got ''");
    expect_error("[server]\nmax_depth =\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: expected a whole number, got ''");
}

static void test_paths(void)
{
    struct config cfg;
    const char *text = "[server]\ndata_dir = ../var\nlog_file = /var/log/i.log\n"
                       "pidfile = run/i.pid\n[host a.example]\n";
    CHECK(parse(text, &cfg) == 0);
    CHECK_STR(cfg.data_dir, BASE "/../var");
    CHECK_STR(cfg.log_file, "/var/log/i.log");
    CHECK_STR(cfg.pidfile, BASE "/run/i.pid");
    config_fini(&cfg);

    /* A base directory with a trailing slash does not double it. */
    CHECK(config_parse("x", text, "/srv/", &cfg, err, sizeof err) == 0);
    CHECK_STR(cfg.data_dir, "/srv/../var");
    CHECK_STR(cfg.pidfile, "/srv/run/i.pid");
    config_fini(&cfg);

    /* No base directory: relative paths stay as written. */
    CHECK(config_parse("x", text, NULL, &cfg, err, sizeof err) == 0);
    CHECK_STR(cfg.data_dir, "../var");
    CHECK_STR(cfg.log_file, "/var/log/i.log");
    config_fini(&cfg);
}

static void test_value_forms(void)
{
    static const struct {
        const char *v;
        bool want;
    } bools[] = {{"true", 1},  {"yes", 1}, {"on", 1},  {"1", 1},
                 {"false", 0}, {"no", 0},  {"off", 0}, {"0", 0}};
    for (size_t i = 0; i < ARRAY_LEN(bools); i++) {
        char *text = xasprintf("[server]\nhide_version = %s\n[host a.example]\n", bools[i].v);
        struct config cfg;
        CHECK(parse(text, &cfg) == 0);
        CHECK(cfg.hide_version == bools[i].want);
        config_fini(&cfg);
        free(text);
    }

    static const struct {
        const char *v;
        size_t want;
    } sizes[] = {
        {"10000", 10000}, {"64k", 65536}, {"64K", 65536}, {"1m", 1048576}, {"64M", 64u << 20}};
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        char *text = xasprintf("[server]\nmax_stanza_size = %s\n[host a.example]\n", sizes[i].v);
        struct config cfg;
        CHECK(parse(text, &cfg) == 0);
        CHECK(cfg.max_stanza_size == sizes[i].want);
        config_fini(&cfg);
        free(text);
    }

    struct config cfg;
    CHECK(parse("[server]\nmax_output_buffer = 1G\nlog_level = error\n"
                "[c2s]\nlisten = localhost:1,[2001:db8::1]:65535 ,  10.0.0.1:5222\n"
                "[host a.example]\n",
                &cfg) == 0);
    CHECK(cfg.max_output_buffer == (size_t)1 << 30);
    CHECK(cfg.log_level == LOG_ERROR);
    CHECK(cfg.n_c2s_listen == 3);
    if (cfg.n_c2s_listen == 3) {
        CHECK_STR(cfg.c2s_listen[0].host, "localhost");
        CHECK(cfg.c2s_listen[0].port == 1);
        CHECK_STR(cfg.c2s_listen[1].host, "2001:db8::1");
        CHECK(cfg.c2s_listen[1].port == 65535);
        CHECK_STR(cfg.c2s_listen[2].host, "10.0.0.1");
        CHECK(cfg.c2s_listen[2].port == 5222);
    }
    config_fini(&cfg);

    /* Range edges are inclusive. */
    CHECK(parse("[server]\nmax_depth = 4\nscram_iterations = 4096\n[c2s]\n"
                "max_connections_per_ip = 0\n[host a.example]\n",
                &cfg) == 0);
    CHECK(cfg.max_depth == 4);
    config_fini(&cfg);
    CHECK(parse("[server]\nmax_depth = 256\n[host a.example]\n", &cfg) == 0);
    CHECK(cfg.max_depth == 256);
    config_fini(&cfg);
}

static void test_host_names(void)
{
    struct config cfg;
    CHECK(parse("[host  EXAMPLE.Com. ]\n[host caf\xc3\xa9.Example]\n[host 127.0.0.1]\n"
                "[host x-y.a1]\n",
                &cfg) == 0);
    CHECK(cfg.n_hosts == 4);
    if (cfg.n_hosts == 4) {
        CHECK_STR(cfg.hosts[0].name, "example.com");
        CHECK_STR(cfg.hosts[1].name, "caf\xc3\xa9.example");
        CHECK_STR(cfg.hosts[2].name, "127.0.0.1");
        CHECK_STR(cfg.hosts[3].name, "x-y.a1");
        CHECK(config_host_find(&cfg, "Example.COM") == &cfg.hosts[0]);
    }
    config_fini(&cfg);

    expect_error("[host a b]\n", "t.conf:1: [host a b]: invalid domain name: character ' ' not "
                                 "allowed");
    expect_error("[host a..b]\n", "t.conf:1: [host a..b]: invalid domain name: empty label");
    expect_error("[host .]\n", "t.conf:1: [host .]: invalid domain name: empty");
    expect_error("[host a_b.example]\n",
                 "t.conf:1: [host a_b.example]: invalid domain name: character '_' not allowed");
    expect_error("[host -a.example]\n",
                 "t.conf:1: [host -a.example]: invalid domain name: label starts or ends with '-'");
    expect_error("[host user@example]\n",
                 "t.conf:1: [host user@example]: invalid domain name: character '@' not allowed");

    char label[70], name[300];
    memset(label, 'a', 64);
    label[64] = '\0';
    snprintf(name, sizeof name, "[host %s.example]\n", label);
    char want[400];
    snprintf(want, sizeof want,
             "t.conf:1: [host %s.example]: invalid domain name: label longer "
             "than 63 octets",
             label);
    expect_error(name, want);
    label[63] = '\0';
    snprintf(name, sizeof name, "[host %s.example]\n", label);
    CHECK(parse(name, &cfg) == 0);
    config_fini(&cfg);

    struct buf long_name;
    buf_init(&long_name);
    buf_puts(&long_name, "[host ");
    for (int i = 0; i < 127; i++)
        buf_puts(&long_name, "a.");
    buf_puts(&long_name, "ab]\n"); /* 256 octets */
    CHECK(parse(long_name.data, &cfg) == -1);
    CHECK(strstr(err, "invalid domain name: longer than 253 octets") != NULL);
    buf_fini(&long_name);
}

static void test_errors(void)
{
    expect_error("[host a.example]\nfoo = 1\n", "t.conf:2: [host a.example] foo: unknown key");
    expect_error("[server]\nlisten = 127.0.0.1:5222\n[host a.example]\n",
                 "t.conf:2: [server] listen: unknown key");
    expect_error("[server]\n\n[foo]\n[host a.example]\n", "t.conf:3: unknown section [foo]");
    expect_error("[Server]\n", "t.conf:1: unknown section [Server]");
    expect_error("[gateway_x irc]\n", "t.conf:1: unknown section [gateway_x]");
    expect_error("[server]\nhide_version = maybe\n[host a.example]\n",
                 "t.conf:2: [server] hide_version: expected true/false, yes/no, on/off or 1/0, "
                 "got 'maybe'");
    expect_error("[host a.example]\nregistration = TRUE\n",
                 "t.conf:2: [host a.example] registration: expected true/false, yes/no, on/off or "
                 "1/0, got 'TRUE'");
    expect_error("[server]\nmax_depth = 100000\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: must be between 4 and 256, got '100000'");
    expect_error("[server]\nmax_depth = 3\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: must be between 4 and 256, got '3'");
    expect_error("[server]\nmax_depth = -1\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: expected a whole number, got '-1'");
    expect_error("[server]\nmax_depth = 0x20\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: expected a whole number, got '0x20'");
    expect_error("[server]\nmax_depth = 99999999999999999999999\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: must be between 4 and 256, got "
                 "'99999999999999999999999'");
    expect_error("[server]\nmax_depth = 99999999999999999999999x\n[host a.example]\n",
                 "t.conf:2: [server] max_depth: expected a whole number, got "
                 "'99999999999999999999999x'");
    expect_error("[server]\nmax_stanza_size = 99999999999999999999999Q\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: expected a size in bytes (optionally with K, "
                 "M or G), got '99999999999999999999999Q'");
    expect_error("[server]\nmax_stanza_size = 99999999999999999999999\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: must be between 10000 and 67108864 bytes, "
                 "got '99999999999999999999999'");
    expect_error("[c2s]\nlisten = a:99999999999999999999999x\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'a:99999999999999999999999x'");
    expect_error("[c2s]\nauth_timeout = 0\n[host a.example]\n",
                 "t.conf:2: [c2s] auth_timeout: must be between 1 and 3600, got '0'");
    expect_error("[server]\nscram_iterations = 1000\n[host a.example]\n",
                 "t.conf:2: [server] scram_iterations: must be between 4096 and 10000000, got "
                 "'1000'");
    expect_error("[server]\nmax_stanza_size = 10X\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: expected a size in bytes (optionally with K, "
                 "M or G), got '10X'");
    expect_error("[server]\nmax_stanza_size = 1KB\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: expected a size in bytes (optionally with K, "
                 "M or G), got '1KB'");
    expect_error("[server]\nmax_stanza_size = 1 K\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: expected a size in bytes (optionally with K, "
                 "M or G), got '1 K'");
    expect_error("[server]\nmax_stanza_size = 9999\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: must be between 10000 and 67108864 bytes, "
                 "got '9999'");
    expect_error("[server]\nmax_stanza_size = 99999999999G\n[host a.example]\n",
                 "t.conf:2: [server] max_stanza_size: must be between 10000 and 67108864 bytes, "
                 "got '99999999999G'");
    expect_error("[server]\nlog_level = verbose\n[host a.example]\n",
                 "t.conf:2: [server] log_level: expected debug, info, warn or error, got "
                 "'verbose'");
    expect_error("[tls]\nmin_version = 1.1\n[host a.example]\n",
                 "t.conf:2: [tls] min_version: expected 1.2 or 1.3, got '1.1'");

    /* Addresses. */
    expect_error("[c2s]\nlisten = x\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'x'");
    expect_error("[c2s]\nlisten = 127.0.0.1:5222, localhost\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'localhost'");
    expect_error("[c2s]\nlisten = :5222\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got ':5222'");
    expect_error("[c2s]\nlisten = a:\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'a:'");
    expect_error("[c2s]\nlisten = a:5222x\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'a:5222x'");
    expect_error("[c2s]\nlisten = a b:5222\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got 'a b:5222'");
    expect_error("[c2s]\nlisten = a:1,\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got an empty item in 'a:1,'");
    expect_error("[c2s]\nlisten = [::1]\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got '[::1]'");
    expect_error("[c2s]\nlisten = [::1:5222\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: expected HOST:PORT, got '[::1:5222'");
    expect_error("[c2s]\nlisten = [nope]:5222\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: 'nope' is not an IPv6 address");
    expect_error("[c2s]\nlisten = ::1:5222\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: IPv6 addresses need brackets, as in [::1]:5222; got "
                 "'::1:5222'");
    expect_error("[c2s]\ntls_listen = 127.0.0.1:70000\n[host a.example]\n",
                 "t.conf:2: [c2s] tls_listen: port must be 1..65535, got '70000'");
    expect_error("[c2s]\nlisten = [::1]:0\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: port must be 1..65535, got '0'");
    expect_error("[c2s]\nlisten = a:99999999999999999999999\n[host a.example]\n",
                 "t.conf:2: [c2s] listen: port must be 1..65535, got '99999999999999999999999'");

    /* Repetition. */
    expect_error("[server]\nmax_depth = 10\nhide_version = no\nmax_depth = 10\n[host a.example]\n",
                 "t.conf:4: [server] max_depth: duplicate key (first set on line 2)");
    expect_error("[host a.example]\nkey = k\ncertificate = c\nkey = k\n",
                 "t.conf:4: [host a.example] key: duplicate key (first set on line 2)");
    struct config cfg;
    /* The same key in two [host] sections is not a repetition. */
    CHECK(parse("[host a.example]\nregistration = yes\n[host b.example]\nregistration = no\n",
                &cfg) == 0);
    CHECK(cfg.n_hosts == 2);
    if (cfg.n_hosts == 2)
        CHECK(cfg.hosts[0].registration && !cfg.hosts[1].registration);
    config_fini(&cfg);
    expect_error("[server]\n[c2s]\n[server]\n[host a.example]\n",
                 "t.conf:3: duplicate section [server] (first on line 1)");
    expect_error("[host a.example]\n[host b.example]\n[host A.Example]\n",
                 "t.conf:3: duplicate [host a.example] (first on line 1)");
    expect_error("[host a.example.]\n[host a.example]\n",
                 "t.conf:2: duplicate [host a.example] (first on line 1)");

    /* Section headers. */
    expect_error("[host]\n", "t.conf:1: [host] needs a name, as in [host NAME]");
    expect_error("[server]\n[host   ]\n", "t.conf:2: [host] needs a name, as in [host NAME]");
    expect_error("[server main]\n", "t.conf:1: [server] takes no name, got [server main]");
    expect_error("[server\n", "t.conf:1: expected ']' to end the section header");
    expect_error("[server] x\n", "t.conf:1: unexpected text after the section header: 'x'");
    expect_error("[ ]\n", "t.conf:1: empty section name");

    /* Whole-file rules. */
    expect_error("[server]\n", "t.conf: no [host] section");
    expect_error("", "t.conf: no [host] section");
    expect_error("; nothing\n\n", "t.conf: no [host] section");
    expect_error("[host a.example]\ncertificate = a.pem\n[server]\n",
                 "t.conf:1: [host a.example] certificate without key (set both or neither)");
    expect_error("[host a.example]\n[host b.example]\nregistration = yes\nkey = b.key\n",
                 "t.conf:2: [host b.example] key without certificate (set both or neither)");

    /* Syntax. */
    expect_error("[server]\nhide_version = no\njunk\n[host a.example]\n",
                 "t.conf:3: expected 'key = value'");
    expect_error("[server]\n= 1\n", "t.conf:2: expected 'key = value'");
    expect_error("[server]\nhide version = 1\n", "t.conf:2: expected 'key = value'");
    expect_error("data_dir = x\n[host a.example]\n", "t.conf:1: key outside of any section");
    expect_error("\n\n  hide_version = yes\n", "t.conf:3: key outside of any section");
    expect_error("[server]\n; caf\xc3\n[host a.example]\n", "t.conf:2: invalid UTF-8");
    expect_error("[server]\ndata_dir = \xed\xa0\x80\n[host a.example]\n",
                 "t.conf:2: invalid UTF-8");
    expect_error("[server]\ndata_dir = a\rb\n", "t.conf:2: control character 0x0d");
    expect_error("[server]\ndata_dir = a\x1b[0m\n", "t.conf:2: control character 0x1b");

    /* The first error in file order wins. */
    expect_error("[host a.example]\nkey = k\n[bogus]\n",
                 "t.conf:1: [host a.example] key without certificate (set both or neither)");
    expect_error("[server]\nmax_depth = 1\nfoo = 2\n",
                 "t.conf:2: [server] max_depth: must be between 4 and 256, got '1'");
}

static void test_err_buffer(void)
{
    struct config cfg;
    char small[8];
    CHECK(config_parse("t.conf", "[server]\n", NULL, &cfg, small, sizeof small) == -1);
    CHECK_STR(small, "t.conf:");
    CHECK(config_parse("t.conf", "[server]\n", NULL, &cfg, NULL, 0) == -1);
    CHECK(config_is_zero(&cfg));
}

static void test_crlf(void)
{
    struct config cfg;
    CHECK(parse("\xEF\xBB\xBF[server]\r\nlog_level = warn\r\ndata_dir = d\r\n\r\n"
                "[c2s]\r\nlisten = [::1]:5222 \r\n[host A.example]\r\n",
                &cfg) == 0);
    CHECK(cfg.log_level == LOG_WARN);
    CHECK_STR(cfg.data_dir, BASE "/d");
    CHECK(cfg.n_c2s_listen == 1 && cfg.c2s_listen[0].port == 5222);
    CHECK(cfg.n_hosts == 1);
    if (cfg.n_hosts == 1)
        CHECK_STR(cfg.hosts[0].name, "a.example");
    config_fini(&cfg);

    expect_error("[server]\r\nhide_version = nope\r\n[host a.example]\r\n",
                 "t.conf:2: [server] hide_version: expected true/false, yes/no, on/off or 1/0, "
                 "got 'nope'");
}

static void test_inline_comments(void)
{
    struct config cfg;
    CHECK(parse("[server] ; the main section\n"
                "data_dir = spool # relative to the config\n"
                "hide_version = yes;no\n"
                "[tls]\n"
                "ciphers = HIGH:!aNULL#x\t; OpenSSL syntax\n"
                "ciphersuites = ;\n"
                "[c2s]\n"
                "tls_listen = ; none\n"
                "[host a.example] # the only host\n"
                "registration = on\t#\n",
                &cfg) == -1);
    /* "yes;no" is one value: the ';' follows no whitespace. */
    CHECK_STR(err, "t.conf:3: [server] hide_version: expected true/false, yes/no, on/off or 1/0, "
                   "got 'yes;no'");

    CHECK(parse("[server] ; the main section\n"
                "data_dir = spool # relative to the config\n"
                "hide_version = yes ;no\n"
                "[tls]\n"
                "ciphers = HIGH:!aNULL#x\t; OpenSSL syntax\n"
                "ciphersuites = ;\n"
                "[c2s]\n"
                "tls_listen = ; none\n"
                "[host a.example] # the only host\n"
                "registration = on\t#\n",
                &cfg) == 0);
    CHECK_STR(err, "");
    CHECK_STR(cfg.data_dir, BASE "/spool");
    CHECK(cfg.hide_version);
    CHECK_STR(cfg.tls_ciphers, "HIGH:!aNULL#x");
    CHECK(cfg.tls_ciphersuites == NULL);
    CHECK(cfg.n_c2s_tls_listen == 0);
    CHECK(cfg.n_c2s_listen == 1);
    CHECK(cfg.n_hosts == 1 && cfg.hosts[0].registration);
    config_fini(&cfg);
}

static char *write_temp(const char *dir, const char *name, const char *data, size_t len)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    if (fp) {
        CHECK(fwrite(data, 1, len, fp) == len);
        fclose(fp);
    }
    return path;
}

static void test_load(void)
{
    struct config cfg;
    memset(&cfg, 0x5A, sizeof cfg);
    CHECK(config_load("/nonexistent/isthmus.conf", &cfg, err, sizeof err) == -1);
    CHECK_STR(err, "/nonexistent/isthmus.conf: cannot read: No such file or directory");
    CHECK(config_is_zero(&cfg));

    char tmpl[] = "/tmp/test_config.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL);
    if (!dir)
        return;
    char *real = realpath(dir, NULL);
    CHECK(real != NULL);

    CHECK(config_load(dir, &cfg, err, sizeof err) == -1);
    char *want = xasprintf("%s: cannot read: Is a directory", dir);
    CHECK_STR(err, want);
    free(want);

    static const char good[] = "[server]\npidfile = run/isthmus.pid\n"
                               "[host Example.org]\ncertificate = c.pem\nkey = /k.pem\n";
    char *path = write_temp(dir, "isthmus.conf", good, sizeof good - 1);
    CHECK(config_load(path, &cfg, err, sizeof err) == 0);
    CHECK_STR(cfg.path, path);
    want = xasprintf("%s/data", real);
    CHECK_STR(cfg.data_dir, want);
    free(want);
    want = xasprintf("%s/run/isthmus.pid", real);
    CHECK_STR(cfg.pidfile, want);
    free(want);
    want = xasprintf("%s/c.pem", real);
    CHECK(cfg.n_hosts == 1);
    if (cfg.n_hosts == 1) {
        CHECK_STR(cfg.hosts[0].certificate, want);
        CHECK_STR(cfg.hosts[0].key, "/k.pem");
    }
    free(want);
    config_fini(&cfg);

    /* A relative config path still yields absolute resolved paths. */
    char cwd[PATH_MAX];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK(chdir(dir) == 0);
    CHECK(config_load("isthmus.conf", &cfg, err, sizeof err) == 0);
    want = xasprintf("%s/data", real);
    CHECK_STR(cfg.data_dir, want);
    free(want);
    config_fini(&cfg);
    CHECK(chdir(cwd) == 0);

    static const char with_nul[] = "[server]\nlog_level = de\0bug\n[host a.example]\n";
    char *nul_path = write_temp(dir, "nul.conf", with_nul, sizeof with_nul - 1);
    CHECK(config_load(nul_path, &cfg, err, sizeof err) == -1);
    want = xasprintf("%s:2: NUL byte", nul_path);
    CHECK_STR(err, want);
    free(want);
    CHECK(config_is_zero(&cfg));

    static const char bad[] = "[host a.example]\r\n\r\nbogus = 1\r\n";
    char *bad_path = write_temp(dir, "bad.conf", bad, sizeof bad - 1);
    CHECK(config_load(bad_path, &cfg, err, sizeof err) == -1);
    want = xasprintf("%s:3: [host a.example] bogus: unknown key", bad_path);
    CHECK_STR(err, want);
    free(want);

    unlink(path);
    unlink(nul_path);
    unlink(bad_path);
    rmdir(dir);
    free(path);
    free(nul_path);
    free(bad_path);
    free(real);
}

/* Every prefix and every single-byte corruption of the full file either parses or fails with a
 * message; none crashes or leaks (run under ASan). */
static void test_robustness(void)
{
    size_t len = strlen(full_file);
    char *copy = xmalloc(len + 1);
    int ok = 0, failed = 0;
    for (size_t n = 0; n <= len; n++) {
        memcpy(copy, full_file, n);
        copy[n] = '\0';
        struct config cfg;
        err[0] = '\0';
        if (parse(copy, &cfg) == 0) {
            ok++;
        } else {
            failed++;
            CHECK(strncmp(err, "t.conf", 6) == 0);
        }
        config_fini(&cfg);
    }
    static const char junk[] = {'\n', '\r', '[', ']', '=', ';', ',', ':', ' ', 'Z', '\x80', '\xff'};
    for (size_t i = 0; i < len; i++) {
        for (size_t j = 0; j < sizeof junk; j++) {
            memcpy(copy, full_file, len + 1);
            copy[i] = junk[j];
            struct config cfg;
            err[0] = '\0';
            if (parse(copy, &cfg) == 0) {
                ok++;
            } else {
                failed++;
                CHECK(strncmp(err, "t.conf", 6) == 0);
            }
            config_fini(&cfg);
        }
    }
    CHECK(ok > 0 && failed > 0);
    free(copy);
}


/* [s2s]: domain lists, routes, defaults when the section is absent, errors naming the key. */
static void test_s2s(void)
{
    struct config cfg;
    CHECK(parse("[host a.example]\n", &cfg) == 0);
    CHECK(cfg.n_s2s_listen == 0 && cfg.s2s_require_encryption && cfg.s2s_dialback &&
          !cfg.s2s_require_valid_certs && cfg.s2s_connect_timeout == 20 &&
          cfg.s2s_max_queue == 500);
    CHECK_STR(cfg.s2s_ca_file, "/etc/ssl/certs/ca-certificates.crt");
    config_fini(&cfg);

    CHECK(parse("[s2s]\nlisten = 127.0.0.10:5269\n"
                "allow = Peer.TEST, ej.test.\n"
                "deny = evil.test\n"
                "routes = peer.test=127.0.0.2:5269, ej.test = [::1]:5270\n"
                "require_valid_certificates = yes\n"
                "[host a.example]\n",
                &cfg) == 0);
    CHECK(cfg.n_s2s_allow == 2 && cfg.n_s2s_deny == 1 && cfg.n_s2s_routes == 2);
    if (cfg.n_s2s_allow == 2 && cfg.n_s2s_routes == 2) {
        CHECK_STR(cfg.s2s_allow[0], "peer.test");
        CHECK_STR(cfg.s2s_allow[1], "ej.test");
        CHECK_STR(cfg.s2s_routes[0].domain, "peer.test");
        CHECK_STR(cfg.s2s_routes[0].addr.host, "127.0.0.2");
        CHECK(cfg.s2s_routes[0].addr.port == 5269);
        CHECK_STR(cfg.s2s_routes[1].addr.host, "::1");
        CHECK(cfg.s2s_routes[1].addr.port == 5270);
    }
    CHECK(cfg.s2s_require_valid_certs);
    config_fini(&cfg);

    expect_error("[s2s]\nroutes = peer.test:5269\n[host a.example]\n",
                 "t.conf:2: [s2s] routes: expected DOMAIN=HOST:PORT, got 'peer.test:5269'");
    expect_error("[s2s]\nallow = good.test, bad_domain\n[host a.example]\n",
                 "t.conf:2: [s2s] allow: 'bad_domain' is not a domain name: character '_' not "
                 "allowed");
    expect_error("[s2s]\nroutes = a.test=127.0.0.1:0\n[host a.example]\n",
                 "t.conf:2: [s2s] routes: port must be 1..65535, got '0'");
}

/* [gateway NAME], [irc-network NAME], [bridge NAME]: a gateway is also a supervised component. */
static void test_gateways(void)
{
    struct config cfg;
    CHECK(parse("[host a.example]\n"
                "[gateway irc.a.example]\ntype = irc\nadmins = me@a.example, you@a.example\n"
                "irc_flood_burst = 20\n"
                "[irc-network irc.test]\ntls = false\n"
                "[irc-network Secure.Example]\naddress = 10.0.0.1:7000\n"
                "[bridge one]\nirc = #chan%irc.test\nmuc = Room@conference.a.example\n"
                "[bridge two]\ngateway = irc.a.example\nirc = #x@irc.test\n"
                "muc = r@conference.a.example\nnick = bot\n",
                &cfg) == 0);
    CHECK(cfg.n_gateways == 1);
    const struct config_gateway *g = config_gateway_find(&cfg, "irc.a.example");
    CHECK(g && g->enabled && g->irc_flood_burst == 20 && g->irc_tls_verify);
    CHECK(g && g->n_admins == 2 && strcmp(g->admins[1], "you@a.example") == 0);
    CHECK(g && g->archive_days == 30);
    const struct config_component *c = config_component_find(&cfg, "irc.a.example");
    CHECK(c && c->command && strstr(c->command, "isthmus-irc") &&
          strstr(c->command, "-n irc.a.example"));
    CHECK(c && c->roster_access == (CONFIG_ROSTER_GET | CONFIG_ROSTER_SET) && c->message_outgoing);
    const struct config_irc_network *n = config_irc_network_find(&cfg, "irc.test");
    CHECK(n && !n->tls && n->n_address == 1 && n->address[0].port == 6667 &&
          strcmp(n->address[0].host, "irc.test") == 0);
    n = config_irc_network_find(&cfg, "secure.example");
    CHECK(n && n->tls && n->address[0].port == 7000);
    CHECK(cfg.n_bridges == 2);
    CHECK_STR(cfg.bridges[0].channel, "#chan");
    CHECK_STR(cfg.bridges[0].network, "irc.test");
    CHECK_STR(cfg.bridges[0].muc, "room@conference.a.example");
    CHECK_STR(cfg.bridges[0].gateway, "irc.a.example");
    CHECK_STR(cfg.bridges[0].nick, "relaybot");
    CHECK_STR(cfg.bridges[1].channel, "#x");
    CHECK_STR(cfg.bridges[1].nick, "bot");
    config_fini(&cfg);

    /* Disabled: no component; standalone (server set): needs its secret, not supervised. */
    CHECK(parse("[host a.example]\n[gateway sms.a.example]\ntype = sms\nenabled = false\n"
                "[gateway mail.a.example]\ntype = mail\nserver = 127.0.0.1:5347\nsecret = s\n",
                &cfg) == 0);
    CHECK(!config_component_find(&cfg, "sms.a.example"));
    c = config_component_find(&cfg, "mail.a.example");
    CHECK(c && !c->command && str_eq(c->secret, "s"));
    config_fini(&cfg);

    expect_error("[host a.example]\n[gateway g.a.example]\n",
                 "t.conf:2: [gateway g.a.example] needs a type (irc, sms, mail or purple)");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = icq\n",
                 "t.conf:2: [gateway g.a.example] type: expected irc, sms, mail or purple, got "
                 "'icq'");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\nroster = all\n",
                 "t.conf:2: [gateway g.a.example] roster: expected none, get, set or both, got "
                 "'all'");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\nserver = 127.0.0.1:1\n",
                 "t.conf:2: [gateway g.a.example] needs a secret (or a command, which gets a "
                 "generated one)");
    expect_error("[host a.example]\n[component g.a.example]\nsecret = x\n"
                 "[gateway g.a.example]\ntype = irc\n",
                 "t.conf:4: [gateway g.a.example]: there is a [component g.a.example] of the "
                 "same name");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\n[gateway g.a.example]\n",
                 "t.conf:4: duplicate [gateway g.a.example]");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\nbogus = 1\n",
                 "t.conf:4: [gateway g.a.example] bogus: unknown key");
    expect_error("[host a.example]\n[bridge b]\nirc = #c%irc.test\nmuc = r@c.a.example\n",
                 "t.conf:2: [bridge b] needs gateway = NAME (there is no irc gateway)");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\n"
                 "[bridge b]\nirc = chan%irc.test\nmuc = r@c.a.example\n",
                 "t.conf:4: [bridge b] irc: expected #channel%server, got 'chan%irc.test'");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\n"
                 "[bridge b]\nirc = #c%irc.test\nmuc = room\n",
                 "t.conf:4: [bridge b] muc: expected room@service, got 'room'");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\n"
                 "[bridge b]\nirc = #c%irc.test\n",
                 "t.conf:4: [bridge b] needs irc (#channel%server) and muc (room@service)");
    expect_error("[host a.example]\n[gateway g.a.example]\ntype = irc\n"
                 "[bridge b]\ngateway = other.a.example\nirc = #c%irc.test\nmuc = r@c.a.example\n",
                 "t.conf:4: [bridge b] gateway: no [gateway other.a.example] of type irc");
    expect_error("[host a.example]\n[irc-network x]\naddress = 1.2.3.4:1, 1.2.3.4:2\n",
                 "t.conf:2: [irc-network x] address: one HOST:PORT expected");
}

int main(void)
{
    TEST_RUN(test_full_file);
    TEST_RUN(test_defaults);
    TEST_RUN(test_empty_values);
    TEST_RUN(test_paths);
    TEST_RUN(test_value_forms);
    TEST_RUN(test_host_names);
    TEST_RUN(test_errors);
    TEST_RUN(test_err_buffer);
    TEST_RUN(test_crlf);
    TEST_RUN(test_inline_comments);
    TEST_RUN(test_load);
    TEST_RUN(test_robustness);
    TEST_RUN(test_s2s);
    TEST_RUN(test_gateways);
    return TEST_DONE();
}
