/* proto.c — the gateway ⇄ backend line protocol (see proto.h). */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"

static void grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    *buf = xrealloc(*buf, c);
    *cap = c;
}

static void put_escaped(char **buf, size_t *len, size_t *cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    grow(buf, cap, *len + n * 3 + 3);
    char *p = *buf + *len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%' || c == '\t' || c == '\n' || c == '\r') {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    *len = (size_t)(p - *buf);
    (*buf)[*len] = '\0';
}

void pproto_add(char **buf, size_t *len, size_t *cap, const char *s)
{
    grow(buf, cap, *len + 2);
    if (*len)
        (*buf)[(*len)++] = '\t';
    (*buf)[*len] = '\0';
    put_escaped(buf, len, cap, s ? s : "");
}

char *pproto_line(const char *const *fields, size_t n, size_t *out_len)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    grow(&buf, &cap, 2);
    for (size_t i = 0; i < n; i++) {
        if (i) {
            grow(&buf, &cap, len + 2);
            buf[len++] = '\t';
        }
        buf[len] = '\0';
        put_escaped(&buf, &len, &cap, fields[i] ? fields[i] : "");
    }
    grow(&buf, &cap, len + 2);
    buf[len++] = '\n';
    buf[len] = '\0';
    if (out_len)
        *out_len = len;
    return buf;
}

char *pproto_record(const char *const *fields, size_t n)
{
    size_t len;
    char *line = pproto_line(fields, n, &len);
    line[len - 1] = '\0';
    return line;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '%' && r[1] && r[2]) {
            int a = hexval(r[1]), b = hexval(r[2]);
            if (a >= 0 && b >= 0) {
                if (a || b) /* %00 is dropped: fields are C strings */
                    *w++ = (char)(a * 16 + b);
                r += 2;
                continue;
            }
        }
        *w++ = *r;
    }
    *w = '\0';
}

size_t pproto_split(char *line, char **fields, size_t max)
{
    size_t n = 0;
    if (max == 0)
        return 0;
    char *p = line;
    for (;;) {
        char *tab = n + 1 < max ? strchr(p, '\t') : NULL;
        if (tab)
            *tab = '\0';
        fields[n++] = p;
        if (!tab)
            break;
        p = tab + 1;
    }
    for (size_t i = 0; i < n; i++)
        unescape(fields[i]);
    return n;
}

size_t pproto_next_line(const char *buf, size_t len, size_t *next)
{
    const char *lf = memchr(buf, '\n', len);
    if (!lf)
        return (size_t)-1;
    *next = (size_t)(lf - buf) + 1;
    return (size_t)(lf - buf);
}
