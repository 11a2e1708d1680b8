"""The Textual app: `meshrender` alone (or `meshrender tui`) on this machine's peer. See tui.app."""
