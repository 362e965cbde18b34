/* XEP-0049 Private XML Storage (jabber:iq:private): each child element of a set is kept in the
 * map store "private" under "NAME NAMESPACE", and a get returns the stored element or, when there
 * is none, the element as it was asked for. Only the account itself reads and writes its data. */
#include <stdlib.h>
#include <string.h>

#include "isthmus/hmap.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/server.h"
#include "isthmus/xmlstream.h"

#define NS_PRIVATE "jabber:iq:private"
#define STORE "private"
/* Distinct elements one account may keep; with max_user_item_size this bounds the storage an
 * account can take. */
#define MAX_ITEMS 256

/* ---- stored XML back into a tree ---- */

static struct stanza *parse_stored(const char *xml, size_t len)
{
    return xmlstream_parse_element(xml, len, server.cfg.max_depth);
}

/* ---- jabber:iq:private ---- */

static char *key_of(const struct stanza *el)
{
    return xasprintf("%s %s", el->name, el->ns);
}

/* XEP-0049 §2.3: at least one child, each in its own namespace; namespaces that belong to the
 * protocol itself cannot hold private data. Returns an error condition or NULL. */
static const char *check_children(const struct stanza *query)
{
    const struct stanza *el = stanza_first_elem(query);
    if (!el)
        return "not-acceptable";
    for (; el; el = stanza_next_elem(el))
        if (strcmp(el->ns, NS_PRIVATE) == 0 || strcmp(el->ns, NS_CLIENT) == 0 ||
            strcmp(el->ns, NS_SERVER) == 0)
            return "not-acceptable";
    return NULL;
}

static const char *get(struct iq_request *req)
{
    /* XEP-0049 §2.3: another user's data is "Forbidden" (preferred over service-unavailable). */
    if (!jid_bare_equal(req->from, req->to))
        return "forbidden";
    const char *cond = check_children(req->payload);
    if (cond)
        return cond;
    struct stanza *r = stanza_iq_result(req->iq);
    struct stanza *q = stanza_add_child(r, "query", NS_PRIVATE);
    for (const struct stanza *el = stanza_first_elem(req->payload); el && !cond;
         el = stanza_next_elem(el)) {
        char *key = key_of(el);
        char *xml = NULL;
        size_t len = 0;
        int rc =
            storage_map_get(server.db, req->to->domain, req->to->local, STORE, key, &xml, &len);
        if (rc == STORAGE_NOTFOUND) {
            stanza_add_child(q, el->name, el->ns); /* nothing stored: the element as asked */
        } else if (rc != 0) {
            cond = "internal-server-error";
        } else {
            struct stanza *item = parse_stored(xml, len);
            if (item) {
                stanza_append(q, item);
            } else {
                log_error(NULL, "private item '%s' of %s@%s does not parse", key, req->to->local,
                          req->to->domain);
                cond = "internal-server-error";
            }
        }
        free(xml);
        free(key);
    }
    if (cond) {
        stanza_free(r);
        return cond;
    }
    router_reply(req, r);
    return NULL;
}

static int collect_key(void *ud, const char *key, const char *value, size_t len)
{
    (void)value, (void)len;
    hmap_put(ud, key, (void *)1);
    return 0;
}

/* An element without attributes or content stores nothing: a later get returns the same empty
 * element, so the key is removed instead (Prosody does the same). */
static bool is_empty(const struct stanza *el)
{
    return !el->first && el->nattrs == 0;
}

/* Refuses the set with text when it would break a limit; returns true when it did. */
static bool over_limit(struct iq_request *req, struct hmap *keys)
{
    char *text = NULL;
    for (const struct stanza *el = stanza_first_elem(req->payload); el && !text;
         el = stanza_next_elem(el)) {
        char *key = key_of(el);
        if (is_empty(el)) {
            hmap_del(keys, key);
        } else {
            struct buf xml;
            buf_init(&xml);
            stanza_serialize(el, NULL, &xml);
            if (xml.len > server.cfg.max_user_item_size)
                text = xasprintf("A private XML item may take at most %zu bytes (<%s/> takes %zu)",
                                 server.cfg.max_user_item_size, el->name, xml.len);
            buf_fini(&xml);
            hmap_put(keys, key, (void *)1);
        }
        free(key);
    }
    if (!text && keys->used > MAX_ITEMS)
        text = xasprintf("At most %d private XML items per account", MAX_ITEMS);
    if (!text)
        return false;
    router_error(req->iq, "not-acceptable", text);
    free(text);
    return true;
}

static const char *set(struct iq_request *req)
{
    if (!jid_bare_equal(req->from, req->to))
        return "forbidden";
    const char *cond = check_children(req->payload);
    if (cond)
        return cond;
    const char *host = req->to->domain, *user = req->to->local;
    struct hmap keys;
    hmap_init(&keys);
    int rc = storage_map_all(server.db, host, user, STORE, collect_key, &keys);
    bool refused = rc >= 0 && over_limit(req, &keys);
    hmap_fini(&keys);
    if (rc < 0)
        return "internal-server-error";
    if (refused)
        return NULL;
    /* All the elements of one set are stored, or none. */
    if (storage_begin(server.db) != 0)
        return "internal-server-error";
    rc = 0;
    for (const struct stanza *el = stanza_first_elem(req->payload); el && rc == 0;
         el = stanza_next_elem(el)) {
        char *key = key_of(el);
        if (is_empty(el)) {
            rc = storage_map_delete(server.db, host, user, STORE, key);
            if (rc == STORAGE_NOTFOUND)
                rc = 0;
        } else {
            struct buf xml;
            buf_init(&xml);
            stanza_serialize(el, NULL, &xml);
            rc = storage_map_set(server.db, host, user, STORE, key, xml.data, xml.len);
            buf_fini(&xml);
        }
        free(key);
    }
    if (rc == 0)
        rc = storage_commit(server.db);
    else
        storage_rollback(server.db);
    if (rc != 0)
        return "internal-server-error";
    router_reply(req, stanza_iq_result(req->iq));
    return NULL;
}

static const char *const features[] = {NS_PRIVATE, NULL};

static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_PRIVATE, "query", get, set},
    {0},
};

const struct module mod_private = {
    .name = "private",
    .host_features = features,
    .account_features = features,
    .iqs = iqs,
};
