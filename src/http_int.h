/* HTTP internals shared by the server and the admin endpoint. */
#ifndef CREST_HTTP_INT_H
#define CREST_HTTP_INT_H

#include "crest/http.h"

#endif
