/* The doctor (doctor.h).  (Skeleton: the rules come with their own change;
 * until then every window is healthy.) */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char *const cause_keys[CREST_CAUSE_COUNT] = {
    "slow_callback", "loop_blocked", "loop_saturated", "cpu_starved", "accept_queue",
    "slow_reader", "sndbuf_limited", "nagle", "network", "fd_growth",
};

const char *crest_cause_key(crest_cause_t cause) {
    return (unsigned)cause < CREST_CAUSE_COUNT ? cause_keys[cause] : "?";
}

const char *crest_severity_name(crest_severity_t s) {
    switch (s) {
    case CREST_SEVERITY_INFO:
        return "info";
    case CREST_SEVERITY_WARNING:
        return "warning";
    case CREST_SEVERITY_CRITICAL:
        return "critical";
    }
    return "?";
}

void crest_doctor_opts_init(crest_doctor_opts_t *o) {
    memset(o, 0, sizeof *o);
}

int crest_doctor_diagnose(const crest_insight_t *w, const crest_doctor_opts_t *opts,
                          crest_diagnosis_t *out) {
    CREST__UNUSED(opts);
    if (!w || !out)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    out->window_ns = w->taken_ns - w->since_ns;
    out->iterations = w->iterations;
    return 0;
}

int crest_diagnosis_text(const crest_diagnosis_t *dx, char *buf, size_t len) {
    if (!dx)
        return -EINVAL;
    return snprintf(buf, len, "no latency problem found\n");
}

int crest_diagnosis_json(const crest_diagnosis_t *dx, char *buf, size_t len) {
    if (!dx)
        return -EINVAL;
    return snprintf(buf, len, "{\"findings\":[]}\n");
}
