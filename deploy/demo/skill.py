"""The demo skills. `skill.py reporter` reads the API and the database, tries a write, asks for
a refund (held until an SRE approves it), then tries to go around skillgate; `skill.py analyst
TOKEN` connects with a token; `skill.py closed` tries again with the agent stopped.

Prints one line per attempt: `<outcome> <what> -> <result>`.
"""
import socket
import sys
import urllib.request

import psycopg2


def attempt(what, action):
    try:
        print(f"ok      {what} -> {action()}", flush=True)
    except Exception as e:  # the demo reports every way of being refused
        reason = getattr(e, "reason", e)
        text = " ".join(str(reason).split())
        code = getattr(e, "pgcode", None)
        print(f"refused {what} -> {type(reason).__name__}{' ' + code if code else ''}: {text}", flush=True)


def get_orders():
    with urllib.request.urlopen("http://127.0.0.2:8080/orders", timeout=5) as r:
        return f"{r.status} {r.read().decode()}"


def sql(statement, password=None):
    def run():
        db = psycopg2.connect(host="127.0.0.2", port=5432, user="whoever", dbname="shop",
                              password=password, connect_timeout=5)
        db.autocommit = True
        with db.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else cur.statusmessage
    return run


def direct_database():
    with socket.create_connection(("127.0.0.1", 15432), timeout=5) as s:
        s.sendall(b"\0\0\0\x08\x04\xd2\x16\x2f")
        return f"connected, read {s.recv(64)!r}"


def raw_socket():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    return "a raw socket"


mode = sys.argv[1]
if mode == "reporter":
    attempt("GET http://127.0.0.2:8080/orders", get_orders)
    attempt("SELECT name, email, card FROM customers", sql("SELECT name, email, card FROM customers ORDER BY id"))
    attempt("DELETE FROM orders", sql("DELETE FROM orders"))
    attempt("INSERT INTO refunds VALUES (7, 70) (held for approval)", sql("INSERT INTO refunds VALUES (7, 70)"))
    attempt("connect 127.0.0.1:15432 (the database's real address)", direct_database)
    attempt("open a raw ICMP socket", raw_socket)
elif mode == "analyst":
    attempt("SELECT count(*) FROM orders with a token issued to `reporter`",
            sql("SELECT count(*) FROM orders", password=sys.argv[2]))
elif mode == "closed":
    attempt("GET http://127.0.0.2:8080/orders", get_orders)
    attempt("connect 127.0.0.1:15432 (the database's real address)", direct_database)
