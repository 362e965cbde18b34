/* XEP-0030 Service Discovery: disco#info and disco#items for each host and each account. */
#include <stdlib.h>

#include "isthmus/module.h"
#include "isthmus/server.h"

#define NS_DISCO_INFO "http://jabber.org/protocol/disco#info"
#define NS_DISCO_ITEMS "http://jabber.org/protocol/disco#items"

static struct stanza *reply_query(struct iq_request *req, const char *ns)
{
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *q = stanza_add_child(r, "query", ns);
    const char *node = stanza_attr(req->payload, "node");
    if (node)
        stanza_set_attr(q, "node", node);
    return r;
}

static void add_identity(struct stanza *q, const char *category, const char *type,
                         const char *name)
{
    struct stanza *id = stanza_add_child(q, "identity", NULL);
    stanza_set_attr(id, "category", category);
    stanza_set_attr(id, "type", type);
    if (name)
        stanza_set_attr(id, "name", name);
}

static const char *info(struct iq_request *req, enum iq_target target)
{
    /* No nodes are published yet: any node is unknown (XEP-0030 §3.1). */
    if (stanza_attr(req->payload, "node"))
        return "item-not-found";
    struct stanza *r = reply_query(req, NS_DISCO_INFO);
    struct stanza *q = stanza_first_elem(r);
    if (target == IQ_HOST)
        add_identity(q, "server", "im", ISTHMUS_NAME);
    else
        add_identity(q, "account", "registered", NULL);
    modules_add_features(target, q);
    router_reply(req, r);
    return NULL;
}

static const char *host_info(struct iq_request *req)
{
    return info(req, IQ_HOST);
}

static const char *account_info(struct iq_request *req)
{
    return info(req, IQ_ACCOUNT);
}

/* Items: the services hosted here (MUC, gateways) will be listed as later features add them;
 * today a host and an account have none, which is a complete and correct answer. */
static const char *items(struct iq_request *req)
{
    if (stanza_attr(req->payload, "node"))
        return "item-not-found";
    struct stanza *r = reply_query(req, NS_DISCO_ITEMS);
    /* XEP-0114 components are services of every host. */
    for (size_t i = 0; req->to && !req->to->local && i < server.cfg.n_components; i++) {
        struct stanza *item = stanza_add_child(stanza_first_elem(r), "item", NULL);
        stanza_set_attr(item, "jid", server.cfg.components[i].name);
    }
    /* XEP-0045 §6.1: the MUC services are found among the host's items. */
    for (size_t i = 0; req->to && !req->to->local && i < server.cfg.n_muc_hosts; i++) {
        struct stanza *item = stanza_add_child(stanza_first_elem(r), "item", NULL);
        stanza_set_attr(item, "jid", server.cfg.muc_hosts[i]);
    }
    router_reply(req, r);
    return NULL;
}

static const char *const features[] = {NS_DISCO_INFO, NS_DISCO_ITEMS, NULL};

static const struct module_iq iqs[] = {
    {IQ_HOST, NS_DISCO_INFO, "query", host_info, NULL},
    {IQ_HOST, NS_DISCO_ITEMS, "query", items, NULL},
    {IQ_ACCOUNT, NS_DISCO_INFO, "query", account_info, NULL},
    {IQ_ACCOUNT, NS_DISCO_ITEMS, "query", items, NULL},
    {0},
};

const struct module mod_disco = {
    .name = "disco",
    .host_features = features,
    .account_features = features,
    .iqs = iqs,
};
