/* libFuzzer target: the SMS gateway's parsers of untrusted input (transports/sms/phone.c) — E.164
 * normalisation of typed numbers, GSM 03.38 detection and part counting (3GPP TS 23.038 §6.2.1),
 * splitting of long texts, application/x-www-form-urlencoded parsing of webhook bodies and
 * queries, URL escaping (RFC 3986 §2.3) and the Twilio signature over the parsed parameters.
 * Properties checked: a normalised number is '+' and 7..15 digits not starting with 0 (ITU-T
 * E.164 §6.1) and normalising it again gives itself; the split pieces put together give the text
 * back; a form with a NUL is refused, otherwise at most max pairs come back; an escaped string
 * has only unreserved characters and %XX; a signature is base64 of a SHA-1 HMAC (28 bytes). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"
#include "sms.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_phone(const char *in, const char *country)
{
    char out[PHONE_MAX];
    memset(out, 'x', sizeof out);
    if (phone_normalize(in, country, out) != 0) {
        if (out[0] != '\0')
            abort();
        return;
    }
    size_t n = strlen(out);
    if (n < 8 || n > 16 || out[0] != '+' || out[1] == '0' || strspn(out + 1, "0123456789") != n - 1)
        abort();
    char again[PHONE_MAX];
    if (phone_normalize(out, country, again) != 0 || strcmp(out, again) != 0)
        abort();
}

static void check_text(const char *s, size_t max_chars)
{
    size_t len = strlen(s);
    bool gsm = sms_is_gsm7(s);
    if (gsm && !utf8_valid(s, len))
        abort();
    unsigned parts = sms_parts(s);
    if ((len == 0) != (parts == 0))
        abort();
    /* Every code point is at least one septet / UTF-16 unit: never more parts than bytes. */
    if (parts > len)
        abort();
    char **v = NULL;
    size_t n = sms_split(s, max_chars, &v);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        if (l == 0 || l > 4 * (max_chars ? max_chars : 1) || off + l > len ||
            memcmp(s + off, v[i], l) != 0)
            abort();
        off += l;
    }
    if (off != len || (len == 0) != (n == 0))
        abort();
    sms_strv_free(v, n);
}

static void check_escape(const char *s)
{
    char *e = sms_url_escape(s);
    for (const char *p = e; *p; p++) {
        if (*p == '%') {
            if (!strchr("0123456789ABCDEF", p[1]) || !p[1] || !strchr("0123456789ABCDEF", p[2]) ||
                !p[2])
                abort();
            p += 2;
        } else if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~",
                           *p)) {
            abort();
        }
    }
    /* The escape round-trips through the form decoder. */
    struct gw_kv *kv = NULL;
    size_t n = 0;
    char *q = xasprintf("k=%s", e);
    if (sms_form_parse(q, strlen(q), 1, &kv, &n) != 0 || n != 1 || strcmp(kv[0].value, s) != 0)
        abort();
    gw_kv_free(kv, n);
    free(q);
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const countries[] = {"1", "44", "49", "353", "7", "999", "0", "", "12a"};
    if (size == 0)
        return 0;
    const char *country = countries[data[0] % (sizeof countries / sizeof countries[0])];
    size_t max_chars = data[0] / 8; /* 0..31; 0 is taken as 1 */
    size_t max_pairs = (size_t)(data[0] & 7) * 4 + 1;
    data++;
    size--;

    /* The raw bytes as a body (may hold NULs), and as a C string. */
    char *s = xstrndup((const char *)data, size);
    bool has_nul = memchr(data, '\0', size) != NULL;

    check_phone(s, country);
    check_text(s, max_chars);

    struct gw_kv *kv = NULL;
    size_t n = 0;
    int r = sms_form_parse((const char *)data, size, max_pairs, &kv, &n);
    if (r == 0) {
        if (has_nul || n > max_pairs || (n && !kv))
            abort();
        for (size_t i = 0; i < n; i++) {
            /* What the webhook handler does with the fields. */
            check_phone(kv[i].value, country);
            check_text(kv[i].value, max_chars);
            if (!sms_secure_eq(kv[i].key, kv[i].key))
                abort();
        }
        char *sig = sms_twilio_signature(s, "https://gw.example/sms?x=1", kv, n);
        if (!sig || strlen(sig) != 28)
            abort();
        char *sig2 = sms_twilio_signature(s, "https://gw.example/sms?x=1", kv, n);
        if (!sms_secure_eq(sig, sig2))
            abort();
        free(sig);
        free(sig2);
        gw_kv_free(kv, n);
    } else if (r != -1 || kv || n) {
        abort();
    }
    if (!sms_secure_eq(s, s) || sms_secure_eq(s, NULL))
        abort();
    check_escape(s);
    free(s);
    return 0;
}
