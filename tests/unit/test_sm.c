/* XEP-0198 state (src/sm.c): acknowledgements, the unacknowledged queue, 'h' parsing and the
 * memory of ended sessions. */
#include <stdlib.h>

#include "isthmus/sm.h"
#include "test.h"

static struct stanza *msg(const char *id)
{
    struct stanza *m = stanza_new("message", NS_CLIENT);
    stanza_set_attr(m, "id", id);
    return m;
}

static void push(struct sm *sm, const char *id)
{
    struct stanza *m = msg(id);
    sm_push(sm, m, 10);
    stanza_free(m);
}

static void test_ack_drops_acknowledged(void)
{
    struct sm *sm = sm_new(NULL, 0);
    CHECK(sm_id(sm) == NULL);
    push(sm, "1");
    push(sm, "2");
    push(sm, "3");
    CHECK(sm_unacked(sm) == 3 && sm_sent(sm) == 3 && sm_unacked_bytes(sm) == 30);
    CHECK(sm_ack(sm, 0) == 0 && sm_unacked(sm) == 3);
    CHECK(sm_ack(sm, 2) == 0 && sm_unacked(sm) == 1);
    CHECK_STR(stanza_attr(sm_queued(sm, 0), "id"), "3");
    CHECK(sm_queued(sm, 1) == NULL);
    /* Beyond what was sent, and below an earlier ack (ahead modulo 2^32): refused, untouched. */
    CHECK(sm_ack(sm, 4) < 0 && sm_unacked(sm) == 1);
    CHECK(sm_ack(sm, 1) < 0 && sm_unacked(sm) == 1);
    CHECK(sm_ack(sm, 2) == 0 && sm_unacked(sm) == 1); /* repeating the same h is fine */
    CHECK(sm_ack(sm, 3) == 0 && sm_unacked(sm) == 0 && sm_unacked_bytes(sm) == 0);
    CHECK(sm_sent(sm) == 3);
    push(sm, "4");
    CHECK(sm_sent(sm) == 4);
    sm_free(sm);
    sm_free(NULL);
}

static void test_take_and_requests(void)
{
    struct sm *sm = sm_new("abc", 30);
    CHECK_STR(sm_id(sm), "abc");
    CHECK(sm_timeout(sm) == 30);
    push(sm, "a");
    push(sm, "b");
    sm_set_ack_requested(sm, true);
    CHECK(sm_ack_requested(sm));
    CHECK(sm_ack(sm, 1) == 0 && !sm_ack_requested(sm));
    int64_t at = 0;
    struct stanza *st = sm_take(sm, &at);
    CHECK(st && at > 0);
    CHECK_STR(stanza_attr(st, "id"), "b");
    stanza_free(st);
    CHECK(sm_take(sm, NULL) == NULL && sm_unacked(sm) == 0);
    sm_received(sm);
    sm_received(sm);
    CHECK(sm_handled(sm) == 2);
    sm_free(sm);
}

static void test_parse(void)
{
    uint32_t h = 7;
    CHECK(sm_parse_h("0", &h) == 0 && h == 0);
    CHECK(sm_parse_h("4294967295", &h) == 0 && h == 4294967295u);
    CHECK(sm_parse_h("4294967296", &h) < 0);
    CHECK(sm_parse_h("99999999999", &h) < 0);
    CHECK(sm_parse_h("", &h) < 0);
    CHECK(sm_parse_h(NULL, &h) < 0);
    CHECK(sm_parse_h("-1", &h) < 0);
    CHECK(sm_parse_h("1 ", &h) < 0);
    CHECK(sm_parse_h("0x10", &h) < 0);
    CHECK(sm_parse_bool("true") && sm_parse_bool("1"));
    CHECK(!sm_parse_bool("false") && !sm_parse_bool("0") && !sm_parse_bool("yes") &&
          !sm_parse_bool(NULL));
}

static void test_remembered_sessions(void)
{
    uint32_t h = 0;
    sm_remember("id1", "a@x", 42, 1000, 500);
    CHECK(sm_recall("id1", "a@x", 1200, &h) && h == 42);
    CHECK(!sm_recall("id1", "b@x", 1200, &h)); /* another account learns nothing */
    CHECK(!sm_recall("id1", "a@x", 1500, &h)); /* expired */
    CHECK(!sm_recall("id2", "a@x", 1200, &h));
    /* Bounded: old entries make room for new ones. */
    char id[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof id, "n%d", i);
        sm_remember(id, "a@x", (uint32_t)i, 1000, 500);
    }
    CHECK(sm_recall("n1999", "a@x", 1100, &h) && h == 1999);
    CHECK(!sm_recall("n0", "a@x", 1100, &h));
    sm_forget_all();
    CHECK(!sm_recall("n1999", "a@x", 1100, &h));
}

int main(void)
{
    TEST_RUN(test_ack_drops_acknowledged);
    TEST_RUN(test_take_and_requests);
    TEST_RUN(test_parse);
    TEST_RUN(test_remembered_sessions);
    return TEST_DONE();
}
