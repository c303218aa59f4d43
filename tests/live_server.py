"""The review app (`pipeline serve`) under a real uvicorn server on a free loopback port, for tests that talk to it
over HTTP as a browser would."""
import contextlib
import socket
import threading
import time


@contextlib.contextmanager
def serving(app):
    """`app` under uvicorn on a free port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.time() + 30
    while not server.started and time.time() < end:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
