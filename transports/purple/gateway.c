/* gateway.c — isthmus-purple's gateway process: the gw_driver that maps XMPP users onto legacy
 * accounts held by libpurple backend processes (backend.c), which it spawns, supervises and
 * restarts (logging their users back in), talking to them with proto.h lines.
 *
 * Addressing (all on this gateway's domain GW):
 *   - a legacy contact NAME is the XEP-0106-escaped NAME@GW (carol\40peer.test@GW for an XMPP
 *     buddy, bob@GW for an IRC nick); JIDs are case-folded, so case-sensitive legacy names lose
 *     their case;
 *   - a chat (IRC channel, XMPP MUC, ...) is a XEP-0045 room: escaped chat name @GW
 *     (\23test@GW for #test); occupants are room/legacy nick;
 *   - prompts of libpurple (certificate acceptance, input requests) arrive as messages from GW;
 *     the user's reply (a message to GW) answers the oldest pending one; its forms (fields and
 *     choice requests) arrive as XEP-0004 forms in normal messages from GW (the request id in
 *     a hidden field and the thread), answered by a message with the submitted (or cancelled)
 *     form, or by a reply as above.
 *
 * Events from a backend (proto.h lines) are listed in backend.c. */
#include "purple_gw.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "isthmus/log.h"
#include "isthmus/util.h"
#include "proto.h"

#define TAG "purple"
#define NS_VCARD "vcard-temp"
#define NS_VCARD_UPDATE "vcard-temp:x:update"
#define PG_MAX_QUEUE 200          /* commands held per user while its account is not connected */
#define PG_MAX_WBUF (16u << 20)    /* unsent bytes to one backend; lines beyond are dropped */
#define PG_RESTART_MAX_MS 30000
#define PG_MAX_ROOMS 100            /* rooms one user may be in */
#define PG_DESCRIBE_MAX (4u << 20)

/* ---- the installed protocol plugins (from `isthmus-purple --describe`) ---- */

struct pg_option {
    char *type; /* bool | int | string | secret | list */
    char *key, *label, *def;
    char **list; /* value, label pairs, NULL-terminated */
    char *var;   /* form var */
};

struct pg_split {
    char *label, *def, *var;
};

struct pg_prpl {
    char *id, *name;
    struct pg_split *splits;
    size_t n_splits;
    struct pg_option *opts;
    size_t n_opts;
};

/* ---- backends ---- */

struct pg_backend {
    int idx;
    pid_t pid;
    int fd;
    bool ready;
    char *rbuf;
    size_t rlen;
    struct buf wbuf;
    unsigned fails;
    uint64_t started;
    struct ev_timer *restart;
    char *dir; /* libpurple's user dir of the running process (we remove it after) */
};

/* ---- users ---- */

struct pg_contact {
    char *name;
    char *show; /* online | away | xa | dnd | offline */
    char *status;
    long idle;
    char *photo_sha1; /* hex, or NULL */
    unsigned char *photo;
    size_t photo_len;
};

struct pg_room {
    char *name;
    char *mynick;  /* the legacy nick (empty until joined) */
    bool joined;
    char **res;    /* full JIDs of the user's resources in the room */
    size_t n_res;
    char **occupants;
    size_t n_occupants;
};

struct pg_user {
    struct gw_user *u;
    char *jid;
    int backend;
    bool connected;
    bool logged_in;
    bool failed;  /* the account hit a fatal error (e.g. bad password): nothing is queued */
    char **queue; /* proto lines held until connected */
    size_t n_queue;
    struct pg_contact *contacts;
    size_t n_contacts;
    char **known; /* contacts already in the roster (from the store) */
    size_t n_known;
    struct pg_room *rooms;
    size_t n_rooms;
    unsigned *requests;
    size_t n_requests;
    char *show, *status; /* the user's presence, sent on connect */
    long idle;           /* seconds (XEP-0319), 0: not idle */
};

static struct {
    struct gw *gw;
    struct gw_driver *driver;
    struct pg_prpl *prpls;
    size_t n_prpls;
    struct gw_field *fields;
    size_t n_fields;
    char **strings; /* everything the fields point to */
    size_t n_strings;
    struct pg_backend **backends;
    size_t n_backends;
    struct pg_user **users;
    size_t n_users;
    char *certdir;
} pg;

static void backend_spawn(struct pg_backend *b);
static void backend_write(struct pg_backend *b, const char *const *f, size_t n);
static void user_send_login(struct pg_user *pu);

static char *keep(char *s)
{
    pg.strings = xrealloc(pg.strings, (pg.n_strings + 1) * sizeof *pg.strings);
    pg.strings[pg.n_strings++] = s;
    return s;
}

static bool strv_has(char **v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return true;
    return false;
}

static void strv_add(char ***v, size_t *n, const char *s)
{
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = xstrdup(s);
}

static bool strv_del(char **v, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(v[i], s) == 0) {
            free(v[i]);
            v[i] = v[--*n];
            return true;
        }
    }
    return false;
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* ---- describing the plugins and building the registration form ---- */

static struct pg_prpl *prpl_find(const char *id)
{
    for (size_t i = 0; i < pg.n_prpls; i++)
        if (id && strcmp(pg.prpls[i].id, id) == 0)
            return &pg.prpls[i];
    return NULL;
}

static void slug(char *s)
{
    for (char *p = s; *p; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
        else if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                   *p == '_'))
            *p = '_';
    }
}

static void parse_describe(char *out, size_t len)
{
    size_t off = 0, next, l;
    while (off < len && (l = pproto_next_line(out + off, len - off, &next)) != (size_t)-1) {
        char *line = out + off;
        line[l] = '\0';
        off += next;
        char *f[PPROTO_MAX_FIELDS];
        size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
        if (n >= 3 && strcmp(f[0], "prpl") == 0) {
            pg.prpls = xrealloc(pg.prpls, (pg.n_prpls + 1) * sizeof *pg.prpls);
            struct pg_prpl *p = &pg.prpls[pg.n_prpls++];
            memset(p, 0, sizeof *p);
            p->id = xstrdup(f[1]);
            p->name = xstrdup(f[2]);
        } else if (n >= 5 && strcmp(f[0], "split") == 0) {
            struct pg_prpl *p = prpl_find(f[1]);
            if (!p)
                continue;
            p->splits = xrealloc(p->splits, (p->n_splits + 1) * sizeof *p->splits);
            struct pg_split *s = &p->splits[p->n_splits++];
            s->label = xstrdup(f[2]);
            s->def = xstrdup(f[3]);
            s->var = NULL;
        } else if (n >= 6 && strcmp(f[0], "option") == 0) {
            struct pg_prpl *p = prpl_find(f[1]);
            if (!p)
                continue;
            p->opts = xrealloc(p->opts, (p->n_opts + 1) * sizeof *p->opts);
            struct pg_option *o = &p->opts[p->n_opts++];
            memset(o, 0, sizeof *o);
            o->type = xstrdup(f[2]);
            o->key = xstrdup(f[3]);
            o->label = xstrdup(f[4]);
            o->def = xstrdup(f[5]);
            size_t nl = n > 6 ? (n - 6) / 2 * 2 : 0;
            o->list = xcalloc(nl + 1, sizeof *o->list);
            for (size_t i = 0; i < nl; i++)
                o->list[i] = xstrdup(f[6 + i]);
        }
    }
}

/* Runs `/proc/self/exe --describe [PRPL...]` and reads what it prints. */
static int describe(const struct config_gateway *g)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(p[1], 1);
        char **argv = xcalloc(g->n_purple_protocols + 3, sizeof *argv);
        argv[0] = "isthmus-purple";
        argv[1] = "--describe";
        for (size_t i = 0; i < g->n_purple_protocols; i++)
            argv[2 + i] = g->purple_protocols[i];
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(p[1]);
    char *out = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 131072;
            out = xrealloc(out, cap);
        }
        ssize_t r = read(p[0], out + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len > PG_DESCRIBE_MAX)
            break;
    }
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (out)
        out[len] = '\0';
    if (out && len <= PG_DESCRIBE_MAX)
        parse_describe(out, len);
    free(out);
    return pg.n_prpls ? 0 : -1;
}

static const char *const *list_options(char **list)
{
    return (const char *const *)list;
}

static void add_field(const char *var, enum gw_field_type type, const char *label,
                      const char *legacy, bool required, const char *def,
                      const char *const *options, const char *desc)
{
    pg.fields = xrealloc(pg.fields, (pg.n_fields + 1) * sizeof *pg.fields);
    pg.fields[pg.n_fields++] = (struct gw_field){
        .var = var, .type = type, .label = label, .legacy = legacy, .required = required,
        .def = def && *def ? def : NULL, .options = options, .desc = desc};
}

