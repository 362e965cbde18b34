/* irc.h — the IRC client stack of the IRC gateway, on the server's event loop (src/ev.c,
 * src/conn.c, src/resolver.c). It speaks IRC (RFC 1459/2812 and the IRCv3 parts a gateway needs)
 * and knows nothing of XMPP.
 *
 * Why our own: Debian 12's libircclient has no TLS, resolves with blocking gethostbyname, has no
 * CAP/SASL and aborts once a socket number reaches 1024 (shared/DESIGN.md "Why not libircclient").
 *
 * One struct irc_conn is one connection to one IRC server for one user:
 *  - name resolution through resolver_addresses() (c-ares, never blocks), then TCP via
 *    conn_connect(), then TLS (client side, SNI, verification against the host name unless the
 *    network opts out) when opts->tls;
 *  - registration: CAP LS 302 → CAP REQ :sasl (and multi-prefix when offered) → AUTHENTICATE
 *    PLAIN or EXTERNAL → CAP END; PASS, NICK, USER; 433/432 at registration retries with the nick
 *    followed by '_' (up to 3 tries, then closes); NickServ IDENTIFY fallback after 001 when a
 *    nickserv_password is set and SASL was not used or not offered;
 *  - PING → PONG; a client-side PING after keepalive_s of silence, closing after another
 *    keepalive_s without any input ("ping timeout");
 *  - flood control: a token bucket (burst lines, then one per interval_ms) for everything sent;
 *  - lines are split at the 512-byte limit, never inside a UTF-8 sequence, accounting for the
 *    ":nick!user@host " prefix the server adds when relaying (a conservative 100 bytes);
 *  - incoming bytes are decoded per line: valid UTF-8 is kept, anything else is treated as
 *    latin-1 (ISO-8859-1) and converted, so callbacks only ever see valid UTF-8 without NUL, CR or
 *    LF; lines over 8191 bytes are cut (the rest of that line dropped) instead of growing buffers.
 * No FD_SETSIZE limit anywhere (epoll). */
#ifndef ISTHMUS_IRC_H
#define ISTHMUS_IRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isthmus/ev.h"

#define IRC_MAX_PARAMS 15
#define IRC_MAX_LINE 8191 /* received bytes kept per line (without CRLF); the rest is dropped */
#define IRC_NICK_BUF 128  /* storage for irc_msg.nick; longer nicks are cut (garbage only) */

/* One parsed IRC line (IRCv3 tags are parsed and ignored except "time" and "msgid").
 * Everything is borrowed for the duration of the callback. */
struct irc_msg {
    const char *prefix;  /* "nick!user@host" or "server.name", "" when absent */
    const char *nick;    /* the nick part of prefix (or the server name), "" when absent */
    const char *userhost;/* "user@host" part of prefix, "" when absent */
    const char *command; /* upper-cased: "PRIVMSG", "001", ... */
    const char *params[IRC_MAX_PARAMS]; /* the trailing parameter is the last one */
    int nparams;
    const char *tag_time;  /* IRCv3 server-time tag value, or NULL */
    const char *tag_msgid; /* IRCv3 msgid tag value, or NULL */
    char nick_buf[IRC_NICK_BUF]; /* private: where nick lives when prefix has '!' or '@' */
};

struct irc_conn_opts {
    const char *host;     /* name or address */
    uint16_t port;        /* 0: 6697 with TLS, 6667 without */
    bool tls;
    bool tls_verify;      /* verify the chain against the system store and the host name */
    const char *tls_name; /* the name sent as SNI and verified (the IRC network's name when host
                           * is an address); NULL: host */
    const char *nick;
    const char *username; /* USER's user name; NULL: nick */
    const char *realname; /* NULL: nick */
    const char *password; /* server PASS, or NULL */
    const char *sasl_mechanism; /* "PLAIN", "EXTERNAL" or NULL (no SASL) */
    const char *sasl_username;  /* PLAIN: authcid (NULL: nick) */
    const char *sasl_password;  /* PLAIN */
    const char *client_cert;    /* PEM file with certificate and key for EXTERNAL, or NULL */
    const char *nickserv_password; /* fallback identification, or NULL */
    unsigned flood_burst;       /* lines sent at once before throttling; 0: 5 */
    unsigned flood_interval_ms; /* then one line per interval; 0: 2000; UINT32_MAX: no limit */
    unsigned keepalive_s;       /* 0: 120 */
    const char *tag;            /* for logs, e.g. "irc alice@localhost/irc.test" */
};

struct irc_conn;

struct irc_conn_cb {
    /* Registration finished (001 seen, SASL done or skipped). nick is the accepted nick. */
    void (*registered)(struct irc_conn *c, void *ud, const char *nick);
    /* Every line received after connection (including numerics before 001 and the 001 itself),
     * except PING and CAP/AUTHENTICATE traffic, which the stack handles. */
    void (*message)(struct irc_conn *c, void *ud, const struct irc_msg *m);
    /* The connection ended or never came up: DNS failure, refused, TLS or certificate failure,
     * SASL PLAIN failure (904/905 → "SASL authentication failed"; a failed EXTERNAL does not
     * close: the numeric goes to message() and registration goes on, NickServ IDENTIFY being the
     * fallback), nick unavailable, ERROR from the
     * server, ping timeout, or irc_quit() done. Called exactly once, never from inside an irc_*
     * call; the irc_conn is freed after it returns. */
    void (*closed)(struct irc_conn *c, void *ud, const char *reason);
};

