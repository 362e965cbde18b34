/* test_sms.c — the SMS gateway's pure parts (transports/sms/phone.c): E.164 normalisation,
 * GSM-7 detection and part counting, splitting, form parsing, URL escaping and the Twilio
 * webhook signature. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"
#include "sms.h"
#include "test.h"

static void check_norm(const char *in, const char *cc, const char *want, int line)
{
    char out[PHONE_MAX];
    int rc = phone_normalize(in, cc, out);
    if (want ? (rc != 0 || strcmp(out, want) != 0) : rc == 0) {
        fprintf(stderr, "  FAIL line %d: \"%s\" (+%s) → rc %d \"%s\", want %s\n", line, in, cc,
                rc, out, want ? want : "rejection");
        test_failed_checks++;
    }
}
#define NORM(in, cc, want) check_norm(in, cc, want, __LINE__)

static void test_normalize(void)
{
    NORM("+15550002", "1", "+15550002");
    NORM("+1 (555) 000-2", "1", "+15550002");
    NORM("+44 20 7946 0958", "1", "+442079460958");
    NORM("0044 20 7946 0958", "1", "+442079460958");
    NORM("020 7946 0958", "44", "+442079460958");  /* national 0 dropped */
    NORM("(555) 123-4567", "1", "+15551234567");    /* bare national number */
    NORM("555.123.4567", "1", "+15551234567");
    NORM("0151 2345 6789", "49", "+4915123456789");
    NORM("+123456789012345", "1", "+123456789012345"); /* 15 digits: the E.164 maximum */
    NORM("+1234567890123456", "1", NULL);           /* 16 */
    NORM("+12345", "1", NULL);                      /* too short */
    NORM("123", "1", NULL);
    NORM("", "1", NULL);
    NORM("+", "1", NULL);
    NORM("abc", "1", NULL);
    NORM("+1555000x2", "1", NULL);
    NORM("1+5550002", "1", NULL);                   /* + only first */
    NORM("++15550002", "1", NULL);
    NORM("+05550002", "1", NULL);                   /* no country code starts with 0 */
    NORM("000", "1", NULL);
    NORM("+1555\n0002", "1", NULL);
    NORM("+15550002", "", NULL);                    /* bad default country */
    NORM("5550002", "1234", NULL);
    NORM("5550002", "x", NULL);
    NORM("5550002", "0", NULL);
    NORM("12345678901234567890123456789012345678901234567890", "1", NULL);
}

static void test_gsm7(void)
{
    CHECK(sms_is_gsm7("hello world"));
    CHECK(sms_is_gsm7("Grüße, Ça va? £5 €3 [x] {y}"));
    CHECK(sms_is_gsm7("ΔΦΓΛΩΠΨΣΘΞ"));
    CHECK(!sms_is_gsm7("`backtick`"));
    CHECK(!sms_is_gsm7("Привет"));
    CHECK(!sms_is_gsm7("emoji 😀"));
    CHECK(!sms_is_gsm7("\xff\xfe"));
    CHECK(sms_parts("") == 0);
    char t[400];
    memset(t, 'a', 160);
    t[160] = '\0';
    CHECK(sms_parts(t) == 1);
    t[160] = 'a';
    t[161] = '\0';
    CHECK(sms_parts(t) == 2);            /* 161 septets: 153 + 8 */
    memset(t, 'a', 306);
    t[306] = '\0';
    CHECK(sms_parts(t) == 2);
    t[306] = 'a';
    t[307] = '\0';
    CHECK(sms_parts(t) == 3);
    memset(t, '[', 80);                  /* extension table: 2 septets each */
    t[80] = '\0';
    CHECK(sms_parts(t) == 1);
    t[80] = '[';
    t[81] = '\0';
    CHECK(sms_parts(t) == 2);
    struct buf b;
    buf_init(&b);
    for (int i = 0; i < 70; i++)
        buf_puts(&b, "Ж");
    CHECK(sms_parts(b.data) == 1);       /* UCS-2: 70 */
    buf_puts(&b, "Ж");
    CHECK(sms_parts(b.data) == 2);       /* 71: 67 + 4 */
    buf_reset(&b);
    for (int i = 0; i < 35; i++)
        buf_puts(&b, "😀");              /* surrogate pairs: 2 units each */
    CHECK(sms_parts(b.data) == 1);
    buf_puts(&b, "😀");
    CHECK(sms_parts(b.data) == 2);
    buf_fini(&b);
}

