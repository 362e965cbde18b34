/* test_storage.c — storage.h against real SQLite files in a temporary directory. */
#include "isthmus/storage.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "isthmus/log.h"
#include "isthmus/util.h"
#include "test.h"

static char tmpdir[] = "/tmp/isthmus-storage-XXXXXX";
static int db_counter;

/* A fresh database path for each test. */
static char *new_path(void)
{
    return xasprintf("%s/t%d.db", tmpdir, ++db_counter);
}

static struct storage *open_new(char **path_out)
{
    char err[256] = "";
    char *path = new_path();
    struct storage *st = storage_open(path, err, sizeof err);
    if (!st)
        fprintf(stderr, "  storage_open: %s\n", err);
    if (path_out)
        *path_out = path;
    else
        free(path);
    return st;
}

static void test_kv(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    char *v = (char *)"untouched";
    size_t len = 99;
    CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == STORAGE_NOTFOUND);
    CHECK(strcmp(v, "untouched") == 0);

    CHECK(storage_kv_set(st, "h", "alice", "roster", "one", 3) == 0);
    CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == 0);
    CHECK_STR(v, "one");
    CHECK(len == 3);
    free(v);

    CHECK(storage_kv_set(st, "h", "alice", "roster", "second", 6) == 0);
    CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == 0);
    CHECK_STR(v, "second");
    CHECK(len == 6);
    free(v);

    /* Keys are separate in every column. */
    CHECK(storage_kv_get(st, "h", "alice", "vcard", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(st, "h", "bob", "roster", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(st, "other", "alice", "roster", &v, &len) == STORAGE_NOTFOUND);

    /* Binary values, NUL bytes included, and the empty value. */
    static const char bin[] = {'a', 0, 'b', 0, 0, (char)0xff, 'c'};
    CHECK(storage_kv_set(st, "h", "alice", "bin", bin, sizeof bin) == 0);
    CHECK(storage_kv_get(st, "h", "alice", "bin", &v, &len) == 0);
    CHECK(len == sizeof bin);
    CHECK(memcmp(v, bin, sizeof bin) == 0);
    CHECK(v[len] == '\0');
    free(v);
    CHECK(storage_kv_set(st, "h", "alice", "empty", "", 0) == 0);
    CHECK(storage_kv_set(st, "h", "alice", "empty2", NULL, 0) == 0);
    CHECK(storage_kv_get(st, "h", "alice", "empty", &v, &len) == 0);
    CHECK(len == 0 && v[0] == '\0');
    free(v);
    CHECK(storage_kv_get(st, "h", "alice", "empty2", &v, &len) == 0);
    CHECK(len == 0);
    free(v);
    CHECK(storage_kv_set(st, "h", "alice", "bad", NULL, 5) == STORAGE_ERR);
    CHECK(storage_kv_set(st, NULL, "alice", "bad", "x", 1) == STORAGE_ERR);

    /* Host-wide values (user "") and a NULL user mean the same. */
    CHECK(storage_kv_set(st, "h", "", "motd", "hi", 2) == 0);
    CHECK(storage_kv_get(st, "h", NULL, "motd", &v, &len) == 0);
    CHECK_STR(v, "hi");
    free(v);

    CHECK(storage_kv_delete(st, "h", "alice", "roster") == 0);
    CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_delete(st, "h", "alice", "roster") == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(st, "h", "alice", "bin", NULL, &len) == 0);
    storage_close(st);
}

struct collect {
    struct buf out;
    int calls;
    int stop_after;
    struct storage *st; /* for re-entry */
};

