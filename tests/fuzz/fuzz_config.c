/* libFuzzer target: the configuration parser must answer any bytes with a result or an error
 * message, never a crash or a leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/config.h"
#include "isthmus/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = xstrndup((const char *)data, size);
    struct config cfg;
    char err[512];
    if (config_parse("fuzz.conf", text, "/tmp", &cfg, err, sizeof err) == 0)
        config_fini(&cfg);
    else if (!memchr(err, '\0', sizeof err) || !*err)
        abort(); /* an error must come with a message */
    free(text);
    return 0;
}
