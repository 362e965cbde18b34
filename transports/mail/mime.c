/* mime.c — outgoing mail built and incoming mail parsed with GMime 3.0 (RFC 5322 messages,
 * RFC 2045–2047 MIME and header encoding), plus HTML → text and the text cleaning XML needs. */
#include "mail.h"

#include <ctype.h>
#include <gmime/gmime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "isthmus/util.h"

#define MIME_MAX_REFS 20 /* message ids kept in References (RFC 5322 §3.6.4 allows trimming) */
#define MIME_MAX_ATTACH_LIST 2000 /* bytes of the attachment list */

void mime_init(void)
{
    g_mime_init();
}

void mime_fini(void)
{
    g_mime_shutdown();
}

/* ---- text cleaning ---- */

static void put_utf8(struct buf *b, uint32_t cp)
{
    char c[4];
    if (cp < 0x80) {
        buf_putc(b, (char)cp);
    } else if (cp < 0x800) {
        c[0] = (char)(0xc0 | (cp >> 6));
        c[1] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, c, 2);
    } else if (cp < 0x10000) {
        c[0] = (char)(0xe0 | (cp >> 12));
        c[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        c[2] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, c, 3);
    } else {
        c[0] = (char)(0xf0 | (cp >> 18));
        c[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        c[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        c[3] = (char)(0x80 | (cp & 0x3f));
        buf_append(b, c, 4);
    }
}

/* Decodes one UTF-8 sequence at s (n bytes left); returns its length, or 0 when invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2, c = s[0] & 0x1f, min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3, c = s[0] & 0x0f, min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4, c = s[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

char *mime_clean_text(const char *s, size_t len)
{
    struct buf b;
    buf_init(&b);
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = utf8_decode(p + i, len - i, &cp);
        if (l == 0) {
            put_utf8(&b, 0xfffd);
            i++;
            continue;
        }
        i += l;
        /* XML 1.0 §2.2 Char: no C0 controls but tab/LF (CR dropped: CRLF → LF), no U+FFFE/F. */
        if (cp == '\r' || cp == 0x7f || (cp < 0x20 && cp != '\t' && cp != '\n'))
            continue;
        if (cp == 0xfffe || cp == 0xffff)
            cp = 0xfffd;
        put_utf8(&b, cp);
    }
    return buf_take(&b);
}

/* One line: controls (CR, LF, tab included) become spaces. */
static char *one_line(const char *s)
{
    char *t = mime_clean_text(s, strlen(s));
    for (char *p = t; *p; p++)
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    return t;
}

bool mime_addr_valid(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n < 3 || n > 254)
        return false;
    const char *at = strrchr(s, '@');
    if (!at || at == s || !at[1] || strchr(s, '@') != at)
        return false;
    if ((size_t)(at - s) > 64)
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c == 0x7f || strchr("<>()[]\\,;:\"", c))
            return false;
    }
    const char *d = at + 1;
    if (d[0] == '.' || d[strlen(d) - 1] == '.' || strstr(d, ".."))
        return false;
    const char *dots = strstr(s, "..");
    if (s[0] == '.' || at[-1] == '.' || (dots && dots < at))
        return false;
    return true;
}

/* ---- HTML → text ---- */

struct entity {
    const char *name;
    uint32_t cp;
};
static const struct entity entities[] = {
    {"amp", '&'},      {"lt", '<'},       {"gt", '>'},       {"quot", '"'},     {"apos", '\''},
    {"nbsp", ' '},     {"copy", 0xa9},    {"reg", 0xae},     {"trade", 0x2122}, {"hellip", 0x2026},
    {"mdash", 0x2014}, {"ndash", 0x2013}, {"laquo", 0xab},   {"raquo", 0xbb},   {"euro", 0x20ac},
    {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201c}, {"rdquo", 0x201d}, {"bull", 0x2022},
    {"middot", 0xb7},  {"times", 0xd7},   {"shy", 0},        {"zwnj", 0},       {"auml", 0xe4},
    {"ouml", 0xf6},    {"uuml", 0xfc},    {"Auml", 0xc4},    {"Ouml", 0xd6},    {"Uuml", 0xdc},
    {"szlig", 0xdf},   {"eacute", 0xe9},  {"egrave", 0xe8},  {"agrave", 0xe0},  {"ccedil", 0xe7},
};

