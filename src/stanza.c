/* stanza.c — the element tree behind every stanza: builders, accessors, serialization and the
 * RFC 6120 §8.3 error-reply helpers. */
#include "isthmus/stanza.h"

#include <stdlib.h>
#include <string.h>

struct stanza *stanza_new(const char *name, const char *ns)
{
    struct stanza *st = xcalloc(1, sizeof(*st));
    st->kind = STANZA_ELEM;
    st->name = xstrdup(name ? name : "");
    st->ns = xstrdup(ns);
    return st;
}

struct stanza *stanza_new_text(const char *text, size_t len)
{
    struct stanza *st = xcalloc(1, sizeof(*st));
    st->kind = STANZA_TEXT;
    st->text = xstrndup(text ? text : "", text ? len : 0);
    st->text_len = text ? len : 0;
    return st;
}

static void free_node(struct stanza *st)
{
    free(st->name);
    free(st->ns);
    for (size_t i = 0; i < 2 * st->nattrs; i++)
        free(st->attrs[i]);
    free(st->attrs);
    free(st->text);
    free(st);
}

/* Iterative, so that a deep builder-made tree cannot exhaust the stack. */
void stanza_free(struct stanza *st)
{
    if (!st)
        return;
    struct stanza *top = st->parent, *cur = st;
    while (cur) {
        if (cur->first) {
            struct stanza *c = cur->first;
            cur->first = c->next;
            cur = c;
            continue;
        }
        struct stanza *up = cur->parent;
        free_node(cur);
        cur = up == top ? NULL : up;
    }
}

struct stanza *stanza_copy(const struct stanza *st)
{
    if (!st)
        return NULL;
    struct stanza *cp;
    if (st->kind == STANZA_TEXT)
        return stanza_new_text(st->text, st->text_len);
    cp = stanza_new(st->name, st->ns);
    if (st->nattrs) {
        cp->attrs = xmalloc(2 * st->nattrs * sizeof(char *));
        for (size_t i = 0; i < 2 * st->nattrs; i++)
            cp->attrs[i] = xstrdup(st->attrs[i]);
        cp->nattrs = st->nattrs;
    }
    for (const struct stanza *c = st->first; c; c = c->next) {
        struct stanza *cc = stanza_copy(c);
        cc->parent = cp;
        if (cp->last)
            cp->last->next = cc;
        else
            cp->first = cc;
        cp->last = cc;
    }
    return cp;
}

const char *stanza_attr(const struct stanza *st, const char *name)
{
    if (!st || st->kind != STANZA_ELEM || !name)
        return NULL;
    for (size_t i = 0; i < st->nattrs; i++)
        if (strcmp(st->attrs[2 * i], name) == 0)
            return st->attrs[2 * i + 1];
    return NULL;
}

/* Namespaces are element properties: setting "xmlns" changes the element's namespace, and
 * "xmlns:*" declarations are dropped (serialization declares what it needs). */
void stanza_set_attr(struct stanza *st, const char *name, const char *value)
{
    if (!st || st->kind != STANZA_ELEM || !name)
        return;
    if (strcmp(name, "xmlns") == 0) {
        if (value) {
            free(st->ns);
            st->ns = xstrdup(value);
        }
        return;
    }
    if (strncmp(name, "xmlns:", 6) == 0)
        return;
    for (size_t i = 0; i < st->nattrs; i++) {
        if (strcmp(st->attrs[2 * i], name) != 0)
            continue;
        if (value) {
            char *v = xstrdup(value);
            free(st->attrs[2 * i + 1]);
            st->attrs[2 * i + 1] = v;
        } else {
            free(st->attrs[2 * i]);
            free(st->attrs[2 * i + 1]);
            memmove(&st->attrs[2 * i], &st->attrs[2 * i + 2],
                    2 * (st->nattrs - i - 1) * sizeof(char *));
            st->nattrs--;
        }
        return;
    }
    if (!value)
        return;
    st->attrs = xrealloc(st->attrs, 2 * (st->nattrs + 1) * sizeof(char *));
    st->attrs[2 * st->nattrs] = xstrdup(name);
    st->attrs[2 * st->nattrs + 1] = xstrdup(value);
    st->nattrs++;
}

