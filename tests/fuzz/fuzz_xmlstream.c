/* fuzz_xmlstream.c — libFuzzer target for the XML stream parser and stanza serialization.
 *
 * Input: byte 0 picks the split pattern, byte 1 the limits and restart policy, the rest is the
 * stream. Every delivered element is serialized, parsed again by a second stream and
 * re-serialized: the two serializations must match (serialization always produces XML that
 * parses back to the same tree). Invariants checked: at most one error callback, and a dead
 * stream keeps returning -1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/stanza.h"
#include "isthmus/xmlstream.h"

struct fuzz_state {
    struct xmlstream *xs;
    unsigned policy;
    int errors;
    int elements;
};

struct reparse {
    struct stanza *got;
    int errors;
};

static void re_open(void *ud, const struct stanza *header, const char *default_ns)
{
    (void)ud, (void)header, (void)default_ns;
}

static void re_element(void *ud, struct stanza *el)
{
    struct reparse *r = ud;
    if (r->got)
        abort(); /* one serialized element must parse as exactly one element */
    r->got = el;
}

static void re_close(void *ud)
{
    (void)ud;
    abort();
}

static void re_error(void *ud, const char *cond, const char *text)
{
    struct reparse *r = ud;
    fprintf(stderr, "reparse error %s: %s\n", cond, text ? text : "");
    r->errors++;
}

static const struct xmlstream_cb re_cbs = {re_open, re_element, re_close, re_error};

/* Serialization must round-trip through the parser. */
static void check_roundtrip(const struct stanza *el)
{
    static const char header[] = "<s:stream xmlns:s='http://etherx.jabber.org/streams'>";
    char *s1 = stanza_to_string(el, NULL);
    struct reparse r = {NULL, 0};
    struct xmlstream *xs = xmlstream_new(&re_cbs, &r, 1u << 24, 1u << 16);
    if (xmlstream_feed(xs, header, strlen(header)) < 0 ||
        xmlstream_feed(xs, s1, strlen(s1)) != (ssize_t)strlen(s1) || r.errors || !r.got) {
        fprintf(stderr, "serialized element does not parse: %s\n", s1);
        abort();
    }
    char *s2 = stanza_to_string(r.got, NULL);
    if (strcmp(s1, s2) != 0) {
        fprintf(stderr, "round trip differs:\n%s\n%s\n", s1, s2);
        abort();
    }
    free(s1);
    free(s2);
    stanza_free(r.got);
    xmlstream_free(xs);
}

static void on_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct fuzz_state *f = ud;
    char *s = stanza_to_string(header, default_ns);
    free(s);
    if ((f->policy & 0x30) == 0x30)
        xmlstream_restart(f->xs);
}

static void on_element(void *ud, struct stanza *el)
{
    struct fuzz_state *f = ud;
    f->elements++;
    check_roundtrip(el);

    struct stanza *cp = stanza_copy(el);
    struct stanza *reply = stanza_error_reply(cp, "bad-request", NULL, "fuzz");
    char *s = stanza_to_string(reply, NS_CLIENT);
    free(s);
    stanza_free(reply);
    struct stanza *res = stanza_iq_result(cp);
    stanza_free(res);
    free(stanza_text(cp));
    free(stanza_child_text(cp, "body", NULL));
    stanza_free(cp);

    /* Restart after SASL-like elements, or after every element when the policy says so. */
    if ((f->policy & 0x10) || strcmp(el->name, "auth") == 0 || strcmp(el->name, "proceed") == 0)
        xmlstream_restart(f->xs);
    stanza_free(el);
}

static void on_close(void *ud)
{
    (void)ud;
}

static void on_error(void *ud, const char *cond, const char *text)
{
    struct fuzz_state *f = ud;
    (void)cond, (void)text;
    if (++f->errors > 1)
        abort();
}

static const struct xmlstream_cb cbs = {on_open, on_element, on_close, on_error};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t rng = data[0] * 2654435761u + 1;
    unsigned policy = data[1];
    const char *in = (const char *)data + 2;
    size_t len = size - 2;

    struct fuzz_state f = {NULL, policy, 0, 0};
    size_t max_element = (policy & 1) ? 256 : 65536;
    unsigned max_depth = (policy & 2) ? 4 : 64;
    f.xs = xmlstream_new(&cbs, &f, max_element, max_depth);

    size_t off = 0;
    while (off < len) {
        rng = rng * 1103515245u + 12345u;
        size_t n = (data[0] & 0x80) ? len - off : (rng >> 16) % 17 + 1;
        if (n > len - off)
            n = len - off;
        ssize_t used = xmlstream_feed(f.xs, in + off, n);
        if (used < 0) {
            if (f.errors != 1 || xmlstream_feed(f.xs, in, len) != -1 || xmlstream_is_open(f.xs))
                abort();
            break;
        }
        if ((size_t)used > n || (used == 0 && n > 0))
            abort(); /* a feed must make progress */
        /* After a restart the rest is fed again, like a connection after SASL success. */
        off += (size_t)used;
        if ((policy & 0x40) && (rng & 0x3ff) == 0)
            xmlstream_restart(f.xs);
        /* Hibernation between feeds must be invisible (it is checked against the stanzas'
         * round trip in on_element like everything else). */
        if (policy & 0x20)
            xmlstream_hibernate(f.xs);
    }
    xmlstream_free(f.xs);
    return 0;
}
