/* relay.c — admin-configured relays ([bridge NAME] in include/isthmus/config.h): one IRC channel
 * mirrored into one MUC room of the XMPP server.
 *
 * On IRC a relay bot (the bridge's nick) sits in the channel and says what the room's occupants
 * write, as "<nick> text". In the room the bridge is an occupant itself (from
 * GW/bridge:NAME:bot, MUC nick = the bridge's nick), and every IRC user in the channel has a
 * puppet occupant of its own (from GW/bridge:NAME:puppet:NICK, MUC nick = the IRC nick) that
 * enters, leaves, changes nick and speaks as the IRC user does (XEP-0045 §7.2, §7.14, §7.6, §7.4).
 *
 * Loops: the room reflects every groupchat message to every occupant (§7.4). Only the copies sent
 * to the bot are read, and those whose sender is a puppet or the bot are dropped. IRC does not echo
 * our own lines (we never ask for echo-message), and lines from the bot's nick are ignored anyway.
 *
 * State is rebuilt, never trusted: the component stream coming back (relay_online) makes the bot
 * join again and, once the room confirms it (self-presence, status 110), every puppet; a join from
 * an occupant the room still has is a mere presence update (§7.7), so this is safe whether or not
 * the XMPP server restarted. An IRC reconnect JOINs again and the NAMES reply decides which
 * puppets stay. One tick timer drives every delayed action: join timeouts, rejoining after a
 * kick, re-JOINing the channel. */
#include "relay.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "isthmus/log.h"
#include "isthmus/util.h"

#include "irc.h"

#define NS_MUC_OWNER "http://jabber.org/protocol/muc#owner"
#define NS_PING "urn:xmpp:ping"
#define NS_CORRECT "urn:xmpp:message-correct:0"
#define NS_LEGACY_DELAY "jabber:x:delay"

#define RELAY_TICK_MS 1000
#define RELAY_JOIN_TIMEOUT_MS 30000 /* no answer to a join: try again (bot) or give up (puppet) */
#define RELAY_MAX_PUPPETS 1000
#define RELAY_MAX_OCCUPANTS 1000
#define RELAY_MAX_QUEUE 20  /* IRC lines held per puppet while it joins */
#define RELAY_MAX_NICK 128  /* bytes of an IRC or MUC nick we accept */
#define RELAY_NICK_TRIES 4  /* nick, nick[irc], nick[irc]2, nick[irc]3 */
#define RELAY_MAX_LINES 16  /* lines of one MUC message said on IRC */
#define RELAY_MAX_TEXT 4000 /* bytes of one MUC message said on IRC */
#define RELAY_IRC_BACKOFF_MIN 1000
#define RELAY_IRC_BACKOFF_MAX 60000
#define RELAY_IRC_LOST_MS 300000    /* IRC gone this long: the puppets leave the room */
#define RELAY_CHAN_BACKOFF_MIN 5000 /* re-JOIN after a kick or a refused JOIN */
#define RELAY_CHAN_BACKOFF_MAX 300000
#define RELAY_CHAN_JOIN_WAIT_MS 30000 /* a JOIN nobody answered is sent again */
#define RELAY_REJOIN_MS 5000          /* back into the room after a kick, doubling per kick */
#define RELAY_REJOIN_MAX_MS 300000
#define RELAY_FAILED_RETRY_MS 60000 /* a refused puppet or bot tries again */
#define RELAY_GHOSTS 32             /* nicks puppets just gave up */
#define RELAY_GHOST_MS 10000

enum relay_state {
    RELAY_OUT,     /* not in the room; joins when `at` has passed (and the bot is in) */
    RELAY_JOINING, /* join sent at `at`, waiting for the self-presence */
    RELAY_JOINED,
};

struct relay_puppet {
    char *irc_nick;
    char *jid;      /* its full JID, prepared */
    char *muc_nick; /* the nick the room knows it by, NULL when out */
    char *try_nick; /* the nick last asked for (join or §7.6 change), NULL when out */
    enum relay_state state;
    unsigned tries; /* nick candidates used for try_nick */
    uint64_t at;
    unsigned kicks;
    bool failed; /* the room refused it: its lines go through the bot until it gets in */
    bool seen;   /* in the NAMES reply being read */
    char *queue[RELAY_MAX_QUEUE]; /* bodies ("/me ..." for actions) waiting for the join */
    size_t n_queue;
};

struct relay {
    struct gw *gw;
    char *name, *channel, *network, *room, *nick;
    char *tag;
    char *bot_jid;       /* GW/bridge:NAME:bot, prepared */
    char *puppet_prefix; /* GW/bridge:NAME:puppet: */
    /* IRC */
    char *host;
    uint16_t port;
    bool tls, tls_verify;
    char *password;
    struct irc_conn *irc;
    struct ev_timer *reconnect;
    uint64_t backoff_ms;
    uint64_t down_since; /* 0 while registered */
    bool in_channel;
    bool names_sync;        /* reading the NAMES reply after our JOIN */
    uint64_t chan_retry_at; /* 0: no re-JOIN planned */
    uint64_t chan_backoff;
    /* MUC */
    enum relay_state bot_state;
    char *bot_nick; /* the nick asked for or held */
    unsigned bot_tries;
    uint64_t bot_at;
    unsigned bot_kicks;
    bool syncing; /* until our self-presence: presences are the occupant list */
    struct relay_puppet **puppets;
    size_t n_puppets;
    char **occupants; /* room nicks that are neither puppets nor the bot */
    size_t n_occupants;
    /* Nicks a puppet held until a moment ago: the room may still reflect its last message or
     * announce its exit to the bot, which must not relay them (cleared by that exit). */
    struct {
        char *nick;
        uint64_t until;
    } ghosts[RELAY_GHOSTS];
    size_t next_ghost;
    unsigned long seq;
};

static struct relay **relays;
static size_t n_relays;
static struct ev_timer *tick;
static struct gw *relay_gw;

static void relay_connect(struct relay *r);
static void puppet_join(struct relay *r, struct relay_puppet *p);

static uint64_t relay_now(const struct relay *r)
{
    return ev_now(gw_loop(r->gw));
}

/* ---------------------------------------------------------------- small helpers */

static bool nick_eq(const struct relay *r, const char *a, const char *b)
{
    if (!a || !b)
        return false;
    return r->irc ? irc_casecmp(r->irc, a, b) == 0 : strcasecmp(a, b) == 0;
}

static bool is_channel(const struct relay *r, const char *name)
{
    return name && nick_eq(r, name, r->channel);
}

/* A copy of s without C0 controls other than tab and newline (none can be put in XML), and
 * without the mIRC formatting codes. */
