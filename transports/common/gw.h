/* gw.h — the gateway framework every Isthmus gateway (isthmus-irc, -sms, -mail, -purple) runs on.
 *
 * A gateway is an XEP-0114 component (connects to Isthmus, Prosody or ejabberd) with its own
 * SQLite store (gw_store.h). The framework owns the event loop, the component stream (reconnect
 * with backoff), the config, the store, and implements XEP-0100 once:
 *  - disco#info on the gateway domain: identity gateway/<type> (plus the driver's extra
 *    identities, e.g. conference/irc), features jabber:iq:register, jabber:iq:gateway,
 *    http://jabber.org/protocol/commands, urn:xmpp:ping, jabber:iq:version, the driver's features;
 *    disco#items: the driver's items (may be none) and the ad-hoc command node;
 *  - jabber:iq:register (XEP-0077 + XEP-0100 §4.1–4.3): get returns instructions, the legacy
 *    fields and an XEP-0004 form (with <registered/> and current values when registered);
 *    set with form or legacy fields: validate (driver) → store → result → <presence
 *    type='subscribe'/> from the gateway (§4.1.1 step 10), or with XEP-0356 roster privilege, a
 *    roster push of the gateway item instead; <remove/>: driver logout + unregister, every
 *    contact removed from the user's roster (privileged roster set, or unsubscribe + unsubscribed
 *    from each contact), then unsubscribe, unsubscribed and unavailable from the gateway (§4.3);
 *  - presence to the gateway's bare domain: available from a registered user's first resource →
 *    driver login (§4.4), probe answered, unavailable from the last resource → driver logout
 *    (§4.5); subscribe from a user → subscribed (a request the user prompted); unsubscribe /
 *    unsubscribed handled per §4.3 and §5.3;
 *  - jabber:iq:gateway (§6.3): get → desc + prompt; set → driver prompt_to_node → <jid/>;
 *  - ad-hoc commands (XEP-0050): "settings" (per-user, driver's setting fields), and for admins
 *    (JIDs in [gateway NAME] admins): "users" (list registered and online users), "disconnect"
 *    (log a user out), "info" (connection info of a user); drivers may add commands;
 *  - ping, version, error replies for everything unhandled (service-unavailable for iq,
 *    nothing for errors), XEP-0106 escaping helpers.
 *
 * Everything addressed to a node (node@gw or node@gw/resource), and everything addressed to a
 * full JID of the bare domain (gw/resource: JIDs a driver uses for itself, e.g. relay occupants),
 * goes to the driver's stanza callback. A driver never builds the component stream; it sends
 * stanzas with gw_send(). */
#ifndef ISTHMUS_GW_H
#define ISTHMUS_GW_H

#include <stdbool.h>
#include <stddef.h>

#include "isthmus/config.h"
#include "isthmus/ev.h"
#include "isthmus/jid.h"
#include "isthmus/stanza.h"

#include "gw_store.h"

#define NS_REGISTER "jabber:iq:register"
#define NS_GATEWAY "jabber:iq:gateway"
#define NS_DATA "jabber:x:data"
#define NS_COMMANDS "http://jabber.org/protocol/commands"
#define NS_DISCO_INFO "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"
#define NS_ROSTER "jabber:iq:roster"
#define NS_MUC "http://jabber.org/protocol/muc"
#define NS_MUC_USER "http://jabber.org/protocol/muc#user"
#define NS_DELAY "urn:xmpp:delay"
#define NS_SID "urn:xmpp:sid:0"
#define NS_MAM "urn:xmpp:mam:2"
#define NS_RSM "http://jabber.org/protocol/rsm"
#define NS_FORWARD "urn:xmpp:forward:0"
#define NS_CHATSTATES "http://jabber.org/protocol/chatstates"

struct gw;
struct gw_reg_check;

/* A registration / settings form field (XEP-0004), also shown as a legacy XEP-0077 field when
 * legacy is set. */
enum gw_field_type { GW_TEXT, GW_PRIVATE, GW_BOOL, GW_LIST, GW_MULTI /* text-multi */ };
struct gw_field {
    const char *var;      /* form var and store key */
    enum gw_field_type type;
    const char *label;
    const char *legacy;   /* XEP-0077 element name (username, password, nick, ...), or NULL */
    bool required;
    const char *def;      /* default value shown when not set, or NULL */
    const char *const *options; /* GW_LIST: value/label pairs, NULL-terminated */
    const char *desc;     /* <desc/>, or NULL */
};

/* One XMPP user (bare JID) the gateway knows: registered, or just talking to it (drivers that
 * work without registration, like IRC). Lives while registered or while any resource is
 * available or the driver holds it (gw_user_hold). */
