/* A main() for the fuzz targets when they are built without libFuzzer:
 * feeds the target every file given (directories: every file in them, in
 * name order) and exits 0, or dies the way the target died.
 *
 *   fuzz/replay-line [FILE|DIR]...
 *
 * With no arguments it replays the target's seed corpus and its saved
 * regressions, $abs_top_srcdir/fuzz/corpus/NAME and fuzz/regressions/NAME
 * (NAME is FUZZ_NAME, set when building), which is what `make check` runs.
 * A regression is an input that once crashed the target: `make fuzz` says
 * where it saved it, and copying it to fuzz/regressions/NAME/ makes every
 * later build replay it (under valgrind and the sanitizers too). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#ifndef FUZZ_NAME
#error "FUZZ_NAME must name the target (-DFUZZ_NAME=\"line\")"
#endif

static unsigned replayed;

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *b = realloc(buf, cap * 2);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "replay: %s: out of memory\n", path);
        return -1;
    }
    /* An exact-size copy, so that a read past the end is caught by
     * valgrind and ASan as it would be under libFuzzer. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    replayed++;
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A file, or every regular file in a directory.  A missing path is fine
 * (a target may have no regressions yet): 0 files. */
static int replay_path(const char *path) {
    struct stat st;
    if (stat(path, &st) < 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode))
        return replay_file(path);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) {
                rc = -1;
                break;
            }
            names = nn;
        }
        if (asprintf(&names[n], "%s/%s", path, e->d_name) < 0) {
            rc = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
            rc = replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv) {
    int rc = 0;
    if (argc > 1) {
        for (int i = 1; i < argc && rc == 0; i++)
            rc = replay_path(argv[i]);
    } else {
        const char *top = getenv("abs_top_srcdir");
        char *corpus = NULL, *regressions = NULL;
        if (!top)
            top = ".";
        if (asprintf(&corpus, "%s/fuzz/corpus/%s", top, FUZZ_NAME) < 0 ||
            asprintf(&regressions, "%s/fuzz/regressions/%s", top, FUZZ_NAME) < 0)
            return 99;
        rc = replay_path(corpus);
        if (rc == 0)
            rc = replay_path(regressions);
        if (rc == 0 && replayed == 0) {
            fprintf(stderr, "replay %s: no inputs in %s\n", FUZZ_NAME, corpus);
            rc = -1;
        }
        free(corpus);
        free(regressions);
    }
    if (rc != 0)
        return 99;
    printf("replay %s: %u input%s, no failure\n", FUZZ_NAME, replayed, replayed == 1 ? "" : "s");
    return 0;
}
