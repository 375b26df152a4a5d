/*  log: sd-daemon prefixed, rate-limited stderr logging. See log.h.  */
#include "log.h"

#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static log_level_t s_level = LOG_INFO_;
static uint32_t s_rate = 5;

static struct {
    int64_t second;     /* the second the budget belongs to */
    uint32_t used;      /* lines printed this second */
    uint64_t held;      /* lines held back since the last printed one */
} s_keys[LOG_KEYS];

_Static_assert(XR_NREASONS <= LOGK_REASONS, "a rate-limit key per ingest rejection reason");

#define LOGK_NAME_(id, name) [LOGK_##id] = name,
static const char *const s_key_names[LOG_KEYS] = {LOG_KEY_LIST(LOGK_NAME_)};
#undef LOGK_NAME_

const char *
log_key_name(log_key_t key)
{
    if ((unsigned)key >= LOG_KEYS)
        return NULL;
    return key < LOGK_REJECTED + LOGK_REASONS ? "ingest.rejected" : s_key_names[key];
}

void log_set_level(log_level_t level) { s_level = level; }
void log_set_rate(uint32_t per_second) { s_rate = per_second; }

int
log_level_parse(const char *name)
{
    static const char *names[] = {"err", "warning", "notice", "info", "debug"};
    for (int k = 0; k < 5; k++)
        if (strcmp(name, names[k]) == 0)
            return LOG_ERR_ + k;
    return -1;
}

static void
s_vlog(log_level_t level, const char *fmt, va_list ap)
{
    char line[1024];
    int len = snprintf(line, sizeof line, "<%d>xplaind: ", (int)level);
    vsnprintf(line + len, sizeof line - (size_t)len, fmt, ap);
    /* One write per line, so that lines from threads never interleave. */
    fprintf(stderr, "%s\n", line);
}

void
log_msg(log_level_t level, const char *fmt, ...)
{
    if (level > s_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, fmt, ap);
    va_end(ap);
}

void
log_limited(log_key_t key, log_level_t level, const char *fmt, ...)
{
    if (level > s_level)
        return;
    if ((unsigned)key >= LOG_KEYS)
        key = LOGK_REJECTED;    /* not a key: cannot happen, but never index past the table */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (s_keys[key].second != ts.tv_sec) {
        s_keys[key].second = ts.tv_sec;
        s_keys[key].used = 0;
    }
    if (s_keys[key].used >= s_rate) {
        s_keys[key].held++;
        return;
    }
    s_keys[key].used++;
    va_list ap;
    va_start(ap, fmt);
    if (s_keys[key].held) {
        /* Said on the same line, so that a key never prints more than its
           budget of lines a second. */
        char line[900];
        vsnprintf(line, sizeof line, fmt, ap);
        log_msg(level, "%s (and %llu similar messages suppressed before)", line,
                (unsigned long long)s_keys[key].held);
        s_keys[key].held = 0;
    } else {
        s_vlog(level, fmt, ap);
    }
    va_end(ap);
}
