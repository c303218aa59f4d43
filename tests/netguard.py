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
