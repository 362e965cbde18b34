/* config.h — the one INI-style configuration file.
 *
 * Syntax: `[section]` or `[section NAME]` headers, `key = value` lines, comments on lines starting
 * with `;` or `#`. Keys may not repeat within a section; list values are comma-separated.
 * Every unknown section, unknown key, repeated key or bad value is an error that names the file,
 * the line and the key: "conf/isthmus.conf:12: [c2s] listen: expected HOST:PORT, got 'x'".
 * Relative paths are resolved against the directory of the config file.
 *
 * Values are taken verbatim after trimming (no quoting). A `;` or `#` at the start of a line or
 * preceded by a space or tab starts a comment, also after a value (`listen = [::1]:5222 ; v6`), so
 * a value cannot contain " ;" or " #" (but a value may begin with '#': IRC channels). Lines may
 * end in CRLF; the file must be UTF-8 without NUL
 * or control characters other than tab. Booleans: true/false, yes/no, on/off, 1/0. Sizes: bytes
 * with an optional K, M or G suffix (powers of 1024). Numbers are range-checked (the table in
 * config.c). Addresses: comma-separated HOST:PORT, IPv6 in brackets ([::1]:5222), port 1..65535;
 * an empty value is an empty list. An empty string or path means "not set" (NULL); data_dir may
 * not be empty. Each section appears once, except [host NAME] and [component NAME], once per
 * distinct name.
 *
 * Sections and keys (defaults in parentheses):
 *   [server]  data_dir (data), log_level (info), log_file (stderr), pidfile (none),
 *             hide_version (false), max_stanza_size (262144; accepts K/M suffixes),
 *             max_depth (32), scram_iterations (4096), max_output_buffer (1M)
 *   [c2s]     listen (127.0.0.1:5222), tls_listen (127.0.0.1:5223; empty = none),
 *             require_tls (true), auth_timeout (30 s), idle_timeout (600 s),
 *             hibernate_after (10 s: a silent stream frees its XML parser until it speaks),
 *             registration_interval (60 s between XEP-0077 registrations from one IP; 0 = off),
 *             auth_failures (5) per auth_failure_window (60 s) per IP, then refused for that
 *             window; max_connections_per_ip (0 = unlimited)
 *   [roster]  max_items (1000) per user, then <not-allowed/> / <resource-constraint/>
 *   [offline] max_messages (1000) per user; 0 = no offline storage
 *   [mam]     default (always | roster | never; default always) for users without preferences,
 *             expire_days (365; 0 = keep forever), max_page (100) items per query page
 *   [sm]      resume_timeout (300 s; 0 = no resumption), max_unacked (1000) stanzas
 *   [server]  max_user_item_size (64K): one vCard or private XML item
 *   [s2s]     listen (none: no federation), tls_listen (none; XEP-0368 direct TLS),
 *             require_encryption (true), require_valid_certificates (false: dialback allowed
 *             for peers whose certificate does not verify), dialback (true; XEP-0220),
 *             allow / deny (domain lists; empty allow = everyone), routes
 *             (DOMAIN=HOST:PORT list overriding DNS), nameserver (HOST:PORT; default from
 *             /etc/resolv.conf), ca_file (/etc/ssl/certs/ca-certificates.crt),
 *             connect_timeout (20 s), idle_timeout (600 s), max_queue (500 stanzas per domain)
 *   [muc]     hosts (domain list; empty = no MUC service; e.g. conference.localhost; each must
 *             not be a [host]), max_occupants (200 per room), history_max (20 messages per room,
 *             0..1000), allow_create (true), persistent_default (false: new rooms are temporary)
 *   [tls]     min_version (1.2 | 1.3; default 1.2), ciphers (OpenSSL default), ciphersuites
 *   [host NAME] certificate, key (both or neither; neither = self-signed generated on first start
 *             under data_dir/certs/), registration (false)
 *   [component] listen (none: no XEP-0114 component port; e.g. 127.0.0.1:5347)
 *   [component NAME] (NAME = the component's domain) secret (required unless command is set:
 *             then one is generated per start), roster (none | get | set | both; XEP-0356),
 *             message (none | outgoing; XEP-0356), command (none: an external component; else
 *             the server runs it with /bin/sh -c and restarts it when it exits), restart_delay
 *             (1 s: the first restart delay, doubled per quick exit up to 60 s)
 *   [gateway NAME] (NAME = the gateway's component domain, e.g. irc.localhost) a gateway this
 *             server runs and supervises as a component (and that the gateway binary reads its own
 *             settings from): type (irc | sms | mail | purple; required), enabled (true),
 *             command (default: isthmus-<type> next to the server binary, run with -c CONFIG
 *             -n NAME), roster (both) and message (outgoing) XEP-0356 grants, restart_delay (1 s),
 *             server (HOST:PORT of the XMPP server's component port, for a gateway run on its
 *             own), secret (for a gateway run on its own), database (data_dir/NAME.db),
 *             key_file (data_dir/NAME.key), admins (bare JIDs for the admin ad-hoc commands),
 *             archive_days (30; per-user archive of gateway rooms, 0 = none).
 *             IRC: irc_realname, irc_tls_verify (true), irc_flood_burst (5),
 *             irc_flood_interval_ms (2000), irc_networks_only (false: any IRC server named in a
 *             JID; true: only [irc-network] ones), irc_max_connections (0 = unlimited).
 *             SMS: sms_provider (kannel | twilio), sms_url, sms_username, sms_password,
 *             sms_from, sms_listen (HOST:PORT of the HTTP listener for inbound SMS and reports),
 *             sms_public_url, sms_secret (webhook secret), sms_default_country (1),
 *             sms_max_parts (6), sms_verify (true).
 *             Mail: mail_allow_plaintext (false), mail_poll_interval (60 s),
 *             mail_default_subject, mail_workers (4), mail_max_size (10M), mail_ca_file
 *             (the system CA store).
 *             libpurple: purple_accounts_per_backend (50), purple_protocols (empty = all)
 *   [irc-network NAME] (NAME = the IRC server name used in JIDs) address (NAME:6697),
 *             tls (true), tls_verify (true), password (server PASS)
 *   [bridge NAME] an IRC channel relayed into a MUC room: gateway (the irc gateway's domain;
 *             may be left out when there is one), irc (#channel%server or #channel@server),
 *             muc (room@service), nick (relaybot: the IRC-side relay bot and the MUC nick of the
 *             bridge itself)
 * At least one [host] is required, except in a gateway's own standalone config. */
