/* test_xml.c — the stanza tree and the XMPP XML stream parser. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/stanza.h"
#include "isthmus/xmlstream.h"
#include "test.h"

/* Records every callback as a line of text so whole runs compare with one strcmp. */
struct rec {
    struct buf log;
    int opens, elements, closes, errors;
    const char *restart_on; /* element name that triggers xmlstream_restart() */
    struct xmlstream *xs;
    struct stanza *last; /* copy of the last element */
};

static void on_open(void *ud, const struct stanza *header, const char *default_ns)
{
    struct rec *r = ud;
    char *s = stanza_to_string(header, NS_STREAMS);
    buf_printf(&r->log, "open[%s] %s\n", default_ns, s);
    free(s);
    r->opens++;
}

static void on_element(void *ud, struct stanza *el)
{
    struct rec *r = ud;
    char *s = stanza_to_string(el, NS_CLIENT);
    buf_printf(&r->log, "el %s\n", s);
    free(s);
    r->elements++;
    if (r->restart_on && strcmp(el->name, r->restart_on) == 0)
        xmlstream_restart(r->xs);
    stanza_free(r->last);
    r->last = el;
}

static void on_close(void *ud)
{
    struct rec *r = ud;
    buf_puts(&r->log, "close\n");
    r->closes++;
}

static void on_error(void *ud, const char *cond, const char *text)
{
    struct rec *r = ud;
    (void)text;
    buf_printf(&r->log, "error %s\n", cond);
    r->errors++;
}

static const struct xmlstream_cb cbs = {on_open, on_element, on_close, on_error};

static struct xmlstream *rec_new(struct rec *r, size_t max_element, unsigned max_depth)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->log);
    r->xs = xmlstream_new(&cbs, r, max_element, max_depth);
    return r->xs;
}

static void rec_free(struct rec *r)
{
    xmlstream_free(r->xs);
    buf_fini(&r->log);
    stanza_free(r->last);
}

static uint64_t rng_state;

static uint32_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

/* Feeds data in pieces of at most `step` bytes (0: random 1..64, or a random cut anywhere),
 * re-feeding what a restart left unconsumed, as a connection would after SASL. Returns 0, or -1
 * once the stream died. */
static int feed_split(struct xmlstream *xs, const char *data, size_t len, size_t step)
{
    size_t off = 0;
    while (off < len) {
        size_t n = step ? step : (rng() % 4 == 0 ? rng() % (len - off) + 1 : rng() % 64 + 1);
        if (n > len - off)
            n = len - off;
        while (n > 0) {
            ssize_t used = xmlstream_feed(xs, data + off, n);
            if (used < 0)
                return -1;
            off += (size_t)used;
            n -= (size_t)used;
        }
    }
    return 0;
}

static char *run_stream(const char *data, size_t step, const char *restart_on)
{
    struct rec r;
    rec_new(&r, 65536, 32);
    r.restart_on = restart_on;
    feed_split(r.xs, data, strlen(data), step);
    char *log = buf_take(&r.log);
    rec_free(&r);
    return log;
}

static const char stream_text[] =
    "<?xml version='1.0'?>"
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='example.com' version='1.0' xml:lang='en'>\n"
    "<message to='juliet@example.com' type='chat' xml:lang='fr'>"
    "<body>a &amp; b &lt; c &gt; d &quot;q&quot; &apos;s&apos; &#233;t&#xE9; \xE6\x97\xA5</body>"
    "<thread>t1</thread></message>  \n\t "
    "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
    "<presence/>"
    " <p:x xmlns:p='urn:x' xmlns:q='urn:q' q:attr='v' plain=\"a'b\"><p:y>in<![CDATA[<raw>&]]>"
    "</p:y><z xmlns=''/></p:x>\n"
    "</stream:stream>";

