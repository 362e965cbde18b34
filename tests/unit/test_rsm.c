/* XEP-0059 request parsing and reply building (src/rsm.c). */
#include <stdlib.h>

#include "isthmus/rsm.h"
#include "test.h"

static struct stanza *new_query(void)
{
    return stanza_new("query", "urn:xmpp:mam:2");
}

static void test_absent_set(void)
{
    struct stanza *q = new_query();
    struct rsm_request r;
    CHECK(rsm_parse(q, &r) == 0);
    CHECK(r.max == -1 && r.index == -1 && !r.after && !r.before);
    rsm_request_fini(&r);
    stanza_free(q);
}

static void test_full_set(void)
{
    struct stanza *q = new_query();
    struct stanza *set = stanza_add_child(q, "set", NS_RSM);
    stanza_add_text_child(set, "max", NULL, "10");
    stanza_add_text_child(set, "after", NULL, "abc");
    stanza_add_child(set, "before", NULL);
    stanza_add_text_child(set, "max", "urn:other", "x"); /* other namespaces are ignored */
    struct rsm_request r;
    CHECK(rsm_parse(q, &r) == 0);
    CHECK(r.max == 10);
    CHECK_STR(r.after, "abc");
    CHECK_STR(r.before, ""); /* empty <before/>: the last page */
    rsm_request_fini(&r);
    stanza_free(q);
}

static void test_bad_values(void)
{
    static const char *const bad_max[] = {"", "-1", "1x", " 5", "+3"};
    for (size_t i = 0; i < sizeof bad_max / sizeof bad_max[0]; i++) {
        struct stanza *q = new_query();
        stanza_add_text_child(stanza_add_child(q, "set", NS_RSM), "max", NULL, bad_max[i]);
        struct rsm_request r;
        CHECK(rsm_parse(q, &r) == -1);
        rsm_request_fini(&r);
        stanza_free(q);
    }
    struct stanza *q = new_query();
    stanza_add_child(stanza_add_child(q, "set", NS_RSM), "after", NULL);
    struct rsm_request r;
    CHECK(rsm_parse(q, &r) == -1); /* an empty <after/> names no item */
    rsm_request_fini(&r);
    stanza_free(q);
    q = new_query();
    stanza_add_text_child(stanza_add_child(q, "set", NS_RSM), "max", NULL,
                          "99999999999999999999999");
    CHECK(rsm_parse(q, &r) == 0 && r.max > 1000000); /* saturates; callers clamp */
    rsm_request_fini(&r);
    stanza_free(q);
}

static void test_reply(void)
{
    struct stanza *fin = stanza_new("fin", "urn:xmpp:mam:2");
    rsm_add_reply(fin, "a", 0, "b", 5);
    char *s = stanza_to_string(fin, "jabber:client");
    CHECK_STR(s, "<fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'>"
                 "<first index='0'>a</first><last>b</last><count>5</count></set></fin>");
    free(s);
    stanza_free(fin);
    fin = stanza_new("fin", "urn:xmpp:mam:2");
    rsm_add_reply(fin, NULL, -1, NULL, -1);
    s = stanza_to_string(fin, "jabber:client");
    CHECK_STR(s, "<fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'/></fin>");
    free(s);
    stanza_free(fin);
}

int main(void)
{
    TEST_RUN(test_absent_set);
    TEST_RUN(test_full_set);
    TEST_RUN(test_bad_values);
    TEST_RUN(test_reply);
    return TEST_DONE();
}
