/* backend_dns.c — libpurple's DNS and SRV/TXT UI ops for a backend: lookups run on GLib worker
 * threads (getaddrinfo, res_nquery) and report back on the main loop, instead of libpurple's
 * forked resolver children. Main-loop only, except the *_thread functions. */
#include "backend.h"

#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <dnsquery.h>
#include <dnssrv.h>
#include <glib.h>

/* ---- DNS ui ops: getaddrinfo on a worker thread instead of libpurple's forked resolvers ---- */

struct bdns {
    PurpleDnsQueryData *q; /* NULL once libpurple destroyed the query */
    PurpleDnsQueryResolvedCallback resolved;
    PurpleDnsQueryFailedCallback failed;
    char *host;
    unsigned short port;
    GSList *hosts;
    char *error;
};

static GHashTable *dns_queries; /* PurpleDnsQueryData* → struct bdns* */

static gboolean dns_done(gpointer ud)
{
    struct bdns *d = ud;
    if (d->q) {
        g_hash_table_remove(dns_queries, d->q);
        if (d->error) {
            d->failed(d->q, d->error);
        } else {
            GSList *h = d->hosts;
            d->hosts = NULL;
            d->resolved(d->q, h);
        }
    }
    for (GSList *l = d->hosts; l; l = l->next->next)
        g_free(l->next->data);
    g_slist_free(d->hosts);
    g_free(d->host);
    g_free(d->error);
    g_free(d);
    return FALSE;
}

static gpointer dns_thread(gpointer ud)
{
    struct bdns *d = ud;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", d->port);
    int rc = getaddrinfo(d->host, port, &hints, &res);
    if (rc != 0) {
        d->error = g_strdup_printf("Error resolving %s: %s", d->host, gai_strerror(rc));
    } else {
        for (struct addrinfo *a = res; a; a = a->ai_next) {
            d->hosts = g_slist_append(d->hosts, GSIZE_TO_POINTER((gsize)a->ai_addrlen));
            d->hosts = g_slist_append(d->hosts, g_memdup2(a->ai_addr, a->ai_addrlen));
        }
        freeaddrinfo(res);
        if (!d->hosts)
            d->error = g_strdup_printf("No address for %s", d->host);
    }
    g_idle_add(dns_done, d);
    return NULL;
}

static gboolean ui_resolve_host(PurpleDnsQueryData *q, PurpleDnsQueryResolvedCallback resolved,
                                PurpleDnsQueryFailedCallback failed)
{
    struct bdns *d = g_new0(struct bdns, 1);
    d->q = q;
    d->resolved = resolved;
    d->failed = failed;
    d->host = g_strdup(purple_dnsquery_get_host(q));
    d->port = purple_dnsquery_get_port(q);
    g_hash_table_insert(dns_queries, q, d);
    GThread *t = g_thread_new("dns", dns_thread, d);
    g_thread_unref(t);
    return TRUE;
}

static void ui_dns_destroy(PurpleDnsQueryData *q)
{
    struct bdns *d = g_hash_table_lookup(dns_queries, q);
    if (d) {
        d->q = NULL;
        g_hash_table_remove(dns_queries, q);
    }
}

static PurpleDnsQueryUiOps dns_ops = {
    .resolve_host = ui_resolve_host,
    .destroy = ui_dns_destroy,
};

/* ---- SRV/TXT ui ops: res_nquery on a worker thread instead of libpurple's forked resolver ---- */

#define BACKEND_MAX_DNS_RECORDS 64

struct bsrv {
    PurpleSrvTxtQueryData *q; /* NULL once libpurple destroyed the query */
    PurpleSrvTxtQueryResolvedCallback resolved;
    PurpleSrvTxtQueryFailedCallback failed;
    char *query;
    bool txt;
    GList *records; /* PurpleSrvResponse* or PurpleTxtResponse*, g_malloc'd as dnssrv.c frees */
    char *error;
};

static GHashTable *srv_queries; /* PurpleSrvTxtQueryData* → struct bsrv* */

static void srv_records_free(struct bsrv *d)
{
    for (GList *l = d->records; l; l = l->next) {
        if (d->txt)
            purple_txt_response_destroy(l->data);
        else
            g_free(l->data);
    }
    g_list_free(d->records);
    d->records = NULL;
}

static gboolean srv_done(gpointer ud)
{
    struct bsrv *d = ud;
    if (d->q) {
        PurpleSrvTxtQueryData *q = d->q;
        g_hash_table_remove(srv_queries, q);
        d->q = NULL;
        if (!d->records && d->txt) {
            /* dnssrv.c's failure callback calls a TXT query's callback with the SRV callback's
             * arguments (the TXT callback's data would be 0): answer "no usable record" as one
             * empty TXT string instead */
            PurpleTxtResponse *t = g_new0(PurpleTxtResponse, 1);
            t->content = g_strdup("");
            d->records = g_list_append(NULL, t);
        }
        if (d->records) {
            GList *r = d->records;
            d->records = NULL;
            d->resolved(q, r); /* takes the records; destroys q */
        } else {
            d->failed(q, d->error ? d->error : "no record");
        }
    }
    srv_records_free(d);
    g_free(d->query);
    g_free(d->error);
    g_free(d);
    return FALSE;
}

