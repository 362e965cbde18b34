/* gw_xep0100.c — what the gateway domain itself answers: XEP-0100 (registration flows, presence
 * login/logout, jabber:iq:gateway), XEP-0077 forms, XEP-0030 disco, XEP-0050 ad-hoc commands,
 * XEP-0199 ping, XEP-0092 version, and the XEP-0004 form helpers. Stanzas for nodes go to the
 * driver. See gw.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_internal.h"
#include "isthmus/log.h"

#define NS_PING "urn:xmpp:ping"
#define NS_VERSION "jabber:iq:version"
#define NS_PRIVILEGE "urn:xmpp:privilege:2"
#define GW_VERSION "0.1"

/* ---- XEP-0004 forms ---- */

static const char *field_type_name(enum gw_field_type t)
{
    switch (t) {
    case GW_PRIVATE: return "text-private";
    case GW_BOOL: return "boolean";
    case GW_LIST: return "list-single";
    case GW_MULTI: return "text-multi";
    case GW_TEXT: break;
    }
    return "text-single";
}

struct stanza *gw_form_add(struct stanza *parent, const char *title, const char *instructions,
                           const struct gw_field *fields, size_t n_fields,
                           const struct gw_kv *values, size_t n_values)
{
    struct stanza *x = stanza_add_child(parent, "x", NS_DATA);
    stanza_set_attr(x, "type", "form");
    if (title)
        stanza_add_text_child(x, "title", NS_DATA, title);
    if (instructions)
        stanza_add_text_child(x, "instructions", NS_DATA, instructions);
    for (size_t i = 0; i < n_fields; i++) {
        const struct gw_field *f = &fields[i];
        struct stanza *field = stanza_add_child(x, "field", NS_DATA);
        stanza_set_attr(field, "var", f->var);
        stanza_set_attr(field, "type", field_type_name(f->type));
        if (f->label)
            stanza_set_attr(field, "label", f->label);
        if (f->desc)
            stanza_add_text_child(field, "desc", NS_DATA, f->desc);
        if (f->required)
            stanza_add_child(field, "required", NS_DATA);
        for (size_t o = 0; f->options && f->options[o] && f->options[o + 1]; o += 2) {
            struct stanza *opt = stanza_add_child(field, "option", NS_DATA);
            stanza_set_attr(opt, "label", f->options[o + 1]);
            stanza_add_text_child(opt, "value", NS_DATA, f->options[o]);
        }
        const char *v = gw_kv_get(values, n_values, f->var);
        if (!v)
            v = f->def;
        /* Secrets are never sent back (XEP-0077 §3.1 allows it; we do not). */
        if (f->type == GW_PRIVATE)
            v = NULL;
        if (!v)
            continue;
        if (f->type == GW_MULTI) {
            const char *line = v;
            while (*line) {
                const char *nl = strchr(line, '\n');
                size_t len = nl ? (size_t)(nl - line) : strlen(line);
                struct stanza *val = stanza_add_child(field, "value", NS_DATA);
                stanza_add_text(val, line, len);
                line += nl ? len + 1 : len;
            }
        } else {
            stanza_add_text_child(field, "value", NS_DATA, v);
        }
    }
    return x;
}

size_t gw_form_values(const struct stanza *parent, struct gw_kv **out)
{
    *out = NULL;
    struct stanza *x = stanza_child(parent, "x", NS_DATA);
    if (!x || !str_eq(stanza_attr(x, "type"), "submit"))
        return 0;
    size_t n = 0;
    for (struct stanza *f = stanza_first_elem(x); f; f = stanza_next_elem(f)) {
        const char *var = stanza_attr(f, "var");
        if (strcmp(f->name, "field") != 0 || !var || strcmp(var, "FORM_TYPE") == 0)
            continue;
        struct buf v;
        buf_init(&v);
        int k = 0;
        for (struct stanza *val = stanza_first_elem(f); val; val = stanza_next_elem(val)) {
            if (strcmp(val->name, "value") != 0)
                continue;
            char *t = stanza_text(val);
            if (k++)
                buf_putc(&v, '\n');
            buf_puts(&v, t);
            free(t);
        }
        *out = xrealloc(*out, (n + 1) * sizeof **out);
        (*out)[n].key = xstrdup(var);
        (*out)[n].value = buf_take(&v);
        n++;
    }
    return n;
}

/* ---- helpers ---- */

static void send_result(struct gw *gw, const struct stanza *iq, struct stanza *child)
{
    struct stanza *r = stanza_iq_result(iq);
    if (child)
        stanza_append(r, child);
    gw_send(gw, r);
}

