/*  ingest: one received ingest message from frames to published
    explanations: decode (wire), model and schema (models), seq tracking,
    explain each trade (xmath), cache it, publish it. Every rejection is
    counted by reason and logged (rate-limited) here.  */
#ifndef XPLD_INGEST_H
#define XPLD_INGEST_H

#include "server.h"

#include <zmq.h>

/* Handle the `nparts` frames of one message received at `t_recv` (ns,
   monotonic). Never fails: bad input is counted and logged. */
void ingest_handle(server_t *s, zmq_msg_t *parts, int nparts, int64_t t_recv);

/* Count and log a rejection. `md` may be NULL. */
void ingest_reject(server_t *s, model_t *md, xr_reason_t r, const char *model, size_t mlen,
                   const char *detail);

#endif
