#include "isthmus/module.h"

#include <string.h>

#include "isthmus/log.h"

static const struct module *const module_table[] = {
    &mod_disco,   &mod_ping,    &mod_version,  &mod_time, &mod_register, &mod_roster,
    &mod_presence, &mod_offline, &mod_carbons, &mod_mam,  &mod_vcard,    &mod_private,
    &mod_blocking, &mod_last,    &mod_csi, &mod_muc,
};

static bool active(const struct module *m)
{
    return !m->active || m->active();
}

int modules_init(void)
{
    for (size_t i = 0; i < ARRAY_LEN(module_table); i++) {
        const struct module *m = module_table[i];
        if (!active(m))
            continue;
        for (const struct module_hook *h = m->hooks; h && h->fn; h++)
            hooks_add(h->event, h->priority, h->fn);
        if (m->init && m->init() < 0) {
            log_error(NULL, "module %s failed to start", m->name);
            return -1;
        }
    }
    return 0;
}

void modules_fini(void)
{
    hooks_clear();
    for (size_t i = ARRAY_LEN(module_table); i-- > 0;)
        if (module_table[i]->fini)
            module_table[i]->fini();
}

const char *modules_dispatch_iq(enum iq_target target, struct iq_request *req)
{
    const char *type = stanza_attr(req->iq, "type");
    bool is_get = str_eq(type, "get");
    for (size_t i = 0; i < ARRAY_LEN(module_table); i++) {
        const struct module *m = module_table[i];
        if (!m->iqs || !active(m))
            continue;
        for (const struct module_iq *h = m->iqs; h->ns; h++) {
            if (h->target != target || strcmp(h->ns, req->payload->ns) != 0 ||
                strcmp(h->name, req->payload->name) != 0)
                continue;
            iq_fn fn = is_get ? h->get : h->set;
            /* RFC 6120 §8.3.3.7: known namespace, wrong type → feature-not-implemented? No:
             * XEP-0030 practice is service-unavailable for unsupported requests; keep it uniform. */
            return fn ? fn(req) : "service-unavailable";
        }
    }
    return "service-unavailable";
}

void modules_add_features(enum iq_target target, struct stanza *query)
{
    for (size_t i = 0; i < ARRAY_LEN(module_table); i++) {
        const struct module *m = module_table[i];
        const char *const *f = target == IQ_HOST ? m->host_features : m->account_features;
        if (!f || !active(m))
            continue;
        for (; *f; f++)
            stanza_set_attr(stanza_add_child(query, "feature", NULL), "var", *f);
    }
}
