/* XEP-0199 XMPP Ping: the server and each account answer pings. */
#include "isthmus/module.h"

#define NS_PING "urn:xmpp:ping"

static const char *ping(struct iq_request *req)
{
    router_reply(req, stanza_iq_result(req->iq));
    return NULL;
}

static const char *const features[] = {NS_PING, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_PING, "ping", ping, NULL},
    {IQ_ACCOUNT, NS_PING, "ping", ping, NULL},
    {0},
};

const struct module mod_ping = {
    .name = "ping",
    .host_features = features,
    .account_features = features,
    .iqs = iqs,
};