static int collect_user(void *ud, const char *user)
{
    struct collect *c = ud;
    buf_printf(&c->out, "%s,", user);
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

static int reenter_user(void *ud, const char *user)
{
    struct collect *c = ud;
    struct collect inner = {.stop_after = 0};
    buf_init(&inner.out);
    CHECK(storage_kv_users(c->st, "h", "roster", collect_user, &inner) == 0);
    buf_printf(&c->out, "%s[%s]", user, inner.out.data);
    buf_fini(&inner.out);
    return 0;
}

static void test_kv_users(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    CHECK(storage_kv_set(st, "h", "carol", "roster", "c", 1) == 0);
    CHECK(storage_kv_set(st, "h", "alice", "roster", "a", 1) == 0);
    CHECK(storage_kv_set(st, "h", "bob", "roster", "b", 1) == 0);
    CHECK(storage_kv_set(st, "h", "dave", "vcard", "d", 1) == 0);
    CHECK(storage_kv_set(st, "other", "erin", "roster", "e", 1) == 0);
    CHECK(storage_kv_set(st, "h", "", "roster", "hostwide", 8) == 0);

    struct collect c = {.stop_after = 0};
    buf_init(&c.out);
    CHECK(storage_kv_users(st, "h", "roster", collect_user, &c) == 0);
    CHECK_STR(c.out.data, "alice,bob,carol,");
    buf_fini(&c.out);

    c = (struct collect){.stop_after = 2};
    buf_init(&c.out);
    CHECK(storage_kv_users(st, "h", "roster", collect_user, &c) == 0);
    CHECK_STR(c.out.data, "alice,bob,");
    CHECK(c.calls == 2);
    buf_fini(&c.out);

    c = (struct collect){.stop_after = 0};
    buf_init(&c.out);
    CHECK(storage_kv_users(st, "h", "nothing", collect_user, &c) == 0);
    CHECK(c.calls == 0);
    buf_fini(&c.out);

    /* A callback that runs the same query again gets its own statement. */
    c = (struct collect){.st = st};
    buf_init(&c.out);
    CHECK(storage_kv_users(st, "h", "roster", reenter_user, &c) == 0);
    CHECK_STR(c.out.data, "alice[alice,bob,carol,]bob[alice,bob,carol,]carol[alice,bob,carol,]");
    buf_fini(&c.out);
    /* ... and the cached statement still works afterwards. */
    c = (struct collect){.stop_after = 0};
    buf_init(&c.out);
    CHECK(storage_kv_users(st, "h", "roster", collect_user, &c) == 0);
    CHECK_STR(c.out.data, "alice,bob,carol,");
    buf_fini(&c.out);
    storage_close(st);
}

static int collect_map(void *ud, const char *key, const char *value, size_t len)
{
    struct collect *c = ud;
    buf_printf(&c->out, "%s=", key);
    buf_append(&c->out, value, len);
    buf_putc(&c->out, ';');
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

static void test_map(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    char *v;
    size_t len;
    CHECK(storage_map_get(st, "h", "alice", "privacy", "k", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_map_set(st, "h", "alice", "privacy", "k2", "two", 3) == 0);
    CHECK(storage_map_set(st, "h", "alice", "privacy", "k1", "one", 3) == 0);
    CHECK(storage_map_set(st, "h", "alice", "privacy", "k3", "three", 5) == 0);
    CHECK(storage_map_set(st, "h", "alice", "privacy", "k1", "uno", 3) == 0);
    CHECK(storage_map_set(st, "h", "bob", "privacy", "k1", "bob's", 5) == 0);
    CHECK(storage_map_set(st, "h", "alice", "other", "k1", "x", 1) == 0);

    CHECK(storage_map_get(st, "h", "alice", "privacy", "k1", &v, &len) == 0);
    CHECK_STR(v, "uno");
    CHECK(len == 3);
    free(v);
    static const char bin[] = {0, 1, 0};
    CHECK(storage_map_set(st, "h", "alice", "bin", "k", bin, sizeof bin) == 0);
    CHECK(storage_map_get(st, "h", "alice", "bin", "k", &v, &len) == 0);
    CHECK(len == 3 && memcmp(v, bin, 3) == 0);
    free(v);

    struct collect c = {.stop_after = 0};
    buf_init(&c.out);
    CHECK(storage_map_all(st, "h", "alice", "privacy", collect_map, &c) == 0);
    CHECK_STR(c.out.data, "k1=uno;k2=two;k3=three;");
    buf_reset(&c.out);
    c.calls = 0;
    c.stop_after = 1;
    CHECK(storage_map_all(st, "h", "alice", "privacy", collect_map, &c) == 0);
    CHECK_STR(c.out.data, "k1=uno;");

    CHECK(storage_map_delete(st, "h", "alice", "privacy", "k2") == 0);
    CHECK(storage_map_delete(st, "h", "alice", "privacy", "k2") == STORAGE_NOTFOUND);
    CHECK(storage_map_get(st, "h", "alice", "privacy", "k2", &v, &len) == STORAGE_NOTFOUND);
    buf_reset(&c.out);
    c.calls = c.stop_after = 0;
    CHECK(storage_map_all(st, "h", "alice", "privacy", collect_map, &c) == 0);
    CHECK_STR(c.out.data, "k1=uno;k3=three;");

    CHECK(storage_map_delete(st, "h", "alice", "privacy", NULL) == 0);
    CHECK(storage_map_delete(st, "h", "alice", "privacy", NULL) == STORAGE_NOTFOUND);
    buf_reset(&c.out);
    c.calls = 0;
    CHECK(storage_map_all(st, "h", "alice", "privacy", collect_map, &c) == 0);
    CHECK(c.calls == 0);
    /* Other users and stores are untouched. */
    CHECK(storage_map_get(st, "h", "bob", "privacy", "k1", &v, &len) == 0);
    free(v);
    CHECK(storage_map_get(st, "h", "alice", "other", "k1", &v, &len) == 0);
    free(v);
    buf_fini(&c.out);
    storage_close(st);
}

struct items {
    char *ids[64];
    int64_t when[64];
    char values[64][32];
    char with[64][32];
    int n;
    int stop_after;
};

static int collect_item(void *ud, const char *id, int64_t when, const char *with, const char *value,
                        size_t len)
{
    struct items *it = ud;
    if (it->n < 64) {
        it->ids[it->n] = xstrdup(id);
        it->when[it->n] = when;
        snprintf(it->values[it->n], sizeof it->values[0], "%.*s", (int)len, value);
        snprintf(it->with[it->n], sizeof it->with[0], "%s", with ? with : "(null)");
    }
    it->n++;
    return it->stop_after && it->n >= it->stop_after;
}

static void items_free(struct items *it)
{
    for (int i = 0; i < it->n && i < 64; i++)
        free(it->ids[i]);
    memset(it, 0, sizeof *it);
}

static int query(struct storage *st, const char *user, const struct storage_archive_query *q,
                 struct items *it, size_t *total)
{
    items_free(it);
    return storage_archive_query(st, "h", user, "mam", q, collect_item, it, total);
}

/* 25 items "m0".."m24" at when = 1000 + i, alternating with a@h / b@h. */
static void fill_archive(struct storage *st, char *ids[25])
{
    for (int i = 0; i < 25; i++) {
        char value[16];
        snprintf(value, sizeof value, "m%d", i);
        CHECK(storage_archive_append(st, "h", "alice", "mam", 1000 + i, i % 2 ? "b@h" : "a@h",
                                     value, strlen(value), &ids[i]) == 0);
        CHECK(ids[i] && strlen(ids[i]) == 16);
    }
}

static void test_archive_basic(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    char *ids[25] = {0};
    fill_archive(st, ids);
    for (int i = 0; i < 25; i++)
        for (int j = 0; j < i; j++)
            CHECK(ids[i] && ids[j] && strcmp(ids[i], ids[j]) != 0);
    CHECK(storage_archive_append(st, "h", "bob", "mam", 1005, NULL, "bob0", 4, NULL) == 0);
    CHECK(storage_archive_count(st, "h", "alice", "mam") == 25);
    CHECK(storage_archive_count(st, "h", "bob", "mam") == 1);
    CHECK(storage_archive_count(st, "h", "carol", "mam") == 0);

    struct items it = {0};
    size_t total = 0;
    CHECK(query(st, "alice", NULL, &it, &total) == 0);
    CHECK(it.n == 25 && total == 25);
    CHECK_STR(it.values[0], "m0");
    CHECK_STR(it.values[24], "m24");
    CHECK_STR(it.ids[3], ids[3]);
    CHECK(it.when[3] == 1003);
    CHECK_STR(it.with[3], "b@h");

    /* A NULL with comes back NULL. */
    CHECK(query(st, "bob", NULL, &it, NULL) == 0);
    CHECK(it.n == 1);
    CHECK_STR(it.with[0], "(null)");

    /* with */
    struct storage_archive_query q = {.with = "a@h"};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 13 && total == 13);
    CHECK_STR(it.values[1], "m2");

    /* time range, inclusive on both ends */
    q = (struct storage_archive_query){.start = 1010, .end = 1014};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 5 && total == 5);
    CHECK_STR(it.values[0], "m10");
    CHECK_STR(it.values[4], "m14");
    q = (struct storage_archive_query){.start = 1020};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 5 && total == 5);
    q = (struct storage_archive_query){.end = 1002, .with = "b@h"};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 1 && total == 1);
    CHECK_STR(it.values[0], "m1");

    /* limit; total ignores it */
    q = (struct storage_archive_query){.limit = 3};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 3 && total == 25);
    CHECK_STR(it.values[2], "m2");
    /* reverse + limit: the last three, newest first */
    q = (struct storage_archive_query){.limit = 3, .reverse = 1};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 3 && total == 25);
    CHECK_STR(it.values[0], "m24");
    CHECK_STR(it.values[2], "m22");

    /* callback stop */
    it.stop_after = 4;
    CHECK(storage_archive_query(st, "h", "alice", "mam", NULL, collect_item, &it, NULL) == 0);
    CHECK(it.n == 4);
    items_free(&it);

    /* unknown ids, and ids of another user, are not found */
    q = (struct storage_archive_query){.after_id = "nosuchid"};
    CHECK(query(st, "alice", &q, &it, &total) == STORAGE_NOTFOUND);
    CHECK(it.n == 0);
    q = (struct storage_archive_query){.before_id = "nosuchid"};
    CHECK(query(st, "alice", &q, &it, &total) == STORAGE_NOTFOUND);
    q = (struct storage_archive_query){.after_id = ids[0]};
    CHECK(query(st, "bob", &q, &it, &total) == STORAGE_NOTFOUND);

    /* after and before together */
    q = (struct storage_archive_query){.after_id = ids[5], .before_id = ids[9]};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 3 && total == 25);
    CHECK_STR(it.values[0], "m6");
    CHECK_STR(it.values[2], "m8");

    /* delete_id */
    CHECK(storage_archive_delete_id(st, "h", "bob", "mam", ids[7]) == STORAGE_NOTFOUND);
    CHECK(storage_archive_delete_id(st, "h", "alice", "mam", ids[7]) == 0);
    CHECK(storage_archive_delete_id(st, "h", "alice", "mam", ids[7]) == STORAGE_NOTFOUND);
    CHECK(storage_archive_count(st, "h", "alice", "mam") == 24);
    q = (struct storage_archive_query){.after_id = ids[5], .before_id = ids[9]};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 2);
    CHECK_STR(it.values[1], "m8");
    q = (struct storage_archive_query){.after_id = ids[7]};
    CHECK(query(st, "alice", &q, &it, &total) == STORAGE_NOTFOUND);

    /* expire: when < before, per user, then the whole host */
    CHECK(storage_archive_expire(st, "h", "alice", "mam", 1005) == 5);
    CHECK(storage_archive_count(st, "h", "alice", "mam") == 19);
    CHECK(storage_archive_count(st, "h", "bob", "mam") == 1);
    CHECK(storage_archive_expire(st, "h", "alice", "mam", 1005) == 0);
    CHECK(storage_archive_expire(st, "h", NULL, "mam", 1006) == 2);
    CHECK(storage_archive_count(st, "h", "bob", "mam") == 0);
    CHECK(storage_archive_count(st, "h", "alice", "mam") == 18);
    CHECK(query(st, "alice", NULL, &it, &total) == 0);
    CHECK_STR(it.values[0], "m6");

    items_free(&it);
    for (int i = 0; i < 25; i++)
        free(ids[i]);
    storage_close(st);
}