static const char stream_expected[] =
    "open[jabber:client] <stream to='example.com' version='1.0' xml:lang='en'/>\n"
    "el <message to='juliet@example.com' type='chat' xml:lang='fr'>"
    "<body>a &amp; b &lt; c &gt; d \"q\" 's' \xC3\xA9t\xC3\xA9 \xE6\x97\xA5</body>"
    "<thread>t1</thread></message>\n"
    "el <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>\n"
    "el <presence/>\n"
    "el <x xmlns='urn:x' xmlns:ns0='urn:q' ns0:attr='v' plain='a&apos;b'>"
    "<y>in&lt;raw&gt;&amp;</y><z xmlns=''/></x>\n"
    "close\n";

static void test_splits(void)
{
    char *whole = run_stream(stream_text, strlen(stream_text), NULL);
    CHECK_STR(whole, stream_expected);
    char *bytes = run_stream(stream_text, 1, NULL);
    CHECK_STR(bytes, stream_expected);
    free(bytes);
    rng_state = 20240611;
    for (int i = 0; i < 200; i++) {
        char *log = run_stream(stream_text, 0, NULL);
        if (strcmp(log, whole) != 0) {
            CHECK_STR(log, whole);
            free(log);
            break;
        }
        free(log);
    }
    free(whole);
}

static void test_header(void)
{
    struct rec r;
    rec_new(&r, 4096, 8);
    const char *s = "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
                    "xmlns='jabber:server' from='a.example' to='b.example' id='abc' "
                    "version='1.0' xml:lang='de'>";
    CHECK(!xmlstream_is_open(r.xs));
    CHECK(xmlstream_feed(r.xs, s, strlen(s)) == (ssize_t)strlen(s));
    CHECK(xmlstream_is_open(r.xs));
    CHECK_STR(r.log.data, "open[jabber:server] <stream from='a.example' to='b.example' id='abc' "
                          "version='1.0' xml:lang='de'/>\n");
    rec_free(&r);

    /* No default namespace; the stream prefix may be anything. */
    rec_new(&r, 4096, 8);
    s = "<s:stream xmlns:s='http://etherx.jabber.org/streams' to='x'><s:features/>";
    CHECK(xmlstream_feed(r.xs, s, strlen(s)) == (ssize_t)strlen(s));
    CHECK_STR(r.log.data, "open[] <stream to='x'/>\nel <features xmlns='" NS_STREAMS "'/>\n");
    CHECK(r.last && str_eq(r.last->ns, NS_STREAMS) && str_eq(r.last->name, "features"));
    rec_free(&r);
}

static const char hdr[] = "<stream:stream xmlns='jabber:client' "
                          "xmlns:stream='http://etherx.jabber.org/streams' to='example.com'>";

/* Feeds header + body to a fresh stream and returns the log; *errors gets the error count. */
static char *run_body(const char *body, size_t max_element, unsigned max_depth, size_t step,
                      int *errors)
{
    struct rec r;
    struct buf all;
    buf_init(&all);
    buf_puts(&all, hdr);
    buf_puts(&all, body);
    rec_new(&r, max_element, max_depth);
    feed_split(r.xs, all.data, all.len, step);
    /* A dead stream stays dead and reports nothing more. */
    if (r.errors)
        CHECK(xmlstream_feed(r.xs, "<presence/>", 11) == -1);
    CHECK(r.errors <= 1);
    if (errors)
        *errors = r.errors;
    char *log = buf_take(&r.log);
    rec_free(&r);
    buf_fini(&all);
    return log;
}

