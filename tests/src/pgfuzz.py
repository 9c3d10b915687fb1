"""A hostile PostgreSQL client for the differential harness (tests/pg_differential.rs).

Usage: pgfuzz.py HOST PORT SEED SECONDS OUT

Until SECONDS have passed, opens sessions to HOST:PORT and sends each a random sequence of
v3 protocol messages: simple queries, extended-protocol cycles (Parse, Bind with text or binary
results, Describe, Execute with row limits, Close, Sync, Flush), COPY sub-protocol messages,
function calls and junk, with SQL drawn from a grammar that uses the masked column `secret` of
table `vault` in every position it can take, and mutated copies of it. Everything received is
written to OUT, one JSON line per session: {"session", "sent", "received"} (hex), so the test
can look for the canary values this client never knows and replay what found one.
"""
import json
import random
import socket
import struct
import sys
import time

host, port, seed, seconds, out_path = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
rng = random.Random(seed)


def message(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(text):
    return text.encode() + b"\0"


def startup():
    body = struct.pack("!I", 196608) + cstr("user") + cstr("fuzz") + cstr("database") \
        + cstr("shop") + b"\0"
    return struct.pack("!I", len(body) + 4) + body


MASKED = ["secret", "v.secret", '"secret"', "vault.secret"]
PLAIN = ["id", "v.id", "note", "v.note", "1", "'x'", "NULL"]
ROWS = ["v", "v.*", "vault", "row_to_json(v)", "to_jsonb(v)", "v::text", "json_agg(v)",
        "ROW(v.*)", "secret(v)", "(v).secret"]
FUNCS = ["upper({})", "lower({})", "length({})", "md5({})", "reverse({})", "({})::int",
         "({})::text", "substr({}, 2, 4)", "encode(convert_to({}, 'UTF8'), 'hex')",
         "coalesce({}, 'n')", "string_agg({}, ',')", "max({})", "count({})", "{} || 'z'",
         "left({}, 3)", "translate({}, 'abc', 'xyz')", "format('%s', {})", "quote_literal({})",
         "to_json({})", "array_agg({})", "({})::bytea", "CASE WHEN {} LIKE 'z%' THEN 1 END"]


def expr(depth=0):
    roll = rng.random()
    if depth > 2 or roll < 0.35:
        return rng.choice(MASKED)
    if roll < 0.5:
        return rng.choice(PLAIN)
    if roll < 0.6:
        return rng.choice(ROWS)
    if roll < 0.85:
        return rng.choice(FUNCS).format(expr(depth + 1))
    if roll < 0.95:
        return "(SELECT {} FROM vault v2 LIMIT 1)".format(expr(depth + 1).replace("v.", "v2."))
    return "(SELECT string_agg(secret, ';') FROM vault)"


def select():
    targets = ", ".join(expr() for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.2:
        targets = rng.choice(["*", "v.*", "secret", "id, secret", "secret AS s"])
    sql = "SELECT {}{} FROM vault v".format(rng.choice(["", "", "DISTINCT "]), targets)
    if rng.random() < 0.4:
        sql += " WHERE {} {} '{}'".format(
            expr(), rng.choice(["LIKE", "=", ">", "<>"]), rng.choice(["z%", "a", "Q", "%"]))
    if rng.random() < 0.2:
        sql += " GROUP BY {}".format(rng.choice(["1", "secret", "id", "v"]))
    if rng.random() < 0.3:
        sql += " ORDER BY {}".format(rng.choice(["1", "2", "secret", "id", "3", expr()]))
    if rng.random() < 0.3:
        sql += " LIMIT {}".format(rng.randint(0, 3))
    return sql


def statement():
    roll = rng.random()
    if roll < 0.45:
        sql = select()
    elif roll < 0.6:
        sql = rng.choice([
            "WITH c AS ({s}) SELECT * FROM c", "SELECT * FROM ({s}) s",
            "{s} UNION ALL {s}", "EXPLAIN {s}", "EXPLAIN ANALYZE {s}",
            "COPY ({s}) TO STDOUT", "DECLARE cur CURSOR WITH HOLD FOR {s}",
            "PREPARE p{n} AS {s}", "CREATE TEMP TABLE t{n} AS {s}", "SELECT * INTO t{n} FROM ({s}) s",
            "SELECT * FROM orders WHERE id IN (SELECT id FROM ({s}) s)",
        ]).format(s=select(), n=rng.randint(0, 3))
    elif roll < 0.75:
        sql = rng.choice([
            "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT s", "ROLLBACK TO s", "FETCH ALL FROM cur",
            "FETCH 1 FROM cur", "EXECUTE p0", "EXECUTE p1", "CLOSE cur", "TABLE vault",
            "SELECT * FROM vault", "SELECT id, secret FROM vault ORDER BY id",
            "SELECT count(*) FROM orders", "SHOW search_path", "SELECT 1/0", "SELECT",
            "COPY vault TO STDOUT", "COPY vault FROM STDIN", "LISTEN c", "DISCARD ALL",
            "DEALLOCATE ALL", "SET search_path = pg_temp, public", "RESET ALL",
        ])
    elif roll < 0.9:
        sql = rng.choice([
            "UPDATE vault SET note = secret", "DELETE FROM vault", "TRUNCATE vault",
            "INSERT INTO vault SELECT * FROM vault", "DROP TABLE vault",
            "ALTER TABLE vault ADD COLUMN z int", "UPDATE vault SET secret = 'x' RETURNING *",
            "INSERT INTO vault (id, secret) VALUES (1, 'x') ON CONFLICT DO NOTHING",
            "CREATE TABLE leak AS SELECT * FROM vault", "GRANT ALL ON vault TO PUBLIC",
            "DO $$BEGIN RAISE NOTICE '%', (SELECT string_agg(secret, ',') FROM vault); END$$",
            "SELECT set_config('x.y', (SELECT string_agg(secret, ',') FROM vault), false)",
            "SELECT pg_notify('c', (SELECT string_agg(secret, ',') FROM vault))",
            "SELECT current_setting('x.y')", "WITH d AS (DELETE FROM vault RETURNING *) SELECT 1",
            "SELECT * FROM vault FOR UPDATE", "LOCK vault", "VACUUM vault",
        ])
    else:
        sql = select()
    if rng.random() < 0.15:
        sql = "; ".join([sql, statement()])
    if rng.random() < 0.15:
        sql = mutate(sql)
    return sql


def mutate(sql):
    chars = list(sql)
    for _ in range(rng.randint(1, 4)):
        if not chars:
            break
        at = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.3:
            del chars[at]
        elif op < 0.6:
            chars.insert(at, rng.choice(";'()\"$ ,\n-*/\\x"))
        elif op < 0.8:
            end = min(len(chars), at + rng.randint(1, 12))
            chars[at:at] = chars[at:end]
        else:
            chars[at] = chars[at].swapcase()
    return "".join(chars)


def extended(names):
    out = b""
    statement_name = rng.choice(["", "", "s1", "s2"])
    portal = rng.choice(["", "", "p1", "cur"])
    if rng.random() < 0.9:
        out += message(b"P", cstr(statement_name) + cstr(statement()) + b"\0\0")
        names.append(statement_name)
    formats = rng.choice([b"\0\0", b"\0\1\0\1", b"\0\1\0\0", b"\0\2\0\0\0\1"])
    target = rng.choice(names) if names and rng.random() < 0.8 else "s9"
    out += message(b"B", cstr(portal) + cstr(target) + b"\0\0" + b"\0\0" + formats)
    if rng.random() < 0.5:
        out += message(b"D", rng.choice([b"P", b"S"]) + cstr(rng.choice([portal, target, "cur"])))
    for _ in range(rng.randint(1, 2)):
        out += message(b"E", cstr(rng.choice([portal, portal, "cur", "zz"]))
                       + struct.pack("!I", rng.choice([0, 0, 1, 2])))
    if rng.random() < 0.2:
        out += message(b"C", rng.choice([b"S", b"P"]) + cstr(rng.choice([portal, target])))
    if rng.random() < 0.8:
        out += message(b"S", b"")
    elif rng.random() < 0.5:
        out += message(b"H", b"")
    return out


def step(names):
    roll = rng.random()
    if roll < 0.45:
        return message(b"Q", cstr(statement()))
    if roll < 0.85:
        return extended(names)
    if roll < 0.9:
        return message(rng.choice([b"S", b"H"]), b"")
    if roll < 0.94:
        return message(rng.choice([b"d", b"c", b"f"]), rng.choice([b"", b"1\tz\n", b"oops\0"]))
    if roll < 0.97:
        # FunctionCall: textout(secret) would be a way around SQL altogether.
        # (oid, no format codes, one argument of 4 bytes, text result).
        body = struct.pack("!Ihhi", rng.choice([46, 47, 2274]), 0, 1, 4) + b"abcd"
        return message(b"F", body + struct.pack("!h", 0))
    kind = bytes([rng.choice(b"ABGIJKLMNORTUVWXYZ\x00\xff")])
    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    return message(kind, body)


def session():
    names = []
    sent = startup() + b"".join(step(names) for _ in range(rng.randint(1, 10)))
    if rng.random() < 0.9:
        sent += message(b"X", b"")
    received = b""
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as err:
        return sent, ("connect failed: %s" % err).encode()
    sock.settimeout(0.3)
    try:
        at = 0
        while at < len(sent):
            chunk = rng.randint(1, max(1, len(sent) - at))
            sock.sendall(sent[at:at + chunk])
            at += chunk
            if rng.random() < 0.3:
                time.sleep(0.01)
        deadline = time.time() + 5
        while time.time() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except OSError:
        pass
    finally:
        sock.close()
    return sent, received


def main():
    deadline = time.time() + seconds
    n = 0
    with open(out_path, "w") as out:
        while time.time() < deadline:
            sent, received = session()
            out.write(json.dumps({"session": n, "sent": sent.hex(), "received": received.hex()}))
            out.write("\n")
            out.flush()
            n += 1
    print("sessions", n)


main()
