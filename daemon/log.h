/*  log: stderr logging with sd-daemon priority prefixes.

    Lines look like "<4>xplaind: ingest: rejected ...": journald reads the
    "<N>" prefix as the syslog priority, and on a terminal it is harmless.
    Messages caused by network input go through log_limited(), which lets
    a few lines per key through each second and then says how many it
    held back, so a flood of garbage cannot flood the journal.  */
#ifndef XPLD_LOG_H
#define XPLD_LOG_H

#include <stdint.h>

typedef enum {
    LOG_ERR_ = 3,
    LOG_WARN_ = 4,
    LOG_NOTICE_ = 5,
    LOG_INFO_ = 6,
    LOG_DEBUG_ = 7
} log_level_t;

/* Messages above `level` are not printed (default LOG_INFO_). */
void log_set_level(log_level_t level);
log_level_t log_get_level(void);
int log_level_parse(const char *name);

/* Allow `per_second` lines per rate-limit key (default 5). */
void log_set_rate(uint32_t per_second);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Rate-limited: `key` (0..LOG_KEYS-1) groups messages of one kind.
   Keys below 48 belong to the ingest rejection reasons (the xr_reason_t
   value), to the call sites that number their keys after them, and to
   auth.c's (40, 41); the kinds below are named. */
#define LOG_KEYS 64
enum {
    LOGK_NEW_MODEL = 48,    /* ingest: a model seen for the first time */
    LOGK_EPOCH,             /* ingest: a model's new schema epoch */
    LOGK_ATTN_WARN,         /* ingest: attention failed the check, explained anyway */
    LOGK_BASELINE,          /* query: a drift baseline pinned or reset on request */
};
void log_limited(unsigned key, log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(...) log_msg(LOG_ERR_, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN_, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE_, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO_, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG_, __VA_ARGS__)

#endif
