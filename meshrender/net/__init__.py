"""The libp2p edge: host construction, identity, framed streams. Everything above it (the peer in
`meshrender.node`) sees messages from `meshrender.protocol`, never raw libp2p frames."""
