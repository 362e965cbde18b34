/* test.h — a tiny unit-test harness. Each test binary calls TEST_RUN(fn) for every test and ends
 * with TEST_DONE(), which prints "N passed, N failed" and returns the exit status. */
#ifndef ISTHMUS_TEST_H
#define ISTHMUS_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failed_checks;
static int tests_passed, tests_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
            test_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                   \
            fprintf(stderr, "  FAIL %s:%d: %s == %s (\"%s\" vs \"%s\")\n", __FILE__, __LINE__, #a, \
                    #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                   \
            test_failed_checks++;                                                                  \
        }                                                                                          \
    } while (0)

#define TEST_RUN(fn)                                                                               \
    do {                                                                                           \
        int before_ = test_failed_checks;                                                          \
        fn();                                                                                      \
        if (test_failed_checks == before_) {                                                       \
            tests_passed++;                                                                        \
        } else {                                                                                   \
            tests_failed++;                                                                        \
            fprintf(stderr, "FAILED %s\n", #fn);                                                   \
        }                                                                                          \
    } while (0)

#define TEST_DONE()                                                                                \
    (printf("%s: %d passed, %d failed\n", __FILE__, tests_passed, tests_failed), tests_failed != 0)

#endif
