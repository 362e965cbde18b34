/* c2s.h — client-to-server streams (RFC 6120): listeners, stream negotiation (STARTTLS, SASL,
 * resource binding), and the registry of bound sessions by bare JID. */
#ifndef ISTHMUS_C2S_H
#define ISTHMUS_C2S_H

#include <stdbool.h>

#include "isthmus/jid.h"
#include "isthmus/stanza.h"

struct c2s;

/* Opens the [c2s] listeners. Returns 0, or -1 with a message in err. */
int c2s_init(char *err, size_t errlen);
/* Shutdown: every stream gets <system-shutdown/> and is closed; listeners stop. */
void c2s_shutdown(void);
/* Drops every stream at once (shutdown grace period over). */
void c2s_abort_all(void);
void c2s_fini(void);
size_t c2s_count(void);

/* Session registry. bare is a prepared "user@host". */
struct c2s *c2s_find(const char *bare, const char *resource);
struct c2s *c2s_first(const char *bare);
struct c2s *c2s_next(const struct c2s *s); /* next resource of the same account */

const struct jid *c2s_jid(const struct c2s *s); /* full JID once bound; NULL before */
const char *c2s_bare(const struct c2s *s);      /* "user@host" once bound; NULL before */
/* Availability as the presence module tracks it (RFC 6121 §4.7.2.3 priority). */
void c2s_set_presence(struct c2s *s, bool available, int priority);
bool c2s_available(const struct c2s *s);        /* sent available presence */
int c2s_priority(const struct c2s *s);

/* Sends a stanza to the client (serialized; the stanza stays the caller's). It passes the output
 * filter first, if one is set; with XEP-0198 on, it counts as sent and is kept until acknowledged
 * (also while the session waits detached for resumption). */
void c2s_deliver(struct c2s *s, const struct stanza *st);

/* An output filter between c2s_deliver() and the stream (XEP-0352 client state indication).
 * hold() returns true when it kept (a copy of) st to release later through c2s_deliver_now(),
 * false to let st go out now; it may release held stanzas before answering false. resumed() is
 * called when a new connection resumed the session (XEP-0198), whose state starts afresh
 * (XEP-0352 §5.2). One filter at a time; NULL removes it. */
struct c2s_output_filter {
    bool (*hold)(struct c2s *s, const struct stanza *st);
    void (*resumed)(struct c2s *s);
};
void c2s_set_output_filter(const struct c2s_output_filter *f);
/* Sends past the filter. */
void c2s_deliver_now(struct c2s *s, const struct stanza *st);
/* Bytes queued for the client and not yet written (a client is dropped once they pass
 * max_output_buffer); SIZE_MAX while the session has no connection to write to. For senders of
 * bulk output (offline messages, archive pages) to pace themselves. */
size_t c2s_output_pending(const struct c2s *s);
/* Closes a session with a stream error (condition per RFC 6120 §4.9.3). */
void c2s_stream_error(struct c2s *s, const char *condition, const char *text);
/* Closes every session of bare (e.g. account removed). */
void c2s_close_account(const char *bare, const char *condition, const char *text);
/* For pre-authentication replies (XEP-0077 registration before login). */
void c2s_send_preauth(struct c2s *s, const struct stanza *st);
const char *c2s_host(const struct c2s *s);
bool c2s_is_authenticated(const struct c2s *s);
const char *c2s_peer_ip(const struct c2s *s);

/* Per-session module data (DESIGN.md "module data slots"). The owning module frees its data
 * on HOOK_SESSION_CLOSED. */
enum c2s_slot {
    C2S_SLOT_PRESENCE,
    C2S_SLOT_ROSTER, /* non-NULL: an interested resource (RFC 6121 §2.1.6) */
    C2S_SLOT_CARBONS,
    C2S_SLOT_CSI,
    C2S_SLOT_SM,
    C2S_SLOT_COUNT
};
void *c2s_slot(const struct c2s *s, enum c2s_slot slot);
void c2s_set_slot(struct c2s *s, enum c2s_slot slot, void *data);

/* Every bound session (for broadcasts); iteration: for (s = c2s_all(); s; s = c2s_all_next(s)). */
struct c2s *c2s_all(void);
struct c2s *c2s_all_next(const struct c2s *s);

#endif