static void test_split(void)
{
    char **v;
    size_t n = sms_split("abcdefg", 3, &v);
    CHECK(n == 3);
    if (n == 3) {
        CHECK_STR(v[0], "abc");
        CHECK_STR(v[1], "def");
        CHECK_STR(v[2], "g");
    }
    sms_strv_free(v, n);
    n = sms_split("ЖЖЖ😀", 2, &v); /* whole UTF-8 sequences */
    CHECK(n == 2);
    if (n == 2) {
        CHECK_STR(v[0], "ЖЖ");
        CHECK_STR(v[1], "Ж😀");
    }
    sms_strv_free(v, n);
    n = sms_split("", 5, &v);
    CHECK(n == 0);
    sms_strv_free(v, n);
}

static void test_form(void)
{
    struct gw_kv *kv;
    size_t n;
    const char *s = "from=%2B15550001&to=1234&text=hello+from+phone&empty=&flag&&x=%C3%A9";
    CHECK(sms_form_parse(s, strlen(s), 64, &kv, &n) == 0);
    CHECK(n == 6);
    CHECK_STR(gw_kv_get(kv, n, "from"), "+15550001");
    CHECK_STR(gw_kv_get(kv, n, "text"), "hello from phone");
    CHECK_STR(gw_kv_get(kv, n, "empty"), "");
    CHECK_STR(gw_kv_get(kv, n, "flag"), "");
    CHECK_STR(gw_kv_get(kv, n, "x"), "é");
    gw_kv_free(kv, n);
    const char *bad[] = {"a=%", "a=%4", "a=%zz", "a=%00", "%=1", "a=b%2"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        CHECK(sms_form_parse(bad[i], strlen(bad[i]), 64, &kv, &n) == -1);
        CHECK(kv == NULL && n == 0);
    }
    CHECK(sms_form_parse("a=1&b=2&c=3", 11, 2, &kv, &n) == -1); /* too many */
    CHECK(sms_form_parse("a\0=1", 4, 8, &kv, &n) == -1);          /* NUL */
    CHECK(sms_form_parse("", 0, 8, &kv, &n) == 0 && n == 0);
    gw_kv_free(kv, n);
    char *e = sms_url_escape("a b+c/é~%d");
    CHECK_STR(e, "a%20b%2Bc%2F%C3%A9~%25d");
    free(e);
}

static void test_twilio_signature(void)
{
    /* Twilio's documented example (www.twilio.com/docs/usage/security#validating-requests):
     * token 12345, URL https://mycompany.com/myapp.php?foo=1&bar=2, these POST parameters →
     * 0/KCTR6DLpKmkAf8muzZqo1nDgQ=. */
    struct gw_kv p[] = {
        {"CallSid", "CA1234567890ABCDE"}, {"Caller", "+12349013030"},
        {"Digits", "1234"},               {"From", "+12349013030"},
        {"To", "+18005551212"},
    };
    char *sig = sms_twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", p,
                                     ARRAY_LEN(p));
    CHECK_STR(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    CHECK(sms_secure_eq(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
    CHECK(!sms_secure_eq(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ"));
    CHECK(!sms_secure_eq(sig, NULL));
    free(sig);
    /* The order of the parameters does not matter (they are sorted). */
    struct gw_kv q[] = {p[4], p[0], p[3], p[2], p[1]};
    sig = sms_twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", q, 5);
    CHECK_STR(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    free(sig);
}

int main(void)
{
    TEST_RUN(test_normalize);
    TEST_RUN(test_gsm7);
    TEST_RUN(test_split);
    TEST_RUN(test_form);
    TEST_RUN(test_twilio_signature);
    return TEST_DONE();
}