static char *clean_text(const char *s)
{
    char *stripped = irc_strip_formatting(s);
    size_t j = 0;
    for (size_t i = 0; stripped[i]; i++) {
        unsigned char ch = (unsigned char)stripped[i];
        if (ch < 0x20 && ch != '\t' && ch != '\n')
            continue;
        stripped[j++] = stripped[i];
    }
    stripped[j] = '\0';
    return stripped;
}

/* The n-th MUC nick to try for base (§7.2.9 conflict: try another): base, base[irc],
 * base[irc]2, ... prepared as a resourcepart; NULL when it cannot be one. */
static char *nick_candidate(const char *base, unsigned n)
{
    char *raw = n == 0   ? xstrdup(base)
                : n == 1 ? xasprintf("%s[irc]", base)
                         : xasprintf("%s[irc]%u", base, n);
    char *prepped = jid_prep_resource(raw);
    free(raw);
    return prepped;
}

static char *room_jid(const struct relay *r, const char *nick)
{
    return xasprintf("%s/%s", r->room, nick);
}

static bool has_status(const struct stanza *x, const char *code)
{
    if (!x)
        return false;
    for (const struct stanza *s = stanza_first_elem(x); s; s = stanza_next_elem(s))
        if (strcmp(s->name, "status") == 0 && str_eq(stanza_attr(s, "code"), code))
            return true;
    return false;
}

/* The defined condition of an error stanza ("conflict"), or "" when none. */
static const char *error_condition(const struct stanza *st)
{
    const struct stanza *e = stanza_child(st, "error", NULL);
    if (!e)
        return "";
    if (str_eq(stanza_attr(e, "code"), "409"))
        return "conflict";
    for (const struct stanza *c = stanza_first_elem(e); c; c = stanza_next_elem(c))
        if (str_eq(c->ns, NS_STANZA_ERRORS) && strcmp(c->name, "text") != 0)
            return c->name;
    return "";
}

static bool starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---------------------------------------------------------------- stanzas we send */

/* §7.2.1 entering (also §7.6 changing nick: the same presence to the new room JID), asking for no
 * history (§7.2.15) — IRC users have seen it, and replaying it would relay it twice. */
static void send_join(struct relay *r, const char *from, const char *nick)
{
    char *to = room_jid(r, nick);
    struct stanza *p = gw_stanza("presence", from, to, NULL, NULL);
    struct stanza *x = stanza_add_child(p, "x", NS_MUC);
    stanza_set_attr(stanza_add_child(x, "history", NULL), "maxstanzas", "0");
    gw_send(r->gw, p);
    free(to);
}

/* §7.14 exit, with a status text. */
static void send_leave(struct relay *r, const char *from, const char *nick, const char *status)
{
    char *to = nick ? room_jid(r, nick) : xstrdup(r->room);
    struct stanza *p = gw_stanza("presence", from, to, "unavailable", NULL);
    if (status && *status)
        stanza_add_text_child(p, "status", NULL, status);
    gw_send(r->gw, p);
    free(to);
}

static void send_groupchat(struct relay *r, const char *from, const char *body)
{
    char *id = random_id(16);
    struct stanza *m = gw_stanza("message", from, r->room, "groupchat", id);
    stanza_add_text_child(m, "body", NULL, body);
    gw_send(r->gw, m);
    free(id);
}

/* §10.1.2: we created the room (201) — accept the default configuration (an instant room) so
 * that others may enter (§10.1.3). */
static void send_instant_room(struct relay *r)
{
    struct stanza *iq = gw_stanza("iq", r->bot_jid, r->room, "set", NULL);
    struct stanza *q = stanza_add_child(iq, "query", NS_MUC_OWNER);
    stanza_set_attr(stanza_add_child(q, "x", NS_DATA), "type", "submit");
    gw_send(r->gw, iq);
}

/* ---------------------------------------------------------------- room occupants (not ours) */

static ssize_t occupant_index(const struct relay *r, const char *nick)
{
    for (size_t i = 0; i < r->n_occupants; i++)
        if (strcmp(r->occupants[i], nick) == 0)
            return (ssize_t)i;
    return -1;
}

static bool occupant_add(struct relay *r, const char *nick)
{
    if (occupant_index(r, nick) >= 0 || r->n_occupants >= RELAY_MAX_OCCUPANTS)
        return false;
    r->occupants = xrealloc(r->occupants, (r->n_occupants + 1) * sizeof *r->occupants);
    r->occupants[r->n_occupants++] = xstrdup(nick);
    return true;
}

static bool occupant_del(struct relay *r, const char *nick)
{
    ssize_t i = occupant_index(r, nick);
    if (i < 0)
        return false;
    free(r->occupants[i]);
    r->occupants[i] = r->occupants[--r->n_occupants];
    return true;
}

static void occupants_clear(struct relay *r)
{
    for (size_t i = 0; i < r->n_occupants; i++)
        free(r->occupants[i]);
    free(r->occupants);
    r->occupants = NULL;
    r->n_occupants = 0;
}

/* ---------------------------------------------------------------- puppets */

static struct relay_puppet *puppet_by_irc(const struct relay *r, const char *nick)
{
    for (size_t i = 0; i < r->n_puppets; i++)
        if (nick_eq(r, r->puppets[i]->irc_nick, nick))
            return r->puppets[i];
    return NULL;
}

static struct relay_puppet *puppet_by_jid(const struct relay *r, const char *jid)
{
    for (size_t i = 0; i < r->n_puppets; i++)
        if (strcmp(r->puppets[i]->jid, jid) == 0)
            return r->puppets[i];
    return NULL;
}

static void ghost_add(struct relay *r, const char *nick)
{
    if (!nick)
        return;
    size_t i = r->next_ghost++ % RELAY_GHOSTS;
    free(r->ghosts[i].nick);
    r->ghosts[i].nick = xstrdup(nick);
    r->ghosts[i].until = relay_now(r) + RELAY_GHOST_MS;
}

static ssize_t ghost_index(const struct relay *r, const char *nick)
{
    uint64_t now = relay_now(r);
    for (size_t i = 0; i < RELAY_GHOSTS; i++)
        if (r->ghosts[i].nick && now < r->ghosts[i].until && strcmp(r->ghosts[i].nick, nick) == 0)
            return (ssize_t)i;
    return -1;
}

/* Is nick (a room nick) one of our puppets in the room, entering it, or just gone from it? */
static bool puppet_nick(const struct relay *r, const char *nick)
{
    for (size_t i = 0; i < r->n_puppets; i++) {
        const struct relay_puppet *p = r->puppets[i];
        if (p->state != RELAY_OUT && (str_eq(p->muc_nick, nick) || str_eq(p->try_nick, nick)))
            return true;
    }
    return ghost_index(r, nick) >= 0;
}

/* The puppet no longer holds its room nick. */
static void puppet_out(struct relay *r, struct relay_puppet *p)
{
    ghost_add(r, p->muc_nick);
    if (!str_eq(p->try_nick, p->muc_nick))
        ghost_add(r, p->try_nick);
    free(p->muc_nick);
    p->muc_nick = NULL;
    free(p->try_nick);
    p->try_nick = NULL;
    p->state = RELAY_OUT;
}

