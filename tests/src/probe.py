"""A stand-in skill that tries one way out of its cgroup per argument.

Each argument is `ACTION` or `ACTION:ARG,ARG...`. Output: `pid N`, then one line per action:
`ACTION ok RESULT` or `ACTION err EXCEPTION ERRNO`.
"""
import ctypes
import os
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)


def checked(rc):
    """A libc call's result, or its errno as OSError."""
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_connect(host, port):
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        s.send(b"probe")
        return "sent"


def udp_sendto(host, port):
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.sendto(b"probe", (host, int(port)))
        return "sent"


def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    return "created"


def raw6():
    socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6).close()
    return "created"


def ping():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    return "created"


def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    return "created"


def netlink():
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()  # NETLINK_ROUTE
    return "created"


def dns(server, name):
    """One A query sent with sendto(); reports who answered and the first address."""
    query = struct.pack(">HHHHHH", 0x5347, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        query += bytes([len(label)]) + label.encode()
    query += b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(family(server), socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query, (server, 53))
        answer, sender = s.recvfrom(512)
    if answer[:2] != query[:2]:
        return f"from={sender[0]}:{sender[1]} wrong-id"
    return f"from={sender[0]}:{sender[1]} addr={socket.inet_ntoa(answer[-4:])}"


def query(server, name, qtype="A", transport="udp"):
    """One query of type A, AAAA or TXT (by number otherwise) over UDP or TCP: reports the
    response code and the addresses and CNAME targets of the answer."""
    types = {"A": 1, "CNAME": 5, "TXT": 16, "AAAA": 28}
    msg = struct.pack(">HHHHHH", 0x5348, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        msg += bytes([len(label)]) + label.encode()
    msg += b"\0" + struct.pack(">HH", types.get(qtype) or int(qtype), 1)
    return exchange(server, msg, transport)


def query_hex(server, hexmsg, transport="udp"):
    """Sends the DNS message given in hex as it is (hostile shapes); reports as `query` does,
    or `no-answer` when nothing comes back within 2 s."""
    try:
        return exchange(server, bytes.fromhex(hexmsg), transport, timeout=2)
    except (socket.timeout, TimeoutError):
        return "no-answer"


def exchange(server, msg, transport, timeout=5):
    if transport == "tcp":
        with socket.create_connection((server, 53), timeout=timeout) as s:
            s.sendall(struct.pack(">H", len(msg)) + msg)
            size = struct.unpack(">H", recv_exact(s, 2))[0]
            answer = recv_exact(s, size)
    else:
        with socket.socket(family(server), socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(msg, (server, 53))
            answer = s.recvfrom(65535)[0]
    if answer[:2] != msg[:2]:
        return "wrong-id"
    rcode = answer[3] & 0x0F
    ancount = struct.unpack(">H", answer[6:8])[0]
    pos = skip_name(answer, 12) + 4
    found = []
    for _ in range(ancount):
        pos = skip_name(answer, pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", answer[pos:pos + 10])
        rdata = answer[pos + 10:pos + 10 + rdlen]
        if rtype == 1:
            found.append(socket.inet_ntoa(rdata))
        elif rtype == 28:
            found.append(socket.inet_ntop(socket.AF_INET6, rdata))
        elif rtype == 5:
            found.append("cname")
        pos += 10 + rdlen
    return f"rcode={rcode} " + ",".join(found)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise ConnectionResetError(104, "closed mid-message")
        data += more
    return data


def skip_name(msg, pos):
    while True:
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length


def resolve(name):
    return socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def peer(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        p = s.getpeername()
        return f"{p[0]}:{p[1]}"


def tcp(host, port):
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"probe\n")
        reply = s.recv(256)
        if not reply:
            raise ConnectionResetError(104, "closed without a reply")
        return reply.decode(errors="replace").strip()


def fork_tcp(host, port):
    """Dials from a child forked now, long after the skill started."""
    return in_child("tcp", host, port)


def unix_connect(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b"probe\n")
        return s.recv(256).decode(errors="replace").strip() or "connected"


def unix_abstract(name):
    return unix_connect("\0" + name)


def unix_sendto(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"probe", path)
        return "sent"


def socketpair():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"pair")
        return b.recv(4).decode()


def pidfd_getfd(pid, fd):
    """Takes a socket from another process (pidfd_getfd) and writes on it."""
    pidfd = os.pidfd_open(int(pid))
    try:
        stolen = checked(libc.syscall(438, pidfd, int(fd), 0))
    finally:
        os.close(pidfd)
    os.write(stolen, b"stolen\n")
    return "sent"


def ptrace(pid):
    checked(libc.ptrace(0x4206, int(pid), None, None))  # PTRACE_SEIZE
    return "attached"


def vm_read(pid, address):
    """Reads 16 bytes of another process's memory (process_vm_readv)."""
    buf = ctypes.create_string_buffer(16)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 16)
    remote = (ctypes.c_void_p * 2)(int(address), 16)
    n = checked(libc.process_vm_readv(int(pid), local, 1, remote, 1, 0))
    return buf.raw[:n].decode(errors="replace")


def socket_family(number, protocol="0"):
    """A socket of address family `number` (raw for packet and netlink)."""
    kind = socket.SOCK_RAW if int(number) in (16, 17) else socket.SOCK_STREAM
    socket.socket(int(number), kind, int(protocol)).close()
    return "created"


def io_uring():
    params = ctypes.create_string_buffer(120)
    fd = checked(libc.syscall(425, 8, params))  # io_uring_setup
    os.close(fd)
    return "created"


def in_child(action, *args):
    """Runs another action in a child forked now, reporting its result."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            result = "ok " + str(globals()[action](*args))
        except OSError as e:
            result = f"err {type(e).__name__} {e.errno}"
        os.write(w, result.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(child, 0)
    result = os.read(r, 512).decode()
    if result.startswith("err"):
        _, name, errno = result.split(" ", 2)
        raise OSError(int(errno) if errno.isdigit() else 0, name)
    return result[3:]


def cgroup():
    """This process's cgroup v2 path."""
    with open("/proc/self/cgroup") as f:
        return next(l for l in f.read().splitlines() if l.startswith("0::"))[3:]


def escape(procs):
    """Tries to move this process into another cgroup."""
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
    return "moved"


print(f"pid {os.getpid()}", flush=True)
for arg in sys.argv[1:]:
    action, _, rest = arg.partition(":")
    args = rest.split(",") if rest else []
    try:
        print(f"{action} ok {globals()[action](*args)}", flush=True)
    except OSError as e:
        print(f"{action} err {type(e).__name__} {e.errno}", flush=True)
