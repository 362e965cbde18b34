/* main.c — isthmus-mail: the email gateway (XEP-0100, gateway type smtp). Users register their
 * mailbox (IMAP + SMTP); alice\40example.org@GATEWAY is the address alice@example.org. The driver
 * table is here; the callbacks are in driver.c. */
#include "mail.h"

static const char *const tls_options[] = {
    "starttls", "STARTTLS (IMAP 143, SMTP submission 587)",
    "implicit", "Implicit TLS (IMAPS 993, SMTPS 465)",
    "none",     "No TLS (only where the administrator allows it)",
    NULL,
};

/* XEP-0077 / XEP-0100 §4.1: the user's own mailbox. */
static const struct gw_field reg_fields[] = {
    {.var = "email",
     .type = GW_TEXT,
     .label = "Email address",
     .legacy = "email",
     .required = true,
     .desc = "Your address, used as the From of the mail you send"},
    {.var = "name",
     .type = GW_TEXT,
     .label = "Your name",
     .legacy = "name",
     .desc = "Shown with your address in the From header"},
    {.var = "imap_server",
     .type = GW_TEXT,
     .label = "IMAP server",
     .required = true,
     .desc = "host or host:port (default port 143 with STARTTLS, 993 with implicit TLS)"},
    {.var = "smtp_server",
     .type = GW_TEXT,
     .label = "SMTP server",
     .required = true,
     .desc = "host or host:port (default port 587 with STARTTLS, 465 with implicit TLS)"},
    {.var = "username",
     .type = GW_TEXT,
     .label = "Mailbox user name",
     .legacy = "username",
     .desc = "For IMAP and SMTP (default: the email address)"},
    {.var = "password",
     .type = GW_PRIVATE,
     .label = "Mailbox password",
     .legacy = "password",
     .required = true},
    {.var = "tls", .type = GW_LIST, .label = "TLS", .def = "starttls", .options = tls_options},
};

int main(int argc, char **argv)
{
    struct gw_driver driver = {
        .type = "mail",
        .gateway_type = "smtp",
        .name = "Email gateway",
        .reg_fields = reg_fields,
        .n_reg_fields = sizeof reg_fields / sizeof reg_fields[0],
        .instructions = "Enter your mailbox: your address, the IMAP and SMTP servers and the "
                        "login. New mail in your INBOX arrives as messages from "
                        "name\\40domain@this gateway; write to such an address to send a mail.",
        .require_registration = true,
        .prompt_desc = "Enter an email address",
        .prompt_label = "Email address",
    };
    mail_fill_driver(&driver);
    return gw_main(&driver, argc, argv);
}