static void send_presence(struct gw *gw, const char *to, const char *type)
{
    gw_send(gw, gw_stanza("presence", gw->domain, to, type, NULL));
}

static bool has_roster_privilege_for(const struct gw *gw, const char *bare)
{
    const char *at = strchr(bare, '@');
    const char *domain = at ? at + 1 : bare;
    for (size_t i = 0; i < gw->n_roster_hosts; i++)
        if (strcmp(gw->roster_hosts[i], domain) == 0)
            return true;
    return false;
}

bool gw_has_roster_privilege(const struct gw *gw)
{
    return gw->n_roster_hosts > 0;
}

/* XEP-0356 §4.3: a roster push the server applies to the user's roster. */
static void roster_push(struct gw *gw, const char *user, const char *contact, const char *sub,
                        const char *name, const char *group)
{
    struct stanza *iq = gw_stanza("iq", gw->domain, user, "set", NULL);
    struct stanza *q = stanza_add_child(iq, "query", NS_ROSTER);
    struct stanza *item = stanza_add_child(q, "item", NS_ROSTER);
    stanza_set_attr(item, "jid", contact);
    stanza_set_attr(item, "subscription", sub);
    if (name)
        stanza_set_attr(item, "name", name);
    if (group)
        stanza_add_text_child(item, "group", NS_ROSTER, group);
    gw_send(gw, iq);
}

void gw_roster_add(struct gw *gw, struct gw_user *u, const char *contact, const char *name,
                   const char *group)
{
    gw_store_contact_add(gw->store, u->jid, contact, name);
    if (has_roster_privilege_for(gw, u->jid)) {
        roster_push(gw, u->jid, contact, "both", name, group);
        return;
    }
    /* XEP-0100 §5.1: the legacy contact asks to be added. */
    struct stanza *p = gw_stanza("presence", contact, u->jid, "subscribe", NULL);
    if (name)
        stanza_add_text_child(p, "nick", "http://jabber.org/protocol/nick", name);
    gw_send(gw, p);
}

void gw_roster_remove(struct gw *gw, struct gw_user *u, const char *contact)
{
    gw_store_contact_remove(gw->store, u->jid, contact);
    if (has_roster_privilege_for(gw, u->jid)) {
        roster_push(gw, u->jid, contact, "remove", NULL, NULL);
        return;
    }
    /* XEP-0100 §5.3 */
    gw_send(gw, gw_stanza("presence", contact, u->jid, "unsubscribe", NULL));
    gw_send(gw, gw_stanza("presence", contact, u->jid, "unsubscribed", NULL));
}

/* ---- disco ---- */

static void add_feature(struct stanza *q, const char *var)
{
    struct stanza *f = stanza_add_child(q, "feature", NS_DISCO_INFO);
    stanza_set_attr(f, "var", var);
}

static void disco_info(struct gw *gw, const struct stanza *iq, const struct stanza *query)
{
    const char *node = stanza_attr(query, "node");
    struct stanza *q = stanza_new("query", NS_DISCO_INFO);
    if (node && strcmp(node, NS_COMMANDS) != 0) {
        stanza_free(q);
        gw_send_error(gw, iq, "item-not-found", NULL);
        return;
    }
    if (node) {
        stanza_set_attr(q, "node", node);
        struct stanza *id = stanza_add_child(q, "identity", NS_DISCO_INFO);
        stanza_set_attr(id, "category", "automation");
        stanza_set_attr(id, "type", "command-list");
        add_feature(q, NS_COMMANDS);
        send_result(gw, iq, q);
        return;
    }
    /* XEP-0100 §4.1 / §6.1: gateway/<type>; the driver may add one more (conference/irc). */
    struct stanza *id = stanza_add_child(q, "identity", NS_DISCO_INFO);
    stanza_set_attr(id, "category", "gateway");
    stanza_set_attr(id, "type", gw->driver->gateway_type);
    stanza_set_attr(id, "name", gw->driver->name);
    if (gw->driver->extra_category) {
        id = stanza_add_child(q, "identity", NS_DISCO_INFO);
        stanza_set_attr(id, "category", gw->driver->extra_category);
        stanza_set_attr(id, "type", gw->driver->extra_type);
        stanza_set_attr(id, "name", gw->driver->name);
    }
    static const char *const base[] = {NS_DISCO_INFO, NS_DISCO_ITEMS, NS_REGISTER, NS_GATEWAY,
                                       NS_COMMANDS,   NS_PING,        NS_VERSION};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        add_feature(q, base[i]);
    for (size_t i = 0; gw->driver->features && gw->driver->features[i]; i++)
        add_feature(q, gw->driver->features[i]);
    send_result(gw, iq, q);
}