struct gw_user {
    char *jid;             /* bare, normalised */
    bool registered;
    bool logged_in;        /* the driver's login ran and logout has not */
    struct gw_kv *reg;     /* registration fields (secret ones decrypted), n_reg of them */
    size_t n_reg;
    char **resources;      /* full JIDs with available presence to the gateway, n_resources */
    size_t n_resources;
    void *data;            /* the driver's */
    unsigned holds;
};
/* The value of a registration field (or its default from the driver's field table), or NULL. */
const char *gw_user_reg(const struct gw_user *u, const char *var);
/* A per-user setting from the store (or the driver's default); malloc'd, NULL if none. */
char *gw_user_setting(struct gw *gw, const struct gw_user *u, const char *key);
int gw_user_setting_set(struct gw *gw, const struct gw_user *u, const char *key,
                        const char *value);
/* Keeps u alive while the driver uses it without a registration or presence; release with
 * gw_user_release. */
void gw_user_hold(struct gw_user *u);
void gw_user_release(struct gw *gw, struct gw_user *u);
struct gw_user *gw_user_find(struct gw *gw, const char *bare_jid);
/* Finds or creates (unregistered) the user of bare_jid. */
struct gw_user *gw_user_get(struct gw *gw, const char *bare_jid);
/* Calls fn for every known user. */
void gw_user_each(struct gw *gw, void (*fn)(struct gw *gw, struct gw_user *u, void *ud), void *ud);

/* An ad-hoc command a driver adds (XEP-0050, single stage: the form comes back, then execute). */
struct gw_command {
    const char *node;
    const char *name;
    bool admin_only;
    const struct gw_field *fields; /* the form; NULL/0: executes at once */
    size_t n_fields;
    /* Runs the command. values: the submitted form fields (NULL when no form); return a
     * malloc'd note text shown as completed (NULL: "Done."), or set *error to a condition. */
    char *(*execute)(struct gw *gw, struct gw_user *u, const struct gw_kv *values, size_t n,
                     const char **error);
};

struct gw_driver {
    const char *type;          /* "irc", "sms", "mail", "purple": the [gateway] type */
    const char *gateway_type;  /* XEP-0100 disco identity type: "irc", "sms", "smtp", ... */
    const char *name;          /* human name: "IRC gateway" */
    const char *extra_category, *extra_type; /* a second identity ("conference", "irc"), or NULL */
    const char *const *features; /* extra disco features, NULL-terminated, or NULL */
    /* Registration (XEP-0077/0100): fields, instructions, and which fields are secret. */
    const struct gw_field *reg_fields;
    size_t n_reg_fields;
    const char *instructions;
    /* Per-user settings (ad-hoc "settings" command), stored with gw_user_setting_set. */
    const struct gw_field *settings;
    size_t n_settings;
    const struct gw_command *commands;
    size_t n_commands;
    /* Only registered users may use the gateway (else messages/presence from unregistered
     * users get registration-required, §4.8). */
    bool require_registration;
    /* jabber:iq:gateway §6.3 */
    const char *prompt_desc;
    const char *prompt_label;

    /* Called once before the component connects. Return -1 to exit with an error. */
    int (*init)(struct gw *gw);
    void (*fini)(struct gw *gw);
    /* The component stream is up (again). */
    void (*online)(struct gw *gw);
    /* A submitted registration (new or edit), before it is stored: check the values (a real login
     * attempt may come later, asynchronously). Return NULL to accept, or a stanza error
     * condition ("not-acceptable", "bad-request", "conflict") with a human text in text. */
    const char *(*validate)(struct gw *gw, const char *jid, const struct gw_kv *values, size_t n,
                            char *text, size_t textlen);
    /* XEP-0100 §4.4 / §4.5: first available presence from a registered user / last unavailable
     * or unregistration. reason: "unavailable", "unregistered", "disconnected by admin",
     * "registration changed". */
    void (*login)(struct gw *gw, struct gw_user *u);
    void (*logout)(struct gw *gw, struct gw_user *u, const char *reason);
    /* Every stanza addressed to a node of the gateway (to->local != NULL), and presence/message
     * to the bare domain that the framework does not handle (e.g. message to the domain). from is
     * the sender's full JID, u its user (never NULL; unregistered when !u->registered). The
     * driver takes no ownership of st. Return NULL when handled; otherwise a stanza error
     * condition the framework answers with (never for type='error' stanzas). */
    const char *(*stanza)(struct gw *gw, struct gw_user *u, const struct stanza *st,
                          const struct jid *from, const struct jid *to);
    /* The user's resource went unavailable (directed or broadcast presence to the gateway
     * domain), or the framework knows it is gone (error bounce). May be NULL. */
    void (*resource_gone)(struct gw *gw, struct gw_user *u, const char *full_jid);
    /* jabber:iq:gateway: the node for a typed legacy address (malloc'd, escaped), or NULL. */
    char *(*prompt_to_node)(struct gw *gw, const char *prompt);
    /* Extra disco#items on the gateway domain: append <item/> children to query. May be NULL. */
    void (*disco_items)(struct gw *gw, struct gw_user *u, struct stanza *query);
    /* An admin "info" line for a user (connection state): malloc'd text, may be NULL. */
    char *(*user_info)(struct gw *gw, struct gw_user *u);
    /* Available presence from a registered user's resource to the gateway domain, after the
     * §4.4 login (so the driver sees every show/status change). May be NULL. */
    void (*presence)(struct gw *gw, struct gw_user *u, const struct stanza *p);
    /* Optional (XEP-0100 §4.1): a real login attempt with a submitted registration (new or
     * changed) after validate accepted it, before it is stored or the iq answered. The driver
     * ends it later, exactly once, with gw_reg_check_done (also when shutting down). values are
     * only valid during the call. May be NULL. */
    void (*check_registration)(struct gw *gw, const char *jid, const struct gw_kv *values,
                               size_t n, struct gw_reg_check *check);
};

