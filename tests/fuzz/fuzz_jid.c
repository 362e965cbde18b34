/* libFuzzer target: JID parsing and preparation, XEP-0106 escaping. A prepared JID must parse
 * again to itself (preparation is idempotent). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/jid.h"
#include "isthmus/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = xstrndup((const char *)data, size);
    struct jid j;
    if (jid_parse(s, &j) == 0) {
        char *full = jid_to_string(&j);
        struct jid again;
        if (jid_parse(full, &again) != 0)
            abort();
        char *full2 = jid_to_string(&again);
        if (strcmp(full, full2) != 0)
            abort();
        free(full2);
        jid_fini(&again);
        free(full);
        jid_fini(&j);
    }
    char *esc = jid_escape_local(s);
    if (esc) {
        char *back = jid_unescape_local(esc);
        free(back);
        free(esc);
    }
    free(s);
    if (size % 64 == 0)
        jid_cache_clear();
    return 0;
}
