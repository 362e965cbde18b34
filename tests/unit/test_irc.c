/* test_irc.c — the IRC client stack: parsing, decoding, formatting, splitting, casemapping, and
 * whole registrations against a scripted server on 127.0.0.1 (CAP, SASL, nick retries,
 * ISUPPORT, PING, ERROR, flood control, garbage), SASL EXTERNAL over TLS with a client
 * certificate from certfp.c checked on the server side, and certfp.c itself. */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "certfp.h"
#include "irc.h"
#include "isthmus/conn.h"
#include "isthmus/ev.h"
#include "isthmus/log.h"
#include "isthmus/resolver.h"
#include "isthmus/tls.h"
#include "isthmus/util.h"
#include "test.h"

/* ---------------------------------------------------------------- parsing */

static void test_parse_basic(void)
{
    struct irc_msg m;
    char l1[] = ":nick!user@host.example PRIVMSG #chan :hello there  world";
    CHECK(irc_parse_line(l1, &m) == 0);
    CHECK_STR(m.prefix, "nick!user@host.example");
    CHECK_STR(m.nick, "nick");
    CHECK_STR(m.userhost, "user@host.example");
    CHECK_STR(m.command, "PRIVMSG");
    CHECK(m.nparams == 2);
    CHECK_STR(m.params[0], "#chan");
    CHECK_STR(m.params[1], "hello there  world");
    CHECK(m.tag_time == NULL && m.tag_msgid == NULL);

    char l2[] = "ping :irc.example";
    CHECK(irc_parse_line(l2, &m) == 0);
    CHECK_STR(m.command, "PING");
    CHECK_STR(m.prefix, "");
    CHECK_STR(m.nick, "");
    CHECK(m.nparams == 1);
    CHECK_STR(m.params[0], "irc.example");

    char l3[] = ":irc.example 001 alice :Welcome to the net";
    CHECK(irc_parse_line(l3, &m) == 0);
    CHECK_STR(m.nick, "irc.example");
    CHECK_STR(m.userhost, "");
    CHECK_STR(m.command, "001");
    CHECK(m.nparams == 2);

    /* No trailing; runs of spaces; empty trailing. */
    char l4[] = ":srv   MODE  #c   +o   bob ";
    CHECK(irc_parse_line(l4, &m) == 0);
    CHECK(m.nparams == 3);
    CHECK_STR(m.params[0], "#c");
    CHECK_STR(m.params[1], "+o");
    CHECK_STR(m.params[2], "bob");
    char l5[] = "TOPIC #c :";
    CHECK(irc_parse_line(l5, &m) == 0);
    CHECK(m.nparams == 2);
    CHECK_STR(m.params[1], "");

    /* A prefix with only '@'. */
    char l6[] = ":nick@host JOIN #x";
    CHECK(irc_parse_line(l6, &m) == 0);
    CHECK_STR(m.nick, "nick");
    CHECK_STR(m.prefix, "nick@host");
}

static void test_parse_tags(void)
{
    struct irc_msg m;
    char l1[] = "@time=2021-01-01T00:00:00.123Z;msgid=a\\:b\\sc\\\\d\\xe;+draft/x=y :n!u@h "
                "PRIVMSG #c :hi";
    CHECK(irc_parse_line(l1, &m) == 0);
    CHECK_STR(m.tag_time, "2021-01-01T00:00:00.123Z");
    CHECK_STR(m.tag_msgid, "a;b c\\dxe");
    CHECK_STR(m.nick, "n");
    CHECK_STR(m.params[1], "hi");

    char l2[] = "@msgid=ab\\ :n PRIVMSG x :y"; /* a trailing lone backslash is dropped */
    CHECK(irc_parse_line(l2, &m) == 0);
    CHECK_STR(m.tag_msgid, "ab");
    CHECK(m.tag_time == NULL);

    char l3[] = "@msgid=\\r\\n;time :n NOTICE x :y"; /* valueless time */
    CHECK(irc_parse_line(l3, &m) == 0);
    CHECK_STR(m.tag_msgid, "\r\n");
    CHECK_STR(m.tag_time, "");
    CHECK_STR(m.command, "NOTICE");

    char l4[] = "@a=b;c;d= privmsg x :y"; /* no prefix; lower-case command */
    CHECK(irc_parse_line(l4, &m) == 0);
    CHECK_STR(m.command, "PRIVMSG");
    CHECK_STR(m.prefix, "");
}

static void test_parse_params(void)
{
    struct irc_msg m;
    char l1[] = "CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 :17";
    CHECK(irc_parse_line(l1, &m) == 0);
    CHECK(m.nparams == IRC_MAX_PARAMS);
    CHECK_STR(m.params[13], "14");
    CHECK_STR(m.params[14], "15 16 :17"); /* RFC 2812 §2.3.1: the 15th takes the rest */

    char l2[] = "CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 :last one";
    CHECK(irc_parse_line(l2, &m) == 0);
    CHECK(m.nparams == 15);
    CHECK_STR(m.params[14], "last one");

    char l3[] = "CMD 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
    CHECK(irc_parse_line(l3, &m) == 0);
    CHECK(m.nparams == 15);
    CHECK_STR(m.params[14], "15");
}

static void test_parse_garbage(void)
{
    struct irc_msg m;
    char e1[] = "";
    CHECK(irc_parse_line(e1, &m) == -1);
    char e2[] = "    ";
    CHECK(irc_parse_line(e2, &m) == -1);
    char e3[] = ":prefix.only";
    CHECK(irc_parse_line(e3, &m) == -1);
    char e4[] = "@tags=only";
    CHECK(irc_parse_line(e4, &m) == -1);
    char e5[] = "@t :p ";
    CHECK(irc_parse_line(e5, &m) == -1);
    char e6[] = ":";
    CHECK(irc_parse_line(e6, &m) == -1);
    char e7[] = "@";
    CHECK(irc_parse_line(e7, &m) == -1);
    char g1[] = ": CMD";
    CHECK(irc_parse_line(g1, &m) == 0);
    CHECK_STR(m.prefix, "");
    CHECK_STR(m.command, "CMD");
    char g2[] = ":!@ X :";
    CHECK(irc_parse_line(g2, &m) == 0);
    CHECK_STR(m.nick, "");
    CHECK_STR(m.userhost, "@");
    /* A nick longer than the storage is cut, on a UTF-8 boundary. */
    struct buf b;
    buf_init(&b);
    buf_putc(&b, ':');
    for (int i = 0; i < 100; i++)
        buf_puts(&b, "é");
    buf_puts(&b, "!u@h PRIVMSG x :y");
    CHECK(irc_parse_line(b.data, &m) == 0);
    CHECK(strlen(m.nick) == IRC_NICK_BUF - 2);
    CHECK(utf8_valid(m.nick, strlen(m.nick)));
    CHECK_STR(m.userhost, "u@h");
    buf_fini(&b);
}

/* ---------------------------------------------------------------- decoding */

static void check_utf8(const char *raw, size_t len, const char *want, int line)
{
    char *got = irc_to_utf8(raw, len);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "  FAIL line %d: got \"%s\", want \"%s\"\n", line, got, want);
        test_failed_checks++;
    }
    if (!utf8_valid(got, strlen(got))) {
        fprintf(stderr, "  FAIL line %d: result is not UTF-8\n", line);
        test_failed_checks++;
    }
    free(got);
}
#define UTF8(raw, want) check_utf8(raw, sizeof(raw) - 1, want, __LINE__)

