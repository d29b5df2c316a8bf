/* Input buffered during a high-water pause is delivered before the EOF is
 * acted on.  (Found by fuzz/fuzz_conn.c.)  A read brings several messages
 * and the peer has already shut down its side; the first reply takes the
 * output over high_water, so delivery pauses; read() then returns 0.  Every
 * whole message must still be delivered, one by one, before on_eof / the
 * PEER_EOF close (LINE: then the last line without "\n", alone). */
#include "crest_test.h"

#include <netinet/in.h>
#include <sys/socket.h>

struct eof_state {
    crest_listener_t *l;
    bool closed;
    crest_close_reason_t reason;
    unsigned count;
    char got[8][32];
};

static int on_message_echo(crest_conn_t *c, const uint8_t *msg, size_t len) {
    struct eof_state *s = crest_conn_handler_ctx(c);
    if (s->count < 8)
        snprintf(s->got[s->count], sizeof s->got[0], "%.*s", (int)len, (const char *)msg);
    s->count++;
    crest_conn_write_message(c, msg, len);
    return 0;
}

static void on_close_eof(crest_conn_t *c, crest_close_reason_t reason, int err) {
    (void)err;
    struct eof_state *s = crest_conn_handler_ctx(c);
    s->closed = true;
    s->reason = reason;
}

/* Listen with this framing and a 1-byte high water; send stream and shut
 * down the write side before the loop runs; run until the close. */
static void run_case(struct eof_state *s, crest_framing_t framing, const void *stream,
                     size_t len) {
    crest_loop_t *loop = tu_loop();
    crest_listen_opts_t lo;
    crest_listen_opts_init(&lo);
    lo.conn.framing = framing;
    lo.conn.high_water = 1;
    lo.conn.low_water = 0;
    crest_handler_t h = {.on_message = on_message_echo, .on_close = on_close_eof};
    assert_int_equal(crest_listen(loop, "127.0.0.1:0", &lo, &h, s, &s->l), 0);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)crest_listener_port(s->l)),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(write(fd, stream, len), (ssize_t)len);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    tu_run_until(loop, &s->closed, 200, 10);
    assert_true(s->closed);
    close(fd);
    crest_listener_close(s->l);
    tu_spin(loop, 2);
    tu_destroy_loop(loop);
}

static void test_length_frames_after_resume_at_eof(void **state) {
    (void)state;
    struct eof_state s = {0};
    crest_framing_t f = {.kind = CREST_FRAMING_LENGTH, .header_bytes = 4, .max_message = 100};
    static const uint8_t stream[] = {0, 0, 0, 2, 'a', 'b', 0, 0, 0, 3, 'c',
                                     'd', 'e', 0, 0, 0, 1, 'f'};
    run_case(&s, f, stream, sizeof stream);
    print_message("LENGTH: %u of 3 frames delivered, closed for %s\n", s.count,
                  crest_close_reason_name(s.reason));
    assert_int_equal(s.reason, CREST_CLOSE_PEER_EOF);
    assert_int_equal(s.count, 3);
    assert_string_equal(s.got[0], "ab");
    assert_string_equal(s.got[1], "cde");
    assert_string_equal(s.got[2], "f");
}

static void test_line_lines_after_resume_at_eof(void **state) {
    (void)state;
    struct eof_state s = {0};
    crest_framing_t f = {.kind = CREST_FRAMING_LINE, .max_message = 100};
    static const char stream[] = "ab\ncde\nf";
    run_case(&s, f, stream, sizeof stream - 1);
    print_message("LINE: %u messages delivered (expected 3: ab, cde, f), the second \"%s\"\n",
                  s.count, s.count > 1 ? s.got[1] : "");
    assert_int_equal(s.count, 3);
    assert_string_equal(s.got[0], "ab");
    assert_string_equal(s.got[1], "cde");
    assert_string_equal(s.got[2], "f");
}

/* A last line without "\n" is delivered at EOF only within the limit: the
 * codec waits for max + 2 bytes before it calls a line too long, so a line
 * one byte over can still be buffered when the EOF comes. */
static void test_line_last_line_over_limit_at_eof(void **state) {
    (void)state;
    struct eof_state s = {0};
    crest_framing_t f = {.kind = CREST_FRAMING_LINE, .max_message = 5};
    static const char stream[] = "ab\nabcdef";
    run_case(&s, f, stream, sizeof stream - 1);
    assert_int_equal(s.count, 1);
    assert_string_equal(s.got[0], "ab");
    assert_int_equal(s.reason, CREST_CLOSE_TOO_LARGE);
    assert_true(tu_log_contains("line too long"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        tu_test(test_length_frames_after_resume_at_eof),
        tu_test(test_line_lines_after_resume_at_eof),
        tu_test(test_line_last_line_over_limit_at_eof),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
