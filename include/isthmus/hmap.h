/* hmap.h — a string-keyed hash map (open addressing, linear probing, tombstones). Keys are
 * copied; values are borrowed pointers the map never frees. */
#ifndef ISTHMUS_HMAP_H
#define ISTHMUS_HMAP_H

#include <stddef.h>

struct hmap_slot {
    char *key; /* NULL: empty; HMAP_TOMBSTONE: deleted */
    void *value;
};

struct hmap {
    struct hmap_slot *slots;
    size_t cap;  /* power of two */
    size_t used; /* live keys */
    size_t filled; /* live + tombstones */
};

void hmap_init(struct hmap *m);
void hmap_fini(struct hmap *m); /* frees keys, not values */
void *hmap_get(const struct hmap *m, const char *key);
void hmap_put(struct hmap *m, const char *key, void *value); /* replaces */
void *hmap_del(struct hmap *m, const char *key);              /* returns the old value */
/* Iteration: for (size_t i = 0; hmap_next(m, &i, &k, &v);) — do not modify while iterating. */
int hmap_next(const struct hmap *m, size_t *i, const char **key, void **value);

#endif