static void test_namespaces(void)
{
    char *log = run_body("<iq type='set'><query xmlns='jabber:iq:roster' ver=''>"
                         "<item jid='a@b' xmlns='jabber:iq:roster'><group>G</group></item>"
                         "</query></iq><r:x xmlns:r='urn:r'><r:y/><y xmlns='jabber:client'/></r:x>",
                         4096, 8, 1, NULL);
    CHECK_STR(log, "open[jabber:client] <stream to='example.com'/>\n"
                   "el <iq type='set'><query xmlns='jabber:iq:roster' ver=''>"
                   "<item jid='a@b'><group>G</group></item></query></iq>\n"
                   "el <x xmlns='urn:r'><y/><y xmlns='jabber:client'/></x>\n");
    free(log);

    struct stanza *iq = stanza_new("iq", NS_CLIENT);
    struct stanza *q = stanza_add_child(iq, "query", "jabber:iq:roster");
    struct stanza *item = stanza_add_child(q, "item", NULL);
    stanza_set_attr(item, "jid", "x@y");
    CHECK_STR(item->ns, "jabber:iq:roster");
    stanza_set_attr(item, "urn:ext flag", "1");
    char *s = stanza_to_string(iq, NS_CLIENT);
    CHECK_STR(s, "<iq><query xmlns='jabber:iq:roster'><item jid='x@y' xmlns:ns1='urn:ext' "
                 "ns1:flag='1'/></query></iq>");
    free(s);
    s = stanza_to_string(iq, NULL);
    CHECK_STR(s, "<iq xmlns='jabber:client'><query xmlns='jabber:iq:roster'><item jid='x@y' "
                 "xmlns:ns1='urn:ext' ns1:flag='1'/></query></iq>");
    free(s);
    /* Setting "xmlns" is a namespace change, never a stored attribute. */
    stanza_set_attr(q, "xmlns", "jabber:iq:private");
    CHECK_STR(q->ns, "jabber:iq:private");
    CHECK(stanza_attr(q, "xmlns") == NULL);
    stanza_free(iq);

    /* The XML namespace keeps its reserved prefix. */
    log = run_body("<message><xml:x/></message>", 4096, 8, 1, NULL);
    CHECK(strstr(log, "el <message><xml:x/></message>") != NULL);
    free(log);

    /* A parsed namespaced attribute is stored as "URI local" and survives a round trip. */
    log = run_body("<message xmlns:e='urn:ext' e:flag='1' xml:lang='en'/>", 4096, 8, 3, NULL);
    CHECK_STR(log, "open[jabber:client] <stream to='example.com'/>\n"
                   "el <message xmlns:ns0='urn:ext' ns0:flag='1' xml:lang='en'/>\n");
    free(log);
}

static void test_escaping(void)
{
    struct buf b;
    buf_init(&b);
    xml_escape(&b, "a&b<c>d\"e'f", 11, false);
    CHECK_STR(b.data, "a&amp;b&lt;c&gt;d\"e'f");
    buf_reset(&b);
    xml_escape(&b, "a&b<c>d\"e'f\t\n", 13, true);
    CHECK_STR(b.data, "a&amp;b&lt;c&gt;d&quot;e&apos;f&#9;&#10;");
    buf_reset(&b);
    /* Characters XML cannot carry become U+FFFD: a control, bad UTF-8, U+FFFF. */
    xml_escape(&b, "x\x01y\xC3z\xEF\xBF\xBF", 8, false);
    CHECK_STR(b.data, "x\xEF\xBF\xBDy\xEF\xBF\xBDz\xEF\xBF\xBD");
    buf_fini(&b);

    /* Build, serialize, parse back: the text and attributes come back byte for byte. */
    const char *tricky =
        "a & b < c > d \"q\" 's' ]]> \xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80 x\r\ny\tz";
    struct stanza *m = stanza_new("message", NS_CLIENT);
    stanza_set_attr(m, "to", tricky);
    stanza_set_attr(m, "xml:lang", "en");
    stanza_add_text_child(m, "body", NULL, tricky);
    char *s = stanza_to_string(m, NS_CLIENT);
    struct rec r;
    rec_new(&r, 65536, 8);
    CHECK(xmlstream_feed(r.xs, hdr, strlen(hdr)) == (ssize_t)strlen(hdr));
    CHECK(xmlstream_feed(r.xs, s, strlen(s)) == (ssize_t)strlen(s));
    CHECK(r.elements == 1 && r.errors == 0);
    if (r.last) {
        char *body = stanza_child_text(r.last, "body", NS_CLIENT);
        CHECK_STR(body, tricky);
        free(body);
        CHECK_STR(stanza_attr(r.last, "to"), tricky);
        CHECK_STR(stanza_attr(r.last, "xml:lang"), "en");
        char *again = stanza_to_string(r.last, NS_CLIENT);
        CHECK_STR(again, s);
        free(again);
    }
    rec_free(&r);
    free(s);
    stanza_free(m);
}

