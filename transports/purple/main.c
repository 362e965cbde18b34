/* main.c — isthmus-purple: every installed libpurple protocol plugin as a XEP-0100 gateway.
 * Run normally it is the gateway (gateway.c, on the framework's loop); run as
 * `isthmus-purple --backend FD [CERTDIR [USERDIR]]` it is one of the libpurple backend processes the
 * gateway spawns (backend.c), and `--describe [PRPL...]` lists the plugins for the gateway. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "purple_gw.h"

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--backend") == 0) {
        char *end;
        long fd = strtol(argv[2], &end, 10);
        if (*end || fd < 0 || fd > 65535)
            return 2;
        return backend_main((int)fd, argc >= 4 ? argv[3] : NULL, argc >= 5 ? argv[4] : NULL);
    }
    if (argc >= 2 && strcmp(argv[1], "--describe") == 0)
        return backend_describe((const char *const *)argv + 2, (size_t)argc - 2);
    static struct gw_driver driver = {
        .type = "purple",
        .gateway_type = "xmpp",
        .name = "libpurple gateway",
        .instructions = "Choose the protocol and enter the legacy account: username, password "
                        "and the protocol's settings. Contacts are name@this gateway (XEP-0106 "
                        "escaped); group chats are rooms: chat name@this gateway. Prompts "
                        "(e.g. certificate questions) come as messages from the gateway: "
                        "reply to answer.",
        .require_registration = true,
        .prompt_desc = "Enter the contact's legacy username",
        .prompt_label = "Legacy username",
    };
    purple_gw_fill_driver(&driver);
    return gw_main(&driver, argc, argv);
}
