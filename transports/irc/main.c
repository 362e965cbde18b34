/* main.c — isthmus-irc: the IRC gateway (XEP-0100) with channels as XEP-0045 rooms. The driver
 * table below is all there is; the framework (transports/common/gw.c) does the rest. */
#include "bridge.h"

/* XEP-0100 §4.1 / XEP-0077: optional for IRC (the MUC nick is used without registration). */
static const struct gw_field reg_fields[] = {
    {.var = "nick", .type = GW_TEXT, .label = "IRC nick", .legacy = "nick",
     .desc = "The nick used on every IRC network (default: your MUC nick)"},
    {.var = "password", .type = GW_PRIVATE, .label = "Password", .legacy = "password",
     .desc = "SASL PLAIN when the server offers it, else NickServ IDENTIFY"},
    {.var = "realname", .type = GW_TEXT, .label = "Real name", .legacy = NULL,
     .desc = "Shown in WHOIS"},
};


static const struct gw_field settings[] = {
    {.var = "quit_message", .type = GW_TEXT, .label = "QUIT message", .def = "Gone"},
    {.var = "archive", .type = GW_BOOL, .label = "Keep an archive of my IRC channels (XEP-0313)",
     .def = "true"},
};

static const char *const features[] = {"http://jabber.org/protocol/muc", NULL};

int main(int argc, char **argv)
{
    struct gw_driver driver = {
        .type = "irc",
        .gateway_type = "irc",
        .name = "IRC gateway",
        .extra_category = "conference",
        .extra_type = "irc",
        .features = features,
        .reg_fields = reg_fields,
        .n_reg_fields = sizeof reg_fields / sizeof reg_fields[0],
        .instructions = "Registration is optional: choose the IRC nick (and a password for "
                        "SASL or NickServ) used on every network. Join #channel%server@this "
                        "gateway from a MUC client; IRC users are nick%server@this gateway.",
        .settings = settings,
        .n_settings = sizeof settings / sizeof settings[0],
        .require_registration = false,
        .prompt_desc = "Enter an IRC nick on a server, as nick%server",
        .prompt_label = "IRC nick on a server, as nick%server",
    };
    bridge_fill_driver(&driver);
    return gw_main(&driver, argc, argv);
}
