"""One example: its frames and the .json beside them."""
import struct

import msgpack

from .render import dumps, render_body

KINDS = ("ingest", "reject", "xpl", "glob", "drift", "heads", "state", "request", "reply")


class Example:
    """One example: frames (bytes, in order) and the .json metadata."""

    def __init__(self, name, kind, frames, description, **meta):
        self.name = name            # "<kind dir>/<base>"
        self.kind = kind
        self.frames = list(frames)
        self.meta = {"example": name, "kind": kind, "description": description}
        self.meta.update(meta)

    @property
    def base(self):
        return self.name.split("/", 1)[1]

    @property
    def body(self):
        return self.frames[1] if self.has_topic else self.frames[0]

    @property
    def has_topic(self):
        return self.kind not in ("request", "reply")

    def files(self):
        """{file name (relative to the kind's directory): bytes}."""
        b = self.base
        if not self.has_topic:
            names = [b + ".msgpack"]
        else:
            names = [b + ".topic", b + ".msgpack"] + ["%s.frame%d" % (b, k + 1)
                                                      for k in range(2, len(self.frames))]
        out = dict(zip(names, self.frames))
        meta = dict(self.meta)
        if self.has_topic:
            meta["topic"] = self.frames[0].decode("utf-8", "replace")
        meta["frames"] = names[:len(self.frames)]
        meta["body"] = render_body(self.body)
        out[b + ".json"] = (dumps(meta) + "\n").encode()
        return out


def pack(body):
    return msgpack.packb(body, use_bin_type=True)


def raw_map(pairs):
    """A msgpack map from (packed key, packed value) pairs, for what
    msgpack-python will not write (duplicate or non-str keys)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(k + v for k, v in pairs)
