/* xmlstream.c — the XMPP XML stream parser on libexpat (see xmlstream.h for the contract).
 *
 * One expat parser per stream, namespace processing on with separator 0x1F (a control character,
 * which XML forbids in names and URIs, so "URI\x1flocal" splits unambiguously). Byte accounting
 * uses expat's absolute byte index (bytes fed since the last reset):
 *   - `mark` is where the pending unit began: 0 before the stream header, the end of the last
 *     event at stream level between stanzas (whitespace moves it, so keepalives never count), and
 *     the '<' of the current top-level element inside one;
 *   - `fed - mark` may never exceed max_element, checked in every handler and after every slice
 *     fed, so an oversized element fails while it is still incomplete. */

/* Debian's expat.h declares the billion-laughs setters only under XML_DTD, which its library is
 * built with (XML_GetFeatureList reports XML_DTD) but which expat.h itself does not define. */
#ifndef XML_DTD
#define XML_DTD 1
#endif
#include "isthmus/xmlstream.h"

#include <assert.h>
#include <expat.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NS_SEP '\x1f'
/* Bytes handed to expat per XML_Parse call: bounds how far parsing runs before the size check. */
#define FEED_SLICE 4096
/* A flushed text buffer larger than this is released rather than kept for the next stanza. */
#define TEXT_KEEP 1024

enum xs_state { XS_HEADER, XS_OPEN, XS_CLOSED };

struct xmlstream {
    XML_Parser p;
    struct xmlstream_cb cb;
    void *ud;
    size_t max_element;
    unsigned max_depth;

    enum xs_state state;
    bool dead;
    bool parsing;         /* inside XML_Parse, so callbacks run from a handler */
    bool restart_pending; /* xmlstream_restart() was called from a callback */
    uint64_t restart_at;  /* absolute byte index just past the triggering event */
    const char *err_cond; /* set by a handler; reported once XML_Parse returns */
    const char *err_text;

    unsigned level; /* open elements, the stream element included */
    uint64_t fed;   /* bytes fed since the last reset */
    uint64_t mark;
    char *default_ns;    /* the stream header's default namespace, while it is parsed */
    struct buf decls;    /* the stream header's namespace declarations, while it is parsed */
    char *resume_header; /* a start tag equivalent to the stream header, to wake up with */
    bool priming;        /* parsing resume_header after xmlstream_hibernate() */
    struct stanza *root; /* top-level element under construction */
    struct stanza *cur;
    struct buf text; /* character data not yet attached to cur */
};

static void fail(struct xmlstream *xs, const char *cond, const char *text)
{
    if (!xs->err_cond) {
        xs->err_cond = cond;
        xs->err_text = text;
    }
    XML_StopParser(xs->p, XML_FALSE);
}

static bool stopped(const struct xmlstream *xs)
{
    return xs->err_cond || xs->restart_pending || xs->state == XS_CLOSED;
}

static uint64_t event_end(const struct xmlstream *xs)
{
    XML_Index idx = XML_GetCurrentByteIndex(xs->p);
    int count = XML_GetCurrentByteCount(xs->p);
    return (uint64_t)(idx < 0 ? 0 : idx) + (uint64_t)(count < 0 ? 0 : count);
}

/* Fails with policy-violation when the pending unit, up to the end of the current event, is
 * larger than max_element. Returns true when it did. */
static bool over_limit(struct xmlstream *xs, uint64_t end)
{
    if (end > xs->mark && end - xs->mark > xs->max_element) {
        fail(xs, "policy-violation", "element too large");
        return true;
    }
    return false;
}

/* Splits expat's "URI\x1flocal" name; *ns_len is 0 (and *local the whole name) without a URI. */
static const char *split_name(const char *name, size_t *ns_len)
{
    const char *sep = strchr(name, NS_SEP);
    *ns_len = sep ? (size_t)(sep - name) : 0;
    return sep ? sep + 1 : name;
}

/* With namespace triplets on, names are "URI\x1flocal\x1fprefix": copies the local part. */
static char *local_part(const char *name, const char **prefix)
{
    size_t ns_len;
    const char *local = split_name(name, &ns_len);
    const char *sep = ns_len ? strchr(local, NS_SEP) : NULL;
    if (prefix)
        *prefix = sep ? sep + 1 : NULL;
    return sep ? xstrndup(local, (size_t)(sep - local)) : xstrdup(local);
}