static bool command_visible(const struct gw *gw, const struct gw_command *c, const char *bare)
{
    return !c->admin_only || gw_is_admin(gw, bare);
}

/* The framework's own commands, then the driver's. */
static char *cmd_settings(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                          const char **error);
static char *cmd_users(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                       const char **error);
static char *cmd_disconnect(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                            const char **error);
static char *cmd_info(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                      const char **error);

static const struct gw_field jid_field[] = {
    {"jid", GW_TEXT, "User (bare JID)", NULL, true, NULL, NULL, NULL},
};

static const struct gw_command builtin_commands[] = {
    {"settings", "Settings", false, NULL, 0, cmd_settings},
    {"users", "List users", true, NULL, 0, cmd_users},
    {"disconnect", "Disconnect a user", true, jid_field, 1, cmd_disconnect},
    {"info", "Connection info of a user", true, jid_field, 1, cmd_info},
};
#define N_BUILTIN (sizeof builtin_commands / sizeof *builtin_commands)

static const struct gw_command *command_at(const struct gw *gw, size_t i)
{
    if (i < N_BUILTIN)
        return &builtin_commands[i];
    i -= N_BUILTIN;
    return i < gw->driver->n_commands ? &gw->driver->commands[i] : NULL;
}

static void disco_items(struct gw *gw, struct gw_user *u, const struct stanza *iq,
                        const struct stanza *query)
{
    const char *node = stanza_attr(query, "node");
    struct stanza *q = stanza_new("query", NS_DISCO_ITEMS);
    if (node && strcmp(node, NS_COMMANDS) == 0) {
        stanza_set_attr(q, "node", node);
        for (size_t i = 0; command_at(gw, i); i++) {
            const struct gw_command *c = command_at(gw, i);
            if (!command_visible(gw, c, u->jid))
                continue;
            if (strcmp(c->node, "settings") == 0 && !gw->driver->n_settings)
                continue;
            struct stanza *item = stanza_add_child(q, "item", NS_DISCO_ITEMS);
            stanza_set_attr(item, "jid", gw->domain);
            stanza_set_attr(item, "node", c->node);
            stanza_set_attr(item, "name", c->name);
        }
    } else if (node) {
        stanza_free(q);
        gw_send_error(gw, iq, "item-not-found", NULL);
        return;
    } else if (gw->driver->disco_items) {
        gw->driver->disco_items(gw, u, q);
    }
    send_result(gw, iq, q);
}

/* ---- XEP-0077 / XEP-0100 §4.1–4.3 registration ---- */

static void register_get(struct gw *gw, struct gw_user *u, const struct stanza *iq)
{
    const struct gw_driver *d = gw->driver;
    struct stanza *q = stanza_new("query", NS_REGISTER);
    if (d->instructions)
        stanza_add_text_child(q, "instructions", NS_REGISTER, d->instructions);
    if (u->registered)
        stanza_add_child(q, "registered", NS_REGISTER);
    /* Legacy fields for old clients, then the form (XEP-0077 §6). */
    for (size_t i = 0; i < d->n_reg_fields; i++) {
        const struct gw_field *f = &d->reg_fields[i];
        if (!f->legacy)
            continue;
        const char *v = u->registered && f->type != GW_PRIVATE
                            ? gw_kv_get(u->reg, u->n_reg, f->var) : NULL;
        stanza_add_text_child(q, f->legacy, NS_REGISTER, v ? v : "");
    }
    gw_form_add(q, d->name, d->instructions, d->reg_fields, d->n_reg_fields,
                u->registered ? u->reg : NULL, u->registered ? u->n_reg : 0);
    send_result(gw, iq, q);
}

struct jid_list {
    char **jids;
    size_t n;
};

static int collect_contact(void *ud, const char *contact, const char *name)
{
    (void)name;
    struct jid_list *l = ud;
    l->jids = xrealloc(l->jids, (l->n + 1) * sizeof *l->jids);
    l->jids[l->n++] = xstrdup(contact);
    return 0;
}

/* Removes every contact the gateway put in u's roster (collected first: the store is not changed
 * while it is iterated). */
static void remove_all_contacts(struct gw *gw, struct gw_user *u)
{
    struct jid_list l = {NULL, 0};
    gw_store_contact_each(gw->store, u->jid, collect_contact, &l);
    for (size_t i = 0; i < l.n; i++) {
        gw_roster_remove(gw, u, l.jids[i]);
        free(l.jids[i]);
    }
    free(l.jids);
}

