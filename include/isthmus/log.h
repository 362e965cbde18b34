/* log.h — leveled logging with connection tags. Default: stderr, one line per event, no
 * timestamps when stderr is not a terminal's job (systemd adds them); with a log file, lines carry
 * an ISO 8601 timestamp. log_reopen() is for SIGHUP (logrotate). */
#ifndef ISTHMUS_LOG_H
#define ISTHMUS_LOG_H

#include "isthmus/util.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* path NULL: stderr. Returns 0, or -1 when the file cannot be opened (errno set). */
int log_open(const char *path, enum log_level level);
int log_reopen(void);
void log_close(void);
void log_set_level(enum log_level level);
int log_enabled(enum log_level level);
/* Parses "debug" / "info" / "warn" / "error"; returns -1 otherwise. */
int log_level_parse(const char *s);

/* tag: a short connection tag such as "c2s#12", or NULL. */
void log_msg(enum log_level level, const char *tag, const char *fmt, ...) PRINTF_LIKE(3, 4);

#define log_debug(tag, ...) (log_enabled(LOG_DEBUG) ? log_msg(LOG_DEBUG, tag, __VA_ARGS__) : (void)0)
#define log_info(tag, ...) log_msg(LOG_INFO, tag, __VA_ARGS__)
#define log_warn(tag, ...) log_msg(LOG_WARN, tag, __VA_ARGS__)
#define log_error(tag, ...) log_msg(LOG_ERROR, tag, __VA_ARGS__)

#endif