static void test_to_utf8(void)
{
    UTF8("plain ascii", "plain ascii");
    UTF8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "café € 😀");
    UTF8("caf\xe9", "caf\xc3\xa9");                               /* latin-1 é */
    UTF8("\xe9t\xe9 \xa3", "\xc3\xa9t\xc3\xa9 \xc2\xa3");         /* été £ */
    UTF8("\xc0\xaf", "\xc3\x80\xc2\xaf");                         /* overlong '/' → latin-1 */
    UTF8("\xe0\x80\xaf", "\xc3\xa0\xc2\x80\xc2\xaf");             /* overlong 3-byte */
    UTF8("\xed\xa0\x80", "\xc3\xad\xc2\xa0\xc2\x80");             /* surrogate U+D800 */
    UTF8("\xf4\x90\x80\x80", "\xc3\xb4\xc2\x90\xc2\x80\xc2\x80"); /* > U+10FFFF */
    UTF8("\xe2\x82", "\xc3\xa2\xc2\x82");                         /* truncated sequence */
    UTF8("a\0b", "ab");                                           /* NUL dropped */
    UTF8("a\0\xe9", "a\xc3\xa9");
    UTF8("x\ry\nz\x07\x1b\x7f", "xyz\x7f"); /* controls dropped (DEL is XML) */
    UTF8("\x01"
         "ACTION x\x01",
         "\x01"
         "ACTION x\x01"); /* the CTCP delimiter is kept */
    UTF8("\x02"
         "b\x02\x03"
         "4,5c\x0f\x16\x1d\x1f\x1e\x11\x04",
         "\x02"
         "b\x02\x03"
         "4,5c\x0f\x16\x1d\x1f\x1e\x11\x04");
    UTF8("\t", "\t");
    UTF8("\xef\xbf\xbe\xef\xbf\xbfok", "ok"); /* U+FFFE, U+FFFF are no XML Chars */
    UTF8("\xef\xbf\xbd", "\xef\xbf\xbd");     /* U+FFFD is */
    UTF8("", "");
}

static void check_strip(const char *in, const char *want, int line)
{
    char *got = irc_strip_formatting(in);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "  FAIL line %d: strip → \"%s\", want \"%s\"\n", line, got, want);
        test_failed_checks++;
    }
    free(got);
}
#define STRIP(in, want) check_strip(in, want, __LINE__)

static void test_strip_formatting(void)
{
    STRIP("\x02"
          "bold\x02 \x1ditalic\x1d \x1funder\x1f \x1estrike\x1e \x11mono\x0f",
          "bold italic under strike mono");
    STRIP("\x03"
          "4red\x03 \x03"
          "04,12both\x03",
          "red both");
    STRIP("\x03"
          "12,3x",
          "x");
    STRIP("\x03"
          "123",
          "3");              /* two digits at most */
    STRIP("\x03,5x", ",5x"); /* a comma without a foreground is text */
    STRIP("\x03"
          "5,x",
          ",x"); /* a comma without a digit after it is text */
    STRIP("\x03"
          "5,123",
          "3");
    STRIP("\x16rev\x12r", "revr");
    STRIP("\x04"
          "ff00ffpink\x04",
          "pink");
    STRIP("\x04"
          "FF00FF,00ff00x",
          "x");
    STRIP("\x04"
          "ff00fz",
          "ff00fz"); /* not six hex digits: only the code goes */
    STRIP("\x04"
          "ff00ff,12",
          ",12");
    STRIP("trailing\x03", "trailing");
    STRIP("trailing\x03"
          "1",
          "trailing");
    STRIP("trailing\x03"
          "1,",
          "trailing,");
    STRIP("caf\xc3\xa9", "caf\xc3\xa9");
    STRIP("\x01"
          "ACTION x\x01",
          "ACTION x");
    STRIP("", "");
}

static void test_ctcp_action(void)
{
    size_t n = 99;
    const char *a = irc_ctcp_action("\001ACTION waves\001", &n);
    CHECK(a && n == 5 && strncmp(a, "waves", 5) == 0);
    a = irc_ctcp_action("\001ACTION waves", &n); /* unterminated */
    CHECK(a && n == 5);
    a = irc_ctcp_action("\001ACTION\001", &n);
    CHECK(a && n == 0);
    CHECK(irc_ctcp_action("\001VERSION\001", &n) == NULL);
    CHECK(irc_ctcp_action("\001ACTIONS x\001", &n) == NULL);
    CHECK(irc_ctcp_action("ACTION x", &n) == NULL);
    CHECK(irc_ctcp_action("", &n) == NULL);
}

/* ---------------------------------------------------------------- line reader */

struct lines {
    struct buf all; /* lines joined with '|' */
    int count;
    size_t longest;
    int stop_after;
};

static bool collect(void *ud, char *line)
{
    struct lines *l = ud;
    if (l->count)
        buf_putc(&l->all, '|');
    buf_puts(&l->all, line);
    l->count++;
    if (strlen(line) > l->longest)
        l->longest = strlen(line);
    if (!utf8_valid(line, strlen(line)) || strpbrk(line, "\r\n"))
        test_failed_checks++;
    return !(l->stop_after && l->count >= l->stop_after);
}

static void test_line_reader_split(void)
{
    const char input[] = "PING :a\r\n\r\n:x PRIVMSG #c :caf\xe9\r\n:y NOTICE z :\xc3\xa9t\xc3\xa9\n"
                         "a\rb\r\r\nlast-no-newline";
    size_t len = sizeof input - 1;
    /* The same lines whatever the read boundaries: one split at every byte position, and one
     * byte at a time. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct irc_line_reader r;
        struct lines l = {0};
        buf_init(&l.all);
        irc_line_reader_init(&r);
        irc_line_reader_feed(&r, input, cut, collect, &l);
        irc_line_reader_feed(&r, input + cut, len - cut, collect, &l);
        CHECK_STR(l.all.data,
                  "PING :a|:x PRIVMSG #c :caf\xc3\xa9|:y NOTICE z :\xc3\xa9t\xc3\xa9|ab");
        CHECK(r.len == strlen("last-no-newline"));
        irc_line_reader_fini(&r);
        buf_fini(&l.all);
    }
    struct irc_line_reader r;
    struct lines l = {0};
    buf_init(&l.all);
    irc_line_reader_init(&r);
    for (size_t i = 0; i < len; i++)
        irc_line_reader_feed(&r, input + i, 1, collect, &l);
    CHECK(l.count == 4);
    irc_line_reader_fini(&r);
    buf_fini(&l.all);
}

static void test_line_reader_long(void)
{
    /* 20000 bytes then LF, then a normal line: the long one is cut at IRC_MAX_LINE and its
     * rest dropped, whether it comes in one read or many. */
    size_t big = 20000;
    char *data = xmalloc(big + 32);
    memset(data, 'x', big);
    memcpy(data + big, "\nNEXT 1\n", 8);
    size_t len = big + 8;
    size_t steps[] = {len, 1000, 8191, 8192, 3};
    for (size_t s = 0; s < ARRAY_LEN(steps); s++) {
        struct irc_line_reader r;
        struct lines l = {0};
        buf_init(&l.all);
        irc_line_reader_init(&r);
        for (size_t off = 0; off < len; off += steps[s])
            irc_line_reader_feed(&r, data + off, len - off < steps[s] ? len - off : steps[s],
                                 collect, &l);
        CHECK(l.count == 2);
        CHECK(l.longest == IRC_MAX_LINE);
        CHECK(l.count == 2 && strcmp(l.all.data + IRC_MAX_LINE, "|NEXT 1") == 0);
        CHECK(r.cap <= IRC_MAX_LINE);
        irc_line_reader_fini(&r);
        buf_fini(&l.all);
    }
    /* Exactly IRC_MAX_LINE bytes: delivered whole, once. */
    struct irc_line_reader r;
    struct lines l = {0};
    buf_init(&l.all);
    irc_line_reader_init(&r);
    data[IRC_MAX_LINE] = '\n';
    memcpy(data + IRC_MAX_LINE + 1, "B\n", 2);
    irc_line_reader_feed(&r, data, 100, collect, &l);
    irc_line_reader_feed(&r, data + 100, IRC_MAX_LINE + 3 - 100, collect, &l);
    CHECK(l.count == 2);
    CHECK(l.longest == IRC_MAX_LINE);
    irc_line_reader_fini(&r);
    buf_fini(&l.all);
    /* The callback stops the feed. */
    irc_line_reader_init(&r);
    struct lines l2 = {.stop_after = 1};
    buf_init(&l2.all);
    CHECK(!irc_line_reader_feed(&r, "A\nB\nC\n", 6, collect, &l2));
    CHECK(l2.count == 1);
    irc_line_reader_fini(&r);
    buf_fini(&l2.all);
    free(data);
}