/* The puppet's JID: the IRC nick in the resource keeps it stable across restarts of the gateway
 * (a join from a JID the room still has is harmless), a counter when the nick cannot be a
 * resourcepart or is taken by another puppet (that one was renamed). */
static char *puppet_jid_new(struct relay *r, const char *nick)
{
    char *s = xasprintf("%s%s", r->puppet_prefix, nick);
    char *jid = jid_normalize(s);
    free(s);
    if (!jid || puppet_by_jid(r, jid)) {
        free(jid);
        s = xasprintf("%s#%lu", r->puppet_prefix, ++r->seq);
        jid = jid_normalize(s);
        free(s);
    }
    return jid;
}

static void puppet_queue_clear(struct relay_puppet *p)
{
    for (size_t i = 0; i < p->n_queue; i++)
        free(p->queue[i]);
    p->n_queue = 0;
}

static void puppet_free(struct relay_puppet *p)
{
    if (!p)
        return;
    puppet_queue_clear(p);
    free(p->irc_nick);
    free(p->jid);
    free(p->muc_nick);
    free(p->try_nick);
    free(p);
}

/* IRC text of nick said by the bot, for a puppet that is not in the room. */
static void bot_says_for(struct relay *r, const char *nick, const char *body)
{
    if (r->bot_state != RELAY_JOINED || !gw_is_online(r->gw))
        return;
    char *text = starts_with(body, "/me ") ? xasprintf("* %s %s", nick, body + 4)
                                           : xasprintf("<%s> %s", nick, body);
    send_groupchat(r, r->bot_jid, text);
    free(text);
}

/* Sends what the puppet held while joining: as itself when it got in, else through the bot. */
static void puppet_flush(struct relay *r, struct relay_puppet *p)
{
    for (size_t i = 0; i < p->n_queue; i++) {
        if (p->state == RELAY_JOINED)
            send_groupchat(r, p->jid, p->queue[i]);
        else
            bot_says_for(r, p->irc_nick, p->queue[i]);
    }
    puppet_queue_clear(p);
}

static void puppet_say(struct relay *r, struct relay_puppet *p, const char *body)
{
    if (p->state == RELAY_JOINED && gw_is_online(r->gw)) {
        send_groupchat(r, p->jid, body);
        return;
    }
    if (p->failed && p->state == RELAY_OUT) {
        bot_says_for(r, p->irc_nick, body);
        return;
    }
    if (p->n_queue == RELAY_MAX_QUEUE) {
        log_debug(r->tag, "queue of %s full: oldest line dropped", p->irc_nick);
        free(p->queue[0]);
        memmove(p->queue, p->queue + 1, (RELAY_MAX_QUEUE - 1) * sizeof p->queue[0]);
        p->n_queue--;
    }
    p->queue[p->n_queue++] = xstrdup(body);
}

/* Gives up joining for now (refused, or nick candidates exhausted): retry later. */
static void puppet_failed(struct relay *r, struct relay_puppet *p, const char *why)
{
    log_warn(r->tag, "puppet %s cannot enter %s: %s", p->irc_nick, r->room, why);
    puppet_out(r, p);
    p->at = relay_now(r) + RELAY_FAILED_RETRY_MS;
    p->failed = true;
    puppet_flush(r, p);
}

static void puppet_join(struct relay *r, struct relay_puppet *p)
{
    if (r->bot_state != RELAY_JOINED || !gw_is_online(r->gw)) {
        p->state = RELAY_OUT; /* joins after the bot (bot_joined) */
        return;
    }
    char *nick = nick_candidate(p->irc_nick, p->tries);
    if (!nick) {
        puppet_failed(r, p, "the nick is not a valid MUC nick");
        return;
    }
    free(p->try_nick);
    p->try_nick = nick;
    p->state = RELAY_JOINING;
    p->at = relay_now(r);
    send_join(r, p->jid, nick);
}

/* A new IRC nick in the channel (NAMES or JOIN): its puppet, created if needed. NULL when the
 * nick is ours, unusable, or the channel has too many users. */
static struct relay_puppet *puppet_get(struct relay *r, const char *nick)
{
    struct relay_puppet *p = puppet_by_irc(r, nick);
    if (p)
        return p;
    size_t len = strlen(nick);
    if (len == 0 || len > RELAY_MAX_NICK || (r->irc && nick_eq(r, nick, irc_nick(r->irc))))
        return NULL;
    if (r->n_puppets >= RELAY_MAX_PUPPETS) {
        log_warn(r->tag, "more than %d IRC users: %s gets no puppet", RELAY_MAX_PUPPETS, nick);
        return NULL;
    }
    char *jid = puppet_jid_new(r, nick);
    if (!jid)
        return NULL;
    p = xcalloc(1, sizeof *p);
    p->irc_nick = xstrdup(nick);
    p->jid = jid;
    p->state = RELAY_OUT;
    r->puppets = xrealloc(r->puppets, (r->n_puppets + 1) * sizeof *r->puppets);
    r->puppets[r->n_puppets++] = p;
    puppet_join(r, p);
    return p;
}

/* The IRC user left: its puppet leaves the room with status as the exit text (§7.14). */
static void puppet_remove(struct relay *r, struct relay_puppet *p, const char *status)
{
    if (p->state != RELAY_OUT && gw_is_online(r->gw))
        send_leave(r, p->jid, p->muc_nick ? p->muc_nick : p->try_nick, status);
    puppet_out(r, p);
    for (size_t i = 0; i < r->n_puppets; i++)
        if (r->puppets[i] == p) {
            r->puppets[i] = r->puppets[--r->n_puppets];
            break;
        }
    puppet_free(p);
}

static void puppet_gone(struct relay *r, const char *nick, const char *status)
{
    struct relay_puppet *p = puppet_by_irc(r, nick);
    if (p)
        puppet_remove(r, p, status);
}

/* IRC NICK: §7.6, the same occupant asks for the new nick. */
static void puppet_rename(struct relay *r, const char *old, const char *nick)
{
    struct relay_puppet *p = puppet_by_irc(r, old);
    if (!p) {
        puppet_get(r, nick);
        return;
    }
    if (strlen(nick) == 0 || strlen(nick) > RELAY_MAX_NICK) {
        puppet_remove(r, p, "nick change");
        return;
    }
    struct relay_puppet *other = puppet_by_irc(r, nick);
    if (other && other != p)
        puppet_remove(r, other, NULL);
    free(p->irc_nick);
    p->irc_nick = xstrdup(nick);
    p->tries = 0;
    if (p->state == RELAY_OUT)
        return;
    char *cand = nick_candidate(nick, 0);
    if (!cand)
        return; /* keeps its old room nick */
    free(p->try_nick);
    p->try_nick = cand;
    if (gw_is_online(r->gw))
        send_join(r, p->jid, cand);
}

