/* test_irc_addr.c — the IRC gateway's JID ↔ channel/nick/server mapping (transports/irc/addr.c). */
#include <stdlib.h>

#include "addr.h"
#include "isthmus/jid.h"
#include "isthmus/util.h"
#include "test.h"

static void check_parse(const char *node, int kind, const char *target, const char *server,
                        int line)
{
    struct irc_addr a;
    int rc = irc_addr_parse(node, &a);
    if (kind < 0) {
        if (rc == 0) {
            fprintf(stderr, "  FAIL line %d: \"%s\" accepted\n", line, node);
            test_failed_checks++;
        }
    } else if (rc != 0 || (int)a.kind != kind || !str_eq(a.target, target) ||
               !str_eq(a.server, server)) {
        fprintf(stderr, "  FAIL line %d: \"%s\" → rc %d kind %d \"%s\" \"%s\"\n", line, node, rc,
                (int)a.kind, a.target ? a.target : "(null)", a.server ? a.server : "(null)");
        test_failed_checks++;
    }
    irc_addr_fini(&a);
}
#define PARSE(node, kind, target, server) check_parse(node, kind, target, server, __LINE__)
#define BAD(node) check_parse(node, -1, NULL, NULL, __LINE__)

static void test_parse(void)
{
    PARSE("#test%irc.test", IRC_ADDR_CHANNEL, "#test", "irc.test");
    PARSE("#Test%IRC.Test", IRC_ADDR_CHANNEL, "#test", "irc.test");
    PARSE("&local%irc.test", IRC_ADDR_CHANNEL, "&local", "irc.test");
    PARSE("alice%irc.test", IRC_ADDR_NICK, "alice", "irc.test");
    PARSE("Al[i]ce%irc.test", IRC_ADDR_NICK, "Al[i]ce", "irc.test");
    PARSE("irc.test", IRC_ADDR_NETWORK, NULL, "irc.test");
    PARSE("127.0.0.1", IRC_ADDR_NETWORK, NULL, "127.0.0.1");
    /* '%' inside a channel name: the server is after the last one */
    PARSE("#100%%irc.test", IRC_ADDR_CHANNEL, "#100%", "irc.test");
    /* XEP-0106: "\5c" is a backslash, "\3a" a colon, "\20" a space */
    PARSE("ba\\5cd%irc.test", IRC_ADDR_NICK, "ba\\d", "irc.test");
    PARSE("#a\\26b%irc.test", IRC_ADDR_CHANNEL, "#a&b", "irc.test");
    BAD("#a\\20b%irc.test");  /* space in a channel */
    BAD("#a\\3ab%irc.test");  /* colon in a channel */
    BAD("#a,b%irc.test");
    BAD("%irc.test");
    BAD("alice%");
    BAD("alice%irc..test");
    BAD("alice%.irc.test");
    BAD("alice%irc test");
    BAD("alice%irc\\2ftest");
    BAD("1alice%irc.test");
    BAD("-alice%irc.test");
    BAD("al!ce%irc.test");
    BAD("al\\40ce%irc.test"); /* '@' */
    BAD("");
    BAD(NULL);
    /* bounded lengths */
    char chan[300];
    chan[0] = '#';
    memset(chan + 1, 'a', 250);
    strcpy(chan + 251, "%irc.test");
    BAD(chan);
    char nick[100];
    memset(nick, 'n', 70);
    strcpy(nick + 70, "%irc.test");
    BAD(nick);
}

static void test_build(void)
{
    char *s = irc_addr_node("#Test", "IRC.test");
    CHECK_STR(s, "#test%irc.test");
    free(s);
    s = irc_addr_node("Alice", "irc.test");
    CHECK_STR(s, "Alice%irc.test");
    free(s);
    s = irc_addr_node(NULL, "irc.test");
    CHECK_STR(s, "irc.test");
    free(s);
    s = irc_addr_node("#a&b", "irc.test");
    CHECK_STR(s, "#a\\26b%irc.test");
    free(s);
    CHECK(irc_addr_node("bad nick", "irc.test") == NULL);
    CHECK(irc_addr_node("alice", "bad server") == NULL);
    s = irc_addr_jid("irc.localhost", "#chan", "irc.test", "Bob");
    CHECK_STR(s, "#chan%irc.test@irc.localhost/Bob");
    free(s);
    s = irc_addr_jid("irc.localhost", "#chan", "irc.test", NULL);
    CHECK_STR(s, "#chan%irc.test@irc.localhost");
    free(s);
    /* a built JID is a valid JID whose node parses back to the same address */
    s = irc_addr_jid("irc.localhost", "we\\ird", "irc.test", "x");
    struct jid j;
    CHECK(jid_parse(s, &j) == 0);
    struct irc_addr a;
    CHECK(irc_addr_parse(j.local, &a) == 0);
    CHECK(a.kind == IRC_ADDR_NICK);
    CHECK_STR(a.target, "we\\ird");
    irc_addr_fini(&a);
    jid_fini(&j);
    free(s);
}

static void test_validity(void)
{
    CHECK(irc_addr_valid_nick("alice"));
    CHECK(irc_addr_valid_nick("[bot]"));
    CHECK(irc_addr_valid_nick("{x}|^_`"));
    CHECK(!irc_addr_valid_nick("a b"));
    CHECK(!irc_addr_valid_nick("#a"));
    CHECK(!irc_addr_valid_nick("a\x01"));
    CHECK(!irc_addr_valid_nick("\xff\xfe"));
    CHECK(irc_addr_valid_channel("#c++"));
    CHECK(!irc_addr_valid_channel("chan"));
    CHECK(!irc_addr_valid_channel("#a\x07"));
    CHECK(irc_addr_valid_server("irc.libera.chat"));
    CHECK(!irc_addr_valid_server("irc.libera.chat."));
}

static void test_prompt(void)
{
    char *s = irc_addr_prompt_node("alice%irc.test");
    CHECK_STR(s, "alice%irc.test");
    free(s);
    s = irc_addr_prompt_node(" Alice@irc.test ");
    CHECK_STR(s, "Alice%irc.test");
    free(s);
    s = irc_addr_prompt_node("#Chan%irc.test");
    CHECK_STR(s, "#chan%irc.test");
    free(s);
    CHECK(irc_addr_prompt_node("a b%irc.test") == NULL);
    CHECK(irc_addr_prompt_node("") == NULL);
    CHECK(irc_addr_prompt_node("%irc.test") == NULL);
}

int main(void)
{
    TEST_RUN(test_parse);
    TEST_RUN(test_build);
    TEST_RUN(test_validity);
    TEST_RUN(test_prompt);
    jid_cache_clear();
    return TEST_DONE();
}
