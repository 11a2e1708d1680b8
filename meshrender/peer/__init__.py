"""The peer by role: the objects the node's `Peer` composes, and the sans-IO membership core."""
