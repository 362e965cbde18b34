/* XEP-0054 vcard-temp: each account's vCard, kept as XML in the kv store "vcard", readable by
 * anyone and written only by its owner; and XEP-0153 avatar hashes: the SHA-1 of the vCard's
 * PHOTO is added to the available presence the user sends, unless the client put its own
 * <x xmlns='vcard-temp:x:update'/> there (what ejabberd's mod_vcard_xupdate does, so contacts
 * learn of the avatar even from clients that do not implement XEP-0153). */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "isthmus/c2s.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/server.h"
#include "isthmus/xmlstream.h"

#define NS_VCARD "vcard-temp"
#define NS_VCARD_UPDATE "vcard-temp:x:update"
#define STORE "vcard"
/* Hex SHA-1 of the current PHOTO image, "" when the vCard has none; kept beside the vCard so a
 * presence costs one small read rather than parsing the card. */
#define STORE_HASH "vcard-avatar"

/* ---- stored XML back into a tree ---- */

static struct stanza *parse_stored(const char *xml, size_t len)
{
    return xmlstream_parse_element(xml, len, server.cfg.max_depth);
}

/* ---- the avatar hash ---- */

/* XEP-0153 §4.1: the hash is the hex SHA-1 of the image bytes (the decoded BINVAL). Returns ""
 * when the card has no usable PHOTO/BINVAL. Caller frees. */
static char *photo_hash(const struct stanza *card)
{
    const struct stanza *photo = stanza_child(card, "PHOTO", NS_VCARD);
    char *b64 = photo ? stanza_child_text(photo, "BINVAL", NS_VCARD) : NULL;
    if (!b64)
        return xstrdup("");
    /* vCard clients fold base64 lines (RFC 2426 §2.4.1); our decoder is strict. */
    size_t n = 0;
    for (const char *c = b64; *c; c++)
        if (*c != ' ' && *c != '\t' && *c != '\r' && *c != '\n')
            b64[n++] = *c;
    b64[n] = '\0';
    unsigned char *img = NULL;
    size_t img_len = 0;
    char *hex = NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    if (n > 0 && base64_decode(b64, n, &img, &img_len) == 0 && img_len > 0 &&
        EVP_Digest(img, img_len, md, &md_len, EVP_sha1(), NULL) == 1) {
        hex = xmalloc(2 * md_len + 1);
        for (unsigned i = 0; i < md_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
    }
    free(img);
    free(b64);
    return hex ? hex : xstrdup("");
}

/* Adds <x xmlns='vcard-temp:x:update'><photo>HASH</photo></x> to available presence the user
 * sends (broadcast or directed), before the presence module broadcasts it. An empty <photo/>
 * says "no avatar" (XEP-0153 §3.1); when storage cannot tell, nothing is added. */
static int add_update(struct hook_ctx *ctx)
{
    struct stanza *p = ctx->stanza;
    if (strcmp(p->name, "presence") != 0 || stanza_attr(p, "type") ||
        stanza_child(p, "x", NS_VCARD_UPDATE))
        return HOOK_PASS;
    const struct jid *me = c2s_jid(ctx->session);
    char *hash = NULL;
    size_t len = 0;
    int rc = storage_kv_get(server.db, me->domain, me->local, STORE_HASH, &hash, &len);
    if (rc < 0)
        return HOOK_PASS;
    struct stanza *photo =
        stanza_add_child(stanza_add_child(p, "x", NS_VCARD_UPDATE), "photo", NULL);
    if (rc == 0 && len > 0)
        stanza_add_text(photo, hash, len);
    free(hash);
    return HOOK_PASS;
}

/* ---- vcard-temp ---- */

/* XEP-0054 §3.1 (own vCard) and §3.3 (another user's): anyone may read an account's card. */
static const char *get(struct iq_request *req)
{
    char *xml = NULL;
    size_t len = 0;
    int rc = storage_kv_get(server.db, req->to->domain, req->to->local, STORE, &xml, &len);
    /* §3.1: "If no vCard exists, the server MUST return a stanza error (which SHOULD be
     * <item-not-found/>) or an IQ-result containing an empty <vCard/> element" — the error, as
     * Prosody does. */
    if (rc == STORAGE_NOTFOUND)
        return "item-not-found";
    if (rc != 0)
        return "internal-server-error";
    struct stanza *card = parse_stored(xml, len);
    free(xml);
    if (!card || strcmp(card->name, "vCard") != 0 || strcmp(card->ns, NS_VCARD) != 0) {
        log_error(NULL, "stored vCard of %s@%s does not parse", req->to->local, req->to->domain);
        stanza_free(card);
        return "internal-server-error";
    }
    struct stanza *r = stanza_iq_result(req->iq);
    stanza_append(r, card);
    router_reply(req, r);
    return NULL;
}

/* XEP-0054 §3.2: the user publishes (replaces) their own vCard. */
static const char *set(struct iq_request *req)
{
    if (!jid_bare_equal(req->from, req->to))
        return "forbidden";
    struct buf xml;
    buf_init(&xml);
    stanza_serialize(req->payload, NULL, &xml);
    if (xml.len > server.cfg.max_user_item_size) {
        char *text = xasprintf("A vCard may take at most %zu bytes (this one takes %zu)",
                               server.cfg.max_user_item_size, xml.len);
        router_error(req->iq, "not-acceptable", text);
        free(text);
        buf_fini(&xml);
        return NULL;
    }
    char *hash = photo_hash(req->payload);
    const char *host = req->to->domain, *user = req->to->local;
    int rc = storage_begin(server.db);
    if (rc == 0) {
        if (storage_kv_set(server.db, host, user, STORE, xml.data, xml.len) != 0 ||
            storage_kv_set(server.db, host, user, STORE_HASH, hash, strlen(hash)) != 0) {
            storage_rollback(server.db);
            rc = -1;
        } else {
            rc = storage_commit(server.db);
        }
    }
    buf_fini(&xml);
    free(hash);
    if (rc != 0)
        return "internal-server-error";
    router_reply(req, stanza_iq_result(req->iq));
    return NULL;
}

static const char *const features[] = {NS_VCARD, NULL};

static const struct module_iq iqs[] = {
    {IQ_ACCOUNT, NS_VCARD, "vCard", get, set},
    {0},
};

static const struct module_hook hooks[] = {
    /* Before the presence module (priority 0) broadcasts the presence. */
    {HOOK_CLIENT_STANZA, 10, add_update},
    {0},
};

const struct module mod_vcard = {
    .name = "vcard",
    .host_features = features,
    .account_features = features,
    .iqs = iqs,
    .hooks = hooks,
};