static void test_archive_paging(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    char *ids[25] = {0};
    fill_archive(st, ids);

    /* Forward: pages of 10, each after the last id of the previous page. */
    struct items it = {0};
    char seen[25] = {0};
    char *last = NULL;
    int pages = 0, count = 0;
    size_t total = 0;
    for (;;) {
        struct storage_archive_query q = {.after_id = last, .limit = 10};
        CHECK(query(st, "alice", &q, &it, &total) == 0);
        CHECK(total == 25);
        pages++;
        for (int i = 0; i < it.n; i++) {
            int k = atoi(it.values[i] + 1);
            CHECK(k == count + i);
            seen[k]++;
        }
        count += it.n;
        free(last);
        last = it.n ? xstrdup(it.ids[it.n - 1]) : NULL;
        if (it.n < 10 || pages > 5)
            break;
    }
    CHECK(pages == 3);
    CHECK(count == 25);
    for (int i = 0; i < 25; i++)
        CHECK(seen[i] == 1);
    free(last);

    /* Backward: reverse pages of 10, each before the oldest id of the previous page. */
    memset(seen, 0, sizeof seen);
    char *first = NULL;
    pages = count = 0;
    for (;;) {
        struct storage_archive_query q = {.before_id = first, .limit = 10, .reverse = 1};
        CHECK(query(st, "alice", &q, &it, &total) == 0);
        pages++;
        for (int i = 0; i < it.n; i++) {
            int k = atoi(it.values[i] + 1);
            CHECK(k == 24 - count - i); /* newest first */
            seen[k]++;
        }
        count += it.n;
        free(first);
        first = it.n ? xstrdup(it.ids[it.n - 1]) : NULL;
        if (it.n < 10 || pages > 5)
            break;
    }
    CHECK(pages == 3);
    CHECK(count == 25);
    for (int i = 0; i < 25; i++)
        CHECK(seen[i] == 1);
    free(first);

    /* A page past the end is empty, not an error. */
    struct storage_archive_query q = {.after_id = ids[24], .limit = 10};
    CHECK(query(st, "alice", &q, &it, &total) == 0);
    CHECK(it.n == 0 && total == 25);

    items_free(&it);
    for (int i = 0; i < 25; i++)
        free(ids[i]);
    storage_close(st);
}

