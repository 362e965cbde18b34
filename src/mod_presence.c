/* RFC 6121 §4: presence. Tracks each session's availability and priority from the presence it
 * sends without a 'to'. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/c2s.h"
#include "isthmus/module.h"

static int client_presence(struct hook_ctx *ctx)
{
    struct stanza *p = ctx->stanza;
    if (strcmp(p->name, "presence") != 0 || stanza_attr(p, "to"))
        return HOOK_PASS;
    const char *type = stanza_attr(p, "type");
    if (!type) {
        char *prio = stanza_child_text(p, "priority", NULL);
        long v = prio ? strtol(prio, NULL, 10) : 0;
        free(prio);
        /* RFC 6121 §4.7.2.3: -128..127. */
        c2s_set_presence(ctx->session, true, v < -128 ? -128 : v > 127 ? 127 : (int)v);
    } else if (strcmp(type, "unavailable") == 0) {
        c2s_set_presence(ctx->session, false, 0);
    }
    return HOOK_DONE;
}

static const struct module_hook hooks[] = {
    {HOOK_CLIENT_STANZA, 0, client_presence},
    {0},
};

const struct module mod_presence = {
    .name = "presence",
    .hooks = hooks,
};
