"""Memory of receiving one large C-STORE object, with pynetdicom's chunked receipt (what `pipeline listen` uses now:
the data set goes to a temporary file as it arrives, its size checked there against listen.max_object_mb) and
without (as it did before: the data set held in memory, its bytes taken with event.encoded_dataset() to spool
them). Prints the receiving process's peak RSS growth for each.

    python benchmarks/listen_receipt_memory.py [--mb 94]

A bare pynetdicom storage SCP in a child process (so its peak RSS is its own), a pynetdicom SCU here sending a
random uncompressed image from a file (STORE_SEND_CHUNKED_DATASET: the sender streams too).
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

SCP = """
import re, sys, threading
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
_config.STORE_RECV_CHUNKED_DATASET = sys.argv[1] == "on"
done = threading.Event()
ae = AE(ae_title="SCP")
for c in AllStoragePresentationContexts:
    ae.add_supported_context(c.abstract_syntax, ALL_TRANSFER_SYNTAXES)
def on_store(event):  # what the listener's handler takes of the object: before, the bytes; now, the file's size
    size = event.dataset_path.stat().st_size if _config.STORE_RECV_CHUNKED_DATASET else len(event.encoded_dataset())
    done.set()
    return 0
server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
def peak_mb():  # VmHWM: ru_maxrss would carry the forking parent's peak over the exec
    return int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
base = peak_mb()
print("port", server.server_address[1], flush=True)
done.wait(600)
server.shutdown()
print(peak_mb() - base, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=94, help="size of the object sent (MB)")
    args = parser.parse_args()
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid
    from pynetdicom import AE, _config

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from dicom_fixtures import write_dicom

    side = int((args.mb * 2**20 / 2) ** 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dicom(Path(tmp) / "big.dcm", np.random.default_rng(0).integers(0, 4096, (side, side), dtype=np.uint16), bits_stored=12,
                           StudyInstanceUID=generate_uid())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        _config.STORE_SEND_CHUNKED_DATASET = True
        for mode in ("off", "on"):
            scp = subprocess.Popen([sys.executable, "-c", SCP, mode], stdout=subprocess.PIPE, text=True)
            port = int(scp.stdout.readline().split()[1])
            ae = AE(ae_title="SCU")
            ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
            assoc = ae.associate("127.0.0.1", port, ae_title="SCP")
            status = assoc.send_c_store(path).Status
            assoc.release()
            grown = float(scp.stdout.readline())
            scp.wait(60)
            print(f"chunked receipt {mode}: a {path.stat().st_size / 2**20:.1f} MB object (status {status:#06x}), "
                  f"receiver's peak RSS grew {grown:.1f} MB")


if __name__ == "__main__":
    main()