static const char auth_prefix[] =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='example.com' version='1.0'>"
    "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>";
static const char auth_tail[] =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    "to='example.com' version='1.0' id='second'><iq type='set' id='b'/>";

static void test_restart(void)
{
    struct rec r;
    struct buf all;
    buf_init(&all);
    buf_puts(&all, auth_prefix);
    buf_puts(&all, auth_tail);

    /* Tail in the same buffer: feed stops right after </auth>. */
    rec_new(&r, 4096, 8);
    r.restart_on = "auth";
    ssize_t used = xmlstream_feed(r.xs, all.data, all.len);
    CHECK(used == (ssize_t)strlen(auth_prefix));
    CHECK(r.elements == 1 && r.opens == 1);
    CHECK(!xmlstream_is_open(r.xs));
    if (used > 0) {
        ssize_t rest = xmlstream_feed(r.xs, all.data + used, all.len - (size_t)used);
        CHECK(rest == (ssize_t)(all.len - (size_t)used));
    }
    CHECK(r.opens == 2 && r.elements == 2 && r.errors == 0);
    CHECK(xmlstream_is_open(r.xs));
    CHECK(r.last && str_eq(r.last->name, "iq"));
    rec_free(&r);

    /* No tail: the whole buffer is consumed and the next feed starts a new stream. */
    rec_new(&r, 4096, 8);
    r.restart_on = "auth";
    CHECK(xmlstream_feed(r.xs, auth_prefix, strlen(auth_prefix)) == (ssize_t)strlen(auth_prefix));
    CHECK(!xmlstream_is_open(r.xs));
    CHECK(xmlstream_feed(r.xs, auth_tail, strlen(auth_tail)) == (ssize_t)strlen(auth_tail));
    CHECK(r.opens == 2 && r.elements == 2 && r.errors == 0);
    rec_free(&r);

    /* A stanza (not a stream header) after the restart is an error. */
    rec_new(&r, 4096, 8);
    r.restart_on = "auth";
    CHECK(xmlstream_feed(r.xs, auth_prefix, strlen(auth_prefix)) == (ssize_t)strlen(auth_prefix));
    CHECK(xmlstream_feed(r.xs, "<iq/>", 5) == -1);
    CHECK(r.errors == 1);
    rec_free(&r);

    /* Every split, including byte by byte, gives the same events. */
    char *whole = run_stream(all.data, all.len, "auth");
    CHECK(strstr(whole, "id='second'") != NULL);
    CHECK(strstr(whole, "error") == NULL);
    for (size_t step = 1; step < 40; step++) {
        char *log = run_stream(all.data, step, "auth");
        CHECK_STR(log, whole);
        free(log);
    }
    free(whole);

    /* The triggering element deep inside a large buffer (parsed in several slices). */
    struct buf big;
    buf_init(&big);
    buf_puts(&big, hdr);
    for (int i = 0; i < 10000; i++)
        buf_putc(&big, ' ');
    buf_puts(&big, "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>");
    size_t cut = big.len;
    buf_puts(&big, auth_tail);
    rec_new(&r, 4096, 8);
    r.restart_on = "auth";
    CHECK(xmlstream_feed(r.xs, big.data, big.len) == (ssize_t)cut);
    CHECK(xmlstream_feed(r.xs, big.data + cut, big.len - cut) == (ssize_t)(big.len - cut));
    CHECK(r.opens == 2 && r.elements == 2 && r.errors == 0);
    rec_free(&r);
    buf_fini(&big);

    /* From outside a callback the reset is immediate. */
    rec_new(&r, 4096, 8);
    CHECK(xmlstream_feed(r.xs, hdr, strlen(hdr)) == (ssize_t)strlen(hdr));
    xmlstream_feed(r.xs, "<message><bo", 12);
    xmlstream_restart(r.xs);
    CHECK(!xmlstream_is_open(r.xs));
    CHECK(xmlstream_feed(r.xs, hdr, strlen(hdr)) == (ssize_t)strlen(hdr));
    CHECK(r.opens == 2 && r.errors == 0 && r.elements == 0);
    rec_free(&r);
    buf_fini(&all);
}

