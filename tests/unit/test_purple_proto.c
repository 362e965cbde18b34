/* test_purple_proto.c — the line protocol between isthmus-purple's gateway and its libpurple
 * backends (transports/purple/proto.c): escaping round trips, splitting, line framing. */
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "test.h"

static void test_round_trip(void)
{
    const char *in[] = {"login", "a@b", "tab\there", "nl\nand\rcr", "100%", "", "%41"};
    size_t len;
    char *line = pproto_line(in, 7, &len);
    CHECK(len == strlen(line));
    CHECK(line[len - 1] == '\n');
    CHECK(strchr(line, '\r') == NULL);
    CHECK(memchr(line, '\n', len - 1) == NULL);
    size_t next;
    size_t l = pproto_next_line(line, len, &next);
    CHECK(l == len - 1);
    CHECK(next == len);
    line[l] = '\0';
    char *f[PPROTO_MAX_FIELDS];
    size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
    CHECK(n == 7);
    for (size_t i = 0; i < n && i < 7; i++)
        CHECK(strcmp(f[i], in[i]) == 0);
    free(line);
}

static void test_split_limits(void)
{
    char a[] = "x\ty\tz";
    char *f[2];
    size_t n = pproto_split(a, f, 2);
    CHECK(n == 2);
    CHECK(strcmp(f[0], "x") == 0);
    CHECK(strcmp(f[1], "y\tz") == 0); /* the rest stays in the last field */
    char b[] = "bad%zz%4%00end%";
    n = pproto_split(b, f, 2);
    CHECK(n == 1);
    CHECK(strcmp(f[0], "bad%zz%4end%") == 0); /* bad escapes kept, %00 dropped */
    char c[] = "";
    CHECK(pproto_split(c, f, 2) == 1 && f[0][0] == '\0');
    size_t next;
    CHECK(pproto_next_line("no newline", 10, &next) == (size_t)-1);
    CHECK(pproto_next_line("a\nb\n", 4, &next) == 1 && next == 2);
}

static void test_add(void)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    pproto_add(&buf, &len, &cap, "a\tb");
    pproto_add(&buf, &len, &cap, NULL);
    pproto_add(&buf, &len, &cap, "c");
    CHECK(strcmp(buf, "a%09b\t\tc") == 0);
    free(buf);
}

/* A record nested as one field of a line (the "form" event) splits again after the outer split. */
static void test_record(void)
{
    const char *inner[] = {"muc#roomconfig_roomname", "text-single", "Name\tof %41 room", "0",
                           "1", "a\nb"};
    char *rec = pproto_record(inner, 6);
    CHECK(strchr(rec, '\n') == NULL && strchr(rec, '\t') != NULL);
    const char *outer[] = {"form", "u@x", "7", rec, "tail"};
    size_t len;
    char *line = pproto_line(outer, 5, &len);
    free(rec);
    line[len - 1] = '\0';
    CHECK(strchr(line, '\t') != NULL && memchr(line, '\n', len - 1) == NULL);
    char *f[PPROTO_MAX_FIELDS];
    size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
    CHECK(n == 5 && strcmp(f[4], "tail") == 0);
    char *g[PPROTO_MAX_FIELDS];
    size_t m = n == 5 ? pproto_split(f[3], g, PPROTO_MAX_FIELDS) : 0;
    CHECK(m == 6);
    for (size_t i = 0; i < m && i < 6; i++)
        CHECK(strcmp(g[i], inner[i]) == 0);
    free(line);
    /* an empty record is one empty field */
    char *e = pproto_record(NULL, 0);
    CHECK(strcmp(e, "") == 0);
    free(e);
}

/* Random fields (any bytes but NUL) survive a round trip; random lines split without harm. */
static void test_random(void)
{
    unsigned seed = 12345;
    for (int round = 0; round < 2000; round++) {
        char fields[5][40];
        const char *fp[5];
        for (int i = 0; i < 5; i++) {
            seed = seed * 1103515245u + 12345u;
            size_t len = (seed >> 16) % 39;
            for (size_t j = 0; j < len; j++) {
                seed = seed * 1103515245u + 12345u;
                fields[i][j] = (char)(1 + (seed >> 16) % 255);
            }
            fields[i][len] = '\0';
            fp[i] = fields[i];
        }
        size_t len;
        char *line = pproto_line(fp, 5, &len);
        line[len - 1] = '\0';
        char *f[PPROTO_MAX_FIELDS];
        size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
        CHECK(n == 5);
        for (size_t i = 0; i < n && i < 5; i++)
            CHECK(strcmp(f[i], fields[i]) == 0);
        free(line);
        /* the same bytes as a raw line: any split is fine, fields stay inside it */
        char raw[200];
        size_t rl = 0;
        for (int i = 0; i < 5; i++) {
            size_t l = strlen(fields[i]);
            memcpy(raw + rl, fields[i], l);
            rl += l;
        }
        raw[rl] = '\0';
        n = pproto_split(raw, f, 3);
        CHECK(n >= 1 && n <= 3);
        for (size_t i = 0; i < n; i++)
            CHECK(f[i] >= raw && f[i] + strlen(f[i]) <= raw + rl);
    }
}

int main(void)
{
    TEST_RUN(test_round_trip);
    TEST_RUN(test_split_limits);
    TEST_RUN(test_add);
    TEST_RUN(test_record);
    TEST_RUN(test_random);
    return TEST_DONE();
}