/* XEP-0100 §4.3: unregister — log out, clean the roster, forget everything, then
 * unsubscribe + unsubscribed + unavailable from the gateway. */
static void unregister(struct gw *gw, struct gw_user *u)
{
    gw_user_logout(gw, u, "unregistered");
    remove_all_contacts(gw, u);
    bool privileged = has_roster_privilege_for(gw, u->jid);
    gw_store_reg_delete(gw->store, u->jid);
    gw_user_load_registration(gw, u);
    if (privileged)
        roster_push(gw, u->jid, gw->domain, "remove", NULL, NULL);
    send_presence(gw, u->jid, "unsubscribe");
    send_presence(gw, u->jid, "unsubscribed");
    send_presence(gw, u->jid, "unavailable");
    for (size_t i = 0; i < u->n_resources; i++)
        free(u->resources[i]);
    u->n_resources = 0;
    log_info(gw->tag, "%s unregistered", u->jid);
}

struct gw_reg_check {
    struct stanza *iq;
    char *jid;
    struct gw_kv *reg;
    size_t n_reg;
    const char **secret;
};

/* Stores a registration that passed the checks and answers iq (takes reg and secret). */
static void register_store(struct gw *gw, struct gw_user *u, const struct stanza *iq,
                           struct gw_kv *reg, size_t n_reg, const char **secret)
{
    const struct gw_driver *d = gw->driver;
    int rc = gw_store_reg_put(gw->store, u->jid, reg, n_reg, secret);
    gw_kv_free(reg, n_reg);
    free(secret);
    if (rc < 0) {
        gw_send_error(gw, iq, "internal-server-error", "The registration could not be stored");
        return;
    }
    bool was = u->registered;
    gw_user_load_registration(gw, u);
    send_result(gw, iq, NULL);
    log_info(gw->tag, "%s %s", u->jid, was ? "changed the registration" : "registered");
    if (!was) {
        /* XEP-0100 §4.1.1 step 10: the gateway asks for the user's presence. With XEP-0356
         * roster access the item goes straight in, and a probe fetches the presence. */
        if (has_roster_privilege_for(gw, u->jid)) {
            roster_push(gw, u->jid, gw->domain, "both", d->name, NULL);
            send_presence(gw, u->jid, "probe");
        } else {
            send_presence(gw, u->jid, "subscribe");
        }
    } else if (u->logged_in) {
        gw_user_logout(gw, u, "registration changed");
        if (u->n_resources && d->login) {
            u->logged_in = true;
            d->login(gw, u);
        }
    }
}

static void register_set(struct gw *gw, struct gw_user *u, const struct stanza *iq,
                         const struct stanza *query)
{
    const struct gw_driver *d = gw->driver;
    if (stanza_child(query, "remove", NS_REGISTER)) {
        if (!u->registered) {
            gw_send_error(gw, iq, "registration-required", "You are not registered");
            return;
        }
        send_result(gw, iq, NULL);
        unregister(gw, u);
        gw_user_drop_if_idle(gw, u);
        return;
    }
    struct gw_kv *vals = NULL;
    size_t n = gw_form_values(query, &vals);
    if (!stanza_child(query, "x", NS_DATA)) {
        /* Legacy fields: map element names to vars. */
        for (size_t i = 0; i < d->n_reg_fields; i++) {
            const struct gw_field *f = &d->reg_fields[i];
            if (!f->legacy)
                continue;
            char *t = stanza_child_text(query, f->legacy, NS_REGISTER);
            if (!t)
                continue;
            vals = xrealloc(vals, (n + 1) * sizeof *vals);
            vals[n].key = xstrdup(f->var);
            vals[n].value = t;
            n++;
        }
    }
    /* The stored registration: known fields only; an edit keeps what the form left empty for
     * secrets (clients never get them back to resubmit). */
    struct gw_kv *reg = xcalloc(d->n_reg_fields ? d->n_reg_fields : 1, sizeof *reg);
    size_t n_reg = 0;
    const char **secret = xcalloc(d->n_reg_fields + 1, sizeof *secret);
    size_t n_secret = 0;
    const char *missing = NULL;
    for (size_t i = 0; i < d->n_reg_fields; i++) {
        const struct gw_field *f = &d->reg_fields[i];
        const char *v = gw_kv_get(vals, n, f->var);
        if ((!v || !*v) && f->type == GW_PRIVATE && u->registered)
            v = gw_kv_get(u->reg, u->n_reg, f->var);
        if (!v || !*v) {
            if (f->required && !missing)
                missing = f->label ? f->label : f->var;
            continue;
        }
        if (f->type == GW_PRIVATE)
            secret[n_secret++] = f->var;
        reg[n_reg].key = xstrdup(f->var);
        reg[n_reg].value = xstrdup(v);
        n_reg++;
    }
    char text[256] = "";
    const char *cond = NULL;
    if (missing) {
        cond = "not-acceptable";
        snprintf(text, sizeof text, "%s is required", missing);
    } else if (d->validate) {
        cond = d->validate(gw, u->jid, reg, n_reg, text, sizeof text);
    }
    gw_kv_free(vals, n);
    if (!cond && d->check_registration) {
        /* XEP-0100 §4.1: a real login attempt first; answered in gw_reg_check_done */
        struct gw_reg_check *c = xcalloc(1, sizeof *c);
        c->iq = stanza_copy(iq);
        c->jid = xstrdup(u->jid);
        c->reg = reg;
        c->n_reg = n_reg;
        c->secret = secret;
        d->check_registration(gw, u->jid, reg, n_reg, c);
        return;
    }
    if (cond) {
        gw_kv_free(reg, n_reg);
        free(secret);
        gw_send_error(gw, iq, cond, text[0] ? text : NULL);
        return;
    }
    register_store(gw, u, iq, reg, n_reg, secret);
}

