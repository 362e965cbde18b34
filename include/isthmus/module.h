/* module.h — server features as modules (nginx's static module table, Prosody's one-feature-a-
 * file). A module declares its disco features, its IQ handlers as data, and optional init/fini.
 * modules.c lists them all. */
#ifndef ISTHMUS_MODULE_H
#define ISTHMUS_MODULE_H

#include <stdbool.h>

#include "isthmus/hooks.h"
#include "isthmus/router.h"
#include "isthmus/util.h"

struct module_iq {
    enum iq_target target;
    const char *ns;   /* payload namespace */
    const char *name; /* payload element name */
    iq_fn get;        /* NULL: type='get' not handled (→ service-unavailable) */
    iq_fn set;
};

struct module_hook {
    enum hook_event event;
    int priority; /* higher runs first; core behaviour sits at 0 */
    hook_fn fn;
};

struct module {
    const char *name;
    const char *const *host_features;    /* XEP-0030 features of each host, NULL-terminated */
    const char *const *account_features; /* features of each account's bare JID */
    const struct module_iq *iqs;         /* terminated by an entry with ns == NULL */
    const struct module_hook *hooks;     /* terminated by an entry with fn == NULL */
    bool (*active)(void);                /* NULL: always; false hides features and handlers */
    int (*init)(void);
    void (*fini)(void);
};

extern const struct module mod_disco, mod_ping, mod_version, mod_time, mod_register, mod_roster,
    mod_presence, mod_offline, mod_carbons, mod_mam, mod_vcard, mod_private, mod_blocking, mod_last,
    mod_csi, mod_muc;

int modules_init(void);
void modules_fini(void);
/* Finds the handler for req and runs it; returns what it returns, or "service-unavailable" when
 * no active module handles (target, type, namespace, element). */
const char *modules_dispatch_iq(enum iq_target target, struct iq_request *req);
/* Appends <feature var=.../> elements for the target to a disco#info result. */
void modules_add_features(enum iq_target target, struct stanza *query);

#endif