/* XEP-0100 §4.1: the form is built from each plugin's own account settings: the username and
 * its parts (user splits: IRC server, XMPP domain and resource), the password, and every
 * protocol option (string, int, bool, list) with its default. With one protocol the vars are
 * "username", "password", "s.<part>", "o.<option key>"; with several, a "protocol" list comes
 * first and the parts and options are "<prpl id>.s.<part>" / "<prpl id>.o.<key>". */
static void build_form(void)
{
    bool multi = pg.n_prpls > 1;
    if (multi) {
        char **opts = xcalloc(pg.n_prpls * 2 + 1, sizeof *opts);
        for (size_t i = 0; i < pg.n_prpls; i++) {
            opts[2 * i] = pg.prpls[i].id;
            opts[2 * i + 1] = pg.prpls[i].name;
        }
        keep((char *)opts);
        add_field("protocol", GW_LIST, "Protocol", NULL, true, pg.prpls[0].id,
                  (const char *const *)opts, "The legacy network of the account");
    }
    add_field("username", GW_TEXT, "Username", "username", true, NULL, NULL, NULL);
    add_field("password", GW_PRIVATE, "Password", "password", false, NULL, NULL, NULL);
    for (size_t i = 0; i < pg.n_prpls; i++) {
        struct pg_prpl *p = &pg.prpls[i];
        for (size_t j = 0; j < p->n_splits; j++) {
            struct pg_split *s = &p->splits[j];
            char *sl = xstrdup(s->label);
            slug(sl);
            s->var = multi ? xasprintf("%s.s.%s", p->id, sl) : xasprintf("s.%s", sl);
            free(sl);
            char *label = multi ? keep(xasprintf("%s: %s", p->name, s->label)) : s->label;
            add_field(s->var, GW_TEXT, label, NULL, false, s->def, NULL, NULL);
        }
        for (size_t j = 0; j < p->n_opts; j++) {
            struct pg_option *o = &p->opts[j];
            o->var = multi ? xasprintf("%s.o.%s", p->id, o->key) : xasprintf("o.%s", o->key);
            char *label = multi ? keep(xasprintf("%s: %s", p->name, o->label)) : o->label;
            enum gw_field_type t = strcmp(o->type, "bool") == 0     ? GW_BOOL
                                   : strcmp(o->type, "list") == 0   ? GW_LIST
                                   : strcmp(o->type, "secret") == 0 ? GW_PRIVATE
                                                                    : GW_TEXT;
            const char *def = o->def;
            if (t == GW_BOOL)
                def = strcmp(o->def, "1") == 0 ? "true" : "false";
            add_field(o->var, t, label, NULL, false, def,
                      t == GW_LIST ? list_options(o->list) : NULL, NULL);
        }
    }
}

static void prpls_free(void)
{
    for (size_t i = 0; i < pg.n_prpls; i++) {
        struct pg_prpl *p = &pg.prpls[i];
        for (size_t j = 0; j < p->n_splits; j++) {
            free(p->splits[j].label);
            free(p->splits[j].def);
            free(p->splits[j].var);
        }
        for (size_t j = 0; j < p->n_opts; j++) {
            struct pg_option *o = &p->opts[j];
            free(o->type);
            free(o->key);
            free(o->label);
            free(o->def);
            free(o->var);
            for (char **l = o->list; l && *l; l++)
                free(*l);
            free(o->list);
        }
        free(p->splits);
        free(p->opts);
        free(p->id);
        free(p->name);
    }
    free(pg.prpls);
    strv_free(pg.strings, pg.n_strings);
    free(pg.fields);
}

/* The protocol of a registration (or of submitted values). */
static struct pg_prpl *reg_prpl(const struct gw_kv *kv, size_t n, const struct gw_user *u)
{
    if (pg.n_prpls == 1)
        return &pg.prpls[0];
    const char *id = u ? gw_user_reg(u, "protocol") : gw_kv_get(kv, n, "protocol");
    return prpl_find(id ? id : pg.prpls[0].id);
}

/* ---- stanzas to the user ---- */

/* The JID of a legacy name (and resource), or NULL when it would not be a valid JID (RFC 7622
 * limits and preparation: legacy names come from the network). */
static char *contact_jid(const char *legacy, const char *resource)
{
    if (resource && !*resource)
        resource = NULL;
    char *s = gw_jid_for(pg.gw, legacy, resource);
    struct jid j;
    if (!s)
        return NULL;
    if (jid_parse(s, &j) < 0) {
        free(s);
        return NULL;
    }
    free(s);
    s = jid_to_string(&j); /* prepared: case-folded like the JIDs that come back */
    jid_fini(&j);
    return s;
}

static struct pg_contact *contact_get(struct pg_user *pu, const char *name, bool create)
{
    for (size_t i = 0; i < pu->n_contacts; i++)
        if (strcmp(pu->contacts[i].name, name) == 0)
            return &pu->contacts[i];
    if (!create)
        return NULL;
    pu->contacts = xrealloc(pu->contacts, (pu->n_contacts + 1) * sizeof *pu->contacts);
    struct pg_contact *c = &pu->contacts[pu->n_contacts++];
    memset(c, 0, sizeof *c);
    c->name = xstrdup(name);
    c->show = xstrdup("offline");
    c->status = xstrdup("");
    return c;
}

static void contact_presence_to(struct pg_user *pu, struct pg_contact *c, const char *to)
{
    char *from = contact_jid(c->name, NULL);
    if (!from)
        return;
    bool off = strcmp(c->show, "offline") == 0;
    struct stanza *p = gw_stanza("presence", from, to, off ? "unavailable" : NULL, NULL);
    if (!off && strcmp(c->show, "online") != 0)
        stanza_add_text_child(p, "show", NULL, c->show);
    if (*c->status)
        stanza_add_text_child(p, "status", NULL, c->status);
    if (!off && c->idle > 0) {
        /* XEP-0319: idle since */
        time_t since = time(NULL) - c->idle;
        struct tm tm;
        char ts[32];
        gmtime_r(&since, &tm);
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
        struct stanza *i = stanza_add_child(p, "idle", "urn:xmpp:idle:1");
        stanza_set_attr(i, "since", ts);
    }
    if (!off) {
        /* XEP-0153 */
        struct stanza *x = stanza_add_child(p, "x", NS_VCARD_UPDATE);
        if (c->photo_sha1)
            stanza_add_text_child(x, "photo", NS_VCARD_UPDATE, c->photo_sha1);
    }
    free(from);
    (void)pu;
    gw_send(pg.gw, p);
}

static void message_to(const char *from, const char *to, const char *type, const char *body)
{
    struct stanza *m = gw_stanza("message", from, to, type, NULL);
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    if (body)
        stanza_add_text_child(m, "body", NULL, body);
    gw_send(pg.gw, m);
}

static void notice(struct pg_user *pu, const char *text)
{
    message_to(gw_domain(pg.gw), pu->jid, "chat", text);
}

#define PG_REQUEST_VAR "isthmus-request"
#define PG_THREAD_PREFIX "purple-request-"

/* A backend's "form" event (f[2..]: ID TITLE INSTRUCTIONS TEXT FIELD...) as an XEP-0004 form in
 * a normal message from GW to jid; the request id rides in a hidden field and the thread. */
