/* sm.h — XEP-0198 stream management state of one session, sans I/O: the handled-stanza
 * counters, the queue of unacknowledged outbound stanzas, and the memory of ended sessions that
 * lets a late <resume/> learn the final 'h' (XEP-0198 §5). c2s.c drives it and owns the wire.
 *
 * Counters are 32-bit and wrap at 2^32 (XEP-0198 §4), so all comparisons are modular. */
#ifndef ISTHMUS_SM_H
#define ISTHMUS_SM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "isthmus/stanza.h"

#define NS_SM "urn:xmpp:sm:3"

struct sm;

/* id: the SM-ID of a resumable session (copied), NULL when the client did not ask for
 * resumption or the server does not offer it. timeout: seconds the session may wait detached. */
struct sm *sm_new(const char *id, unsigned timeout);
void sm_free(struct sm *sm); /* frees every queued stanza; NULL is a no-op */

const char *sm_id(const struct sm *sm); /* NULL: not resumable */
unsigned sm_timeout(const struct sm *sm);

/* Inbound: one more stanza handled from the client; its count is the 'h' we report. */
void sm_received(struct sm *sm);
uint32_t sm_handled(const struct sm *sm);

/* Outbound: queues a copy of st as sent (whether or not it reached the wire), stamped with the
 * wall clock for XEP-0203 delay on redelivery. bytes: its serialized size, for the queue's cap. */
void sm_push(struct sm *sm, const struct stanza *st, size_t bytes);
size_t sm_unacked(const struct sm *sm);
size_t sm_unacked_bytes(const struct sm *sm); /* serialized size of the queue */
uint32_t sm_sent(const struct sm *sm);       /* stanzas sent since <enabled/>, modulo 2^32 */
/* The peer handled everything up to h: drops those stanzas from the queue. Returns 0, or -1
 * (queue untouched) when h acknowledges stanzas never sent (XEP-0198 §4 handled-count-too-high);
 * an h below an earlier acknowledgement counts as such too, being "ahead" modulo 2^32. */
int sm_ack(struct sm *sm, uint32_t h);
/* The i-th unacknowledged stanza, oldest first (borrowed), for retransmission. */
const struct stanza *sm_queued(const struct sm *sm, size_t i);
/* Removes and returns the oldest unacknowledged stanza (caller frees) and when it was queued;
 * NULL when the queue is empty. */
struct stanza *sm_take(struct sm *sm, int64_t *queued_at);

/* The session ended with stanzas unacknowledged (XEP-0198 §5: treat them as sent to an
 * unavailable resource): messages are rerouted (router_reroute: other resources or offline
 * storage) with an XEP-0203 delay stamped by host unless they carry one, except errors and
 * copies made for this session alone (carbons, archive results); IQ requests get
 * service-unavailable; the rest is dropped. Empties the queue. Call after the session left the
 * registry, so nothing comes back to it. */
void sm_redeliver(struct sm *sm, const char *host);

/* An <r/> is outstanding until the next <a/>. */
bool sm_ack_requested(const struct sm *sm);
void sm_set_ack_requested(struct sm *sm, bool requested);

/* Parses a decimal 'h' value (XEP-0198 §4: xs:unsignedInt). Returns 0 or -1. */
int sm_parse_h(const char *s, uint32_t *out);
/* Parses the XML Schema boolean of 'resume' ("true"/"1"). */
bool sm_parse_bool(const char *s);

/* Ended resumable sessions, remembered for a while (bounded) so that <failed/> for their
 * previd can carry the final 'h' (XEP-0198 §5). Only the same account may learn it. */
void sm_remember(const char *id, const char *bare, uint32_t h, uint64_t now, uint64_t keep_ms);
bool sm_recall(const char *id, const char *bare, uint64_t now, uint32_t *h);
void sm_forget_all(void);

#endif
