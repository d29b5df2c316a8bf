/* A growable text buffer for the pages crest writes (the admin endpoint's
 * /metrics and /debug pages, HTTP response heads): append and printf, one
 * allocation that doubles.  Out of memory sets failed and later appends do
 * nothing, so a writer checks once at the end.  Internal; one thread. */
#ifndef CREST_STRBUF_H
#define CREST_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct crest__strbuf {
    char *ptr;   /* NUL-terminated while len > 0 */
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed: the text is incomplete */
};

void crest__sb_init(struct crest__strbuf *sb);
void crest__sb_free(struct crest__strbuf *sb);
/* Room for at least more bytes; false (and failed) if out of memory. */
bool crest__sb_reserve(struct crest__strbuf *sb, size_t more);
void crest__sb_append(struct crest__strbuf *sb, const void *data, size_t len);
void crest__sb_puts(struct crest__strbuf *sb, const char *s);
void crest__sb_printf(struct crest__strbuf *sb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* One byte of a JSON string (RFC 8259) into out: quote, backslash and
 * control characters escaped (\n, \r, \t, else \u00XX), other bytes as
 * they are.  Returns the bytes written (1, 2 or 6).  doctor.c uses it
 * too. */
size_t crest__json_escape(unsigned char ch, char out[8]);
/* s as a JSON string, quotes included, escaped as above. */
void crest__sb_json_str(struct crest__strbuf *sb, const char *s, size_t len);

#endif