/* ---------------------------------------------------------------- casemapping, names */

static void test_casemapping_defaults(void)
{
    CHECK(irc_casecmp(NULL, "Nick[a]\\~", "nick{A}|^") == 0);
    CHECK(irc_casecmp(NULL, "abc", "abd") < 0);
    CHECK(irc_casecmp(NULL, "abd", "ABC") > 0);
    CHECK(irc_casecmp(NULL, "ab", "abc") < 0);
    CHECK(irc_casecmp(NULL, "", "") == 0);
    CHECK(irc_casecmp(NULL, "\xc3\x89", "\xc3\xa9") != 0); /* no Unicode folding */
    CHECK(irc_is_channel(NULL, "#c"));
    CHECK(irc_is_channel(NULL, "&c"));
    CHECK(!irc_is_channel(NULL, "+c"));
    CHECK(!irc_is_channel(NULL, "nick"));
    CHECK(!irc_is_channel(NULL, ""));
}

static void test_names_entry(void)
{
    char modes[8];
    CHECK_STR(irc_names_entry(NULL, "@+bob", modes, sizeof modes), "bob");
    CHECK_STR(modes, "ov");
    CHECK_STR(irc_names_entry(NULL, "+alice", modes, sizeof modes), "alice");
    CHECK_STR(modes, "v");
    CHECK_STR(irc_names_entry(NULL, "carol", modes, sizeof modes), "carol");
    CHECK_STR(modes, "");
    CHECK_STR(irc_names_entry(NULL, "@@@@@@@@@@x", modes, 3), "x"); /* modes bounded */
    CHECK_STR(modes, "oo");
    CHECK_STR(irc_names_entry(NULL, "", modes, sizeof modes), "");
    CHECK_STR(irc_names_entry(NULL, "~op", NULL, 0), "~op"); /* ~ is not in the default PREFIX */
    CHECK(irc_prefix_mode(NULL, '@') == 'o');
    CHECK(irc_prefix_mode(NULL, '+') == 'v');
    CHECK(irc_prefix_mode(NULL, '%') == 0);
    CHECK(irc_prefix_mode(NULL, 0) == 0);
}

/* ---------------------------------------------------------------- a scripted server */

enum scenario {
    SC_SASL,
    SC_SASL_FAIL,
    SC_NOCAP,
    SC_NICK_TAKEN,
    SC_GARBAGE,
    SC_FLOOD,
    SC_ABORT,
    SC_EXTERNAL,      /* over TLS: sasl=EXTERNAL,PLAIN; 903 only for the expected certificate */
    SC_EXTERNAL_FAIL, /* over TLS: 904 to EXTERNAL */
};

struct srv {
    struct ev_loop *loop;
    enum scenario sc;
    int lfd, fd;
    uint16_t port;
    char in[16384];
    size_t inlen;
    struct buf got; /* every client line, each followed by '\n' */
    int nick_count, privmsg_count;
    uint64_t privmsg_ms[8];
    /* TLS: when tls_ctx is set, accepted connections are struct conn with server-side TLS
     * asking for a client certificate; peer_fp is its SHA-256 (hex), "" when none came. */
    SSL_CTX *tls_ctx;
    struct conn *tconn;
    char peer_fp[CERTFP_SHA256_HEX];
    char want_fp[CERTFP_SHA256_HEX];
};

struct cli {
    struct irc_conn *c;
    int registered, closed, messages;
    char reason[256];
    char reg_nick[64];
    bool in_call;    /* inside an irc_* call made by the test: closed() must not come then */
    struct buf seen; /* "COMMAND params..." of every message() */
    bool quit_on_privmsg, abort_on_privmsg;
};

static struct srv srv;
static struct ev_loop *loop;

