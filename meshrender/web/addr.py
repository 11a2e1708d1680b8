"""`--web HOST:PORT`: where the peer's web page listens, and whether that needs a login.

Light on purpose (the CLI parses arguments with it before it imports anything heavy).
"""

from __future__ import annotations

import argparse
import ipaddress

WEB_HOST_DEFAULT = "127.0.0.1"
WEB_PORT_DEFAULT = 8470  # a fixed port a user can bookmark; when it is taken, the OS picks one
LOOPBACK_NAMES = ("localhost",)


def parse_web_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `HOST` (the default port) or `:PORT` (loopback) -> (host, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError(f"--web {text!r}: an IPv6 address goes in brackets: [::1]:8470")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"--web {text!r}: expected [V6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise argparse.ArgumentTypeError(f"--web {text!r}: write an IPv6 address in brackets: [{text}]:PORT")
    host = host or WEB_HOST_DEFAULT
    try:
        port = int(port_text) if port_text else WEB_PORT_DEFAULT
    except ValueError:
        raise argparse.ArgumentTypeError(f"--web {text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--web {text!r}: the port is 0..65535 (0: any free port)")
    if host not in LOOPBACK_NAMES:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--web {text!r}: {host!r} is not an IP address (127.0.0.1, 0.0.0.0, a LAN address)"
            ) from None
    return host, port


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host`: no login is asked (anything else needs the secret)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
