"""The captured examples (xpl/, glob/, drift/, heads/, reply/): which
published messages are kept, and the fields that depend on the clock,
overwritten in the captured bytes with fixed values (keeping their msgpack
type and width)."""
from .nodes import patch, walk

NORM_TS = 1764000099000000000       # stands for "when the daemon sent it"
NORM_UPTIME = 12.5                  # stands for the daemon's uptime
NORM_LATENCY = 125.0                # stands for a latency in microseconds

# Published messages kept as examples: name -> (topic, seq, predicate on
# the body or None, description).
PUBLISHED = {
    "xpl/f32-first": ("xpl/m1", 0, "Trade t-1 of ingest/f32-first: target and y echoed, "
                      "grad_rollout (a gradient was sent) and flow (sampled: --flow-every 2)."),
    "xpl/f16-batch3-0": ("xpl/m1", 1, "Trade 101 (uint id) of ingest/f16-batch3: no flow "
                         "(not sampled)."),
    "xpl/f16-batch3-1": ("xpl/m1", 2, "Trade 102 of ingest/f16-batch3, with flow."),
    "xpl/f16-batch3-2": ("xpl/m1", 3, "Trade 103 of ingest/f16-batch3."),
    "xpl/bf16-nograd": ("xpl/m1", 4, "Trade t-2 of ingest/bf16-nograd: no target, no y, "
                        "no grad_rollout."),
    "xpl/f32-followup": ("xpl/m1", 5, "Trade t-3 of ingest/f32-followup."),
    "xpl/m2-nocls": ("xpl/m2", 0, "Trade 1 of ingest/drift-a: a model without CLS, so each "
                     "vector has n = 4 entries."),
    "xpl/m3-fused": ("xpl/m3", 0, "Trade f-1 of ingest/fused-f32: explained from the fused "
                     "form, the same message as from every head."),
    "xpl/m3-fused-f16-nograd": ("xpl/m3", 2, "Trade 301 of ingest/fused-f16-nograd: fused f16, "
                                "no gradient, no grad_rollout."),
    "glob/m1": ("glob/m1", 0, "m1's global state after 6 trades, published before the reply "
                "to request/global: two target classes, no external reference."),
    "glob/m1-reference": ("glob/m1", 1, "m1's global state with the external rollout "
                          "reference of request/reference and its Spearman rho."),
    "glob/m2": ("glob/m2", 0, "m2's global state: no target classes."),
    "heads/m1": ("heads/m1", 0, "m1's head statistics (gradients sent: importance is set)."),
    "heads/m2": ("heads/m2", 0, "m2's head statistics: no gradient ever, importance_count 0."),
}
# Published by the variants daemon (replay.py: VARIANTS_ARGS).
VARIANTS_PUBLISHED = {
    "xpl/m4-variants": ("xpl/m4", 0, "Trade v-1 of ingest/m4-rel from a daemon serving all nine "
                        "methods but flow, with --discard 0.5 --start-layer -1: colsum, "
                        "grad_rollout_signed (may be negative) and lrp_rollout (rel was sent) "
                        "beside the classic ones. A subscriber that does not know a method name "
                        "skips it."),
}
# Published by the groups daemon (replay.py: SCENARIO_GROUPS).
GROUPS_PUBLISHED = {
    "xpl/m6-groups": ("xpl/m6", 0, "Trade g-1 of ingest/m6-groups: every vector has one value per "
                      "feature (quote, size, side), quote the sum of spread's and price's values. "
                      "Nothing in the message is new: an old subscriber reads it as before."),
}
# Published by the targets daemon (replay.py: TARGETS_ARGS): one xpl/
# message per trade and target, trade by trade, in target order.
TARGETS_PUBLISHED = {
    "xpl/m5-targets-0": ("xpl/m5", 0, "Trade k-1 of ingest/m5-targets for its first target, "
                         "class 2: target 2, grad_rollout from gradient 0."),
    "xpl/m5-targets-1": ("xpl/m5", 1, "Trade k-1 of ingest/m5-targets for class 0: the same "
                         "rollout and attn_mean, grad_rollout from gradient 1."),
    "xpl/m5-targets-2": ("xpl/m5", 2, "Trade k-2 of ingest/m5-targets for class 2."),
    "xpl/m5-targets-3": ("xpl/m5", 3, "Trade k-2 of ingest/m5-targets for class 0."),
    "xpl/m5-targets-fused-0": ("xpl/m5", 4, "Trade k-1 of ingest/m5-targets-fused for class 2: "
                               "the numbers of xpl/m5-targets-0, from the fused form."),
    "xpl/m5-targets-fused-1": ("xpl/m5", 5, "Trade k-1 of ingest/m5-targets-fused for class 0: "
                               "the numbers of xpl/m5-targets-1."),
}
# Published by the shard daemon (replay.py: SHARD_ARGS): the state/ a
# shard sends its aggregator, picked by its count of trades.
SHARD_PUBLISHED = {
    "state/m2": ("state/m2", 4, "m2's whole state from a daemon run with --shard 0/1 (the whole "
                 "stream, and state/ for an aggregator) after the 4 trades of ingest/drift-a: "
                 "counters, rejections, per method the aggregate (count, mean, m2) and the "
                 "event-time windows and decayed sums (--drift-window-s 1, "
                 "--decay-half-life-s 60), the head statistics."),
}
# Drift messages are picked by method and window (their seq depends on the
# order the methods close in).
DRIFT = {
    "drift/baseline": ("m2", "rollout", 0, "Window 0 of m2's rollout: it becomes the baseline, "
                       "nothing is compared, every statistic is nil."),
    "drift/alert": ("m2", "rollout", 1, "Window 1 of m2's rollout, compared with the baseline: "
                    "the ranking is reversed, alert."),
    "drift/undefined": ("m2", "rollout", 2, "Window 2 of m2's rollout: a constant mean vector, "
                        "so Spearman's rho is undefined (nil) and never alerts by itself."),
}

# Clock-dependent fields, overwritten in the captured bytes: kind or reply
# name -> [(path, value)].
_TS = [(["ts"], NORM_TS)]
_LAT = [([h, q], NORM_LATENCY) for h in ("latency_us", "latency_ts_us")
        for q in ("p50", "p90", "p99", "p999", "max", "mean")]
NORMALISED = {
    "glob": _TS, "heads": _TS, "drift": _TS, "state": _TS,
    "reply/ping": [(["uptime_s"], NORM_UPTIME)],
    "reply/stats": [(["uptime_s"], NORM_UPTIME)] + _LAT,
    "reply/global": _TS, "reply/global-method-target": _TS, "reply/global-m2": _TS,
    "reply/drift": [(["methods", "*", "last", "ts"], NORM_TS), (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-method": [(["methods", "*", "last", "ts"], NORM_TS),
                           (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-m1": [(["methods", "*", "last", "ts"], NORM_TS), (["alerts", "*", "ts"], NORM_TS)],
    "reply/drift-after-reset": [(["methods", "*", "last", "ts"], NORM_TS),
                                (["alerts", "*", "ts"], NORM_TS)],
}


def normalise(name, kind, body):
    """The body with its clock-dependent fields replaced; and the list of
    what was replaced, for the .json."""
    rules = NORMALISED.get(name) or NORMALISED.get(kind) or []
    buf = bytearray(body)
    done = []
    for path, value in rules:
        root = walk(bytes(buf))
        if patch(buf, root, path, value):
            done.append({"path": path, "value": value})
    return bytes(buf), done
