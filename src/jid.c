/* jid.c — XMPP address parsing and preparation.
 *
 * Profiles (see shared/research/libraries.md §8; RFC 7622's PRECIS profiles have no C
 * implementation on Debian 12, and the deployed XMPP network still agrees on these):
 *   localpart    RFC 3920 Nodeprep via libidn, unassigned code points forbidden;
 *   resourcepart RFC 3920 Resourceprep via libidn, unassigned code points forbidden;
 *   domainpart   one trailing dot stripped (RFC 7622 §3.2), then
 *                - "[v6]" IP literal: validated and rewritten in the canonical inet_ntop form;
 *                - all-ASCII without A-labels: lower-cased and checked as NR-LDH labels
 *                  (RFC 5890 §2.3.1: letters, digits, inner hyphens, 1..63 bytes a label, no
 *                  "--" in positions 3-4, at most 253 bytes), which also admits IPv4 literals;
 *                - otherwise: UTS #46 non-transitional mapping via libidn2 to A-labels, the
 *                  A-labels checked as LDH, then converted back to U-labels.
 *                The stored form is therefore lower-case NR-LDH labels and U-labels, never
 *                A-labels: RFC 7622 §3.2.1 says each A-label MUST be converted to a U-label, and
 *                Prosody keeps Unicode domains as well. Code that needs the DNS form (SRV
 *                lookups, certificate matching) converts with idn2_to_ascii_8z.
 *
 * Results (including "invalid") are kept in one direct-mapped cache per part kind, so a busy
 * address costs a hash and a strcmp. The cache is not thread-safe: call these functions from the
 * main thread only. */
#include "isthmus/jid.h"

#include <arpa/inet.h>
#include <idn2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stringprep.h>

#include "isthmus/util.h"

/* RFC 7622 §3.1: each part is at most 1023 octets once prepared. */
#define JID_PART_MAX 1023
/* Raw input longer than this is rejected before any work: preparation can shrink a string
 * (fullwidth forms, ignorable code points) but not by this much for a legitimate address. */
#define JID_RAW_MAX 4096
/* RFC 1035 §2.3.4 and RFC 5890 §2.3.2.1: a DNS name of 253 octets, labels of 63. */
#define DNS_NAME_MAX 253
#define DNS_LABEL_MAX 63

#define CACHE_SLOTS 4096 /* a power of two */
/* Longer inputs and results bypass the cache, which bounds it to about 6 MB. */
#define CACHE_KEY_MAX 256

enum part_kind { PART_LOCAL, PART_DOMAIN, PART_RESOURCE, PART_KINDS };

struct cache_slot {
    char *raw;  /* NULL: empty slot */
    char *prep; /* NULL: raw is known to be invalid */
};

static struct cache_slot *cache[PART_KINDS];

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

/* Runs a libidn stringprep profile on s (len bytes, valid UTF-8 already checked). Returns the
 * prepared string, or NULL when the profile rejects it or the result is empty or too long. */
static char *prep_stringprep(const char *s, size_t len, const Stringprep_profile *profile)
{
    char buf[JID_RAW_MAX + 1];
    size_t cap = len + 1 > JID_PART_MAX + 1 ? len + 1 : JID_PART_MAX + 1;

    memcpy(buf, s, len + 1);
    if (stringprep(buf, cap, STRINGPREP_NO_UNASSIGNED, profile) != STRINGPREP_OK)
        return NULL;
    size_t out = strlen(buf);
    if (out == 0 || out > JID_PART_MAX)
        return NULL;
    return xstrndup(buf, out);
}

/* RFC 5890 §2.3.1 LDH label rules, on a lower-cased ASCII name. xn_ok: whether "xn--" labels
 * (A-labels, already verified by libidn2) are acceptable; with it false, any label starting
 * "xn--" makes this return 1 so the caller can take the IDN path. Returns 0 when valid, 1 for
 * "has an A-label", -1 when invalid. */
static int check_ldh(const char *name, bool xn_ok)
{
    size_t total = strlen(name);
    if (total == 0 || total > DNS_NAME_MAX)
        return -1;
    const char *label = name;
    for (;;) {
        const char *dot = strchr(label, '.');
        size_t n = dot ? (size_t)(dot - label) : strlen(label);
        if (n == 0 || n > DNS_LABEL_MAX)
            return -1;
        for (size_t i = 0; i < n; i++) {
            char c = label[i];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
                return -1;
        }
        if (label[0] == '-' || label[n - 1] == '-')
            return -1;
        /* RFC 5890 §2.3.1: "--" in positions 3 and 4 marks a reserved label; of those only
         * XN-labels ("xn--") are allowed, and they must be A-labels. */
        if (n >= 4 && label[2] == '-' && label[3] == '-') {
            if (label[0] != 'x' || label[1] != 'n')
                return -1;
            if (!xn_ok)
                return 1;
        }
        if (!dot)
            return 0;
        label = dot + 1;
    }
}