/* Decodes the entity at s[0] == '&'; appends it and returns the bytes consumed, or 0 when it is no
 * entity (the '&' is then literal). */
static size_t decode_entity(const char *s, size_t n, struct buf *out)
{
    size_t i = 1;
    while (i < n && i < 12 && s[i] != ';' && (isalnum((unsigned char)s[i]) || s[i] == '#'))
        i++;
    if (i >= n || s[i] != ';' || i == 1)
        return 0;
    const char *name = s + 1;
    size_t len = i - 1;
    if (name[0] == '#') {
        bool hex = len > 1 && (name[1] == 'x' || name[1] == 'X');
        size_t j = hex ? 2 : 1;
        if (j >= len)
            return 0;
        uint32_t cp = 0;
        for (; j < len; j++) {
            int c = (unsigned char)name[j], d;
            if (isdigit(c))
                d = c - '0';
            else if (hex && isxdigit(c))
                d = tolower(c) - 'a' + 10;
            else
                return 0;
            cp = cp * (hex ? 16 : 10) + (uint32_t)d;
            if (cp > 0x10ffff)
                cp = 0x110000; /* stays invalid, no overflow */
        }
        if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            cp = 0xfffd;
        if (cp == 0xa0)
            cp = ' ';
        put_utf8(out, cp);
        return i + 1;
    }
    for (size_t k = 0; k < sizeof entities / sizeof entities[0]; k++) {
        if (strlen(entities[k].name) == len && memcmp(entities[k].name, name, len) == 0) {
            if (entities[k].cp)
                put_utf8(out, entities[k].cp);
            return i + 1;
        }
    }
    return 0;
}

static bool tag_in(const char *tag, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(tag, *list) == 0)
            return true;
    return false;
}

/* Ensures the output ends in at least `n` line breaks (unless it is empty). */
static void html_breaks(struct buf *out, int n)
{
    if (out->len == 0)
        return;
    while (out->len && out->data[out->len - 1] == ' ')
        out->data[--out->len] = '\0';
    int have = 0;
    for (size_t i = out->len; i > 0 && out->data[i - 1] == '\n' && have < n; i--)
        have++;
    for (; have < n; have++)
        buf_putc(out, '\n');
}

/* The value of attribute name in a tag's text (between '<' and '>'), malloc'd, or NULL. */
static char *tag_attr(const char *tag, size_t len, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < len; i++) {
        if ((i == 0 || isspace((unsigned char)tag[i - 1])) && strncasecmp(tag + i, name, nl) == 0) {
            size_t j = i + nl;
            while (j < len && isspace((unsigned char)tag[j]))
                j++;
            if (j >= len || tag[j] != '=')
                continue;
            j++;
            while (j < len && isspace((unsigned char)tag[j]))
                j++;
            if (j >= len)
                return NULL;
            char q = tag[j];
            size_t start, end;
            if (q == '"' || q == '\'') {
                start = ++j;
                while (j < len && tag[j] != q)
                    j++;
            } else {
                start = j;
                while (j < len && !isspace((unsigned char)tag[j]) && tag[j] != '>')
                    j++;
            }
            end = j;
            struct buf b;
            buf_init(&b);
            for (size_t k = start; k < end;) {
                size_t used = tag[k] == '&' ? decode_entity(tag + k, end - k, &b) : 0;
                if (used) {
                    k += used;
                } else {
                    buf_putc(&b, tag[k]);
                    k++;
                }
            }
            return buf_take(&b);
        }
    }
    return NULL;
}