void gw_reg_check_done(struct gw *gw, struct gw_reg_check *c, const char *cond,
                       const char *text)
{
    if (cond) {
        gw_send_error(gw, c->iq, cond, text && *text ? text : NULL);
        gw_kv_free(c->reg, c->n_reg);
        free(c->secret);
    } else {
        struct gw_user *u = gw_user_get(gw, c->jid);
        gw_user_hold(u);
        register_store(gw, u, c->iq, c->reg, c->n_reg, c->secret);
        gw_user_release(gw, u);
    }
    stanza_free(c->iq);
    free(c->jid);
    free(c);
}

/* ---- XEP-0100 §6.3 jabber:iq:gateway ---- *//* ---- XEP-0100 §6.3 jabber:iq:gateway ---- */

static void gateway_iq(struct gw *gw, const struct stanza *iq, const struct stanza *query,
                       bool set)
{
    const struct gw_driver *d = gw->driver;
    struct stanza *q = stanza_new("query", NS_GATEWAY);
    if (!set) {
        stanza_add_text_child(q, "desc", NS_GATEWAY,
                              d->prompt_desc ? d->prompt_desc : "Enter the legacy address");
        stanza_add_text_child(q, "prompt", NS_GATEWAY,
                              d->prompt_label ? d->prompt_label : "Address");
        send_result(gw, iq, q);
        return;
    }
    char *prompt = stanza_child_text(query, "prompt", NS_GATEWAY);
    char *node = prompt && *prompt && d->prompt_to_node ? d->prompt_to_node(gw, prompt) : NULL;
    if (!node && prompt && *prompt && !d->prompt_to_node)
        node = jid_escape_local(prompt);
    free(prompt);
    if (!node) {
        stanza_free(q);
        gw_send_error(gw, iq, "bad-request", "Not a valid address for this gateway");
        return;
    }
    char *jid = xasprintf("%s@%s", node, gw->domain);
    stanza_add_text_child(q, "jid", NS_GATEWAY, jid);
    /* §6.3 example 51: older clients read <prompt/> */
    stanza_add_text_child(q, "prompt", NS_GATEWAY, jid);
    free(jid);
    free(node);
    send_result(gw, iq, q);
}

/* ---- XEP-0050 ad-hoc commands (one stage: form, then execute) ---- */

static char *cmd_settings(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                          const char **error)
{
    const struct gw_driver *d = gw->driver;
    for (size_t i = 0; i < n; i++) {
        bool known = false;
        for (size_t k = 0; k < d->n_settings; k++)
            known |= strcmp(d->settings[k].var, v[i].key) == 0;
        if (!known)
            continue;
        if (gw_user_setting_set(gw, u, v[i].key, v[i].value) < 0) {
            *error = "internal-server-error";
            return NULL;
        }
    }
    return xstrdup("Settings saved.");
}

struct user_list {
    struct gw *gw;
    struct buf out;
    unsigned n;
};

static int list_registered(void *ud, const char *jid)
{
    struct user_list *l = ud;
    const struct gw_user *u = gw_user_find(l->gw, jid);
    buf_printf(&l->out, "%s%s\n", jid, u && u->logged_in ? " (online)" : "");
    return ++l->n >= 10000; /* a note, not a database dump */
}

