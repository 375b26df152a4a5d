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
int log_level_parse(const char *name);

/* Allow `per_second` lines per rate-limit key (default 5). */
void log_set_rate(uint32_t per_second);

void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Rate-limit keys: each kind of message caused by network input has its
   own budget of lines a second. The ingest rejections have one key per
   reason (LOGK_REJECTED + the xr_reason_t value, LOGK_REASONS of them);
   every other kind is named here, once, with its name for tests and
   debugging (log_key_name). */
#define LOGK_REASONS 32
#define LOG_KEY_LIST(X)                                                                    \
    X(SEQ_LOST, "ingest.seq_lost")           /* messages missing from a seq gap */         \
    X(RESTART, "ingest.restart")             /* a publisher's seq went back */              \
    X(NEW_MODEL, "ingest.new_model")         /* a model seen for the first time */          \
    X(EPOCH, "ingest.epoch")                 /* a model's new schema epoch */               \
    X(ATTN_WARN, "ingest.attention_warn")    /* attention failed the check, explained */    \
    X(QUERY_ERROR, "query.error")            /* a query answered with ok: false */          \
    X(QUERY_DROPPED, "query.dropped")        /* a request that could not be answered */     \
    X(BASELINE, "drift.baseline")            /* a drift baseline pinned or reset */         \
    X(DRIFT_ALERT, "drift.alert")            /* a drift window alerted */                   \
    X(GLOBAL_OOM, "global.oom")              /* no memory for a model's global state */     \
    X(SNAPSHOT, "state.snapshot")            /* a snapshot could not be written */          \
    X(AUTH_PEER, "security.peer")            /* the ZAP handler refused a peer */           \
    X(AUTH_HANDSHAKE, "security.handshake")  /* a CURVE handshake failed */                 \
    X(HTTP_BAD, "metrics.bad_request")       /* a bad HTTP request head */                  \
    X(HTTP_REFUSED, "metrics.refused")       /* a connection over max_per_ip */             \
    X(HTTP_TIMEOUT, "metrics.timeout")       /* a connection past its deadline */           \
    X(HTTP_LIMIT, "metrics.limit")           /* every connection slot taken */              \
    X(HTTP_MHD, "metrics.libmicrohttpd")     /* libmicrohttpd's own messages */ \
    X(AGGREGATE, "aggregate.state")          /* a shard's state the aggregator cannot use */

#define LOGK_ENUM_(id, name) LOGK_##id,
typedef enum {
    LOGK_REJECTED = 0,
    LOGK_NAMED_ = LOGK_REJECTED + LOGK_REASONS - 1,
    LOG_KEY_LIST(LOGK_ENUM_)
    LOG_KEYS
} log_key_t;
#undef LOGK_ENUM_

/* The listed name of a key, "ingest.rejected" for the rejection keys,
   NULL out of range. */
const char *log_key_name(log_key_t key);

/* Like log_msg, within the budget of `key`; the lines held back are
   counted and said on the next line that gets through. */
void log_limited(log_key_t key, log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(...) log_msg(LOG_ERR_, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN_, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE_, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO_, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG_, __VA_ARGS__)

#endif