static void form_to(const char *jid, char **f, size_t n)
{
    struct stanza *m = gw_stanza("message", gw_domain(pg.gw), jid, "normal", NULL);
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    stanza_add_text_child(m, "body", NULL, f[5]);
    char *thread = xasprintf(PG_THREAD_PREFIX "%s", f[2]);
    stanza_add_text_child(m, "thread", NULL, thread);
    free(thread);
    struct stanza *x = stanza_add_child(m, "x", NS_DATA);
    stanza_set_attr(x, "type", "form");
    if (*f[3])
        stanza_add_text_child(x, "title", NS_DATA, f[3]);
    if (*f[4])
        stanza_add_text_child(x, "instructions", NS_DATA, f[4]);
    struct stanza *h = stanza_add_child(x, "field", NS_DATA);
    stanza_set_attr(h, "var", PG_REQUEST_VAR);
    stanza_set_attr(h, "type", "hidden");
    stanza_add_text_child(h, "value", NS_DATA, f[2]);
    for (size_t i = 6; i < n; i++) {
        /* VAR TYPE LABEL REQUIRED NVALUES VALUE... (OPTVALUE OPTLABEL)... */
        char *r[PPROTO_MAX_FIELDS];
        size_t k = pproto_split(f[i], r, PPROTO_MAX_FIELDS);
        if (k < 5 || !*r[0] || strcmp(r[0], PG_REQUEST_VAR) == 0)
            continue;
        size_t nv = (size_t)strtoul(r[4], NULL, 10);
        if (nv > k - 5)
            nv = k - 5;
        struct stanza *fd = stanza_add_child(x, "field", NS_DATA);
        stanza_set_attr(fd, "var", r[0]);
        stanza_set_attr(fd, "type", r[1]);
        if (*r[2])
            stanza_set_attr(fd, "label", r[2]);
        if (strcmp(r[3], "1") == 0)
            stanza_add_child(fd, "required", NS_DATA);
        for (size_t j = 0; j < nv; j++)
            stanza_add_text_child(fd, "value", NS_DATA, r[5 + j]);
        for (size_t j = 5 + nv; j + 1 < k; j += 2) {
            struct stanza *o = stanza_add_child(fd, "option", NS_DATA);
            if (*r[j + 1])
                stanza_set_attr(o, "label", r[j + 1]);
            stanza_add_text_child(o, "value", NS_DATA, r[j]);
        }
    }
    gw_send(pg.gw, m);
}

static void requests_add(unsigned **v, size_t *n, const char *id)
{
    if (*n >= 64) { /* a backend flooding prompts: forget the oldest */
        memmove(*v, *v + 1, (*n - 1) * sizeof **v);
        (*n)--;
    }
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = (unsigned)strtoul(id, NULL, 10);
}

/* ---- users ---- */

static struct pg_user *user_of(struct gw_user *u)
{
    return u ? u->data : NULL;
}

static struct pg_user *user_by_jid(const char *jid)
{
    for (size_t i = 0; i < pg.n_users; i++)
        if (strcmp(pg.users[i]->jid, jid) == 0)
            return pg.users[i];
    return NULL;
}

static int known_cb(void *ud, const char *contact, const char *name)
{
    (void)name;
    struct pg_user *pu = ud;
    strv_add(&pu->known, &pu->n_known, contact);
    return 0;
}

static struct pg_user *user_new(struct gw_user *u)
{
    struct pg_user *pu = xcalloc(1, sizeof *pu);
    pu->u = u;
    pu->jid = xstrdup(u->jid);
    pu->backend = -1;
    u->data = pu;
    gw_store_contact_each(gw_store(pg.gw), pu->jid, known_cb, pu);
    pg.users = xrealloc(pg.users, (pg.n_users + 1) * sizeof *pg.users);
    pg.users[pg.n_users++] = pu;
    return pu;
}

static void room_free(struct pg_room *r)
{
    free(r->name);
    free(r->mynick);
    strv_free(r->res, r->n_res);
    strv_free(r->occupants, r->n_occupants);
}

static void user_free(struct pg_user *pu)
{
    for (size_t i = 0; i < pg.n_users; i++) {
        if (pg.users[i] == pu) {
            pg.users[i] = pg.users[--pg.n_users];
            break;
        }
    }
    strv_free(pu->queue, pu->n_queue);
    for (size_t i = 0; i < pu->n_contacts; i++) {
        struct pg_contact *c = &pu->contacts[i];
        free(c->name);
        free(c->show);
        free(c->status);
        free(c->photo_sha1);
        free(c->photo);
    }
    free(pu->contacts);
    strv_free(pu->known, pu->n_known);
    for (size_t i = 0; i < pu->n_rooms; i++)
        room_free(&pu->rooms[i]);
    free(pu->rooms);
    free(pu->requests);
    free(pu->show);
    free(pu->status);
    free(pu->jid);
    free(pu);
}

/* Sends (or, while the account is not connected, queues) a command for pu's account. */
static void user_cmd(struct pg_user *pu, const char *const *f, size_t n, bool queue)
{
    if (pu->backend < 0)
        return;
    if (!pu->connected) {
        if (!queue || pu->failed || pu->n_queue >= PG_MAX_QUEUE)
            return;
        char *line = pproto_line(f, n, NULL);
        pu->queue = xrealloc(pu->queue, (pu->n_queue + 1) * sizeof *pu->queue);
        pu->queue[pu->n_queue++] = line;
        return;
    }
    backend_write(pg.backends[pu->backend], f, n);
}

#define USER_CMD(pu, queue, ...)                                                   \
    do {                                                                           \
        const char *f_[] = {__VA_ARGS__};                                          \
        user_cmd(pu, f_, sizeof f_ / sizeof f_[0], queue);                         \
    } while (0)

static int backend_count(int idx)
{
    int n = 0;
    for (size_t i = 0; i < pg.n_users; i++)
        if (pg.users[i]->backend == idx)
            n++;
    return n;
}

static int backend_pick(void)
{
    unsigned max = gw_gateway_config(pg.gw)->purple_accounts_per_backend;
    if (max == 0)
        max = 50;
    for (size_t i = 0; i < pg.n_backends; i++)
        if ((unsigned)backend_count((int)i) < max)
            return (int)i;
    struct pg_backend *b = xcalloc(1, sizeof *b);
    b->idx = (int)pg.n_backends;
    b->fd = -1;
    pg.backends = xrealloc(pg.backends, (pg.n_backends + 1) * sizeof *pg.backends);
    pg.backends[pg.n_backends++] = b;
    backend_spawn(b);
    return b->idx;
}

/* A registration value: the user's (or its default) for a login, the submitted one (or the
 * field's default) for a check. */
struct pg_values {
    const struct gw_user *u;
    const struct gw_kv *kv;
    size_t n;
};

static const char *value_of(const struct pg_values *v, const char *var)
{
    if (v->u)
        return gw_user_reg(v->u, var);
    const char *r = gw_kv_get(v->kv, v->n, var);
    if (r && *r)
        return r;
    for (size_t i = 0; i < pg.n_fields; i++)
        if (strcmp(pg.fields[i].var, var) == 0)
            return pg.fields[i].def;
    return NULL;
}

/* "login KEY PRPL USERNAME PASSWORD NSPLITS SPLIT... OPTION VALUE..." (backend.c) */
static void send_login(struct pg_backend *b, const char *key, struct pg_prpl *p,
                       const struct pg_values *v)
{
    const char *f[PPROTO_MAX_FIELDS];
    size_t n = 0;
    char nsplits[16];
    const char *user = value_of(v, "username"), *pass = value_of(v, "password");
    f[n++] = "login";
    f[n++] = key;
    f[n++] = p->id;
    f[n++] = user ? user : "";
    f[n++] = pass ? pass : "";
    snprintf(nsplits, sizeof nsplits, "%zu", p->n_splits);
    f[n++] = nsplits;
    for (size_t i = 0; i < p->n_splits && n < PPROTO_MAX_FIELDS; i++) {
        const char *x = value_of(v, p->splits[i].var);
        f[n++] = x ? x : "";
    }
    for (size_t i = 0; i < p->n_opts && n + 2 <= PPROTO_MAX_FIELDS; i++) {
        const char *x = value_of(v, p->opts[i].var);
        if (!x)
            continue;
        if (strcmp(p->opts[i].type, "bool") == 0)
            x = strcmp(x, "true") == 0 || strcmp(x, "1") == 0 ? "1" : "0";
        f[n++] = p->opts[i].key;
        f[n++] = x;
    }
    backend_write(b, f, n);
}

static void user_send_login(struct pg_user *pu)
{
    struct pg_prpl *p = reg_prpl(NULL, 0, pu->u);
    if (!p || pu->backend < 0)
        return;
    struct pg_values v = {.u = pu->u};
    send_login(pg.backends[pu->backend], pu->jid, p, &v);
}

/* ---- registration checks (XEP-0100 §4.1): a real login with the submitted values ---- */

#define PG_CHECK_TIMEOUT_MS 60000
#define PG_CHECK_PREFIX "check:"

struct pg_check {
    unsigned id;
    char *key;  /* "check:<id>", the account key in the backend */
    char *jid;  /* the registering user */
    int backend;
    struct gw_reg_check *check;
    struct ev_timer *timer;
    unsigned *requests;
    size_t n_requests;
};

static struct pg_check **checks;
static size_t n_checks;
static unsigned next_check_id = 1;

static struct pg_check *check_find(const char *key)
{
    for (size_t i = 0; i < n_checks; i++)
        if (strcmp(checks[i]->key, key) == 0)
            return checks[i];
    return NULL;
}