static struct stanza *make_elem(const char *name, const char **atts)
{
    size_t ns_len;
    split_name(name, &ns_len);
    struct stanza *st = xcalloc(1, sizeof(*st));
    st->kind = STANZA_ELEM;
    st->name = local_part(name, NULL);
    st->ns = xstrndup(name, ns_len);
    size_t n = 0;
    while (atts[2 * n])
        n++;
    if (!n)
        return st;
    st->attrs = xmalloc(2 * n * sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *an = atts[2 * i];
        split_name(an, &ns_len);
        char *alocal = local_part(an, NULL);
        if (!ns_len)
            st->attrs[2 * i] = xstrdup(alocal);
        else if (ns_len == strlen(NS_XML) && memcmp(an, NS_XML, ns_len) == 0)
            st->attrs[2 * i] = xasprintf("xml:%s", alocal);
        else
            st->attrs[2 * i] = xasprintf("%.*s %s", (int)ns_len, an, alocal);
        free(alocal);
        st->attrs[2 * i + 1] = xstrdup(atts[2 * i + 1]);
    }
    st->nattrs = n;
    return st;
}

static void flush_text(struct xmlstream *xs)
{
    if (!xs->text.len)
        return;
    if (xs->cur)
        stanza_add_text(xs->cur, xs->text.data, xs->text.len);
    if (xs->text.cap > TEXT_KEEP)
        buf_fini(&xs->text);
    else
        buf_reset(&xs->text);
}

static void open_stream(struct xmlstream *xs, const char *name, const char **atts)
{
    size_t ns_len;
    split_name(name, &ns_len);
    const char *prefix;
    char *local = local_part(name, &prefix);
    bool is_stream = strcmp(local, "stream") == 0;
    free(local);
    if (!is_stream) {
        fail(xs, "not-well-formed", "the first element must be <stream:stream>");
        return;
    }
    /* RFC 6120 §4.9.3.9, §11.2 */
    if (ns_len != strlen(NS_STREAMS) || memcmp(name, NS_STREAMS, ns_len) != 0) {
        fail(xs, "invalid-namespace", "the stream namespace must be " NS_STREAMS);
        return;
    }
    if (over_limit(xs, event_end(xs)))
        return;
    xs->state = XS_OPEN;
    xs->level = 1;
    xs->mark = event_end(xs);
    if (xs->priming)
        return;
    free(xs->resume_header);
    xs->resume_header = xasprintf("<%s%sstream%s>", prefix ? prefix : "", prefix ? ":" : "",
                                  xs->decls.data ? xs->decls.data : "");
    buf_fini(&xs->decls);
    struct stanza *header = make_elem(name, atts);
    xs->cb.open(xs->ud, header, xs->default_ns ? xs->default_ns : "");
    stanza_free(header);
    free(xs->default_ns);
    xs->default_ns = NULL;
}

static void XMLCALL on_start(void *ud, const XML_Char *name, const XML_Char **atts)
{
    struct xmlstream *xs = ud;
    if (stopped(xs))
        return;
    if (xs->state == XS_HEADER) {
        open_stream(xs, name, atts);
        return;
    }
    if (xs->level > xs->max_depth) {
        fail(xs, "policy-violation", "elements nested too deeply");
        return;
    }
    if (xs->level == 1)
        xs->mark = (uint64_t)XML_GetCurrentByteIndex(xs->p);
    if (over_limit(xs, event_end(xs)))
        return;
    flush_text(xs);
    struct stanza *el = make_elem(name, atts);
    if (xs->cur)
        stanza_append(xs->cur, el);
    else
        xs->root = el;
    xs->cur = el;
    xs->level++;
}

static void XMLCALL on_end(void *ud, const XML_Char *name)
{
    struct xmlstream *xs = ud;
    (void)name;
    if (stopped(xs))
        return;
    if (xs->level == 1) {
        xs->level = 0;
        xs->state = XS_CLOSED;
        xs->cb.close(xs->ud);
        /* Nothing may follow </stream:stream>: the rest of the input is ignored. */
        if (!xs->restart_pending)
            XML_StopParser(xs->p, XML_FALSE);
        return;
    }
    uint64_t end = event_end(xs);
    if (over_limit(xs, end))
        return;
    flush_text(xs);
    xs->level--;
    if (xs->level > 1) {
        xs->cur = xs->cur->parent;
        return;
    }
    struct stanza *el = xs->root;
    xs->root = xs->cur = NULL;
    xs->mark = end;
    xs->cb.element(xs->ud, el);
}