/* ---------------------------------------------------------------- the bot in the room */

static void bot_join(struct relay *r)
{
    if (!gw_is_online(r->gw))
        return;
    char *nick = nick_candidate(r->nick, r->bot_tries);
    if (!nick) {
        r->bot_state = RELAY_OUT;
        r->bot_at = relay_now(r) + RELAY_FAILED_RETRY_MS;
        r->bot_tries = 0;
        return;
    }
    free(r->bot_nick);
    r->bot_nick = nick;
    r->bot_state = RELAY_JOINING;
    r->bot_at = relay_now(r);
    r->syncing = true;
    log_debug(r->tag, "joining %s as %s", r->room, nick);
    send_join(r, r->bot_jid, nick);
}

static void bot_joined(struct relay *r, const char *nick, const struct stanza *x)
{
    if (r->bot_state != RELAY_JOINED)
        log_info(r->tag, "in %s as %s", r->room, nick);
    r->bot_state = RELAY_JOINED;
    r->bot_tries = 0;
    r->syncing = false;
    free(r->bot_nick);
    r->bot_nick = xstrdup(nick);
    if (has_status(x, "201"))
        send_instant_room(r);
    uint64_t now = relay_now(r);
    for (size_t i = 0; i < r->n_puppets; i++) {
        struct relay_puppet *p = r->puppets[i];
        if (p->state == RELAY_OUT && p->at <= now)
            puppet_join(r, p);
    }
}

/* ---------------------------------------------------------------- MUC → IRC */

static bool irc_ready(const struct relay *r)
{
    return r->irc && irc_is_registered(r->irc) && r->in_channel;
}

/* §7.4 a groupchat message of nick: "<nick> text" per line, "* nick text" for /me. */
static void muc_to_irc(struct relay *r, const char *nick, const char *body, bool edited)
{
    bool action = starts_with(body, "/me ");
    const char *s = action ? body + 4 : body;
    size_t total = strlen(s);
    bool cut = total > RELAY_MAX_TEXT;
    if (cut) {
        total = RELAY_MAX_TEXT;
        while (total > 0 && ((unsigned char)s[total] & 0xC0) == 0x80)
            total--; /* never inside a UTF-8 sequence */
    }
    struct buf out;
    buf_init(&out);
    size_t lines = 0;
    const char *end = s + total;
    while (s < end && lines < RELAY_MAX_LINES) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
        size_t keep = n;
        while (keep > 0 && (s[keep - 1] == '\r' || s[keep - 1] == ' ' || s[keep - 1] == '\t'))
            keep--;
        if (keep > 0) {
            if (out.len)
                buf_putc(&out, '\n');
            buf_printf(&out, action ? "* %s " : "<%s> ", nick);
            buf_append(&out, s, keep);
            lines++;
        }
        s += n + (nl ? 1 : 0);
    }
    if (out.len) {
        if (s < end || cut)
            buf_puts(&out, " [...]");
        if (edited)
            buf_puts(&out, " (edited)");
        irc_say(r->irc, r->channel, out.data, false, false);
    }
    buf_fini(&out);
}

/* An IRC NOTICE in the channel about the room (joins, exits); takes ownership of text. */
static void notice_irc(struct relay *r, char *text)
{
    if (irc_ready(r))
        irc_say(r->irc, r->channel, text, false, true);
    free(text);
}

/* A message the room sent to the bot. */
static void bot_message(struct relay *r, const struct stanza *st, const struct jid *from)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "error")) {
        const char *cond = error_condition(st);
        log_debug(r->tag, "message error from %s: %s", r->room, cond);
        if (strcmp(cond, "not-acceptable") == 0 && r->bot_state == RELAY_JOINED) {
            r->bot_state = RELAY_OUT; /* the room no longer counts us as an occupant */
            r->bot_at = relay_now(r);
        }
        return;
    }
    if (!str_eq(type, "groupchat") || !from->resource)
        return; /* private messages, the room's own notes (§10.2.1 status messages) */
    const char *nick = from->resource;
    if (str_eq(nick, r->bot_nick) || puppet_nick(r, nick))
        return; /* our own, reflected (§7.4): no loops */
    if (stanza_child(st, "delay", NS_DELAY) || stanza_child(st, "x", NS_LEGACY_DELAY))
        return; /* history (§7.2.15) */
    char *body = stanza_child_text(st, "body", NULL);
    if (!body)
        return; /* subject change (§8.1), chat state, ... */
    if (!*body) {
        free(body);
        return;
    }
    if (!irc_ready(r)) {
        log_debug(r->tag, "IRC not ready: message of %s dropped", nick);
        free(body);
        return;
    }
    muc_to_irc(r, nick, body, stanza_child(st, "replace", NS_CORRECT) != NULL);
    free(body);
}

/* Is the real JID in an occupant presence one of ours (puppets of any relay, old or current)? */
static bool ours_jid(const char *jid)
{
    if (!jid || !relay_gw)
        return false;
    const char *dom = gw_domain(relay_gw);
    size_t n = strlen(dom);
    return strncmp(jid, dom, n) == 0 && jid[n] == '/' && starts_with(jid + n + 1, "bridge:");
}

static bool known_jid(const char *jid)
{
    for (size_t i = 0; i < n_relays; i++)
        if (strcmp(relays[i]->bot_jid, jid) == 0 || puppet_by_jid(relays[i], jid))
            return true;
    return false;
}

