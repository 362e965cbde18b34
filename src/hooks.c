#include "isthmus/hooks.h"

#include <stdlib.h>

struct hook_entry {
    int priority;
    hook_fn fn;
};

static struct hook_entry *table[HOOK_COUNT];
static size_t counts[HOOK_COUNT];

void hooks_add(enum hook_event ev, int priority, hook_fn fn)
{
    table[ev] = xrealloc(table[ev], (counts[ev] + 1) * sizeof *table[ev]);
    /* Insertion keeps the list sorted by descending priority, stable for equal ones. */
    size_t i = counts[ev];
    while (i > 0 && table[ev][i - 1].priority < priority) {
        table[ev][i] = table[ev][i - 1];
        i--;
    }
    table[ev][i] = (struct hook_entry){priority, fn};
    counts[ev]++;
}

int hooks_fire(enum hook_event ev, struct hook_ctx *ctx)
{
    for (size_t i = 0; i < counts[ev]; i++)
        if (table[ev][i].fn(ctx) == HOOK_DONE)
            return HOOK_DONE;
    return HOOK_PASS;
}

void hooks_clear(void)
{
    for (size_t i = 0; i < HOOK_COUNT; i++) {
        free(table[i]);
        table[i] = NULL;
        counts[i] = 0;
    }
}