static bool is_xml_space(const char *s, int len)
{
    for (int i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return false;
    return true;
}

static void XMLCALL on_text(void *ud, const XML_Char *s, int len)
{
    struct xmlstream *xs = ud;
    if (stopped(xs) || len <= 0)
        return;
    uint64_t end = event_end(xs);
    if (xs->level <= 1) {
        /* RFC 6120 §4.7: only whitespace (keepalives) may appear between stanzas. */
        if (!is_xml_space(s, len))
            fail(xs, "not-well-formed", "text at stream level");
        else if (xs->level == 1)
            xs->mark = end;
        return;
    }
    if (over_limit(xs, end))
        return;
    buf_append(&xs->text, s, (size_t)len);
}

static void XMLCALL on_ns_start(void *ud, const XML_Char *prefix, const XML_Char *uri)
{
    struct xmlstream *xs = ud;
    if (stopped(xs) || xs->state != XS_HEADER || xs->priming)
        return;
    /* Remembered so that a hibernated stream can be woken with an equivalent header. */
    buf_puts(&xs->decls, prefix ? " xmlns:" : " xmlns");
    if (prefix)
        buf_puts(&xs->decls, prefix);
    buf_puts(&xs->decls, "='");
    if (uri)
        xml_escape(&xs->decls, uri, strlen(uri), true);
    buf_putc(&xs->decls, '\'');
    if (prefix)
        return;
    free(xs->default_ns);
    xs->default_ns = xstrdup(uri ? uri : "");
}

/* RFC 6120 §11.1: no DTD, entity declaration, processing instruction or comment. */
static void XMLCALL on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int has_internal_subset)
{
    (void)name, (void)sysid, (void)pubid, (void)has_internal_subset;
    fail(ud, "restricted-xml", "DTDs are not allowed");
}

static void XMLCALL on_entity_decl(void *ud, const XML_Char *name, int is_param,
                                   const XML_Char *value, int value_len, const XML_Char *base,
                                   const XML_Char *sysid, const XML_Char *pubid,
                                   const XML_Char *notation)
{
    (void)name, (void)is_param, (void)value, (void)value_len, (void)base, (void)sysid;
    (void)pubid, (void)notation;
    fail(ud, "restricted-xml", "entity declarations are not allowed");
}

static void XMLCALL on_pi(void *ud, const XML_Char *target, const XML_Char *data)
{
    (void)target, (void)data;
    fail(ud, "restricted-xml", "processing instructions are not allowed");
}

static void XMLCALL on_comment(void *ud, const XML_Char *data)
{
    (void)data;
    fail(ud, "restricted-xml", "comments are not allowed");
}

/* RFC 6120 §11.6: UTF-8 only. */
static void XMLCALL on_xml_decl(void *ud, const XML_Char *version, const XML_Char *encoding,
                                int standalone)
{
    (void)version, (void)standalone;
    if (encoding && strcasecmp(encoding, "UTF-8") != 0)
        fail(ud, "unsupported-encoding", "only UTF-8 is supported");
}

/* Everything XML_ParserReset forgets; called after create and after every reset
 * (shared/research/libraries.md §4). */
static void setup(struct xmlstream *xs)
{
    XML_Parser p = xs->p;
    unsigned long salt;
    XML_SetUserData(p, xs);
    XML_SetReturnNSTriplet(p, XML_TRUE); /* prefixes, to rebuild the header after hibernation */
    XML_SetElementHandler(p, on_start, on_end);
    XML_SetCharacterDataHandler(p, on_text);
    XML_SetStartNamespaceDeclHandler(p, on_ns_start);
    XML_SetStartDoctypeDeclHandler(p, on_doctype);
    XML_SetEntityDeclHandler(p, on_entity_decl);
    XML_SetProcessingInstructionHandler(p, on_pi);
    XML_SetCommentHandler(p, on_comment);
    XML_SetXmlDeclHandler(p, on_xml_decl);
    XML_SetParamEntityParsing(p, XML_PARAM_ENTITY_PARSING_NEVER);
    /* Deferral would hold back a stanza arriving in 1-2 byte pieces; our own max_element cap
     * stands in for the quadratic-reparse protection it provides. expat.h says 2.5.0, but
     * Debian 12's 2.5.0-1+deb12u2 and later backport this call (CVE-2023-52425), and the
     * version macros cannot tell, so it is called unconditionally: building on an expat without
     * it fails at link time instead of silently stalling streams. */
    XML_SetReparseDeferralEnabled(p, XML_FALSE);
    /* A second line of defence: the DOCTYPE is rejected before any entity can be declared. */
    XML_SetBillionLaughsAttackProtectionMaximumAmplification(p, 10.0f);
    XML_SetBillionLaughsAttackProtectionActivationThreshold(p, 1u << 20);
    random_bytes(&salt, sizeof(salt));
    XML_SetHashSalt(p, salt);
}

