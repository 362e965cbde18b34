/* sms.h — the SMS gateway (isthmus-sms): XEP-0100 to phone numbers through an SMS provider.
 *
 * Layers, each in its own file:
 *  - phone.c: E.164 normalisation of typed numbers, GSM 03.38 (GSM-7) detection and SMS part
 *    counting, splitting of long texts, form/query parsing and the Twilio webhook signature;
 *  - http.c: the HTTP/1.1 listener (libmicrohttpd driven by the gateway's event loop through
 *    MHD's epoll fd) that receives inbound SMS and delivery reports;
 *  - provider.c: libcurl's multi socket API on the same loop, and the two provider backends
 *    (Kannel sendsms, Twilio-style Messages REST API) behind one send call with retries;
 *  - sms.c: the driver: registration with an SMS verification code, messages both ways,
 *    delivery reports mapped to XEP-0184 receipts or message errors, contacts and prompts. */
#ifndef ISTHMUS_SMS_H
#define ISTHMUS_SMS_H

#include <stdbool.h>
#include <stddef.h>

#include "gw.h"

/* ---- phone.c ---- */
#define PHONE_MAX 17 /* "+" + 15 digits + NUL */

/* Normalises a typed number to E.164 ("+15550002"): spaces, tabs, dashes, dots, slashes and
 * parentheses are dropped; a leading "+" is kept; "00" becomes "+"; a leading national "0", or a
 * number without any prefix, gets "+<country>" (the national "0" dropped). The result must have
 * 7..15 digits (ITU-T E.164 §6: at most 15) and may not start with 0. country: 1..3 digits.
 * Returns 0, or -1 when in is not a phone number. */
int phone_normalize(const char *in, const char *country, char out[PHONE_MAX]);

/* Is every character of the UTF-8 text in the GSM 03.38 default alphabet or its extension
 * table? (Else the SMS must be sent as UCS-2.) */
bool sms_is_gsm7(const char *text);
/* The number of SMS parts text needs: GSM-7 160 septets in one part, 153 per part of a
 * concatenated message (escape characters count 2); UCS-2 70 / 67 UTF-16 units. 0 for "". */
unsigned sms_parts(const char *text);
/* Splits text into pieces of at most max_chars code points (whole UTF-8 sequences); returns the
 * number of pieces, the malloc'd array in *out (each malloc'd). */
size_t sms_split(const char *text, size_t max_chars, char ***out);
void sms_strv_free(char **v, size_t n);

/* Parses application/x-www-form-urlencoded data (also a URL query): key=value pairs joined by
 * '&', '+' for space, %XX escapes. Returns 0 and the pairs in *out (gw_kv_free), or -1 when
 * malformed (bad escape, a NUL, more than max pairs). */
int sms_form_parse(const char *s, size_t len, size_t max, struct gw_kv **out, size_t *n);
/* %XX-escapes everything but unreserved characters (RFC 3986 §2.3); malloc'd. */
char *sms_url_escape(const char *s);
/* Twilio's request signature: base64(HMAC-SHA1(token, url + each POST parameter, sorted by
 * name, as name followed by value)). malloc'd. */
char *sms_twilio_signature(const char *token, const char *url, const struct gw_kv *params,
                           size_t n);
/* Constant-time comparison of two NUL-terminated strings (false when either is NULL). */
bool sms_secure_eq(const char *a, const char *b);

/* ---- http.c: the listener ---- */
struct http_request {
    const char *method;   /* "GET", "POST" */
    const char *path;     /* without the query */
    const char *uri;      /* path and query as received */
    struct gw_kv *query;  /* decoded query parameters */
    size_t n_query;
    struct gw_kv *form;   /* decoded form body (POST application/x-www-form-urlencoded) */
    size_t n_form;
    const char *body;     /* the raw body (NUL-terminated), may be "" */
    size_t body_len;
    const char *signature; /* X-Twilio-Signature header, or NULL */
};
/* Answers a complete request: returns the HTTP status, appends the body to out and sets
 * *content_type (a static string). */
typedef unsigned (*http_handler_fn)(void *ud, const struct http_request *req, struct buf *out,
                                    const char **content_type);

#define HTTP_MAX_BODY 16384

struct http_listener;
/* Listens on host:port (a numeric address or a name) on loop; NULL on failure (logged). */
struct http_listener *http_listener_new(struct ev_loop *loop, const char *host, unsigned port,
                                        http_handler_fn fn, void *ud);
void http_listener_free(struct http_listener *l);
unsigned http_listener_port(const struct http_listener *l);

/* ---- provider.c ---- */
enum sms_result {
    SMS_OK,        /* accepted by the provider */
    SMS_REJECTED,  /* refused for good (bad number, credentials, ...): no retry */
    SMS_FAILED,    /* transient failures until the retries ran out */
};
/* done: result, a human text (provider answer or transfer error). */
typedef void (*sms_send_fn)(void *ud, enum sms_result r, const char *text);

struct sms_provider;
struct sms_provider_opts {
    const char *kind;      /* "kannel" | "twilio" */
    const char *url;
    const char *username, *password;
    const char *public_url; /* base URL of our listener as the provider reaches it */
    const char *secret;
    unsigned max_parts;
    unsigned timeout_ms;   /* per transfer (default 20000) */
    unsigned retries;      /* extra attempts after a transient failure (default 2) */
    unsigned retry_ms;     /* first retry delay, doubled each time (default 2000) */
};
struct sms_provider *sms_provider_new(struct ev_loop *loop, const struct sms_provider_opts *o);
void sms_provider_free(struct sms_provider *p);
/* Sends text from → to (E.164; from may be NULL for the provider's default); ref (may be NULL)
 * is our correlation token put into the delivery report URL. Returns the number of provider
 * messages the text was split into (≥ 1; done is called once for all of them), or 0 when the
 * text cannot be sent (too long: *why set), in which case done is not called. */
unsigned sms_provider_send(struct sms_provider *p, const char *from, const char *to,
                           const char *text, const char *ref, sms_send_fn done, void *ud,
                           const char **why);
/* Forgets every pending callback with this ud (its owner goes away). */
void sms_provider_cancel(struct sms_provider *p, void *ud);

/* ---- sms.c ---- */
void sms_fill_driver(struct gw_driver *d);

#endif
