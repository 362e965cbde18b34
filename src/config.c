/* config.c — the INI reader and the table of directives.
 *
 * Every key is a row in `directives[]`: its section, name, type, where it lands (an offset into
 * struct config, or into the section's own struct for named sections), its default and its range.
 * Adding a key is adding a row; adding a section is a row in `sections[]` plus, for a named
 * section ([host NAME]), an open/close pair that allocates its entry and checks it when it ends. */
#include "isthmus/config.h"

#include "isthmus/log.h"
#include "isthmus/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Config files are small; anything bigger is a mistake (or not a config file). */
#define CONFIG_MAX_FILE (1024 * 1024)

enum directive_type {
    T_BOOL,
    T_UINT,        /* unsigned */
    T_SIZE,        /* size_t, bytes with optional K/M/G suffix */
    T_STRING,      /* char *, empty = NULL */
    T_PATH,        /* char *, resolved against the config's directory, empty = NULL */
    T_LOG_LEVEL,   /* int, enum log_level */
    T_TLS_VERSION, /* int, 0x0303 / 0x0304 */
    T_ADDR_LIST,   /* struct config_addr * at offset, size_t count at count_offset */
    T_ARCHIVE_POLICY, /* int, enum archive_policy: always | roster | never */
    T_DOMAIN_LIST,    /* char ** at offset, size_t count at count_offset: "a.example, b.example" */
    T_ROUTE_LIST,     /* struct config_route *, count: "a.example=127.0.0.2:5269, ..." */
    T_STRING_LIST,    /* char ** at offset, size_t count: "a@example.org, b@example.org" */
};

#define D_REQUIRED 1u /* an empty value is an error (types where empty would mean NULL) */

struct directive {
    const char *section;
    const char *key;
    enum directive_type type;
    size_t offset;
    size_t count_offset;
    const char *def; /* parsed like a value from the file when the key is absent; NULL = zero */
    unsigned long long min, max;
    unsigned flags;
};

#define CFG(f) offsetof(struct config, f)
#define HOST(f) offsetof(struct config_host, f)
#define COMP(f) offsetof(struct config_component, f)
#define GW(f) offsetof(struct config_gateway, f)
#define IRCNET(f) offsetof(struct config_irc_network, f)
#define BRIDGE(f) offsetof(struct config_bridge, f)
#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)

