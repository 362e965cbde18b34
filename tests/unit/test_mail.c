/* test_mail.c — the email gateway's MIME building and parsing (transports/mail/mime.c: RFC 5322,
 * RFC 2045–2047 via GMime), HTML → text, address checks and the IMAP answer parsers (net.c). */
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"
#include "mail.h"
#include "test.h"

static void test_addr(void)
{
    CHECK(mime_addr_valid("alice@example.org"));
    CHECK(mime_addr_valid("a.b+c@mail.test"));
    CHECK(!mime_addr_valid("alice"));
    CHECK(!mime_addr_valid("@example.org"));
    CHECK(!mime_addr_valid("alice@"));
    CHECK(!mime_addr_valid("a@b@c"));
    CHECK(!mime_addr_valid("al ice@example.org"));
    CHECK(!mime_addr_valid("alice@example.org\r\nBcc: x@y"));
    CHECK(!mime_addr_valid("<alice@example.org>"));
    CHECK(!mime_addr_valid("a..b@example.org"));
    CHECK(!mime_addr_valid("alice@example..org"));
    CHECK(!mime_addr_valid(NULL));
}

static void test_build_ascii(void)
{
    struct mime_out m = {.from = "bob@mail.test",
                         .from_name = "Bob",
                         .to = "alice@example.org",
                         .subject = "Hello",
                         .body = "Hi Alice.\nSecond line.",
                         .message_id = "abc123@mail.localhost",
                         .date = 1700000000};
    size_t len = 0;
    char *s = mime_build(&m, &len);
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(len == strlen(s));
    CHECK(strstr(s, "From: Bob <bob@mail.test>\r\n") != NULL);
    CHECK(strstr(s, "To: alice@example.org\r\n") != NULL);
    CHECK(strstr(s, "Subject: Hello\r\n") != NULL);
    CHECK(strstr(s, "Message-Id: <abc123@mail.localhost>\r\n") != NULL ||
          strstr(s, "Message-ID: <abc123@mail.localhost>\r\n") != NULL);
    CHECK(strstr(s, "Date: ") != NULL);
    CHECK(strstr(s, "MIME-Version: 1.0\r\n") != NULL);
    CHECK(strstr(s, "charset=utf-8") != NULL);
    CHECK(strstr(s, "Hi Alice.\r\nSecond line.") != NULL);
    /* Every line ends in CRLF. */
    for (const char *p = s; *p; p++)
        if (*p == '\n')
            CHECK(p > s && p[-1] == '\r');
    free(s);
}

static void test_build_utf8_roundtrip(void)
{
    const char *subject = "Grüße aus Köln — 日本語";
    const char *body = "Schöne Grüße!\nÜmlaute und ein Euro: €.\n";
    struct mime_out m = {.from = "bob@mail.test",
                         .to = "alice@example.org",
                         .subject = subject,
                         .body = body,
                         .message_id = "x1@gw",
                         .in_reply_to = "root@a",
                         .references = "root@a mid@b",
                         .date = 1700000000};
    size_t len = 0;
    char *s = mime_build(&m, &len);
    CHECK(s != NULL);
    if (!s)
        return;
    /* RFC 2047 encoded-words in the header, no raw 8-bit anywhere. */
    CHECK(strstr(s, "Subject: =?") != NULL || strstr(s, "Subject:\r\n =?") != NULL);
    for (size_t i = 0; i < len; i++)
        CHECK((unsigned char)s[i] < 0x80);
    CHECK(strstr(s, "In-Reply-To: <root@a>") != NULL);
    CHECK(strstr(s, "References: <root@a> <mid@b>") != NULL);
    struct mime_in in;
    CHECK(mime_parse(s, len, &in) == 0);
    CHECK_STR(in.subject, subject);
    CHECK(in.text && strncmp(in.text, "Schöne Grüße!\nÜmlaute und ein Euro: €.", 40) == 0);
    CHECK_STR(in.from, "bob@mail.test");
    CHECK_STR(in.message_id, "x1@gw");
    CHECK_STR(in.thread_root, "root@a");
    CHECK_STR(in.references, "root@a mid@b");
    CHECK(in.date == 1700000000);
    CHECK(in.attachments == NULL);
    mime_in_fini(&in);
    free(s);
}

