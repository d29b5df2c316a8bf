/* HTTP internals shared by the server and the admin endpoint. */
#ifndef CREST_HTTP_INT_H
#define CREST_HTTP_INT_H

#include <stdint.h>

#include "crest/http.h"

/* tchar (RFC 9110 5.6.2): nonzero for the bytes a token may hold
 * (http.c). */
extern const uint8_t crest__http_tchar[256];

/* crest_http_server_create() for a server left out of its loop's
 * crest_http_loop_stats(): the admin endpoint's own (http_server.c). */
int crest__http_server_create_uncounted(crest_loop_t *loop, const crest_http_server_opts_t *opts,
                                        crest_http_request_cb on_request, void *ctx,
                                        crest_http_server_t **out);

#endif
