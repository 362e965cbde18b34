/* test_jid.c — JID parsing, preparation, caching and XEP-0106 escaping. */
#include <stdlib.h>

#include "isthmus/jid.h"
#include "isthmus/util.h"
#include "test.h"

/* Checks that s normalizes to want (NULL: s is invalid) and, for valid input, that the
 * normalized form is a fixed point. */
static void check_norm(const char *s, const char *want, int line)
{
    char *got = jid_normalize(s);
    if (want == NULL) {
        if (got) {
            fprintf(stderr, "  FAIL line %d: \"%s\" accepted as \"%s\"\n", line, s, got);
            test_failed_checks++;
        }
    } else if (!got || strcmp(got, want) != 0) {
        fprintf(stderr, "  FAIL line %d: \"%s\" → \"%s\", want \"%s\"\n", line, s,
                got ? got : "(null)", want);
        test_failed_checks++;
    } else {
        char *again = jid_normalize(got);
        CHECK_STR(again, got);
        free(again);
    }
    free(got);
}
#define NORM(s, want) check_norm(s, want, __LINE__)

static void check_parts(const char *s, const char *local, const char *domain, const char *res,
                        int line)
{
    struct jid j;
    int before = test_failed_checks;
    CHECK(jid_parse(s, &j) == 0);
    CHECK(str_eq(j.local, local));
    CHECK(str_eq(j.domain, domain));
    CHECK(str_eq(j.resource, res));
    if (test_failed_checks != before)
        fprintf(stderr, "  (parts of \"%s\", line %d)\n", s, line);
    jid_fini(&j);
}
#define PARTS(s, l, d, r) check_parts(s, l, d, r, __LINE__)

/* A string of n copies of unit (unit repeated; caller frees). */
static char *repeat(const char *unit, size_t n)
{
    struct buf b;
    buf_init(&b);
    for (size_t i = 0; i < n; i++)
        buf_puts(&b, unit);
    return buf_take(&b);
}

/* RFC 7622 §3.5 examples, as the RFC 3920 profiles treat them. */
static void test_rfc7622_valid(void)
{
    NORM("juliet@example.com", "juliet@example.com");
    NORM("juliet@example.com/foo", "juliet@example.com/foo");
    NORM("juliet@example.com/foo bar", "juliet@example.com/foo bar");
    NORM("juliet@example.com/foo@bar", "juliet@example.com/foo@bar");
    NORM("foo\\20bar@example.com", "foo\\20bar@example.com");
    NORM("fussball@example.com", "fussball@example.com");
    NORM("fu\u00dfball@example.com", "fussball@example.com");   /* Nodeprep folds ß */
    NORM("\u03c0@example.com", "\u03c0@example.com");           /* π */
    NORM("\u03a3@example.com/foo", "\u03c3@example.com/foo");   /* Σ → σ */
    NORM("\u03c3@example.com/foo", "\u03c3@example.com/foo");   /* σ */
    NORM("\u03c2@example.com/foo", "\u03c3@example.com/foo");   /* ς → σ (RFC 3454 B.2) */
    NORM("king@example.com/\u265a", "king@example.com/\u265a"); /* ♚ */
    NORM("example.com", "example.com");
    NORM("example.com/foobar", "example.com/foobar");
    NORM("a.example.com/b@example.net", "a.example.com/b@example.net");

    /* Invalid under PRECIS (RFC 7622 §3.5) but valid under the RFC 3920 profiles in use: */
    NORM("juliet@example.com/ foo", "juliet@example.com/ foo");
    NORM("henry\u2163@example.com", "henryiv@example.com"); /* Ⅳ → "iv" by NFKC */
    NORM("\u265a@example.com", "\u265a@example.com");
}

static void test_rfc7622_invalid(void)
{
    NORM("\"juliet\"@example.com", NULL);
    NORM("foo bar@example.com", NULL);
    NORM("@example.com/", NULL);
    NORM("@example.com", NULL);
    NORM("juliet@", NULL);
    NORM("juliet@/foo", NULL);
    NORM("/foobar", NULL);
    NORM("juliet@example.com/", NULL);
    NORM("example.com/", NULL);
    NORM("", NULL);
    NORM("@", NULL);
    NORM("/", NULL);
    NORM("a@b@example.com", NULL); /* domainpart "b@example.com" */
    NORM("ju:liet@example.com", NULL);
    NORM("ju<liet@example.com", NULL);
    NORM("ju&liet@example.com", NULL);
    NORM("ju'liet@example.com", NULL);
    NORM("\U0001f600@example.com", NULL);     /* emoji: unassigned in Unicode 3.2 */
    NORM("juliet@example.com/\u200e", NULL);  /* LRM: prohibited (RFC 3454 C.8) */
    NORM("juliet@example.com/\u06271", NULL); /* RandAL followed by L/EN: bidi rule */
    NORM("\u00ad@example.com", NULL);         /* soft hyphen maps to nothing → empty */
}

