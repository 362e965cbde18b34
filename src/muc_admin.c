/* muc_admin.c — XEP-0045 moderation and administration: role changes (§8: kick, voice; §9.6
 * moderator), affiliation changes (§9: ban, member, admin; §10: owner) through muc#admin, and
 * the room configuration form and destruction (§10.1-§10.2, §10.9) through muc#owner.
 *
 * A muc#admin set with several items applies them in order and stops at the first refused one:
 * the items before it stay applied. */
#include "isthmus/muc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/log.h"
#include "isthmus/router.h"

static void reply(struct stanza *st)
{
    router_route(st, NULL);
}

static size_t count_owners(const struct muc_room *r)
{
    size_t n = 0;
    const char *k;
    void *v;
    for (size_t i = 0; hmap_next(&r->affiliations, &i, &k, &v);)
        if ((intptr_t)v - 1 == MUC_AFF_OWNER)
            n++;
    return n;
}

/* §8.2 kick (role none), §8.3/§8.4 voice (participant / visitor), §9.6/§9.7 moderator. The
 * actor must be a moderator in the room; granting or revoking moderator takes an admin. */
static const char *set_role(struct muc_room **room, struct muc_occupant *actor,
                            enum muc_affiliation actor_aff, struct stanza *item)
{
    struct muc_room *r = *room;
    int role = muc_role_parse(stanza_attr(item, "role"));
    const char *nick = stanza_attr(item, "nick");
    if (role < 0 || !nick)
        return "bad-request";
    if (!actor || actor->role != MUC_ROLE_MODERATOR)
        return "forbidden";
    struct muc_occupant *t = muc_occupant_by_nick(r, nick);
    if (!t)
        return "item-not-found";
    enum muc_affiliation taff = muc_affiliation_of(r, t->bare);
    /* §8.2: admins and owners cannot be kicked or silenced; §9.7: they stay moderators. */
    if (taff >= MUC_AFF_ADMIN && (enum muc_role)role != MUC_ROLE_MODERATOR)
        return "not-allowed";
    if ((role == MUC_ROLE_MODERATOR || t->role == MUC_ROLE_MODERATOR) && actor_aff < MUC_AFF_ADMIN)
        return "not-allowed";
    char *reason = stanza_child_text(item, "reason", NULL);
    if (role == MUC_ROLE_NONE) {
        static const int kicked[] = {307, 0};
        log_info("muc", "%s: %s kicked by %s", r->jid, t->nick, actor->nick);
        if (muc_occupant_remove(r, t, kicked, actor->nick, reason))
            *room = NULL;
    } else if (t->role != (enum muc_role)role) {
        t->role = (enum muc_role)role;
        static const int none[] = {0};
        muc_broadcast_presence(r, t, none);
    }
    free(reason);
    return NULL;
}

/* Applies affiliation a to every occupant of bare: banned (301) or, in a members-only room,
 * removed for not being a member (321), or given the role that goes with a. Returns true when
 * the room went away. */
static bool apply_affiliation(struct muc_room *r, const char *bare, enum muc_affiliation a,
                              const char *actor, const char *reason)
{
    static const int banned[] = {301, 0}, not_member[] = {321, 0}, none[] = {0};
    struct muc_occupant *o = r->occupants;
    while (o) {
        struct muc_occupant *next = o->next;
        if (str_eq(o->bare, bare)) {
            if (a == MUC_AFF_OUTCAST) {
                if (muc_occupant_remove(r, o, banned, actor, reason))
                    return true;
            } else if (a < MUC_AFF_MEMBER && r->cfg.members_only) {
                if (muc_occupant_remove(r, o, not_member, actor, reason))
                    return true;
            } else {
                enum muc_role role = muc_default_role(r, a);
                /* A moderator granted by role alone keeps it while it stays a member. */
                if (a >= MUC_AFF_ADMIN || o->role != MUC_ROLE_MODERATOR || a == MUC_AFF_NONE)
                    o->role = role;
                muc_broadcast_presence(r, o, none);
            }
        }
        o = next;
    }
    return false;
}

/* §9 (admin use cases) and §10.3-§10.7 (owner use cases). Admins manage members and outcasts
 * below admin; owners manage everything; the last owner cannot step down (§10.6: conflict). */
