/* muc.h — the XEP-0045 multi-user chat service: rooms at room@SERVICE, occupants at
 * room@SERVICE/nick, where SERVICE is one of the [muc] hosts (not a [host]: nobody logs in there).
 *
 * The router hands every stanza addressed to a service domain to muc_route(); the service answers
 * through router_route(), so occupants on remote servers are reached over s2s like anyone else.
 * Rooms live in memory; persistent ones (and their affiliations and subject) are also stored in
 * the map store "muc_rooms" of host = SERVICE, user "", key = room localpart, and come back at
 * startup. History is kept in memory only ([muc] history_max messages per room).
 *
 * The second half of this header is the contract between muc.c (service, rooms, occupants,
 * routing) and muc_admin.c (roles, affiliations, the muc#admin and muc#owner IQs). */
#ifndef ISTHMUS_MUC_H
#define ISTHMUS_MUC_H

#include <stdbool.h>
#include <stdint.h>

#include "isthmus/hmap.h"
#include "isthmus/jid.h"
#include "isthmus/stanza.h"

#define NS_MUC "http://jabber.org/protocol/muc"
#define NS_MUC_USER "http://jabber.org/protocol/muc#user"
#define NS_MUC_ADMIN "http://jabber.org/protocol/muc#admin"
#define NS_MUC_OWNER "http://jabber.org/protocol/muc#owner"
#define NS_XDATA "jabber:x:data"

/* True when domain (prepared) is a MUC service of ours. */
bool muc_is_service(const char *domain);
/* Handles a stanza addressed to a service, a room or an occupant. `from` must be stamped. Takes
 * ownership of st. */
void muc_route(struct stanza *st);

/* ---- shared by muc.c and muc_admin.c ---- */

/* XEP-0045 §5.1, lowest first. */
enum muc_role { MUC_ROLE_NONE, MUC_ROLE_VISITOR, MUC_ROLE_PARTICIPANT, MUC_ROLE_MODERATOR };
/* XEP-0045 §5.2, lowest first. */
enum muc_affiliation {
    MUC_AFF_OUTCAST,
    MUC_AFF_NONE,
    MUC_AFF_MEMBER,
    MUC_AFF_ADMIN,
    MUC_AFF_OWNER
};

struct muc_occupant {
    char *nick;
    char *jid;  /* the real full JID */
    char *bare; /* its bare form */
    enum muc_role role;
    struct stanza *presence; /* last available presence as received (children kept) */
    bool leaving;            /* presence is the unavailable one it left with */
    struct muc_occupant *next;
};

struct muc_room_config {
    char *name; /* muc#roomconfig_roomname; NULL = none */
    char *desc;
    bool persistent;
    bool public_room;
    bool members_only;
    bool moderated;
    char *password;      /* non-NULL: password-protected */
    unsigned max_users;  /* 0: the service maximum */
    bool whois_anyone;   /* non-anonymous room (§4.2) */
    bool change_subject; /* participants may change the subject */
    bool allow_pm;
};

struct muc_history_item {
    struct stanza *msg; /* as broadcast, with a XEP-0203 delay added */
    int64_t when;
};

struct muc_room {
    char *jid; /* room@service */
    char *local;
    char *service;
    struct muc_room_config cfg;
    bool locked;              /* §10.1: created, waiting for the owner's configuration */
    struct hmap affiliations; /* bare JID → (void *)(intptr_t)(enum muc_affiliation + 1) */
    struct muc_occupant *occupants;
    char *subject;                    /* NULL: never set */
    char *subject_from;               /* nick of who set it */
    struct muc_history_item *history; /* ring of history_max */
    size_t hist_start, hist_len;
};

const char *muc_role_name(enum muc_role r);
const char *muc_affiliation_name(enum muc_affiliation a);
int muc_role_parse(const char *s);        /* -1 when unknown */
int muc_affiliation_parse(const char *s); /* -1 when unknown */

enum muc_affiliation muc_affiliation_of(const struct muc_room *r, const char *bare);
void muc_set_affiliation(struct muc_room *r, const char *bare, enum muc_affiliation a);
/* The role an occupant with affiliation a gets on entering r (§5.1.2). */
enum muc_role muc_default_role(const struct muc_room *r, enum muc_affiliation a);

struct muc_occupant *muc_occupant_by_nick(const struct muc_room *r, const char *nick);
struct muc_occupant *muc_occupant_by_jid(const struct muc_room *r, const char *full_jid);
size_t muc_occupant_count(const struct muc_room *r);

/* Sends an occupant's current presence to every occupant (§7.7), with the muc#user item and the
 * status codes given (terminated by 0); 110 is added for the occupant itself. */
void muc_broadcast_presence(struct muc_room *r, struct muc_occupant *o, const int *codes);
/* Removes o from r and frees it after telling everyone (itself included) with unavailable
 * presence carrying role none, the codes (0-terminated), actor nick and reason when given
 * (§8.2 kick 307, §9.1 ban 301, §9.7 members-only 321). Destroys an empty temporary room: the
 * caller must not use r afterwards when this returns true. */
bool muc_occupant_remove(struct muc_room *r, struct muc_occupant *o, const int *codes,
                         const char *actor, const char *reason);
/* Sends a <message type='groupchat'/> from the room to every occupant with muc#user status codes
 * (e.g. 104, configuration changed, §10.2.1). */
void muc_room_notify(struct muc_room *r, const int *codes);
/* Persists r when it is persistent, removes it from storage when not. */
void muc_room_save(struct muc_room *r);
/* §10.9: every occupant gets unavailable presence with <destroy/>; r is removed from storage and
 * freed. */
void muc_room_destroy(struct muc_room *r, const char *alt_jid, const char *reason);
/* The service maximum ([muc] max_occupants) and the room's own, the smaller one. */
unsigned muc_max_users(const struct muc_room *r);

/* muc_admin.c: the room IQs of §8-§10. Each sends its own reply and returns NULL, or returns a
 * stanza error condition. `from` is the sender's full JID. A room destroyed by the IQ is freed:
 * *room is set to NULL then. */
const char *muc_admin_iq(struct muc_room **room, struct stanza *iq, const struct jid *from);
const char *muc_owner_iq(struct muc_room **room, struct stanza *iq, const struct jid *from);
/* XEP-0082 DateTime ("2026-11-21T13:13:18Z", fraction and offset allowed) to seconds since
 * the epoch; -1 when malformed. */
int64_t muc_parse_datetime(const char *s);

/* muc_mam.c: XEP-0313 room archives. muc_mam_store() archives a groupchat message as
 * broadcast (without `to`) and returns its archive id (caller frees), NULL on failure;
 * muc_mam_query() answers a query IQ to the room like the two above; muc_mam_delete() empties a
 * room's archive. */
char *muc_mam_store(const struct muc_room *r, const struct stanza *msg, const char *nick);
const char *muc_mam_query(struct muc_room *r, struct stanza *iq, const struct jid *from);
void muc_mam_delete(const struct muc_room *r);
void muc_mam_init(void);
void muc_mam_fini(void);
/* The muc#roomconfig form with the room's current values (§10.2). Caller frees. */
struct stanza *muc_config_form(const struct muc_room *r);

#endif
