"""Where the PACS servers are and how to log in: a settings file, with secrets also from the environment.

The settings file is JSON, ``$SPEECHCT_PACS_CONFIG`` or ``<user config dir>/speechct/pacs.json``::

    {"default": "main",
     "servers": {
       "main":  {"dicomweb": "https://pacs.example.org/dicom-web",
                 "auth": "basic", "username": "reader", "password": "...",     # or "auth": "bearer", "token": "..."
                 "ca_bundle": "/etc/ssl/certs/department-ca.pem",              # TLS: a private CA (default: system CAs)
                 "client_cert": "/path/cert.pem", "client_key": "/path/key.pem", "timeout": 30},
       "dimse": {"dimse": "PACS_AET@pacs.example.org:104", "calling_aet": "SPEECHCT",
                 "retrieve": "get",                                            # or "move" (+ "move_port": 11113)
                 "tls": true, "ca_bundle": "...",                              # DICOM TLS (optional)
                 "timeout": 30}},
     "cache": {"folder": "/data/speechct-pacs-cache", "max_gb": 20}}

Secrets never go on the command line (a URL with ``user:password@`` is refused) and never into a
log or an error message (:class:`PacsServer`'s repr leaves them out). The environment fills in what
the file does not say, for whichever server is used: ``SPEECHCT_PACS_USERNAME``,
``SPEECHCT_PACS_PASSWORD``, ``SPEECHCT_PACS_TOKEN`` (bearer), ``SPEECHCT_PACS_CA_BUNDLE``;
``SPEECHCT_PACS_CACHE`` and ``SPEECHCT_PACS_CACHE_GB`` set the cache. A settings file that holds a
secret and can be read by other users gets a warning (``chmod 600``).
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import SpeechCTWarning
from engine.pacs.errors import PacsError

ENV_CONFIG = "SPEECHCT_PACS_CONFIG"
ENV_SECRETS = {"username": "SPEECHCT_PACS_USERNAME", "password": "SPEECHCT_PACS_PASSWORD",
               "token": "SPEECHCT_PACS_TOKEN", "ca_bundle": "SPEECHCT_PACS_CA_BUNDLE"}
DEFAULT_CALLING_AET = "SPEECHCT"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CACHE_GB = 20.0
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 characters, no backslash or control characters
_SERVER_KEYS = {"dicomweb", "dimse", "auth", "username", "password", "token", "ca_bundle", "verify",
                "client_cert", "client_key", "timeout", "calling_aet", "retrieve", "move_port", "tls"}


def settings_path() -> Path:
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("speechct")) / "pacs.json"


@dataclass(frozen=True)
class PacsServer:
    """One PACS: a DICOMweb base URL, or a DIMSE AE title + host + port. Secrets are left out of repr."""

    name: str
    kind: str  # "dicomweb" | "dimse"
    url: str | None = None  # DICOMweb base (QIDO/WADO/STOW under it)
    aet: str | None = None  # the PACS's AE title (DIMSE)
    host: str | None = None
    port: int | None = None
    calling_aet: str = DEFAULT_CALLING_AET
    retrieve: str = "get"  # DIMSE: "get" (C-GET) or "move" (C-MOVE to our own C-STORE receiver)
    move_port: int | None = None  # DIMSE C-MOVE: the port our receiver listens on (the PACS must know it)
    tls: bool = False  # DIMSE over TLS (DICOMweb: the URL's https:// says it)
    timeout: float = DEFAULT_TIMEOUT
    auth: str = "none"  # "none" | "basic" | "bearer"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    verify: bool = True
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """How the server is named in messages (no credentials)."""
        if self.kind == "dicomweb":
            return self.url or self.name
        return f"{self.aet}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.address if self.name in ("", self.address) else f"{self.name} ({self.address})"


@dataclass(frozen=True)
class CacheSettings:
    folder: Path
    max_bytes: int


def parse_aet_address(text: str, where: str = "--aet") -> tuple[str, str, int]:
    """``AET@HOST:PORT`` → (aet, host, port)."""
    m = re.fullmatch(r"(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})", text.strip())
    if not m:
        raise PacsError(f"expected AET@HOST:PORT (e.g. ORTHANC@pacs.example.org:4242), got {text!r}", where)
    aet, host, port = m["aet"].strip(), m["host"].strip("[]"), int(m["port"])
    if not _AET.match(aet):
        raise PacsError(f"AE title {aet!r} is not 1-16 printable characters", where)
    if not 0 < port < 65536:
        raise PacsError(f"port {port} out of range", where)
    return aet, host, port


def check_url(url: str, where: str = "--url") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(f"a DICOMweb URL starts with http:// or https:// and names a host, got {_redact(url)!r}", where)
    if parts.username or parts.password:
        raise PacsError("credentials do not go in the URL: put them in the PACS settings file or "
                        "SPEECHCT_PACS_USERNAME / SPEECHCT_PACS_PASSWORD / SPEECHCT_PACS_TOKEN", where)
    return url.rstrip("/")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
    return url


def load_settings(path: Path | None = None) -> dict:
    """The settings file as a dict ({} when there is none); one-line PacsError when it is unreadable."""
    path = Path(path) if path else settings_path()
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PacsError(f"cannot read the PACS settings ({exc.__class__.__name__})", path) from exc
    except ValueError as exc:
        raise PacsError(f"the PACS settings are not valid JSON ({exc})", path) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("servers", {}), dict):
        raise PacsError("the PACS settings must be a JSON object with a 'servers' object", path)
    if _holds_secret(raw) and os.name == "posix":
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(f"{path}: holds a PACS password or token and other users can read it (chmod 600 it)",
                          SpeechCTWarning, stacklevel=2)
    return raw


def _holds_secret(raw: dict) -> bool:
    return any(isinstance(s, dict) and (s.get("password") or s.get("token") or s.get("client_key"))
               for s in raw.get("servers", {}).values())


def _from_env(entry: dict) -> dict:
    out = dict(entry)
    for key, env in ENV_SECRETS.items():
        if not out.get(key) and os.environ.get(env):
            out[key] = os.environ[env]
    return out


def _server_from_entry(name: str, entry: dict, where: str) -> PacsServer:
    if not isinstance(entry, dict):
        raise PacsError(f"server {name!r} must be a JSON object", where)
    unknown = set(entry) - _SERVER_KEYS
    if unknown:
        raise PacsError(f"server {name!r}: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: {', '.join(sorted(_SERVER_KEYS))})", where)
    entry = _from_env(entry)
    if bool(entry.get("dicomweb")) == bool(entry.get("dimse")):
        raise PacsError(f"server {name!r} needs exactly one of 'dicomweb' (a URL) or 'dimse' (AET@HOST:PORT)", where)
    try:
        timeout = float(entry.get("timeout", DEFAULT_TIMEOUT))
    except (TypeError, ValueError) as exc:
        raise PacsError(f"server {name!r}: timeout must be a number of seconds", where) from exc
    if timeout <= 0:
        raise PacsError(f"server {name!r}: timeout must be > 0 s", where)
    auth = entry.get("auth") or ("bearer" if entry.get("token") else "basic" if entry.get("username") else "none")
    if auth not in ("none", "basic", "bearer"):
        raise PacsError(f"server {name!r}: auth must be none, basic or bearer, got {auth!r}", where)
    if auth == "basic" and not (entry.get("username") and entry.get("password")):
        raise PacsError(f"server {name!r}: basic auth needs a username and a password (settings file or "
                        "SPEECHCT_PACS_USERNAME / SPEECHCT_PACS_PASSWORD)", where)
    if auth == "bearer" and not entry.get("token"):
        raise PacsError(f"server {name!r}: bearer auth needs a token (settings file or SPEECHCT_PACS_TOKEN)", where)
    common = dict(name=name, timeout=timeout, auth=auth, username=entry.get("username"),
                  password=entry.get("password"), token=entry.get("token"), ca_bundle=entry.get("ca_bundle"),
                  verify=bool(entry.get("verify", True)), client_cert=entry.get("client_cert"),
                  client_key=entry.get("client_key"))
    if entry.get("dicomweb"):
        return PacsServer(kind="dicomweb", url=check_url(str(entry["dicomweb"]), where), **common)
    aet, host, port = parse_aet_address(str(entry["dimse"]), where)
    calling = str(entry.get("calling_aet") or DEFAULT_CALLING_AET)
    if not _AET.match(calling):
        raise PacsError(f"server {name!r}: calling_aet {calling!r} is not 1-16 printable characters", where)
    retrieve = entry.get("retrieve", "get")
    if retrieve not in ("get", "move"):
        raise PacsError(f"server {name!r}: retrieve must be 'get' (C-GET) or 'move' (C-MOVE), got {retrieve!r}", where)
    move_port = entry.get("move_port")
    if retrieve == "move" and not move_port:
        raise PacsError(f"server {name!r}: retrieve 'move' needs move_port (the port our C-STORE receiver "
                        "listens on, known to the PACS as calling_aet)", where)
    tls = bool(entry.get("tls", False))
    if tls and retrieve == "move":
        raise PacsError(f"server {name!r}: C-MOVE's receiver listens without TLS; with 'tls' use retrieve 'get'",
                        where)
    return PacsServer(kind="dimse", aet=aet, host=host, port=port, calling_aet=calling, retrieve=retrieve,
                      move_port=int(move_port) if move_port else None, tls=tls, **common)


def resolve_server(name: str | None = None, *, url: str | None = None, aet: str | None = None,
                   calling_aet: str | None = None, timeout: float | None = None,
                   retrieve: str | None = None, move_port: int | None = None, tls: bool | None = None,
                   settings: Path | None = None) -> PacsServer:
    """The server to talk to: ``url`` (DICOMweb) or ``aet`` (``AET@HOST:PORT``) given directly, else the
    settings file's server ``name`` (or its ``default``, or its only server). Secrets come from the
    settings file's entry for that server, then from the environment."""
    if url and aet:
        raise PacsError("give either --url (DICOMweb) or --aet (DIMSE), not both")
    path = Path(settings) if settings else settings_path()
    raw = load_settings(path)
    where = str(path)
    overrides = {k: v for k, v in (("calling_aet", calling_aet), ("timeout", timeout), ("retrieve", retrieve),
                                   ("move_port", move_port), ("tls", tls)) if v is not None}
    if url or aet:
        entry = {"dicomweb": check_url(url)} if url else {"dimse": aet}
        # a server of the settings with the same address lends its secrets and TLS settings
        for sname, sentry in raw.get("servers", {}).items():
            if isinstance(sentry, dict) and _same_address(sentry, entry):
                merged = {**sentry, **entry, **overrides}
                return _server_from_entry(sname, merged, where)
        server = _server_from_entry(url or aet, {**entry, **overrides}, "--url" if url else "--aet")
        return server
    servers = raw.get("servers", {})
    if not servers:
        raise PacsError("no PACS given: pass --url URL (DICOMweb) or --aet AET@HOST:PORT (DIMSE), or list "
                        "servers in the PACS settings file", where)
    if name is None:
        name = raw.get("default") or (next(iter(servers)) if len(servers) == 1 else None)
        if name is None:
            raise PacsError(f"several servers ({', '.join(servers)}) and no 'default': pass --server NAME", where)
    if name not in servers:
        raise PacsError(f"no server named {name!r} (known: {', '.join(servers) or 'none'})", where)
    return _server_from_entry(name, {**servers[name], **overrides}, where)