static void test_build_header_injection(void)
{
    struct mime_out m = {.from = "bob@mail.test",
                         .to = "alice@example.org",
                         .subject = "Hi\r\nBcc: evil@example.org",
                         .body = "x",
                         .date = 1};
    char *s = mime_build(&m, NULL);
    CHECK(s != NULL);
    CHECK(s && strstr(s, "\r\nBcc:") == NULL);
    free(s);
    struct mime_out bad = {.from = "bob@mail.test", .to = "a@b\r\nX: y", .body = "x"};
    CHECK(mime_build(&bad, NULL) == NULL);
}

static const char multipart[] =
    "From: =?utf-8?q?J=C3=BCrgen?= <Juergen@Example.ORG>\r\n"
    "To: alice@mail.test\r\n"
    "Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n"
    "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "Message-ID: <m2@example.org>\r\n"
    "In-Reply-To: <m1@example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    "\r\n"
    "--outer\r\n"
    "Content-Type: multipart/alternative; boundary=\"alt\"\r\n"
    "\r\n"
    "--alt\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "\r\n"
    "<p>HTML version</p>\r\n"
    "--alt\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Gr=FC=DFe aus M=FCnchen\r\n"
    "--alt--\r\n"
    "--outer\r\n"
    "Content-Type: application/pdf; name=\"report.pdf\"\r\n"
    "Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n"
    "--outer--\r\n";

static void test_parse_multipart(void)
{
    struct mime_in in;
    CHECK(mime_parse(multipart, sizeof multipart - 1, &in) == 0);
    CHECK_STR(in.from, "Juergen@example.org");
    CHECK_STR(in.from_name, "Jürgen");
    CHECK_STR(in.subject, "Grüße");
    CHECK_STR(in.text, "Grüße aus München");
    CHECK_STR(in.message_id, "m2@example.org");
    CHECK_STR(in.thread_root, "m1@example.org");
    CHECK_STR(in.references, "m1@example.org");
    CHECK(in.date == 1700000000);
    CHECK(in.attachments && strncmp(in.attachments, "report.pdf (", 12) == 0);
    mime_in_fini(&in);
}

static void test_parse_html_only(void)
{
    static const char raw[] = "From: a@b.c\r\nSubject: x\r\nContent-Type: text/html\r\n\r\n"
                              "<html><head><title>T</title><style>p{}</style></head>"
                              "<body><p>One &amp; two</p><p>Three<br>four</p></body></html>\r\n";
    struct mime_in in;
    CHECK(mime_parse(raw, sizeof raw - 1, &in) == 0);
    CHECK_STR(in.text, "One & two\n\nThree\nfour");
    CHECK(in.thread_root == NULL);
    mime_in_fini(&in);
}

static void test_parse_garbage(void)
{
    /* Not a crash, whatever it makes of it. */
    static const char raw[] = "\xff\xfe\x00garbage\r\n\r\n\x01\x02";
    struct mime_in in;
    if (mime_parse(raw, sizeof raw - 1, &in) == 0) {
        CHECK(in.text != NULL);
        CHECK(utf8_valid(in.text, strlen(in.text)));
        mime_in_fini(&in);
    }
    static const char bad8[] = "From: x@y.z\r\nSubject: \xc3\x28 bad\r\n\r\nbody \xff\x01 end\r\n";
    CHECK(mime_parse(bad8, sizeof bad8 - 1, &in) == 0);
    CHECK(in.subject && utf8_valid(in.subject, strlen(in.subject)));
    CHECK(in.text && utf8_valid(in.text, strlen(in.text)) && !strchr(in.text, '\x01'));
    mime_in_fini(&in);
}

static void check_html(const char *html, const char *want, int line)
{
    char *t = mime_html_to_text(html, strlen(html));
    if (!str_eq(t, want)) {
        fprintf(stderr, "  FAIL line %d: \"%s\" → \"%s\", want \"%s\"\n", line, html, t, want);
        test_failed_checks++;
    }
    free(t);
}
#define HTML(h, w) check_html(h, w, __LINE__)

