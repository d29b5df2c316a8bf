/* crest: error codes.
 *
 * Every crest function that can fail returns 0 (or a non-negative value where
 * documented) on success and a negative errno value on failure: -EAGAIN,
 * -ENOMEM, -EBADF, ...  A function that fails never invokes its callback
 * later.
 */
#ifndef CREST_ERROR_H
#define CREST_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/* The name and meaning of an error: crest_strerror(-ECONNRESET) gives
 * "ECONNRESET: connection reset by peer".  Accepts negative or positive errno
 * values; never returns NULL.  The string is static. */
const char *crest_strerror(int err);

/* The library version, "MAJOR.MINOR.PATCH". */
const char *crest_version(void);

#ifdef __cplusplus
}
#endif
#endif
