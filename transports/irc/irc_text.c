/* irc_text.c — the sans-I/O half of the IRC stack (irc.h): decoding and cleaning text, CTCP
 * ACTION, parsing one line, and the line reader that cuts a byte stream into bounded lines. No
 * connection, no loop: the unit tests and the fuzz target drive it directly. */
#include "irc.h"

#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"

/* ---------------------------------------------------------------- text helpers */

/* mIRC formatting codes (https://modern.ircdocs.horse/formatting): bold, colour, hex colour,
 * monospace, reset, ^R (some clients), reverse, italics, strikethrough, underline. */
static bool is_format_code(unsigned char ch)
{
    return ch == 0x02 || ch == 0x03 || ch == 0x04 || ch == 0x0F || ch == 0x11 || ch == 0x12 ||
           ch == 0x16 || ch == 0x1D || ch == 0x1E || ch == 0x1F;
}

/* Characters kept from C0: tab, the formatting codes and the CTCP delimiter \001 (for
 * irc_ctcp_action; irc_strip_formatting drops it); everything else there is not an XML 1.0
 * Char (§2.2) or is a line break the protocol forbids inside a message. */
static bool keep_ascii(unsigned char ch)
{
    return ch >= 0x20 || ch == '\t' || ch == 0x01 || is_format_code(ch);
}

char *irc_to_utf8(const char *raw, size_t len)
{
    const unsigned char *p = (const unsigned char *)raw;
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, len + 1);
    if (utf8_valid(raw, len)) {
        for (size_t i = 0; i < len;) {
            unsigned char ch = p[i];
            if (ch < 0x80) {
                if (keep_ascii(ch))
                    buf_putc(&b, (char)ch);
                i++;
                continue;
            }
            size_t n = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : 2;
            /* U+FFFE and U+FFFF (EF BF BE/BF) are valid UTF-8 but not XML Chars. */
            if (!(n == 3 && ch == 0xEF && p[i + 1] == 0xBF && p[i + 2] >= 0xBE))
                buf_append(&b, p + i, n);
            i += n;
        }
    } else {
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = p[i];
            if (ch < 0x80) {
                if (keep_ascii(ch))
                    buf_putc(&b, (char)ch);
            } else {
                buf_putc(&b, (char)(0xC0 | ch >> 6));
                buf_putc(&b, (char)(0x80 | (ch & 0x3F)));
            }
        }
    }
    return buf_take(&b);
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static size_t span_hex6(const char *s)
{
    size_t n = 0;
    while (n < 6 && is_hex(s[n]))
        n++;
    return n == 6 ? 6 : 0;
}

char *irc_strip_formatting(const char *s)
{
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, strlen(s) + 1);
    for (size_t i = 0; s[i];) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == 0x03) {
            /* ^C[fg[,bg]]: one or two digits each; a comma only counts before a digit. */
            i++;
            if (is_digit(s[i])) {
                i += is_digit(s[i + 1]) ? 2 : 1;
                if (s[i] == ',' && is_digit(s[i + 1]))
                    i += is_digit(s[i + 2]) ? 3 : 2;
            }
        } else if (ch == 0x04) {
            /* ^D[RRGGBB[,RRGGBB]] */
            i++;
            size_t n = span_hex6(s + i);
            if (n) {
                i += n;
                if (s[i] == ',' && span_hex6(s + i + 1))
                    i += 7;
            }
        } else if (is_format_code(ch) || ch == 0x01) {
            i++; /* \001: a CTCP delimiter left over, not an XML Char */
        } else {
            buf_putc(&b, (char)ch);
            i++;
        }
    }
    return buf_take(&b);
}

const char *irc_ctcp_action(const char *text, size_t *len)
{
    static const char head[] = "\001ACTION";
    size_t hl = sizeof head - 1;
    if (strncmp(text, head, hl) != 0)
        return NULL;
    const char *p = text + hl;
    if (*p != ' ' && *p != '\001' && *p != '\0')
        return NULL; /* "\001ACTIONS..." is another CTCP */
    if (*p == ' ')
        p++;
    /* The closing \001 is optional in practice (some clients drop it). */
    const char *end = strchr(p, '\001');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (len)
        *len = n;
    return p;
}

/* ---------------------------------------------------------------- parsing */

/* IRCv3 message-tags: value escapes \: \s \\ \r \n; any other escaped char is itself; a
 * trailing lone backslash is dropped. In place. */
static void unescape_tag(char *v)
{
    char *w = v;
    for (char *r = v; *r; r++) {
        if (*r != '\\') {
            *w++ = *r;
            continue;
        }
        r++;
        if (!*r)
            break;
        switch (*r) {
        case ':':
            *w++ = ';';
            break;
        case 's':
            *w++ = ' ';
            break;
        case 'r':
            *w++ = '\r';
            break;
        case 'n':
            *w++ = '\n';
            break;
        default:
            *w++ = *r;
            break;
        }
    }
    *w = '\0';
}

static char *skip_spaces(char *p)
{
    while (*p == ' ')
        p++;
    return p;
}

/* Ends the token at p (up to the next space), returns the position after it. */
static char *cut_token(char *p)
{
    char *sp = strchr(p, ' ');
    if (!sp)
        return p + strlen(p);
    *sp = '\0';
    return sp + 1;
}

static void parse_tags(char *tags, struct irc_msg *m)
{
    char *t = tags;
    while (t && *t) {
        char *next = strchr(t, ';');
        if (next)
            *next++ = '\0';
        char *eq = strchr(t, '=');
        char *val = t + strlen(t); /* "" inside the line: writable */
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        }
        if (strcmp(t, "time") == 0) {
            unescape_tag(val);
            m->tag_time = val;
        } else if (strcmp(t, "msgid") == 0) {
            unescape_tag(val);
            m->tag_msgid = val;
        }
        t = next;
    }
}