static void srv_send(const char *fmt, ...) PRINTF_LIKE(1, 2);
static void srv_send(const char *fmt, ...)
{
    char line[20000];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    memcpy(line + n, "\r\n", 2);
    size_t off = 0, len = (size_t)n + 2;
    if (srv.tconn) {
        conn_write(srv.tconn, line, len);
        return;
    }
    while (off < len) {
        ssize_t w = write(srv.fd, line + off, len - off);
        if (w < 0 && errno == EAGAIN)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static void srv_raw(const char *data, size_t len)
{
    if (srv.tconn) {
        conn_write(srv.tconn, data, len);
        return;
    }
    if (write(srv.fd, data, len) != (ssize_t)len)
        test_failed_checks++;
}

#define RAW(s) srv_raw(s, sizeof(s) - 1)

static void stop_cb(struct ev_loop *l, void *ud)
{
    (void)ud;
    ev_stop(l);
}

static void srv_close(void)
{
    if (srv.tconn) {
        conn_close(srv.tconn, "test server done");
        srv.tconn = NULL;
    }
    if (srv.fd >= 0) {
        ev_io_del(loop, srv.fd);
        close(srv.fd);
        srv.fd = -1;
    }
}

static void srv_registered(const char *nick)
{
    srv_send(":srv.test 001 %s :Welcome", nick);
    srv_send(":srv.test 005 %s CHANTYPES=#+ PREFIX=(qov)~@+ CASEMAPPING=ascii "
             "NETWORK=Test\\x20Net EXCEPTS :are supported",
             nick);
}

static void srv_line(char *line)
{
    buf_puts(&srv.got, line);
    buf_putc(&srv.got, '\n');
    if (strncmp(line, "QUIT", 4) == 0) {
        srv_send("ERROR :Closing link");
        srv_close();
        return;
    }
    if (strncmp(line, "PRIVMSG", 7) == 0 && srv.privmsg_count < 8)
        srv.privmsg_ms[srv.privmsg_count++] = now_ms();
    switch (srv.sc) {
    case SC_SASL:
        if (strcmp(line, "CAP LS 302") == 0) {
            srv_send(":srv.test CAP * LS * :multi-prefix away-notify");
            srv_send(":srv.test CAP * LS :sasl=EXTERNAL,PLAIN server-time");
        } else if (strncmp(line, "CAP REQ", 7) == 0) {
            srv_send(":srv.test CAP * ACK :sasl multi-prefix");
        } else if (strcmp(line, "AUTHENTICATE PLAIN") == 0) {
            srv_send("AUTHENTICATE +");
        } else if (strncmp(line, "AUTHENTICATE ", 13) == 0) {
            unsigned char *out = NULL;
            size_t n = 0;
            const char *b64 = line + 13;
            bool ok = base64_decode(b64, strlen(b64), &out, &n) == 0 && n == 16 &&
                      memcmp(out, "acct\0acct\0secret", 16) == 0;
            free(out);
            CHECK(ok);
            srv_send(ok ? ":srv.test 903 * :SASL ok" : ":srv.test 904 * :bad");
        } else if (strcmp(line, "CAP END") == 0) {
            srv_send(":srv.test 433 * alice :Nickname is already in use");
        } else if (strncmp(line, "NICK alice_", 11) == 0) {
            srv_registered("alice_");
            srv_send("PING :tok123");
            srv_send(":alice_!u@h NICK :Alice2");
            srv_send("@time=2021-01-01T00:00:00.000Z;msgid=m\\s1 :bob!b@h PRIVMSG Alice2 "
                     ":\001ACTION waves\001");
        }
        break;
    case SC_SASL_FAIL:
        if (strcmp(line, "CAP LS 302") == 0) {
            srv_send(":srv.test CAP * LS :sasl");
        } else if (strncmp(line, "CAP REQ", 7) == 0) {
            srv_send(":srv.test CAP * ACK :sasl");
        } else if (strcmp(line, "AUTHENTICATE PLAIN") == 0) {
            srv_send("AUTHENTICATE +");
        } else if (strncmp(line, "AUTHENTICATE ", 13) == 0) {
            srv_send(":srv.test 904 * :SASL authentication failed");
        }
        break;
    case SC_NOCAP:
        if (strcmp(line, "CAP LS 302") == 0) {
            srv_send(":srv.test 421 * CAP :Unknown command");
        } else if (strncmp(line, "USER ", 5) == 0) {
            srv_registered("alice");
        } else if (strncmp(line, "PRIVMSG NickServ", 16) == 0) {
            srv_send("ERROR :Closing Link: bye now");
            srv_close();
        }
        break;
    case SC_NICK_TAKEN:
        if (strcmp(line, "CAP LS 302") == 0)
            srv_send(":srv.test CAP * LS :away-notify");
        else if (strncmp(line, "NICK ", 5) == 0)
            srv_send(":srv.test 433 * %s :Nickname is already in use", line + 5);
        break;
    case SC_GARBAGE:
        if (strcmp(line, "CAP END") == 0 || strcmp(line, "CAP LS 302") == 0) {
            if (line[4] == 'L') {
                srv_send(":srv.test CAP * LS :");
                break;
            }
            srv_registered("alice");
            char big[12000];
            memset(big, 'A', sizeof big);
            srv_raw(":x!y@z PRIVMSG alice :", 22);
            srv_raw(big, sizeof big);
            srv_raw("\r\n", 2);
            RAW(":x!y@z PRIVMSG alice :caf\xe9\0\x01 ok\r\n");
            RAW("\r\n\n   \r\n:only.prefix\r\n@a=b\r\n\xff\xfe\r\n");
            RAW(":x!y@z PRIVMSG alice :end\r\n");
        }
        break;
    case SC_EXTERNAL:
    case SC_EXTERNAL_FAIL:
        if (strcmp(line, "CAP LS 302") == 0) {
            srv_send(":srv.test CAP * LS :sasl=EXTERNAL,PLAIN server-time");
        } else if (strcmp(line, "CAP REQ :sasl") == 0) {
            srv_send(":srv.test CAP * ACK :sasl");
        } else if (strcmp(line, "AUTHENTICATE EXTERNAL") == 0) {
            srv_send("AUTHENTICATE +");
        } else if (strcmp(line, "AUTHENTICATE +") == 0) {
            /* The account is the one whose CertFP the TLS layer presented. */
            if (srv.sc == SC_EXTERNAL && *srv.want_fp && strcmp(srv.peer_fp, srv.want_fp) == 0) {
                srv_send(":srv.test 900 alice alice!u@h acct :You are now logged in as acct");
                srv_send(":srv.test 903 alice :SASL authentication successful");
            } else {
                srv_send(":srv.test 904 alice :SASL authentication failed");
            }
        } else if (strcmp(line, "CAP END") == 0) {
            srv_registered("alice");
        }
        break;
    case SC_FLOOD:
    case SC_ABORT:
        if (strcmp(line, "CAP LS 302") == 0)
            srv_send(":srv.test CAP * LS :");
        else if (strcmp(line, "CAP END") == 0)
            srv_registered("alice");
        if (srv.sc == SC_ABORT && strcmp(line, "CAP END") == 0)
            srv_send(":x!y@z PRIVMSG alice :one\r\n:x!y@z PRIVMSG alice :two");
        break;
    }
}

static void srv_lines(void);

static void srv_read(struct ev_loop *l, int fd, unsigned events, void *ud)
{
    (void)l, (void)events, (void)ud;
    ssize_t n = read(fd, srv.in + srv.inlen, sizeof srv.in - srv.inlen - 1);
    if (n <= 0) {
        if (n < 0 && errno == EAGAIN)
            return;
        srv_close();
        return;
    }
    srv.inlen += (size_t)n;
    srv_lines();
}

/* Hands every complete line in srv.in to srv_line. */
static void srv_lines(void)
{
    char *nl;
    while ((srv.fd >= 0 || srv.tconn) && (nl = memchr(srv.in, '\n', srv.inlen))) {
        size_t ll = (size_t)(nl - srv.in);
        char line[sizeof srv.in];
        memcpy(line, srv.in, ll);
        line[ll && line[ll - 1] == '\r' ? ll - 1 : ll] = '\0';
        memmove(srv.in, nl + 1, srv.inlen - ll - 1);
        srv.inlen -= ll + 1;
        srv_line(line);
    }
}

static void srv_tls_data(struct conn *c, void *ud, const char *data, size_t len)
{
    (void)ud;
    if (c != srv.tconn)
        return;
    size_t room = sizeof srv.in - srv.inlen - 1;
    if (len > room)
        len = room;
    memcpy(srv.in + srv.inlen, data, len);
    srv.inlen += len;
    srv_lines();
}

static void srv_tls_ready(struct conn *c, void *ud)
{
    (void)ud;
    X509 *peer = SSL_get1_peer_certificate(conn_ssl(c));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    srv.peer_fp[0] = '\0';
    if (peer && X509_digest(peer, EVP_sha256(), md, &n) && n == 32)
        for (unsigned i = 0; i < n; i++)
            snprintf(srv.peer_fp + 2 * i, 3, "%02x", md[i]);
    X509_free(peer);
}

static void srv_tls_closed(struct conn *c, void *ud, const char *reason)
{
    (void)ud, (void)reason;
    if (srv.tconn == c)
        srv.tconn = NULL;
}

static const struct conn_ops srv_tls_ops = {
    .data = srv_tls_data, .tls_ready = srv_tls_ready, .closed = srv_tls_closed};

static void srv_accept(struct ev_loop *l, int fd, unsigned events, void *ud)
{
    (void)events, (void)ud;
    int s = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (s < 0)
        return;
    srv_close();
    if (srv.tls_ctx) {
        srv.tconn = conn_new(l, s, "test tls server", 1 << 20, &srv_tls_ops, NULL);
        struct conn_tls_opts to = {.want_peer_cert = true};
        if (!srv.tconn || conn_start_tls_opts(srv.tconn, srv.tls_ctx, &to) != 0)
            test_failed_checks++;
        return;
    }
    srv.fd = s;
    ev_io_add(l, s, EV_READ, srv_read, NULL);
}

static void srv_start(enum scenario sc)
{
    buf_fini(&srv.got);
    srv.sc = sc;
    srv.inlen = 0;
    srv.fd = -1;
    srv.nick_count = srv.privmsg_count = 0;
    srv.peer_fp[0] = '\0';
    if (srv.lfd > 0)
        return;
    srv.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(srv.lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(srv.lfd, 8) != 0 ||
        getsockname(srv.lfd, (struct sockaddr *)&a, &al) != 0)
        abort();
    srv.port = ntohs(a.sin_port);
    ev_io_add(loop, srv.lfd, EV_READ, srv_accept, NULL);
}

/* ---- the client side */

static void cli_registered(struct irc_conn *c, void *ud, const char *nick)
{
    struct cli *k = ud;
    CHECK(k->c == c);
    k->registered++;
    snprintf(k->reg_nick, sizeof k->reg_nick, "%s", nick);
}

static void cli_message(struct irc_conn *c, void *ud, const struct irc_msg *m)
{
    struct cli *k = ud;
    k->messages++;
    CHECK(k->closed == 0);
    buf_puts(&k->seen, m->command);
    for (int i = 0; i < m->nparams; i++) {
        buf_putc(&k->seen, ' ');
        buf_puts(&k->seen, m->params[i]);
        CHECK(utf8_valid(m->params[i], strlen(m->params[i])));
        CHECK(strpbrk(m->params[i], "\r\n") == NULL);
    }
    if (m->tag_msgid) {
        buf_puts(&k->seen, " msgid=");
        buf_puts(&k->seen, m->tag_msgid);
    }
    buf_putc(&k->seen, '\n');
    if (strcmp(m->command, "PRIVMSG") == 0) {
        if (k->abort_on_privmsg) {
            k->in_call = true;
            irc_abort(c, "test abort");
            irc_abort(c, "twice");
            irc_send(c, "PRIVMSG x :after abort");
            k->in_call = false;
        } else if (k->quit_on_privmsg) {
            k->in_call = true;
            irc_say(c, "#chan", "short", false, false);
            irc_quit(c, "see you");
            irc_quit(c, "again");
            k->in_call = false;
        }
    }
}

static void cli_closed(struct irc_conn *c, void *ud, const char *reason)
{
    struct cli *k = ud;
    CHECK(k->c == c);
    CHECK(!k->in_call);
    k->closed++;
    snprintf(k->reason, sizeof k->reason, "%s", reason);
    ev_stop(loop);
}

static const struct irc_conn_cb cli_cb = {cli_registered, cli_message, cli_closed};

static void give_up(struct ev_loop *l, void *ud)
{
    (void)ud;
    fprintf(stderr, "  FAIL: scenario timed out\n");
    test_failed_checks++;
    ev_stop(l);
}

/* Runs until the client is closed (or 5 s). */
static void run_client_with(struct cli *k, struct irc_conn_opts *o, const struct irc_conn_cb *cb)
{
    buf_init(&k->seen);
    o->host = "127.0.0.1";
    o->port = srv.port;
    if (!o->tag)
        o->tag = "irc test";
    k->in_call = true;
    k->c = irc_connect(loop, o, cb, k);
    k->in_call = false;
    struct ev_timer *t = ev_timer_add(loop, 5000, give_up, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    srv_close();
    /* Let deferred frees run. */
    struct ev_timer *t2 = ev_timer_add(loop, 10, stop_cb, NULL);
    (void)t2;
    ev_run(loop);
    CHECK(k->closed == 1);
}

static void run_client(struct cli *k, struct irc_conn_opts *o)
{
    run_client_with(k, o, &cli_cb);
}

static void test_conn_sasl(void)
{
    srv_start(SC_SASL);
    struct cli k = {.quit_on_privmsg = true};
    struct irc_conn_opts o = {.nick = "alice",
                              .password = "srvpw",
                              .sasl_mechanism = "plain",
                              .sasl_username = "acct",
                              .sasl_password = "secret",
                              .nickserv_password = "never-sent",
                              .flood_interval_ms = 50};
    run_client(&k, &o);
    const char *want = "CAP LS 302\nPASS srvpw\nNICK alice\nUSER alice 0 * :alice\n"
                       "CAP REQ :sasl multi-prefix\nAUTHENTICATE PLAIN\n";
    CHECK(srv.got.data && strncmp(srv.got.data, want, strlen(want)) == 0);
    CHECK(srv.got.data && strstr(srv.got.data, "\nCAP END\nNICK alice_\n"));
    CHECK(srv.got.data && strstr(srv.got.data, "\nPONG :tok123\n"));
    CHECK(srv.got.data && strstr(srv.got.data, "\nPRIVMSG #chan :short\nQUIT :see you\n"));
    CHECK(srv.got.data && !strstr(srv.got.data, "NickServ"));
    CHECK(k.registered == 1);
    CHECK_STR(k.reg_nick, "alice_");
    CHECK_STR(k.reason, "see you");
    CHECK_STR(k.seen.data, "433 * alice Nickname is already in use\n001 alice_ Welcome\n"
                           "005 alice_ CHANTYPES=#+ PREFIX=(qov)~@+ CASEMAPPING=ascii "
                           "NETWORK=Test\\x20Net EXCEPTS are supported\n"
                           "NICK Alice2\nPRIVMSG Alice2 \001ACTION waves\001 msgid=m 1\n");
    CHECK(srv.got.data && !strstr(srv.got.data, "again"));
    buf_fini(&k.seen);
}

static void test_conn_sasl_fail(void)
{
    srv_start(SC_SASL_FAIL);
    struct cli k = {0};
    struct irc_conn_opts o = {.nick = "alice", .sasl_mechanism = "PLAIN", .sasl_password = "bad"};
    run_client(&k, &o);
    CHECK_STR(k.reason, "SASL authentication failed");
    CHECK(k.registered == 0);
    CHECK(k.messages == 0);
    buf_fini(&k.seen);
}

static void test_conn_nocap_nickserv_error(void)
{
    srv_start(SC_NOCAP);
    struct cli k = {0};
    struct irc_conn_opts o = {.nick = "alice",
                              .username = "al ice",
                              .realname = "Alice A",
                              .sasl_mechanism = "PLAIN",
                              .sasl_password = "pw",
                              .nickserv_password = "nspw"};
    run_client(&k, &o);
    CHECK(srv.got.data && strstr(srv.got.data, "USER al_ice 0 * :Alice A\n"));
    CHECK(srv.got.data && strstr(srv.got.data, "PRIVMSG NickServ :IDENTIFY nspw\n"));
    CHECK(srv.got.data && !strstr(srv.got.data, "CAP END"));
    CHECK(srv.got.data && !strstr(srv.got.data, "AUTHENTICATE"));
    CHECK(k.registered == 1);
    CHECK_STR(k.reason, "Closing Link: bye now");
    CHECK(k.seen.data && strstr(k.seen.data, "ERROR Closing Link: bye now\n"));
    CHECK(k.seen.data && !strstr(k.seen.data, "421"));
    buf_fini(&k.seen);
}

static void test_conn_nick_taken(void)
{
    srv_start(SC_NICK_TAKEN);
    struct cli k = {0};
    struct irc_conn_opts o = {.nick = "alice"};
    run_client(&k, &o);
    CHECK(srv.got.data && strstr(srv.got.data, "NICK alice\n") &&
          strstr(srv.got.data, "NICK alice_\n") && strstr(srv.got.data, "NICK alice__\n") &&
          strstr(srv.got.data, "NICK alice___\n") && !strstr(srv.got.data, "NICK alice____"));
    CHECK_STR(k.reason, "nick alice unavailable");
    CHECK(k.registered == 0);
    buf_fini(&k.seen);
}

static void test_conn_garbage(void)
{
    srv_start(SC_GARBAGE);
    struct cli k = {0};
    struct irc_conn_opts o = {.nick = "alice", .keepalive_s = 1};
    run_client(&k, &o);
    /* The 12000-byte line came cut; the latin-1 one converted, NUL and ^A dropped; the empty,
     * prefix-only and tag-only lines skipped; then ping timeout (keepalive 1 s, no PONG). */
    CHECK(k.seen.data && strstr(k.seen.data, "PRIVMSG alice caf\xc3\xa9\x01 ok\n"));
    CHECK(k.seen.data && strstr(k.seen.data, "PRIVMSG alice end\n"));
    CHECK(k.seen.data && strstr(k.seen.data, "\xc3\xbf\xc3\xbe\n")); /* "ÿþ" as a command */
    const char *p = k.seen.data ? strstr(k.seen.data, "PRIVMSG alice AAA") : NULL;
    CHECK(p && strcspn(p + 14, "\n") == IRC_MAX_LINE - 22);
    CHECK(k.messages == 6);
    CHECK(srv.got.data && strstr(srv.got.data, "PING :srv.test\n"));
    CHECK_STR(k.reason, "ping timeout");
    buf_fini(&k.seen);
}

static void flood_registered(struct irc_conn *c, void *ud, const char *nick)
{
    cli_registered(c, ud, nick);
    for (int i = 0; i < 5; i++)
        irc_send(c, "PRIVMSG #c :line %d\r\nQUIT :injected", i);
    irc_quit(c, "done");
}

static void test_conn_flood(void)
{
    srv_start(SC_FLOOD);
    struct cli k = {0};
    struct irc_conn_cb cb = cli_cb;
    cb.registered = flood_registered;
    struct irc_conn_opts o = {.nick = "alice", .flood_burst = 2, .flood_interval_ms = 150};
    buf_init(&k.seen);
    o.host = "127.0.0.1";
    o.port = srv.port;
    k.c = irc_connect(loop, &o, &cb, &k);
    struct ev_timer *t = ev_timer_add(loop, 5000, give_up, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    srv_close();
    CHECK(srv.privmsg_count == 5);
    /* Two at once, then one per 150 ms: the 5th is ≥ 3 intervals after the 1st. */
    CHECK(srv.privmsg_ms[1] - srv.privmsg_ms[0] < 100);
    CHECK(srv.privmsg_ms[4] - srv.privmsg_ms[0] >= 400);
    CHECK(srv.got.data && strstr(srv.got.data, "PRIVMSG #c :line 4  QUIT :injected\nQUIT :done\n"));
    CHECK_STR(k.reason, "done");
    CHECK(k.closed == 1);
    buf_fini(&k.seen);
}

static void test_conn_abort_in_message(void)
{
    srv_start(SC_ABORT);
    struct cli k = {.abort_on_privmsg = true};
    struct irc_conn_opts o = {.nick = "alice"};
    run_client(&k, &o);
    CHECK_STR(k.reason, "test abort");
    CHECK(k.seen.data && strstr(k.seen.data, "PRIVMSG alice one\n") && !strstr(k.seen.data, "two"));
    CHECK(srv.got.data == NULL || !strstr(srv.got.data, "after abort"));
    buf_fini(&k.seen);
}

static void test_conn_refused(void)
{
    /* A port nobody listens on: bind, note it, close. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0);
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s);
    struct cli k = {0};
    struct irc_conn_opts o = {.nick = "alice", .host = "127.0.0.1", .port = ntohs(a.sin_port)};
    buf_init(&k.seen);
    k.c = irc_connect(loop, &o, &cli_cb, &k);
    ev_run(loop);
    CHECK(k.closed == 1);
    CHECK(strncmp(k.reason, "cannot connect to 127.0.0.1", 27) == 0);
    buf_fini(&k.seen);
    /* Bad name: DNS failure, reported later, never NULL. */
    struct cli k2 = {0};
    struct irc_conn_opts o2 = {.nick = "alice", .host = "no-such-host.invalid"};
    buf_init(&k2.seen);
    k2.c = irc_connect(loop, &o2, &cli_cb, &k2);
    CHECK(k2.c != NULL && k2.closed == 0);
    struct ev_timer *t = ev_timer_add(loop, 8000, give_up, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    CHECK(k2.closed == 1);
    CHECK(strncmp(k2.reason, "cannot resolve no-such-host.invalid", 35) == 0);
    buf_fini(&k2.seen);
    /* Missing nick: closed, later. */
    struct cli k3 = {0};
    struct irc_conn_opts o3 = {.host = "127.0.0.1"};
    buf_init(&k3.seen);
    k3.c = irc_connect(loop, &o3, &cli_cb, &k3);
    CHECK(k3.closed == 0);
    ev_run(loop);
    CHECK_STR(k3.reason, "no nick");
    buf_fini(&k3.seen);
}

/* ---------------------------------------------------------------- SASL EXTERNAL, certfp.c */

static char tmpdir[64];

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *sub = xasprintf("%s/%s", path, e->d_name);
        rm_tree(sub);
        free(sub);
    }
    closedir(d);
    rmdir(path);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    buf_putc(&b, '\0');
    return buf_take(&b);
}

/* What `openssl x509 -fingerprint -DIGEST` prints for path, as lower-case hex without colons
 * ("" when it fails): the independent check of certfp_fingerprints. */
static void openssl_cli_fp(const char *path, const char *digest, char *out, size_t outlen)
{
    char *cmd = xasprintf("openssl x509 -noout -fingerprint -%s -in '%s' 2>/dev/null", digest,
                          path);
    FILE *p = popen(cmd, "r");
    free(cmd);
    char line[512] = "";
    if (p) {
        if (!fgets(line, sizeof line, p))
            line[0] = '\0';
        pclose(p);
    }
    const char *eq = strchr(line, '=');
    size_t k = 0;
    for (const char *q = eq ? eq + 1 : ""; *q && k + 1 < outlen; q++)
        if (isxdigit((unsigned char)*q))
            out[k++] = (char)tolower((unsigned char)*q);
    out[k] = '\0';
}

static void test_certfp(void)
{
    char err[256] = "";
    char *dir = xasprintf("%s/gw.test-certs", tmpdir);
    const char *jid = "alice@example.org";
    char *path = certfp_ensure(dir, jid, err, sizeof err);
    CHECK(path != NULL);
    if (!path) {
        fprintf(stderr, "  certfp_ensure: %s\n", err);
        free(dir);
        return;
    }
    /* DIR/<SHA-256 of the JID>.pem, private. */
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    CHECK(EVP_Digest(jid, strlen(jid), md, &mdlen, EVP_sha256(), NULL) && mdlen == 32);
    char name[CERTFP_SHA256_HEX];
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(name + 2 * i, 3, "%02x", md[i]);
    char *want = xasprintf("%s/%s.pem", dir, name);
    CHECK_STR(path, want);
    free(want);
    struct stat st;
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);

    /* The fingerprints are what the openssl tool says. */
    char fp256[CERTFP_SHA256_HEX], fp512[CERTFP_SHA512_HEX], cli[200];
    CHECK(certfp_fingerprints(path, fp256, fp512, err, sizeof err) == 0);
    CHECK(strlen(fp256) == 64 && strlen(fp512) == 128);
    openssl_cli_fp(path, "sha256", cli, sizeof cli);
    CHECK_STR(fp256, cli);
    openssl_cli_fp(path, "sha512", cli, sizeof cli);
    CHECK_STR(fp512, cli);

    /* Read back independently: self-signed, CN = the JID, EC P-256, 10 years, client auth. */
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = NULL;
    if (f) {
        rewind(f);
        key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    CHECK(x && key);
    if (x && key) {
        char cn[256] = "";
        CHECK(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                        sizeof cn) > 0);
        CHECK_STR(cn, jid);
        CHECK(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0);
        CHECK(X509_verify(x, key) == 1);
        CHECK(X509_check_private_key(x, key) == 1);
        CHECK(EVP_PKEY_is_a(key, "EC"));
        char group[64] = "";
        size_t gl = 0;
        CHECK(EVP_PKEY_get_group_name(key, group, sizeof group, &gl) == 1);
        CHECK_STR(group, "prime256v1");
        int days = 0, secs = 0;
        CHECK(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)));
        CHECK(days == CERTFP_DAYS);
        CHECK(X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0) == 1);
    }
    X509_free(x);
    EVP_PKEY_free(key);

    /* Second call: the same file, untouched, the same fingerprints. */
    char *before = read_all(path);
    char *again = certfp_ensure(dir, jid, err, sizeof err);
    CHECK_STR(again, path);
    char *after = read_all(path);
    CHECK(before && after && strcmp(before, after) == 0);
    char fp256b[CERTFP_SHA256_HEX] = "", fp512b[CERTFP_SHA512_HEX] = "";
    CHECK(again && certfp_fingerprints(again, fp256b, fp512b, err, sizeof err) == 0);
    CHECK_STR(fp256b, fp256);
    CHECK_STR(fp512b, fp512);
    free(before);
    free(after);
    free(again);

    /* Another user: another file and key. */
    char *other = certfp_ensure(dir, "bob@example.org", err, sizeof err);
    CHECK(other && strcmp(other, path) != 0);
    CHECK(other && certfp_fingerprints(other, fp256b, NULL, err, sizeof err) == 0 &&
          strcmp(fp256b, fp256) != 0);
    free(other);

    /* A JID longer than a CN may be (64 characters): cut on a character boundary. */
    struct buf lj;
    buf_init(&lj);
    for (int i = 0; i < 80; i++)
        buf_puts(&lj, "é");
    buf_puts(&lj, "@example.org");
    char *lpath = certfp_ensure(dir, lj.data, err, sizeof err);
    CHECK(lpath != NULL);
    f = lpath ? fopen(lpath, "r") : NULL;
    x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    char cn[512] = "";
    CHECK(x && X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                         sizeof cn) == 128);
    CHECK(utf8_valid(cn, strlen(cn)) && strncmp(cn, lj.data, 128) == 0);
    X509_free(x);
    free(lpath);
    buf_fini(&lj);

    /* A damaged file is refused, never replaced (its fingerprint may be registered). */
    char *bad = certfp_path(dir, "carol@example.org");
    f = fopen(bad, "w");
    CHECK(f && fputs("-----BEGIN CERTIFICATE-----\ngarbage\n", f) >= 0);
    if (f)
        fclose(f);
    err[0] = '\0';
    CHECK(certfp_ensure(dir, "carol@example.org", err, sizeof err) == NULL);
    CHECK(*err != '\0');
    char *content = read_all(bad);
    CHECK(content && strstr(content, "garbage"));
    free(content);
    CHECK(certfp_fingerprints(bad, fp256b, fp512b, err, sizeof err) == -1);
    free(bad);
    /* A key that does not belong to the certificate: refused too. */
    char *mixed = certfp_path(dir, "dave@example.org");
    char *cert_part = read_all(path);
    char *bobfile = certfp_path(dir, "bob@example.org");
    char *bobpem = read_all(bobfile);
    f = fopen(mixed, "w");
    if (f && cert_part && bobpem) {
        /* alice's certificate, then bob's key */
        fwrite(cert_part, 1, strstr(cert_part, "-----END CERTIFICATE-----\n") + 26 - cert_part, f);
        fputs(strstr(bobpem, "-----BEGIN PRIVATE KEY-----"), f);
    }
    if (f)
        fclose(f);
    err[0] = '\0';
    CHECK(certfp_ensure(dir, "dave@example.org", err, sizeof err) == NULL);
    CHECK(strstr(err, "does not match") != NULL);
    free(cert_part);
    free(bobpem);
    free(bobfile);
    free(mixed);

    /* No JID; a directory that cannot be made. */
    CHECK(certfp_ensure(dir, "", err, sizeof err) == NULL);
    char *nodir = xasprintf("%s/no/such/dir", tmpdir);
    err[0] = '\0';
    CHECK(certfp_ensure(nodir, jid, err, sizeof err) == NULL && *err);
    free(nodir);
    free(path);
    free(dir);
}