static const struct directive directives[] = {
    {"server", "data_dir", T_PATH, CFG(data_dir), 0, "data", 0, 0, D_REQUIRED},
    {"server", "log_level", T_LOG_LEVEL, CFG(log_level), 0, "info", 0, 0, 0},
    {"server", "log_file", T_PATH, CFG(log_file), 0, NULL, 0, 0, 0},
    {"server", "pidfile", T_PATH, CFG(pidfile), 0, NULL, 0, 0, 0},
    {"server", "hide_version", T_BOOL, CFG(hide_version), 0, "false", 0, 0, 0},
    /* RFC 6120 §13.12 (4): the stanza size limit must not be less than 10000 bytes. */
    {"server", "max_stanza_size", T_SIZE, CFG(max_stanza_size), 0, "262144", 10000, 64 * MIB, 0},
    {"server", "max_depth", T_UINT, CFG(max_depth), 0, "32", 4, 256, 0},
    /* RFC 7677 §4: the iteration count SHOULD be at least 4096. */
    {"server", "scram_iterations", T_UINT, CFG(scram_iterations), 0, "4096", 4096, 10000000, 0},
    {"server", "max_output_buffer", T_SIZE, CFG(max_output_buffer), 0, "1M", 16 * KIB, GIB, 0},
    /* One user's vCard or private XML item. */
    {"server", "max_user_item_size", T_SIZE, CFG(max_user_item_size), 0, "64K", 1 * KIB, 16 * MIB,
     0},

    {"c2s", "listen", T_ADDR_LIST, CFG(c2s_listen), CFG(n_c2s_listen), "127.0.0.1:5222", 0, 0, 0},
    {"c2s", "tls_listen", T_ADDR_LIST, CFG(c2s_tls_listen), CFG(n_c2s_tls_listen), "127.0.0.1:5223",
     0, 0, 0},
    {"c2s", "require_tls", T_BOOL, CFG(c2s_require_tls), 0, "true", 0, 0, 0},
    {"c2s", "auth_timeout", T_UINT, CFG(c2s_auth_timeout), 0, "30", 1, 3600, 0},
    {"c2s", "idle_timeout", T_UINT, CFG(c2s_idle_timeout), 0, "600", 1, 86400, 0},
    {"c2s", "hibernate_after", T_UINT, CFG(c2s_hibernate_after), 0, "10", 1, 86400, 0},
    {"c2s", "auth_failures", T_UINT, CFG(auth_failures), 0, "5", 1, 1000, 0},
    {"c2s", "auth_failure_window", T_UINT, CFG(auth_failure_window), 0, "60", 1, 86400, 0},
    {"c2s", "registration_interval", T_UINT, CFG(c2s_registration_interval), 0, "60", 0, 86400, 0},
    {"c2s", "max_connections_per_ip", T_UINT, CFG(max_connections_per_ip), 0, "0", 0, 1000000, 0},

    {"s2s", "listen", T_ADDR_LIST, CFG(s2s_listen), CFG(n_s2s_listen), "", 0, 0, 0},
    {"s2s", "tls_listen", T_ADDR_LIST, CFG(s2s_tls_listen), CFG(n_s2s_tls_listen), "", 0, 0, 0},
    {"s2s", "require_encryption", T_BOOL, CFG(s2s_require_encryption), 0, "true", 0, 0, 0},
    {"s2s", "require_valid_certificates", T_BOOL, CFG(s2s_require_valid_certs), 0, "false", 0, 0,
     0},
    {"s2s", "dialback", T_BOOL, CFG(s2s_dialback), 0, "true", 0, 0, 0},
    {"s2s", "allow", T_DOMAIN_LIST, CFG(s2s_allow), CFG(n_s2s_allow), "", 0, 0, 0},
    {"s2s", "deny", T_DOMAIN_LIST, CFG(s2s_deny), CFG(n_s2s_deny), "", 0, 0, 0},
    {"s2s", "routes", T_ROUTE_LIST, CFG(s2s_routes), CFG(n_s2s_routes), "", 0, 0, 0},
    {"s2s", "nameserver", T_ADDR_LIST, CFG(s2s_nameserver), CFG(n_s2s_nameserver), "", 0, 0, 0},
    {"s2s", "ca_file", T_PATH, CFG(s2s_ca_file), 0, "/etc/ssl/certs/ca-certificates.crt", 0, 0, 0},
    {"s2s", "connect_timeout", T_UINT, CFG(s2s_connect_timeout), 0, "20", 1, 600, 0},
    {"s2s", "idle_timeout", T_UINT, CFG(s2s_idle_timeout), 0, "600", 10, 86400, 0},
    {"s2s", "max_queue", T_UINT, CFG(s2s_max_queue), 0, "500", 1, 100000, 0},

    {"tls", "min_version", T_TLS_VERSION, CFG(tls_min_version), 0, "1.2", 0, 0, 0},
    {"tls", "ciphers", T_STRING, CFG(tls_ciphers), 0, NULL, 0, 0, 0},
    {"tls", "ciphersuites", T_STRING, CFG(tls_ciphersuites), 0, NULL, 0, 0, 0},

    {"roster", "max_items", T_UINT, CFG(roster_max_items), 0, "1000", 1, 100000, 0},

    {"offline", "max_messages", T_UINT, CFG(offline_max_messages), 0, "1000", 0, 1000000, 0},

    {"mam", "default", T_ARCHIVE_POLICY, CFG(mam_default), 0, "always", 0, 0, 0},
    {"mam", "expire_days", T_UINT, CFG(mam_expire_days), 0, "365", 0, 36500, 0},
    {"mam", "max_page", T_UINT, CFG(mam_max_page), 0, "100", 1, 1000, 0},

    {"sm", "resume_timeout", T_UINT, CFG(sm_resume_timeout), 0, "300", 0, 86400, 0},
    {"sm", "max_unacked", T_UINT, CFG(sm_max_unacked), 0, "1000", 10, 100000, 0},

    {"muc", "hosts", T_DOMAIN_LIST, CFG(muc_hosts), CFG(n_muc_hosts), "", 0, 0, 0},
    {"muc", "max_occupants", T_UINT, CFG(muc_max_occupants), 0, "200", 1, 100000, 0},
    {"muc", "history_max", T_UINT, CFG(muc_history_max), 0, "20", 0, 1000, 0},
    {"muc", "allow_create", T_BOOL, CFG(muc_allow_create), 0, "true", 0, 0, 0},
    {"muc", "persistent_default", T_BOOL, CFG(muc_persistent_default), 0, "false", 0, 0, 0},

    {"host", "certificate", T_PATH, HOST(certificate), 0, NULL, 0, 0, 0},
    {"host", "key", T_PATH, HOST(key), 0, NULL, 0, 0, 0},
    {"host", "registration", T_BOOL, HOST(registration), 0, "false", 0, 0, 0},

    {"component", "listen", T_ADDR_LIST, CFG(component_listen), CFG(n_component_listen), "", 0,
     0, 0},
    {"component NAME", "secret", T_STRING, COMP(secret), 0, NULL, 0, 0, 0},
    {"component NAME", "roster", T_STRING, COMP(roster), 0, "none", 0, 0, 0},
    {"component NAME", "message", T_STRING, COMP(message), 0, "none", 0, 0, 0},
    {"component NAME", "command", T_STRING, COMP(command), 0, NULL, 0, 0, 0},
    {"component NAME", "restart_delay", T_UINT, COMP(restart_delay), 0, "1", 1, 60, 0},

    {"gateway", "type", T_STRING, GW(type), 0, NULL, 0, 0, 0},
    {"gateway", "enabled", T_BOOL, GW(enabled), 0, "true", 0, 0, 0},
    {"gateway", "command", T_STRING, GW(command), 0, NULL, 0, 0, 0},
    {"gateway", "secret", T_STRING, GW(secret), 0, NULL, 0, 0, 0},
    {"gateway", "roster", T_STRING, GW(roster), 0, "both", 0, 0, 0},
    {"gateway", "message", T_STRING, GW(message), 0, "outgoing", 0, 0, 0},
    {"gateway", "restart_delay", T_UINT, GW(restart_delay), 0, "1", 1, 60, 0},
    {"gateway", "server", T_ADDR_LIST, GW(server), GW(n_server), "", 0, 0, 0},
    {"gateway", "database", T_PATH, GW(database), 0, NULL, 0, 0, 0},
    {"gateway", "key_file", T_PATH, GW(key_file), 0, NULL, 0, 0, 0},
    {"gateway", "admins", T_STRING_LIST, GW(admins), GW(n_admins), "", 0, 0, 0},
    {"gateway", "archive_days", T_UINT, GW(archive_days), 0, "30", 0, 36500, 0},
    {"gateway", "irc_realname", T_STRING, GW(irc_realname), 0, NULL, 0, 0, 0},
    {"gateway", "irc_tls_verify", T_BOOL, GW(irc_tls_verify), 0, "true", 0, 0, 0},
    {"gateway", "irc_flood_burst", T_UINT, GW(irc_flood_burst), 0, "5", 1, 100000, 0},
    {"gateway", "irc_flood_interval_ms", T_UINT, GW(irc_flood_interval_ms), 0, "2000", 0, 60000,
     0},
    {"gateway", "irc_networks_only", T_BOOL, GW(irc_networks_only), 0, "false", 0, 0, 0},
    {"gateway", "irc_max_connections", T_UINT, GW(irc_max_connections), 0, "0", 0, 10000000, 0},
    {"gateway", "sms_provider", T_STRING, GW(sms_provider), 0, "kannel", 0, 0, 0},
    {"gateway", "sms_url", T_STRING, GW(sms_url), 0, NULL, 0, 0, 0},
    {"gateway", "sms_username", T_STRING, GW(sms_username), 0, NULL, 0, 0, 0},
    {"gateway", "sms_password", T_STRING, GW(sms_password), 0, NULL, 0, 0, 0},
    {"gateway", "sms_from", T_STRING, GW(sms_from), 0, NULL, 0, 0, 0},
    {"gateway", "sms_listen", T_ADDR_LIST, GW(sms_listen), GW(n_sms_listen), "", 0, 0, 0},
    {"gateway", "sms_public_url", T_STRING, GW(sms_public_url), 0, NULL, 0, 0, 0},
    {"gateway", "sms_secret", T_STRING, GW(sms_secret), 0, NULL, 0, 0, 0},
    {"gateway", "sms_default_country", T_STRING, GW(sms_default_country), 0, "1", 0, 0, 0},
    {"gateway", "sms_max_parts", T_UINT, GW(sms_max_parts), 0, "6", 1, 255, 0},
    {"gateway", "sms_verify", T_BOOL, GW(sms_verify), 0, "true", 0, 0, 0},
    {"gateway", "mail_allow_plaintext", T_BOOL, GW(mail_allow_plaintext), 0, "false", 0, 0, 0},
    {"gateway", "mail_poll_interval", T_UINT, GW(mail_poll_interval), 0, "60", 1, 86400, 0},
    {"gateway", "mail_default_subject", T_STRING, GW(mail_default_subject), 0, NULL, 0, 0, 0},
    {"gateway", "mail_workers", T_UINT, GW(mail_workers), 0, "4", 1, 64, 0},
    {"gateway", "mail_max_size", T_SIZE, GW(mail_max_size), 0, "10M", 1 * KIB, GIB, 0},
    {"gateway", "mail_ca_file", T_PATH, GW(mail_ca_file), 0, NULL, 0, 0, 0},
    {"gateway", "purple_accounts_per_backend", T_UINT, GW(purple_accounts_per_backend), 0, "50", 1,
     10000, 0},
    {"gateway", "purple_protocols", T_STRING_LIST, GW(purple_protocols), GW(n_purple_protocols), "",
     0, 0, 0},

    {"irc-network", "address", T_ADDR_LIST, IRCNET(address), IRCNET(n_address), NULL, 0, 0, 0},
    {"irc-network", "tls", T_BOOL, IRCNET(tls), 0, "true", 0, 0, 0},
    {"irc-network", "tls_verify", T_BOOL, IRCNET(tls_verify), 0, "true", 0, 0, 0},
    {"irc-network", "password", T_STRING, IRCNET(password), 0, NULL, 0, 0, 0},

    {"bridge", "gateway", T_STRING, BRIDGE(gateway), 0, NULL, 0, 0, 0},
    {"bridge", "irc", T_STRING, BRIDGE(irc), 0, NULL, 0, 0, 0},
    {"bridge", "muc", T_STRING, BRIDGE(muc), 0, NULL, 0, 0, 0},
    {"bridge", "nick", T_STRING, BRIDGE(nick), 0, "relaybot", 0, 0, 0},
};

