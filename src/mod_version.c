/* XEP-0092 Software Version. [server] hide_version = true removes the feature entirely. */
#include <sys/utsname.h>

#include "isthmus/module.h"
#include "isthmus/server.h"

#define NS_VERSION "jabber:iq:version"

static bool active(void)
{
    return !server.cfg.hide_version;
}

static const char *version(struct iq_request *req)
{
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *q = stanza_add_child(r, "query", NS_VERSION);
    stanza_add_text_child(q, "name", NULL, ISTHMUS_NAME);
    stanza_add_text_child(q, "version", NULL, ISTHMUS_VERSION);
    struct utsname u;
    if (uname(&u) == 0)
        stanza_add_text_child(q, "os", NULL, u.sysname);
    router_reply(req, r);
    return NULL;
}

static const char *const features[] = {NS_VERSION, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_VERSION, "query", version, NULL},
    {0},
};

const struct module mod_version = {
    .name = "version",
    .host_features = features,
    .iqs = iqs,
    .active = active,
};
