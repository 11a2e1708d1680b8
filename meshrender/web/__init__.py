"""The web page every peer serves: Party, Queue, Results, Live and Stream.

`serve.serve_web(peer, host, port)` runs one Starlette app (`app.build_app`) on hypercorn's trio
worker inside the peer's nursery, so the page reads the peer's own `snapshot()` and event stream,
the one status source the TUI and `--json` read too. On a loopback address anyone on this machine
may use it (requests must name a loopback host, so a web page elsewhere cannot rebind a name to
it); bound anywhere else it asks for the party secret first (`auth`). `addr` parses `--web`.
"""
