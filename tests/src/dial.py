import os
import socket
import sys

# A stand-in skill: dials each (host, port) pair from argv, sends a line, prints what happened.
# Output: "pid N", then one "dial HOST:PORT ok|err TEXT" line per target.
print(f"pid {os.getpid()}", flush=True)
args = sys.argv[1:]
for host, port in zip(args[0::2], args[1::2]):
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"ping\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                reply += chunk
            reply = reply.decode(errors="replace").strip()
            if reply:
                print(f"dial {target} ok {reply}", flush=True)
            else:
                print(f"dial {target} err closed without a reply", flush=True)
    except OSError as e:
        print(f"dial {target} err {type(e).__name__}: {e}", flush=True)
