/*  libxplain: the client side of xplaind's wire contract v1.

    One umbrella header. The library has four classes, each with its own
    header:

      xpl_client   queries (ping, models, schema, stats, trade, global,
                   baseline, reference), decoded into plain C structs
      xpl_sub      subscriber to per-trade explanations (xpl/), global
                   state (glob/), drift (drift/) and head statistics
                   (heads/), with feature names attached
      xpl_view     the Clone pattern done for you: a consistent, never torn
                   global-state view (subscribe, snapshot, apply updates
                   by seq)
      xpl_pub      publisher for C/C++ inference servers: contract-v1
                   ingest messages from float32 or 16-bit float buffers

    and the decoded result types in xpl_types.h, and, for a daemon that runs
    with CURVE on, the keys every class takes through its *_new_curve
    constructor (xpl_curve.h).

    Conventions (czmq style):
      - X_new(...) returns an object the caller owns, or NULL on error;
        X_destroy(&p) frees it, sets p to NULL and is safe on NULL.
      - Functions return 0 on success and -1 on error, or NULL for
        functions returning an object.
      - On every error, xpl_errno() and xpl_strerror() tell what went wrong
        in the calling thread (thread-local, valid until the next failing
        call in that thread). Bad data from the network is an error, never
        an abort; a NULL self is a programming error (assert).
      - An object is used by one thread at a time, except xpl_view, whose
        state may be read from any thread.

    Everything decoded from the network has been checked against the bytes
    received first (a bounds-checked msgpack reader), so a malformed
    message is an XPL_EPROTO error, never a crash or a huge allocation.  */
#ifndef XPLAIN_H_INCLUDED
#define XPLAIN_H_INCLUDED

#include "xpl_base.h"
#include "xpl_types.h"
#include "xpl_client.h"
#include "xpl_sub.h"
#include "xpl_view.h"
#include "xpl_pub.h"
#include "xpl_curve.h"

#endif
