/* HTTP internals shared by the server and the admin endpoint. */
#ifndef CREST_HTTP_INT_H
#define CREST_HTTP_INT_H

#include <stdint.h>

#include "crest/http.h"

/* tchar (RFC 9110 5.6.2): nonzero for the bytes a token may hold
 * (http.c). */
extern const uint8_t crest__http_tchar[256];

#endif
