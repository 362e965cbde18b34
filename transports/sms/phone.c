/* phone.c — phone numbers (ITU-T E.164), the GSM 03.38 alphabet and SMS part counting
 * (3GPP TS 23.038 §6.2.1, TS 23.040 §9.2.3.24.1 concatenation), form parsing and the Twilio
 * webhook signature. Pure functions, unit-tested in tests/unit/test_sms.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "isthmus/util.h"

#include "sms.h"

int phone_normalize(const char *in, const char *country, char out[PHONE_MAX])
{
    out[0] = '\0';
    if (!in || !country)
        return -1;
    size_t cc_len = strlen(country);
    if (cc_len < 1 || cc_len > 3 || strspn(country, "0123456789") != cc_len || country[0] == '0')
        return -1;
    char digits[40];
    size_t n = 0;
    bool plus = false, seen = false;
    for (const char *p = in; *p; p++) {
        char c = *p;
        if (c >= '0' && c <= '9') {
            if (n + 1 >= sizeof digits)
                return -1;
            digits[n++] = c;
            seen = true;
        } else if (c == '+') {
            if (seen || plus)
                return -1; /* only as the very first character */
            plus = true;
        } else if (strchr(" \t-.()/", c)) {
            if (c != ' ' && c != '\t' && !seen && plus && c != '(')
                return -1;
        } else {
            return -1;
        }
    }
    digits[n] = '\0';
    if (n == 0)
        return -1;
    char num[64];
    if (plus)
        snprintf(num, sizeof num, "%s", digits);
    else if (n >= 2 && digits[0] == '0' && digits[1] == '0')
        snprintf(num, sizeof num, "%s", digits + 2);
    else if (digits[0] == '0')
        snprintf(num, sizeof num, "%s%s", country, digits + 1);
    else
        snprintf(num, sizeof num, "%s%s", country, digits);
    size_t len = strlen(num);
    /* E.164 §6.1: at most 15 digits; shorter than 7 is no subscriber number anywhere. */
    if (len < 7 || len > 15 || num[0] == '0')
        return -1;
    out[0] = '+';
    memcpy(out + 1, num, len + 1);
    return 0;
}