#ifndef ISTHMUS_CONFIG_H
#define ISTHMUS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config_addr {
    char *host; /* numeric address or name as written ("127.0.0.1", "::1", "localhost") */
    uint16_t port;
};

struct config_route {
    char *domain; /* lower-cased */
    struct config_addr addr;
};

enum archive_policy { ARCHIVE_ALWAYS, ARCHIVE_ROSTER, ARCHIVE_NEVER };

struct config_host {
    char *name;        /* the domain, prepared (lower case, IDNA) */
    char *certificate; /* absolute or config-relative-resolved path, NULL = self-signed */
    char *key;
    bool registration;
    unsigned line;     /* line of the [host NAME] header, for later error messages */
};

/* XEP-0356 roster access, as bits. */
#define CONFIG_ROSTER_GET 1
#define CONFIG_ROSTER_SET 2

struct config_component {
    char *name;      /* the component's domain, lower-cased */
    char *secret;    /* NULL: generated per start (supervised components only) */
    char *roster;    /* "none" | "get" | "set" | "both", checked */
    char *message;   /* "none" | "outgoing", checked */
    char *command;   /* NULL: not supervised */
    unsigned restart_delay;
    int roster_access;    /* CONFIG_ROSTER_* bits, from roster */
    bool message_outgoing; /* from message */
    unsigned line;
};

struct config_gateway {
    char *name;      /* the component's domain, lower-cased (first: section labels use it) */
    char *type;      /* "irc" | "sms" | "mail" | "purple", checked */
    bool enabled;
    char *command;   /* NULL: isthmus-<type> next to the server binary */
    char *secret;    /* standalone use */
    char *roster;
    char *message;
    unsigned restart_delay;
    struct config_addr *server; /* standalone use: the component port to connect to */
    size_t n_server;
    char *database;  /* NULL: data_dir/NAME.db */
    char *key_file;  /* NULL: data_dir/NAME.key */
    char **admins;
    size_t n_admins;
    unsigned archive_days;
    /* irc */
    char *irc_realname;
    bool irc_tls_verify;
    unsigned irc_flood_burst;
    unsigned irc_flood_interval_ms;
    bool irc_networks_only;
    unsigned irc_max_connections;
    /* sms */
    char *sms_provider;     /* "kannel" | "twilio", checked for type sms */
    char *sms_url;          /* Kannel sendsms URL, or the Twilio-style Messages endpoint */
    char *sms_username;     /* Kannel user / Twilio account SID */
    char *sms_password;     /* Kannel password / Twilio auth token */
    char *sms_from;         /* sender when a user's number cannot be used (verification codes) */
    struct config_addr *sms_listen; /* the HTTP listener for inbound SMS and delivery reports */
    size_t n_sms_listen;
    char *sms_public_url;   /* how the provider reaches the listener (DLR / status callbacks) */
    char *sms_secret;       /* webhook shared secret */
    char *sms_default_country; /* calling code for local numbers, e.g. "1" */
    unsigned sms_max_parts; /* concatenated SMS parts per message */
    bool sms_verify;        /* a code sent by SMS confirms a registered number */
    /* mail */
    bool mail_allow_plaintext;  /* allow IMAP/SMTP servers without TLS */
    unsigned mail_poll_interval; /* seconds between IMAP polls per user */
    char *mail_default_subject;
    unsigned mail_workers;       /* transfer threads */
    size_t mail_max_size;        /* largest mail fetched */
    char *mail_ca_file;          /* CA bundle for IMAP/SMTP TLS; NULL: the system store */
    /* purple */
    unsigned purple_accounts_per_backend;
    char **purple_protocols;     /* empty: every installed protocol plugin */
    size_t n_purple_protocols;
    unsigned line;
};