static void test_user_delete(void)
{
    struct storage *st = open_new(NULL);
    CHECK(st != NULL);
    if (!st)
        return;
    const char *users[] = {"alice", "bob"};
    for (int i = 0; i < 2; i++) {
        CHECK(storage_kv_set(st, "h", users[i], "roster", "r", 1) == 0);
        CHECK(storage_kv_set(st, "h", users[i], "vcard", "v", 1) == 0);
        CHECK(storage_map_set(st, "h", users[i], "privacy", "k", "p", 1) == 0);
        CHECK(storage_archive_append(st, "h", users[i], "mam", 1, "x@h", "m", 1, NULL) == 0);
        CHECK(storage_archive_append(st, "h", users[i], "offline", 1, "x@h", "o", 1, NULL) == 0);
    }
    CHECK(storage_kv_set(st, "other", "alice", "roster", "r", 1) == 0);

    CHECK(storage_user_delete(st, "h", "alice") == 0);
    char *v;
    size_t len;
    CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(st, "h", "alice", "vcard", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_map_get(st, "h", "alice", "privacy", "k", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_archive_count(st, "h", "alice", "mam") == 0);
    CHECK(storage_archive_count(st, "h", "alice", "offline") == 0);

    CHECK(storage_kv_get(st, "h", "bob", "roster", &v, &len) == 0);
    free(v);
    CHECK(storage_kv_get(st, "h", "bob", "vcard", &v, &len) == 0);
    free(v);
    CHECK(storage_map_get(st, "h", "bob", "privacy", "k", &v, &len) == 0);
    free(v);
    CHECK(storage_archive_count(st, "h", "bob", "mam") == 1);
    CHECK(storage_archive_count(st, "h", "bob", "offline") == 1);
    CHECK(storage_kv_get(st, "other", "alice", "roster", &v, &len) == 0);
    free(v);

    CHECK(storage_user_delete(st, "h", "nobody") == 0);
    storage_close(st);
}

static void test_persistence(void)
{
    char *path;
    struct storage *st = open_new(&path);
    CHECK(st != NULL);
    if (!st) {
        free(path);
        return;
    }
    char *id = NULL;
    CHECK(storage_kv_set(st, "h", "alice", "roster", "kept", 4) == 0);
    CHECK(storage_map_set(st, "h", "alice", "m", "k", "mv", 2) == 0);
    CHECK(storage_archive_append(st, "h", "alice", "mam", 5, "w@h", "item", 4, &id) == 0);
    storage_close(st);

    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);

    char err[256] = "";
    st = storage_open(path, err, sizeof err);
    CHECK(st != NULL);
    if (st) {
        char *v;
        size_t len;
        CHECK(storage_kv_get(st, "h", "alice", "roster", &v, &len) == 0);
        CHECK_STR(v, "kept");
        free(v);
        CHECK(storage_map_get(st, "h", "alice", "m", "k", &v, &len) == 0);
        CHECK_STR(v, "mv");
        free(v);
        struct items it = {0};
        CHECK(query(st, "alice", NULL, &it, NULL) == 0);
        CHECK(it.n == 1);
        CHECK_STR(it.ids[0], id);
        CHECK(it.when[0] == 5);
        CHECK_STR(it.with[0], "w@h");
        /* Sequence numbers are not reused: a new item sorts after the old one. */
        char *id2 = NULL;
        CHECK(storage_archive_delete_id(st, "h", "alice", "mam", id) == 0);
        CHECK(storage_archive_append(st, "h", "alice", "mam", 6, NULL, "i2", 2, &id2) == 0);
        CHECK(id2 && !str_eq(id, id2));
        free(id2);
        items_free(&it);
        storage_close(st);
    }
    free(id);
    free(path);
}

