/* crest-sizes: the size of crest's per-connection structures, read from
 * its internal headers (bench/run compiles this against the tree it
 * measures, so the figures follow the code).  Prints one key=value line. */
#include <stdio.h>

#include "conn_int.h"

int main(void) {
    printf("sizes: struct_crest_conn=%zu struct_crest_io=%zu io_table_slot=%zu\n",
           sizeof(struct crest_conn), sizeof(struct crest_io), sizeof(struct crest_io *));
    return 0;
}
