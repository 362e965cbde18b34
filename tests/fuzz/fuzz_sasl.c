/* fuzz_sasl.c — libFuzzer target for the SASL server (sasl_new + sasl_step).
 *
 * Input: byte 0 picks the mechanism, byte 1 the channel and mode, then messages, each a 2-byte
 * big-endian length and that many bytes. In "assisted" mode the harness first sends a valid SCRAM
 * client-first message and replaces "@N" in the fuzzed messages with the server's combined nonce,
 * so the client-final parser and proof check are reached. */
#include "isthmus/sasl.h"
#include "isthmus/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Test-only hook in src/sasl.c: a fixed server nonce, so seeds can carry valid SCRAM proofs and
 * the fuzzer explores the success path too ("fuzz" + this, with assisted mode). */
void sasl_test_set_nonce(const char *suffix);

static const char *const mechs[] = {
    "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "X-UNKNOWN"};
static const unsigned char exporter[32] = "exporter-exporter-exporter-expo";
static const unsigned char endpoint[32] = "endpoint-endpoint-endpoint-endp";

static int creds_cb(void *ud, const char *username, enum scram_hash h, struct scram_creds *out)
{
    static struct scram_creds fixed[2];
    static bool ready;
    (void)ud;
    if (!ready) {
        static const unsigned char salt[] = "fuzz-salt";
        if (scram_derive(SCRAM_SHA1, "pencil", salt, 9, 2, &fixed[0]) != 0 ||
            scram_derive(SCRAM_SHA256, "pencil", salt, 9, 2, &fixed[1]) != 0)
            abort();
        ready = true;
    }
    if (strcmp(username, "broken") == 0)
        return -1;
    if (strcmp(username, "user") != 0 && strcmp(username, "a,b=c") != 0)
        return 1;
    if (strcmp(username, "a,b=c") == 0 && h == SCRAM_SHA256)
        return 1; /* exercises PLAIN's SHA-1 fallback */
    *out = fixed[h == SCRAM_SHA256];
    return 0;
}

/* Replaces each "@N" in msg with nonce. */
static void substitute(struct buf *b, const uint8_t *msg, size_t len, const char *nonce)
{
    for (size_t i = 0; i < len; i++) {
        if (nonce && msg[i] == '@' && i + 1 < len && msg[i + 1] == 'N') {
            buf_puts(b, nonce);
            i++;
        } else {
            buf_putc(b, (char)msg[i]);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool init;
    if (!init) {
        sasl_test_set_nonce("fuzzserver");
        init = true;
    }
    if (size < 2)
        return 0;
    const char *mech = mechs[data[0] % ARRAY_LEN(mechs)];
    uint8_t flags = data[1];
    struct sasl_channel ch = {
        .tls = flags & 1,
        .exporter = flags & 2 ? exporter : NULL,
        .exporter_len = flags & 2 ? sizeof(exporter) : 0,
        .endpoint = flags & 4 ? endpoint : NULL,
        .endpoint_len = flags & 4 ? sizeof(endpoint) : 0,
    };
    bool allow_plain = flags & 8;
    bool assisted = flags & 16;
    data += 2;
    size -= 2;

    const char *names[8];
    size_t n = sasl_mechanisms(&ch, allow_plain, names, ARRAY_LEN(names));
    n += sasl_channel_bindings(&ch, names, ARRAY_LEN(names));
    (void)n;

    struct sasl_session *s = sasl_new(mech, &ch, allow_plain, creds_cb, NULL);
    if (!s)
        return 0;

    char *nonce = NULL;
    unsigned char *out = NULL;
    size_t out_len = 0;
    const char *cond = NULL;
    enum sasl_status st = SASL_CONTINUE;
    if (assisted) {
        const char *first = strncmp(mech, "SCRAM", 5) != 0 ? "\0user\0pencil"
                            : strstr(mech, "PLUS")         ? "p=tls-exporter,,n=user,r=fuzz"
                                                           : "n,,n=user,r=fuzz";
        size_t first_len = first[0] ? strlen(first) : 12;
        st = sasl_step(s, (const unsigned char *)first, first_len, &out, &out_len, &cond);
        if (st == SASL_CONTINUE && out && out_len > 2 && out[0] == 'r' && out[1] == '=') {
            size_t nl = 2;
            while (nl < out_len && out[nl] != ',')
                nl++;
            nonce = xstrndup((const char *)out + 2, nl - 2);
        }
        free(out);
        out = NULL;
    }

    while (size >= 2) {
        size_t len = (size_t)data[0] << 8 | data[1];
        data += 2;
        size -= 2;
        if (len > size)
            len = size;
        struct buf msg;
        buf_init(&msg);
        substitute(&msg, data, len, nonce);
        data += len;
        size -= len;
        st = sasl_step(s, (const unsigned char *)msg.data, msg.len, &out, &out_len, &cond);
        buf_fini(&msg);
        if (st == SASL_FAIL && !cond)
            abort();
        if (st == SASL_OK) {
            const char *u = sasl_username(s);
            if (!u)
                abort();
            const char *az = sasl_authzid(s);
            (void)az;
        }
        if (out_len && !out)
            abort();
        if (out && memchr(out, '\0', out_len))
            abort();
        free(out);
        out = NULL;
    }
    free(nonce);
    sasl_free(s);
    return 0;
}
