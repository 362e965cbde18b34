/* XEP-0198 stream management: counters, the unacknowledged queue, and ended sessions' final
 * counts. No I/O here; c2s.c speaks the protocol. */
#include "isthmus/sm.h"

#include <stdlib.h>
#include <string.h>

#include "isthmus/router.h"
#include "isthmus/util.h"

#define NS_DELAY "urn:xmpp:delay"
#define NS_CARBONS "urn:xmpp:carbons:2"
#define NS_MAM "urn:xmpp:mam:2"

struct sm_item {
    struct stanza *st;
    size_t bytes;
    int64_t queued_at;
    struct sm_item *next;
};

struct sm {
    char *id;
    unsigned timeout;
    uint32_t handled; /* stanzas received from the client */
    uint32_t acked;   /* our stanzas the client reported handled */
    struct sm_item *head, *tail;
    size_t count;
    size_t bytes;
    bool ack_requested;
};

struct sm *sm_new(const char *id, unsigned timeout)
{
    struct sm *sm = xcalloc(1, sizeof *sm);
    sm->id = xstrdup(id);
    sm->timeout = timeout;
    return sm;
}

void sm_free(struct sm *sm)
{
    if (!sm)
        return;
    while (sm->head) {
        struct sm_item *it = sm->head;
        sm->head = it->next;
        stanza_free(it->st);
        free(it);
    }
    free(sm->id);
    free(sm);
}

const char *sm_id(const struct sm *sm)
{
    return sm->id;
}

unsigned sm_timeout(const struct sm *sm)
{
    return sm->timeout;
}

void sm_received(struct sm *sm)
{
    sm->handled++; /* unsigned: wraps at 2^32 as XEP-0198 §4 requires */
}

uint32_t sm_handled(const struct sm *sm)
{
    return sm->handled;
}

void sm_push(struct sm *sm, const struct stanza *st, size_t bytes)
{
    struct sm_item *it = xcalloc(1, sizeof *it);
    it->st = stanza_copy(st);
    it->bytes = bytes;
    it->queued_at = wall_time();
    if (sm->tail)
        sm->tail->next = it;
    else
        sm->head = it;
    sm->tail = it;
    sm->count++;
    sm->bytes += it->bytes;
}

size_t sm_unacked(const struct sm *sm)
{
    return sm->count;
}

size_t sm_unacked_bytes(const struct sm *sm)
{
    return sm->bytes;
}

uint32_t sm_sent(const struct sm *sm)
{
    return sm->acked + (uint32_t)sm->count;
}

static void drop_head(struct sm *sm)
{
    struct sm_item *it = sm->head;
    sm->head = it->next;
    if (!sm->head)
        sm->tail = NULL;
    sm->count--;
    sm->bytes -= it->bytes;
    stanza_free(it->st);
    free(it);
}

int sm_ack(struct sm *sm, uint32_t h)
{
    uint32_t newly = h - sm->acked; /* modulo 2^32 */
    if (newly > sm->count)
        return -1;
    for (uint32_t i = 0; i < newly; i++)
        drop_head(sm);
    sm->acked = h;
    sm->ack_requested = false;
    return 0;
}

const struct stanza *sm_queued(const struct sm *sm, size_t i)
{
    struct sm_item *it = sm->head;
    while (it && i--)
        it = it->next;
    return it ? it->st : NULL;
}

struct stanza *sm_take(struct sm *sm, int64_t *queued_at)
{
    struct sm_item *it = sm->head;
    if (!it)
        return NULL;
    struct stanza *st = it->st;
    if (queued_at)
        *queued_at = it->queued_at;
    it->st = NULL;
    /* The stanza leaves the queue unacknowledged: 'acked' stays, as the peer never saw it. */
    sm->head = it->next;
    if (!sm->head)
        sm->tail = NULL;
    sm->count--;
    sm->bytes -= it->bytes;
    free(it);
    return st;
}

/* Copies made for this session only: carbons (XEP-0280) and archive query results (XEP-0313).
 * Their originals live elsewhere, so they are not redelivered. */
static bool session_private(const struct stanza *msg)
{
    return stanza_child(msg, "sent", NS_CARBONS) || stanza_child(msg, "received", NS_CARBONS) ||
           stanza_child(msg, "result", NS_MAM);
}

void sm_redeliver(struct sm *sm, const char *host)
{
    int64_t at;
    struct stanza *st;
    while ((st = sm_take(sm, &at))) {
        const char *type = stanza_attr(st, "type");
        if (strcmp(st->name, "message") == 0 && !str_eq(type, "error") &&
            stanza_attr(st, "to") && !session_private(st)) {
            if (!stanza_child(st, "delay", NS_DELAY)) {
                /* XEP-0198 §5 asks for the original delivery time (XEP-0203). */
                char stamp[32];
                format_datetime(stamp, at);
                struct stanza *d = stanza_add_child(st, "delay", NS_DELAY);
                stanza_set_attr(d, "from", host);
                stanza_set_attr(d, "stamp", stamp);
            }
            router_reroute(st);
        } else {
            /* RFC 6121 §8.5.3.2.2: an IQ request to a resource that is gone. */
            if (strcmp(st->name, "iq") == 0 && (str_eq(type, "get") || str_eq(type, "set")))
                router_error(st, "service-unavailable", NULL);
            stanza_free(st);
        }
    }
}

bool sm_ack_requested(const struct sm *sm)
{
    return sm->ack_requested;
}

void sm_set_ack_requested(struct sm *sm, bool requested)
{
    sm->ack_requested = requested;
}

int sm_parse_h(const char *s, uint32_t *out)
{
    if (!s || !*s || strlen(s) > 10)
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

bool sm_parse_bool(const char *s)
{
    return str_eq(s, "true") || str_eq(s, "1");
}

/* ---- ended sessions ---- */

#define SM_REMEMBERED 512

struct sm_ended {
    char *id;
    char *bare;
    uint32_t h;
    uint64_t until;
};

static struct sm_ended ended[SM_REMEMBERED]; /* a ring: the oldest entry is overwritten */
static size_t ended_next;

void sm_remember(const char *id, const char *bare, uint32_t h, uint64_t now, uint64_t keep_ms)
{
    struct sm_ended *e = &ended[ended_next];
    ended_next = (ended_next + 1) % SM_REMEMBERED;
    free(e->id);
    free(e->bare);
    e->id = xstrdup(id);
    e->bare = xstrdup(bare);
    e->h = h;
    e->until = now + keep_ms;
}

bool sm_recall(const char *id, const char *bare, uint64_t now, uint32_t *h)
{
    for (size_t i = 0; i < SM_REMEMBERED; i++) {
        const struct sm_ended *e = &ended[i];
        if (e->id && e->until > now && strcmp(e->id, id) == 0 && str_eq(e->bare, bare)) {
            *h = e->h;
            return true;
        }
    }
    return false;
}

void sm_forget_all(void)
{
    for (size_t i = 0; i < SM_REMEMBERED; i++) {
        free(ended[i].id);
        free(ended[i].bare);
        ended[i] = (struct sm_ended){0};
    }
    ended_next = 0;
}
