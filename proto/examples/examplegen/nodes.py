"""msgpack with types and offsets: what normalising captured bytes in
place and the JSON rendering need, and msgpack-python does not give."""
import struct


class Node:
    """One msgpack object: t in nil, bool, int, float32, float64, str, bin,
    array, map, ext; v the value (scalars; bytes for str and bin); for
    array `items`, for map `pairs` [(key node, value node)]; off/hdr/end
    byte offsets (value bytes are buf[off + hdr:end] for scalars)."""
    __slots__ = ("t", "v", "off", "hdr", "end", "items", "pairs", "ext")

    def __init__(self, t, v, off, hdr, end):
        self.t, self.v, self.off, self.hdr, self.end = t, v, off, hdr, end
        self.items = self.pairs = None
        self.ext = None

    def get(self, key):
        for k, v in self.pairs or ():
            if k.t == "str" and k.v == key.encode():
                return v
        return None


class MsgpackError(ValueError):
    pass


def walk(buf, depth=64):
    """Parse one msgpack object filling all of `buf` into a Node tree."""
    node, pos = _walk(buf, 0, depth)
    if pos != len(buf):
        raise MsgpackError("%d bytes after the object" % (len(buf) - pos))
    return node


def _need(buf, pos, n):
    if pos + n > len(buf):
        raise MsgpackError("truncated at byte %d" % pos)


def _walk(buf, pos, depth):
    if depth < 0:
        raise MsgpackError("nested too deeply")
    _need(buf, pos, 1)
    b = buf[pos]
    U = struct.unpack_from

    def scalar(t, v, hdr, size):
        return Node(t, v, pos, hdr, pos + hdr + size), pos + hdr + size

    def raw(t, hdr, n):
        _need(buf, pos + hdr, n)
        return Node(t, bytes(buf[pos + hdr:pos + hdr + n]), pos, hdr, pos + hdr + n), pos + hdr + n

    def seq(t, hdr, n):
        node = Node(t, n, pos, hdr, 0)
        p = pos + hdr
        if t == "array":
            node.items = []
            for _ in range(n):
                it, p = _walk(buf, p, depth - 1)
                node.items.append(it)
        else:
            node.pairs = []
            for _ in range(n):
                k, p = _walk(buf, p, depth - 1)
                v, p = _walk(buf, p, depth - 1)
                node.pairs.append((k, v))
        node.end = p
        return node, p

    if b <= 0x7F:
        return scalar("int", b, 1, 0)
    if b >= 0xE0:
        return scalar("int", b - 0x100, 1, 0)
    if 0x80 <= b <= 0x8F:
        return seq("map", 1, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return seq("array", 1, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        return raw("str", 1, b & 0x1F)
    if b == 0xC0:
        return scalar("nil", None, 1, 0)
    if b in (0xC2, 0xC3):
        return scalar("bool", b == 0xC3, 1, 0)
    fixed = {0xCC: ("int", ">B", 1), 0xCD: ("int", ">H", 2), 0xCE: ("int", ">I", 4),
             0xCF: ("int", ">Q", 8), 0xD0: ("int", ">b", 1), 0xD1: ("int", ">h", 2),
             0xD2: ("int", ">i", 4), 0xD3: ("int", ">q", 8), 0xCA: ("float32", ">f", 4),
             0xCB: ("float64", ">d", 8)}
    if b in fixed:
        t, fmt, size = fixed[b]
        _need(buf, pos + 1, size)
        return scalar(t, U(fmt, buf, pos + 1)[0], 1, size)
    lens = {0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
            0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
            0xDC: ("array", ">H", 2), 0xDD: ("array", ">I", 4),
            0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4)}
    if b in lens:
        t, fmt, size = lens[b]
        _need(buf, pos + 1, size)
        n = U(fmt, buf, pos + 1)[0]
        if t in ("str", "bin"):
            return raw(t, 1 + size, n)
        # Like the daemon's reader: a count cannot exceed the bytes left.
        if n * (2 if t == "map" else 1) > len(buf) - pos - 1 - size:
            raise MsgpackError("%s of %d entries in %d bytes" % (t, n, len(buf) - pos))
        return seq(t, 1 + size, n)
    exts = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
    if b in exts:
        _need(buf, pos + 2, exts[b])
        node, p = raw("ext", 2, exts[b])
        node.ext = struct.unpack_from(">b", buf, pos + 1)[0]
        return node, p
    if b in (0xC7, 0xC8, 0xC9):
        size = {0xC7: 1, 0xC8: 2, 0xC9: 4}[b]
        _need(buf, pos + 1 + size + 1, 0)
        n = U({1: ">B", 2: ">H", 4: ">I"}[size], buf, pos + 1)[0]
        node, p = raw("ext", 2 + size, n)
        node.ext = struct.unpack_from(">b", buf, pos + 1 + size)[0]
        return node, p
    raise MsgpackError("invalid byte 0x%02x at %d" % (b, pos))


def node_at(root, path):
    """Nodes matching `path` (keys; "*" matches every map value or array item)."""
    out = [root]
    for seg in path:
        nxt = []
        for n in out:
            if n.t == "map":
                nxt += [v for k, v in n.pairs if seg == "*" or (k.t == "str" and k.v == seg.encode())]
            elif n.t == "array" and seg == "*":
                nxt += n.items
        out = nxt
    return out


def patch(buf, root, path, value):
    """Overwrite in place every scalar at `path` with `value`, keeping its
    msgpack type and width. Returns how many were changed."""
    count = 0
    for n in node_at(root, path):
        if n.t == "nil":
            continue
        start = n.off + n.hdr
        if n.t == "float64":
            buf[start:n.end] = struct.pack(">d", float(value))
        elif n.t == "float32":
            buf[start:n.end] = struct.pack(">f", float(value))
        elif n.t == "int" and n.end == start and -32 <= int(value) < 128:
            buf[n.off] = int(value) & 0xFF          # a fixint stays a fixint
        elif n.t == "int" and n.end - start in (1, 2, 4, 8):
            fmt = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                   0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}[buf[n.off]]
            buf[start:n.end] = struct.pack(fmt, int(value))
        else:
            raise ValueError("cannot normalise a %s of %d bytes at %s" % (n.t, n.end - n.off, path))
        count += 1
    return count
