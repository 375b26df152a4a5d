/*  demo: a built-in synthetic model that streams contract-v1 messages.

    `xplaind --demo` starts this publisher on its own thread, bound to an
    inproc endpoint the ingest socket connects to, so the whole path
    (decode, explain, publish, queries) runs with nothing else installed.
    The synthetic model is an FT-Transformer-like trade classifier (8
    features and a CLS token last, 3 layers, 4 heads) whose attention
    follows a feature-importance profile; the profile changes every
    `drift_every` trades (never when 0), so drift shows up in the global
    view and the drift alerts, or, with 0, a healthy stream does not.  */
#ifndef XPLD_DEMO_H
#define XPLD_DEMO_H

#include <stdint.h>

#define DEMO_ENDPOINT "inproc://xplaind-demo"
#define DEMO_MODEL "demo-trades"

typedef struct demo_t demo_t;

/* Start the demo publisher thread in the given ZeroMQ context: `rate`
   trades per second in messages of `batch`, the importance regime
   changing every `drift_every` trades (0: never). */
demo_t *demo_start(void *zctx, uint64_t rate, uint32_t batch, uint64_t drift_every);

/* Stop and join it; NULL-safe, sets *self_p to NULL. */
void demo_stop(demo_t **self_p);

#endif