static void test_split(void)
{
    PARTS("juliet@example.com/foo", "juliet", "example.com", "foo");
    PARTS("example.com", NULL, "example.com", NULL);
    PARTS("a.example.com/b@example.net", NULL, "a.example.com", "b@example.net");
    PARTS("juliet@example.com/foo/bar@baz", "juliet", "example.com", "foo/bar@baz");
    PARTS("example.com/@", NULL, "example.com", "@");
}

static void test_case_and_width(void)
{
    NORM("Juliet@Example.COM/Balcony", "juliet@example.com/Balcony"); /* resource keeps case */
    NORM("\uff2a\uff55liet@example.com", "juliet@example.com");       /* fullwidth Ｊｕ */
    NORM("stra\u00dfe@example.com", "strasse@example.com");
    NORM("juliet@example.com/Balcony \u2160", "juliet@example.com/Balcony I"); /* Ⅰ */
    NORM("juliet@\uff45xample.com", "juliet@example.com"); /* fullwidth ｅ in domain */

    char *p = jid_prep_local("JULIET");
    CHECK_STR(p, "juliet");
    free(p);
    p = jid_prep_resource("JULIET");
    CHECK_STR(p, "JULIET");
    free(p);
    p = jid_prep_domain("EXAMPLE.Com");
    CHECK_STR(p, "example.com");
    free(p);
}

static void test_domain(void)
{
    NORM("juliet@example.com.", "juliet@example.com"); /* RFC 7622 §3.2 */
    NORM("example.com./r", "example.com/r");
    NORM("juliet@example.com..", NULL);
    NORM("juliet@.", NULL);
    NORM("juliet@.example.com", NULL);
    NORM("juliet@a..example", NULL);
    NORM("localhost", "localhost");
    NORM("127.0.0.1", "127.0.0.1");
    NORM("juliet@[::1]/r", "juliet@[::1]/r");
    NORM("[0:0:0::1]", "[::1]");
    NORM("[2001:DB8::A]", "[2001:db8::a]");
    NORM("[::1", NULL);
    NORM("[1.2.3.4]", NULL);
    NORM("[]", NULL);
    NORM("[::1]x", NULL);
    NORM("juliet@exa mple.com", NULL);
    NORM("juliet@exa_mple.com", NULL);
    NORM("juliet@-example.com", NULL);
    NORM("juliet@example-.com", NULL);
    NORM("juliet@ab--cd.example", NULL);   /* reserved LDH label that is no A-label */
    NORM("juliet@xn--zz.example", NULL);   /* bad Punycode */
    NORM("juliet@xn--abc-.example", NULL); /* encodes plain "abc": not an A-label */
    NORM("juliet@\U0001f600.example", NULL);
    NORM("juliet@b\u00fccher exa.mple", NULL);
    NORM("juliet@b\u00fccher_x.example", NULL);

    /* IDN: every spelling of one name prepares to the same lower-case U-labels. */
    const char *buecher[] = {
        "b\u00fccher.example",      "B\u00dcCHER.EXAMPLE",  "xn--bcher-kva.example",
        "XN--BCHER-KVA.example.",   "bu\u0308cher.example", /* u + combining diaeresis */
        "b\u00fccher\u3002example",                         /* ideographic full stop */
    };
    for (size_t i = 0; i < ARRAY_LEN(buecher); i++) {
        char *d = jid_prep_domain(buecher[i]);
        CHECK_STR(d, "b\u00fccher.example");
        free(d);
    }
    /* UTS #46 non-transitional: ß stays (transitional processing would give "strasse"). */
    char *d = jid_prep_domain("STRA\u00dfE.example");
    CHECK_STR(d, "stra\u00dfe.example");
    free(d);
    NORM("juliet@\u03c0.example/r", "juliet@\u03c0.example/r");

    /* RFC 1035 / RFC 5890 lengths: 63-byte labels, 253-byte names. */
    char *label63 = repeat("a", 63), *label64 = repeat("a", 64);
    d = jid_prep_domain(label63);
    CHECK_STR(d, label63);
    free(d);
    CHECK(jid_prep_domain(label64) == NULL);
    char *label61 = repeat("b", 61), *label62 = repeat("b", 62);
    char *name253 = xasprintf("%s.%s.%s.%s", label63, label63, label63, label61);
    char *name254 = xasprintf("%s.%s.%s.%s", label63, label63, label63, label62);
    CHECK(strlen(name253) == 253);
    d = jid_prep_domain(name253);
    CHECK_STR(d, name253);
    free(d);
    CHECK(jid_prep_domain(name254) == NULL);
    free(label63);
    free(label64);
    free(label61);
    free(label62);
    free(name253);
    free(name254);
}