static void test_transactions(void)
{
    char *path;
    struct storage *st = open_new(&path);
    CHECK(st != NULL);
    if (!st) {
        free(path);
        return;
    }
    char *v;
    size_t len;

    /* Nested commit: only the outermost one writes. */
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "a", "s", "1", 1) == 0);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "b", "s", "2", 1) == 0);
    CHECK(storage_commit(st) == 0);
    /* A second connection does not see uncommitted data. */
    char err[256];
    struct storage *other = storage_open(path, err, sizeof err);
    CHECK(other != NULL);
    if (other)
        CHECK(storage_kv_get(other, "h", "b", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_commit(st) == 0);
    if (other) {
        CHECK(storage_kv_get(other, "h", "b", "s", &v, &len) == 0);
        free(v);
    }

    /* Outer rollback undoes everything, including a committed inner level. */
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "c", "s", "3", 1) == 0);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "d", "s", "4", 1) == 0);
    CHECK(storage_archive_append(st, "h", "d", "mam", 1, NULL, "x", 1, NULL) == 0);
    CHECK(storage_commit(st) == 0);
    CHECK(storage_rollback(st) == 0);
    CHECK(storage_kv_get(st, "h", "c", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(st, "h", "d", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_archive_count(st, "h", "d", "mam") == 0);

    /* An inner rollback (a savepoint) undoes only its own writes. */
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "e", "s", "5", 1) == 0);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "e2", "s", "5", 1) == 0);
    CHECK(storage_rollback(st) == 0);
    CHECK(storage_commit(st) == 0);
    CHECK(storage_kv_get(st, "h", "e", "s", &v, &len) == 0);
    free(v);
    CHECK(storage_kv_get(st, "h", "e2", "s", &v, &len) == STORAGE_NOTFOUND);

    /* Unbalanced calls are errors, and the connection still works after them. */
    CHECK(storage_commit(st) == STORAGE_ERR);
    CHECK(storage_rollback(st) == STORAGE_ERR);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "f", "s", "6", 1) == 0);
    CHECK(storage_commit(st) == 0);
    CHECK(storage_kv_get(st, "h", "f", "s", &v, &len) == 0);
    free(v);

    /* Closing with an open transaction rolls it back. */
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "g", "s", "7", 1) == 0);
    storage_close(st);
    if (other) {
        CHECK(storage_kv_get(other, "h", "g", "s", &v, &len) == STORAGE_NOTFOUND);
        CHECK(storage_kv_get(other, "h", "a", "s", &v, &len) == 0);
        free(v);
        storage_close(other);
    }
    free(path);
}

