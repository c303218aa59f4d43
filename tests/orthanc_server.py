"""A real PACS for the tests: Orthanc (Debian's `orthanc`) with its DICOMweb plugin (`orthanc-dicomweb`).

`OrthancServer` starts an Orthanc process with its own JSON configuration in a temporary folder: storage there,
HTTP and DICOM on free ports, remote (non-loopback) access refused, no authentication, AET 'ORTHANC', and
`DicomModalities` it may C-STORE to (at start, or later with `add_modality`). Orthanc 1.10 has no bind-address
option, so "remote access not allowed" is what keeps other hosts out of its REST API.

Fixtures: `orthanc` (one server for the session; tests use their own study UIDs so they do not see each other)
and `orthanc_factory` (a fresh server per call, for tests that stop or reconfigure it). Where Orthanc or the
plugin is missing they skip with the reason, and fail under CI (scripts/system-deps.sh installs both).
Import the fixtures into a test module: `from orthanc_server import orthanc, orthanc_factory  # noqa: F401`.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ci import unavailable

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str | None:
    # /usr/sbin is not on every user's PATH, which is where the Debian package puts it
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        hits = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if hits:
            return hits[0]
    return None


class OrthancServer:
    """One Orthanc process; `start()`/`stop()` may be called again (a restart keeps the storage)."""

    def __init__(self, root: Path, *, aet: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None,
                 lua: str | None = None):
        """`modalities`: name -> (AET, host, port) of peers Orthanc may C-STORE to; `lua`: a Lua script Orthanc
        runs (e.g. a ReceivedInstanceFilter that refuses some instances)."""
        import requests

        self.root = Path(root)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.lua = lua
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        self.process: subprocess.Popen | None = None
        self.session = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def config(self) -> dict:
        return {
            "Name": "mammo-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()},
            "SaveJobs": False,
            "StableAge": 1,
            "HttpCompressionEnabled": False,
        }

    def start(self) -> "OrthancServer":
        self.root.mkdir(parents=True, exist_ok=True)
        settings = self.config()
        if self.lua:
            (self.root / "script.lua").write_text(self.lua)
            settings["LuaScripts"] = [str(self.root / "script.lua")]
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(settings, indent=2))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([orthanc_binary(), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {self.process.returncode} while starting:\n"
                                   f"{self.log_tail()}")
            try:
                plugins = self.session.get(f"{self.url}/plugins", timeout=2).json()
                if "dicom-web" not in plugins:
                    raise RuntimeError(f"Orthanc started without its DICOMweb plugin ({plugins}):\n{self.log_tail()}")
                return self
            except OSError:  # requests' ConnectionError is an OSError: not listening yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        """Stop Orthanc: gracefully (about 5 s: its HTTP and DICOM servers poll for the stop), or kill it, as a
        crash or a pulled cable would; its SQLite index survives both."""
        self.session.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # ------------------------------------------------------------------------------------------ REST helpers
    def _get(self, path: str, **kwargs):
        r = self.session.get(f"{self.url}{path}", timeout=30, **kwargs)
        r.raise_for_status()
        return r.json()

    def upload(self, path_or_bytes) -> dict:
        """POST /instances: store one DICOM file (a path or its bytes); Orthanc's answer (ID, ParentStudy, Status)."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        r = self.session.post(f"{self.url}/instances", data=data, timeout=60)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return self._get("/instances")

    def find(self, level: str = "Instance", **query) -> list[dict]:
        """POST /tools/find with a DICOM keyword query (e.g. StudyInstanceUID=..., Modality='SR'), expanded."""
        r = self.session.post(f"{self.url}/tools/find", timeout=30,
                              json={"Level": level, "Query": query, "Expand": True})
        r.raise_for_status()
        return r.json()

    def tags(self, instance_id: str) -> dict:
        """An instance's tags by keyword (Orthanc's 'simplified' form: sequences as lists of dicts)."""
        return self._get(f"/instances/{instance_id}/simplified-tags")

    def file(self, instance_id: str) -> bytes:
        r = self.session.get(f"{self.url}/instances/{instance_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DICOM peer Orthanc may C-STORE to (kept in memory until Orthanc stops)."""
        self.modalities[name] = (aet, host, port)
        r = self.session.put(f"{self.url}/modalities/{name}", timeout=30,
                             json={"AET": aet, "Host": host, "Port": port})
        r.raise_for_status()

    def __repr__(self):
        return f"OrthancServer({self.url}, dicom {self.aet}@127.0.0.1:{self.dicom_port})"


def _require_orthanc() -> None:
    if orthanc_binary() is None:
        unavailable("Orthanc is not installed (apt-get install orthanc, or run scripts/system-deps.sh as root)",
                    "scripts/system-deps.sh")
    if dicomweb_plugin() is None:
        unavailable(f"Orthanc's DICOMweb plugin is not installed in {' or '.join(PLUGIN_DIRS)} "
                    "(apt-get install orthanc-dicomweb, or run scripts/system-deps.sh as root)",
                    "scripts/system-deps.sh")
    try:
        import requests  # noqa: F401  (installed with dicomweb-client)
    except ImportError:
        unavailable("the requests package is not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """One Orthanc for the whole session."""
    _require_orthanc()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop(kill=True)  # its storage is thrown away: no need to wait for a graceful stop


@pytest.fixture
def orthanc_factory(tmp_path_factory):
    """`orthanc_factory(**kwargs)` starts a fresh Orthanc (OrthancServer's keywords); all stopped afterwards."""
    _require_orthanc()
    servers = []

    def make(**kwargs) -> OrthancServer:
        server = OrthancServer(tmp_path_factory.mktemp("orthanc"), **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(kill=True)