static void test_lengths(void)
{
    char *a1023 = repeat("a", 1023), *a1024 = repeat("a", 1024);
    char *p = jid_prep_local(a1023);
    CHECK_STR(p, a1023);
    free(p);
    CHECK(jid_prep_local(a1024) == NULL);
    p = jid_prep_resource(a1023);
    CHECK_STR(p, a1023);
    free(p);
    CHECK(jid_prep_resource(a1024) == NULL);

    /* The limit applies to the prepared form (RFC 7622 §3.1). */
    char *a1021 = repeat("a", 1021), *a1022 = repeat("a", 1022);
    char *grow_ok = xasprintf("%s\u00df", a1021);  /* 1023 bytes → 1023 */
    char *grow_bad = xasprintf("%s\u00df", a1022); /* 1024 bytes → 1024 */
    p = jid_prep_local(grow_ok);
    CHECK(p && strlen(p) == 1023);
    free(p);
    CHECK(jid_prep_local(grow_bad) == NULL);
    char *wide = repeat("\uff21", 500); /* 1500 bytes of fullwidth Ａ → 500 bytes */
    char *a500 = repeat("a", 500);
    p = jid_prep_local(wide);
    CHECK_STR(p, a500);
    free(p);
    char *huge = repeat("\u00ad", 5000); /* raw input over the bound is refused */
    CHECK(jid_prep_local(huge) == NULL);
    CHECK(jid_prep_resource(huge) == NULL);
    CHECK(jid_prep_domain(huge) == NULL);

    /* The limit is per part: a 3071-byte JID with three maximal parts is fine. */
    char *full = xasprintf("%s@example.com/%s", a1023, a1023);
    char *n = jid_normalize(full);
    CHECK_STR(n, full);
    free(n);
    char *full_bad = xasprintf("%s@example.com/%s", a1023, a1024);
    CHECK(jid_normalize(full_bad) == NULL);
    char *local_bad = xasprintf("%s@example.com", a1024);
    CHECK(jid_normalize(local_bad) == NULL);
    char *huge_local = xasprintf("%s@example.com", huge);
    CHECK(jid_normalize(huge_local) == NULL);

    free(a1023);
    free(a1024);
    free(a1021);
    free(a1022);
    free(grow_ok);
    free(grow_bad);
    free(wide);
    free(a500);
    free(huge);
    free(full);
    free(full_bad);
    free(local_bad);
    free(huge_local);
}

static void test_invalid_utf8(void)
{
    NORM("\xff@example.com", NULL);
    NORM("juliet@exa\xc3.com", NULL);
    NORM("juliet@example.com/\xed\xa0\x80", NULL);      /* UTF-16 surrogate */
    NORM("\xc0\xaf@example.com", NULL);                 /* overlong '/' */
    NORM("juliet@example.com/a\xf4\x90\x80\x80", NULL); /* above U+10FFFF */
    NORM("juliet@example.com/\xe2\x82", NULL);          /* truncated */
    CHECK(jid_prep_domain("b\xfc.example") == NULL);    /* Latin-1 */
}

static void test_cache(void)
{
    char *a = jid_prep_local("Juliet"), *b = jid_prep_local("Juliet");
    CHECK_STR(a, "juliet");
    CHECK_STR(b, "juliet");
    CHECK(a != b); /* each call hands out its own copy */
    free(a);
    free(b);
    CHECK(jid_prep_local("ju liet") == NULL);
    CHECK(jid_prep_local("ju liet") == NULL); /* cached as invalid */

    /* The three kinds are cached apart. */
    a = jid_prep_local("Foo");
    b = jid_prep_resource("Foo");
    char *c = jid_prep_domain("Foo");
    CHECK_STR(a, "foo");
    CHECK_STR(b, "Foo");
    CHECK_STR(c, "foo");
    free(a);
    free(b);
    free(c);
    CHECK(jid_prep_local("a b") == NULL);
    b = jid_prep_resource("a b");
    CHECK_STR(b, "a b");
    free(b);

    /* Many more names than slots: collisions and evictions must never mix results up. */
    for (int round = 0; round < 3; round++) {
        int bad = 0;
        for (int i = 0; i < 20000; i++) {
            char raw[32], want[32];
            snprintf(raw, sizeof(raw), "User%d", i);
            snprintf(want, sizeof(want), "user%d", i);
            char *got = jid_prep_local(raw);
            if (!got || strcmp(got, want) != 0)
                bad++;
            free(got);
            snprintf(raw, sizeof(raw), "u%d x", i);
            if (i % 7 == 0 && (got = jid_prep_local(raw)) != NULL) {
                bad++;
                free(got);
            }
        }
        CHECK(bad == 0);
        if (round == 1)
            jid_cache_clear();
    }
    jid_cache_clear();
    jid_cache_clear(); /* idempotent */
    a = jid_prep_local("Juliet");
    CHECK_STR(a, "juliet");
    free(a);
}