char *mime_html_to_text(const char *html, size_t len)
{
    static const char *const para[] = {"p",  "div", "table", "ul", "ol",  "blockquote", "h1", "h2",
                                       "h3", "h4",  "h5",    "h6", "pre", "hr",         "dl", NULL};
    static const char *const line[] = {"tr",     "dt",     "dd",      "section", "article",
                                       "header", "footer", "address", NULL};
    struct buf out;
    buf_init(&out);
    int pre = 0;
    char *href = NULL;
    size_t link_start = 0;
    size_t i = 0;
    while (i < len) {
        char c = html[i];
        if (c == '<') {
            if (len - i >= 4 && memcmp(html + i, "<!--", 4) == 0) {
                const char *e = memmem(html + i + 4, len - i - 4, "-->", 3);
                i = e ? (size_t)(e - html) + 3 : len;
                continue;
            }
            /* The tag's extent, quotes respected. */
            size_t j = i + 1;
            char q = 0;
            while (j < len && (q || html[j] != '>')) {
                if (q && html[j] == q)
                    q = 0;
                else if (!q && (html[j] == '"' || html[j] == '\'') && j > i + 1 &&
                         (html[j - 1] == '=' || isspace((unsigned char)html[j - 1])))
                    q = html[j];
                j++;
            }
            const char *t = html + i + 1;
            size_t tl = j - i - 1;
            bool closing = tl && t[0] == '/';
            size_t k = closing ? 1 : 0;
            char name[16];
            size_t nl = 0;
            while (k < tl && nl < sizeof name - 1 && isalnum((unsigned char)t[k]))
                name[nl++] = (char)tolower((unsigned char)t[k++]);
            name[nl] = '\0';
            if (nl == 0 && !closing && (tl == 0 || !(t[0] == '!' || t[0] == '?'))) {
                buf_putc(&out, '<'); /* a lone '<' in text */
                i++;
                continue;
            }
            i = j < len ? j + 1 : len;
            if (!closing && (strcmp(name, "script") == 0 || strcmp(name, "style") == 0 ||
                             strcmp(name, "head") == 0)) {
                char end[16];
                int el = snprintf(end, sizeof end, "</%s", name);
                size_t m = i;
                while (m + (size_t)el <= len && strncasecmp(html + m, end, (size_t)el) != 0)
                    m++;
                if (m + (size_t)el > len) {
                    i = len;
                } else {
                    const char *gt = memchr(html + m, '>', len - m);
                    i = gt ? (size_t)(gt - html) + 1 : len;
                }
                continue;
            }
            if (strcmp(name, "br") == 0) {
                while (out.len && out.data[out.len - 1] == ' ')
                    out.data[--out.len] = '\0';
                buf_putc(&out, '\n');
            } else if (strcmp(name, "li") == 0 && !closing) {
                html_breaks(&out, 1);
                buf_puts(&out, "- ");
            } else if (tag_in(name, para)) {
                html_breaks(&out, 2);
                if (strcmp(name, "pre") == 0)
                    pre += closing ? (pre > 0 ? -1 : 0) : 1;
            } else if (tag_in(name, line) || strcmp(name, "li") == 0) {
                html_breaks(&out, 1);
            } else if ((strcmp(name, "td") == 0 || strcmp(name, "th") == 0) && closing) {
                buf_putc(&out, ' ');
            } else if (strcmp(name, "a") == 0) {
                if (!closing) {
                    free(href);
                    href = tag_attr(t, tl, "href");
                    link_start = out.len;
                } else if (href) {
                    size_t tlen = out.len - link_start;
                    const char *txt = out.data ? out.data + link_start : "";
                    bool same = strlen(href) == tlen && memcmp(href, txt, tlen) == 0;
                    bool mailto = strncasecmp(href, "mailto:", 7) == 0 &&
                                  strlen(href + 7) == tlen && memcmp(href + 7, txt, tlen) == 0;
                    if (!same && !mailto && href[0] && href[0] != '#') {
                        char *h1 = one_line(href);
                        buf_printf(&out, tlen ? " <%s>" : "<%s>", h1);
                        free(h1);
                    }
                    free(href);
                    href = NULL;
                }
            } else if (strcmp(name, "img") == 0 && !closing) {
                char *alt = tag_attr(t, tl, "alt");
                if (alt && *alt) {
                    char *a1 = one_line(alt);
                    buf_printf(&out, "[%s]", a1);
                    free(a1);
                }
                free(alt);
            }
            continue;
        }
        if (c == '&') {
            size_t used = decode_entity(html + i, len - i, &out);
            if (used) {
                i += used;
                continue;
            }
        }
        if (!pre && (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f')) {
            if (out.len && out.data[out.len - 1] != ' ' && out.data[out.len - 1] != '\n')
                buf_putc(&out, ' ');
            i++;
            continue;
        }
        buf_putc(&out, c);
        i++;
    }
    free(href);
    /* Trailing spaces on lines, at most one empty line in a row, no leading/trailing breaks. */
    struct buf fin;
    buf_init(&fin);
    int newlines = 0;
    for (size_t m = 0; m < out.len; m++) {
        char ch = out.data[m];
        if (ch == '\n') {
            while (fin.len && fin.data[fin.len - 1] == ' ')
                fin.len--;
            if (fin.data)
                fin.data[fin.len] = '\0';
            if (fin.len && newlines < 2)
                buf_putc(&fin, '\n');
            newlines++;
            continue;
        }
        newlines = 0;
        buf_putc(&fin, ch);
    }
    while (fin.len && (fin.data[fin.len - 1] == '\n' || fin.data[fin.len - 1] == ' '))
        fin.len--;
    if (fin.data)
        fin.data[fin.len] = '\0'; /* struct buf's invariant after shrinking len by hand */
    buf_fini(&out);
    char *raw = buf_take(&fin);
    char *clean = mime_clean_text(raw, strlen(raw));
    free(raw);
    return clean;
}

/* ---- building ---- */

static void ids_header(GMimeObject *obj, const char *name, const char *ids)
{
    if (!ids || !*ids)
        return;
    struct buf b;
    buf_init(&b);
    const char *p = ids;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, " ");
        if (n) {
            if (b.len)
                buf_putc(&b, ' ');
            buf_putc(&b, '<');
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)p[i] > 0x20 && p[i] != '<' && p[i] != '>' && p[i] != 0x7f)
                    buf_putc(&b, p[i]);
            buf_putc(&b, '>');
        }
        p += n;
    }
    if (b.len) {
        char *v = buf_take(&b);
        g_mime_object_set_header(obj, name, v, NULL);
        free(v);
    } else {
        buf_fini(&b);
    }
}