static const char *set_affiliation(struct muc_room **room, struct muc_occupant *actor,
                                   enum muc_affiliation actor_aff, struct stanza *item)
{
    struct muc_room *r = *room;
    int a = muc_affiliation_parse(stanza_attr(item, "affiliation"));
    if (a < 0)
        return "bad-request";
    char *bare = NULL;
    const char *j = stanza_attr(item, "jid");
    if (j) {
        struct jid tj;
        if (jid_parse(j, &tj) < 0)
            return "jid-malformed";
        bare = jid_bare_string(&tj);
        jid_fini(&tj);
    } else if (stanza_attr(item, "nick")) {
        struct muc_occupant *t = muc_occupant_by_nick(r, stanza_attr(item, "nick"));
        if (!t)
            return "item-not-found";
        bare = xstrdup(t->bare);
    } else {
        return "bad-request";
    }
    enum muc_affiliation cur = muc_affiliation_of(r, bare);
    const char *cond = NULL;
    if (actor_aff < MUC_AFF_ADMIN)
        cond = "forbidden";
    else if ((a >= MUC_AFF_ADMIN || cur >= MUC_AFF_ADMIN) && actor_aff < MUC_AFF_OWNER)
        cond = "not-allowed";
    else if (cur == MUC_AFF_OWNER && a != MUC_AFF_OWNER && count_owners(r) <= 1)
        cond = "conflict";
    if (cond) {
        free(bare);
        return cond;
    }
    if (cur != (enum muc_affiliation)a) {
        char *reason = stanza_child_text(item, "reason", NULL);
        muc_set_affiliation(r, bare, (enum muc_affiliation)a);
        log_info("muc", "%s: %s is now %s", r->jid, bare,
                 muc_affiliation_name((enum muc_affiliation)a));
        muc_room_save(r);
        if (apply_affiliation(r, bare, (enum muc_affiliation)a, actor ? actor->nick : NULL, reason))
            *room = NULL;
        free(reason);
    }
    free(bare);
    return NULL;
}

/* §9.5 / §10.5 lists by affiliation (admins and owners may read them), §8.5 / §9.8 lists by
 * role (moderators). */
static const char *admin_get(struct muc_room *r, struct stanza *iq, struct stanza *item,
                             struct muc_occupant *actor, enum muc_affiliation actor_aff)
{
    struct stanza *res = stanza_iq_result(iq);
    struct stanza *q = stanza_add_child(res, "query", NS_MUC_ADMIN);
    const char *as = stanza_attr(item, "affiliation");
    const char *rs = stanza_attr(item, "role");
    int a = muc_affiliation_parse(as), role = muc_role_parse(rs);
    if (as && a >= 0 && a != MUC_AFF_NONE) {
        if (actor_aff < MUC_AFF_ADMIN) {
            stanza_free(res);
            return "forbidden";
        }
        const char *k;
        void *v;
        for (size_t i = 0; hmap_next(&r->affiliations, &i, &k, &v);) {
            if ((intptr_t)v - 1 != a)
                continue;
            struct stanza *it = stanza_add_child(q, "item", NULL);
            stanza_set_attr(it, "affiliation", as);
            stanza_set_attr(it, "jid", k);
        }
    } else if (rs && role > MUC_ROLE_NONE) {
        if (!actor || actor->role != MUC_ROLE_MODERATOR) {
            stanza_free(res);
            return "forbidden";
        }
        for (struct muc_occupant *o = r->occupants; o; o = o->next) {
            if (o->role != (enum muc_role)role)
                continue;
            struct stanza *it = stanza_add_child(q, "item", NULL);
            stanza_set_attr(it, "affiliation",
                            muc_affiliation_name(muc_affiliation_of(r, o->bare)));
            stanza_set_attr(it, "jid", o->jid);
            stanza_set_attr(it, "nick", o->nick);
            stanza_set_attr(it, "role", rs);
        }
    } else {
        stanza_free(res);
        return "bad-request";
    }
    reply(res);
    return NULL;
}

const char *muc_admin_iq(struct muc_room **room, struct stanza *iq, const struct jid *from)
{
    struct muc_room *r = *room;
    struct stanza *q = stanza_first_elem(iq);
    char *full = jid_to_string(from);
    char *bare = jid_bare_string(from);
    struct muc_occupant *actor = muc_occupant_by_jid(r, full);
    enum muc_affiliation actor_aff = muc_affiliation_of(r, bare);
    /* iq result first, then the presence changes: build it before r can go away. */
    struct stanza *res = stanza_iq_result(iq);
    const char *cond = NULL;
    struct stanza *item = stanza_child(q, "item", NULL);
    if (!item) {
        cond = "bad-request";
    } else if (str_eq(stanza_attr(iq, "type"), "get")) {
        cond = admin_get(r, iq, item, actor, actor_aff);
    } else {
        for (; item && !cond && *room; item = stanza_next_elem(item)) {
            if (strcmp(item->name, "item") != 0)
                continue;
            if (stanza_attr(item, "affiliation"))
                cond = set_affiliation(room, actor, actor_aff, item);
            else if (stanza_attr(item, "role"))
                cond = set_role(room, actor, actor_aff, item);
            else
                cond = "bad-request";
        }
        if (!cond) {
            reply(res);
            res = NULL;
        }
    }
    stanza_free(res);
    free(full);
    free(bare);
    return cond;
}