/* Elements built with ns NULL take the namespace in scope where they are inserted. */
static void inherit_ns(struct stanza *st, const char *ns)
{
    if (st->kind != STANZA_ELEM)
        return;
    if (!st->ns)
        st->ns = xstrdup(ns);
    if (!st->ns)
        return;
    for (struct stanza *c = st->first; c; c = c->next)
        inherit_ns(c, st->ns);
}

void stanza_append(struct stanza *parent, struct stanza *child)
{
    if (!parent || !child)
        return;
    if (child->kind == STANZA_TEXT && parent->last && parent->last->kind == STANZA_TEXT) {
        stanza_add_text(parent, child->text, child->text_len);
        stanza_free(child);
        return;
    }
    inherit_ns(child, parent->ns);
    child->parent = parent;
    child->next = NULL;
    if (parent->last)
        parent->last->next = child;
    else
        parent->first = child;
    parent->last = child;
}

void stanza_remove(struct stanza *child)
{
    struct stanza *parent = child ? child->parent : NULL;
    if (!parent)
        return;
    struct stanza *prev = NULL;
    for (struct stanza *c = parent->first; c && c != child; c = c->next)
        prev = c;
    if (prev)
        prev->next = child->next;
    else
        parent->first = child->next;
    if (parent->last == child)
        parent->last = prev;
    child->parent = NULL;
    child->next = NULL;
}

struct stanza *stanza_add_child(struct stanza *parent, const char *name, const char *ns)
{
    struct stanza *c = stanza_new(name, ns ? ns : parent->ns);
    stanza_append(parent, c);
    return c;
}

struct stanza *stanza_add_text(struct stanza *parent, const char *text, size_t len)
{
    if (!parent || !text || !len)
        return parent;
    struct stanza *last = parent->last;
    if (last && last->kind == STANZA_TEXT) {
        last->text = xrealloc(last->text, last->text_len + len + 1);
        memcpy(last->text + last->text_len, text, len);
        last->text_len += len;
        last->text[last->text_len] = '\0';
        return parent;
    }
    struct stanza *t = stanza_new_text(text, len);
    t->parent = parent;
    if (last)
        last->next = t;
    else
        parent->first = t;
    parent->last = t;
    return parent;
}

struct stanza *stanza_add_text_child(struct stanza *parent, const char *name, const char *ns,
                                     const char *text)
{
    struct stanza *c = stanza_add_child(parent, name, ns);
    if (text)
        stanza_add_text(c, text, strlen(text));
    return c;
}

struct stanza *stanza_child(const struct stanza *st, const char *name, const char *ns)
{
    if (!st)
        return NULL;
    for (struct stanza *c = st->first; c; c = c->next) {
        if (c->kind != STANZA_ELEM)
            continue;
        if (name && strcmp(c->name, name) != 0)
            continue;
        if (ns && !str_eq(c->ns, ns))
            continue;
        return c;
    }
    return NULL;
}

struct stanza *stanza_first_elem(const struct stanza *st)
{
    return stanza_child(st, NULL, NULL);
}

struct stanza *stanza_next_elem(const struct stanza *st)
{
    if (!st)
        return NULL;
    for (struct stanza *c = st->next; c; c = c->next)
        if (c->kind == STANZA_ELEM)
            return c;
    return NULL;
}

char *stanza_text(const struct stanza *st)
{
    struct buf b;
    buf_init(&b);
    if (st && st->kind == STANZA_TEXT)
        buf_append(&b, st->text, st->text_len);
    for (const struct stanza *c = st ? st->first : NULL; c; c = c->next)
        if (c->kind == STANZA_TEXT)
            buf_append(&b, c->text, c->text_len);
    return buf_take(&b);
}

char *stanza_child_text(const struct stanza *st, const char *name, const char *ns)
{
    struct stanza *c = stanza_child(st, name, ns);
    return c ? stanza_text(c) : NULL;
}

/* Length of the UTF-8 sequence at s (1..4; 1 for a stray byte); *ok tells whether it is a
 * character XML 1.0 §2.2 allows (not bad UTF-8, a C0 control other than tab/LF/CR, U+FFFE or
 * U+FFFF). */