static void clear_state(struct xmlstream *xs)
{
    stanza_free(xs->root);
    xs->root = xs->cur = NULL;
    buf_fini(&xs->text);
    free(xs->default_ns);
    xs->default_ns = NULL;
    buf_fini(&xs->decls);
    free(xs->resume_header);
    xs->resume_header = NULL;
    xs->priming = false;
    xs->state = XS_HEADER;
    xs->level = 0;
    xs->fed = 0;
    xs->mark = 0;
    xs->restart_pending = false;
    xs->restart_at = 0;
}

static void reset(struct xmlstream *xs)
{
    clear_state(xs);
    if (!xs->p || XML_ParserReset(xs->p, "UTF-8") != XML_TRUE) {
        /* Cannot happen outside a handler on a root parser; start over regardless. */
        XML_ParserFree(xs->p);
        char sep = NS_SEP;
        xs->p = XML_ParserCreate_MM("UTF-8", NULL, &sep);
        if (!xs->p)
            abort();
    }
    setup(xs);
}

struct xmlstream *xmlstream_new(const struct xmlstream_cb *cb, void *ud, size_t max_element,
                                unsigned max_depth)
{
    struct xmlstream *xs = xcalloc(1, sizeof(*xs));
    char sep = NS_SEP;
    xs->cb = *cb;
    xs->ud = ud;
    xs->max_element = max_element;
    xs->max_depth = max_depth;
    /* The encoding argument overrides any declaration in the document: RFC 6120 §11.6. */
    xs->p = XML_ParserCreate_MM("UTF-8", NULL, &sep);
    if (!xs->p) {
        free(xs);
        return NULL;
    }
    buf_init(&xs->text);
    clear_state(xs);
    setup(xs);
    return xs;
}

void xmlstream_free(struct xmlstream *xs)
{
    if (!xs)
        return;
    clear_state(xs);
    if (xs->p)
        XML_ParserFree(xs->p);
    free(xs);
}

void xmlstream_set_ud(struct xmlstream *xs, void *ud)
{
    xs->ud = ud;
}

/* Idle streams keep ~10 KB in expat's buffers and tables (shared/research/libraries.md §4);
 * between stanzas nothing in them is needed but the namespace context of the stream header,
 * which resume_header re-creates. */
bool xmlstream_hibernate(struct xmlstream *xs)
{
    if (!xs || xs->dead || xs->parsing || !xs->p || xs->state != XS_OPEN || xs->level != 1 ||
        xs->root || xs->text.len || xs->fed != xs->mark || !xs->resume_header)
        return false;
    XML_ParserFree(xs->p);
    xs->p = NULL;
    return true;
}

/* Rebuilds the parser of a hibernated stream: parses resume_header without callbacks. */
static int wake(struct xmlstream *xs)
{
    char sep = NS_SEP;
    xs->p = XML_ParserCreate_MM("UTF-8", NULL, &sep);
    if (!xs->p)
        abort();
    setup(xs);
    xs->state = XS_HEADER;
    xs->priming = true;
    size_t n = strlen(xs->resume_header);
    xs->parsing = true;
    enum XML_Status st = XML_Parse(xs->p, xs->resume_header, (int)n, XML_FALSE);
    xs->parsing = false;
    xs->priming = false;
    if (st != XML_STATUS_OK || xs->err_cond || xs->state != XS_OPEN)
        return -1;
    xs->fed = xs->mark = n;
    return 0;
}