static void check_end(struct pg_check *c, const char *cond, const char *text)
{
    for (size_t i = 0; i < n_checks; i++) {
        if (checks[i] == c) {
            checks[i] = checks[--n_checks];
            break;
        }
    }
    ev_timer_cancel(gw_loop(pg.gw), c->timer);
    struct pg_backend *b = c->backend >= 0 ? pg.backends[c->backend] : NULL;
    if (b && b->fd >= 0) {
        const char *f[] = {"logout", c->key};
        backend_write(b, f, 2);
    }
    log_info(TAG, "%s: registration check %s%s%s", c->jid, cond ? "failed: " : "passed",
             cond ? cond : "", text && *text ? text : "");
    gw_reg_check_done(pg.gw, c->check, cond, text);
    free(c->requests);
    free(c->key);
    free(c->jid);
    free(c);
}

static void check_timeout(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct pg_check *c = ud;
    c->timer = NULL;
    check_end(c, "remote-server-timeout", "The legacy service did not answer the login in time");
}

static void drv_check_registration(struct gw *gw, const char *jid, const struct gw_kv *values,
                                   size_t n, struct gw_reg_check *check)
{
    struct pg_prpl *p = reg_prpl(values, n, NULL);
    struct pg_check *c = xcalloc(1, sizeof *c);
    c->id = next_check_id++;
    c->key = xasprintf(PG_CHECK_PREFIX "%u", c->id);
    c->jid = xstrdup(jid);
    c->check = check;
    c->backend = backend_pick();
    checks = xrealloc(checks, (n_checks + 1) * sizeof *checks);
    checks[n_checks++] = c;
    c->timer = ev_timer_add(gw_loop(gw), PG_CHECK_TIMEOUT_MS, check_timeout, c);
    log_info(TAG, "%s: checking the registration with a login on backend %d", jid, c->backend);
    struct pg_values v = {.kv = values, .n = n};
    send_login(pg.backends[c->backend], c->key, p, &v);
}

static void check_event(struct pg_check *c, char **f, size_t n)
{
    if (strcmp(f[0], "connected") == 0) {
        check_end(c, NULL, NULL);
    } else if (strcmp(f[0], "disconnected") == 0) {
        bool auth = n > 3 && strcmp(f[3], "1") == 0;
        check_end(c, auth ? "not-authorized" : "remote-server-not-found", n > 4 ? f[4] : NULL);
    } else if (strcmp(f[0], "request") == 0 && n >= 4) {
        requests_add(&c->requests, &c->n_requests, f[2]);
        message_to(gw_domain(pg.gw), c->jid, "chat", f[3]);
    } else if (strcmp(f[0], "form") == 0 && n >= 6) {
        requests_add(&c->requests, &c->n_requests, f[2]);
        form_to(c->jid, f, n);
    } else if (strcmp(f[0], "notice") == 0 && n >= 3) {
        message_to(gw_domain(pg.gw), c->jid, "chat", f[2]);
    }
}

/* ---- rooms ---- */

static struct pg_room *room_get(struct pg_user *pu, const char *name, bool create)
{
    for (size_t i = 0; i < pu->n_rooms; i++)
        if (strcmp(pu->rooms[i].name, name) == 0)
            return &pu->rooms[i];
    if (!create)
        return NULL;
    pu->rooms = xrealloc(pu->rooms, (pu->n_rooms + 1) * sizeof *pu->rooms);
    struct pg_room *r = &pu->rooms[pu->n_rooms++];
    memset(r, 0, sizeof *r);
    r->name = xstrdup(name);
    r->mynick = xstrdup("");
    return r;
}

static void room_drop(struct pg_user *pu, struct pg_room *r)
{
    size_t i = (size_t)(r - pu->rooms);
    room_free(r);
    pu->rooms[i] = pu->rooms[--pu->n_rooms];
}

static void muc_presence(struct pg_room *r, const char *nick, const char *to, bool self,
                         bool gone)
{
    char *from = contact_jid(r->name, nick);
    if (!from)
        return;
    struct stanza *p = gw_stanza("presence", from, to, gone ? "unavailable" : NULL, NULL);
    struct stanza *x = stanza_add_child(p, "x", NS_MUC_USER);
    struct stanza *item = stanza_add_child(x, "item", NS_MUC_USER);
    stanza_set_attr(item, "affiliation", "none");
    stanza_set_attr(item, "role", gone ? "none" : "participant");
    if (self) {
        struct stanza *s = stanza_add_child(x, "status", NS_MUC_USER);
        stanza_set_attr(s, "code", "110");
    }
    free(from);
    gw_send(pg.gw, p);
}

static void room_send_each(struct pg_room *r, struct stanza *st)
{
    for (size_t i = 0; i < r->n_res; i++) {
        struct stanza *c = stanza_copy(st);
        stanza_set_attr(c, "to", r->res[i]);
        gw_send(pg.gw, c);
    }
    stanza_free(st);
}

static void room_self_join(struct pg_room *r, const char *to)
{
    for (size_t i = 0; i < r->n_occupants; i++)
        if (strcmp(r->occupants[i], r->mynick) != 0)
            muc_presence(r, r->occupants[i], to, false, false);
    muc_presence(r, r->mynick, to, true, false);
    /* XEP-0045 §7.2.15: the subject (empty) ends the join */
    char *from = contact_jid(r->name, NULL);
    struct stanza *m = gw_stanza("message", from, to, "groupchat", NULL);
    stanza_set_attr(m, "id", NULL);
    stanza_add_child(m, "subject", NULL);
    gw_send(pg.gw, m);
    free(from);
}

/* ---- events from backends ---- */

static void ev_connected(struct pg_user *pu)
{
    pu->connected = true;
    pu->failed = false;
    log_info(TAG, "%s: legacy account connected", pu->jid);
    if (pu->show) {
        char idle[24];
        snprintf(idle, sizeof idle, "%ld", pu->idle);
        USER_CMD(pu, false, "status", pu->jid, pu->show, pu->status ? pu->status : "", idle);
    }
    for (size_t i = 0; i < pu->n_rooms; i++)
        USER_CMD(pu, false, "join", pu->jid, pu->rooms[i].name);
    char **q = pu->queue;
    size_t nq = pu->n_queue;
    pu->queue = NULL;
    pu->n_queue = 0;
    for (size_t i = 0; i < nq; i++) {
        struct pg_backend *b = pg.backends[pu->backend];
        buf_append(&b->wbuf, q[i], strlen(q[i]));
        free(q[i]);
    }
    free(q);
    if (nq)
        backend_write(pg.backends[pu->backend], NULL, 0);
}

static void all_offline(struct pg_user *pu)
{
    for (size_t i = 0; i < pu->n_contacts; i++) {
        struct pg_contact *c = &pu->contacts[i];
        if (strcmp(c->show, "offline") != 0) {
            free(c->show);
            c->show = xstrdup("offline");
            contact_presence_to(pu, c, pu->jid);
        }
    }
}

static void ev_disconnected(struct pg_user *pu, char **f, size_t n)
{
    bool fatal = n > 2 && strcmp(f[2], "1") == 0;
    const char *text = n > 4 ? f[4] : "";
    pu->connected = false;
    pu->failed = fatal;
    if (fatal) {
        strv_free(pu->queue, pu->n_queue);
        pu->queue = NULL;
        pu->n_queue = 0;
    }
    all_offline(pu);
    char *msg = xasprintf("%s: %s%s", fatal ? "The legacy account was disconnected"
                                            : "The legacy account lost its connection",
                          *text ? text : "no reason given",
                          fatal ? " (fix the registration and log in again)"
                                : " (reconnecting)");
    notice(pu, msg);
    free(msg);
    log_info(TAG, "%s: legacy account disconnected (%s): %s", pu->jid, fatal ? "fatal" : "retry",
             text);
}

static void ev_buddy(struct pg_user *pu, const char *name, const char *alias, const char *group)
{
    contact_get(pu, name, true);
    char *jid = contact_jid(name, NULL);
    if (!jid)
        return;
    if (!strv_has(pu->known, pu->n_known, jid)) {
        strv_add(&pu->known, &pu->n_known, jid);
        gw_roster_add(pg.gw, pu->u, jid, *alias ? alias : NULL, *group ? group : NULL);
    }
    free(jid);
}

static void ev_presence(struct pg_user *pu, char **f, size_t n)
{
    if (n < 6)
        return;
    struct pg_contact *c = contact_get(pu, f[2], true);
    free(c->show);
    free(c->status);
    c->show = xstrdup(f[3]);
    c->status = xstrdup(f[4]);
    c->idle = strtol(f[5], NULL, 10);
    contact_presence_to(pu, c, pu->jid);
}

