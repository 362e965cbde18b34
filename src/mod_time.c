/* XEP-0202 Entity Time. The server reports UTC. */
#include "isthmus/module.h"

#define NS_TIME "urn:xmpp:time"

static const char *entity_time(struct iq_request *req)
{
    char utc[32];
    format_datetime(utc, wall_time());
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *t = stanza_add_child(r, "time", NS_TIME);
    stanza_add_text_child(t, "tzo", NULL, "+00:00");
    stanza_add_text_child(t, "utc", NULL, utc);
    router_reply(req, r);
    return NULL;
}

static const char *const features[] = {NS_TIME, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_TIME, "time", entity_time, NULL},
    {0},
};

const struct module mod_time = {
    .name = "time",
    .host_features = features,
    .iqs = iqs,
};
