"""`python -m pipeline serve`: the review workstation (see app.py). `serve` runs it with uvicorn."""
from __future__ import annotations

from dataclasses import dataclass

from mammo.errors import MammoError


@dataclass(frozen=True)
class Address:
    """Where the server listens and the token it requires, as `check_address` accepted them."""

    host: str
    port: int
    token: str | None


def check_address(host: str, port: int, token: str | None) -> Address:
    """The checked address, with the token the server will require; MammoError for a bad port or a
    non-loopback host without a token. `serve` takes only this: the check runs once, before the models load."""
    from pipeline.serve.security import resolve_token

    if not 0 < port < 65536:
        raise MammoError(f"--port {port}: expected 1-65535")
    try:
        return Address(host, port, resolve_token(host, token))
    except ValueError as exc:
        raise MammoError(str(exc)) from None


def login_url(host: str, port: int, token: str | None) -> str:
    """The address `serve` prints: the token percent-encoded (a base64 token's '+' would arrive as a space)."""
    from urllib.parse import quote

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown  # an IPv6 address
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


def serve(run_dirs, models, cfg, threshold: float, address: Address, argv=None) -> int:
    import logging

    import uvicorn

    from mammo.runs import start_run
    from pipeline.serve.app import create_app
    from pipeline.serve.files import STATE_DIR
    from pipeline.serve.security import RedactToken

    host, port, token = address.host, address.port, address.token
    app = create_app(run_dirs, models, cfg, threshold, token=token)
    start_run(cfg, app.state.runs.runs[0].root / STATE_DIR, argv)  # the server's resolved config, beside its state
    n = sum(len(r.results) for r in app.state.runs.runs)
    print(f"serving {n} analysed images from {len(run_dirs)} run folder(s)")
    print(f"open {login_url(host, port, token)}   (Ctrl+C stops)", flush=True)
    logging.getLogger("uvicorn.access").addFilter(RedactToken())
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    return 0