/* Starts connecting. Never NULL; failures are reported through cb->closed later. The options'
 * strings are copied. */
struct irc_conn *irc_connect(struct ev_loop *loop, const struct irc_conn_opts *opts,
                             const struct irc_conn_cb *cb, void *ud);

/* Sends one raw line (CRLF added; CR, LF and NUL in the formatted text are replaced by spaces),
 * through flood control. Lines over 510 bytes are cut at a UTF-8 boundary. */
void irc_send(struct irc_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* PRIVMSG (or NOTICE when notice) to target: one line per text line, each split to fit; with
 * action, every piece is a CTCP ACTION. Empty lines are skipped. */
void irc_say(struct irc_conn *c, const char *target, const char *text, bool action, bool notice);
/* QUIT with reason, then close once it is flushed (at most 2 s later); closed() follows. */
void irc_quit(struct irc_conn *c, const char *reason);
/* Close now without QUIT; closed() follows (deferred). */
void irc_abort(struct irc_conn *c, const char *reason);

bool irc_is_registered(const struct irc_conn *c);
const char *irc_nick(const struct irc_conn *c);   /* our current nick (follows NICK changes) */
const char *irc_server_name(const struct irc_conn *c); /* the server's name from 001, or host */
/* RPL_ISUPPORT (005) value for key ("CHANTYPES", "PREFIX", "NETWORK", "CASEMAPPING"...);
 * "" for a key without value, NULL when not advertised. */
const char *irc_isupport(const struct irc_conn *c, const char *key);
/* Is name a channel name per CHANTYPES (default "#&")? */
bool irc_is_channel(const struct irc_conn *c, const char *name);
/* PREFIX mapping: the mode letter for a nick prefix symbol ('@' → 'o', '+' → 'v'), 0 if none. */
char irc_prefix_mode(const struct irc_conn *c, char symbol);
/* Splits a NAMES entry ("@+nick" with multi-prefix) into its modes (into modes, up to n-1
 * letters, NUL-terminated) and returns the nick inside entry. */
const char *irc_names_entry(const struct irc_conn *c, const char *entry, char *modes, size_t n);
/* Case-insensitive compare per CASEMAPPING (rfc1459 by default: []\~ are upper case of {}|^). */
int irc_casecmp(const struct irc_conn *c, const char *a, const char *b);
/* irc_is_channel, irc_prefix_mode, irc_names_entry and irc_casecmp accept c == NULL: the
 * defaults then (CHANTYPES "#&", PREFIX "(ov)@+", CASEMAPPING rfc1459). */
void irc_set_ud(struct irc_conn *c, void *ud);

/* ---- text helpers (no connection needed) ---- */

/* A malloc'd copy of s with mIRC formatting removed (^B ^C[fg[,bg]] ^O ^R ^V ^] ^_ ^^ ^Q and ^D
 * hex colours), and any \001 (CTCP delimiter) too, so the result is XML-safe. */
char *irc_strip_formatting(const char *s);
/* A malloc'd valid-UTF-8 string from len raw bytes: valid UTF-8 is kept, otherwise the bytes are
 * read as latin-1. NUL bytes are dropped; other C0 controls except formatting codes, tab and
 * \001 (the CTCP delimiter, needed by irc_ctcp_action) are dropped too (they cannot be put in
 * XML), and so are U+FFFE and U+FFFF. */
char *irc_to_utf8(const char *raw, size_t len);
/* Parses one line (without CRLF) in place into m. Returns 0, or -1 when it has no command. */
int irc_parse_line(char *line, struct irc_msg *m);
/* If text is a CTCP ACTION ("\001ACTION ...\001"), returns a pointer to the action text inside
 * it, and *len its length; else NULL. */
const char *irc_ctcp_action(const char *text, size_t *len);
/* A malloc'd RPL_ISUPPORT (005) value with its \xHH escapes decoded; decoded bytes that are
 * not kept by irc_to_utf8's rules (NUL, C0 controls) are dropped. */
char *irc_isupport_unescape(const char *v);

/* The connection's input path, sans I/O: raw bytes in, one callback per line out. Lines end at
 * LF (a CR before it is dropped); each is cut at IRC_MAX_LINE bytes (the rest of that line is
 * dropped), decoded with irc_to_utf8 and handed over NUL-terminated and writable (for
 * irc_parse_line); lines that decode to nothing are skipped. fn returns false to stop: the rest
 * of that feed is dropped. Memory is bounded by IRC_MAX_LINE whatever the input. */
typedef bool (*irc_line_fn)(void *ud, char *line);
struct irc_line_reader {
    char *part; /* an incomplete line carried to the next feed (heap, at most IRC_MAX_LINE) */
    size_t len, cap;
    bool discard; /* inside the dropped tail of an over-long line */
};
void irc_line_reader_init(struct irc_line_reader *r);
void irc_line_reader_fini(struct irc_line_reader *r);
/* Returns false when fn stopped it. */
bool irc_line_reader_feed(struct irc_line_reader *r, const char *data, size_t len, irc_line_fn fn,
                          void *ud);

#endif