static void parse_prefix(const char *prefix, struct irc_msg *m)
{
    m->prefix = prefix;
    size_t n = strcspn(prefix, "!@");
    if (!prefix[n]) {
        m->nick = prefix; /* a server name, or a bare nick */
        return;
    }
    size_t keep = n < sizeof m->nick_buf - 1 ? n : sizeof m->nick_buf - 1;
    while (keep > 0 && keep < n && ((unsigned char)prefix[keep] & 0xC0) == 0x80)
        keep--; /* never cut inside a UTF-8 sequence */
    memcpy(m->nick_buf, prefix, keep);
    m->nick_buf[keep] = '\0';
    m->nick = m->nick_buf;
    m->userhost = prefix + n + 1; /* "user@host" after '!', just "host" after a bare '@' */
}

/* RFC 1459 §2.3.1, RFC 2812 §2.3.1 and IRCv3 message-tags. Lenient: runs of spaces separate
 * tokens; after 14 middle parameters the rest of the line is the 15th. */
int irc_parse_line(char *line, struct irc_msg *m)
{
    m->prefix = "";
    m->nick = "";
    m->userhost = "";
    m->command = "";
    m->nparams = 0;
    m->tag_time = NULL;
    m->tag_msgid = NULL;
    m->nick_buf[0] = '\0';
    for (int i = 0; i < IRC_MAX_PARAMS; i++)
        m->params[i] = NULL;

    char *p = skip_spaces(line);
    if (*p == '@') {
        char *tags = p + 1;
        p = skip_spaces(cut_token(p));
        parse_tags(tags, m);
    }
    if (*p == ':') {
        char *prefix = p + 1;
        p = skip_spaces(cut_token(p));
        parse_prefix(prefix, m);
    }
    if (!*p)
        return -1;
    char *cmd = p;
    p = cut_token(p);
    for (char *q = cmd; *q; q++)
        if (*q >= 'a' && *q <= 'z')
            *q = (char)(*q - 'a' + 'A');
    m->command = cmd;
    while (m->nparams < IRC_MAX_PARAMS) {
        p = skip_spaces(p);
        if (!*p)
            break;
        if (*p == ':') {
            m->params[m->nparams++] = p + 1;
            break;
        }
        if (m->nparams == IRC_MAX_PARAMS - 1) {
            m->params[m->nparams++] = p;
            break;
        }
        m->params[m->nparams++] = p;
        p = cut_token(p);
    }
    return 0;
}

/* ---------------------------------------------------------------- line reader */

void irc_line_reader_init(struct irc_line_reader *r)
{
    memset(r, 0, sizeof *r);
}

void irc_line_reader_fini(struct irc_line_reader *r)
{
    free(r->part);
    memset(r, 0, sizeof *r);
}

static bool emit_line(const char *raw, size_t len, irc_line_fn fn, void *ud)
{
    if (len && raw[len - 1] == '\r')
        len--;
    char *line = irc_to_utf8(raw, len);
    bool go = true;
    if (*line)
        go = fn(ud, line);
    free(line);
    return go;
}

bool irc_line_reader_feed(struct irc_line_reader *r, const char *data, size_t len, irc_line_fn fn,
                          void *ud)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t seg = nl ? (size_t)(nl - data) : len;
        size_t used = nl ? seg + 1 : seg;
        if (r->discard) {
            if (nl)
                r->discard = false;
        } else if (r->len == 0 && nl && seg <= IRC_MAX_LINE) {
            /* The common case: a whole line in this read, no copy. */
            if (!emit_line(data, seg, fn, ud))
                return false;
        } else {
            size_t room = IRC_MAX_LINE - r->len;
            size_t take = seg < room ? seg : room;
            if (r->len + take > r->cap) {
                size_t cap = r->cap ? r->cap : 512;
                while (cap < r->len + take)
                    cap *= 2;
                if (cap > IRC_MAX_LINE)
                    cap = IRC_MAX_LINE;
                r->part = xrealloc(r->part, cap);
                r->cap = cap;
            }
            memcpy(r->part + r->len, data, take);
            r->len += take;
            bool full = r->len == IRC_MAX_LINE && (seg > take || !nl);
            if (nl || full) {
                /* A cut line is handed over at once; the rest of it is skipped. */
                if (full && !(nl && seg == take))
                    r->discard = !nl;
                size_t n = r->len;
                r->len = 0;
                bool go = emit_line(r->part, n, fn, ud);
                if (r->cap > 1024) {
                    free(r->part);
                    r->part = NULL;
                    r->cap = 0;
                }
                if (!go)
                    return false;
            }
        }
        data += used;
        len -= used;
    }
    return true;
}

/* RPL_ISUPPORT values escape with \xHH (https://modern.ircdocs.horse/#rplisupport-005). */
char *irc_isupport_unescape(const char *v)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "");
    for (size_t i = 0; v[i]; i++) {
        if (v[i] == '\\' && v[i + 1] == 'x' && is_hex(v[i + 2]) && is_hex(v[i + 3])) {
            char hex[3] = {v[i + 2], v[i + 3], 0};
            char ch = (char)strtol(hex, NULL, 16);
            if (ch && keep_ascii((unsigned char)ch))
                buf_putc(&b, ch);
            i += 3;
        } else {
            buf_putc(&b, v[i]);
        }
    }
    return buf_take(&b);
}