/* A presence the room sent to the bot: its own (§7.2.3 status 110) or another occupant's. */
static void bot_presence(struct relay *r, const struct stanza *st, const struct jid *from)
{
    const char *type = stanza_attr(st, "type");
    const struct stanza *x = stanza_child(st, "x", NS_MUC_USER);
    const struct stanza *item = x ? stanza_child(x, "item", NULL) : NULL;
    if (str_eq(type, "error")) {
        if (r->bot_state != RELAY_JOINING)
            return;
        const char *cond = error_condition(st);
        if (strcmp(cond, "conflict") == 0 && r->bot_tries + 1 < RELAY_NICK_TRIES) {
            r->bot_tries++; /* §7.2.9 */
            bot_join(r);
            return;
        }
        log_warn(r->tag, "cannot enter %s: %s", r->room, *cond ? cond : "error");
        r->bot_state = RELAY_OUT;
        r->bot_tries = 0;
        r->bot_at = relay_now(r) + RELAY_FAILED_RETRY_MS;
        return;
    }
    if (!from->resource || (type && !str_eq(type, "unavailable")))
        return;
    const char *nick = from->resource;
    bool unavailable = str_eq(type, "unavailable");
    const char *real = item ? stanza_attr(item, "jid") : NULL;
    char *real_n = real ? jid_normalize(real) : NULL;
    bool self = has_status(x, "110") || str_eq(real_n, r->bot_jid);
    bool ours = ours_jid(real_n), current = real_n && known_jid(real_n);
    free(real_n);
    if (self) {
        if (!unavailable) {
            bot_joined(r, nick, x);
            return;
        }
        if (has_status(x, "303") && item && stanza_attr(item, "nick")) {
            free(r->bot_nick); /* §7.6 nick changed (by the service) */
            r->bot_nick = xstrdup(stanza_attr(item, "nick"));
            return;
        }
        if (r->bot_state == RELAY_JOINING)
            return; /* an older exit */
        /* §8.2 kicked, §9.1 banned, §10.9 destroyed, or removed (333): back after a while. */
        uint64_t delay = (uint64_t)RELAY_REJOIN_MS << (r->bot_kicks < 6 ? r->bot_kicks : 6);
        if (delay > RELAY_REJOIN_MAX_MS)
            delay = RELAY_REJOIN_MAX_MS;
        r->bot_kicks++;
        log_warn(r->tag, "out of %s (%s); entering again in %llu s", r->room,
                 has_status(x, "307") ? "kicked" : "removed", (unsigned long long)delay / 1000);
        r->bot_state = RELAY_OUT;
        r->bot_at = relay_now(r) + delay;
        occupants_clear(r);
        return;
    }
    if (puppet_nick(r, nick) || ours) {
        ssize_t g = unavailable ? ghost_index(r, nick) : -1;
        if (g >= 0) {
            free(r->ghosts[g].nick); /* its exit, seen: the nick is free for others */
            r->ghosts[g].nick = NULL;
        }
        /* A puppet left behind by an earlier run (its JID is no longer ours): send it out. */
        if (!unavailable && ours && !current)
            send_leave(r, real, NULL, "relay restarted");
        return;
    }
    if (unavailable) {
        bool known = occupant_del(r, nick);
        if (has_status(x, "303") && item && stanza_attr(item, "nick")) {
            const char *nn = stanza_attr(item, "nick");
            occupant_add(r, nn);
            if (!r->syncing)
                notice_irc(r, xasprintf("* %s is now known as %s", nick, nn));
        } else if (!r->syncing && (known || r->bot_state == RELAY_JOINED)) {
            notice_irc(r, xasprintf("* %s left", nick));
        }
        return;
    }
    if (occupant_add(r, nick) && !r->syncing && r->bot_state == RELAY_JOINED)
        notice_irc(r, xasprintf("* %s joined", nick));
}

/* A presence the room sent to a puppet: only its own matters. */
static void puppet_presence(struct relay *r, struct relay_puppet *p, const struct stanza *st,
                            const struct jid *from)
{
    const char *type = stanza_attr(st, "type");
    const struct stanza *x = stanza_child(st, "x", NS_MUC_USER);
    const struct stanza *item = x ? stanza_child(x, "item", NULL) : NULL;
    if (str_eq(type, "error")) {
        if (p->state == RELAY_OUT)
            return;
        const char *cond = error_condition(st);
        if (strcmp(cond, "conflict") == 0 && p->tries + 1 < RELAY_NICK_TRIES) {
            p->tries++; /* §7.2.9 / §7.6.3: another nick */
            char *nick = nick_candidate(p->irc_nick, p->tries);
            if (nick) {
                free(p->try_nick);
                p->try_nick = nick;
                send_join(r, p->jid, nick);
                return;
            }
        }
        if (p->state == RELAY_JOINING) {
            puppet_failed(r, p, *cond ? cond : "error");
        } else {
            free(p->try_nick); /* a refused nick change: keep the old nick */
            p->try_nick = xstrdup(p->muc_nick);
        }
        return;
    }
    if (!from->resource || (type && !str_eq(type, "unavailable")))
        return;
    const char *real = item ? stanza_attr(item, "jid") : NULL;
    char *real_n = real ? jid_normalize(real) : NULL;
    bool self = has_status(x, "110") || str_eq(real_n, p->jid);
    free(real_n);
    if (!self)
        return; /* the occupant list as the puppet sees it */
    if (!str_eq(type, "unavailable")) {
        p->state = RELAY_JOINED;
        p->failed = false;
        free(p->muc_nick);
        p->muc_nick = xstrdup(from->resource);
        free(p->try_nick);
        p->try_nick = xstrdup(from->resource);
        puppet_flush(r, p);
        return;
    }
    if (p->state != RELAY_JOINED)
        return; /* an older exit */
    if (has_status(x, "303") && item && stanza_attr(item, "nick")) {
        ghost_add(r, p->muc_nick);
        free(p->muc_nick); /* §7.6: the new nick's presence follows */
        p->muc_nick = xstrdup(stanza_attr(item, "nick"));
        return;
    }
    uint64_t delay = (uint64_t)RELAY_REJOIN_MS << (p->kicks < 6 ? p->kicks : 6);
    if (delay > RELAY_REJOIN_MAX_MS)
        delay = RELAY_REJOIN_MAX_MS;
    p->kicks++;
    log_info(r->tag, "puppet %s out of %s (%s); entering again in %llu s", p->irc_nick, r->room,
             has_status(x, "307") ? "kicked" : "removed", (unsigned long long)delay / 1000);
    puppet_out(r, p);
    p->at = relay_now(r) + delay;
    p->tries = 0;
}

static void puppet_message(struct relay *r, struct relay_puppet *p, const struct stanza *st)
{
    if (!str_eq(stanza_attr(st, "type"), "error"))
        return; /* reflected copies (the bot reads its own) and private messages */
    const char *cond = error_condition(st);
    log_debug(r->tag, "message of %s refused: %s", p->irc_nick, cond);
    if (strcmp(cond, "not-acceptable") == 0 && p->state == RELAY_JOINED) {
        puppet_out(r, p); /* not an occupant any more: enter again */
        p->at = relay_now(r);
    }
}

/* Something for a bridge JID that is no longer in use (an earlier run, a removed [bridge]): when
 * the room still counts it as an occupant, it leaves. */
static void stale(struct gw *gw, const struct stanza *st, const struct jid *from, const char *to)
{
    const char *type = stanza_attr(st, "type");
    if (str_eq(type, "error") || str_eq(type, "unavailable") || !from->local)
        return;
    bool occupant = false;
    if (strcmp(st->name, "presence") == 0)
        occupant = has_status(stanza_child(st, "x", NS_MUC_USER), "110");
    else if (strcmp(st->name, "message") == 0)
        occupant = str_eq(type, "groupchat");
    if (!occupant)
        return;
    char *room = jid_bare_string(from);
    log_info("relay", "%s is not in use: leaving %s", to, room);
    struct stanza *p = gw_stanza("presence", to, room, "unavailable", NULL);
    gw_send(gw, p);
    free(room);
}