static void test_equal(void)
{
    struct jid a, b, c, d;
    CHECK(jid_parse("Juliet@Example.com/Balcony", &a) == 0);
    CHECK(jid_parse("juliet@example.com./Balcony", &b) == 0);
    CHECK(jid_parse("juliet@example.com/balcony", &c) == 0);
    CHECK(jid_parse("example.com/Balcony", &d) == 0);
    CHECK(jid_equal(&a, &b));
    CHECK(jid_bare_equal(&a, &b));
    CHECK(!jid_equal(&a, &c));
    CHECK(jid_bare_equal(&a, &c));
    CHECK(!jid_equal(&a, &d));
    CHECK(!jid_bare_equal(&a, &d));
    CHECK(!jid_bare_equal(&d, &a));
    jid_fini(&c);
    CHECK(jid_parse("juliet@example.com", &c) == 0);
    CHECK(!jid_equal(&a, &c)); /* a resource vs none */
    CHECK(jid_bare_equal(&a, &c));
    CHECK(!jid_equal(&a, NULL));
    CHECK(jid_equal(NULL, NULL));
    jid_fini(&a);
    jid_fini(&b);
    jid_fini(&c);
    jid_fini(&d);
}

static void test_strings_and_copy(void)
{
    struct jid j, k;
    CHECK(jid_parse("Juliet@Example.com/Balcony", &j) == 0);
    char *s = jid_to_string(&j);
    CHECK_STR(s, "juliet@example.com/Balcony");
    free(s);
    s = jid_bare_string(&j);
    CHECK_STR(s, "juliet@example.com");
    free(s);

    CHECK(jid_copy(&j, &k) == 0);
    CHECK(jid_equal(&j, &k));
    CHECK(k.local != j.local && k.domain != j.domain && k.resource != j.resource);
    jid_fini(&j);
    s = jid_to_string(&k);
    CHECK_STR(s, "juliet@example.com/Balcony");
    free(s);
    jid_fini(&k);
    CHECK(k.local == NULL && k.domain == NULL && k.resource == NULL);
    jid_fini(&k); /* twice is harmless */

    CHECK(jid_parse("example.com/r", &j) == 0);
    s = jid_bare_string(&j);
    CHECK_STR(s, "example.com");
    free(s);
    s = jid_to_string(&j);
    CHECK_STR(s, "example.com/r");
    free(s);
    jid_fini(&j);

    /* A failed parse leaves *out zeroed, even after a partial success. */
    j.local = (char *)"junk";
    j.domain = (char *)"junk";
    j.resource = (char *)"junk";
    CHECK(jid_parse("juliet@example.com/", &j) < 0);
    CHECK(j.local == NULL && j.domain == NULL && j.resource == NULL);
    CHECK(jid_copy(&j, &k) < 0);
    CHECK(k.local == NULL && k.domain == NULL && k.resource == NULL);
    CHECK(jid_to_string(&j) == NULL);
    CHECK(jid_bare_string(&j) == NULL);
}

static void test_null_inputs(void)
{
    struct jid j;
    CHECK(jid_parse(NULL, &j) < 0);
    CHECK(j.domain == NULL);
    CHECK(jid_prep_local(NULL) == NULL);
    CHECK(jid_prep_domain(NULL) == NULL);
    CHECK(jid_prep_resource(NULL) == NULL);
    CHECK(jid_normalize(NULL) == NULL);
    CHECK(jid_escape_local(NULL) == NULL);
    CHECK(jid_unescape_local(NULL) == NULL);
    CHECK(jid_to_string(NULL) == NULL);
    CHECK(jid_bare_string(NULL) == NULL);
    CHECK(jid_prep_local("") == NULL);
    CHECK(jid_prep_domain("") == NULL);
    CHECK(jid_prep_resource("") == NULL);
    jid_fini(NULL);
}

