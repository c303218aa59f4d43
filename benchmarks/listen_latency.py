"""Measure `pipeline listen`: latency per image, from the C-STORE that delivers it to its DICOM results stored at
the destination. Prints one line per image and the median.

    python benchmarks/listen_latency.py [--models DIR] [--images 8]     # the real command, in a child process
    python benchmarks/listen_latency.py --standins                       # stand-in models (tests/standins.py)

The sender is pynetdicom's SCU, the destination a pynetdicom storage SCP in this process; the images are the
embedded sample (8 real CBIS-DDSM DICOMs, about 4500 x 2800, RLE), sent one at a time, each once the previous
one's results arrived, so no image waits behind another. The figures are the listener's own (listen_status.json
and its journal: received -> stored).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pydicom  # noqa: E402
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt  # noqa: E402

from mammo.config import load_config  # noqa: E402
from mammo.runtime import PROJECT_ROOT  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402
from pipeline.dicomnode.listener import JOURNAL  # noqa: E402

SENDER = "BENCH"


def destination():
    got = []
    ae = AE(ae_title="DEST")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: got.append(1) or 0x0000)])
    return server, got


def send(port: int, path: Path) -> int:
    ds = pydicom.dcmread(path)
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMO_CAD")
    assert assoc.is_established, "the listener refused the association"
    status = assoc.send_c_store(ds).Status
    assoc.release()
    return status


def journal(out: Path) -> list[dict]:
    lines = (out / JOURNAL).read_text().splitlines() if (out / JOURNAL).is_file() else []
    return [json.loads(line) for line in lines]


def stored_events(out: Path) -> list[dict]:
    return [r for r in journal(out) if r["event"] == "stored"]


def latencies(out: Path) -> list[float]:
    """Per stored image, in order: its journal's receipt (t_received: the C-STORE's arrival) -> stored."""
    received = {r["key"]: r.get("t_received", r["t"]) for r in journal(out) if r["event"] == "received"}
    return [r["t"] - received[r["key"]] for r in stored_events(out)]


def start_standins(out: Path, overrides: list[str]):
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from standins import standin_pipeline_models

    from pipeline.dicomnode.listener import Listener

    models = standin_pipeline_models()
    listener, ready = Listener(load_config(overrides=overrides), models, out, log=lambda line: None), threading.Event()
    threading.Thread(target=listener.run, kwargs={"on_ready": lambda port: ready.set()}, daemon=True).start()
    ready.wait(300)
    return listener.port, listener.stop.set


def start_command(out: Path, overrides: list[str], models: str | None):
    cmd = [sys.executable, "-m", "pipeline", "listen", "--out", str(out), *overrides,
           *(["--models", models] if models else [])]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " listening as " in line:
            port = int(line.split(" for ")[0].rsplit(":", 1)[1])
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return port, lambda: (proc.terminate(), proc.wait(300))  # its summary line still has a reader
    raise SystemExit(f"pipeline listen did not start (exit code {proc.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="model bundle (default: the command's default, weights/)")
    parser.add_argument("--standins", action="store_true", help="stand-in models in this process instead")
    parser.add_argument("--images", type=int, default=8, choices=range(1, 9), metavar="1..8")
    args = parser.parse_args()
    server, got = destination()
    out = Path(tempfile.mkdtemp(prefix="listen-bench-"))
    overrides = ["listen.port=0", f"listen.allowed_calling=[{SENDER}]",
                 f"listen.destination=DEST@127.0.0.1:{server.server_address[1]}"]
    started = time.perf_counter()
    port, stop = start_standins(out, overrides) if args.standins else start_command(out, overrides, args.models)
    print(f"listener ready in {time.perf_counter() - started:.1f} s ({'stand-ins' if args.standins else 'command'})")
    try:
        for i, path in enumerate(sample_inputs()[: args.images], 1):
            assert send(port, path) == 0x0000
            while len(stored_events(out)) < i:
                time.sleep(0.05)
            print(f"image {i}: {latencies(out)[-1]:.2f} s", flush=True)
    finally:
        stop()
    time.sleep(2)
    status = json.loads((out / "listen_status.json").read_text())
    lat = latencies(out)
    print(f"latency per image (received -> results stored at the destination), {len(lat)} images: median "
          f"{statistics.median(lat):.2f} s, max {max(lat):.2f} s; the destination received {len(got)} objects; "
          f"listen_status.json says {status['latency_seconds']}")
    server.shutdown()


if __name__ == "__main__":
    main()