/* disco#info and ping answered (XEP-0030, XEP-0199); everything else is not served. */
static void relay_iq(struct gw *gw, const struct stanza *st)
{
    const char *type = stanza_attr(st, "type");
    if (!str_eq(type, "get") && !str_eq(type, "set"))
        return;
    const struct stanza *q = stanza_first_elem(st);
    if (q && str_eq(type, "get") && strcmp(q->name, "query") == 0 && str_eq(q->ns, NS_DISCO_INFO) &&
        !stanza_attr(q, "node")) {
        struct stanza *res = stanza_iq_result(st);
        struct stanza *rq = stanza_add_child(res, "query", NS_DISCO_INFO);
        struct stanza *id = stanza_add_child(rq, "identity", NULL);
        stanza_set_attr(id, "category", "client");
        stanza_set_attr(id, "type", "bot");
        stanza_set_attr(id, "name", "IRC relay");
        stanza_set_attr(stanza_add_child(rq, "feature", NULL), "var", NS_DISCO_INFO);
        stanza_set_attr(stanza_add_child(rq, "feature", NULL), "var", NS_PING);
        gw_send(gw, res);
    } else if (q && str_eq(type, "get") && strcmp(q->name, "ping") == 0 && str_eq(q->ns, NS_PING)) {
        gw_send(gw, stanza_iq_result(st));
    } else {
        gw_send_error(gw, st, "service-unavailable", NULL);
    }
}

bool relay_stanza(struct gw *gw, const struct stanza *st, const struct jid *from,
                  const struct jid *to)
{
    if (!st || !to || to->local || !to->resource || !starts_with(to->resource, "bridge:") ||
        strcasecmp(to->domain, gw_domain(gw)) != 0)
        return false;
    if (strcmp(st->name, "iq") == 0) {
        relay_iq(gw, st);
        return true;
    }
    if (!from)
        return true;
    char *to_s = jid_to_string(to);
    char *from_bare = jid_bare_string(from);
    struct relay *r = NULL;
    struct relay_puppet *p = NULL;
    bool bot = false;
    for (size_t i = 0; i < n_relays && !r; i++) {
        if (strcmp(relays[i]->bot_jid, to_s) == 0) {
            r = relays[i];
            bot = true;
        } else if ((p = puppet_by_jid(relays[i], to_s))) {
            r = relays[i];
        }
    }
    if (!r) {
        stale(gw, st, from, to_s);
    } else if (strcmp(from_bare, r->room) != 0) {
        log_debug(r->tag, "<%s/> from %s ignored", st->name, from_bare);
    } else if (strcmp(st->name, "presence") == 0) {
        if (bot)
            bot_presence(r, st, from);
        else
            puppet_presence(r, p, st, from);
    } else if (strcmp(st->name, "message") == 0) {
        if (bot)
            bot_message(r, st, from);
        else
            puppet_message(r, p, st);
    }
    free(to_s);
    free(from_bare);
    return true;
}

/* ---------------------------------------------------------------- IRC → MUC */

/* PRIVMSG or NOTICE in the channel: from the puppet of nick (or the bot, for a nick that has
 * none: a user outside a channel without +n). */
static void irc_text(struct relay *r, const char *nick, const char *raw)
{
    size_t alen = 0;
    const char *action = irc_ctcp_action(raw, &alen);
    char *body;
    if (action) {
        char *a = xstrndup(action, alen);
        char *t = clean_text(a);
        body = xasprintf("/me %s", t);
        free(t);
        free(a);
    } else if (raw[0] == '\001') {
        return; /* other CTCP requests */
    } else {
        body = clean_text(raw);
    }
    const char *check = action ? body + 4 : body;
    if (!*check || strspn(check, " \t\n") == strlen(check)) {
        free(body);
        return;
    }
    struct relay_puppet *p = puppet_by_irc(r, nick);
    if (p)
        puppet_say(r, p, body);
    else
        bot_says_for(r, nick, body);
    free(body);
}

static void names_reply(struct relay *r, const struct irc_msg *m)
{
    /* 353 me [=*@] #chan :names (RFC 2812 §5.1; some servers leave out the symbol) */
    if (m->nparams < 3 || !is_channel(r, m->params[m->nparams - 2]))
        return;
    char *names = xstrdup(m->params[m->nparams - 1]);
    char *save = NULL;
    int count = 0;
    for (char *tok = strtok_r(names, " ", &save); tok && count < RELAY_MAX_PUPPETS;
         tok = strtok_r(NULL, " ", &save), count++) {
        char modes[16];
        const char *nick = irc_names_entry(r->irc, tok, modes, sizeof modes);
        if (!nick || !*nick)
            continue;
        struct relay_puppet *p = puppet_get(r, nick);
        if (p)
            p->seen = true;
    }
    free(names);
}

/* 366: the NAMES reply after our JOIN is complete; puppets of nicks not in it leave. */
static void names_end(struct relay *r, const struct irc_msg *m)
{
    if (m->nparams < 2 || !is_channel(r, m->params[1]) || !r->names_sync)
        return;
    r->names_sync = false;
    for (size_t i = r->n_puppets; i-- > 0;)
        if (!r->puppets[i]->seen)
            puppet_remove(r, r->puppets[i], "no longer on IRC");
}

static void lost_channel(struct relay *r, const char *why)
{
    r->in_channel = false;
    r->names_sync = false;
    r->chan_retry_at = relay_now(r) + r->chan_backoff;
    log_warn(r->tag, "not in %s (%s): JOIN again in %llu s", r->channel, why,
             (unsigned long long)r->chan_backoff / 1000);
    r->chan_backoff *= 2;
    if (r->chan_backoff > RELAY_CHAN_BACKOFF_MAX)
        r->chan_backoff = RELAY_CHAN_BACKOFF_MAX;
}