static size_t xml_char_len(const unsigned char *s, size_t avail, bool *ok)
{
    unsigned c = s[0];
    *ok = true;
    if (c < 0x80) {
        *ok = c >= 0x20 || c == '\t' || c == '\n' || c == '\r';
        return 1;
    }
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (n > avail || !utf8_valid((const char *)s, n)) {
        *ok = false;
        return 1;
    }
    if (n == 3 && c == 0xEF && s[1] == 0xBF && (s[2] == 0xBE || s[2] == 0xBF))
        *ok = false;
    return n;
}

/* Text that is not a valid XML character becomes U+FFFD, so the output always parses. Tab, LF
 * and CR are escaped in attribute values and CR in text, so that they survive normalization
 * (XML 1.0 §2.11, §3.3.3). */
void xml_escape(struct buf *out, const char *s, size_t len, bool attr)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    buf_reserve(out, len);
    while (i < len) {
        const char *rep = NULL;
        bool ok;
        size_t n = xml_char_len(p + i, len - i, &ok);
        if (!ok) {
            rep = "\xEF\xBF\xBD";
        } else if (n == 1) {
            switch (p[i]) {
            case '&':
                rep = "&amp;";
                break;
            case '<':
                rep = "&lt;";
                break;
            case '>':
                rep = "&gt;";
                break;
            case '\r':
                rep = "&#13;";
                break;
            case '"':
                rep = attr ? "&quot;" : NULL;
                break;
            case '\'':
                rep = attr ? "&apos;" : NULL;
                break;
            case '\t':
                rep = attr ? "&#9;" : NULL;
                break;
            case '\n':
                rep = attr ? "&#10;" : NULL;
                break;
            default:
                break;
            }
        }
        if (!rep) {
            i += n;
            run += n;
            continue;
        }
        buf_append(out, s + i - run, run);
        buf_puts(out, rep);
        run = 0;
        i += n;
    }
    buf_append(out, s + i - run, run);
}

static void put_attr(struct buf *out, const char *name, const char *value)
{
    buf_putc(out, ' ');
    buf_puts(out, name);
    buf_puts(out, "='");
    xml_escape(out, value, strlen(value), true);
    buf_putc(out, '\'');
}

/* Attributes named "URI local" are written with a prefix declared on the element itself; the XML
 * namespace uses its reserved prefix "xml" (Namespaces in XML 1.0 §3). */
static void put_attrs(const struct stanza *st, struct buf *out)
{
    for (size_t i = 0; i < st->nattrs; i++) {
        const char *name = st->attrs[2 * i], *value = st->attrs[2 * i + 1];
        const char *sp = strrchr(name, ' ');
        if (strcmp(name, "xmlns") == 0 || strncmp(name, "xmlns:", 6) == 0)
            continue;
        if (!sp) {
            put_attr(out, name, value);
            continue;
        }
        size_t ulen = (size_t)(sp - name);
        if (ulen == strlen(NS_XML) && memcmp(name, NS_XML, ulen) == 0) {
            buf_printf(out, " xml:%s='", sp + 1);
        } else {
            buf_printf(out, " xmlns:ns%zu='", i);
            xml_escape(out, name, ulen, true);
            buf_printf(out, "' ns%zu:%s='", i, sp + 1);
        }
        xml_escape(out, value, strlen(value), true);
        buf_putc(out, '\'');
    }
}

void stanza_serialize(const struct stanza *st, const char *parent_ns, struct buf *out)
{
    if (!st)
        return;
    if (st->kind == STANZA_TEXT) {
        xml_escape(out, st->text, st->text_len, false);
        return;
    }
    const char *scope = parent_ns ? parent_ns : "";
    /* The XML namespace cannot be declared as a default; it has its reserved prefix. */
    const char *prefix = str_eq(st->ns, NS_XML) ? "xml:" : "";
    buf_putc(out, '<');
    buf_puts(out, prefix);
    buf_puts(out, st->name);
    if (!*prefix && st->ns && strcmp(st->ns, scope) != 0) {
        put_attr(out, "xmlns", st->ns);
        scope = st->ns;
    }
    put_attrs(st, out);
    if (!st->first) {
        buf_puts(out, "/>");
        return;
    }
    buf_putc(out, '>');
    for (const struct stanza *c = st->first; c; c = c->next)
        stanza_serialize(c, scope, out);
    buf_puts(out, "</");
    buf_puts(out, prefix);
    buf_puts(out, st->name);
    buf_putc(out, '>');
}

