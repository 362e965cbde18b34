#include "isthmus/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static FILE *log_fp;
static char *log_path;
static enum log_level log_min = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_open(const char *path, enum log_level level)
{
    log_min = level;
    if (!path || !*path) {
        log_close();
        return 0;
    }
    FILE *fp = fopen(path, "a");
    if (!fp)
        return -1;
    setvbuf(fp, NULL, _IOLBF, 0);
    log_close();
    log_fp = fp;
    log_path = xstrdup(path);
    return 0;
}

int log_reopen(void)
{
    if (!log_path)
        return 0;
    FILE *fp = fopen(log_path, "a");
    if (!fp)
        return -1;
    setvbuf(fp, NULL, _IOLBF, 0);
    fclose(log_fp);
    log_fp = fp;
    return 0;
}

void log_close(void)
{
    if (log_fp)
        fclose(log_fp);
    log_fp = NULL;
    free(log_path);
    log_path = NULL;
}

void log_set_level(enum log_level level)
{
    log_min = level;
}

int log_enabled(enum log_level level)
{
    return level >= log_min;
}

int log_level_parse(const char *s)
{
    for (size_t i = 0; i < ARRAY_LEN(level_names); i++)
        if (strcmp(s, level_names[i]) == 0)
            return (int)i;
    return -1;
}

void log_msg(enum log_level level, const char *tag, const char *fmt, ...)
{
    if (level < log_min)
        return;
    int saved = errno;
    FILE *fp = log_fp ? log_fp : stderr;
    char line[2048];
    size_t n = 0;
    if (log_fp) {
        struct timeval tv;
        struct tm tm;
        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03dZ ", (int)(tv.tv_usec / 1000));
    }
    n += (size_t)snprintf(line + n, sizeof line - n, "%s ", level_names[level]);
    if (tag && n < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n, "[%s] ", tag);
    if (n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof line - n, fmt, ap);
        va_end(ap);
    }
    /* Log lines never carry raw control characters from peers. */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            *p = ' ';
    fprintf(fp, "%s\n", line);
    errno = saved;
}
