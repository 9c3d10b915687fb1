"""The demo skill: reads orders from the API, then tries a database nobody declared.

Prints one line per attempt: `<outcome> <what> -> <result>`.
"""
import socket
import urllib.request


def attempt(what, action):
    try:
        print(f"ok      {what} -> {action()}", flush=True)
    except OSError as e:
        reason = getattr(e, "reason", e)
        print(f"refused {what} -> {type(reason).__name__}: {reason}", flush=True)


def get_orders():
    with urllib.request.urlopen("http://127.0.0.2:8080/orders", timeout=5) as r:
        return f"{r.status} {r.read().decode()}"


def dial_database():
    with socket.create_connection(("127.0.0.3", 5432), timeout=5) as s:
        s.sendall(b"\0")
        return f"connected, read {s.recv(64)!r}"


attempt("GET http://127.0.0.2:8080/orders", get_orders)
attempt("connect 127.0.0.3:5432 (an undeclared database)", dial_database)
