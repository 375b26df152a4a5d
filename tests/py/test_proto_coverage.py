"""proto/examples/ covers the whole contract, and stays what make.py makes.

- Every message kind (`<kind>/<model>` topics), every rejection reason
  (the reason table of proto/ingest.md), every query op (the ### headings
  of proto/queries.md and proto/global.md) and every query error code
  (the code table of proto/queries.md) has an example: a new reason, op
  or code documented without an example fails here.
- What the code names agrees with the docs: the reasons of core/wire.c,
  the ops of daemon/query.c, the reasons listed by the stats reply.
- Each example's .json is the rendering of its .msgpack, names files
  that exist, and no stray file lies in the example directories.
- The inputs on disk are what make.py generates (so they can be remade),
  and README.md's index lists exactly the examples there are.

Run by Debian's /usr/bin/python3; needs no daemon.
"""
import json
import os
import re
import sys

import pytest

from protocheck import EXAMPLES, PROTO, SOURCE, Checks, load, mk

check = Checks()
all_checks_pass = check.fixture()


def read(*path):
    with open(os.path.join(*path)) as f:
        return f.read()


def table_column(text, header):
    """First-column `names` of the markdown table whose header row starts
    with `header`."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.replace(" ", "").startswith(header))
    names = []
    for line in lines[start + 2:]:
        m = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if not m:
            break
        names.append(m.group(1))
    return names


def documented_reasons():
    return table_column(read(PROTO, "ingest.md"), "|reason|meaning|")


def documented_codes():
    return table_column(read(PROTO, "queries.md"), "|code|meaning|")


def documented_ops():
    """The ops of the ### headings: the `names` before the first " — "."""
    ops = []
    for f in ("queries.md", "global.md"):
        for line in read(PROTO, f).splitlines():
            if line.startswith("### "):
                head = line[4:].split(" — ")[0]
                ops += [o for o in re.findall(r"`(\w+)`", head) if o not in ops]
    return ops


def documented_kinds():
    kinds = []
    for f in sorted(os.listdir(PROTO)):
        if f.endswith(".md"):
            kinds += [k for k in re.findall(r"`(\w+)/<model>`", read(PROTO, f)) if k not in kinds]
    return kinds


@pytest.fixture(scope="module")
def ex():
    ex = {m["example"]: m for m in load()}
    assert len(ex) > 50, "only %d examples" % len(ex)
    return ex


def test_docs_vocabulary_has_examples(ex):
    kinds = documented_kinds()
    check(set(kinds) >= {"attn", "xpl", "glob", "drift", "heads"}, "message kinds in the docs: %s" % kinds)
    for k in kinds:
        d = "ingest" if k == "attn" else k
        check(any(m["kind"] == d for m in ex.values()), "message kind %s/ has no example" % k)
        check(all(m["topic"].startswith(k + "/") for m in ex.values() if m["kind"] == d),
              "an example of %s/ has another topic" % k)

    reasons = documented_reasons()
    check(len(reasons) >= 20, "reasons in ingest.md: %s" % reasons)
    for r in reasons:
        m = ex.get("reject/" + r)
        check(m is not None and m["expect"]["reason"] == r, "rejection reason %s has no example" % r)
    for m in ex.values():
        if m["kind"] == "reject":
            check(m["expect"]["reason"] in reasons,
                  "%s: reason %s is not in ingest.md" % (m["example"], m["expect"]["reason"]))

    ops = documented_ops()
    check(len(ops) >= 9, "ops in queries.md/global.md: %s" % ops)
    for op in ops:
        reqs = [m for m in ex.values() if m["kind"] == "request" and m.get("op") == op]
        check(reqs, "op %s has no request example" % op)
        check(any(ex[m["reply"]]["body"].get("ok") is True for m in reqs),
              "op %s has no example of a successful reply" % op)
    codes = documented_codes()
    check(len(codes) >= 5, "codes in queries.md: %s" % codes)
    for c in codes:
        check(any(m["kind"] == "reply" and m["body"].get("ok") is False and m["body"].get("code") == c
                  for m in ex.values()), "error code %s has no reply example" % c)
    for m in ex.values():
        if m["kind"] == "reply" and m["body"].get("ok") is False:
            check(m["body"]["code"] in codes, "%s: code %s is not in queries.md" % (m["example"],
                                                                                    m["body"]["code"]))


def test_code_vocabulary_is_the_docs(ex):
    reasons = documented_reasons()
    ops = documented_ops()
    wire = read(SOURCE, "core", "wire.c")
    code_reasons = [r for r in re.findall(r'\[XR_\w+\] = "(\w+)"', wire) if r != "ok"]
    check(sorted(code_reasons) == sorted(reasons),
          "core/wire.c reasons %s != ingest.md reasons %s" % (sorted(set(code_reasons) ^ set(reasons)),
                                                            "(symmetric difference)"))
    query = read(SOURCE, "daemon", "query.c")
    code_ops = re.findall(r'\{"(\w+)", (?:op_|global_op_|query_op_)\w+\}', query)
    check(sorted(code_ops) == sorted(ops), "daemon/query.c ops %s != documented ops %s"
          % (sorted(code_ops), sorted(ops)))
    stats = ex.get("reply/stats")
    check(stats and sorted(stats["body"]["rejected"]) == sorted(reasons),
          "the stats reply's reasons differ from ingest.md's")


def test_json_renders_msgpack(ex):
    listed = set()
    for m in ex.values():
        name = m["example"]
        d = os.path.join(EXAMPLES, m["kind"])
        listed.add(os.path.join(m["kind"], name.split("/", 1)[1] + ".json"))
        for f in m["frames"]:
            listed.add(os.path.join(m["kind"], f))
        rendered = json.loads(mk.dumps(mk.render_body(m["body_bytes"])))
        check(rendered == m["body"], "%s: the .json body is not the rendering of the .msgpack" % name)
        if m["kind"] in ("request", "reply"):
            check(len(m["frames"]) == 1, "%s: one frame" % name)
        else:
            check(m["frames_bytes"][0] == m["topic"].encode(), "%s: .topic differs from topic" % name)
            check(len(m["frames"]) == 2 or name == "reject/frames", "%s: frames" % name)
        if m["kind"] == "request":
            check(m["reply"] in ex and ex[m["reply"]]["request"] == name, "%s: no reply" % name)
        for n in m.get("normalised", []):
            nodes = mk.node_at(mk.walk(m["body_bytes"]), n["path"])
            check(nodes and all(x.v == n["value"] for x in nodes if x.t != "nil"),
                  "%s: normalised %s is not %r" % (name, n["path"], n["value"]))
    for kind in mk.KINDS:
        for f in os.listdir(os.path.join(EXAMPLES, kind)):
            check(os.path.join(kind, f) in listed, "%s/%s belongs to no example" % (kind, f))


def test_reproducible_and_indexed(ex):
    bad = mk.check_inputs()
    check(not bad, "inputs differ from what make.py generates: %s" % bad[:5])
    check(mk.index_text({n: m["description"] for n, m in ex.items()}) == mk.readme_index(),
          "proto/examples/README.md's index is out of date (run make.py)")
    check("[examples/](examples/)" in read(PROTO, "README.md"), "proto/README.md does not list examples/")

