"""PyInstaller runtime hook: runs in the frozen app before any of its modules.

1. Offline always: Hugging Face libraries read these once, at import.
2. ``SPEECHCT_DENY_NETWORK=1`` makes every IP socket operation raise ``OSError`` (DNS, connect,
   sendto): the build's selftest runs with it so that any attempt to reach the network fails loudly,
   also where ``unshare -n`` is not allowed. Unix-domain sockets (D-Bus, X11, PulseAudio) still work.
"""

import os

# = engine.offline.OFFLINE_ENV (a test keeps them equal); set here too, before any library module runs
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_HUB_KERNELS": "NO"}.items():
    os.environ.setdefault(_key, _value)


def _deny_network() -> None:
    import socket

    ip_families = {socket.AF_INET, socket.AF_INET6}

    class NetworkDenied(OSError):
        pass

    def refuse(what):
        raise NetworkDenied(f"network access refused ({what}): SPEECHCT_DENY_NETWORK=1")

    original_socket = socket.socket

    class GuardedSocket(original_socket):
        def connect(self, address):
            if self.family in ip_families:
                refuse(f"connect {address!r}")
            return super().connect(address)

        def connect_ex(self, address):
            if self.family in ip_families:
                refuse(f"connect {address!r}")
            return super().connect_ex(address)

        def sendto(self, *args):
            if self.family in ip_families:
                refuse("sendto")
            return super().sendto(*args)

    def getaddrinfo(host, *args, **kwargs):
        refuse(f"resolve {host!r}")

    def gethostbyname(host):
        refuse(f"resolve {host!r}")

    socket.socket = GuardedSocket
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.create_connection = lambda address, *a, **k: refuse(f"connect {address!r}")


if os.environ.get("SPEECHCT_DENY_NETWORK") == "1":
    _deny_network()