/* ---------------------------------------------------------------- configuration (§10.2) */

static void field(struct stanza *x, const char *var, const char *type, const char *label,
                  const char *value)
{
    struct stanza *f = stanza_add_child(x, "field", NULL);
    stanza_set_attr(f, "var", var);
    stanza_set_attr(f, "type", type);
    stanza_set_attr(f, "label", label);
    stanza_add_text_child(f, "value", NULL, value ? value : "");
}

static void option(struct stanza *f, const char *label, const char *value)
{
    struct stanza *o = stanza_add_child(f, "option", NULL);
    stanza_set_attr(o, "label", label);
    stanza_add_text_child(o, "value", NULL, value);
}

struct stanza *muc_config_form(const struct muc_room *r)
{
    const struct muc_room_config *c = &r->cfg;
    struct stanza *x = stanza_new("x", NS_XDATA);
    stanza_set_attr(x, "type", "form");
    stanza_add_text_child(x, "title", NULL, "Room configuration");
    field(x, "FORM_TYPE", "hidden", NULL, "http://jabber.org/protocol/muc#roomconfig");
    field(x, "muc#roomconfig_roomname", "text-single", "Name", c->name);
    field(x, "muc#roomconfig_roomdesc", "text-single", "Description", c->desc);
    field(x, "muc#roomconfig_persistentroom", "boolean", "Persistent", c->persistent ? "1" : "0");
    field(x, "muc#roomconfig_publicroom", "boolean", "Listed in the directory",
          c->public_room ? "1" : "0");
    field(x, "muc#roomconfig_membersonly", "boolean", "Members only", c->members_only ? "1" : "0");
    field(x, "muc#roomconfig_moderatedroom", "boolean", "Moderated", c->moderated ? "1" : "0");
    field(x, "muc#roomconfig_passwordprotectedroom", "boolean", "Password protected",
          c->password ? "1" : "0");
    field(x, "muc#roomconfig_roomsecret", "text-private", "Password", c->password);
    char n[24];
    snprintf(n, sizeof n, "%u", muc_max_users(r));
    field(x, "muc#roomconfig_maxusers", "text-single", "Maximum occupants", n);
    field(x, "muc#roomconfig_whois", "list-single", "Who may see real JIDs",
          c->whois_anyone ? "anyone" : "moderators");
    struct stanza *w = x->last;
    option(w, "Moderators", "moderators");
    option(w, "Anyone", "anyone");
    field(x, "muc#roomconfig_changesubject", "boolean", "Participants may change the subject",
          c->change_subject ? "1" : "0");
    field(x, "muc#roomconfig_allowpm", "list-single", "Who may send private messages",
          c->allow_pm ? "anyone" : "none");
    struct stanza *pm = x->last;
    option(pm, "Anyone", "anyone");
    option(pm, "Nobody", "none");
    return x;
}

/* XEP-0004 §3.3: boolean values are "1"/"true" or "0"/"false". */
static int form_bool(const char *v)
{
    if (str_eq(v, "1") || str_eq(v, "true"))
        return 1;
    if (str_eq(v, "0") || str_eq(v, "false"))
        return 0;
    return -1;
}

static void set_string(char **dst, const char *v)
{
    free(*dst);
    *dst = v && *v ? xstrdup(v) : NULL;
}

/* Applies a submitted muc#roomconfig form; fields it does not know are ignored (XEP-0004 §3.2
 * lets the form carry more than we offered). Returns NULL or an error condition, in which case
 * nothing changed. */