char *mime_build(const struct mime_out *m, size_t *len)
{
    if (!mime_addr_valid(m->from) || !mime_addr_valid(m->to))
        return NULL;
    GMimeMessage *msg = g_mime_message_new(TRUE);
    char *name = m->from_name ? one_line(m->from_name) : NULL;
    g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_FROM, name, m->from);
    free(name);
    g_mime_message_add_mailbox(msg, GMIME_ADDRESS_TYPE_TO, NULL, m->to);
    char *subject = one_line(m->subject ? m->subject : "");
    g_mime_message_set_subject(msg, subject, "utf-8"); /* RFC 2047 encoded when not ASCII */
    free(subject);
    GDateTime *dt = g_date_time_new_from_unix_utc(m->date);
    if (dt) {
        g_mime_message_set_date(msg, dt);
        g_date_time_unref(dt);
    }
    if (m->message_id)
        g_mime_message_set_message_id(msg, m->message_id);
    ids_header(GMIME_OBJECT(msg), "In-Reply-To", m->in_reply_to);
    ids_header(GMIME_OBJECT(msg), "References", m->references);
    g_mime_object_set_header(GMIME_OBJECT(msg), "Auto-Submitted", "no", NULL);

    GMimeTextPart *part = g_mime_text_part_new_with_subtype("plain");
    char *body = mime_clean_text(m->body ? m->body : "", m->body ? strlen(m->body) : 0);
    /* RFC 2045 §6.8 / RFC 2046 §4.1.1: text is encoded in its canonical CRLF form (base64 too). */
    struct buf crlf;
    buf_init(&crlf);
    for (const char *p = body; *p; p++) {
        if (*p == '\n')
            buf_putc(&crlf, '\r');
        buf_putc(&crlf, *p);
    }
    free(body);
    body = buf_take(&crlf);
    g_mime_text_part_set_text(part, body);
    g_mime_text_part_set_charset(part, "utf-8");
    free(body);
    /* RFC 2045 §6: 7bit when it is short-lined ASCII, else quoted-printable or base64. */
    g_mime_part_set_content_encoding(
        GMIME_PART(part),
        g_mime_part_get_best_content_encoding(GMIME_PART(part), GMIME_ENCODING_CONSTRAINT_7BIT));
    g_mime_message_set_mime_part(msg, GMIME_OBJECT(part));
    g_object_unref(part);

    GMimeFormatOptions *fmt = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(fmt, GMIME_NEWLINE_FORMAT_DOS);
    char *s = g_mime_object_to_string(GMIME_OBJECT(msg), fmt);
    g_mime_format_options_free(fmt);
    g_object_unref(msg);
    if (!s)
        return NULL;
    /* RFC 5322 §2.1: CRLF everywhere (a bare LF that slipped through becomes CRLF). */
    struct buf b;
    buf_init(&b);
    for (const char *p = s; *p; p++) {
        if (*p == '\n' && (p == s || p[-1] != '\r'))
            buf_putc(&b, '\r');
        buf_putc(&b, *p);
    }
    g_free(s);
    if (len)
        *len = b.len;
    return buf_take(&b);
}

