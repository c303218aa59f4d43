"""Source of a prelude for probe scripts run in a fresh interpreter: it blocks every socket call and records
the attempts in `attempts`, so a probe can prove that nothing tried the network. Per-process by nature, hence
code to prepend rather than a fixture."""
import textwrap

BLOCK_NETWORK = textwrap.dedent('''
    import mammo.runtime
    import json, socket
    attempts = []
    def refuse(name):
        def f(*args, **kwargs):
            attempts.append([name, repr(args)[:200]])
            raise OSError(f"network blocked by test: {name}")
        return f
    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.getaddrinfo = refuse("getaddrinfo")
    socket.create_connection = refuse("create_connection")
    socket.gethostbyname = refuse("gethostbyname")
''')

# A 4+4-image YOLO dataset (bright square on noise, 1 channel) at `root`, for probes that train a step.
# `{root}` is filled by the caller with str.replace (the code's own braces stay literal).
TINY_YOLO_DATASET = textwrap.dedent('''
    from pathlib import Path
    import cv2, numpy as np
    root = Path(r"{root}")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(4):
            img = (rng.random((64, 64)) * 40).astype(np.uint8)
            img[20:36, 24:40] = 230
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.4375 0.25 0.25\\n")
    (root / "data.yaml").write_text(f"path: {root}\\ntrain: images/train\\nval: images/val\\n"
                                    "names: {0: lesion}\\nchannels: 1\\n")
''')
