/* xmlstream.h — the XMPP XML stream parser (libexpat), sans I/O.
 *
 * Feed it bytes as they arrive, in any split; it calls back with the stream header, each complete
 * top-level element (stanza or nonza, as a tree the callee owns), the closing </stream:stream>,
 * or one error. Enforces RFC 6120 §11 restricted XML (no DTD, entity declaration, processing
 * instruction or comment → "restricted-xml"), well-formedness ("not-well-formed"), the stream
 * namespace ("invalid-namespace"), a cap on the bytes of one top-level element ("policy-violation")
 * and on element depth ("policy-violation"). Reparse deferral is switched off (see
 * shared/research/libraries.md §4) and every parser setting is re-applied after each reset. */
#ifndef ISTHMUS_XMLSTREAM_H
#define ISTHMUS_XMLSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "isthmus/stanza.h"

struct xmlstream_cb {
    /* The <stream:stream> open tag. header is an element named "stream" in NS_STREAMS carrying
     * the tag's attributes (to, from, id, version, xml:lang); header->ns is the streams namespace.
     * default_ns is the stream's default namespace (e.g. "jabber:client"), or "" when none was
     * declared. Borrowed for the call only. */
    void (*open)(void *ud, const struct stanza *header, const char *default_ns);
    /* A complete top-level element. Takes ownership: the callee frees it. */
    void (*element)(void *ud, struct stanza *el);
    /* </stream:stream> was received. */
    void (*close)(void *ud);
    /* A stream-level error; condition is an RFC 6120 §4.9.3 name such as "not-well-formed".
     * After this the stream is dead: xmlstream_feed returns -1 and ignores further input. */
    void (*error)(void *ud, const char *condition, const char *text);
};

struct xmlstream;

/* max_element: the most bytes one top-level element (or the stream header) may take;
 * max_depth: nesting limit counted from the stream element (stream = 0, stanza = 1). */
struct xmlstream *xmlstream_new(const struct xmlstream_cb *cb, void *ud, size_t max_element,
                                unsigned max_depth);
void xmlstream_free(struct xmlstream *xs);
/* Later callbacks get ud; from inside a callback, the rest of the current feed included. */
void xmlstream_set_ud(struct xmlstream *xs, void *ud);

/* Feeds len bytes. Returns the number of bytes consumed — len, unless a callback asked for a
 * restart with xmlstream_restart(), in which case parsing stopped right after the element that
 * triggered it and the parser was reset: the caller feeds the remaining bytes again (after SASL)
 * or treats any remaining bytes as an error (after STARTTLS). Returns -1 once the stream is dead
 * (the error callback has been called, or was called earlier). Must not be called from a
 * callback. */
ssize_t xmlstream_feed(struct xmlstream *xs, const char *data, size_t len);

/* From inside the element callback: stop after the current element and reset the parser so the
 * next byte fed must start a new stream header (RFC 6120 §5.4.3.3, §6.4.6). From outside a
 * callback: reset at once. */
void xmlstream_restart(struct xmlstream *xs);

/* Releases the parser's memory (~10 KB) while the stream sits between stanzas with nothing
 * half-received; the next xmlstream_feed() rebuilds it transparently from a copy of the stream
 * header's namespace declarations. Returns true when memory was released. Not from a callback. */
bool xmlstream_hibernate(struct xmlstream *xs);

/* Parses one element serialized earlier (stored vCards, private XML, archived messages), in
 * the jabber:client namespace context. NULL when it is not exactly one well-formed element.
 * Caller frees. */
struct stanza *xmlstream_parse_element(const char *xml, size_t len, unsigned max_depth);

/* The checks every stream header gets (RFC 6120 §4.7.5, §4.8.2): the default namespace must
 * be content_ns and the version 1.x. Returns NULL, or the stream error condition with a
 * human-readable *text. */
const char *xmlstream_check_header(const struct stanza *header, const char *default_ns,
                                   const char *content_ns, const char **text);

/* True when a stream header has been received and the stream is not dead. */
int xmlstream_is_open(const struct xmlstream *xs);

#endif
