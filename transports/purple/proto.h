/* proto.h — the line protocol between isthmus-purple's gateway process and its libpurple backend
 * processes (one socketpair per backend).
 *
 * A message is one line: fields separated by TAB, ended by LF. Each field is percent-escaped: '%',
 * TAB, LF, CR and NUL become %25, %09, %0A, %0D, %00 (any other %XX is decoded too). The first
 * field names the message; the second is usually the user's bare JID (the account key). A line is
 * at most PPROTO_MAX_LINE bytes; a peer that sends a longer one is a broken peer (the reader
 * drops the connection). The messages are listed in backend.c (commands) and gateway.c (events). */
#ifndef ISTHMUS_PURPLE_PROTO_H
#define ISTHMUS_PURPLE_PROTO_H

#include <stddef.h>

#define PPROTO_MAX_LINE (1024 * 1024)
#define PPROTO_MAX_FIELDS 64

/* Appends the escaped field s (with a leading TAB unless *len is 0) to the malloc'd buffer
 * *buf of length *len (capacity *cap). */
void pproto_add(char **buf, size_t *len, size_t *cap, const char *s);
/* Builds one line (LF-terminated, malloc'd) from n fields; *out_len gets its length. */
char *pproto_line(const char *const *fields, size_t n, size_t *out_len);
/* Builds a record of n fields (malloc'd, no LF): a line to be sent as ONE field of another line
 * (escaped again there), which the reader splits again with pproto_split. */
char *pproto_record(const char *const *fields, size_t n);
/* Splits line (without its LF; modified in place) into at most max fields, unescaping each;
 * returns the number of fields. A field cut off by max keeps its TABs escaped-decoded as-is. */
size_t pproto_split(char *line, char **fields, size_t max);
/* Finds the next complete line in buf[0..len): returns its length (without LF) and sets *next to
 * the offset after the LF; returns (size_t)-1 when there is no complete line. */
size_t pproto_next_line(const char *buf, size_t len, size_t *next);

#endif