static int hexv(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static void ev_icon(struct pg_user *pu, const char *name, const char *hex)
{
    size_t hl = strlen(hex);
    if (hl == 0 || hl % 2)
        return;
    unsigned char *data = xmalloc(hl / 2);
    for (size_t i = 0; i < hl / 2; i++) {
        int a = hexv(hex[2 * i]), b = hexv(hex[2 * i + 1]);
        if (a < 0 || b < 0) {
            free(data);
            return;
        }
        data[i] = (unsigned char)(a * 16 + b);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, hl / 2, md, &mdlen, EVP_sha1(), NULL)) {
        free(data);
        return;
    }
    struct pg_contact *c = contact_get(pu, name, true);
    free(c->photo);
    free(c->photo_sha1);
    c->photo = data;
    c->photo_len = hl / 2;
    c->photo_sha1 = xmalloc(mdlen * 2 + 1);
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(c->photo_sha1 + 2 * i, 3, "%02x", md[i]);
    if (strcmp(c->show, "offline") != 0)
        contact_presence_to(pu, c, pu->jid);
}

static void ev_im(struct pg_user *pu, const char *who, const char *text)
{
    char *from = contact_jid(who, NULL);
    if (!from)
        return;
    struct stanza *m = gw_stanza("message", from, pu->jid, "chat", NULL);
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    stanza_add_text_child(m, "body", NULL, text);
    stanza_add_child(m, "active", NS_CHATSTATES);
    gw_send(pg.gw, m);
    free(from);
}

static void ev_typing(struct pg_user *pu, const char *who, const char *state)
{
    char *from = contact_jid(who, NULL);
    if (!from)
        return;
    struct stanza *m = gw_stanza("message", from, pu->jid, "chat", NULL);
    stanza_set_attr(m, "id", NULL);
    stanza_add_child(m, strcmp(state, "composing") == 0 ? "composing"
                        : strcmp(state, "paused") == 0  ? "paused"
                                                        : "active",
                     NS_CHATSTATES);
    gw_send(pg.gw, m);
    free(from);
}

static void ev_chat_joined(struct pg_user *pu, const char *room, const char *mynick)
{
    struct pg_room *r = room_get(pu, room, false);
    if (!r || r->n_res == 0)
        return;
    bool again = r->joined && strcmp(r->mynick, mynick) == 0;
    free(r->mynick);
    r->mynick = xstrdup(mynick);
    r->joined = true;
    if (!again)
        for (size_t i = 0; i < r->n_res; i++)
            room_self_join(r, r->res[i]);
}

static void ev_chat_user(struct pg_user *pu, const char *room, const char *nick, bool join)
{
    struct pg_room *r = room_get(pu, room, false);
    if (!r)
        return;
    if (join) {
        if (strv_has(r->occupants, r->n_occupants, nick))
            return;
        strv_add(&r->occupants, &r->n_occupants, nick);
    } else if (!strv_del(r->occupants, &r->n_occupants, nick)) {
        return;
    }
    if (!r->joined || strcmp(nick, r->mynick) == 0)
        return;
    for (size_t i = 0; i < r->n_res; i++)
        muc_presence(r, nick, r->res[i], false, !join);
}

static void ev_chat_msg(struct pg_user *pu, const char *room, const char *nick, const char *text)
{
    struct pg_room *r = room_get(pu, room, false);
    if (!r || !r->n_res)
        return;
    char *from = contact_jid(room, nick);
    if (!from)
        return;
    struct stanza *m = gw_stanza("message", from, NULL, "groupchat", NULL);
    char *id = random_id(16);
    stanza_set_attr(m, "id", id);
    free(id);
    stanza_add_text_child(m, "body", NULL, text);
    free(from);
    room_send_each(r, m);
}

static void ev_chat_topic(struct pg_user *pu, const char *room, const char *who,
                          const char *topic)
{
    struct pg_room *r = room_get(pu, room, false);
    if (!r || !r->n_res || !r->joined)
        return;
    char *from = contact_jid(room, *who ? who : NULL);
    if (!from)
        return;
    struct stanza *m = gw_stanza("message", from, NULL, "groupchat", NULL);
    stanza_add_text_child(m, "subject", NULL, topic);
    free(from);
    room_send_each(r, m);
}

static void ev_chat_left(struct pg_user *pu, const char *room)
{
    struct pg_room *r = room_get(pu, room, false);
    if (!r)
        return;
    for (size_t i = 0; i < r->n_res; i++)
        muc_presence(r, *r->mynick ? r->mynick : "me", r->res[i], true, true);
    room_drop(pu, r);
}

static void ev_auth(struct pg_user *pu, const char *who)
{
    char *from = contact_jid(who, NULL);
    if (!from)
        return;
    gw_send(pg.gw, gw_stanza("presence", from, pu->jid, "subscribe", NULL));
    free(from);
}

static void ev_request(struct pg_user *pu, const char *id, const char *text)
{
    requests_add(&pu->requests, &pu->n_requests, id);
    notice(pu, text);
}

static void backend_event(struct pg_backend *b, char *line)
{
    char *f[PPROTO_MAX_FIELDS];
    size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
    if (n == 0)
        return;
    if (strcmp(f[0], "ready") == 0) {
        b->ready = true;
        return;
    }
    if (n < 2)
        return;
    if (strncmp(f[1], PG_CHECK_PREFIX, strlen(PG_CHECK_PREFIX)) == 0) {
        struct pg_check *c = check_find(f[1]);
        if (c && c->backend == b->idx)
            check_event(c, f, n);
        return;
    }
    struct pg_user *pu = user_by_jid(f[1]);
    if (!pu || pu->backend != b->idx)
        return;
    const char *e = f[0];
    if (strcmp(e, "connected") == 0)
        ev_connected(pu);
    else if (strcmp(e, "disconnected") == 0)
        ev_disconnected(pu, f, n);
    else if (strcmp(e, "buddy") == 0 && n >= 5)
        ev_buddy(pu, f[2], f[3], f[4]);
    else if (strcmp(e, "presence") == 0)
        ev_presence(pu, f, n);
    else if (strcmp(e, "icon") == 0 && n >= 4)
        ev_icon(pu, f[2], f[3]);
    else if (strcmp(e, "im") == 0 && n >= 4)
        ev_im(pu, f[2], f[3]);
    else if (strcmp(e, "typing") == 0 && n >= 4)
        ev_typing(pu, f[2], f[3]);
    else if (strcmp(e, "chat_joined") == 0 && n >= 4)
        ev_chat_joined(pu, f[2], f[3]);
    else if (strcmp(e, "chat_user") == 0 && n >= 5)
        ev_chat_user(pu, f[2], f[3], strcmp(f[4], "join") == 0);
    else if (strcmp(e, "chat_msg") == 0 && n >= 5)
        ev_chat_msg(pu, f[2], f[3], f[4]);
    else if (strcmp(e, "chat_topic") == 0 && n >= 5)
        ev_chat_topic(pu, f[2], f[3], f[4]);
    else if (strcmp(e, "chat_left") == 0 && n >= 3)
        ev_chat_left(pu, f[2]);
    else if (strcmp(e, "auth") == 0 && n >= 3)
        ev_auth(pu, f[2]);
    else if (strcmp(e, "notice") == 0 && n >= 3)
        notice(pu, f[2]);
    else if (strcmp(e, "request") == 0 && n >= 4)
        ev_request(pu, f[2], f[3]);
    else if (strcmp(e, "form") == 0 && n >= 6) {
        requests_add(&pu->requests, &pu->n_requests, f[2]);
        form_to(pu->jid, f, n);
    }
}

/* ---- backend processes ---- */