#define N_DIRECTIVES ARRAY_LEN(directives)

struct parser;

/* A named section's entry: open() validates the name, appends an entry and returns where its
 * directives land (NULL after setting the error); close() applies the entry's defaults and checks
 * rules that span keys. `keys` names the directives' section when it differs from `name` (a
 * name used both with and without NAME: [component] and [component NAME]). */
struct section_def {
    const char *name;
    bool named;
    void *(*open)(struct parser *p, const char *arg, unsigned line);
    int (*close)(struct parser *p, void *base);
    const char *keys;
};

static void *host_open(struct parser *p, const char *arg, unsigned line);
static int host_close(struct parser *p, void *base);
static void *component_open(struct parser *p, const char *arg, unsigned line);
static int component_close(struct parser *p, void *base);
static void *gateway_open(struct parser *p, const char *arg, unsigned line);
static int gateway_close(struct parser *p, void *base);
static void *irc_network_open(struct parser *p, const char *arg, unsigned line);
static int irc_network_close(struct parser *p, void *base);
static void *bridge_open(struct parser *p, const char *arg, unsigned line);
static int bridge_close(struct parser *p, void *base);

static const struct section_def sections[] = {
    {"server", false, NULL, NULL, NULL},
    {"c2s", false, NULL, NULL, NULL},
    {"s2s", false, NULL, NULL, NULL},
    {"tls", false, NULL, NULL, NULL},
    {"roster", false, NULL, NULL, NULL},
    {"offline", false, NULL, NULL, NULL},
    {"mam", false, NULL, NULL, NULL},
    {"sm", false, NULL, NULL, NULL},
    {"muc", false, NULL, NULL, NULL},
    {"host", true, host_open, host_close, NULL},
    {"component", false, NULL, NULL, NULL},
    {"component", true, component_open, component_close, "component NAME"},
    {"gateway", true, gateway_open, gateway_close, NULL},
    {"irc-network", true, irc_network_open, irc_network_close, NULL},
    {"bridge", true, bridge_open, bridge_close, NULL},
};

static const char *section_keys(const struct section_def *s)
{
    return s->keys ? s->keys : s->name;
}

struct parser {
    const char *name;
    const char *base_dir;
    struct config *cfg;
    char *err;
    size_t errlen;
    const struct section_def *section;       /* NULL before the first header */
    char *label;                             /* "server", "host example.org": for messages */
    void *base;                              /* where the current section's directives land */
    unsigned seen_line[ARRAY_LEN(sections)]; /* unnamed sections: header line, 0 = not yet */
    unsigned set_line[N_DIRECTIVES];         /* per directive, in the current section instance */
    unsigned flags;                          /* CONFIG_* load flags */
};

static int fail(struct parser *p, unsigned line, const char *fmt, ...) PRINTF_LIKE(3, 4);
static int fail(struct parser *p, unsigned line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!p->errlen)
        return -1;
    if (line)
        snprintf(p->err, p->errlen, "%s:%u: %s", p->name, line, msg);
    else
        snprintf(p->err, p->errlen, "%s: %s", p->name, msg);
    return -1;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static char *trim(char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* ---- value types ---- */

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (strcmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Decimal digits only: no sign, no spaces, no hex. *end is set past the digits in every case.
 * Returns -1 when there are no digits, -2 on overflow. */
static int parse_number(const char *v, const char **end, unsigned long long *out)
{
    unsigned long long n = 0;
    bool overflow = false;
    const char *start = v;
    for (; *v >= '0' && *v <= '9'; v++) {
        unsigned d = (unsigned)(*v - '0');
        if (n > (ULLONG_MAX - d) / 10)
            overflow = true;
        else
            n = n * 10 + d;
    }
    *end = v;
    *out = n;
    if (v == start)
        return -1;
    return overflow ? -2 : 0;
}

static int parse_size(const char *v, unsigned long long *out)
{
    const char *end;
    unsigned long long n, mult = 1;
    int rc = parse_number(v, &end, &n);
    if (rc == -1)
        return rc;
    switch (*end) {
    case '\0':
        break;
    case 'K':
    case 'k':
        mult = KIB;
        break;
    case 'M':
    case 'm':
        mult = MIB;
        break;
    case 'G':
    case 'g':
        mult = GIB;
        break;
    default:
        return -1;
    }
    if (*end && end[1])
        return -1;
    if (rc == -2 || n > ULLONG_MAX / mult)
        return -2;
    *out = n * mult;
    return 0;
}

static bool is_ldh(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

/* One HOST:PORT, IPv6 in brackets ("[::1]:5222"). */
static int parse_addr(const char *s, size_t n, struct config_addr *a, char *msg, size_t msglen)
{
    char *item = xstrndup(s, n);
    char *host = item, *colon;
    if (*item == '[') {
        char *close = strchr(item, ']');
        if (!close || close[1] != ':')
            goto bad;
        *close = '\0';
        host = item + 1;
        colon = close + 1;
        struct in6_addr in6;
        if (inet_pton(AF_INET6, host, &in6) != 1) {
            snprintf(msg, msglen, "'%s' is not an IPv6 address", host);
            goto fail;
        }
    } else {
        colon = strrchr(item, ':');
        if (!colon)
            goto bad;
        *colon = '\0';
        if (strchr(item, ':')) {
            snprintf(msg, msglen, "IPv6 addresses need brackets, as in [::1]:5222; got '%.*s'",
                     (int)n, s);
            goto fail;
        }
        for (const char *c = item; *c; c++)
            if (!is_ldh(*c) && *c != '.' && *c != '_')
                goto bad;
    }
    if (!*host)
        goto bad;
    const char *end;
    unsigned long long port;
    int rc = parse_number(colon + 1, &end, &port);
    if (rc == -1 || *end != '\0')
        goto bad;
    if (rc == -2 || port < 1 || port > 65535) {
        snprintf(msg, msglen, "port must be 1..65535, got '%s'", colon + 1);
        goto fail;
    }
    a->host = xstrdup(host);
    a->port = (uint16_t)port;
    free(item);
    return 0;
bad:
    snprintf(msg, msglen, "expected HOST:PORT, got '%.*s'", (int)n, s);
fail:
    free(item);
    return -1;
}

static void free_addrs(struct config_addr *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(a[i].host);
    free(a);
}

/* An empty value is an empty list. Items are separated by commas, whitespace around them ignored;
 * an empty item ("a:1,,b:2", a trailing comma) is an error. */
static int parse_addr_list(const char *v, struct config_addr **out, size_t *n_out, char *msg,
                           size_t msglen)
{
    *out = NULL;
    *n_out = 0;
    if (!*v)
        return 0;
    struct config_addr *list = NULL;
    size_t n = 0;
    for (const char *s = v;;) {
        const char *comma = strchr(s, ',');
        const char *e = comma ? comma : s + strlen(s);
        while (is_space(*s))
            s++;
        while (e > s && is_space(e[-1]))
            e--;
        if (e == s) {
            snprintf(msg, msglen, "expected HOST:PORT, got an empty item in '%s'", v);
            free_addrs(list, n);
            return -1;
        }
        struct config_addr a;
        if (parse_addr(s, (size_t)(e - s), &a, msg, msglen) < 0) {
            free_addrs(list, n);
            return -1;
        }
        list = xrealloc(list, (n + 1) * sizeof *list);
        list[n++] = a;
        if (!comma)
            break;
        s = comma + 1;
    }
    *out = list;
    *n_out = n;
    return 0;
}

static char *resolve_path(const char *base_dir, const char *v)
{
    if (v[0] == '/' || !base_dir || !*base_dir)
        return xstrdup(v);
    size_t n = strlen(base_dir);
    return xasprintf("%s%s%s", base_dir, base_dir[n - 1] == '/' ? "" : "/", v);
}

static char *host_name_prepare(const char *arg, char *msg, size_t msglen);

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static void free_routes(struct config_route *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].domain);
        free(r[i].addr.host);
    }
    free(r);
}