static ssize_t die(struct xmlstream *xs, const char *cond, const char *text)
{
    xs->dead = true;
    stanza_free(xs->root);
    xs->root = xs->cur = NULL;
    buf_fini(&xs->text);
    xs->cb.error(xs->ud, cond, text);
    return -1;
}

ssize_t xmlstream_feed(struct xmlstream *xs, const char *data, size_t len)
{
    if (xs->dead)
        return -1;
    assert(!xs->parsing);
    if (xs->state == XS_CLOSED)
        return (ssize_t)len;
    if (!xs->p && wake(xs) < 0)
        return die(xs, "internal-server-error", "cannot resume the stream parser");
    uint64_t base = xs->fed;
    size_t off = 0;
    while (off < len || len == 0) {
        size_t n = len - off < FEED_SLICE ? len - off : FEED_SLICE;
        xs->fed += n;
        xs->parsing = true;
        enum XML_Status st = XML_Parse(xs->p, data + off, (int)n, XML_FALSE);
        xs->parsing = false;
        off += n;
        if (xs->err_cond)
            return die(xs, xs->err_cond, xs->err_text);
        if (xs->restart_pending) {
            uint64_t used = xs->restart_at - base;
            reset(xs);
            return (ssize_t)(used < len ? used : len);
        }
        if (xs->state == XS_CLOSED)
            return (ssize_t)len;
        if (st != XML_STATUS_OK)
            return die(xs, "not-well-formed", XML_ErrorString(XML_GetErrorCode(xs->p)));
        if (xs->fed - xs->mark > xs->max_element)
            return die(xs, "policy-violation", "element too large");
        if (len == 0)
            break;
    }
    return (ssize_t)len;
}

void xmlstream_restart(struct xmlstream *xs)
{
    if (!xs || xs->dead)
        return;
    if (!xs->parsing) {
        reset(xs);
        return;
    }
    if (xs->restart_pending || xs->err_cond)
        return;
    xs->restart_pending = true;
    xs->restart_at = event_end(xs);
    XML_StopParser(xs->p, XML_TRUE);
}

int xmlstream_is_open(const struct xmlstream *xs)
{
    return xs && !xs->dead && xs->state == XS_OPEN;
}

/* ---- one stored element ---- */

struct parse_one {
    struct stanza *el;
    bool failed;
};

static void one_open(void *ud, const struct stanza *header, const char *default_ns)
{
    (void)ud, (void)header, (void)default_ns;
}

static void one_element(void *ud, struct stanza *el)
{
    struct parse_one *p = ud;
    if (p->el)
        p->failed = true; /* more than one element */
    stanza_free(p->el);
    p->el = el;
}

static void one_close(void *ud)
{
    (void)ud;
}

static void one_error(void *ud, const char *condition, const char *text)
{
    struct parse_one *p = ud;
    (void)condition, (void)text;
    p->failed = true;
}

struct stanza *xmlstream_parse_element(const char *xml, size_t len, unsigned max_depth)
{
    static const struct xmlstream_cb cb = {one_open, one_element, one_close, one_error};
    static const char header[] = "<stream:stream xmlns='" NS_CLIENT "' xmlns:stream='" NS_STREAMS
                                 "'>";
    struct parse_one p = {NULL, false};
    struct xmlstream *xs = xmlstream_new(&cb, &p, len + sizeof header, max_depth + 1);
    if (xmlstream_feed(xs, header, sizeof header - 1) < 0 || xmlstream_feed(xs, xml, len) < 0)
        p.failed = true;
    xmlstream_free(xs);
    if (p.failed) {
        stanza_free(p.el);
        return NULL;
    }
    return p.el;
}

const char *xmlstream_check_header(const struct stanza *header, const char *default_ns,
                                   const char *content_ns, const char **text)
{
    /* RFC 6120 §4.8.2: the content namespace fixes what kind of stream this is. */
    if (strcmp(default_ns, content_ns) != 0) {
        *text = "Wrong content namespace for this port";
        return "invalid-namespace";
    }
    /* RFC 6120 §4.7.5: we speak 1.0; a missing version means a pre-RFC stream. */
    const char *version = stanza_attr(header, "version");
    if (!version || strncmp(version, "1.", 2) != 0) {
        *text = "This server requires XMPP version 1.0";
        return "unsupported-version";
    }
    return NULL;
}