struct config_irc_network {
    char *name;      /* as used in JIDs, lower-cased */
    struct config_addr *address; /* at most one used */
    size_t n_address;
    bool tls;
    bool tls_verify;
    char *password;
    unsigned line;
};

struct config_bridge {
    char *name;
    char *gateway;   /* NULL: the only irc gateway */
    char *irc;       /* as written */
    char *channel;   /* parsed from irc: "#chan" */
    char *network;   /* parsed from irc: "server" */
    char *muc;       /* room bare JID, normalised */
    char *nick;
    unsigned line;
};

struct config {
    char *path; /* the file loaded */
    /* [server] */
    char *data_dir;
    int log_level; /* enum log_level */
    char *log_file; /* NULL = stderr */
    char *pidfile;  /* NULL = none */
    bool hide_version;
    size_t max_stanza_size;
    unsigned max_depth;
    unsigned scram_iterations;
    size_t max_output_buffer;
    size_t max_user_item_size;
    /* [c2s] */
    struct config_addr *c2s_listen;
    size_t n_c2s_listen;
    struct config_addr *c2s_tls_listen;
    size_t n_c2s_tls_listen;
    bool c2s_require_tls;
    unsigned c2s_auth_timeout;
    unsigned c2s_idle_timeout;
    unsigned c2s_hibernate_after; /* seconds of silence before the XML parser is freed */
    unsigned auth_failures;
    unsigned auth_failure_window;
    unsigned max_connections_per_ip;
    unsigned c2s_registration_interval; /* seconds between in-band registrations per IP; 0 off */
    /* [s2s] */
    struct config_addr *s2s_listen;
    size_t n_s2s_listen;
    struct config_addr *s2s_tls_listen;
    size_t n_s2s_tls_listen;
    bool s2s_require_encryption;
    bool s2s_require_valid_certs;
    bool s2s_dialback;
    char **s2s_allow; /* empty: every domain */
    size_t n_s2s_allow;
    char **s2s_deny;
    size_t n_s2s_deny;
    struct config_route *s2s_routes;
    size_t n_s2s_routes;
    struct config_addr *s2s_nameserver; /* at most one used; empty: /etc/resolv.conf */
    size_t n_s2s_nameserver;
    char *s2s_ca_file;
    unsigned s2s_connect_timeout;
    unsigned s2s_idle_timeout;
    unsigned s2s_max_queue;
    /* [tls] */
    int tls_min_version; /* 0x0303 for 1.2, 0x0304 for 1.3 (TLS1_2_VERSION / TLS1_3_VERSION) */
    char *tls_ciphers;
    char *tls_ciphersuites;
    /* [roster] [offline] [mam] [sm] */
    unsigned roster_max_items;
    unsigned offline_max_messages; /* 0: no offline storage */
    int mam_default;               /* enum archive_policy for users without preferences */
    unsigned mam_expire_days;      /* 0: keep forever */
    unsigned mam_max_page;
    unsigned sm_resume_timeout;    /* seconds; 0: no resumption */
    unsigned sm_max_unacked;
    /* [muc] (XEP-0045) */
    char **muc_hosts; /* service domains, prepared; empty: no MUC service */
    size_t n_muc_hosts;
    unsigned muc_max_occupants; /* per room */
    unsigned muc_history_max;   /* messages kept per room for history on join */
    bool muc_allow_create;      /* any local or remote user may create rooms */
    bool muc_persistent_default;
    /* [host NAME], in file order */
    struct config_host *hosts;
    size_t n_hosts;
    /* [component] and [component NAME], in file order */
    struct config_addr *component_listen;
    size_t n_component_listen;
    struct config_component *components;
    size_t n_components;
    /* [gateway NAME], [irc-network NAME], [bridge NAME], in file order. Each enabled gateway also
     * has a [component NAME] entry in components (supervised unless it has a server). */
    struct config_gateway *gateways;
    size_t n_gateways;
    struct config_irc_network *irc_networks;
    size_t n_irc_networks;
    struct config_bridge *bridges;
    size_t n_bridges;
};

/* config_load_opts flags */
#define CONFIG_NO_HOST_OK 1u /* a gateway's standalone config: no [host] needed */

/* Loads and validates path. Returns 0, or -1 with a one-line message in err. *cfg is always
 * left in a state config_fini() accepts. */
int config_load(const char *path, struct config *cfg, char *err, size_t errlen);
int config_load_opts(const char *path, unsigned flags, struct config *cfg, char *err,
                     size_t errlen);
/* Same, from a string; `name` is used in messages and `base_dir` for relative paths. */
int config_parse(const char *name, const char *text, const char *base_dir, struct config *cfg,
                 char *err, size_t errlen);
void config_fini(struct config *cfg);

const struct config_host *config_host_find(const struct config *cfg, const char *domain);
const struct config_component *config_component_find(const struct config *cfg,
                                                     const char *domain);
const struct config_gateway *config_gateway_find(const struct config *cfg, const char *domain);
const struct config_irc_network *config_irc_network_find(const struct config *cfg,
                                                         const char *name);

#endif