/* Splits a comma-separated value into trimmed items; fn handles each. Empty items are errors. */
static int each_item(const char *v, int (*fn)(void *ud, const char *item, size_t len, char *msg,
                                              size_t msglen),
                     void *ud, char *msg, size_t msglen)
{
    if (!*v)
        return 0;
    for (const char *s = v;;) {
        const char *comma = strchr(s, ',');
        const char *e = comma ? comma : s + strlen(s);
        while (is_space(*s))
            s++;
        while (e > s && is_space(e[-1]))
            e--;
        if (e == s) {
            snprintf(msg, msglen, "empty item in '%s'", v);
            return -1;
        }
        if (fn(ud, s, (size_t)(e - s), msg, msglen) < 0)
            return -1;
        if (!comma)
            return 0;
        s = comma + 1;
    }
}

struct name_list {
    char **names;
    size_t n;
};

static int add_name(void *ud, const char *item, size_t len, char *msg, size_t msglen)
{
    struct name_list *l = ud;
    char *raw = xstrndup(item, len);
    char why[128];
    char *name = host_name_prepare(raw, why, sizeof why);
    if (!name) {
        snprintf(msg, msglen, "'%s' is not a domain name: %s", raw, why);
        free(raw);
        return -1;
    }
    free(raw);
    l->names = xrealloc(l->names, (l->n + 1) * sizeof *l->names);
    l->names[l->n++] = name;
    return 0;
}

static int add_string(void *ud, const char *item, size_t len, char *msg, size_t msglen)
{
    (void)msg;
    (void)msglen;
    struct name_list *l = ud;
    l->names = xrealloc(l->names, (l->n + 1) * sizeof *l->names);
    l->names[l->n++] = xstrndup(item, len);
    return 0;
}

struct route_list {
    struct config_route *routes;
    size_t n;
};

static int add_route(void *ud, const char *item, size_t len, char *msg, size_t msglen)
{
    struct route_list *l = ud;
    const char *eq = memchr(item, '=', len);
    if (!eq) {
        snprintf(msg, msglen, "expected DOMAIN=HOST:PORT, got '%.*s'", (int)len, item);
        return -1;
    }
    struct name_list dn = {NULL, 0};
    size_t dlen = (size_t)(eq - item);
    while (dlen && is_space(item[dlen - 1]))
        dlen--;
    if (add_name(&dn, item, dlen, msg, msglen) < 0)
        return -1;
    const char *a = eq + 1;
    while (is_space(*a))
        a++;
    struct config_route r = {.domain = dn.names[0]};
    free(dn.names);
    if (parse_addr(a, (size_t)(item + len - a), &r.addr, msg, msglen) < 0) {
        free(r.domain);
        return -1;
    }
    l->routes = xrealloc(l->routes, (l->n + 1) * sizeof *l->routes);
    l->routes[l->n++] = r;
    return 0;
}

/* Stores value v for directive d at base. Returns 0, or -1 with the reason in msg. */
static int directive_set(const struct directive *d, void *base, const char *v, const char *base_dir,
                         char *msg, size_t msglen)
{
    char *field = (char *)base + d->offset;
    unsigned long long n = 0;
    int rc;
    if (!*v && (d->flags & D_REQUIRED)) {
        snprintf(msg, msglen, "a value is required");
        return -1;
    }
    switch (d->type) {
    case T_BOOL:
        if (parse_bool(v, (bool *)field) < 0) {
            snprintf(msg, msglen, "expected true/false, yes/no, on/off or 1/0, got '%s'", v);
            return -1;
        }
        return 0;
    case T_UINT:
    case T_SIZE:
        if (d->type == T_UINT) {
            const char *end;
            rc = parse_number(v, &end, &n);
            if (*end)
                rc = -1;
        } else {
            rc = parse_size(v, &n);
        }
        if (rc == -1) {
            if (d->type == T_UINT)
                snprintf(msg, msglen, "expected a whole number, got '%s'", v);
            else
                snprintf(msg, msglen,
                         "expected a size in bytes (optionally with K, M or G), "
                         "got '%s'",
                         v);
            return -1;
        }
        if (rc == -2 || n < d->min || n > d->max) {
            snprintf(msg, msglen, "must be between %llu and %llu%s, got '%s'", d->min, d->max,
                     d->type == T_SIZE ? " bytes" : "", v);
            return -1;
        }
        if (d->type == T_UINT)
            *(unsigned *)field = (unsigned)n;
        else
            *(size_t *)field = (size_t)n;
        return 0;
    case T_STRING:
    case T_PATH: {
        char **s = (char **)field;
        free(*s);
        *s = !*v ? NULL : d->type == T_PATH ? resolve_path(base_dir, v) : xstrdup(v);
        return 0;
    }
    case T_LOG_LEVEL:
        if ((rc = log_level_parse(v)) < 0) {
            snprintf(msg, msglen, "expected debug, info, warn or error, got '%s'", v);
            return -1;
        }
        *(int *)field = rc;
        return 0;
    case T_TLS_VERSION:
        if (strcmp(v, "1.2") == 0) {
            *(int *)field = 0x0303;
        } else if (strcmp(v, "1.3") == 0) {
            *(int *)field = 0x0304;
        } else {
            snprintf(msg, msglen, "expected 1.2 or 1.3, got '%s'", v);
            return -1;
        }
        return 0;
    case T_DOMAIN_LIST:
    case T_STRING_LIST: {
        struct name_list l = {NULL, 0};
        if (each_item(v, d->type == T_DOMAIN_LIST ? add_name : add_string, &l, msg, msglen) < 0) {
            free_names(l.names, l.n);
            return -1;
        }
        size_t *count = (size_t *)((char *)base + d->count_offset);
        free_names(*(char ***)field, *count);
        *(char ***)field = l.names;
        *count = l.n;
        return 0;
    }
    case T_ROUTE_LIST: {
        struct route_list l = {NULL, 0};
        if (each_item(v, add_route, &l, msg, msglen) < 0) {
            free_routes(l.routes, l.n);
            return -1;
        }
        size_t *count = (size_t *)((char *)base + d->count_offset);
        free_routes(*(struct config_route **)field, *count);
        *(struct config_route **)field = l.routes;
        *count = l.n;
        return 0;
    }
    case T_ARCHIVE_POLICY:
        if (strcmp(v, "always") == 0) {
            *(int *)field = ARCHIVE_ALWAYS;
        } else if (strcmp(v, "roster") == 0) {
            *(int *)field = ARCHIVE_ROSTER;
        } else if (strcmp(v, "never") == 0) {
            *(int *)field = ARCHIVE_NEVER;
        } else {
            snprintf(msg, msglen, "expected always, roster or never, got '%s'", v);
            return -1;
        }
        return 0;
    case T_ADDR_LIST: {
        struct config_addr **list = (struct config_addr **)field;
        size_t *count = (size_t *)((char *)base + d->count_offset);
        struct config_addr *parsed;
        size_t n_parsed;
        if (parse_addr_list(v, &parsed, &n_parsed, msg, msglen) < 0)
            return -1;
        free_addrs(*list, *count);
        *list = parsed;
        *count = n_parsed;
        return 0;
    }
    }
    snprintf(msg, msglen, "unsupported directive type");
    return -1;
}