static void test_settings(void)
{
    char *path;
    struct storage *st = open_new(&path);
    CHECK(st != NULL);
    if (!st) {
        free(path);
        return;
    }
    struct storage_info info;
    CHECK(storage_get_info(st, &info) == 0);
    CHECK_STR(info.journal_mode, "wal");
    CHECK(info.synchronous == 1); /* NORMAL; Debian's default in WAL mode is FULL (2) */
    CHECK(info.foreign_keys == 1);
    CHECK(info.journal_size_limit == 64 * 1024 * 1024);
    CHECK(info.schema_version == 1);
    CHECK(storage_kv_set(st, "h", "u", "s", "v", 1) == 0);

    /* The -wal file exists while open and, like the database, is not world-readable. */
    char *wal = xasprintf("%s-wal", path);
    struct stat sb;
    CHECK(stat(wal, &sb) == 0 && (sb.st_mode & 0077) == 0);
    free(wal);
    storage_close(st);
    free(path);
}

static void test_open_errors(void)
{
    char err[256];
    char *path;

    /* A schema from a newer build is refused, and the file is left alone. */
    struct storage *st = open_new(&path);
    CHECK(st != NULL);
    storage_close(st);
    sqlite3 *db;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version = 7", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    err[0] = '\0';
    st = storage_open(path, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "database schema version 7 is newer than this build supports (1)") != NULL);
    storage_close(st);
    free(path);

    /* A file that is not a database. */
    path = new_path();
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL);
    if (fp) {
        for (int i = 0; i < 200; i++)
            fputs("this is not an SQLite database, just text\n", fp);
        fclose(fp);
    }
    err[0] = '\0';
    st = storage_open(path, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "not a database") != NULL);
    storage_close(st);
    free(path);

    /* A path that cannot be created. */
    path = xasprintf("%s/missing-dir/x.db", tmpdir);
    err[0] = '\0';
    st = storage_open(path, err, sizeof err);
    CHECK(st == NULL);
    CHECK(strstr(err, "No such file") != NULL);
    free(path);

    /* A directory. */
    err[0] = '\0';
    st = storage_open(tmpdir, err, sizeof err);
    CHECK(st == NULL);
    CHECK(err[0] != '\0');

    CHECK(storage_open("", err, sizeof err) == NULL);
    CHECK(storage_open(NULL, NULL, 0) == NULL);
    storage_close(NULL);
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = xasprintf("%s/%s", tmpdir, e->d_name);
        unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(tmpdir);
}


