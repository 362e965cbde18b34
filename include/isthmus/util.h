/* util.h — allocation that aborts on OOM, growable byte buffers, base64, randomness, clocks.
 *
 * Allocation helpers never return NULL: running out of memory ends the process, so callers do not
 * check. Sizes derived from the network must be bounded by the caller *before* allocating. */
#ifndef ISTHMUS_UTIL_H
#define ISTHMUS_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);              /* xstrdup(NULL) == NULL */
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

/* A growable byte buffer. Invariant: data[len] == '\0' whenever data != NULL, so a buffer holding
 * text can be used as a C string. len <= cap. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_fini(struct buf *b);                         /* frees data; buffer is reusable after init */
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
void buf_consume(struct buf *b, size_t n);            /* drop n bytes from the front */
void buf_reset(struct buf *b);                        /* len = 0, keeps capacity */
char *buf_take(struct buf *b);                        /* takes ownership of data ("" if empty) */

/* Base64 (RFC 4648 §4, with padding). Decoding is strict: whitespace or bad padding → -1. */
char *base64_encode(const unsigned char *in, size_t len);
int base64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len);

void random_bytes(void *out, size_t n);               /* CSPRNG (OpenSSL); aborts on failure */
char *random_id(size_t nchars);                       /* [A-Za-z0-9] string of nchars */

uint64_t now_ms(void);                                /* CLOCK_MONOTONIC in milliseconds */
int64_t wall_time(void);                              /* seconds since the epoch */
/* XEP-0082 DateTime in UTC: "2026-11-21T13:13:18Z" (or with .mmm when millis). */
void format_datetime(char out[32], int64_t unix_seconds);

bool str_eq(const char *a, const char *b);            /* NULL-safe strcmp() == 0 */
bool utf8_valid(const char *s, size_t len);

#endif