static void directive_free(const struct directive *d, void *base)
{
    char *field = (char *)base + d->offset;
    switch (d->type) {
    case T_STRING:
    case T_PATH:
        free(*(char **)field);
        *(char **)field = NULL;
        break;
    case T_ADDR_LIST:
        free_addrs(*(struct config_addr **)field, *(size_t *)((char *)base + d->count_offset));
        *(struct config_addr **)field = NULL;
        *(size_t *)((char *)base + d->count_offset) = 0;
        break;
    case T_DOMAIN_LIST:
    case T_STRING_LIST:
        free_names(*(char ***)field, *(size_t *)((char *)base + d->count_offset));
        *(char ***)field = NULL;
        *(size_t *)((char *)base + d->count_offset) = 0;
        break;
    case T_ROUTE_LIST:
        free_routes(*(struct config_route **)field, *(size_t *)((char *)base + d->count_offset));
        *(struct config_route **)field = NULL;
        *(size_t *)((char *)base + d->count_offset) = 0;
        break;
    default:
        break;
    }
}

/* Applies the defaults of `section`'s directives that were not set in this instance. */
static int apply_defaults(struct parser *p, const char *section, void *base)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const struct directive *d = &directives[i];
        if (strcmp(d->section, section) != 0 || p->set_line[i] || !d->def)
            continue;
        char msg[256];
        if (directive_set(d, base, d->def, p->base_dir, msg, sizeof msg) < 0)
            return fail(p, 0, "[%s] %s: bad built-in default: %s", section, d->key, msg);
    }
    return 0;
}

/* ---- [host NAME] ---- */

/* Lower-cases ASCII letters and checks letters/digits/hyphen labels of at most 63 octets, at most
 * 253 octets in all (RFC 1035 §2.3.4, RFC 7622 §3.2); one trailing dot is dropped (RFC 7622 §3.2).
 * Non-ASCII labels are kept as written: the server re-prepares every host name with
 * jid_prep_domain() at startup, which does the IDNA work. Returns NULL with a reason in msg. */
static char *host_name_prepare(const char *arg, char *msg, size_t msglen)
{
    char *name = xstrdup(arg);
    size_t n = strlen(name);
    if (n && name[n - 1] == '.')
        name[--n] = '\0';
    if (n == 0 || n > 253) {
        snprintf(msg, msglen, "%s", n ? "longer than 253 octets" : "empty");
        goto fail;
    }
    for (char *label = name; label;) {
        char *dot = strchr(label, '.');
        size_t len = dot ? (size_t)(dot - label) : strlen(label);
        bool ascii = true;
        if (len == 0) {
            snprintf(msg, msglen, "empty label");
            goto fail;
        }
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)label[i];
            if (c >= 0x80) {
                ascii = false;
                continue;
            }
            if (!is_ldh((char)c)) {
                snprintf(msg, msglen, "character '%c' not allowed", c);
                goto fail;
            }
            if (c >= 'A' && c <= 'Z')
                label[i] = (char)(c - 'A' + 'a');
        }
        if (ascii && len > 63) {
            snprintf(msg, msglen, "label longer than 63 octets");
            goto fail;
        }
        if (ascii && (label[0] == '-' || label[len - 1] == '-')) {
            snprintf(msg, msglen, "label starts or ends with '-'");
            goto fail;
        }
        label = dot ? dot + 1 : NULL;
    }
    return name;
fail:
    free(name);
    return NULL;
}

static void *host_open(struct parser *p, const char *arg, unsigned line)
{
    struct config *cfg = p->cfg;
    char msg[128];
    char *name = host_name_prepare(arg, msg, sizeof msg);
    if (!name) {
        fail(p, line, "[host %s]: invalid domain name: %s", arg, msg);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_hosts; i++) {
        if (strcmp(cfg->hosts[i].name, name) == 0) {
            fail(p, line, "duplicate [host %s] (first on line %u)", name, cfg->hosts[i].line);
            free(name);
            return NULL;
        }
    }
    cfg->hosts = xrealloc(cfg->hosts, (cfg->n_hosts + 1) * sizeof *cfg->hosts);
    struct config_host *h = &cfg->hosts[cfg->n_hosts++];
    memset(h, 0, sizeof *h);
    h->name = name;
    h->line = line;
    return h;
}

static int host_close(struct parser *p, void *base)
{
    struct config_host *h = base;
    if (apply_defaults(p, "host", h) < 0)
        return -1;
    if (!h->certificate != !h->key)
        return fail(p, h->line, "[host %s] %s without %s (set both or neither)", h->name,
                    h->certificate ? "certificate" : "key", h->certificate ? "key" : "certificate");
    return 0;
}

/* ---- [component NAME] (XEP-0114, XEP-0356) ---- */

static void *component_open(struct parser *p, const char *arg, unsigned line)
{
    struct config *cfg = p->cfg;
    char msg[128];
    char *name = host_name_prepare(arg, msg, sizeof msg);
    if (!name) {
        fail(p, line, "[component %s]: invalid domain name: %s", arg, msg);
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_components; i++) {
        if (strcmp(cfg->components[i].name, name) == 0) {
            fail(p, line, "duplicate [component %s] (first on line %u)", name,
                 cfg->components[i].line);
            free(name);
            return NULL;
        }
    }
    cfg->components =
        xrealloc(cfg->components, (cfg->n_components + 1) * sizeof *cfg->components);
    struct config_component *c = &cfg->components[cfg->n_components++];
    memset(c, 0, sizeof *c);
    c->name = name;
    c->line = line;
    return c;
}

