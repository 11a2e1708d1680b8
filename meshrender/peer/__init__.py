"""The peer by role: small sans-IO objects the node's `Peer` composes (membership first)."""
