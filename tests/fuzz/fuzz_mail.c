/* libFuzzer target: the mail gateway's parsers of untrusted input — mime_parse (GMime 3.0, RFC
 * 5322 / RFC 2045–2047) of an incoming mail, mime_html_to_text, mime_clean_text, the IMAP STATUS
 * and UID SEARCH response parsers (RFC 3501 §7.2.5, §7.3.1), mime_addr_valid and net_authority,
 * and mime_build of fuzzed header/body text parsed back.
 * Properties checked: every text the gateway puts into XML is valid UTF-8 without NUL or C0
 * controls other than tab and LF (XML 1.0 §2.2), the one-line header fields have no controls at
 * all, cleaning is idempotent, SEARCH results are strictly ascending, above min and at most max,
 * an accepted address has one '@' and no spaces or controls. */
#include <gmime/gmime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"
#include "mail.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    mime_init();
    return 0;
}

/* XML-safe text: valid UTF-8, no C0 controls but tab/LF (when lines), no DEL, no U+FFFE/FFFF. */
static void check_xml(const char *s, bool lines)
{
    if (!s)
        return;
    size_t n = strlen(s);
    if (!utf8_valid(s, n))
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0x7f || (c < 0x20 && !(lines && (c == '\t' || c == '\n'))))
            abort();
        if (c == 0xef && i + 2 < n && (unsigned char)s[i + 1] == 0xbf &&
            ((unsigned char)s[i + 2] == 0xbe || (unsigned char)s[i + 2] == 0xbf))
            abort();
    }
}

static void check_clean(const char *data, size_t size)
{
    char *c = mime_clean_text(data, size);
    check_xml(c, true);
    char *c2 = mime_clean_text(c, strlen(c));
    if (strcmp(c, c2) != 0)
        abort();
    free(c2);
    free(c);
}

static void check_parse(const char *data, size_t size)
{
    struct mime_in m;
    if (mime_parse(data, size, &m) != 0) {
        if (m.text || m.from || m.subject)
            abort();
        return;
    }
    if (!m.text)
        abort();
    check_xml(m.text, true);
    check_xml(m.from, false);
    check_xml(m.from_name, false);
    check_xml(m.subject, false);
    check_xml(m.message_id, false);
    check_xml(m.thread_root, false);
    check_xml(m.references, false);
    check_xml(m.attachments, false);
    if (m.thread_root && strchr(m.thread_root, ' '))
        abort();
    if (m.references && m.thread_root &&
        strncmp(m.references, m.thread_root, strlen(m.thread_root)) != 0)
        abort();
    mime_in_fini(&m);
}

static void check_imap(const char *s, uint32_t min, size_t max)
{
    uint32_t v = 0, nx = 0;
    (void)net_parse_status(s, &v, &nx);
    uint32_t uids[16];
    if (max > 16)
        max = 16;
    size_t n = net_parse_search(s, min, uids, max);
    if (n > max)
        abort();
    for (size_t i = 0; i < n; i++)
        if (uids[i] <= min || (i && uids[i] <= uids[i - 1]))
            abort();
}

static void check_addr(const char *s)
{
    if (mime_addr_valid(s)) {
        const char *at = strchr(s, '@');
        if (!at || strchr(at + 1, '@') || at == s || !at[1])
            abort();
        for (const char *p = s; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                abort();
    }
    char *a = net_authority(s, 993);
    if (a) {
        const char *colon = strrchr(a, ':');
        if (!colon || !colon[1] || strspn(colon + 1, "0123456789") != strlen(colon + 1))
            abort();
        free(a);
    }
}

/* Builds a mail whose subject and body are the fuzzed text and reads it back. */
static void check_build(const char *s)
{
    char *t = mime_clean_text(s, strlen(s));
    size_t half = strlen(t) / 2;
    while (half && ((unsigned char)t[half] & 0xc0) == 0x80)
        half--;
    char *subject = xstrndup(t, half);
    struct mime_out o = {
        .from = "alice@example.org",
        .from_name = subject,
        .to = "bob@example.net",
        .subject = subject,
        .body = t + half,
        .message_id = "id1@example.org",
        .in_reply_to = "id0@example.org",
        .references = "root@example.org id0@example.org",
        .date = 1700000000,
    };
    size_t len = 0;
    char *raw = mime_build(&o, &len);
    if (raw) {
        struct mime_in m;
        if (mime_parse(raw, len, &m) != 0)
            abort();
        check_xml(m.text, true);
        check_xml(m.subject, false);
        if (!m.from || strcmp(m.from, "alice@example.org") != 0)
            abort();
        mime_in_fini(&m);
        free(raw);
    }
    free(subject);
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint32_t min = data[0] < 128 ? data[0] : (uint32_t)data[0] << 24;
    size_t max = data[0] & 15;
    data++;
    size--;
    const char *d = (const char *)data;
    char *s = xstrndup(d, size);

    check_parse(d, size);
    check_clean(d, size);
    char *h = mime_html_to_text(d, size);
    check_xml(h, true);
    free(h);
    check_imap(s, min, max);
    check_addr(s);
    check_build(s);
    free(s);
    return 0;
}