static void irc_on_message(struct irc_conn *c, void *ud, const struct irc_msg *m)
{
    struct relay *r = ud;
    if (!r)
        return;
    const char *cmd = m->command;
    const char *me = irc_nick(c);
    bool from_me = m->nick[0] && me && irc_casecmp(c, m->nick, me) == 0;
    char status[600];
    if (strcmp(cmd, "JOIN") == 0 && m->nparams >= 1 && is_channel(r, m->params[0])) {
        if (from_me) {
            log_info(r->tag, "in %s", r->channel);
            r->in_channel = true;
            r->names_sync = true;
            r->chan_retry_at = 0;
            r->chan_backoff = RELAY_CHAN_BACKOFF_MIN;
            for (size_t i = 0; i < r->n_puppets; i++)
                r->puppets[i]->seen = false;
        } else {
            struct relay_puppet *p = puppet_get(r, m->nick);
            if (p)
                p->seen = true;
        }
    } else if (strcmp(cmd, "PART") == 0 && m->nparams >= 1 && is_channel(r, m->params[0])) {
        if (from_me) {
            lost_channel(r, "parted");
        } else {
            snprintf(status, sizeof status, "left IRC%s%.500s",
                     m->nparams >= 2 && *m->params[1] ? ": " : "",
                     m->nparams >= 2 ? m->params[1] : "");
            puppet_gone(r, m->nick, status);
        }
    } else if (strcmp(cmd, "QUIT") == 0 && !from_me) {
        snprintf(status, sizeof status, "quit IRC%s%.500s",
                 m->nparams >= 1 && *m->params[0] ? ": " : "", m->nparams >= 1 ? m->params[0] : "");
        puppet_gone(r, m->nick, status);
    } else if (strcmp(cmd, "KICK") == 0 && m->nparams >= 2 && is_channel(r, m->params[0])) {
        if (me && irc_casecmp(c, m->params[1], me) == 0) {
            lost_channel(r, "kicked");
        } else {
            snprintf(status, sizeof status, "kicked from IRC by %.100s%s%.400s", m->nick,
                     m->nparams >= 3 && *m->params[2] ? ": " : "",
                     m->nparams >= 3 ? m->params[2] : "");
            puppet_gone(r, m->params[1], status);
        }
    } else if (strcmp(cmd, "NICK") == 0 && m->nparams >= 1 && !from_me) {
        puppet_rename(r, m->nick, m->params[0]);
    } else if ((strcmp(cmd, "PRIVMSG") == 0 || strcmp(cmd, "NOTICE") == 0) && m->nparams >= 2 &&
               is_channel(r, m->params[0]) && !from_me && m->userhost[0]) {
        irc_text(r, m->nick, m->params[1]);
    } else if (strcmp(cmd, "353") == 0) {
        names_reply(r, m);
    } else if (strcmp(cmd, "366") == 0) {
        names_end(r, m);
    } else if ((strcmp(cmd, "471") == 0 || strcmp(cmd, "473") == 0 || strcmp(cmd, "474") == 0 ||
                strcmp(cmd, "475") == 0 || strcmp(cmd, "403") == 0 || strcmp(cmd, "405") == 0 ||
                strcmp(cmd, "477") == 0 || strcmp(cmd, "437") == 0) &&
               m->nparams >= 2 && is_channel(r, m->params[1])) {
        log_warn(r->tag, "JOIN %s refused: %s %.200s", r->channel, cmd, m->params[m->nparams - 1]);
        lost_channel(r, "JOIN refused");
    }
}

static void irc_on_registered(struct irc_conn *c, void *ud, const char *nick)
{
    struct relay *r = ud;
    if (!r)
        return;
    log_debug(r->tag, "registered on %s as %s: JOIN %s", r->host, nick, r->channel);
    r->backoff_ms = RELAY_IRC_BACKOFF_MIN;
    r->down_since = 0;
    r->chan_backoff = RELAY_CHAN_BACKOFF_MIN;
    r->chan_retry_at = relay_now(r) + RELAY_CHAN_JOIN_WAIT_MS;
    irc_send(c, "JOIN %s", r->channel);
}

static void reconnect_fire(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct relay *r = ud;
    r->reconnect = NULL;
    relay_connect(r);
}

static void irc_on_closed(struct irc_conn *c, void *ud, const char *reason)
{
    (void)c;
    struct relay *r = ud;
    if (!r)
        return;
    r->irc = NULL;
    r->in_channel = false;
    r->names_sync = false;
    if (!r->down_since)
        r->down_since = relay_now(r);
    log_warn(r->tag, "IRC connection to %s closed (%s); again in %llu s", r->host,
             reason ? reason : "?", (unsigned long long)r->backoff_ms / 1000);
    r->reconnect = ev_timer_add(gw_loop(r->gw), r->backoff_ms, reconnect_fire, r);
    r->backoff_ms *= 2;
    if (r->backoff_ms > RELAY_IRC_BACKOFF_MAX)
        r->backoff_ms = RELAY_IRC_BACKOFF_MAX;
}

static const struct irc_conn_cb relay_irc_cb = {
    .registered = irc_on_registered,
    .message = irc_on_message,
    .closed = irc_on_closed,
};

static void relay_connect(struct relay *r)
{
    const struct config_gateway *g = gw_gateway_config(r->gw);
    struct irc_conn_opts o = {0};
    o.host = r->host;
    o.port = r->port;
    o.tls = r->tls;
    o.tls_verify = r->tls_verify;
    o.tls_name = r->network;
    o.nick = r->nick;
    o.realname = g && g->irc_realname ? g->irc_realname : "Isthmus IRC relay";
    o.password = r->password;
    o.flood_burst = g ? g->irc_flood_burst : 0;
    o.flood_interval_ms = g ? g->irc_flood_interval_ms : 0;
    o.tag = r->tag;
    log_debug(r->tag, "connecting to %s:%u%s", r->host, (unsigned)r->port, r->tls ? " (TLS)" : "");
    r->irc = irc_connect(gw_loop(r->gw), &o, &relay_irc_cb, r);
}

/* ---------------------------------------------------------------- the tick */

static void relay_tick_one(struct relay *r, uint64_t now)
{
    if (r->irc && irc_is_registered(r->irc) && !r->in_channel && r->chan_retry_at &&
        now >= r->chan_retry_at) {
        r->chan_retry_at = now + RELAY_CHAN_JOIN_WAIT_MS; /* until the JOIN comes back */
        irc_send(r->irc, "JOIN %s", r->channel);
    }
    if (r->down_since && now - r->down_since > RELAY_IRC_LOST_MS && r->n_puppets) {
        log_info(r->tag, "IRC down for long: puppets leave %s", r->room);
        for (size_t i = r->n_puppets; i-- > 0;)
            puppet_remove(r, r->puppets[i], "IRC connection lost");
    }
    if (!gw_is_online(r->gw))
        return;
    if (r->bot_state == RELAY_OUT && now >= r->bot_at) {
        bot_join(r);
    } else if (r->bot_state == RELAY_JOINING && now - r->bot_at > RELAY_JOIN_TIMEOUT_MS) {
        log_warn(r->tag, "no answer from %s: joining again", r->room);
        bot_join(r);
    }
    if (r->bot_state != RELAY_JOINED)
        return;
    for (size_t i = 0; i < r->n_puppets; i++) {
        struct relay_puppet *p = r->puppets[i];
        if (p->state == RELAY_OUT && now >= p->at)
            puppet_join(r, p);
        else if (p->state == RELAY_JOINING && now - p->at > RELAY_JOIN_TIMEOUT_MS)
            puppet_failed(r, p, "no answer");
    }
}

static void tick_fire(struct ev_loop *loop, void *ud)
{
    (void)ud;
    tick = NULL;
    uint64_t now = ev_now(loop);
    for (size_t i = 0; i < n_relays; i++)
        relay_tick_one(relays[i], now);
    tick = ev_timer_add(loop, RELAY_TICK_MS, tick_fire, NULL);
}