static char *cmd_users(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                       const char **error)
{
    (void)u;
    (void)v;
    (void)n;
    (void)error;
    struct user_list l = {.gw = gw, .n = 0};
    buf_init(&l.out);
    buf_printf(&l.out, "%lld registered users:\n", (long long)gw_store_reg_count(gw->store));
    gw_store_reg_each(gw->store, list_registered, &l);
    return buf_take(&l.out);
}

static struct gw_user *command_target(struct gw *gw, const struct gw_kv *v, size_t n,
                                      const char **error)
{
    const char *raw = gw_kv_get(v, n, "jid");
    struct jid j;
    if (!raw || jid_parse(raw, &j) < 0) {
        *error = "bad-request";
        return NULL;
    }
    char *bare = jid_bare_string(&j);
    jid_fini(&j);
    struct gw_user *t = gw_user_find(gw, bare);
    free(bare);
    if (!t)
        *error = "item-not-found";
    return t;
}

static char *cmd_disconnect(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                            const char **error)
{
    (void)u;
    struct gw_user *t = command_target(gw, v, n, error);
    if (!t)
        return NULL;
    bool was = t->logged_in;
    gw_user_logout(gw, t, "disconnected by admin");
    return xasprintf("%s %s.", t->jid, was ? "disconnected" : "was not connected");
}

static char *cmd_info(struct gw *gw, struct gw_user *u, const struct gw_kv *v, size_t n,
                      const char **error)
{
    (void)u;
    struct gw_user *t = command_target(gw, v, n, error);
    if (!t)
        return NULL;
    char *extra = gw->driver->user_info ? gw->driver->user_info(gw, t) : NULL;
    char *out = xasprintf("%s: %s, %s, %zu resources%s%s", t->jid,
                          t->registered ? "registered" : "not registered",
                          t->logged_in ? "logged in" : "logged out", t->n_resources,
                          extra ? "\n" : "", extra ? extra : "");
    free(extra);
    return out;
}

static void command_iq(struct gw *gw, struct gw_user *u, const struct stanza *iq,
                       const struct stanza *cmd)
{
    const char *node = stanza_attr(cmd, "node");
    const char *action = stanza_attr(cmd, "action");
    const struct gw_command *c = NULL;
    for (size_t i = 0; node && command_at(gw, i); i++)
        if (strcmp(command_at(gw, i)->node, node) == 0)
            c = command_at(gw, i);
    if (!c) {
        gw_send_error(gw, iq, "item-not-found", NULL);
        return;
    }
    if (!command_visible(gw, c, u->jid)) {
        gw_send_error(gw, iq, "forbidden", "This command is for the gateway's admins");
        return;
    }
    if (str_eq(action, "cancel")) {
        struct stanza *r = stanza_new("command", NS_COMMANDS);
        stanza_set_attr(r, "node", node);
        if (stanza_attr(cmd, "sessionid"))
            stanza_set_attr(r, "sessionid", stanza_attr(cmd, "sessionid"));
        stanza_set_attr(r, "status", "canceled");
        send_result(gw, iq, r);
        return;
    }
    bool is_settings = strcmp(c->node, "settings") == 0;
    const struct gw_field *fields = is_settings ? gw->driver->settings : c->fields;
    size_t n_fields = is_settings ? gw->driver->n_settings : c->n_fields;
    struct gw_kv *vals = NULL;
    size_t n = gw_form_values(cmd, &vals);
    bool submitted = stanza_child(cmd, "x", NS_DATA) != NULL;
    struct stanza *r = stanza_new("command", NS_COMMANDS);
    stanza_set_attr(r, "node", node);
    if (n_fields && !submitted) {
        /* Stage one: the form, with the current values for settings. */
        char *sid = xasprintf("%s-%u", node, ++gw->command_seq);
        stanza_set_attr(r, "sessionid", sid);
        free(sid);
        stanza_set_attr(r, "status", "executing");
        struct stanza *actions = stanza_add_child(r, "actions", NS_COMMANDS);
        stanza_set_attr(actions, "execute", "complete");
        stanza_add_child(actions, "complete", NS_COMMANDS);
        struct gw_kv *cur = xcalloc(n_fields, sizeof *cur);
        size_t n_cur = 0;
        for (size_t i = 0; is_settings && i < n_fields; i++) {
            char *v = gw_user_setting(gw, u, fields[i].var);
            if (v) {
                cur[n_cur].key = xstrdup(fields[i].var);
                cur[n_cur].value = v;
                n_cur++;
            }
        }
        gw_form_add(r, c->name, NULL, fields, n_fields, cur, n_cur);
        gw_kv_free(cur, n_cur);
        send_result(gw, iq, r);
        gw_kv_free(vals, n);
        return;
    }
    if (stanza_attr(cmd, "sessionid"))
        stanza_set_attr(r, "sessionid", stanza_attr(cmd, "sessionid"));
    const char *error = NULL;
    char *note = c->execute(gw, u, vals, n, &error);
    gw_kv_free(vals, n);
    if (error) {
        free(note);
        stanza_free(r);
        gw_send_error(gw, iq, error, NULL);
        return;
    }
    stanza_set_attr(r, "status", "completed");
    struct stanza *nt = stanza_add_text_child(r, "note", NS_COMMANDS, note ? note : "Done.");
    stanza_set_attr(nt, "type", "info");
    free(note);
    send_result(gw, iq, r);
}