char *stanza_to_string(const struct stanza *st, const char *parent_ns)
{
    struct buf b;
    buf_init(&b);
    stanza_serialize(st, parent_ns, &b);
    return buf_take(&b);
}

/* RFC 6120 §8.3.3: each defined condition with its usual error type. */
static const char *const error_types[][2] = {
    {"bad-request", "modify"},
    {"conflict", "cancel"},
    {"feature-not-implemented", "cancel"},
    {"forbidden", "auth"},
    {"gone", "cancel"},
    {"internal-server-error", "cancel"},
    {"item-not-found", "cancel"},
    {"jid-malformed", "modify"},
    {"not-acceptable", "modify"},
    {"not-allowed", "cancel"},
    {"not-authorized", "auth"},
    {"policy-violation", "modify"},
    {"recipient-unavailable", "wait"},
    {"redirect", "modify"},
    {"registration-required", "auth"},
    {"remote-server-not-found", "cancel"},
    {"remote-server-timeout", "wait"},
    {"resource-constraint", "wait"},
    {"service-unavailable", "cancel"},
    {"subscription-required", "auth"},
    {"undefined-condition", "cancel"},
    {"unexpected-request", "wait"},
};

const char *stanza_error_type(const char *condition)
{
    for (size_t i = 0; condition && i < ARRAY_LEN(error_types); i++)
        if (strcmp(condition, error_types[i][0]) == 0)
            return error_types[i][1];
    return "cancel";
}

/* The reply skeleton shared by errors and results: same element and id, addresses swapped. */
static struct stanza *reply_to(const struct stanza *orig, const char *type)
{
    struct stanza *r = stanza_new(orig->name, orig->ns);
    stanza_set_attr(r, "id", stanza_attr(orig, "id"));
    stanza_set_attr(r, "to", stanza_attr(orig, "from"));
    stanza_set_attr(r, "from", stanza_attr(orig, "to"));
    stanza_set_attr(r, "type", type);
    return r;
}

struct stanza *stanza_error_reply(const struct stanza *orig, const char *condition,
                                  const char *type, const char *text)
{
    if (!orig || orig->kind != STANZA_ELEM)
        return NULL;
    if (!condition)
        condition = "undefined-condition";
    struct stanza *r = reply_to(orig, "error");
    for (const struct stanza *c = orig->first; c; c = c->next)
        stanza_append(r, stanza_copy(c));
    struct stanza *err = stanza_add_child(r, "error", NULL);
    stanza_set_attr(err, "type", type ? type : stanza_error_type(condition));
    stanza_add_child(err, condition, NS_STANZA_ERRORS);
    if (text)
        stanza_add_text_child(err, "text", NS_STANZA_ERRORS, text);
    return r;
}

struct stanza *stanza_iq_result(const struct stanza *iq)
{
    if (!iq || iq->kind != STANZA_ELEM)
        return NULL;
    return reply_to(iq, "result");
}

void stanza_rename_ns(struct stanza *st, const char *from, const char *to)
{
    if (st->kind != STANZA_ELEM)
        return;
    if (strcmp(st->ns, from) == 0) {
        free(st->ns);
        st->ns = xstrdup(to);
    }
    for (struct stanza *c = st->first; c; c = c->next)
        stanza_rename_ns(c, from, to);
}

void stanza_strip_ids(struct stanza *m, const char *by)
{
    struct stanza *el = stanza_first_elem(m);
    while (el) {
        struct stanza *next = stanza_next_elem(el);
        if (strcmp(el->name, "stanza-id") == 0 && strcmp(el->ns, "urn:xmpp:sid:0") == 0 &&
            str_eq(stanza_attr(el, "by"), by)) {
            stanza_remove(el);
            stanza_free(el);
        }
        el = next;
    }
}

void xml_stream_error(struct buf *out, const char *condition, const char *text)
{
    buf_printf(out, "<stream:error><%s xmlns='" NS_STREAM_ERRORS "'/>", condition);
    if (text) {
        buf_puts(out, "<text xmlns='" NS_STREAM_ERRORS "' xml:lang='en'>");
        xml_escape(out, text, strlen(text), false);
        buf_puts(out, "</text>");
    }
    buf_puts(out, "</stream:error></stream:stream>");
}
