/* main.c — isthmus-irc: the IRC gateway (XEP-0100) with channels as XEP-0045 rooms. The driver
 * table below is all there is; the framework (transports/common/gw.c) does the rest. */
#include "bridge.h"

#include <stdlib.h>
#include <string.h>

#include "certfp.h"
#include "isthmus/log.h"
#include "isthmus/util.h"

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
    {.var = "sasl_external", .type = GW_BOOL,
     .label = "Log in with my client certificate (SASL EXTERNAL, CertFP) on TLS networks",
     .def = "false",
     .desc = "Register its fingerprint first (command \"certificate\"; NickServ CERT ADD)"},
};

/* Ad-hoc "certificate": the user's client certificate for SASL EXTERNAL (made if needed) and
 * its fingerprints, to register with the network's services (Libera.Chat: NickServ CERT ADD,
 * SHA-512; ngircd and others: SHA-256). */
static char *cmd_certificate(struct gw *gw, struct gw_user *u, const struct gw_kv *values,
                             size_t n, const char **error)
{
    (void)values;
    (void)n;
    char err[256];
    char *path = certfp_for_user(gw, u->jid, err, sizeof err);
    char sha256[CERTFP_SHA256_HEX], sha512[CERTFP_SHA512_HEX];
    if (!path || certfp_fingerprints(path, sha256, sha512, err, sizeof err) < 0) {
        log_error("irc", "%s: client certificate: %s", u->jid, err);
        free(path);
        *error = "internal-server-error";
        return NULL;
    }
    free(path);
    char *v = gw_user_setting(gw, u, "sasl_external");
    bool on = v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0);
    free(v);
    return xasprintf("Your IRC client certificate (CN=%s)\n"
                     "SHA-256: %s\n"
                     "SHA-512: %s\n"
                     "SASL EXTERNAL is %s (setting \"sasl_external\"). To register the "
                     "certificate with a network's services, send \"PRIVMSG NickServ :CERT ADD "
                     "<fingerprint>\" (Libera.Chat takes the SHA-512 one; with the setting on, "
                     "CERT ADD alone adds the certificate of the connection) as a message to "
                     "the network, e.g. irc.libera.chat@%s, while identified with your "
                     "password.",
                     u->jid, sha256, sha512, on ? "on" : "off", gw_domain(gw));
}

static const struct gw_command commands[] = {
    {.node = "certificate", .name = "Client certificate (SASL EXTERNAL)",
     .execute = cmd_certificate},
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
        .commands = commands,
        .n_commands = sizeof commands / sizeof commands[0],
        .require_registration = false,
        .prompt_desc = "Enter an IRC nick on a server, as nick%server",
        .prompt_label = "IRC nick on a server, as nick%server",
    };
    bridge_fill_driver(&driver);
    return gw_main(&driver, argc, argv);
}