/* The rules of a component entry ([component NAME] or the one a [gateway NAME] makes). */
static int component_check(struct parser *p, struct config_component *c, const char *what)
{
    static const char *const roster[] = {"none", "get", "set", "both"};
    c->roster_access = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(c->roster, roster[i]) == 0)
            c->roster_access = i; /* the index is the CONFIG_ROSTER_* bits */
    if (c->roster_access < 0)
        return fail(p, c->line, "[%s %s] roster: expected none, get, set or both, got '%s'", what,
                    c->name, c->roster);
    if (strcmp(c->message, "none") != 0 && strcmp(c->message, "outgoing") != 0)
        return fail(p, c->line, "[%s %s] message: expected none or outgoing, got '%s'", what,
                    c->name, c->message);
    c->message_outgoing = strcmp(c->message, "outgoing") == 0;
    if (!c->secret && !c->command)
        return fail(p, c->line, "[%s %s] needs a secret (or a command, which gets a "
                    "generated one)", what, c->name);
    return 0;
}

static int component_close(struct parser *p, void *base)
{
    struct config_component *c = base;
    if (apply_defaults(p, "component NAME", c) < 0)
        return -1;
    return component_check(p, c, "component");
}

/* ---- [gateway NAME], [irc-network NAME], [bridge NAME] ---- */

/* Appends a zeroed entry of size sz to *arr (count *n) after checking that name is new; the
 * entry's first member is its name. Returns the entry, or NULL after failing (name freed). */
static void *named_entry(struct parser *p, const char *what, char *name, void **arr, size_t *n,
                         size_t sz, unsigned line)
{
    for (size_t i = 0; i < *n; i++) {
        char *entry = (char *)*arr + i * sz;
        if (strcmp(*(char **)entry, name) == 0) {
            fail(p, line, "duplicate [%s %s]", what, name);
            free(name);
            return NULL;
        }
    }
    *arr = xrealloc(*arr, (*n + 1) * sz);
    char *entry = (char *)*arr + (*n)++ * sz;
    memset(entry, 0, sz);
    *(char **)entry = name;
    return entry;
}

/* named_entry() for a section named by a domain ("domain") or IRC server ("server") name;
 * line_off is where the entry keeps its header line. */
static void *domain_entry(struct parser *p, const char *what, const char *kind, const char *arg,
                          void **arr, size_t *n, size_t sz, size_t line_off, unsigned line)
{
    char msg[128];
    char *name = host_name_prepare(arg, msg, sizeof msg);
    if (!name) {
        fail(p, line, "[%s %s]: invalid %s name: %s", what, arg, kind, msg);
        return NULL;
    }
    char *entry = named_entry(p, what, name, arr, n, sz, line);
    if (entry)
        *(unsigned *)(entry + line_off) = line;
    return entry;
}

static void *gateway_open(struct parser *p, const char *arg, unsigned line)
{
    return domain_entry(p, "gateway", "domain", arg, (void **)&p->cfg->gateways,
                        &p->cfg->n_gateways, sizeof *p->cfg->gateways,
                        offsetof(struct config_gateway, line), line);
}

static int gateway_close(struct parser *p, void *base)
{
    struct config_gateway *g = base;
    if (apply_defaults(p, "gateway", g) < 0)
        return -1;
    static const char *const types[] = {"irc", "sms", "mail", "purple"};
    bool known = false;
    for (size_t i = 0; i < ARRAY_LEN(types); i++)
        known |= str_eq(g->type, types[i]);
    if (!g->type)
        return fail(p, g->line, "[gateway %s] needs a type (irc, sms, mail or purple)", g->name);
    if (!known)
        return fail(p, g->line, "[gateway %s] type: expected irc, sms, mail or purple, got '%s'",
                    g->name, g->type);
    if (strcmp(g->type, "sms") == 0 && !str_eq(g->sms_provider, "kannel") &&
        !str_eq(g->sms_provider, "twilio"))
        return fail(p, g->line, "[gateway %s] sms_provider: expected kannel or twilio, got '%s'",
                    g->name, g->sms_provider);
    if (!g->enabled)
        return 0;
    if (config_component_find(p->cfg, g->name))
        return fail(p, g->line, "[gateway %s]: there is a [component %s] of the same name",
                    g->name, g->name);
    /* The server's side of the gateway is a component entry: supervised, unless the gateway runs
     * elsewhere (server set) and connects with its secret. */
    char *command = NULL;
    if (g->command) {
        command = xstrdup(g->command);
    } else if (!g->n_server) {
        char *real = realpath(p->name, NULL);
        const char *conf = real ? real : p->name;
        if (strchr(conf, '\'')) {
            free(real);
            return fail(p, g->line,
                        "[gateway %s]: the config path may not contain a quote (set command)",
                        g->name);
        }
        /* ISTHMUS_BINDIR is the server binary's directory, set by the server before it starts
         * components: isthmus-<type> is built and installed next to isthmus. */
        command = xasprintf("\"$ISTHMUS_BINDIR/isthmus-%s\" -c '%s' -n %s", g->type, conf,
                            g->name);
        free(real);
    }
    struct config *cfg = p->cfg;
    cfg->components =
        xrealloc(cfg->components, (cfg->n_components + 1) * sizeof *cfg->components);
    struct config_component *c = &cfg->components[cfg->n_components++];
    memset(c, 0, sizeof *c);
    c->name = xstrdup(g->name);
    c->line = g->line;
    c->secret = xstrdup(g->secret);
    c->roster = xstrdup(g->roster);
    c->message = xstrdup(g->message);
    c->command = command;
    c->restart_delay = g->restart_delay;
    return component_check(p, c, "gateway");
}

static void *irc_network_open(struct parser *p, const char *arg, unsigned line)
{
    return domain_entry(p, "irc-network", "server", arg, (void **)&p->cfg->irc_networks,
                        &p->cfg->n_irc_networks, sizeof *p->cfg->irc_networks,
                        offsetof(struct config_irc_network, line), line);
}

static int irc_network_close(struct parser *p, void *base)
{
    struct config_irc_network *n = base;
    if (apply_defaults(p, "irc-network", n) < 0)
        return -1;
    if (n->n_address > 1)
        return fail(p, n->line, "[irc-network %s] address: one HOST:PORT expected", n->name);
    if (!n->n_address) {
        n->address = xcalloc(1, sizeof *n->address);
        n->address[0].host = xstrdup(n->name);
        n->address[0].port = n->tls ? 6697 : 6667;
        n->n_address = 1;
    }
    return 0;
}

static void *bridge_open(struct parser *p, const char *arg, unsigned line)
{
    struct config_bridge *b = named_entry(p, "bridge", xstrdup(arg), (void **)&p->cfg->bridges,
                                          &p->cfg->n_bridges, sizeof *b, line);
    if (b)
        b->line = line;
    return b;
}