/* RFC 1035 §4.1: the answer section's SRV (RFC 2782) or TXT records of msg[0..len). */
static void srv_parse(struct bsrv *d, const unsigned char *msg, int len)
{
    if (len < 12)
        return;
    const unsigned char *end = msg + len, *p = msg + 12;
    unsigned qd = (unsigned)(msg[4] << 8 | msg[5]), an = (unsigned)(msg[6] << 8 | msg[7]);
    char name[NS_MAXDNAME];
    for (unsigned i = 0; i < qd; i++) {
        int n = dn_expand(msg, end, p, name, sizeof name);
        if (n < 0 || end - (p + n) < 4)
            return;
        p += n + 4;
    }
    unsigned kept = 0;
    for (unsigned i = 0; i < an && kept < BACKEND_MAX_DNS_RECORDS; i++) {
        int n = dn_expand(msg, end, p, name, sizeof name);
        if (n < 0 || end - (p + n) < 10)
            return;
        p += n;
        unsigned type = (unsigned)(p[0] << 8 | p[1]), rdlen = (unsigned)(p[8] << 8 | p[9]);
        p += 10;
        if ((size_t)(end - p) < rdlen)
            return;
        const unsigned char *rd = p;
        p += rdlen;
        if (!d->txt && type == ns_t_srv && rdlen > 6) {
            PurpleSrvResponse *r = g_new0(PurpleSrvResponse, 1);
            r->pref = rd[0] << 8 | rd[1];
            r->weight = rd[2] << 8 | rd[3];
            r->port = rd[4] << 8 | rd[5];
            /* a target of "." says the service is not offered (RFC 2782): no record */
            if (dn_expand(msg, end, rd + 6, r->hostname, sizeof r->hostname) < 0 ||
                !r->hostname[0] || strcmp(r->hostname, ".") == 0) {
                g_free(r);
                continue;
            }
            d->records = g_list_append(d->records, r);
            kept++;
        } else if (d->txt && type == ns_t_txt) {
            GString *s = g_string_new("");
            for (unsigned o = 0; o < rdlen;) { /* RFC 1035 §3.3.14: <character-string>s */
                unsigned l = rd[o++];
                if (l > rdlen - o)
                    l = rdlen - o;
                g_string_append_len(s, (const char *)rd + o, l);
                o += l;
            }
            PurpleTxtResponse *t = g_new0(PurpleTxtResponse, 1);
            t->content = g_string_free(s, FALSE);
            d->records = g_list_append(d->records, t);
            kept++;
        }
    }
}

static gpointer srv_thread(gpointer ud)
{
    struct bsrv *d = ud;
    struct __res_state st;
    memset(&st, 0, sizeof st);
    unsigned char *ans = g_malloc(65536);
    if (res_ninit(&st) != 0) {
        d->error = g_strdup("cannot initialise the resolver");
    } else {
        int n = res_nquery(&st, d->query, ns_c_in, d->txt ? ns_t_txt : ns_t_srv, ans, 65536);
        if (n < 0)
            d->error = g_strdup_printf("no %s record for %s", d->txt ? "TXT" : "SRV", d->query);
        else
            srv_parse(d, ans, n > 65536 ? 65536 : n);
        res_nclose(&st);
    }
    g_free(ans);
    g_idle_add(srv_done, d);
    return NULL;
}

static gboolean ui_srv_resolve(PurpleSrvTxtQueryData *q, PurpleSrvTxtQueryResolvedCallback resolved,
                               PurpleSrvTxtQueryFailedCallback failed)
{
    const char *query = purple_srv_txt_query_get_query(q);
    if (!query)
        return FALSE;
    struct bsrv *d = g_new0(struct bsrv, 1);
    d->q = q;
    d->resolved = resolved;
    d->failed = failed;
    d->query = g_strdup(query);
    d->txt = purple_srv_txt_query_get_type(q) == ns_t_txt;
    fprintf(stderr, "purple backend: %s lookup for %s on a thread\n", d->txt ? "TXT" : "SRV",
            d->query);
    g_hash_table_insert(srv_queries, q, d);
    GThread *t = g_thread_new("srv", srv_thread, d);
    g_thread_unref(t);
    return TRUE;
}

static void ui_srv_destroy(PurpleSrvTxtQueryData *q)
{
    struct bsrv *d = g_hash_table_lookup(srv_queries, q);
    if (d) {
        d->q = NULL;
        g_hash_table_remove(srv_queries, q);
    }
}

static PurpleSrvTxtQueryUiOps srv_ops = {
    .resolve = ui_srv_resolve,
    .destroy = ui_srv_destroy,
};

void backend_dns_init(void)
{
    dns_queries = g_hash_table_new(g_direct_hash, g_direct_equal);
    srv_queries = g_hash_table_new(g_direct_hash, g_direct_equal);
    purple_dnsquery_set_ui_ops(&dns_ops);
    purple_srv_txt_query_set_ui_ops(&srv_ops);
}