/* ---- dispatch ---- */

static void domain_iq(struct gw *gw, struct gw_user *u, const struct stanza *iq)
{
    const char *type = stanza_attr(iq, "type");
    if (str_eq(type, "result") || str_eq(type, "error")) {
        if (str_eq(type, "error"))
            log_debug(gw->tag, "iq error from %s", stanza_attr(iq, "from"));
        return;
    }
    bool set = str_eq(type, "set");
    if (!set && !str_eq(type, "get")) {
        gw_send_error(gw, iq, "bad-request", NULL);
        return;
    }
    struct stanza *q = stanza_first_elem(iq);
    if (!q) {
        gw_send_error(gw, iq, "bad-request", NULL);
        return;
    }
    const char *ns = q->ns;
    if (!set && strcmp(ns, NS_DISCO_INFO) == 0)
        disco_info(gw, iq, q);
    else if (!set && strcmp(ns, NS_DISCO_ITEMS) == 0)
        disco_items(gw, u, iq, q);
    else if (strcmp(ns, NS_REGISTER) == 0)
        set ? register_set(gw, u, iq, q) : register_get(gw, u, iq);
    else if (strcmp(ns, NS_GATEWAY) == 0)
        gateway_iq(gw, iq, q, set);
    else if (set && strcmp(ns, NS_COMMANDS) == 0 && strcmp(q->name, "command") == 0)
        command_iq(gw, u, iq, q);
    else if (!set && strcmp(ns, NS_PING) == 0)
        send_result(gw, iq, NULL);
    else if (!set && strcmp(ns, NS_VERSION) == 0) {
        struct stanza *v = stanza_new("query", NS_VERSION);
        stanza_add_text_child(v, "name", NS_VERSION, gw->driver->name);
        stanza_add_text_child(v, "version", NS_VERSION, GW_VERSION);
        send_result(gw, iq, v);
    } else {
        gw_send_error(gw, iq, "service-unavailable", NULL);
    }
}

static void resource_gone(struct gw *gw, struct gw_user *u, const char *full)
{
    if (!gw_resource_remove(u, full))
        return;
    if (gw->driver->resource_gone)
        gw->driver->resource_gone(gw, u, full);
    if (!u->n_resources)
        gw_user_logout(gw, u, "unavailable");  /* XEP-0100 §4.5 */
}

/* Presence to the bare gateway domain: XEP-0100 §4.1 (subscriptions), §4.4–4.5 (login/logout). */
static void domain_presence(struct gw *gw, struct gw_user *u, const struct stanza *p,
                            const char *from_full, bool from_has_resource)
{
    const char *type = stanza_attr(p, "type");
    if (!type) {
        if (!from_has_resource)
            return;
        gw_resource_add(u, from_full);
        if (u->registered) {
            /* Our presence back, so the user sees the gateway online. */
            struct stanza *me = gw_stanza("presence", gw->domain, from_full, NULL, NULL);
            gw_send(gw, me);
            if (!u->logged_in && gw->driver->login) {
                u->logged_in = true;
                gw->driver->login(gw, u);  /* §4.4 */
            }
            if (u->logged_in && gw->driver->presence)
                gw->driver->presence(gw, u, p);
        }
    } else if (strcmp(type, "unavailable") == 0 || strcmp(type, "error") == 0) {
        if (from_has_resource)
            resource_gone(gw, u, from_full);
    } else if (strcmp(type, "probe") == 0) {
        /* The gateway is online for its registered users; others learn nothing (RFC 6121
         * §4.3.2). */
        if (u->registered)
            send_presence(gw, from_full, NULL);
    } else if (strcmp(type, "subscribe") == 0) {
        /* The user asked (e.g. approving our request and subscribing back). */
        if (u->registered || !gw->driver->require_registration) {
            send_presence(gw, u->jid, "subscribed");
            send_presence(gw, u->jid, NULL);
        } else {
            send_presence(gw, u->jid, "unsubscribed");
        }
    } else if (strcmp(type, "unsubscribe") == 0) {
        send_presence(gw, u->jid, "unsubscribed");
    }
    /* subscribed / unsubscribed: the user's answer to our request; the server keeps state. */
}