/* ---------------------------------------------------------------- lifecycle */

static void relay_free(struct relay *r)
{
    if (!r)
        return;
    if (r->irc) {
        irc_set_ud(r->irc, NULL); /* closed() comes later and must not find r */
        irc_quit(r->irc, "relay stopping");
    }
    if (r->reconnect)
        ev_timer_cancel(gw_loop(r->gw), r->reconnect);
    for (size_t i = 0; i < r->n_puppets; i++)
        puppet_free(r->puppets[i]);
    free(r->puppets);
    occupants_clear(r);
    for (size_t i = 0; i < RELAY_GHOSTS; i++)
        free(r->ghosts[i].nick);
    free(r->name);
    free(r->channel);
    free(r->network);
    free(r->room);
    free(r->nick);
    free(r->tag);
    free(r->bot_jid);
    free(r->puppet_prefix);
    free(r->host);
    free(r->password);
    free(r->bot_nick);
    free(r);
}

static bool bridge_is_ours(const struct config *cfg, const struct config_bridge *b,
                           const char *domain)
{
    if (!b->gateway) {
        size_t n_irc = 0;
        for (size_t i = 0; i < cfg->n_gateways; i++)
            if (str_eq(cfg->gateways[i].type, "irc"))
                n_irc++;
        return n_irc <= 1;
    }
    char *g = jid_prep_domain(b->gateway);
    bool ours = g && strcasecmp(g, domain) == 0;
    free(g);
    return ours;
}

/* A relay for b, or NULL with the reason logged. */
static struct relay *relay_new(struct gw *gw, const struct config_bridge *b)
{
    const struct config *cfg = gw_config(gw);
    const struct config_gateway *g = gw_gateway_config(gw);
    const char *domain = gw_domain(gw);
    const char *nick = b->nick && *b->nick ? b->nick : "relaybot";
    if (!b->name || !b->channel || !*b->channel || !b->network || !*b->network || !b->muc) {
        log_error("relay", "[bridge %s]: irc and muc are required", b->name ? b->name : "?");
        return NULL;
    }
    char *nick_prepped = jid_prep_resource(nick);
    bool nick_ok = nick_prepped && strlen(nick) <= 64 && !strpbrk(nick, " ,*?!@:#\t");
    free(nick_prepped);
    if (!nick_ok) {
        log_error("relay", "[bridge %s]: nick '%s' cannot be an IRC nick", b->name, nick);
        return NULL;
    }
    struct jid room;
    if (jid_parse(b->muc, &room) < 0 || !room.local || room.resource) {
        if (room.domain)
            jid_fini(&room);
        log_error("relay", "[bridge %s]: muc '%s' is not a room JID", b->name, b->muc);
        return NULL;
    }
    struct relay *r = xcalloc(1, sizeof *r);
    r->gw = gw;
    r->name = xstrdup(b->name);
    r->channel = xstrdup(b->channel);
    r->network = xstrdup(b->network);
    r->room = jid_bare_string(&room);
    jid_fini(&room);
    r->nick = xstrdup(nick);
    r->tag = xasprintf("relay %s", b->name);
    char *s = xasprintf("%s/bridge:%s:bot", domain, b->name);
    r->bot_jid = jid_normalize(s);
    free(s);
    s = xasprintf("%s/bridge:%s:puppet:x", domain, b->name);
    r->puppet_prefix = jid_normalize(s);
    free(s);
    if (!r->bot_jid || !r->puppet_prefix || strlen(r->puppet_prefix) > 700) {
        log_error("relay", "[bridge %s]: the name cannot be part of a JID", b->name);
        relay_free(r);
        return NULL;
    }
    r->puppet_prefix[strlen(r->puppet_prefix) - 1] = '\0'; /* drop the "x" */
    const struct config_irc_network *net = config_irc_network_find(cfg, b->network);
    bool verify = g ? g->irc_tls_verify : true;
    if (net) {
        r->host = xstrdup(net->n_address ? net->address[0].host : b->network);
        r->port = net->n_address ? net->address[0].port : 0;
        r->tls = net->tls;
        r->tls_verify = verify && net->tls_verify;
        r->password = xstrdup(net->password);
    } else {
        r->host = xstrdup(b->network);
        r->port = 6697;
        r->tls = true;
        r->tls_verify = verify;
    }
    r->backoff_ms = RELAY_IRC_BACKOFF_MIN;
    r->chan_backoff = RELAY_CHAN_BACKOFF_MIN;
    r->bot_state = RELAY_OUT;
    r->syncing = true;
    return r;
}

int relay_init(struct gw *gw)
{
    const struct config *cfg = gw_config(gw);
    relay_gw = gw;
    for (size_t i = 0; i < cfg->n_bridges; i++) {
        const struct config_bridge *b = &cfg->bridges[i];
        if (!bridge_is_ours(cfg, b, gw_domain(gw)))
            continue;
        struct relay *r = relay_new(gw, b);
        if (!r) {
            relay_fini(gw);
            return -1;
        }
        relays = xrealloc(relays, (n_relays + 1) * sizeof *relays);
        relays[n_relays++] = r;
        log_info(r->tag, "relaying %s on %s to %s", r->channel, r->network, r->room);
    }
    for (size_t i = 0; i < n_relays; i++)
        relay_connect(relays[i]);
    if (n_relays)
        tick = ev_timer_add(gw_loop(gw), RELAY_TICK_MS, tick_fire, NULL);
    return 0;
}

void relay_online(struct gw *gw)
{
    (void)gw;
    for (size_t i = 0; i < n_relays; i++) {
        struct relay *r = relays[i];
        /* The room may have gone with the server, or kept us: join again either way. */
        r->bot_tries = 0;
        r->bot_kicks = 0;
        for (size_t j = 0; j < r->n_puppets; j++) {
            struct relay_puppet *p = r->puppets[j];
            p->state = RELAY_OUT;
            p->at = 0;
            p->tries = 0;
            free(p->muc_nick);
            p->muc_nick = NULL;
            free(p->try_nick);
            p->try_nick = NULL;
        }
        bot_join(r);
    }
}

void relay_fini(struct gw *gw)
{
    for (size_t i = 0; i < n_relays; i++) {
        struct relay *r = relays[i];
        if (gw_is_online(gw)) {
            for (size_t j = 0; j < r->n_puppets; j++)
                if (r->puppets[j]->state != RELAY_OUT)
                    send_leave(r, r->puppets[j]->jid, NULL, "relay stopping");
            if (r->bot_state != RELAY_OUT)
                send_leave(r, r->bot_jid, NULL, "relay stopping");
        }
        relay_free(r);
    }
    free(relays);
    relays = NULL;
    n_relays = 0;
    if (tick)
        ev_timer_cancel(gw_loop(gw), tick);
    tick = NULL;
    relay_gw = NULL;
}
