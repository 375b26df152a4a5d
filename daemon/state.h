/*  state: durable snapshots of the global state.

    What survives a restart: every model (its counters, publisher seq, the
    schemas of its kept epochs), each epoch's aggregates per method and
    target class, head statistics, drift windows and references, and the
    alert history. Not the recent-trade cache: it is a cache.

    The file <state_dir>/state.msgpack is a 28-byte header (magic
    "XPLSTATE", format version, payload length, FNV-1a-64 of the payload)
    and a msgpack payload. It is written the safe way (temp file in the
    same directory, fsync, rename over the old one, fsync the directory),
    so a crash leaves either the old snapshot or the new one, never a
    torn file. A snapshot that fails any check on load is reported,
    renamed to state.msgpack.corrupt-<unix time>, and the daemon starts
    fresh.

    This file is only that container and the model record that ties a
    model's schemas (models.c) to its global state. Every other record
    is written and read by its owner, keyed by field names (core/snap.h):
    agg_save/agg_load, drift_save/drift_load, gepoch_save/gepoch_load and
    gmodel_save/gmodel_load (global.c). Format 2 (written now) is keyed
    maps throughout; format 1, the first daemon's positional arrays,
    still loads through the same functions (SNAP_V1), and the next save
    writes it as format 2. The payload is {v, written_ns, half_life,
    models: [{name, seq_known, last_seq, last_ts, counters, global,
    epoch, epochs: [{epoch, L, H, n, cls, tokens, state}]}]}.  */
#ifndef XPLD_STATE_H
#define XPLD_STATE_H

#include "global.h"
#include "models.h"
#include "stats.h"

#include <stdint.h>

#define STATE_FILE "state.msgpack"
/* Temporary files of a save: STATE_TMP_PREFIX<pid>.<counter>.<random>;
   anything named STATE_TMP_OLD* is removed at start (older daemons wrote
   exactly "state.msgpack.tmp"). */
#define STATE_TMP_OLD STATE_FILE ".tmp"
#define STATE_TMP_PREFIX STATE_FILE ".tmp."

/* Restore from <dir>/state.msgpack into an empty model table and global
   state (initialised, nothing ingested yet). Returns 1 when state was
   restored, 0 when there was no snapshot, -1 when the snapshot was
   unusable (reported, moved aside, both reset to empty). */
int state_load(models_t *models, global_t *global, const char *dir);

/* Write a snapshot of the models and their global state now, counted in
   stats (snapshots, snapshot_errors). Returns 0, or -1 (reported; the
   previous snapshot stays). */
int state_save(models_t *models, global_t *global, stats_t *stats, const char *dir);

#endif