static void backend_died(struct pg_backend *b, const char *why);

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Removes a backend's user dir (a crashed backend leaves it behind). */
static void backend_rm_dir(struct pg_backend *b)
{
    if (b->dir)
        nftw(b->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(b->dir);
    b->dir = NULL;
}

static void backend_flush(struct pg_backend *b)
{
    while (b->fd >= 0 && b->wbuf.len) {
        ssize_t w = send(b->fd, b->wbuf.data, b->wbuf.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            break;
        if (w <= 0) {
            backend_died(b, "write failed");
            return;
        }
        buf_consume(&b->wbuf, (size_t)w);
    }
    if (b->fd >= 0)
        ev_io_mod(gw_loop(pg.gw), b->fd, EV_READ | (b->wbuf.len ? EV_WRITE : 0));
}

static void backend_write(struct pg_backend *b, const char *const *f, size_t n)
{
    if (n) {
        size_t len;
        char *line = pproto_line(f, n, &len);
        if (len <= PPROTO_MAX_LINE && b->wbuf.len + len <= PG_MAX_WBUF)
            buf_append(&b->wbuf, line, len);
        free(line);
    }
    if (b->fd >= 0)
        backend_flush(b);
}

static void backend_read(struct pg_backend *b)
{
    char tmp[65536];
    ssize_t r = recv(b->fd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        backend_died(b, r == 0 ? "closed its socket" : strerror(errno));
        return;
    }
    if (b->rlen + (size_t)r > PPROTO_MAX_LINE + 1) {
        backend_died(b, "sent an over-long line");
        return;
    }
    b->rbuf = xrealloc(b->rbuf, b->rlen + (size_t)r + 1);
    memcpy(b->rbuf + b->rlen, tmp, (size_t)r);
    b->rlen += (size_t)r;
    size_t next, len, off = 0;
    int idx = b->idx;
    while ((len = pproto_next_line(b->rbuf + off, b->rlen - off, &next)) != (size_t)-1) {
        char *line = xstrndup(b->rbuf + off, len);
        off += next;
        backend_event(b, line);
        free(line);
        if (pg.backends[idx]->fd < 0 || pg.backends[idx] != b)
            return; /* died while handling */
    }
    memmove(b->rbuf, b->rbuf + off, b->rlen - off);
    b->rlen -= off;
}

static void on_backend_io(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)fd;
    struct pg_backend *b = ud;
    if (events & EV_READ)
        backend_read(b);
    if (b->fd >= 0 && (events & EV_WRITE))
        backend_flush(b);
}

static void restart_cb(struct ev_loop *loop, void *ud)
{
    (void)loop;
    struct pg_backend *b = ud;
    b->restart = NULL;
    backend_spawn(b);
    /* log its users back in */
    for (size_t i = 0; i < pg.n_users; i++) {
        struct pg_user *pu = pg.users[i];
        if (pu->backend == b->idx && pu->logged_in) {
            pu->failed = false;
            log_info(TAG, "%s: logging back in on backend %d", pu->jid, b->idx);
            user_send_login(pu);
        }
    }
}

static void backend_died(struct pg_backend *b, const char *why)
{
    if (b->fd < 0)
        return;
    ev_io_del(gw_loop(pg.gw), b->fd);
    close(b->fd);
    b->fd = -1;
    b->ready = false;
    int st = 0;
    if (b->pid > 0) {
        kill(b->pid, SIGKILL);
        while (waitpid(b->pid, &st, 0) < 0 && errno == EINTR)
            ;
    }
    if (WIFSIGNALED(st))
        log_warn(TAG, "backend %d pid %d %s (killed by signal %d)", b->idx, (int)b->pid, why,
                 WTERMSIG(st));
    else
        log_warn(TAG, "backend %d pid %d %s (exit status %d)", b->idx, (int)b->pid, why,
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    b->pid = 0;
    backend_rm_dir(b);
    free(b->rbuf);
    b->rbuf = NULL;
    b->rlen = 0;
    b->wbuf.len = 0;
    for (size_t i = 0; i < n_checks;) {
        if (checks[i]->backend == b->idx) {
            check_end(checks[i], "internal-server-error", "The backend process died");
            continue;
        }
        i++;
    }
    for (size_t i = 0; i < pg.n_users; i++) {
        struct pg_user *pu = pg.users[i];
        if (pu->backend != b->idx)
            continue;
        pu->connected = false;
        pu->n_requests = 0;
        all_offline(pu);
    }
    uint64_t now = ev_now(gw_loop(pg.gw));
    if (now - b->started > 60000)
        b->fails = 0;
    uint64_t delay = 500u << (b->fails < 6 ? b->fails : 6);
    if (delay > PG_RESTART_MAX_MS)
        delay = PG_RESTART_MAX_MS;
    b->fails++;
    b->restart = ev_timer_add(gw_loop(pg.gw), delay, restart_cb, b);
}

static void backend_spawn(struct pg_backend *b)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_error(TAG, "socketpair: %s", strerror(errno));
        b->restart = ev_timer_add(gw_loop(pg.gw), 5000, restart_cb, b);
        return;
    }
    char tmpl[] = "/tmp/isthmus-purple-backend-XXXXXX";
    if (!mkdtemp(tmpl)) {
        log_error(TAG, "mkdtemp: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        b->restart = ev_timer_add(gw_loop(pg.gw), 5000, restart_cb, b);
        return;
    }
    free(b->dir);
    b->dir = xstrdup(tmpl);
    pid_t pid = fork();
    if (pid < 0) {
        log_error(TAG, "fork: %s", strerror(errno));
        backend_rm_dir(b);
        close(sv[0]);
        close(sv[1]);
        b->restart = ev_timer_add(gw_loop(pg.gw), 5000, restart_cb, b);
        return;
    }
    if (pid == 0) {
        int fd = dup(sv[1]); /* without CLOEXEC */
        char fds[16];
        snprintf(fds, sizeof fds, "%d", fd);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL); /* the gateway blocks signals for signalfd */
        execl("/proc/self/exe", "isthmus-purple", "--backend", fds, pg.certdir, b->dir,
              (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    b->pid = pid;
    b->fd = sv[0];
    b->started = ev_now(gw_loop(pg.gw));
    log_info(TAG, "backend %d pid %d started", b->idx, (int)pid);
    ev_io_add(gw_loop(pg.gw), b->fd, EV_READ | (b->wbuf.len ? EV_WRITE : 0), on_backend_io, b);
}

/* ---- driver callbacks ---- */

static int drv_init(struct gw *gw)
{
    pg.gw = gw;
    const struct config_gateway *g = gw_gateway_config(gw);
    if (describe(g) < 0) {
        log_error(TAG, "no libpurple protocol plugin found%s",
                  g->n_purple_protocols ? " (check purple_protocols)" : "");
        return -1;
    }
    for (size_t i = 0; i < g->n_purple_protocols; i++)
        if (!prpl_find(g->purple_protocols[i]))
            log_warn(TAG, "purple_protocols: %s is not installed", g->purple_protocols[i]);
    build_form();
    /* the XEP-0100 identity type of the (first) protocol */
    static const char *const types[] = {"prpl-irc", "irc", "prpl-jabber", "xmpp",
                                        "prpl-gg", "gadu-gadu", "prpl-simple", "simple",
                                        "prpl-meanwhile", "sametime", NULL};
    for (size_t i = 0; types[i]; i += 2)
        if (strcmp(pg.prpls[0].id, types[i]) == 0)
            pg.driver->gateway_type = types[i + 1];
    pg.driver->reg_fields = pg.fields;
    pg.driver->n_reg_fields = pg.n_fields;
    for (size_t i = 0; i < pg.n_prpls; i++)
        log_info(TAG, "protocol %s (%s)", pg.prpls[i].id, pg.prpls[i].name);
    pg.certdir = xasprintf("%s/%s-certificates", gw_config(gw)->data_dir, gw_domain(gw));
    return 0;
}

static void drv_fini(struct gw *gw)
{
    (void)gw;
    while (n_checks)
        check_end(checks[0], "service-unavailable", "The gateway is shutting down");
    free(checks);
    for (size_t i = 0; i < pg.n_backends; i++) {
        struct pg_backend *b = pg.backends[i];
        ev_timer_cancel(gw_loop(pg.gw), b->restart);
        if (b->fd >= 0) {
            ev_io_del(gw_loop(pg.gw), b->fd);
            close(b->fd); /* the backend logs its accounts out and exits */
        }
    }
    for (size_t i = 0; i < pg.n_backends; i++) {
        struct pg_backend *b = pg.backends[i];
        if (b->pid > 0) {
            /* up to 5 s for a clean exit (QUIT lines flushed), then KILL */
            int st;
            for (int t = 0; t < 50; t++) {
                if (waitpid(b->pid, &st, WNOHANG) == b->pid) {
                    b->pid = 0;
                    break;
                }
                usleep(100000);
            }
            if (b->pid > 0) {
                kill(b->pid, SIGKILL);
                waitpid(b->pid, &st, 0);
            }
        }
        backend_rm_dir(b);
        free(b->rbuf);
        buf_fini(&b->wbuf);
        free(b);
    }
    free(pg.backends);
    while (pg.n_users) {
        struct pg_user *pu = pg.users[0];
        pu->u->data = NULL;
        user_free(pu);
    }
    free(pg.users);
    prpls_free();
    free(pg.certdir);
}

static void drv_login(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    struct pg_user *pu = user_of(u);
    if (!pu)
        pu = user_new(u);
    if (pu->logged_in)
        return;
    pu->logged_in = true;
    pu->backend = backend_pick();
    log_info(TAG, "%s: logging in on backend %d", pu->jid, pu->backend);
    user_send_login(pu);
}

static void drv_logout(struct gw *gw, struct gw_user *u, const char *reason)
{
    struct pg_user *pu = user_of(u);
    if (!pu)
        return;
    log_info(TAG, "%s: logging out (%s)", pu->jid, reason);
    if (pu->backend >= 0) {
        const char *f[] = {"logout", pu->jid};
        backend_write(pg.backends[pu->backend], f, 2);
    }
    for (size_t i = 0; i < pu->n_contacts; i++)
        if (strcmp(pu->contacts[i].show, "offline") != 0) {
            free(pu->contacts[i].show);
            pu->contacts[i].show = xstrdup("offline");
            contact_presence_to(pu, &pu->contacts[i], pu->jid);
        }
    for (size_t i = 0; i < pu->n_rooms; i++) {
        struct pg_room *r = &pu->rooms[i];
        for (size_t j = 0; j < r->n_res; j++)
            muc_presence(r, *r->mynick ? r->mynick : "me", r->res[j], true, true);
    }
    gw_user_hold(u);
    u->data = NULL;
    user_free(pu);
    gw_user_release(gw, u);
}

static const char *drv_validate(struct gw *gw, const char *jid, const struct gw_kv *values,
                                size_t n, char *text, size_t textlen)
{
    (void)gw;
    (void)jid;
    struct pg_prpl *p = reg_prpl(values, n, NULL);
    if (!p) {
        snprintf(text, textlen, "Unknown protocol");
        return "not-acceptable";
    }
    const char *user = gw_kv_get(values, n, "username");
    if (!user || !*user || strlen(user) > 1000) {
        snprintf(text, textlen, "A username is required");
        return "not-acceptable";
    }
    for (size_t i = 0; i < p->n_opts; i++) {
        const char *v = gw_kv_get(values, n, p->opts[i].var);
        if (v && *v && strcmp(p->opts[i].type, "int") == 0) {
            char *end;
            errno = 0;
            long x = strtol(v, &end, 10);
            if (*end || errno || x < -2147483647L || x > 2147483647L) {
                snprintf(text, textlen, "%s: a number is required", p->opts[i].label);
                return "not-acceptable";
            }
        }
    }
    return NULL;
}

static const char *show_of(const struct stanza *p)
{
    char *s = stanza_child_text(p, "show", NULL);
    const char *r = "available";
    if (s && (strcmp(s, "away") == 0 || strcmp(s, "xa") == 0 || strcmp(s, "dnd") == 0))
        r = strcmp(s, "away") == 0 ? "away" : strcmp(s, "xa") == 0 ? "xa" : "dnd";
    else if (s && strcmp(s, "chat") == 0)
        r = "available";
    free(s);
    return r;
}

/* XEP-0319 <idle since='XEP-0082 DateTime'/> → seconds idle (0: not idle or unparsable). */
static long idle_seconds(const struct stanza *p)
{
    struct stanza *i = stanza_child(p, "idle", "urn:xmpp:idle:1");
    const char *since = i ? stanza_attr(i, "since") : NULL;
    if (!since)
        return 0;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(since, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!rest)
        return 0;
    if (*rest == '.')
        rest += 1 + strspn(rest + 1, "0123456789");
    time_t t = timegm(&tm);
    int sign = 0, hh = 0, mm = 0;
    if ((*rest == '+' || *rest == '-') && sscanf(rest + 1, "%2d:%2d", &hh, &mm) == 2)
        sign = *rest == '+' ? 1 : -1;
    else if (*rest != 'Z')
        return 0;
    t -= sign * (hh * 3600 + mm * 60);
    long secs = (long)(time(NULL) - t);
    return secs > 0 && secs < 10L * 365 * 86400 ? secs : 0;
}

/* The user's presence to the gateway (XEP-0100 §4.4 and later changes) → the account status. */
static void drv_presence(struct gw *gw, struct gw_user *u, const struct stanza *p)
{
    (void)gw;
    struct pg_user *pu = user_of(u);
    if (!pu)
        return;
    free(pu->show);
    free(pu->status);
    pu->show = xstrdup(show_of(p));
    char *st = stanza_child_text(p, "status", NULL);
    pu->status = st ? st : xstrdup("");
    pu->idle = idle_seconds(p);
    char idle[24];
    snprintf(idle, sizeof idle, "%ld", pu->idle);
    if (pu->connected)
        USER_CMD(pu, false, "status", pu->jid, pu->show, pu->status, idle);
}

/* Takes request id out of v (the first when id is 0); false when it is not pending there. */
static bool requests_take(unsigned *v, size_t *n, unsigned id, unsigned *out)
{
    for (size_t i = 0; i < *n; i++) {
        if (id && v[i] != id)
            continue;
        *out = v[i];
        memmove(v + i, v + i + 1, (*n - i - 1) * sizeof *v);
        (*n)--;
        return true;
    }
    return false;
}

/* The request a form answer names: its hidden field, else its thread. 0: none. */
static unsigned form_request_id(const struct stanza *st, const struct stanza *x)
{
    for (struct stanza *f = stanza_first_elem(x); f; f = stanza_next_elem(f)) {
        if (strcmp(f->name, "field") == 0 && str_eq(stanza_attr(f, "var"), PG_REQUEST_VAR)) {
            char *v = stanza_child_text(f, "value", NS_DATA);
            unsigned id = v ? (unsigned)strtoul(v, NULL, 10) : 0;
            free(v);
            if (id)
                return id;
        }
    }
    char *t = stanza_child_text(st, "thread", NULL);
    unsigned id = 0;
    if (t && strncmp(t, PG_THREAD_PREFIX, strlen(PG_THREAD_PREFIX)) == 0)
        id = (unsigned)strtoul(t + strlen(PG_THREAD_PREFIX), NULL, 10);
    free(t);
    return id;
}

/* A message to GW answers a pending prompt of its sender: an XEP-0004 form answer (type submit
 * or cancel, naming its request) → "submit"/"cancel"; a body → "answer" (or "cancel" when it
 * says so) to the oldest one. A pending registration check's prompts come first. */
static const char *answer_request(struct pg_user *pu, const struct stanza *st)
{
    const struct stanza *x = stanza_child(st, "x", NS_DATA);
    const char *xtype = x ? stanza_attr(x, "type") : NULL;
    bool form = str_eq(xtype, "submit") || str_eq(xtype, "cancel");
    unsigned want = form ? form_request_id(st, x) : 0;
    if (form && !want)
        return "bad-request";
    char *body = form ? NULL : stanza_child_text(st, "body", NULL);
    if (!form && !body)
        return NULL;
    const char *jid = stanza_attr(st, "from");
    struct pg_backend *b = NULL;
    unsigned id = 0;
    for (size_t i = 0; jid && i < n_checks && !b; i++) {
        struct pg_check *c = checks[i];
        size_t bl = strlen(c->jid);
        if (strncmp(jid, c->jid, bl) != 0 || (jid[bl] && jid[bl] != '/'))
            continue;
        if (requests_take(c->requests, &c->n_requests, want, &id))
            b = pg.backends[c->backend];
    }
    if (!b && pu && pu->backend >= 0 && requests_take(pu->requests, &pu->n_requests, want, &id))
        b = pg.backends[pu->backend];
    if (!b) {
        free(body);
        return form ? "item-not-found" : NULL;
    }
    char ids[16];
    snprintf(ids, sizeof ids, "%u", id);
    if ((form && str_eq(xtype, "cancel")) || (body && strcasecmp(body, "cancel") == 0)) {
        const char *f[] = {"cancel", ids};
        backend_write(b, f, 2);
    } else if (form) {
        struct gw_kv *kv = NULL;
        size_t n = gw_form_values(st, &kv);
        const char *f[PPROTO_MAX_FIELDS] = {"submit", ids};
        size_t k = 2;
        for (size_t i = 0; i < n && k + 2 <= PPROTO_MAX_FIELDS; i++) {
            if (strcmp(kv[i].key, PG_REQUEST_VAR) == 0)
                continue;
            f[k++] = kv[i].key;
            f[k++] = kv[i].value;
        }
        backend_write(b, f, k);
        gw_kv_free(kv, n);
    } else {
        const char *f[] = {"answer", ids, body};
        backend_write(b, f, 3);
    }
    free(body);
    return NULL;
}

static const char *room_presence(struct pg_user *pu, const struct stanza *st, const char *room,
                                 const char *full, const char *nick)
{
    const char *type = stanza_attr(st, "type");
    struct pg_room *r = room_get(pu, room, false);
    if (!type) {
        if (!pu->connected && pu->backend < 0)
            return "service-unavailable";
        if (!r && pu->n_rooms >= PG_MAX_ROOMS)
            return "resource-constraint";
        if (!r)
            r = room_get(pu, room, true);
        if (!strv_has(r->res, r->n_res, full)) {
            strv_add(&r->res, &r->n_res, full);
            if (r->joined)
                room_self_join(r, full);
        }
        if (r->n_res == 1 && !r->joined)
            USER_CMD(pu, true, "join", pu->jid, room);
        return NULL;
    }
    if (strcmp(type, "unavailable") == 0 && r) {
        if (strv_del(r->res, &r->n_res, full))
            muc_presence(r, *r->mynick ? r->mynick : nick, full, true, true);
        if (r->n_res == 0) {
            USER_CMD(pu, false, "leave", pu->jid, room);
            room_drop(pu, r);
        }
    }
    return NULL;
}

static const char *contact_presence(struct pg_user *pu, const struct stanza *st,
                                    const char *legacy, const char *from_full)
{
    const char *type = stanza_attr(st, "type");
    if (!type)
        return NULL; /* directed presence to a contact: nothing to do */
    if (strcmp(type, "probe") == 0) {
        struct pg_contact *c = contact_get(pu, legacy, false);
        if (c)
            contact_presence_to(pu, c, from_full);
        return NULL;
    }
    if (strcmp(type, "subscribe") == 0) {
        char *jid = contact_jid(legacy, NULL);
        if (jid && !strv_has(pu->known, pu->n_known, jid)) {
            strv_add(&pu->known, &pu->n_known, jid);
            gw_store_contact_add(gw_store(pg.gw), pu->jid, jid, NULL);
        }
        if (jid)
            gw_send(pg.gw, gw_stanza("presence", jid, pu->jid, "subscribed", NULL));
        free(jid);
        USER_CMD(pu, true, "add_buddy", pu->jid, legacy, "", "");
        USER_CMD(pu, true, "auth", pu->jid, legacy, "1");
    } else if (strcmp(type, "subscribed") == 0) {
        USER_CMD(pu, true, "auth", pu->jid, legacy, "1");
    } else if (strcmp(type, "unsubscribed") == 0) {
        USER_CMD(pu, true, "auth", pu->jid, legacy, "0");
    } else if (strcmp(type, "unsubscribe") == 0) {
        char *jid = contact_jid(legacy, NULL);
        if (jid) {
            strv_del(pu->known, &pu->n_known, jid);
            gw_store_contact_remove(gw_store(pg.gw), pu->jid, jid);
        }
        free(jid);
        USER_CMD(pu, true, "remove_buddy", pu->jid, legacy);
    }
    return NULL;
}

static const char *contact_message(struct pg_user *pu, const struct stanza *st,
                                   const char *legacy)
{
    char *body = stanza_child_text(st, "body", NULL);
    if (body) {
        if (pu->backend < 0 || pu->failed) {
            free(body);
            return "recipient-unavailable";
        }
        if (!pu->connected && pu->n_queue >= PG_MAX_QUEUE) {
            free(body);
            return "resource-constraint";
        }
        USER_CMD(pu, true, "im", pu->jid, legacy, body);
        free(body);
        return NULL;
    }
    /* XEP-0085 standalone notification */
    static const char *const states[] = {"composing", "paused", "active", "inactive", "gone"};
    for (size_t i = 0; i < 5; i++) {
        if (stanza_child(st, states[i], NS_CHATSTATES)) {
            const char *s = i < 2 ? states[i] : "active";
            USER_CMD(pu, false, "typing", pu->jid, legacy, s);
            break;
        }
    }
    return NULL;
}

static const char *contact_iq(struct pg_user *pu, const struct stanza *st, const char *legacy)
{
    struct stanza *q = stanza_first_elem(st);
    if (!q || !str_eq(stanza_attr(st, "type"), "get"))
        return "service-unavailable";
    if (strcmp(q->name, "vCard") == 0 && str_eq(q->ns, NS_VCARD)) {
        struct stanza *res = stanza_iq_result(st);
        struct stanza *v = stanza_add_child(res, "vCard", NS_VCARD);
        stanza_add_text_child(v, "NICKNAME", NS_VCARD, legacy);
        struct pg_contact *c = pu ? contact_get(pu, legacy, false) : NULL;
        if (c && c->photo) {
            struct stanza *photo = stanza_add_child(v, "PHOTO", NS_VCARD);
            char *b64 = base64_encode(c->photo, c->photo_len);
            stanza_add_text_child(photo, "BINVAL", NS_VCARD, b64);
            free(b64);
        }
        gw_send(pg.gw, res);
        return NULL;
    }
    return "service-unavailable";
}

static const char *drv_stanza(struct gw *gw, struct gw_user *u, const struct stanza *st,
                              const struct jid *from, const struct jid *to)
{
    (void)gw;
    struct pg_user *pu = user_of(u);
    if (!to->local) {
        if (strcmp(st->name, "message") == 0)
            return answer_request(pu, st);
        return "service-unavailable";
    }
    char *legacy = jid_unescape_local(to->local);
    char *full = jid_to_string(from);
    const char *cond = NULL;
    bool muc = strcmp(st->name, "presence") == 0 && (stanza_child(st, "x", NS_MUC) ||
                                                      (pu && room_get(pu, legacy, false)));
    if (strcmp(st->name, "iq") == 0) {
        cond = contact_iq(pu, st, legacy);
    } else if (!pu) {
        cond = str_eq(stanza_attr(st, "type"), "unavailable") ? NULL : "recipient-unavailable";
        if (strcmp(st->name, "presence") == 0 && str_eq(stanza_attr(st, "type"), "probe"))
            cond = NULL;
    } else if (strcmp(st->name, "presence") == 0) {
        if (muc && to->resource)
            cond = room_presence(pu, st, legacy, full, to->resource);
        else if (!to->resource)
            cond = contact_presence(pu, st, legacy, full);
    } else if (strcmp(st->name, "message") == 0) {
        if (str_eq(stanza_attr(st, "type"), "groupchat")) {
            struct pg_room *r = room_get(pu, legacy, false);
            char *body = stanza_child_text(st, "body", NULL);
            if (!r || !strv_has(r->res, r->n_res, full))
                cond = "not-acceptable";
            else if (body)
                USER_CMD(pu, true, "chat", pu->jid, legacy, body);
            free(body);
        } else {
            cond = contact_message(pu, st, legacy);
        }
    }
    free(full);
    free(legacy);
    return cond;
}

static void drv_resource_gone(struct gw *gw, struct gw_user *u, const char *full)
{
    (void)gw;
    struct pg_user *pu = user_of(u);
    if (!pu)
        return;
    for (size_t i = 0; i < pu->n_rooms;) {
        struct pg_room *r = &pu->rooms[i];
        if (strv_del(r->res, &r->n_res, full) && r->n_res == 0) {
            USER_CMD(pu, false, "leave", pu->jid, r->name);
            room_drop(pu, r);
            continue;
        }
        i++;
    }
}

static char *drv_user_info(struct gw *gw, struct gw_user *u)
{
    (void)gw;
    struct pg_user *pu = user_of(u);
    if (!pu)
        return xstrdup("not logged in");
    struct pg_backend *b = pu->backend >= 0 ? pg.backends[pu->backend] : NULL;
    return xasprintf("%s on backend %d (pid %d), %zu contacts, %zu rooms",
                     pu->connected ? "connected" : "connecting", pu->backend,
                     b ? (int)b->pid : 0, pu->n_contacts, pu->n_rooms);
}

void purple_gw_fill_driver(struct gw_driver *d)
{
    pg.driver = d;
    d->init = drv_init;
    d->fini = drv_fini;
    d->login = drv_login;
    d->logout = drv_logout;
    d->validate = drv_validate;
    d->stanza = drv_stanza;
    d->resource_gone = drv_resource_gone;
    d->user_info = drv_user_info;
    d->presence = drv_presence;
    d->check_registration = drv_check_registration;
}