static void expect_error(const char *data, const char *cond, size_t max_element, unsigned max_depth)
{
    for (size_t step = 1; step <= 1024; step *= 4) {
        struct rec r;
        rec_new(&r, max_element, max_depth);
        int rc = feed_split(r.xs, data, strlen(data), step);
        if (rc != -1)
            fprintf(stderr, "  no error for: %s (step %zu)\n", data, step);
        CHECK(rc == -1);
        CHECK(r.errors == 1);
        CHECK(xmlstream_feed(r.xs, " ", 1) == -1);
        CHECK(r.errors == 1);
        CHECK(!xmlstream_is_open(r.xs));
        char want[128];
        snprintf(want, sizeof(want), "error %s\n", cond);
        const char *last = strstr(r.log.data ? r.log.data : "", "error ");
        if (!last || strcmp(last, want) != 0) {
            fprintf(stderr, "  input: %s (step %zu)\n", data, step);
            CHECK_STR(last, want);
        }
        rec_free(&r);
    }
}

#define HDR "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"

static void test_restricted(void)
{
    expect_error("<!DOCTYPE stream:stream>" HDR, "restricted-xml", 4096, 8);
    expect_error("<!DOCTYPE x [<!ENTITY e 'boom'>]>" HDR, "restricted-xml", 4096, 8);
    expect_error("<!-- hi -->" HDR, "restricted-xml", 4096, 8);
    expect_error(HDR "<message><!-- hi --></message>", "restricted-xml", 4096, 8);
    expect_error(HDR "<?php evil?>", "restricted-xml", 4096, 8);
    expect_error(HDR "<message><body>&ent;</body></message>", "not-well-formed", 4096, 8);
    expect_error("<?xml version='1.0' encoding='ISO-8859-1'?>" HDR, "unsupported-encoding", 4096,
                 8);
    /* The XML declaration and predefined entities stay allowed. */
    char *log = run_body("<message><body>&lt;&#65;</body></message>", 4096, 8, 1, NULL);
    CHECK(strstr(log, "<body>&lt;A</body>") != NULL);
    free(log);
}

static void test_malformed(void)
{
    expect_error(HDR "<message></presence>", "not-well-formed", 4096, 8);
    expect_error(HDR "<message to=x/>", "not-well-formed", 4096, 8);
    expect_error(HDR "<a:message/>", "not-well-formed", 4096, 8);
    expect_error(HDR "<message a='1' a='2'/>", "not-well-formed", 4096, 8);
    expect_error(HDR "hello", "not-well-formed", 4096, 8);
    expect_error(HDR "<message/>\xC3(", "not-well-formed", 4096, 8);
    expect_error(HDR "<message>\xFF</message>", "not-well-formed", 4096, 8);
    expect_error("garbage ", "not-well-formed", 4096, 8);
    expect_error("<stream xmlns='jabber:client'>", "invalid-namespace", 4096, 8);
    expect_error("<stream:stream xmlns:stream='urn:wrong'>", "invalid-namespace", 4096, 8);
    expect_error("<s:features xmlns:s='http://etherx.jabber.org/streams'>", "not-well-formed", 4096,
                 8);
}