/* Group commit: writes wait in one transaction until storage_flush; another connection sees
 * nothing before it; explicit transactions nest inside as savepoints; close flushes. */
static void test_group_commit(void)
{
    char *path = xasprintf("%s/group.db", tmpdir);
    char err[256];
    struct storage *st = storage_open(path, err, sizeof err);
    struct storage *other = storage_open(path, err, sizeof err);
    CHECK(st && other);
    if (!st || !other)
        return;
    char *v;
    size_t len;
    storage_set_group_commit(st, true);
    CHECK(storage_kv_set(st, "h", "a", "s", "1", 1) == 0);
    CHECK(storage_archive_append(st, "h", "a", "mam", 1, NULL, "x", 1, NULL) == 0);
    CHECK(storage_kv_get(st, "h", "a", "s", &v, &len) == 0); /* own writes are visible */
    free(v);
    CHECK(storage_kv_get(other, "h", "a", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "b", "s", "2", 1) == 0);
    CHECK(storage_rollback(st) == 0);
    CHECK(storage_begin(st) == 0);
    CHECK(storage_kv_set(st, "h", "c", "s", "3", 1) == 0);
    CHECK(storage_commit(st) == 0);
    CHECK(storage_kv_get(other, "h", "c", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_flush(st) == 0);
    CHECK(storage_kv_get(other, "h", "a", "s", &v, &len) == 0);
    free(v);
    CHECK(storage_kv_get(other, "h", "b", "s", &v, &len) == STORAGE_NOTFOUND);
    CHECK(storage_kv_get(other, "h", "c", "s", &v, &len) == 0);
    free(v);
    CHECK(storage_archive_count(other, "h", "a", "mam") == 1);
    CHECK(storage_flush(st) == 0); /* nothing open: a no-op */
    CHECK(storage_kv_set(st, "h", "d", "s", "4", 1) == 0);
    storage_close(st);
    CHECK(storage_kv_get(other, "h", "d", "s", &v, &len) == 0);
    free(v);
    storage_close(other);
    free(path);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    /* Expected errors (bad arguments, unbalanced transactions) would clutter the output. */
    log_open(NULL, (enum log_level)(LOG_ERROR + 1));
    TEST_RUN(test_kv);
    TEST_RUN(test_kv_users);
    TEST_RUN(test_map);
    TEST_RUN(test_archive_basic);
    TEST_RUN(test_archive_paging);
    TEST_RUN(test_user_delete);
    TEST_RUN(test_persistence);
    TEST_RUN(test_transactions);
    TEST_RUN(test_settings);
    TEST_RUN(test_open_errors);
    TEST_RUN(test_group_commit);
    remove_tmpdir();
    return TEST_DONE();
}
