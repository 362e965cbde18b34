#include "isthmus/hmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "isthmus/util.h"

static char tombstone;
#define HMAP_TOMBSTONE (&tombstone)

/* FNV-1a; keys are JIDs and IP addresses we control the shape of, and the table is resized
 * before it gets dense, so a simple hash suffices. The per-process seed keeps a peer from
 * precomputing colliding keys. */
static uint64_t hmap_seed;

static uint64_t hash(const char *s)
{
    if (!hmap_seed) {
        random_bytes(&hmap_seed, sizeof hmap_seed);
        hmap_seed |= 1;
    }
    uint64_t h = 1469598103934665603ULL ^ hmap_seed;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

void hmap_init(struct hmap *m)
{
    memset(m, 0, sizeof *m);
}

void hmap_fini(struct hmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != HMAP_TOMBSTONE)
            free(m->slots[i].key);
    free(m->slots);
    hmap_init(m);
}

static struct hmap_slot *find(const struct hmap *m, const char *key)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
        struct hmap_slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != HMAP_TOMBSTONE && strcmp(s->key, key) == 0)
            return s;
    }
}

void *hmap_get(const struct hmap *m, const char *key)
{
    struct hmap_slot *s = find(m, key);
    return s ? s->value : NULL;
}

static void grow(struct hmap *m)
{
    size_t cap = m->cap ? m->cap : 16;
    while (cap * 3 / 4 <= m->used * 2 + 1)
        cap *= 2;
    struct hmap_slot *old = m->slots;
    size_t oldcap = m->cap;
    m->slots = xcalloc(cap, sizeof *m->slots);
    m->cap = cap;
    m->filled = m->used;
    for (size_t i = 0; i < oldcap; i++) {
        char *k = old[i].key;
        if (!k || k == HMAP_TOMBSTONE)
            continue;
        size_t j = hash(k) & (cap - 1);
        while (m->slots[j].key)
            j = (j + 1) & (cap - 1);
        m->slots[j] = old[i];
    }
    free(old);
}

void hmap_put(struct hmap *m, const char *key, void *value)
{
    struct hmap_slot *s = find(m, key);
    if (s) {
        s->value = value;
        return;
    }
    if ((m->filled + 1) * 4 >= m->cap * 3)
        grow(m);
    size_t mask = m->cap - 1;
    size_t i = hash(key) & mask;
    while (m->slots[i].key && m->slots[i].key != HMAP_TOMBSTONE)
        i = (i + 1) & mask;
    if (!m->slots[i].key)
        m->filled++;
    m->slots[i].key = xstrdup(key);
    m->slots[i].value = value;
    m->used++;
}

void *hmap_del(struct hmap *m, const char *key)
{
    struct hmap_slot *s = find(m, key);
    if (!s)
        return NULL;
    void *v = s->value;
    free(s->key);
    s->key = HMAP_TOMBSTONE;
    s->value = NULL;
    m->used--;
    return v;
}

int hmap_next(const struct hmap *m, size_t *i, const char **key, void **value)
{
    for (; *i < m->cap; (*i)++) {
        struct hmap_slot *s = &m->slots[*i];
        if (s->key && s->key != HMAP_TOMBSTONE) {
            *key = s->key;
            *value = s->value;
            (*i)++;
            return 1;
        }
    }
    return 0;
}
