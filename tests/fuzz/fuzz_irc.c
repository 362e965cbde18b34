/* libFuzzer target: the IRC client's input path — line splitting (at input-chosen read
 * boundaries), decoding to UTF-8, parsing, formatting stripping and CTCP ACTION detection.
 * Every line handed over must be valid UTF-8 without NUL, CR or LF, and so must every parameter
 * and every stripped text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "irc.h"
#include "isthmus/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_text(const char *s)
{
    size_t n = strlen(s);
    if (!utf8_valid(s, n) || memchr(s, '\r', n) || memchr(s, '\n', n))
        abort();
}

static bool on_line(void *ud, char *line)
{
    (void)ud;
    check_text(line);
    if (strlen(line) > 2 * IRC_MAX_LINE)
        abort();
    struct irc_msg m;
    if (irc_parse_line(line, &m) != 0)
        return true;
    if (!*m.command || m.nparams < 0 || m.nparams > IRC_MAX_PARAMS)
        abort();
    check_text(m.prefix);
    check_text(m.nick);
    check_text(m.userhost);
    for (int i = 0; i < m.nparams; i++) {
        check_text(m.params[i]);
        char *plain = irc_strip_formatting(m.params[i]);
        check_text(plain);
        if (strchr(plain, '\001') || strchr(plain, '\002') || strchr(plain, '\003'))
            abort();
        free(plain);
        size_t al = 0;
        const char *a = irc_ctcp_action(m.params[i], &al);
        if (a && (a < m.params[i] || a + al > m.params[i] + strlen(m.params[i])))
            abort();
        char modes[8];
        const char *nick = irc_names_entry(NULL, m.params[i], modes, sizeof modes);
        if (strlen(modes) >= sizeof modes || nick < m.params[i])
            abort();
        if (irc_casecmp(NULL, m.params[i], m.params[i]) != 0)
            abort();
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    /* The first byte picks the read size, so boundaries fall everywhere. */
    size_t step = (size_t)data[0] * 7 + 1;
    data++;
    size--;
    char *whole = irc_to_utf8((const char *)data, size);
    check_text(whole[0] ? whole : "");
    if (strlen(whole) > 2 * size)
        abort();
    free(whole);
    struct irc_line_reader r;
    irc_line_reader_init(&r);
    for (size_t off = 0; off < size; off += step)
        irc_line_reader_feed(&r, (const char *)data + off, size - off < step ? size - off : step,
                             on_line, NULL);
    if (r.len > IRC_MAX_LINE || r.cap > IRC_MAX_LINE)
        abort();
    irc_line_reader_fini(&r);
    return 0;
}
