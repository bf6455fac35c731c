"""A TLS-terminating TCP proxy on loopback, for DICOMweb-over-TLS tests.

Debian bookworm's Orthanc 1.10.1 crashes (SIGSEGV) on its first HTTPS connection when ``SslEnabled``
is on, so the tests put TLS in front of it the way a department usually does: a reverse proxy that
holds the certificate and forwards plain HTTP to Orthanc.
"""

from __future__ import annotations

import socket
import ssl
import threading


class TlsProxy:
    def __init__(self, certfile: str, keyfile: str, target_port: int):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # e.g. a client that does not trust our certificate
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, tls), daemon=True).start()
        pump(tls, upstream)
        tls.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
