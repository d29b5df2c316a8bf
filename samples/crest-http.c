/* crest-http: an HTTP/1.1 server on crest's HTTP codec (being written). */
#include <stdio.h>

int main(void) {
    fprintf(stderr, "crest-http: not written yet\n");
    return 1;
}