static void test_limits(void)
{
    struct buf big;
    buf_init(&big);
    buf_puts(&big, HDR "<message><body>");
    for (int i = 0; i < 3000; i++)
        buf_putc(&big, 'a');
    /* No end tag: the error must come from the bytes alone. */
    expect_error(big.data, "policy-violation", 1024, 8);
    buf_puts(&big, "</body></message>");
    expect_error(big.data, "policy-violation", 1024, 8);

    /* An unfinished start tag or stream header counts too. */
    buf_reset(&big);
    buf_puts(&big, HDR "<message to='");
    for (int i = 0; i < 3000; i++)
        buf_putc(&big, 'a');
    expect_error(big.data, "policy-violation", 1024, 8);
    buf_reset(&big);
    buf_puts(&big, "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' to='");
    for (int i = 0; i < 3000; i++)
        buf_putc(&big, 'a');
    expect_error(big.data, "policy-violation", 1024, 8);

    /* The error arrives before the whole element did. */
    struct rec r;
    rec_new(&r, 1024, 8);
    CHECK(xmlstream_feed(r.xs, HDR "<message><body>", strlen(HDR) + 15) > 0);
    int fed = 0;
    while (r.errors == 0 && fed < 10000) {
        xmlstream_feed(r.xs, "aaaaaaaaaa", 10);
        fed += 10;
    }
    CHECK(r.errors == 1 && fed <= 1024);
    rec_free(&r);

    /* Whitespace between stanzas belongs to no stanza. */
    buf_reset(&big);
    buf_puts(&big, "<message><body>");
    for (int i = 0; i < 900; i++)
        buf_putc(&big, 'b');
    buf_puts(&big, "</body></message>");
    for (int i = 0; i < 20000; i++)
        buf_putc(&big, i % 2 ? ' ' : '\n');
    buf_puts(&big, "<presence/>");
    int errors = -1;
    char *log = run_body(big.data, 1024, 8, 7, &errors);
    CHECK(errors == 0);
    CHECK(strstr(log, "el <presence/>") != NULL);
    free(log);

    /* Depth: stanza = 1; max_depth 4 allows <a><b><c><d/>. */
    log = run_body("<a><b><c><d/></c></b></a>", 4096, 4, 1, &errors);
    CHECK(errors == 0 && strstr(log, "el <a><b><c><d/></c></b></a>") != NULL);
    free(log);
    expect_error(HDR "<a><b><c><d><e/></d></c></b></a>", "policy-violation", 4096, 4);
    buf_reset(&big);
    buf_puts(&big, HDR);
    for (int i = 0; i < 5000; i++)
        buf_puts(&big, "<a>");
    expect_error(big.data, "policy-violation", 1 << 20, 64);
    buf_fini(&big);
}

static void test_close(void)
{
    struct rec r;
    rec_new(&r, 4096, 8);
    const char *s = HDR "<presence/></stream:stream>";
    CHECK(xmlstream_feed(r.xs, s, strlen(s)) == (ssize_t)strlen(s));
    CHECK(r.closes == 1 && r.elements == 1 && r.errors == 0);
    CHECK(!xmlstream_is_open(r.xs));
    /* Whatever follows the close is ignored, not an error. */
    CHECK(xmlstream_feed(r.xs, "<junk", 5) == 5);
    CHECK(r.closes == 1 && r.errors == 0);
    rec_free(&r);
}