/* XEP-0106 §5.1 "JID Examples" (localparts), plus the IRC, IMPS and e-mail examples of §5. */
static const struct {
    const char *plain, *escaped;
} xep0106[] = {
    {"space cadet", "space\\20cadet"},
    {"call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"},
    {"at&t guy", "at\\26t\\20guy"},
    {"d'artagnan", "d\\27artagnan"},
    {"/.fanboy", "\\2f.fanboy"},
    {"::foo::", "\\3a\\3afoo\\3a\\3a"},
    {"<foo>", "\\3cfoo\\3e"},
    {"user@host", "user\\40host"},
    {"c:\\net", "c\\3a\\net"},
    {"c:\\\\net", "c\\3a\\\\net"},
    {"c:\\cool stuff", "c\\3a\\cool\\20stuff"},
    {"c:\\5commas", "c\\3a\\5c5commas"},
    {"here's_a_wild_&_/cr%zy/_address", "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address"},
    {"somenick!user\"&'/:<>\\3address", "somenick!user\\22\\26\\27\\2f\\3a\\3c\\3e\\5c3address"},
    {"\\3and\\2is\\5cool", "\\5c3and\\2is\\5c5cool"},
    {"here's_a_wild_&_/cr%zy/_address_for:<wv>(\"IMPS\")",
     "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address_for\\3a\\3cwv\\3e(\\22IMPS\\22)"},
    {"", ""},
    {"plain", "plain"},
    {"\\", "\\"},
    {"\\5", "\\5"},
    {"\\5c", "\\5c5c"},
    {"\\20\\40", "\\5c20\\5c40"},
};

static void test_xep0106_table(void)
{
    for (size_t i = 0; i < ARRAY_LEN(xep0106); i++) {
        char *e = jid_escape_local(xep0106[i].plain);
        char *u = jid_unescape_local(xep0106[i].escaped);
        CHECK_STR(e, xep0106[i].escaped);
        CHECK_STR(u, xep0106[i].plain);
        /* §2 requirement 2: an escaped localpart passes Nodeprep (ASCII ones unchanged). */
        if (xep0106[i].escaped[0]) {
            char *p = jid_prep_local(xep0106[i].escaped);
            char *lower = xstrdup(xep0106[i].escaped);
            for (char *q = lower; *q; q++)
                if (*q >= 'A' && *q <= 'Z')
                    *q = (char)(*q - 'A' + 'a');
            CHECK_STR(p, lower);
            free(p);
            free(lower);
        }
        free(e);
        free(u);
    }
    char *n = jid_normalize("d\\27artagnan@musketeers.lit");
    CHECK_STR(n, "d\\27artagnan@musketeers.lit");
    free(n);
}

static void test_xep0106_exceptions(void)
{
    /* §4.3: partial and undefined sequences are left alone in both directions. */
    const char *fixed[] = {"\\2plus\\2is\\4", "foo\\bar", "foob\\41r", "\\3A\\2F", "a\\", "\\"};
    for (size_t i = 0; i < ARRAY_LEN(fixed); i++) {
        char *e = jid_escape_local(fixed[i]);
        char *u = jid_unescape_local(fixed[i]);
        CHECK_STR(e, fixed[i]);
        CHECK_STR(u, fixed[i]);
        free(e);
        free(u);
    }
    /* Unescaping is one pass: "\5c5c" is "\5c", not "\". */
    char *u = jid_unescape_local("\\5c5c\\5c27");
    CHECK_STR(u, "\\5c\\27");
    free(u);
    /* §4.1 rule 6: \20 may not begin or end an escaped localpart. */
    CHECK(jid_escape_local(" cadet") == NULL);
    CHECK(jid_escape_local("cadet ") == NULL);
    CHECK(jid_escape_local(" ") == NULL);
    /* Non-ASCII passes through untouched. */
    char *e = jid_escape_local("\u03c0 r\u00e9");
    CHECK_STR(e, "\u03c0\\20r\u00e9");
    free(e);
}

int main(void)
{
    TEST_RUN(test_rfc7622_valid);
    TEST_RUN(test_rfc7622_invalid);
    TEST_RUN(test_split);
    TEST_RUN(test_case_and_width);
    TEST_RUN(test_domain);
    TEST_RUN(test_lengths);
    TEST_RUN(test_invalid_utf8);
    TEST_RUN(test_cache);
    TEST_RUN(test_equal);
    TEST_RUN(test_strings_and_copy);
    TEST_RUN(test_null_inputs);
    TEST_RUN(test_xep0106_table);
    TEST_RUN(test_xep0106_exceptions);
    jid_cache_clear();
    return TEST_DONE();
}
