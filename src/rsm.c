/* XEP-0059 Result Set Management (see rsm.h). */
#include "isthmus/rsm.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A non-negative decimal integer, nothing else around it; values past LONG_MAX saturate. */
static int parse_count(const char *s, long *out)
{
    if (!*s)
        return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return -1;
    errno = 0;
    long v = strtol(s, NULL, 10);
    *out = errno == ERANGE ? LONG_MAX : v;
    return 0;
}

int rsm_parse(const struct stanza *payload, struct rsm_request *req)
{
    *req = (struct rsm_request){.max = -1, .index = -1};
    const struct stanza *set = stanza_child(payload, "set", NS_RSM);
    if (!set)
        return 0;
    int rc = 0;
    for (const struct stanza *el = stanza_first_elem(set); el && rc == 0;
         el = stanza_next_elem(el)) {
        if (strcmp(el->ns, NS_RSM) != 0)
            continue;
        char *text = stanza_text(el);
        if (strcmp(el->name, "max") == 0) {
            rc = parse_count(text, &req->max);
        } else if (strcmp(el->name, "index") == 0) {
            rc = parse_count(text, &req->index);
        } else if (strcmp(el->name, "after") == 0) {
            /* XEP-0059 §2.2: after names an item; an empty one names none. */
            if (!*text || req->after)
                rc = -1;
            else
                req->after = text, text = NULL;
        } else if (strcmp(el->name, "before") == 0) {
            if (req->before)
                rc = -1;
            else
                req->before = text, text = NULL;
        }
        free(text);
    }
    return rc;
}

void rsm_request_fini(struct rsm_request *req)
{
    free(req->after);
    free(req->before);
    req->after = req->before = NULL;
}

struct stanza *rsm_add_reply(struct stanza *parent, const char *first, long first_index,
                             const char *last, long count)
{
    struct stanza *set = stanza_add_child(parent, "set", NS_RSM);
    if (first && last) {
        struct stanza *f = stanza_add_text_child(set, "first", NULL, first);
        if (first_index >= 0) {
            char n[24];
            snprintf(n, sizeof n, "%ld", first_index);
            stanza_set_attr(f, "index", n);
        }
        stanza_add_text_child(set, "last", NULL, last);
    }
    if (count >= 0) {
        char n[24];
        snprintf(n, sizeof n, "%ld", count);
        stanza_add_text_child(set, "count", NULL, n);
    }
    return set;
}