static void test_error_reply(void)
{
    struct stanza *iq = stanza_new("iq", NS_CLIENT);
    stanza_set_attr(iq, "type", "get");
    stanza_set_attr(iq, "id", "q1");
    stanza_set_attr(iq, "from", "romeo@example.net/orchard");
    stanza_set_attr(iq, "to", "example.net");
    stanza_add_child(iq, "query", "jabber:iq:version");
    struct stanza *e = stanza_error_reply(iq, "service-unavailable", NULL, NULL);
    char *s = stanza_to_string(e, NS_CLIENT);
    CHECK_STR(s, "<iq id='q1' to='romeo@example.net/orchard' from='example.net' type='error'>"
                 "<query xmlns='jabber:iq:version'/><error type='cancel'>"
                 "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
    free(s);
    stanza_free(e);

    e = stanza_error_reply(iq, "bad-request", "auth", "no <good>");
    s = stanza_to_string(e, NS_CLIENT);
    CHECK_STR(s, "<iq id='q1' to='romeo@example.net/orchard' from='example.net' type='error'>"
                 "<query xmlns='jabber:iq:version'/><error type='auth'>"
                 "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                 "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no &lt;good&gt;</text>"
                 "</error></iq>");
    free(s);
    stanza_free(e);

    struct stanza *res = stanza_iq_result(iq);
    s = stanza_to_string(res, NS_CLIENT);
    CHECK_STR(s, "<iq id='q1' to='romeo@example.net/orchard' from='example.net' type='result'/>");
    free(s);
    stanza_free(res);
    stanza_free(iq);

    CHECK_STR(stanza_error_type("bad-request"), "modify");
    CHECK_STR(stanza_error_type("forbidden"), "auth");
    CHECK_STR(stanza_error_type("resource-constraint"), "wait");
    CHECK_STR(stanza_error_type("item-not-found"), "cancel");
    CHECK_STR(stanza_error_type("policy-violation"), "modify");
    CHECK_STR(stanza_error_type("no-such-thing"), "cancel");
}

static void test_tree(void)
{
    struct stanza *m = stanza_new("message", NS_CLIENT);
    stanza_set_attr(m, "to", "a@b");
    stanza_set_attr(m, "type", "chat");
    stanza_add_text_child(m, "body", NULL, "hello");
    stanza_add_child(m, "active", "http://jabber.org/protocol/chatstates");
    stanza_add_text(m, "x", 1);
    stanza_add_text(m, "yz", 2);
    stanza_add_text_child(m, "body", "urn:other", "other");

    CHECK(stanza_child(m, "body", NS_CLIENT) == m->first);
    CHECK_STR(stanza_child(m, "body", "urn:other")->ns, "urn:other");
    CHECK(stanza_child(m, "active", NULL) != NULL);
    CHECK(stanza_child(m, NULL, "http://jabber.org/protocol/chatstates") != NULL);
    CHECK(stanza_child(m, "nope", NULL) == NULL);
    CHECK(stanza_child(m, "body", "urn:none") == NULL);
    CHECK(stanza_first_elem(m) == m->first);
    struct stanza *second = stanza_next_elem(m->first);
    CHECK(second && str_eq(second->name, "active"));
    CHECK(second && stanza_next_elem(second) && str_eq(stanza_next_elem(second)->ns, "urn:other"));
    char *t = stanza_text(m);
    CHECK_STR(t, "xyz");
    free(t);
    t = stanza_child_text(m, "body", NULL);
    CHECK_STR(t, "hello");
    free(t);
    CHECK(stanza_child_text(m, "subject", NULL) == NULL);

    struct stanza *cp = stanza_copy(m);
    char *a = stanza_to_string(m, NS_CLIENT), *b = stanza_to_string(cp, NS_CLIENT);
    CHECK_STR(a, b);
    CHECK_STR(a, "<message to='a@b' type='chat'><body>hello</body>"
                 "<active xmlns='http://jabber.org/protocol/chatstates'/>xyz"
                 "<body xmlns='urn:other'>other</body></message>");
    free(a);
    free(b);
    /* The copy is independent. */
    stanza_set_attr(cp, "to", NULL);
    CHECK(stanza_attr(cp, "to") == NULL);
    CHECK_STR(stanza_attr(cp, "type"), "chat");
    CHECK_STR(stanza_attr(m, "to"), "a@b");
    stanza_set_attr(cp, "type", "normal");
    CHECK_STR(stanza_attr(cp, "type"), "normal");
    CHECK(cp->nattrs == 1);

    struct stanza *active = stanza_child(cp, "active", NULL);
    stanza_remove(active);
    CHECK(active->parent == NULL && stanza_child(cp, "active", NULL) == NULL);
    stanza_append(cp->first, active);
    CHECK(stanza_child(cp->first, "active", NULL) == active);
    struct stanza *last = cp->last;
    stanza_remove(last);
    CHECK(cp->last != last && cp->last->next == NULL);
    stanza_free(last);
    a = stanza_to_string(cp, NS_CLIENT);
    CHECK_STR(a, "<message type='normal'><body>hello"
                 "<active xmlns='http://jabber.org/protocol/chatstates'/></body>xyz</message>");
    free(a);

    /* A namespace-less subtree takes the namespace where it is inserted. */
    struct stanza *loose = stanza_new("item", NULL);
    stanza_add_child(loose, "sub", NULL);
    stanza_append(cp, loose);
    CHECK_STR(loose->ns, NS_CLIENT);
    CHECK_STR(loose->first->ns, NS_CLIENT);
    stanza_free(cp);
    stanza_free(m);

    /* Deep trees free without recursion. */
    struct stanza *deep = stanza_new("a", "urn:d"), *cur = deep;
    for (int i = 0; i < 100000; i++)
        cur = stanza_add_child(cur, "a", NULL);
    stanza_free(deep);
    stanza_free(NULL);
}


static void feed_str(struct xmlstream *xs, const char *s)
{
    CHECK(xmlstream_feed(xs, s, strlen(s)) == (ssize_t)strlen(s));
}

/* Hibernation frees the parser between stanzas; the stream must behave exactly as if it never
 * happened: same elements, same namespaces, same close, no second open. */
static void test_hibernate(void)
{
    const char *headers[] = {
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams' xmlns:x='urn:example:x' to='example.org' "
        "version='1.0'>",
        "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' "
        "xmlns:x='urn:example:x' version='1.0'>",
    };
    const char *closers[] = {"</stream:stream>", "</s:stream>"};
    for (size_t h = 0; h < ARRAY_LEN(headers); h++) {
        struct rec plain, hib;
        rec_new(&plain, 65536, 16);
        rec_new(&hib, 65536, 16);
        const char *parts[] = {headers[h], "<message to='a@b'><body>one</body></message>",
                               "  ", "<iq type='get' id='1'><x:q/></iq>", "\n",
                               "<message><body>two &amp; three</body></message>", closers[h]};
        for (size_t i = 0; i < ARRAY_LEN(parts); i++) {
            feed_str(plain.xs, parts[i]);
            if (i > 0 && i + 1 < ARRAY_LEN(parts))
                CHECK(xmlstream_hibernate(hib.xs));
            feed_str(hib.xs, parts[i]);
        }
        CHECK_STR(hib.log.data, plain.log.data);
        CHECK(hib.opens == 1 && hib.elements == 3 && hib.closes == 1 && hib.errors == 0);
        rec_free(&plain);
        rec_free(&hib);
    }

    /* Nothing is freed while a stanza is half-received, nor before the header. */
    struct rec r;
    rec_new(&r, 65536, 16);
    CHECK(!xmlstream_hibernate(r.xs));
    feed_str(r.xs, headers[0]);
    feed_str(r.xs, "<message><bo");
    CHECK(!xmlstream_hibernate(r.xs));
    feed_str(r.xs, "dy>x</body></message>");
    CHECK(xmlstream_hibernate(r.xs));
    /* A restart while hibernated expects a fresh header. */
    xmlstream_restart(r.xs);
    feed_str(r.xs, headers[0]);
    feed_str(r.xs, "<presence/>");
    CHECK(r.opens == 2 && r.elements == 2 && r.errors == 0);
    /* Errors after waking are still reported. */
    CHECK(xmlstream_hibernate(r.xs));
    CHECK(xmlstream_feed(r.xs, "<a></b>", 7) < 0);
    CHECK(r.errors == 1);
    rec_free(&r);
}

int main(void)
{
    TEST_RUN(test_splits);
    TEST_RUN(test_header);
    TEST_RUN(test_namespaces);
    TEST_RUN(test_escaping);
    TEST_RUN(test_restart);
    TEST_RUN(test_restricted);
    TEST_RUN(test_malformed);
    TEST_RUN(test_limits);
    TEST_RUN(test_close);
    TEST_RUN(test_error_reply);
    TEST_RUN(test_tree);
    TEST_RUN(test_hibernate);
    return TEST_DONE();
}
