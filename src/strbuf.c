/* Growable text buffer: see strbuf.h. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void crest__sb_init(struct crest__strbuf *sb) {
    memset(sb, 0, sizeof *sb);
}

void crest__sb_free(struct crest__strbuf *sb) {
    free(sb->ptr);
    crest__sb_init(sb);
}

bool crest__sb_reserve(struct crest__strbuf *sb, size_t more) {
    if (sb->failed)
        return false;
    if (sb->cap - sb->len > more) /* room for the NUL too */
        return true;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap - sb->len <= more) {
        if (cap > ((size_t)-1) / 2) {
            sb->failed = true;
            return false;
        }
        cap *= 2;
    }
    char *p = realloc(sb->ptr, cap);
    if (!p) {
        sb->failed = true;
        return false;
    }
    sb->ptr = p;
    sb->cap = cap;
    return true;
}

void crest__sb_append(struct crest__strbuf *sb, const void *data, size_t len) {
    if (!crest__sb_reserve(sb, len))
        return;
    memcpy(sb->ptr + sb->len, data, len);
    sb->len += len;
    sb->ptr[sb->len] = '\0';
}

void crest__sb_puts(struct crest__strbuf *sb, const char *s) {
    crest__sb_append(sb, s, strlen(s));
}

void crest__sb_printf(struct crest__strbuf *sb, const char *fmt, ...) {
    if (sb->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    size_t room = sb->cap - sb->len;
    int n = vsnprintf(room ? sb->ptr + sb->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        sb->failed = true;
        return;
    }
    if ((size_t)n >= room) { /* did not fit: grow and format again */
        if (!crest__sb_reserve(sb, (size_t)n))
            return;
        va_start(ap, fmt);
        vsnprintf(sb->ptr + sb->len, sb->cap - sb->len, fmt, ap);
        va_end(ap);
    }
    sb->len += (size_t)n;
}

size_t crest__json_escape(unsigned char ch, char out[8]) {
    switch (ch) {
    case '"':
        memcpy(out, "\\\"", 2);
        return 2;
    case '\\':
        memcpy(out, "\\\\", 2);
        return 2;
    case '\n':
        memcpy(out, "\\n", 2);
        return 2;
    case '\r':
        memcpy(out, "\\r", 2);
        return 2;
    case '\t':
        memcpy(out, "\\t", 2);
        return 2;
    default:
        if (ch < 0x20 || ch == 0x7f)
            return (size_t)snprintf(out, 8, "\\u%04x", ch);
        out[0] = (char)ch;
        return 1;
    }
}

void crest__sb_json_str(struct crest__strbuf *sb, const char *s, size_t len) {
    crest__sb_append(sb, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        char esc[8];
        crest__sb_append(sb, esc, crest__json_escape((unsigned char)s[i], esc));
    }
    crest__sb_append(sb, "\"", 1);
}