/* "[v6]" (RFC 7622 §3.2, RFC 3986 IP-literal). Returns the canonical form or NULL. */
static char *prep_ipv6_literal(const char *s, size_t len)
{
    char addr[INET6_ADDRSTRLEN];
    unsigned char bin[16];

    if (len < 3 || len - 2 >= sizeof(addr) || s[len - 1] != ']')
        return NULL;
    memcpy(addr, s + 1, len - 2);
    addr[len - 2] = '\0';
    if (inet_pton(AF_INET6, addr, bin) != 1 || !inet_ntop(AF_INET6, bin, addr, sizeof(addr)))
        return NULL;
    return xasprintf("[%s]", addr);
}

/* UTS #46 non-transitional processing (libidn2), giving U-labels. */
static char *prep_idn(const char *s)
{
    const int flags = IDN2_NONTRANSITIONAL | IDN2_NFC_INPUT;
    char *alabels = NULL, *ulabels = NULL, *again = NULL, *result = NULL;

    if (idn2_to_ascii_8z(s, &alabels, flags) != IDN2_OK)
        goto out;
    /* libidn2 maps but does not apply the STD3 (LDH) rules unless asked, and passes '_', ' '
     * and '@' through; check the ASCII form ourselves. */
    if (check_ldh(alabels, true) != 0)
        goto out;
    if (idn2_to_unicode_8z8z(alabels, &ulabels, 0) != IDN2_OK)
        goto out;
    /* RFC 5890 §2.3.2.1: an A-label is exactly the encoding of its U-label. libidn2 2.3.3
     * already refuses bad A-labels such as "xn--abc-" on the way in; this round trip keeps the
     * promise independent of the library version. */
    if (idn2_to_ascii_8z(ulabels, &again, flags) != IDN2_OK || strcmp(again, alabels) != 0)
        goto out;
    if (strlen(ulabels) > JID_PART_MAX || !utf8_valid(ulabels, strlen(ulabels)))
        goto out;
    result = xstrdup(ulabels);
out:
    /* libidn2 allocates with malloc; release with its own free. */
    idn2_free(alabels);
    idn2_free(ulabels);
    idn2_free(again);
    return result;
}

static char *prep_domain(const char *s, size_t len)
{
    char buf[JID_RAW_MAX + 1];

    /* RFC 7622 §3.2: a final dot is stripped before any other canonicalization. */
    if (len > 0 && s[len - 1] == '.')
        len--;
    if (len == 0)
        return NULL;
    if (s[0] == '[')
        return prep_ipv6_literal(s, len);
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (is_ascii(buf)) {
        for (size_t i = 0; i < len; i++)
            if (buf[i] >= 'A' && buf[i] <= 'Z')
                buf[i] = (char)(buf[i] - 'A' + 'a');
        int rc = check_ldh(buf, false);
        if (rc == 0)
            return xstrndup(buf, len);
        if (rc < 0)
            return NULL;
    }
    return prep_idn(buf);
}

static char *prep_uncached(enum part_kind kind, const char *s, size_t len)
{
    if (len == 0 || len > JID_RAW_MAX || !utf8_valid(s, len))
        return NULL;
    switch (kind) {
    case PART_LOCAL:
        return prep_stringprep(s, len, stringprep_xmpp_nodeprep);
    case PART_RESOURCE:
        return prep_stringprep(s, len, stringprep_xmpp_resourceprep);
    case PART_DOMAIN:
        return prep_domain(s, len);
    default:
        return NULL;
    }
}

/* FNV-1a; collisions only cost a cache miss, so nothing stronger is needed. */
static uint32_t hash_bytes(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Returns the prepared form of s (caller frees) or NULL when invalid. */
static char *prep_part(enum part_kind kind, const char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s);
    if (len > CACHE_KEY_MAX)
        return prep_uncached(kind, s, len);

    if (!cache[kind])
        cache[kind] = xcalloc(CACHE_SLOTS, sizeof(struct cache_slot));
    struct cache_slot *slot = &cache[kind][hash_bytes(s, len) & (CACHE_SLOTS - 1)];
    if (slot->raw && strcmp(slot->raw, s) == 0)
        return xstrdup(slot->prep);

    char *prep = prep_uncached(kind, s, len);
    if (prep && strlen(prep) > CACHE_KEY_MAX)
        return prep;
    free(slot->raw);
    free(slot->prep);
    slot->raw = xstrndup(s, len);
    slot->prep = xstrdup(prep);
    return prep;
}

void jid_cache_clear(void)
{
    for (int k = 0; k < PART_KINDS; k++) {
        if (!cache[k])
            continue;
        for (size_t i = 0; i < CACHE_SLOTS; i++) {
            free(cache[k][i].raw);
            free(cache[k][i].prep);
        }
        free(cache[k]);
        cache[k] = NULL;
    }
}

char *jid_prep_local(const char *s)
{
    return prep_part(PART_LOCAL, s);
}

char *jid_prep_domain(const char *s)
{
    return prep_part(PART_DOMAIN, s);
}

char *jid_prep_resource(const char *s)
{
    return prep_part(PART_RESOURCE, s);
}

/* Copies n bytes of s into a NUL-terminated buffer of JID_RAW_MAX + 1 bytes. Returns false when
 * the part is too long to be valid. */