static const char *apply_form(struct muc_room *r, const struct stanza *x)
{
    struct muc_room_config c = r->cfg;
    c.name = xstrdup(c.name);
    c.desc = xstrdup(c.desc);
    c.password = xstrdup(c.password);
    char *secret = NULL;
    int protect = -1;
    const char *cond = NULL;
    for (struct stanza *f = stanza_first_elem(x); f && !cond; f = stanza_next_elem(f)) {
        const char *var = stanza_attr(f, "var");
        if (strcmp(f->name, "field") != 0 || !var)
            continue;
        char *v = stanza_child_text(f, "value", NULL);
        int b = form_bool(v);
        bool bad_bool = false;
        if (strcmp(var, "FORM_TYPE") == 0) {
            if (v && !str_eq(v, "http://jabber.org/protocol/muc#roomconfig"))
                cond = "bad-request";
        } else if (strcmp(var, "muc#roomconfig_roomname") == 0) {
            set_string(&c.name, v);
        } else if (strcmp(var, "muc#roomconfig_roomdesc") == 0) {
            set_string(&c.desc, v);
        } else if (strcmp(var, "muc#roomconfig_persistentroom") == 0) {
            c.persistent = b == 1, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_publicroom") == 0) {
            c.public_room = b == 1, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_membersonly") == 0) {
            c.members_only = b == 1, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_moderatedroom") == 0) {
            c.moderated = b == 1, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_changesubject") == 0) {
            c.change_subject = b == 1, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_passwordprotectedroom") == 0) {
            protect = b, bad_bool = b < 0;
        } else if (strcmp(var, "muc#roomconfig_roomsecret") == 0) {
            free(secret);
            secret = xstrdup(v ? v : "");
        } else if (strcmp(var, "muc#roomconfig_maxusers") == 0) {
            char *end;
            unsigned long n = v ? strtoul(v, &end, 10) : 0;
            if (str_eq(v, "none") || !v || !*v)
                c.max_users = 0;
            else if (*end || n > 1000000)
                cond = "not-acceptable";
            else
                c.max_users = (unsigned)n;
        } else if (strcmp(var, "muc#roomconfig_whois") == 0) {
            if (str_eq(v, "anyone") || str_eq(v, "moderators"))
                c.whois_anyone = str_eq(v, "anyone");
            else
                cond = "not-acceptable";
        } else if (strcmp(var, "muc#roomconfig_allowpm") == 0) {
            c.allow_pm = !str_eq(v, "none");
        }
        if (bad_bool)
            cond = "not-acceptable";
        free(v);
    }
    if (!cond) {
        if (secret)
            set_string(&c.password, secret);
        if (protect == 0)
            set_string(&c.password, NULL);
        else if (protect == 1 && !c.password)
            cond = "not-acceptable"; /* §10.2: a password-protected room needs a secret */
    }
    free(secret);
    if (cond) {
        free(c.name);
        free(c.desc);
        free(c.password);
        return cond;
    }
    free(r->cfg.name);
    free(r->cfg.desc);
    free(r->cfg.password);
    r->cfg = c;
    return NULL;
}

/* §10.2.1 status 104 (configuration changed) and the privacy-related 172/173. */
static void notify_changes(struct muc_room *r, bool was_whois)
{
    int codes[3] = {104, 0, 0};
    if (was_whois != r->cfg.whois_anyone)
        codes[1] = r->cfg.whois_anyone ? 172 : 173;
    muc_room_notify(r, codes);
}

const char *muc_owner_iq(struct muc_room **room, struct stanza *iq, const struct jid *from)
{
    struct muc_room *r = *room;
    struct stanza *q = stanza_first_elem(iq);
    char *bare = jid_bare_string(from);
    bool owner = muc_affiliation_of(r, bare) == MUC_AFF_OWNER;
    free(bare);
    if (!owner)
        return "forbidden"; /* §10.2 */
    if (str_eq(stanza_attr(iq, "type"), "get")) {
        struct stanza *res = stanza_iq_result(iq);
        stanza_append(stanza_add_child(res, "query", NS_MUC_OWNER), muc_config_form(r));
        reply(res);
        return NULL;
    }
    struct stanza *destroy = stanza_child(q, "destroy", NULL);
    if (destroy) {
        /* §10.9 */
        char *reason = stanza_child_text(destroy, "reason", NULL);
        reply(stanza_iq_result(iq));
        muc_room_destroy(r, stanza_attr(destroy, "jid"), reason);
        free(reason);
        *room = NULL;
        return NULL;
    }
    struct stanza *x = stanza_child(q, "x", NS_XDATA);
    if (!x)
        return "bad-request";
    const char *type = stanza_attr(x, "type");
    if (str_eq(type, "cancel")) {
        reply(stanza_iq_result(iq));
        /* §10.1.3: cancelling the initial configuration destroys the new room. */
        if (r->locked) {
            muc_room_destroy(r, NULL, NULL);
            *room = NULL;
        }
        return NULL;
    }
    if (!str_eq(type, "submit"))
        return "bad-request";
    bool was_locked = r->locked, was_whois = r->cfg.whois_anyone, was_members = r->cfg.members_only;
    const char *cond = apply_form(r, x); /* §10.1.2: an empty form makes an instant room */
    if (cond)
        return cond;
    r->locked = false;
    muc_room_save(r);
    reply(stanza_iq_result(iq));
    if (!was_locked)
        notify_changes(r, was_whois);
    if (r->cfg.members_only && !was_members) {
        /* §9.8 (status 322): a room turned members-only sends the non-members away. */
        static const int codes[] = {322, 0};
        struct muc_occupant *o = r->occupants;
        while (o) {
            struct muc_occupant *next = o->next;
            if (muc_affiliation_of(r, o->bare) < MUC_AFF_MEMBER &&
                muc_occupant_remove(r, o, codes, NULL, NULL)) {
                *room = NULL;
                return NULL;
            }
            o = next;
        }
    }
    return NULL;
}
