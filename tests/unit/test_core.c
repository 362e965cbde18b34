/* Unit tests for the small core pieces: hash map, event loop timers/deferred work/fd watchers,
 * buffers and base64. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "isthmus/ev.h"
#include "isthmus/hmap.h"
#include "isthmus/util.h"
#include "test.h"

static void test_hmap_basic(void)
{
    struct hmap m;
    hmap_init(&m);
    CHECK(hmap_get(&m, "missing") == NULL);
    int vals[5000];
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "user%d@example.org", i);
        vals[i] = i;
        hmap_put(&m, key, &vals[i]);
    }
    CHECK(m.used == 5000);
    for (int i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "user%d@example.org", i);
        CHECK(hmap_del(&m, key) == &vals[i]);
    }
    CHECK(m.used == 2500);
    int found = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "user%d@example.org", i);
        void *v = hmap_get(&m, key);
        if (i % 2)
            found += v == &vals[i];
        else
            CHECK(v == NULL);
    }
    CHECK(found == 2500);
    /* Reinsertion after deletion reuses tombstones and replaces values. */
    for (int round = 0; round < 20; round++) {
        hmap_put(&m, "churn", &vals[round]);
        CHECK(hmap_get(&m, "churn") == &vals[round]);
        CHECK(hmap_del(&m, "churn") == &vals[round]);
    }
    size_t it = 0, n = 0;
    const char *k;
    void *v;
    while (hmap_next(&m, &it, &k, &v))
        n++;
    CHECK(n == 2500);
    hmap_fini(&m);
}

static int order[8];
static int norder;

static void record(struct ev_loop *loop, void *ud)
{
    (void)loop;
    order[norder++] = (int)(intptr_t)ud;
}

static void stop_loop(struct ev_loop *loop, void *ud)
{
    (void)ud;
    ev_stop(loop);
}

static void test_ev_timers_in_order(void)
{
    struct ev_loop *loop = ev_loop_new();
    norder = 0;
    ev_timer_add(loop, 30, record, (void *)3);
    ev_timer_add(loop, 10, record, (void *)1);
    struct ev_timer *cancelled = ev_timer_add(loop, 15, record, (void *)99);
    ev_timer_add(loop, 20, record, (void *)2);
    ev_timer_cancel(loop, cancelled);
    ev_defer(loop, record, (void *)0);
    ev_timer_add(loop, 40, stop_loop, NULL);
    ev_run(loop);
    CHECK(norder == 4);
    for (int i = 0; i < 4; i++)
        CHECK(order[i] == i);
    ev_loop_free(loop);
}

struct pipe_ctx {
    int reads;
    char got[16];
};

static void on_readable(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    struct pipe_ctx *c = ud;
    CHECK(events & EV_READ);
    ssize_t n = read(fd, c->got, sizeof c->got - 1);
    if (n > 0)
        c->got[n] = '\0';
    c->reads++;
    ev_io_del(loop, fd);
    ev_stop(loop);
}

static void test_ev_io(void)
{
    struct ev_loop *loop = ev_loop_new();
    int p[2];
    CHECK(pipe(p) == 0);
    struct pipe_ctx c = {0};
    CHECK(ev_io_add(loop, p[0], EV_READ, on_readable, &c) == 0);
    CHECK(write(p[1], "ping", 4) == 4);
    ev_timer_add(loop, 2000, stop_loop, NULL); /* bound the test if nothing arrives */
    ev_run(loop);
    CHECK(c.reads == 1);
    CHECK_STR(c.got, "ping");
    close(p[0]);
    close(p[1]);
    ev_loop_free(loop);
}

static void test_buf_and_base64(void)
{
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, 10);
    CHECK(b.data && b.data[0] == '\0');
    buf_printf(&b, "%s-%d", "x", 42);
    buf_append(&b, "\0z", 2);
    CHECK(b.len == 6);
    buf_consume(&b, 2);
    CHECK(memcmp(b.data, "42\0z", 4) == 0 && b.data[b.len] == '\0');
    buf_fini(&b);

    const char *vectors[][2] = {{"", ""},       {"f", "Zg=="},     {"fo", "Zm8="},
                                {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
                                {"foobar", "Zm9vYmFy"}}; /* RFC 4648 §10 */
    for (size_t i = 0; i < ARRAY_LEN(vectors); i++) {
        char *enc = base64_encode((const unsigned char *)vectors[i][0], strlen(vectors[i][0]));
        CHECK_STR(enc, vectors[i][1]);
        unsigned char *dec;
        size_t len;
        CHECK(base64_decode(enc, strlen(enc), &dec, &len) == 0);
        CHECK(len == strlen(vectors[i][0]) && memcmp(dec, vectors[i][0], len) == 0);
        free(dec);
        free(enc);
    }
    const char *bad[] = {"Zg=", "Z===", "Zm 9v", "Zg==Zg==", "Zm9v!A==", "=Zg="};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        unsigned char *dec;
        size_t len;
        CHECK(base64_decode(bad[i], strlen(bad[i]), &dec, &len) < 0);
    }
}

static void test_utf8(void)
{
    CHECK(utf8_valid("plain", 5));
    CHECK(utf8_valid("\xc3\xa9t\xc3\xa9", 6));
    CHECK(utf8_valid("\xf0\x9f\x98\x80", 4));
    CHECK(!utf8_valid("\xc0\xaf", 2));         /* overlong */
    CHECK(!utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!utf8_valid("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
    CHECK(!utf8_valid("\xe2\x82", 2));         /* truncated */
}

int main(void)
{
    TEST_RUN(test_hmap_basic);
    TEST_RUN(test_ev_timers_in_order);
    TEST_RUN(test_ev_io);
    TEST_RUN(test_buf_and_base64);
    TEST_RUN(test_utf8);
    return TEST_DONE();
}