static bool copy_part(char *dst, const char *s, size_t n)
{
    if (n > JID_RAW_MAX)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

int jid_parse(const char *s, struct jid *out)
{
    char raw[JID_RAW_MAX + 1];

    memset(out, 0, sizeof(*out));
    if (!s)
        return -1;

    /* RFC 7622 §3.1: the resourcepart is everything after the first '/', the localpart is
     * everything before the first '@' that precedes it, the domainpart is what remains. */
    const char *slash = strchr(s, '/');
    size_t bare_len = slash ? (size_t)(slash - s) : strlen(s);
    const char *at = memchr(s, '@', bare_len);
    const char *domain = at ? at + 1 : s;
    size_t domain_len = bare_len - (size_t)(domain - s);

    if (at) {
        if (!copy_part(raw, s, (size_t)(at - s)) || !(out->local = prep_part(PART_LOCAL, raw)))
            goto fail;
    }
    if (!copy_part(raw, domain, domain_len) || !(out->domain = prep_part(PART_DOMAIN, raw)))
        goto fail;
    if (slash && !(out->resource = prep_part(PART_RESOURCE, slash + 1)))
        goto fail;
    return 0;
fail:
    jid_fini(out);
    return -1;
}

void jid_fini(struct jid *j)
{
    if (!j)
        return;
    free(j->local);
    free(j->domain);
    free(j->resource);
    j->local = j->domain = j->resource = NULL;
}

int jid_copy(const struct jid *src, struct jid *dst)
{
    memset(dst, 0, sizeof(*dst));
    if (!src || !src->domain)
        return -1;
    dst->local = xstrdup(src->local);
    dst->domain = xstrdup(src->domain);
    dst->resource = xstrdup(src->resource);
    return 0;
}

char *jid_bare_string(const struct jid *j)
{
    if (!j || !j->domain)
        return NULL;
    if (j->local)
        return xasprintf("%s@%s", j->local, j->domain);
    return xstrdup(j->domain);
}

char *jid_to_string(const struct jid *j)
{
    if (!j || !j->domain)
        return NULL;
    return xasprintf("%s%s%s%s%s", j->local ? j->local : "", j->local ? "@" : "", j->domain,
                     j->resource ? "/" : "", j->resource ? j->resource : "");
}

char *jid_normalize(const char *s)
{
    struct jid j;
    if (jid_parse(s, &j) < 0)
        return NULL;
    char *str = jid_to_string(&j);
    jid_fini(&j);
    return str;
}

bool jid_bare_equal(const struct jid *a, const struct jid *b)
{
    if (!a || !b)
        return a == b;
    return str_eq(a->local, b->local) && str_eq(a->domain, b->domain);
}

bool jid_equal(const struct jid *a, const struct jid *b)
{
    return jid_bare_equal(a, b) && (!a || str_eq(a->resource, b->resource));
}

/* XEP-0106 §3: the ten escapable characters, in the order of its tables, and their sequences
 * (lower case only: "CASE IS SIGNIFICANT"). */
static const char escape_chars[] = " \"&'/:<>@\\";
static const char *const escape_seqs[] = {"20", "22", "26", "27", "2f",
                                          "3a", "3c", "3e", "40", "5c"};

/* Returns the index of the escape sequence that starts at p ("\hh"), or -1. */
static int escape_seq_at(const char *p)
{
    if (p[0] != '\\' || !p[1] || !p[2])
        return -1;
    for (size_t i = 0; i < ARRAY_LEN(escape_seqs); i++)
        if (p[1] == escape_seqs[i][0] && p[2] == escape_seqs[i][1])
            return (int)i;
    return -1;
}

/* XEP-0106 §3.2 and §4: disallowed characters become "\hh"; a backslash is escaped (as "\5c")
 * only when it starts one of the ten sequences, so "c:\net" becomes "c\3a\net". A leading or
 * trailing space is refused (NULL), since "\20 MUST NOT be the first or last character of an
 * escaped localpart" (§4.1 rule 6). */
char *jid_escape_local(const char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s);
    if (len > 0 && (s[0] == ' ' || s[len - 1] == ' '))
        return NULL;

    struct buf b;
    buf_init(&b);
    for (const char *p = s; *p; p++) {
        const char *hit = strchr(escape_chars, *p);
        bool escape = hit && (*p != '\\' || escape_seq_at(p) >= 0);
        if (escape) {
            buf_putc(&b, '\\');
            buf_puts(&b, escape_seqs[hit - escape_chars]);
        } else {
            buf_putc(&b, *p);
        }
    }
    return buf_take(&b);
}

/* XEP-0106 §3.3, §4.1 rule 3 and §4.3: only the ten defined sequences are unescaped, left to
 * right, and an unescaped backslash never starts a new sequence ("\5c5c" → "\5c"). */
char *jid_unescape_local(const char *s)
{
    if (!s)
        return NULL;
    struct buf b;
    buf_init(&b);
    for (const char *p = s; *p; p++) {
        int i = escape_seq_at(p);
        if (i >= 0) {
            buf_putc(&b, escape_chars[i]);
            p += 2;
        } else {
            buf_putc(&b, *p);
        }
    }
    return buf_take(&b);
}
