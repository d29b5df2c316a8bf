/* The HTTP server's internals shared by its two files: http_server.c
 * (connections, requests, responses) and http_stream.c (streamed
 * responses, crest_http_respond_stream()).  Everything here runs on the
 * server's loop thread. */
#ifndef CREST_HTTP_SERVER_INT_H
#define CREST_HTTP_SERVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crest/http.h"
#include "crest/conn.h"

enum http_conn_state {
    HC_HEAD = 0, /* waiting for a request head */
    HC_BODY,     /* head whole (head_len), waiting for its body */
    HC_WAITING   /* on_request returned without a response: paused */
};

struct crest_http_exchange {
    struct http_conn *hc;
    void *data;
    crest_http_method_t method;
    bool active;      /* on_request has it, no response yet */
    bool keep_alive;  /* the request allows another after it */
    bool http10;
};

/* A streamed response (crest_http_respond_stream()): the body callback,
 * and where the stream stands.  It lives where the body scanner's state
 * does: a connection streams a response only between two requests'
 * bodies (reading is paused meanwhile). */
struct stream {
    crest_http_body_cb body;
    void *ctx;
    uint64_t left; /* bytes still due, or CREST_HTTP_LENGTH_UNKNOWN */
    struct http_conn *rprev, *rnext; /* the server's ready streams */
};

/* http_conn.sflags */
enum {
    S_ON = 1u << 0,      /* a streamed response is being written */
    S_CHUNKED = 1u << 1, /* ... chunked (else by length, or by the close) */
    S_CLOSE = 1u << 2,   /* close once it has all gone */
    S_WAIT = 1u << 3,    /* the body said CREST_HTTP_BODY_WAIT */
    S_RESUMED = 1u << 4, /* crest_http_stream_resume() during the body call */
    S_READY = 1u << 5    /* on the server's ready or running list */
};

struct http_conn {
    crest_conn_t *c;
    crest_http_server_t *srv;
    struct http_conn *prev, *next; /* the server's connections */
    crest_http_exchange_t x;
    uint32_t scanned;        /* HC_HEAD: bytes searched for a line end */
    uint32_t head_len;       /* HC_BODY: the head's length */
    uint64_t content_length; /* HC_BODY: Content-Length */
    uint8_t state;           /* enum http_conn_state */
    bool chunked;            /* HC_BODY: the body is chunked */
    bool expect_continue;    /* HC_BODY: 100 Continue is due */
    bool continue_sent;
    bool deadline_extended;  /* the read timeout covers the body now */
    bool peer_eof;           /* the client shut down its side */
    uint8_t sflags;          /* S_*: the streamed response */
    bool in_request;         /* inside on_request (an answer now is not
                                deferred) */
    uint64_t dispatched_ns;  /* the loop's clock when x went to on_request */
    union {
        crest_http_chunked_t chunk; /* HC_BODY, chunked: the scan so far */
        struct stream st;           /* S_ON */
    } u;
};

struct crest_http_server {
    crest_loop_t *loop;
    crest_http_server_opts_t opts; /* limits normalised */
    size_t head_max;               /* crest_http_head_max() */
    crest_http_request_cb on_request;
    void *ctx;
    crest_handler_t handler;
    crest_listener_t **listeners;
    unsigned nlisteners;
    struct http_conn *conns;       /* open connections */
    unsigned nconns;
    bool destroyed;                /* freed when the last connection goes */
    crest_http_server_stats_t stats;
    uint8_t *scratch;              /* CREST_HTTP_STREAM_CHUNK bytes for
                                      streamed bodies (on first use) */
    struct http_conn *ready;       /* streams to continue next iteration */
    struct http_conn *running;     /* ... being continued now */
    bool defer_pending;            /* stream_continue() is deferred */
    uint64_t date_sec;             /* loop clock second of date[] */
    char date[48];                 /* "Date: Fri, 04 Dec 2026 19:10:20 GMT\r\n" */
    size_t date_len;
    size_t server_len;             /* strlen(opts.server) */
    bool counted;                  /* on the loop's list (not the admin's) */
    struct crest_http_server *prev, *next; /* the loop's list */
};

/* A response's head, as build_head() writes it. */
struct resp_head {
    int status;
    const crest_http_header_t *headers;
    size_t header_count;
    uint64_t length;
    bool chunked;
    bool close_after;   /* "Connection: close" (the caller closes) */
    bool keep_alive_10; /* an HTTP/1.0 request that asked for keep-alive */
};

/* http_server.c */
/* Write x's response head (and body, unless head_only), timing it for the
 * loop's insight; a head too big gets a 500 instead. */
int crest__http_respond_head(crest_http_exchange_t *x, struct resp_head *r, bool head_only,
                             const void *body, size_t body_len);
/* May x be answered with this status and these headers? */
bool crest__http_response_ok(const crest_http_exchange_t *x, int status,
                             const crest_http_header_t *headers, size_t header_count);
/* 1xx, 204, 304: a head only. */
bool crest__http_bodyless_status(int status);
/* The exchange is over: read the requests behind it, or close. */
void crest__http_exchange_end(struct http_conn *hc, bool close);
void crest__http_server_free(crest_http_server_t *s);

/* http_stream.c */
/* Ask the body for more while the socket takes it all (gathering: from
 * on_data, where writes wait in the gather buffer). */
void crest__http_stream_pump(struct http_conn *hc, bool gathering);
/* Off the server's ready list (it goes on now). */
void crest__http_stream_unready(struct http_conn *hc);
/* The stream is over: its room goes back to the body scanner. */
void crest__http_stream_clear(struct http_conn *hc);

#endif