static void test_html(void)
{
    HTML("plain", "plain");
    HTML("a   b\n\n c", "a b c");
    HTML("<b>bold</b> and <i>it</i>", "bold and it");
    HTML("<p>one</p><p>two</p>", "one\n\ntwo");
    HTML("line<br>break<br/>again", "line\nbreak\nagain");
    HTML("<ul><li>a</li><li>b</li></ul>", "- a\n- b");
    HTML("&lt;tag&gt; &amp; &quot;q&quot; &#228;&#xe4;&auml; &euro;", "<tag> & \"q\" äää €");
    HTML("&bogus; &amp", "&bogus; &amp");
    HTML("&#0; &#xd800; &#99999999;", "\xef\xbf\xbd \xef\xbf\xbd \xef\xbf\xbd");
    HTML("<script>alert(1)</script>x<style>.a{}</style>y", "xy");
    HTML("<!-- comment -->z", "z");
    HTML("<a href=\"https://example.org/\">site</a>", "site <https://example.org/>");
    HTML("<a href='https://e.org'>https://e.org</a>", "https://e.org");
    HTML("<a href=\"mailto:a@b.c\">a@b.c</a>", "a@b.c");
    HTML("<pre>  keep\n  this</pre>after", "  keep\n  this\n\nafter");
    HTML("<img src=x alt=\"logo\">", "[logo]");
    HTML("1 < 2", "1 < 2");
    HTML("<div>unterminated", "unterminated");
    HTML("<p attr=\"a>b\">q</p>", "q");
    HTML("<script>never closed", "");
    HTML("", "");
}

static void test_clean(void)
{
    char *s = mime_clean_text("a\r\nb\x01\tc\xff", 8);
    CHECK_STR(s, "a\nb\tc\xef\xbf\xbd");
    free(s);
}

static void test_imap_parsers(void)
{
    uint32_t v = 0, n = 0;
    CHECK(net_parse_status("* STATUS INBOX (UIDVALIDITY 1700 UIDNEXT 5)\r\n", &v, &n) == 0);
    CHECK(v == 1700 && n == 5);
    CHECK(net_parse_status("* STATUS \"INBOX\" (UIDNEXT 9 UIDVALIDITY 3)\r\n", &v, &n) == 0);
    CHECK(v == 3 && n == 9);
    CHECK(net_parse_status("* STATUS INBOX (MESSAGES 2)\r\n", &v, &n) < 0);
    CHECK(net_parse_status("* STATUS INBOX (UIDVALIDITY 99999999999 UIDNEXT 1)", &v, &n) < 0);
    CHECK(net_parse_status("", &v, &n) < 0);
    uint32_t u[8];
    size_t k = net_parse_search("* SEARCH 7 3 9 3\r\n", 3, u, 8);
    CHECK(k == 2 && u[0] == 7 && u[1] == 9);
    k = net_parse_search("* SEARCH\r\n", 0, u, 8);
    CHECK(k == 0);
    k = net_parse_search("* SEARCH 5\r\n", 5, u, 8); /* n:* with nothing new returns the last */
    CHECK(k == 0);
    k = net_parse_search("* SEARCH 1 2 3 4 5 6 7 8 9 10\r\n", 0, u, 4);
    CHECK(k == 4);
    k = net_parse_search("* SEARCH 99999999999 x 4\r\n", 0, u, 8);
    CHECK(k == 1 && u[0] == 4);
}

static void test_authority(void)
{
    char *a = net_authority("imap.example.org", 143);
    CHECK_STR(a, "imap.example.org:143");
    free(a);
    a = net_authority("127.0.0.1:1143", 143);
    CHECK_STR(a, "127.0.0.1:1143");
    free(a);
    a = net_authority("[::1]:993", 143);
    CHECK_STR(a, "[::1]:993");
    free(a);
    CHECK(net_authority("host:0", 1) == NULL);
    CHECK(net_authority("host:99999", 1) == NULL);
    CHECK(net_authority("ho st", 1) == NULL);
    CHECK(net_authority("host/path", 1) == NULL);
    CHECK(net_authority("user@host", 1) == NULL);
    CHECK(net_authority("", 1) == NULL);
    CHECK(net_authority("[::1", 1) == NULL);
    CHECK(mail_tls_parse("implicit") == MAIL_TLS_IMPLICIT);
    CHECK(mail_tls_parse("none") == MAIL_TLS_NONE);
    CHECK(mail_tls_parse(NULL) == MAIL_TLS_STARTTLS);
}

int main(void)
{
    mime_init();
    TEST_RUN(test_addr);
    TEST_RUN(test_build_ascii);
    TEST_RUN(test_build_utf8_roundtrip);
    TEST_RUN(test_build_header_injection);
    TEST_RUN(test_parse_multipart);
    TEST_RUN(test_parse_html_only);
    TEST_RUN(test_parse_garbage);
    TEST_RUN(test_html);
    TEST_RUN(test_clean);
    TEST_RUN(test_imap_parsers);
    TEST_RUN(test_authority);
    mime_fini();
    return TEST_DONE();
}
