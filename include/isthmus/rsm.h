/* rsm.h — XEP-0059 Result Set Management: reading the <set/> of a request and writing the <set/>
 * of a reply, for any protocol that pages through a list (MAM, disco items). */
#ifndef ISTHMUS_RSM_H
#define ISTHMUS_RSM_H

#include "isthmus/stanza.h"

#define NS_RSM "http://jabber.org/protocol/rsm"

struct rsm_request {
    long max;     /* -1: absent */
    char *after;  /* NULL: absent */
    char *before; /* NULL: absent; "": an empty <before/>, the last page (XEP-0059 §2.5) */
    long index;   /* -1: absent (XEP-0059 §2.6) */
};

/* Reads the <set xmlns='http://jabber.org/protocol/rsm'/> child of payload. Returns 0 with req
 * filled in (everything absent when there is no <set/>), or -1 for a malformed one — a <max/> or
 * <index/> that is not a non-negative integer, an empty <after/> — which the caller answers with
 * bad-request. req is always left in a state rsm_request_fini() accepts. */
int rsm_parse(const struct stanza *payload, struct rsm_request *req);
void rsm_request_fini(struct rsm_request *req);

/* Appends the reply <set/> to parent and returns it (borrowed): <first index='first_index'/>
 * (index omitted when negative) and <last/> when the page has items (first and last not NULL),
 * <count/> when count >= 0 (XEP-0059 §2.1, §2.7). */
struct stanza *rsm_add_reply(struct stanza *parent, const char *first, long first_index,
                             const char *last, long count);

#endif