void gw_handle_stanza(struct gw *gw, const struct stanza *st)
{
    struct jid from, to;
    const char *from_s = stanza_attr(st, "from");
    const char *to_s = stanza_attr(st, "to");
    if (!from_s || jid_parse(from_s, &from) < 0) {
        log_debug(gw->tag, "dropping a <%s/> without a valid from", st->name);
        return;
    }
    if (!to_s || jid_parse(to_s, &to) < 0) {
        gw_send_error(gw, st, "jid-malformed", NULL);
        jid_fini(&from);
        return;
    }
    if (strcmp(to.domain, gw->domain) != 0) {
        gw_send_error(gw, st, "item-not-found", NULL);
        goto done;
    }
    char *bare = jid_bare_string(&from);
    char *full = jid_to_string(&from);
    struct gw_user *u = gw_user_get(gw, bare);
    gw_user_hold(u);
    bool is_error = str_eq(stanza_attr(st, "type"), "error");
    if (to.local || to.resource) {
        const char *cond = NULL;
        if (gw->driver->require_registration && !u->registered && !is_error &&
            strcmp(st->name, "iq") != 0 && !str_eq(stanza_attr(st, "type"), "unavailable"))
            cond = "registration-required"; /* XEP-0100 §4.8 */
        else if (gw->driver->stanza)
            cond = gw->driver->stanza(gw, u, st, &from, &to);
        else
            cond = "service-unavailable";
        if (cond && !is_error)
            gw_send_error(gw, st, cond, NULL);
    } else if (strcmp(st->name, "iq") == 0) {
        domain_iq(gw, u, st);
    } else if (strcmp(st->name, "presence") == 0) {
        domain_presence(gw, u, st, full, from.resource != NULL);
    } else if (!is_error) {
        const char *cond = gw->driver->stanza ? gw->driver->stanza(gw, u, st, &from, &to)
                                              : "service-unavailable";
        if (cond)
            gw_send_error(gw, st, cond, NULL);
    }
    free(bare);
    free(full);
    gw_user_release(gw, u);
done:
    jid_fini(&from);
    jid_fini(&to);
}

/* After (re)connecting: registered users' presence may have changed while we were away; a probe
 * makes their server send it again (RFC 6121 §4.3). */
static int probe_user(void *ud, const char *jid)
{
    struct gw *gw = ud;
    send_presence(gw, jid, "probe");
    return 0;
}

void gw_xep0100_online(struct gw *gw)
{
    gw_store_reg_each(gw->store, probe_user, gw);
}

/* ---- the admin control socket's commands (isthmusctl gateway NAME ...) ---- */

char *gw_admin_command(struct gw *gw, const char *cmd, const char *arg, bool *ok)
{
    const char *error = NULL;
    char *out = NULL;
    struct gw_kv kv = {(char *)"jid", (char *)arg};
    *ok = false;
    if (strcmp(cmd, "users") == 0) {
        out = cmd_users(gw, NULL, NULL, 0, &error);
    } else if (strcmp(cmd, "disconnect") == 0 && arg) {
        out = cmd_disconnect(gw, NULL, &kv, 1, &error);
    } else if (strcmp(cmd, "info") == 0 && arg) {
        out = cmd_info(gw, NULL, &kv, 1, &error);
    } else if (strcmp(cmd, "unregister") == 0 && arg) {
        struct gw_user *t = command_target(gw, &kv, 1, &error);
        if (!t) {
            char *bare = jid_normalize(arg);
            t = bare ? gw_user_get(gw, bare) : NULL; /* registered but not in memory */
            free(bare);
            error = t ? NULL : "bad-request";
        }
        if (t && !t->registered) {
            error = "item-not-found";
        } else if (t) {
            unregister(gw, t);
            out = xasprintf("%s unregistered.", t->jid);
            gw_user_drop_if_idle(gw, t);
        }
    } else {
        return xstrdup("error: unknown command; expected users, info JID, disconnect JID or "
                       "unregister JID");
    }
    if (error) {
        free(out);
        return xasprintf("error: %s", error);
    }
    *ok = true;
    return out ? out : xstrdup("Done.");
}
