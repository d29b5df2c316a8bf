/* HTTP internals shared by the server and the admin endpoint. */
#ifndef CREST_HTTP_INT_H
#define CREST_HTTP_INT_H

#include <stdint.h>

#include "crest/http.h"

/* tchar (RFC 9110 5.6.2): nonzero for the bytes a token may hold
 * (http.c). */
extern const uint8_t crest__http_tchar[256];

/* Leave server s out of its loop's crest_http_loop_stats(): the admin
 * endpoint's own server, right after it is created (http_server.c). */
void crest__http_server_uncounted(crest_http_server_t *s);

#endif
