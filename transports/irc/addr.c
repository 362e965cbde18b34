/* addr.c — JID node ↔ IRC channel/nick/server (see addr.h for the scheme). */
#include "addr.h"

#include <stdlib.h>
#include <string.h>

#include "isthmus/jid.h"
#include "isthmus/util.h"

bool irc_addr_is_channel(const char *name)
{
    return name && name[0] && strchr("#&+!", name[0]) != NULL;
}

/* RFC 2812 §2.3.1: chanstring excludes NUL, BELL, CR, LF, space, comma and colon. */
bool irc_addr_valid_channel(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > IRC_ADDR_MAX_CHANNEL || !irc_addr_is_channel(s))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == ' ' || *p == ',' || *p == ':')
            return false;
    return utf8_valid(s, len);
}

/* RFC 2812 §2.3.1 nickname, made lenient the way servers are (UTF-8 nicks exist), but never with
 * the characters that delimit prefixes, targets or our own addressing. */
bool irc_addr_valid_nick(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > IRC_ADDR_MAX_NICK || irc_addr_is_channel(s) ||
        (s[0] >= '0' && s[0] <= '9') || s[0] == '-' || s[0] == ':')
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || strchr(",!@%*?$", *p))
            return false;
    return utf8_valid(s, len);
}

/* A host name or IPv4 address: letters, digits, '-', '_' and dots, no empty label. */
bool irc_addr_valid_server(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len > IRC_ADDR_MAX_SERVER || s[0] == '.' || s[len - 1] == '.' ||
        strstr(s, ".."))
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

char *irc_addr_lower(const char *s)
{
    char *out = xstrdup(s);
    for (char *p = out; p && *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    return out;
}

void irc_addr_fini(struct irc_addr *a)
{
    free(a->server);
    free(a->target);
    a->server = a->target = NULL;
}

int irc_addr_parse(const char *node, struct irc_addr *out)
{
    memset(out, 0, sizeof *out);
    if (!node || !*node || strlen(node) > 1023)
        return -1;
    char *raw = jid_unescape_local(node);
    if (!raw)
        return -1;
    char *pct = strrchr(raw, '%');
    const char *server = pct ? pct + 1 : raw;
    if (!irc_addr_valid_server(server)) {
        free(raw);
        return -1;
    }
    out->server = irc_addr_lower(server);
    if (!pct) {
        out->kind = IRC_ADDR_NETWORK;
        free(raw);
        return 0;
    }
    *pct = '\0';
    if (irc_addr_valid_channel(raw)) {
        out->kind = IRC_ADDR_CHANNEL;
        out->target = irc_addr_lower(raw);
    } else if (irc_addr_valid_nick(raw)) {
        out->kind = IRC_ADDR_NICK;
        out->target = xstrdup(raw);
    } else {
        free(raw);
        irc_addr_fini(out);
        return -1;
    }
    free(raw);
    return 0;
}

char *irc_addr_node(const char *target, const char *server)
{
    if (!irc_addr_valid_server(server))
        return NULL;
    char *lserver = irc_addr_lower(server);
    char *legacy;
    if (!target) {
        legacy = lserver;
    } else {
        char *t;
        if (irc_addr_valid_channel(target))
            t = irc_addr_lower(target);
        else if (irc_addr_valid_nick(target))
            t = xstrdup(target);
        else {
            free(lserver);
            return NULL;
        }
        legacy = xasprintf("%s%%%s", t, lserver);
        free(t);
        free(lserver);
    }
    char *node = jid_escape_local(legacy);
    free(legacy);
    return node;
}

char *irc_addr_jid(const char *domain, const char *target, const char *server,
                   const char *resource)
{
    char *node = irc_addr_node(target, server);
    if (!node)
        return NULL;
    char *out = resource && *resource ? xasprintf("%s@%s/%s", node, domain, resource)
                                      : xasprintf("%s@%s", node, domain);
    free(node);
    return out;
}

char *irc_addr_prompt_node(const char *prompt)
{
    if (!prompt)
        return NULL;
    while (*prompt == ' ' || *prompt == '\t')
        prompt++;
    size_t len = strlen(prompt);
    while (len && (prompt[len - 1] == ' ' || prompt[len - 1] == '\t'))
        len--;
    if (len == 0 || len > 1023)
        return NULL;
    char *s = xstrndup(prompt, len);
    char *sep = strrchr(s, '%');
    if (!sep)
        sep = strrchr(s, '@');
    char *node = NULL;
    if (sep && sep != s) {
        *sep = '\0';
        node = irc_addr_node(s, sep + 1);
    } else if (!sep) {
        node = irc_addr_node(NULL, s);
    }
    free(s);
    return node;
}
