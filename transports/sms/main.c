/* main.c — isthmus-sms: the SMS gateway (XEP-0100). The driver table below is all there is; the
 * framework (transports/common/gw.c) does the rest, sms.c the SMS side. */
#include "sms.h"

static const struct gw_field reg_fields[] = {
    {.var = "phone", .type = GW_TEXT, .label = "Your mobile number", .legacy = "phone",
     .required = true,
     .desc = "In international form (+15550100) or as dialled locally; SMS to it reach you"},
    {.var = "code", .type = GW_TEXT, .label = "Verification code", .legacy = NULL,
     .desc = "Leave empty at first: a code is sent by SMS to the number; then submit again "
             "with it"},
};

int main(int argc, char **argv)
{
    struct gw_driver driver = {
        .type = "sms",
        .gateway_type = "sms",
        .name = "SMS gateway",
        .reg_fields = reg_fields,
        .n_reg_fields = sizeof reg_fields / sizeof reg_fields[0],
        .instructions = "Enter your mobile number. A verification code is sent to it by SMS "
                        "(unless the gateway does not verify numbers): submit the form again "
                        "with the code. Then write to +<country><number>@this gateway.",
        .require_registration = true,
        .prompt_desc = "Enter a phone number",
        .prompt_label = "Phone number",
    };
    sms_fill_driver(&driver);
    return gw_main(&driver, argc, argv);
}