/* Ends a check_registration: cond NULL stores the registration and answers with a result (then
 * the §4.1 subscription as usual); else the iq gets the error cond (e.g. not-authorized,
 * remote-server-not-found, remote-server-timeout) with text (may be NULL). */
void gw_reg_check_done(struct gw *gw, struct gw_reg_check *check, const char *cond,
                       const char *text);

/* ---- the framework's entry point (a gateway's main() is one call) ---- */
/* Parses argv (-c CONFIG -n NAME, -t to check the config only, -h), loads the config (a standalone
 * config may have no [host]), opens the log and the store, connects the component (environment
 * ISTHMUS_COMPONENT_HOST/PORT/SECRET/DOMAIN from a supervising Isthmus win over the config's
 * server/secret), runs the loop until SIGTERM/SIGINT, and returns the exit status. */
int gw_main(const struct gw_driver *driver, int argc, char **argv);

/* ---- what drivers use ---- */
struct ev_loop *gw_loop(struct gw *gw);
const char *gw_domain(const struct gw *gw);
const struct config *gw_config(const struct gw *gw);
const struct config_gateway *gw_gateway_config(const struct gw *gw);
struct gw_store *gw_store(struct gw *gw);
bool gw_is_online(const struct gw *gw);   /* the component stream is authenticated */
void *gw_driver_data(struct gw *gw);
void gw_set_driver_data(struct gw *gw, void *data);

/* Sends a stanza on the component stream (takes ownership). While the stream is down, stanzas
 * are queued (bounded: 1000; the oldest dropped with a log line) and sent after reconnecting. */
void gw_send(struct gw *gw, struct stanza *st);
/* Builds and sends an error reply to st (never for type='error'). */
void gw_send_error(struct gw *gw, const struct stanza *st, const char *condition,
                   const char *text);
/* A new stanza with from/to/type/id set (any may be NULL; id NULL → a random one for iq). */
struct stanza *gw_stanza(const char *name, const char *from, const char *to, const char *type,
                         const char *id);
/* node@domain[/resource] of this gateway for an unescaped legacy name (escaped with XEP-0106);
 * malloc'd. */
char *gw_jid_for(const struct gw *gw, const char *legacy, const char *resource);

/* Puts contact (a JID of this gateway) into u's roster: a XEP-0356 roster push (subscription
 * both) when the server granted roster set, else a subscribe presence from the contact (§5.1).
 * Records it in the store's contacts. name/group may be NULL. */
void gw_roster_add(struct gw *gw, struct gw_user *u, const char *contact, const char *name,
                   const char *group);
/* Removes it: privileged roster remove, else unsubscribe + unsubscribed from the contact. */
void gw_roster_remove(struct gw *gw, struct gw_user *u, const char *contact);
/* Does the server grant us roster set (XEP-0356 advertisement received)? */
bool gw_has_roster_privilege(const struct gw *gw);

/* Reads the submitted values of a jabber:x:data form (type='submit') in parent; returns the
 * number of fields (array in *out, free with gw_kv_free). Multi-valued fields are joined with
 * '\n'. */
size_t gw_form_values(const struct stanza *parent, struct gw_kv **out);
/* Appends an XEP-0004 form of fields (type "form"), with values from values/n when given. */
struct stanza *gw_form_add(struct stanza *parent, const char *title, const char *instructions,
                           const struct gw_field *fields, size_t n_fields,
                           const struct gw_kv *values, size_t n_values);
const char *gw_kv_get(const struct gw_kv *kv, size_t n, const char *key);

/* Is jid one of the configured admins? */
bool gw_is_admin(const struct gw *gw, const char *bare_jid);
/* Logs a user out (driver logout with reason) if logged in. */
void gw_user_logout(struct gw *gw, struct gw_user *u, const char *reason);

#endif
