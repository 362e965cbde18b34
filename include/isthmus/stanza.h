/* stanza.h — a small XML element tree for stanzas, with builders, accessors and serialization.
 *
 * Ownership: functions returning `const char *` or `struct stanza *` from an existing tree lend a
 * pointer that lives as long as the tree; `char *` results are the caller's to free().
 * Namespaces: every element stores its own namespace URI (never NULL once parsed; builders may pass
 * NULL to inherit the parent's at insertion time). Attribute names are stored as written in the
 * document, except namespaced attributes, which are stored as "URI local" ... for the one that
 * matters, xml:lang, the name is exactly "xml:lang". No attribute named "xmlns" or "xmlns:*" is
 * kept: namespaces are element properties, and serialization emits xmlns where needed. */
#ifndef ISTHMUS_STANZA_H
#define ISTHMUS_STANZA_H

#include <stdbool.h>
#include <stddef.h>

#include "isthmus/util.h"

#define NS_STREAMS "http://etherx.jabber.org/streams"
#define NS_CLIENT "jabber:client"
#define NS_SERVER "jabber:server"
#define NS_COMPONENT "jabber:component:accept"
#define NS_STREAM_ERRORS "urn:ietf:params:xml:ns:xmpp-streams"
#define NS_STANZA_ERRORS "urn:ietf:params:xml:ns:xmpp-stanzas"
#define NS_TLS "urn:ietf:params:xml:ns:xmpp-tls"
#define NS_SASL "urn:ietf:params:xml:ns:xmpp-sasl"
#define NS_BIND "urn:ietf:params:xml:ns:xmpp-bind"
#define NS_SESSION "urn:ietf:params:xml:ns:xmpp-session"
#define NS_XML "http://www.w3.org/XML/1998/namespace"

enum stanza_kind { STANZA_ELEM, STANZA_TEXT };

struct stanza {
    enum stanza_kind kind;
    char *name;   /* element local name (ELEM) */
    char *ns;     /* element namespace URI (ELEM) */
    char **attrs; /* name0, value0, name1, value1, ... (ELEM) */
    size_t nattrs;
    char *text;   /* TEXT: the character data (unescaped, NUL-terminated) */
    size_t text_len;
    struct stanza *parent, *first, *last, *next;
};

struct stanza *stanza_new(const char *name, const char *ns);
struct stanza *stanza_new_text(const char *text, size_t len);
void stanza_free(struct stanza *st); /* frees the subtree; detaches nothing: free roots only */
struct stanza *stanza_copy(const struct stanza *st);

const char *stanza_attr(const struct stanza *st, const char *name); /* NULL when absent */
void stanza_set_attr(struct stanza *st, const char *name, const char *value); /* NULL removes */

/* Appends a new child element and returns it (borrowed). ns NULL = the parent's namespace. */
struct stanza *stanza_add_child(struct stanza *parent, const char *name, const char *ns);
/* Appends character data (merged with a preceding text node). Returns parent, for chaining. */
struct stanza *stanza_add_text(struct stanza *parent, const char *text, size_t len);
/* Convenience: child element with text content. Returns the child. */
struct stanza *stanza_add_text_child(struct stanza *parent, const char *name, const char *ns,
                                     const char *text);
void stanza_append(struct stanza *parent, struct stanza *child); /* takes ownership of child */
void stanza_remove(struct stanza *child); /* unlinks from its parent; caller then owns it */

/* First child element matching name and ns (either may be NULL = any). */
struct stanza *stanza_child(const struct stanza *st, const char *name, const char *ns);
struct stanza *stanza_first_elem(const struct stanza *st);
struct stanza *stanza_next_elem(const struct stanza *st); /* next sibling element */
/* Concatenated direct text children; "" if none. Caller frees. */
char *stanza_text(const struct stanza *st);
/* Text of the first matching child element, or NULL when there is no such child. Caller frees. */
char *stanza_child_text(const struct stanza *st, const char *name, const char *ns);

/* Serializes st. parent_ns is the namespace in scope (e.g. NS_CLIENT for a stanza inside a c2s
 * stream); xmlns="..." is emitted only where an element's namespace differs from its parent's. */
void stanza_serialize(const struct stanza *st, const char *parent_ns, struct buf *out);
char *stanza_to_string(const struct stanza *st, const char *parent_ns);

/* Renames namespace `from` to `to` on st and every descendant element: stanzas cross between
 * jabber:client (inside the server), jabber:server (s2s) and jabber:component:accept. */
void stanza_rename_ns(struct stanza *st, const char *from, const char *to);

/* XEP-0359 §3.1: removes every <stanza-id by=BY/> from m's children — an id claiming to come
 * from BY's archive is believable only if BY added it. */
void stanza_strip_ids(struct stanza *m, const char *by);

/* Appends <stream:error><CONDITION/>[<text/>]</stream:error></stream:stream> (RFC 6120 §4.9). */
void xml_stream_error(struct buf *out, const char *condition, const char *text);

/* XML escaping of character data (&, <, >) or attribute values (also ", '). */
void xml_escape(struct buf *out, const char *s, size_t len, bool attr);

/* RFC 6120 §8.3: builds an error reply to `orig`: same name and id, to = orig's from, from =
 * orig's to, type="error", original children copied, then
 * <error type='TYPE'><CONDITION xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>[<text>]</error>.
 * TYPE is derived from the condition (RFC 6120 §8.3.3) when type is NULL. Caller frees. */
struct stanza *stanza_error_reply(const struct stanza *orig, const char *condition,
                                  const char *type, const char *text);
/* The RFC 6120 §8.3.3 default error type for a defined condition ("cancel", "modify", "auth",
 * "wait"); "cancel" for unknown ones. */
const char *stanza_error_type(const char *condition);
/* A result IQ for an iq get/set: type="result", same id, to/from swapped. Caller frees. */
struct stanza *stanza_iq_result(const struct stanza *iq);

#endif