static void quit_registered(struct irc_conn *c, void *ud, const char *nick)
{
    cli_registered(c, ud, nick);
    irc_quit(c, "bye");
}

/* The connection ends before any TLS: its reason, and no byte reached the server. */
static void check_refused_at_once(struct irc_conn_opts *o, const char *reason)
{
    struct cli k = {0};
    buf_init(&k.seen);
    o->host = "127.0.0.1";
    o->port = srv.port;
    k.in_call = true;
    k.c = irc_connect(loop, o, &cli_cb, &k);
    k.in_call = false;
    struct ev_timer *t = ev_timer_add(loop, 5000, give_up, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    CHECK(k.closed == 1);
    CHECK_STR(k.reason, reason);
    CHECK(k.registered == 0);
    buf_fini(&k.seen);
}

static void test_conn_sasl_external(void)
{
    char err[256] = "";
    /* The scripted server speaks TLS with a certificate for srv.test, asking for the client's. */
    char *scert = xasprintf("%s/srv.crt", tmpdir), *skey = xasprintf("%s/srv.key", tmpdir);
    CHECK(tls_make_self_signed("srv.test", scert, skey, 2, err, sizeof err) == 0);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(ctx && SSL_CTX_use_certificate_file(ctx, scert, SSL_FILETYPE_PEM) == 1 &&
          SSL_CTX_use_PrivateKey_file(ctx, skey, SSL_FILETYPE_PEM) == 1);
    char *dir = xasprintf("%s/gw.test-certs", tmpdir);
    char *cert = certfp_ensure(dir, "alice@example.org", err, sizeof err);
    CHECK(cert && certfp_fingerprints(cert, srv.want_fp, NULL, err, sizeof err) == 0);
    if (!ctx || !cert) {
        SSL_CTX_free(ctx);
        free(cert);
        free(dir);
        free(scert);
        free(skey);
        return;
    }
    srv.tls_ctx = ctx;

    /* 1. Verified TLS (the server's certificate is trusted through SSL_CERT_FILE: the client
     * certificate's context shares the verifying store), the client certificate is presented,
     * and SASL EXTERNAL goes: CAP LS → CAP REQ :sasl → AUTHENTICATE EXTERNAL → + → + → 903. */
    setenv("SSL_CERT_FILE", scert, 1);
    srv_start(SC_EXTERNAL);
    struct cli k = {0};
    struct irc_conn_cb cb = cli_cb;
    cb.registered = quit_registered;
    struct irc_conn_opts o = {.nick = "alice",
                              .tls = true,
                              .tls_verify = true,
                              .tls_name = "srv.test",
                              .sasl_mechanism = "external",
                              .client_cert = cert,
                              .nickserv_password = "fallback-pw",
                              .flood_interval_ms = UINT32_MAX};
    run_client_with(&k, &o, &cb);
    CHECK_STR(srv.peer_fp, srv.want_fp);
    CHECK_STR(srv.got.data, "CAP LS 302\nNICK alice\nUSER alice 0 * :alice\nCAP REQ :sasl\n"
                            "AUTHENTICATE EXTERNAL\nAUTHENTICATE +\nCAP END\nQUIT :bye\n");
    CHECK(k.registered == 1);
    CHECK_STR(k.reg_nick, "alice");
    CHECK_STR(k.reason, "bye");
    /* 900 and 903 are the stack's business (and the client quit from registered(), so 001
     * itself is not handed on). */
    CHECK(k.seen.data == NULL);
    buf_fini(&k.seen);

    /* 2. The network does not know the certificate (904): registration goes on without SASL,
     * the driver sees the 904, and the password is the NickServ fallback. */
    srv_start(SC_EXTERNAL_FAIL);
    struct cli k2 = {0};
    struct irc_conn_opts o2 = {.nick = "alice",
                               .tls = true,
                               .sasl_mechanism = "EXTERNAL",
                               .client_cert = cert,
                               .nickserv_password = "fallback-pw",
                               .flood_interval_ms = UINT32_MAX};
    run_client_with(&k2, &o2, &cb);
    CHECK_STR(srv.peer_fp, srv.want_fp);
    CHECK(srv.got.data && strstr(srv.got.data, "\nAUTHENTICATE EXTERNAL\nAUTHENTICATE +\n"
                                               "CAP END\n"));
    CHECK(srv.got.data && strstr(srv.got.data, "\nPRIVMSG NickServ :IDENTIFY fallback-pw\n"
                                               "QUIT :bye\n"));
    CHECK(k2.registered == 1);
    CHECK_STR(k2.seen.data, "904 alice SASL authentication failed\n");
    buf_fini(&k2.seen);

    /* 3. A certificate file that cannot be loaded: closed before the handshake. */
    srv_start(SC_EXTERNAL);
    struct cli k3 = {0};
    char *missing = xasprintf("%s/missing.pem", tmpdir);
    struct irc_conn_opts o3 = {
        .nick = "alice", .tls = true, .sasl_mechanism = "EXTERNAL", .client_cert = missing};
    run_client(&k3, &o3);
    CHECK_STR(k3.reason, "cannot load the client certificate");
    CHECK(k3.registered == 0 && srv.got.data == NULL);
    buf_fini(&k3.seen);
    free(missing);

    /* 4. EXTERNAL without TLS, or without a certificate, is refused before connecting. */
    srv_start(SC_EXTERNAL);
    struct irc_conn_opts o4 = {.nick = "alice", .sasl_mechanism = "EXTERNAL", .client_cert = cert};
    check_refused_at_once(&o4, "SASL EXTERNAL needs TLS and a client certificate");
    struct irc_conn_opts o5 = {.nick = "alice", .tls = true, .sasl_mechanism = "EXTERNAL"};
    check_refused_at_once(&o5, "SASL EXTERNAL needs TLS and a client certificate");
    CHECK(srv.got.data == NULL);

    srv_close();
    srv.tls_ctx = NULL;
    SSL_CTX_free(ctx);
    unsetenv("SSL_CERT_FILE");
    free(cert);
    free(dir);
    free(scert);
    free(skey);
}

/* ---------------------------------------------------------------- splitting (irc_say) */

static void split_registered(struct irc_conn *c, void *ud, const char *nick)
{
    cli_registered(c, ud, nick);
    struct buf t;
    buf_init(&t);
    for (int i = 0; i < 300; i++)
        buf_puts(&t, "é"); /* 600 bytes of 2-byte characters */
    buf_puts(&t, "\r\n\n\nsecond line\n");
    for (int i = 0; i < 700; i++)
        buf_putc(&t, 'w'); /* a 700-byte word */
    buf_puts(&t, "\nwords ");
    for (int i = 0; i < 120; i++)
        buf_puts(&t, "abc ");
    irc_say(c, "#chan", t.data, false, false);
    struct buf e;
    buf_init(&e);
    for (int i = 0; i < 300; i++)
        buf_puts(&e, "€");
    irc_say(c, "bob", e.data, true, false);
    buf_fini(&e);
    irc_say(c, "#chan", "", false, true);
    irc_say(c, "#chan", "\n\n", false, true);
    irc_say(c, "#chan", "note", false, true);
    buf_fini(&t);
    irc_quit(c, "bye");
}

static void check_split_lines(const char *all)
{
    /* Every line fits with the relay prefix reserve, is UTF-8, and actions are framed. */
    int n = 0;
    struct buf text, action;
    buf_init(&text);
    buf_init(&action);
    for (const char *p = all; *p;) {
        size_t ll = strcspn(p, "\n");
        char *line = xstrndup(p, ll);
        p += ll + (p[ll] == '\n');
        if (strncmp(line, "PRIVMSG", 7) && strncmp(line, "NOTICE", 6)) {
            free(line);
            continue;
        }
        n++;
        CHECK(ll + 2 + 100 <= 512);
        CHECK(utf8_valid(line, ll));
        const char *body = strstr(line, " :") + 2;
        if (strncmp(line, "PRIVMSG bob", 11) == 0) {
            size_t al;
            const char *a = irc_ctcp_action(body, &al);
            CHECK(a && body[strlen(body) - 1] == '\001');
            if (a)
                buf_append(&action, a, al);
        } else if (strncmp(line, "PRIVMSG #chan", 13) == 0) {
            buf_puts(&text, body);
            buf_putc(&text, '|');
        } else {
            CHECK_STR(line, "NOTICE #chan :note");
        }
        free(line);
    }
    CHECK(n > 6);
    /* Re-joined, the é run and the long word are intact; the spaces at cuts are the only loss. */
    struct buf want;
    buf_init(&want);
    for (int i = 0; i < 300; i++)
        buf_puts(&want, "é");
    char *t = text.data ? text.data : "";
    char *bar = strstr(t, "|second line|");
    CHECK(bar != NULL);
    if (bar) {
        *bar = '\0';
        char *joined = xstrdup(t);
        char *w = joined;
        for (char *r = joined; *r; r++)
            if (*r != '|')
                *w++ = *r;
        *w = '\0';
        CHECK_STR(joined, want.data);
        free(joined);
        size_t wl = 0;
        for (char *r = bar + 13; *r == 'w' || (*r == '|' && r[1] == 'w' && r[2] == 'w'); r++)
            wl += *r == 'w';
        CHECK(wl == 700);
    }
    CHECK(strlen(action.data ? action.data : "") == 300 * 3);
    buf_fini(&want);
    buf_fini(&text);
    buf_fini(&action);
}

static void test_conn_split(void)
{
    srv_start(SC_FLOOD);
    struct cli k = {0};
    struct irc_conn_cb cb = cli_cb;
    cb.registered = split_registered;
    struct irc_conn_opts o = {
        .nick = "alice", .flood_interval_ms = UINT32_MAX, .host = "127.0.0.1", .port = srv.port};
    buf_init(&k.seen);
    k.c = irc_connect(loop, &o, &cb, &k);
    struct ev_timer *t = ev_timer_add(loop, 5000, give_up, NULL);
    ev_run(loop);
    ev_timer_cancel(loop, t);
    srv_close();
    CHECK_STR(k.reason, "bye");
    check_split_lines(srv.got.data ? srv.got.data : "");
    buf_fini(&k.seen);
}

static void test_isupport_casemap(void)
{
    /* After SC_SASL-like registration the 005 changes CHANTYPES, PREFIX and CASEMAPPING. */
    srv_start(SC_FLOOD);
    struct cli k = {0};
    struct irc_conn_cb cb = cli_cb;
    cb.registered = NULL;
    struct irc_conn_opts o = {.nick = "alice", .host = "127.0.0.1", .port = srv.port};
    buf_init(&k.seen);
    k.c = irc_connect(loop, &o, &cb, &k);
    struct ev_timer *t = ev_timer_add(loop, 5000, give_up, NULL);
    /* Stop as soon as the 005 arrived: message() count 2 (001, 005). */
    while (k.messages < 2 && !k.closed) {
        struct ev_timer *tick = ev_timer_add(loop, 20, stop_cb, NULL);
        (void)tick;
        ev_run(loop);
    }
    ev_timer_cancel(loop, t);
    CHECK(irc_is_registered(k.c));
    CHECK_STR(irc_nick(k.c), "alice");
    CHECK_STR(irc_server_name(k.c), "srv.test");
    CHECK_STR(irc_isupport(k.c, "NETWORK"), "Test Net");
    CHECK_STR(irc_isupport(k.c, "EXCEPTS"), "");
    CHECK(irc_isupport(k.c, "NOPE") == NULL);
    CHECK(irc_is_channel(k.c, "+chan"));
    CHECK(!irc_is_channel(k.c, "&chan"));
    CHECK(irc_prefix_mode(k.c, '~') == 'q');
    char modes[8];
    CHECK_STR(irc_names_entry(k.c, "~@+x", modes, sizeof modes), "x");
    CHECK_STR(modes, "qov");
    CHECK(irc_casecmp(k.c, "ABC", "abc") == 0);
    CHECK(irc_casecmp(k.c, "a[", "A{") != 0); /* ascii casemapping */
    irc_abort(k.c, "enough");
    CHECK(k.closed == 0);
    ev_run(loop);
    CHECK(k.closed == 1);
    srv_close();
    buf_fini(&k.seen);
}

static void before_sleep(struct ev_loop *l, void *ud)
{
    (void)l, (void)ud;
    conn_flush_all();
}

int main(void)
{
    TEST_RUN(test_parse_basic);
    TEST_RUN(test_parse_tags);
    TEST_RUN(test_parse_params);
    TEST_RUN(test_parse_garbage);
    TEST_RUN(test_to_utf8);
    TEST_RUN(test_strip_formatting);
    TEST_RUN(test_ctcp_action);
    TEST_RUN(test_line_reader_split);
    TEST_RUN(test_line_reader_long);
    TEST_RUN(test_casemapping_defaults);
    TEST_RUN(test_names_entry);

    signal(SIGPIPE, SIG_IGN); /* as in gw_main: TLS writes to a peer that went away */
    if (!mkdtemp(strcpy(tmpdir, "/tmp/test_irc_XXXXXX"))) {
        perror("mkdtemp");
        return 1;
    }
    TEST_RUN(test_certfp);

    log_open(NULL, getenv("IRC_TEST_DEBUG") ? LOG_DEBUG : LOG_ERROR);
    loop = ev_loop_new();
    ev_set_before_sleep(loop, before_sleep, NULL);
    char err[256];
    if (resolver_init(loop, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "resolver_init: %s\n", err);
        return 1;
    }
    buf_init(&srv.got);
    TEST_RUN(test_conn_sasl);
    TEST_RUN(test_conn_sasl_fail);
    TEST_RUN(test_conn_nocap_nickserv_error);
    TEST_RUN(test_conn_nick_taken);
    TEST_RUN(test_conn_garbage);
    TEST_RUN(test_conn_flood);
    TEST_RUN(test_conn_abort_in_message);
    TEST_RUN(test_conn_split);
    TEST_RUN(test_isupport_casemap);
    TEST_RUN(test_conn_refused);
    TEST_RUN(test_conn_sasl_external);
    srv_close();
    rm_tree(tmpdir);
    close(srv.lfd);
    buf_fini(&srv.got);
    resolver_fini();
    ev_loop_free(loop);
    return TEST_DONE();
}