static int bridge_close(struct parser *p, void *base)
{
    struct config_bridge *b = base;
    if (apply_defaults(p, "bridge", b) < 0)
        return -1;
    if (!b->irc || !b->muc)
        return fail(p, b->line, "[bridge %s] needs irc (#channel%%server) and muc (room@service)",
                    b->name);
    /* #channel%server (biboumi's form) or #channel@server. */
    const char *sep = strchr(b->irc, '%');
    if (!sep)
        sep = strrchr(b->irc, '@');
    if (!sep || sep == b->irc + 1 || !sep[1] || !strchr("#&", b->irc[0]) || strchr(b->irc, ' ') ||
        strchr(b->irc, ','))
        return fail(p, b->line, "[bridge %s] irc: expected #channel%%server, got '%s'", b->name,
                    b->irc);
    b->channel = xstrndup(b->irc, (size_t)(sep - b->irc));
    char msg[128];
    b->network = host_name_prepare(sep + 1, msg, sizeof msg);
    if (!b->network)
        return fail(p, b->line, "[bridge %s] irc: bad server name '%s': %s", b->name, sep + 1,
                    msg);
    const char *at = strchr(b->muc, '@');
    char *svc = at ? host_name_prepare(at + 1, msg, sizeof msg) : NULL;
    if (!at || at == b->muc || !svc || strchr(b->muc, '/') || strchr(b->muc, ' ')) {
        free(svc);
        return fail(p, b->line, "[bridge %s] muc: expected room@service, got '%s'", b->name,
                    b->muc);
    }
    char *room = xstrndup(b->muc, (size_t)(at - b->muc));
    for (char *c = room; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    free(b->muc);
    b->muc = xasprintf("%s@%s", room, svc);
    free(room);
    free(svc);
    if (b->gateway) {
        char *gw = host_name_prepare(b->gateway, msg, sizeof msg);
        if (!gw)
            return fail(p, b->line, "[bridge %s] gateway: bad domain '%s': %s", b->name,
                        b->gateway, msg);
        free(b->gateway);
        b->gateway = gw;
    }
    return 0;
}

/* Rules across sections, checked once the whole file is read. */
static int gateways_check(struct parser *p)
{
    struct config *cfg = p->cfg;
    for (size_t i = 0; i < cfg->n_bridges; i++) {
        struct config_bridge *b = &cfg->bridges[i];
        const struct config_gateway *g = NULL;
        size_t n_irc = 0;
        for (size_t j = 0; j < cfg->n_gateways; j++) {
            if (!str_eq(cfg->gateways[j].type, "irc"))
                continue;
            n_irc++;
            if (!b->gateway || strcmp(b->gateway, cfg->gateways[j].name) == 0)
                g = &cfg->gateways[j];
        }
        if (b->gateway && !g)
            return fail(p, b->line, "[bridge %s] gateway: no [gateway %s] of type irc", b->name,
                        b->gateway);
        if (!b->gateway && n_irc != 1)
            return fail(p, b->line, "[bridge %s] needs gateway = NAME (%s)", b->name,
                        n_irc ? "there are several irc gateways" : "there is no irc gateway");
        if (!b->gateway)
            b->gateway = xstrdup(g->name);
    }
    return 0;
}

/* ---- the reader ---- */

static int section_end(struct parser *p)
{
    int rc = 0;
    if (p->section && p->section->close)
        rc = p->section->close(p, p->base);
    p->section = NULL;
    p->base = NULL;
    free(p->label);
    p->label = NULL;
    return rc;
}

static int section_begin(struct parser *p, char *line, unsigned lineno)
{
    char *close = strchr(line, ']');
    if (!close)
        return fail(p, lineno, "expected ']' to end the section header");
    char *rest = trim(close + 1);
    if (*rest)
        return fail(p, lineno, "unexpected text after the section header: '%s'", rest);
    *close = '\0';
    char *name = trim(line + 1);
    char *arg = name;
    while (*arg && !is_space(*arg))
        arg++;
    if (*arg)
        *arg++ = '\0';
    arg = trim(arg);
    if (!*name)
        return fail(p, lineno, "empty section name");
    if (section_end(p) < 0)
        return -1;

    const struct section_def *s = NULL;
    for (size_t i = 0; i < ARRAY_LEN(sections); i++)
        if (strcmp(sections[i].name, name) == 0 && (!s || sections[i].named == (*arg != '\0')))
            s = &sections[i];
    if (!s)
        return fail(p, lineno, "unknown section [%s]", name);
    if (s->named && !*arg)
        return fail(p, lineno, "[%s] needs a name, as in [%s NAME]", name, name);
    if (!s->named && *arg)
        return fail(p, lineno, "[%s] takes no name, got [%s %s]", name, name, arg);

    if (s->named) {
        void *base = s->open(p, arg, lineno);
        if (!base)
            return -1;
        p->base = base;
        p->label = xasprintf("%s %s", name, *(char **)base);
        for (size_t i = 0; i < N_DIRECTIVES; i++)
            if (strcmp(directives[i].section, section_keys(s)) == 0)
                p->set_line[i] = 0;
    } else {
        unsigned *seen = &p->seen_line[s - sections];
        if (*seen)
            return fail(p, lineno, "duplicate section [%s] (first on line %u)", name, *seen);
        *seen = lineno;
        p->base = p->cfg;
        p->label = xstrdup(name);
    }
    p->section = s;
    return 0;
}

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

static int key_value(struct parser *p, char *line, unsigned lineno)
{
    char *eq = strchr(line, '=');
    if (!eq)
        return fail(p, lineno, "expected 'key = value'");
    *eq = '\0';
    char *key = trim(line), *value = trim(eq + 1);
    if (!*key)
        return fail(p, lineno, "expected 'key = value'");
    for (const char *c = key; *c; c++)
        if (!is_key_char(*c))
            return fail(p, lineno, "expected 'key = value'");
    if (!p->section)
        return fail(p, lineno, "key outside of any section");

    size_t i;
    for (i = 0; i < N_DIRECTIVES; i++)
        if (strcmp(directives[i].section, section_keys(p->section)) == 0 &&
            strcmp(directives[i].key, key) == 0)
            break;
    if (i == N_DIRECTIVES)
        return fail(p, lineno, "[%s] %s: unknown key", p->label, key);
    if (p->set_line[i])
        return fail(p, lineno, "[%s] %s: duplicate key (first set on line %u)", p->label, key,
                    p->set_line[i]);
    char msg[384];
    if (directive_set(&directives[i], p->base, value, p->base_dir, msg, sizeof msg) < 0)
        return fail(p, lineno, "[%s] %s: %s", p->label, key, msg);
    p->set_line[i] = lineno;
    return 0;
}

/* Cuts the line at a ';' or '#' that starts it or follows a space or tab. */
/* A '#' that begins a value is the value's (IRC channels: `irc = #xmpp%irc.libera.chat`); a ';'
 * there still starts a comment. */
static bool value_start(const char *line, const char *c)
{
    while (c > line && is_space(c[-1]))
        c--;
    return c > line && c[-1] == '=';
}

static void strip_comment(char *line)
{
    for (char *c = line; *c; c++) {
        if (*c == '#' && value_start(line, c))
            continue;
        if ((*c == ';' || *c == '#') && (c == line || is_space(c[-1]))) {
            *c = '\0';
            return;
        }
    }
}

static int parse_line(struct parser *p, const char *text, size_t len, unsigned lineno)
{
    if (len && text[len - 1] == '\r')
        len--;
    if (memchr(text, '\0', len))
        return fail(p, lineno, "NUL byte");
    if (!utf8_valid(text, len))
        return fail(p, lineno, "invalid UTF-8");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return fail(p, lineno, "control character 0x%02x", c);
    }
    char *copy = xstrndup(text, len);
    strip_comment(copy);
    char *line = trim(copy);
    int rc = 0;
    if (*line == '[')
        rc = section_begin(p, line, lineno);
    else if (*line)
        rc = key_value(p, line, lineno);
    free(copy);
    return rc;
}

