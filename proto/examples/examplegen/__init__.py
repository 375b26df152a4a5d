"""The modules of proto/examples/make.py, one per concern:

    nodes     msgpack parsed with types and byte offsets (for normalising
              captured bytes in place, and for the JSON rendering)
    render    the JSON rendering of a body (README.md, "JSON rendering")
    example   one example: its frames and its .json
    ingest    the valid ingest messages (ingest/)
    reject    one message per rejection reason (reject/)
    queries   the query requests (request/), answered by reply/
    outputs   the captured messages kept as examples (xpl/, glob/,
              drift/, heads/, reply/) and their clock-dependent fields
    replay    a real xplaind fed the inputs, its outputs captured

No project code is imported: this speaks the contract with plain pyzmq +
msgpack, as any client may.
"""