def _same_address(a: dict, b: dict) -> bool:
    if b.get("dicomweb"):
        return str(a.get("dicomweb", "")).rstrip("/") == b["dicomweb"]
    return str(a.get("dimse", "")).replace(" ", "") == str(b.get("dimse", "")).replace(" ", "")


def cache_settings(settings: Path | None = None, folder: str | Path | None = None,
                   max_gb: float | None = None) -> CacheSettings:
    """The local study cache: ``folder``/``max_gb`` if given, else the environment, else the settings
    file's ``cache``, else ``<user cache dir>/speechct/pacs`` and 20 GB."""
    raw = load_settings(Path(settings) if settings else None).get("cache", {}) or {}
    folder = folder or os.environ.get("SPEECHCT_PACS_CACHE") or raw.get("folder")
    if not folder:
        import platformdirs

        folder = Path(platformdirs.user_cache_dir("speechct")) / "pacs"
    if max_gb is None:
        text = os.environ.get("SPEECHCT_PACS_CACHE_GB") or raw.get("max_gb", DEFAULT_CACHE_GB)
        try:
            max_gb = float(text)
        except (TypeError, ValueError) as exc:
            raise PacsError(f"the cache size cap must be a number of GB, got {text!r}") from exc
    if max_gb <= 0:
        raise PacsError(f"the cache size cap must be > 0 GB, got {max_gb}")
    return CacheSettings(Path(folder).expanduser(), int(max_gb * 1e9))