/* Decodes one UTF-8 sequence of (already validated) text; returns its length. */
static size_t utf8_next(const char *s, uint32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    if ((u[0] & 0xE0) == 0xC0 && u[1]) {
        *cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if ((u[0] & 0xF0) == 0xE0 && u[1] && u[2]) {
        *cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    if ((u[0] & 0xF8) == 0xF0 && u[1] && u[2] && u[3]) {
        *cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
              ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
        return 4;
    }
    *cp = 0xFFFD;
    return 1;
}

/* Septets one code point takes in GSM-7: 1 (default alphabet), 2 (escape + extension table),
 * 0 (not representable). TS 23.038 §6.2.1 and §6.2.1.1. */
static unsigned gsm7_septets(uint32_t cp)
{
    static const uint32_t basic[] = {
        0xA3, 0xA5, 0xE8, 0xE9, 0xF9, 0xEC, 0xF2, 0xC7, 0xD8, 0xF8, 0xC5, 0xE5, 0x394,
        0x3A6, 0x393, 0x39B, 0x3A9, 0x3A0, 0x3A8, 0x3A3, 0x398, 0x39E, 0xC6, 0xE6, 0xDF,
        0xC9, 0xA4, 0xA1, 0xC4, 0xD6, 0xD1, 0xDC, 0xA7, 0xBF, 0xE4, 0xF6, 0xF1, 0xFC, 0xE0,
    };
    if (cp == '\n' || cp == '\r')
        return 1;
    if (cp == '\f' || cp == 0x20AC)
        return 2;
    if (cp >= 0x20 && cp < 0x7F) {
        if (cp == '`')
            return 0;
        if (strchr("^{}\\[~]|", (int)cp))
            return 2;
        return 1;
    }
    for (size_t i = 0; i < ARRAY_LEN(basic); i++)
        if (basic[i] == cp)
            return 1;
    return 0;
}

bool sms_is_gsm7(const char *text)
{
    if (!utf8_valid(text, strlen(text)))
        return false;
    for (const char *p = text; *p;) {
        uint32_t cp;
        p += utf8_next(p, &cp);
        if (!gsm7_septets(cp))
            return false;
    }
    return true;
}

unsigned sms_parts(const char *text)
{
    if (!*text)
        return 0;
    bool gsm = sms_is_gsm7(text);
    size_t units = 0;
    for (const char *p = text; *p;) {
        uint32_t cp;
        p += utf8_next(p, &cp);
        units += gsm ? gsm7_septets(cp) : (cp > 0xFFFF ? 2 : 1);
    }
    size_t single = gsm ? 160 : 70, multi = gsm ? 153 : 67;
    if (units <= single)
        return 1;
    size_t parts = (units + multi - 1) / multi;
    return parts > 100000 ? 100000 : (unsigned)parts;
}

size_t sms_split(const char *text, size_t max_chars, char ***out)
{
    char **v = NULL;
    size_t n = 0;
    if (max_chars == 0)
        max_chars = 1;
    const char *p = text;
    while (*p) {
        const char *start = p;
        size_t chars = 0;
        while (*p && chars < max_chars) {
            uint32_t cp;
            p += utf8_next(p, &cp);
            chars++;
        }
        v = xrealloc(v, (n + 1) * sizeof *v);
        v[n++] = xstrndup(start, (size_t)(p - start));
    }
    *out = v;
    return n;
}

void sms_strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
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

static char *form_decode(const char *s, size_t len)
{
    char *o = xmalloc(len + 1);
    size_t j = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '+') {
            o[j++] = ' ';
        } else if (s[i] == '%') {
            int hi = i + 1 < len ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(o);
                return NULL;
            }
            o[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (s[i] == '\0') {
            free(o);
            return NULL;
        } else {
            o[j++] = s[i];
        }
    }
    o[j] = '\0';
    return o;
}

int sms_form_parse(const char *s, size_t len, size_t max, struct gw_kv **out, size_t *n)
{
    struct gw_kv *kv = NULL;
    size_t count = 0;
    size_t i = 0;
    *out = NULL;
    *n = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && s[end] != '&')
            end++;
        if (end > i) {
            const char *eq = memchr(s + i, '=', end - i);
            size_t klen = eq ? (size_t)(eq - (s + i)) : end - i;
            if (count >= max)
                goto bad;
            char *k = form_decode(s + i, klen);
            char *v = eq ? form_decode(eq + 1, (size_t)(s + end - eq - 1)) : xstrdup("");
            if (!k || !v) {
                free(k);
                free(v);
                goto bad;
            }
            kv = xrealloc(kv, (count + 1) * sizeof *kv);
            kv[count].key = k;
            kv[count].value = v;
            count++;
        }
        i = end + 1;
    }
    *out = kv;
    *n = count;
    return 0;
bad:
    gw_kv_free(kv, count);
    return -1;
}

char *sms_url_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, strlen(s) + 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            buf_putc(&b, (char)*p);
        } else {
            buf_putc(&b, '%');
            buf_putc(&b, hex[*p >> 4]);
            buf_putc(&b, hex[*p & 15]);
        }
    }
    return buf_take(&b);
}

static int kv_cmp(const void *a, const void *b)
{
    const struct gw_kv *x = *(const struct gw_kv *const *)a, *y = *(const struct gw_kv *const *)b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->value, y->value);
}

char *sms_twilio_signature(const char *token, const char *url, const struct gw_kv *params,
                           size_t n)
{
    const struct gw_kv **sorted = xcalloc(n ? n : 1, sizeof *sorted);
    for (size_t i = 0; i < n; i++)
        sorted[i] = &params[i];
    qsort(sorted, n, sizeof *sorted, kv_cmp);
    struct buf b;
    buf_init(&b);
    buf_puts(&b, url);
    for (size_t i = 0; i < n; i++) {
        buf_puts(&b, sorted[i]->key);
        buf_puts(&b, sorted[i]->value);
    }
    free(sorted);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    unsigned char *r = HMAC(EVP_sha1(), token, (int)strlen(token), (const unsigned char *)b.data,
                            b.len, md, &md_len);
    buf_fini(&b);
    if (!r)
        return NULL;
    return base64_encode(md, md_len);
}

bool sms_secure_eq(const char *a, const char *b)
{
    if (!a || !b)
        return false;
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}