/* ---- parsing ---- */

struct walk {
    char *plain, *html;
    struct buf attach;
    unsigned n_attach;
};

static void size_text(char out[32], size_t n)
{
    if (n < 1024)
        snprintf(out, 32, "%zu bytes", n);
    else if (n < 1024 * 1024)
        snprintf(out, 32, "%zu KB", (n + 512) / 1024);
    else
        snprintf(out, 32, "%.1f MB", (double)n / (1024.0 * 1024.0));
}

static void add_attachment(struct walk *w, const char *name, size_t size)
{
    if (w->attach.len > MIME_MAX_ATTACH_LIST) {
        w->n_attach++;
        return;
    }
    char *n1 = one_line(name);
    char sz[32];
    size_text(sz, size);
    buf_printf(&w->attach, "%s%s (%s)", w->n_attach ? ", " : "", n1, sz);
    free(n1);
    w->n_attach++;
}

static void walk_part(GMimeObject *parent, GMimeObject *part, gpointer ud)
{
    (void)parent;
    struct walk *w = ud;
    if (GMIME_IS_MESSAGE_PART(part)) {
        add_attachment(w, "forwarded message", 0);
        return;
    }
    if (!GMIME_IS_PART(part))
        return; /* multiparts: their children come on their own */
    GMimePart *p = GMIME_PART(part);
    GMimeContentType *ct = g_mime_object_get_content_type(part);
    bool attachment = g_mime_part_is_attachment(p);
    if (!attachment && GMIME_IS_TEXT_PART(part)) {
        bool plain = g_mime_content_type_is_type(ct, "text", "plain");
        bool html = g_mime_content_type_is_type(ct, "text", "html");
        if ((plain && !w->plain) || (html && !w->html)) {
            char *t = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
            if (t) {
                if (plain)
                    w->plain = mime_clean_text(t, strlen(t));
                else
                    w->html = mime_html_to_text(t, strlen(t));
                g_free(t);
            }
            return;
        }
        if (plain || html)
            return; /* a second body alternative */
    }
    const char *fn = g_mime_part_get_filename(p);
    size_t size = 0;
    GMimeDataWrapper *content = g_mime_part_get_content(p);
    if (content) {
        GMimeStream *null = g_mime_stream_null_new();
        ssize_t n = g_mime_data_wrapper_write_to_stream(content, null);
        if (n > 0)
            size = (size_t)n;
        g_object_unref(null);
    }
    if (fn && *fn) {
        add_attachment(w, fn, size);
    } else {
        char *type = g_mime_content_type_get_mime_type(ct);
        char *label = xasprintf("unnamed %s", type ? type : "part");
        add_attachment(w, label, size);
        free(label);
        g_free(type);
    }
}

static void refs_add(struct buf *b, unsigned *count, const char *id)
{
    if (!id || !*id || *count >= MIME_MAX_REFS * 4)
        return;
    char *clean = one_line(id);
    for (char *p = clean; *p; p++)
        if (*p == ' ' || *p == '<' || *p == '>')
            *p = '_';
    /* Skip duplicates. */
    char *hay = b->len ? xstrndup(b->data, b->len) : NULL;
    bool dup = false;
    if (hay) {
        for (char *tok = strtok(hay, " "); tok; tok = strtok(NULL, " "))
            if (strcmp(tok, clean) == 0)
                dup = true;
        free(hay);
    }
    if (!dup) {
        if (b->len)
            buf_putc(b, ' ');
        buf_puts(b, clean);
        (*count)++;
    }
    free(clean);
}

/* Keeps the last MIME_MAX_REFS ids of a space-separated list (plus the first: the root). */
static char *refs_trim(char *s)
{
    size_t n = 0;
    for (char *p = s; *p; p++)
        if (*p == ' ')
            n++;
    n++;
    if (n <= MIME_MAX_REFS)
        return s;
    char *first_end = strchr(s, ' ');
    size_t skip = n - MIME_MAX_REFS + 1, seen = 0;
    char *p = s;
    while (seen < skip && (p = strchr(p, ' ')) != NULL) {
        p++;
        seen++;
    }
    char *r = xasprintf("%.*s %s", (int)(first_end - s), s, p ? p : "");
    free(s);
    return r;
}