static int parse_text(struct parser *p, const char *text, size_t len)
{
    unsigned lineno = 0;
    /* A UTF-8 byte order mark, as some editors write, is not part of the first line. */
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    while (len) {
        const char *nl = memchr(text, '\n', len);
        size_t n = nl ? (size_t)(nl - text) : len;
        if (parse_line(p, text, n, ++lineno) < 0)
            return -1;
        text += nl ? n + 1 : n;
        len -= nl ? n + 1 : n;
    }
    if (section_end(p) < 0)
        return -1;
    /* Every unnamed section gets its defaults, whether or not the file mentions it. */
    for (size_t i = 0; i < ARRAY_LEN(sections); i++)
        if (!sections[i].named && apply_defaults(p, section_keys(&sections[i]), p->cfg) < 0)
            return -1;
    if (p->cfg->n_hosts == 0 && !(p->flags & CONFIG_NO_HOST_OK))
        return fail(p, 0, "no [host] section");
    return gateways_check(p);
}

static int parse_buffer(const char *name, const char *text, size_t len, const char *base_dir,
                        unsigned flags, struct config *cfg, char *err, size_t errlen)
{
    struct parser p = {
        .flags = flags,
        .name = name ? name : "(config)",
        .base_dir = base_dir,
        .cfg = cfg,
        .err = err,
        .errlen = errlen,
    };
    if (errlen)
        err[0] = '\0';
    memset(cfg, 0, sizeof *cfg);
    cfg->path = xstrdup(name);
    int rc = parse_text(&p, text, len);
    free(p.label);
    if (rc < 0) {
        config_fini(cfg);
        return -1;
    }
    return 0;
}

int config_parse(const char *name, const char *text, const char *base_dir, struct config *cfg,
                 char *err, size_t errlen)
{
    return parse_buffer(name, text, strlen(text), base_dir, 0, cfg, err, errlen);
}

/* The directory of path, absolute when it can be made so, so that resolved paths survive a
 * chdir() (daemons do one). */
static char *config_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    char *real = realpath(dir, NULL);
    if (!real)
        return dir;
    free(dir);
    char *owned = xstrdup(real); /* realpath's buffer comes from malloc, ours from xmalloc */
    free(real);
    return owned;
}

static int read_file(const char *path, struct buf *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (n == 0)
            break;
        if (out->len + (size_t)n > CONFIG_MAX_FILE) {
            close(fd);
            errno = EFBIG;
            return -1;
        }
        buf_append(out, chunk, (size_t)n);
    }
    close(fd);
    return 0;
}

int config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
    return config_load_opts(path, 0, cfg, err, errlen);
}

int config_load_opts(const char *path, unsigned flags, struct config *cfg, char *err,
                     size_t errlen)
{
    struct buf text;
    buf_init(&text);
    memset(cfg, 0, sizeof *cfg);
    if (read_file(path, &text) < 0) {
        if (errlen)
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        buf_fini(&text);
        return -1;
    }
    char *dir = config_dir(path);
    int rc = parse_buffer(path, text.data ? text.data : "", text.len, dir, flags, cfg, err, errlen);
    free(dir);
    buf_fini(&text);
    return rc;
}

static bool section_is_named(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(sections); i++)
        if (strcmp(section_keys(&sections[i]), name) == 0)
            return sections[i].named;
    return false;
}

/* Frees an array of named-section entries: their directives and names. */
static void free_named(void *arr, size_t n, size_t sz, const char *section)
{
    for (size_t e = 0; e < n; e++) {
        char *entry = (char *)arr + e * sz;
        for (size_t i = 0; i < N_DIRECTIVES; i++)
            if (strcmp(directives[i].section, section) == 0)
                directive_free(&directives[i], entry);
        free(*(char **)entry);
    }
    free(arr);
}

void config_fini(struct config *cfg)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (!section_is_named(directives[i].section))
            directive_free(&directives[i], cfg);
    for (size_t h = 0; h < cfg->n_hosts; h++) {
        for (size_t i = 0; i < N_DIRECTIVES; i++)
            if (strcmp(directives[i].section, "host") == 0)
                directive_free(&directives[i], &cfg->hosts[h]);
        free(cfg->hosts[h].name);
    }
    free(cfg->hosts);
    for (size_t c = 0; c < cfg->n_components; c++) {
        for (size_t i = 0; i < N_DIRECTIVES; i++)
            if (strcmp(directives[i].section, "component NAME") == 0)
                directive_free(&directives[i], &cfg->components[c]);
        free(cfg->components[c].name);
    }
    free(cfg->components);
    free_named(cfg->gateways, cfg->n_gateways, sizeof *cfg->gateways, "gateway");
    free_named(cfg->irc_networks, cfg->n_irc_networks, sizeof *cfg->irc_networks, "irc-network");
    for (size_t b = 0; b < cfg->n_bridges; b++) {
        free(cfg->bridges[b].channel);
        free(cfg->bridges[b].network);
    }
    free_named(cfg->bridges, cfg->n_bridges, sizeof *cfg->bridges, "bridge");
    free(cfg->path);
    memset(cfg, 0, sizeof *cfg);
}

const struct config_host *config_host_find(const struct config *cfg, const char *domain)
{
    if (!domain)
        return NULL;
    for (size_t i = 0; i < cfg->n_hosts; i++)
        if (strcasecmp(cfg->hosts[i].name, domain) == 0)
            return &cfg->hosts[i];
    return NULL;
}

const struct config_gateway *config_gateway_find(const struct config *cfg, const char *domain)
{
    for (size_t i = 0; domain && i < cfg->n_gateways; i++)
        if (strcasecmp(cfg->gateways[i].name, domain) == 0)
            return &cfg->gateways[i];
    return NULL;
}

const struct config_irc_network *config_irc_network_find(const struct config *cfg,
                                                         const char *name)
{
    for (size_t i = 0; name && i < cfg->n_irc_networks; i++)
        if (strcasecmp(cfg->irc_networks[i].name, name) == 0)
            return &cfg->irc_networks[i];
    return NULL;
}

const struct config_component *config_component_find(const struct config *cfg, const char *domain)
{
    if (!domain)
        return NULL;
    for (size_t i = 0; i < cfg->n_components; i++)
        if (strcasecmp(cfg->components[i].name, domain) == 0)
            return &cfg->components[i];
    return NULL;
}