int mime_parse(const char *raw, size_t len, struct mime_in *out)
{
    memset(out, 0, sizeof *out);
    GMimeStream *stream = g_mime_stream_mem_new_with_buffer(raw, len);
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    g_object_unref(stream);
    GMimeMessage *msg = g_mime_parser_construct_message(parser, NULL);
    g_object_unref(parser);
    if (!msg)
        return -1;

    InternetAddressList *from = g_mime_message_get_from(msg);
    for (int i = 0; from && i < internet_address_list_length(from); i++) {
        InternetAddress *ia = internet_address_list_get_address(from, i);
        if (!INTERNET_ADDRESS_IS_MAILBOX(ia))
            continue;
        const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
        if (!addr || !*addr)
            continue;
        char *a = one_line(addr);
        char *at = strrchr(a, '@');
        for (char *p = at ? at : a + strlen(a); *p; p++)
            *p = (char)tolower((unsigned char)*p);
        out->from = a;
        const char *name = internet_address_get_name(ia);
        if (name && *name)
            out->from_name = one_line(name);
        break;
    }
    const char *subject = g_mime_message_get_subject(msg);
    if (subject)
        out->subject = one_line(subject);
    const char *mid = g_mime_message_get_message_id(msg);
    if (mid && *mid) { /* one token, like the References ids (refs_add): it is reused in them */
        out->message_id = one_line(mid);
        for (char *p = out->message_id; *p; p++)
            if (*p == ' ' || *p == '<' || *p == '>')
                *p = '_';
    }
    GDateTime *dt = g_mime_message_get_date(msg);
    if (dt)
        out->date = g_date_time_to_unix(dt);

    /* Threading (RFC 5322 §3.6.4): References, then In-Reply-To. */
    struct buf refs;
    buf_init(&refs);
    unsigned count = 0;
    const char *hdr = g_mime_object_get_header(GMIME_OBJECT(msg), "References");
    if (hdr) {
        GMimeReferences *r = g_mime_references_parse(NULL, hdr);
        if (r) {
            for (int i = 0; i < g_mime_references_length(r); i++)
                refs_add(&refs, &count, g_mime_references_get_message_id(r, i));
            g_mime_references_free(r);
        }
    }
    hdr = g_mime_object_get_header(GMIME_OBJECT(msg), "In-Reply-To");
    if (hdr) {
        GMimeReferences *r = g_mime_references_parse(NULL, hdr);
        if (r) {
            if (g_mime_references_length(r) > 0)
                refs_add(&refs, &count, g_mime_references_get_message_id(r, 0));
            g_mime_references_free(r);
        }
    }
    if (refs.len) {
        out->references = refs_trim(buf_take(&refs));
        out->thread_root = xstrndup(out->references, strcspn(out->references, " "));
    } else {
        buf_fini(&refs);
        out->thread_root = xstrdup(out->message_id);
    }

    struct walk w = {0};
    buf_init(&w.attach);
    g_mime_message_foreach(msg, walk_part, &w);
    if (w.plain) { /* trailing blank lines and spaces say nothing in a chat */
        size_t n = strlen(w.plain);
        while (n && (w.plain[n - 1] == '\n' || w.plain[n - 1] == ' ' || w.plain[n - 1] == '\t'))
            w.plain[--n] = '\0';
    }
    if (w.plain && *w.plain) {
        out->text = w.plain;
        free(w.html);
    } else if (w.html) {
        out->text = w.html;
        free(w.plain);
    } else {
        out->text = w.plain ? w.plain : xstrdup("");
    }
    if (w.n_attach) {
        if (w.attach.len > MIME_MAX_ATTACH_LIST)
            buf_printf(&w.attach, " and more (%u in all)", w.n_attach);
        out->attachments = buf_take(&w.attach);
    } else {
        buf_fini(&w.attach);
    }
    g_object_unref(msg);
    return 0;
}

void mime_in_fini(struct mime_in *m)
{
    free(m->from);
    free(m->from_name);
    free(m->subject);
    free(m->text);
    free(m->message_id);
    free(m->thread_root);
    free(m->references);
    free(m->attachments);
    memset(m, 0, sizeof *m);
}
