# gorgon-rs warm runner for the built-in pytest runner (docs/runner-protocol.md, "Warm
# runners"): a listener keeps this process between jobs. It has imported Python, pytest and
# pytest's own plugins, and nothing of any project. A worker connects to its Unix socket and
# sends its runner's stdin, stdout and stderr (SCM_RIGHTS) with one JSON line: the job's
# workspace, environment and the adapter script to run. This process forks; the child takes
# those as its own and runs the adapter as `python3 SCRIPT` would, in a process group of its
# own. This process answers "pid N", then "status RAW" (the raw wait status) when the child
# ends, and kills the child's group if the worker's connection closes first.
# Usage: python3 gorgon_warm.py pytest SOCKET; it prints "ready" once it serves, and ends when
# its stdin closes and its children have ended.
import importlib
import json
import os
import runpy
import select
import signal
import socket
import sys

import pytest  # noqa: F401
import _pytest.config

for _name in _pytest.config.default_plugins:
    try:
        importlib.import_module("_pytest." + _name)
    except Exception:  # a plugin that cannot load here is loaded, or reported, by pytest
        pass

MAX_REQUEST = 1 << 20


def read_request(conn):
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 16)
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        more = conn.recv(MAX_REQUEST)
        if not more:
            break
        data += more
    return json.loads(data.split(b"\n", 1)[0]), fds


def become(request, fds):
    """In the forked child: become the runner the request describes."""
    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["script"]
    sys.argv = [script] + list(request.get("args") or [])
    sys.path[0] = os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main():
    kind, path = sys.argv[1], sys.argv[2]
    if kind != "pytest":
        sys.exit("gorgon_warm.py: unknown runner kind %r" % kind)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    # A child's end wakes the loop at once (its group stays non-empty until it is reaped).
    wake_reader, wake_writer = os.pipe()
    os.set_blocking(wake_writer, False)
    os.set_blocking(wake_reader, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_writer)
    print("ready", flush=True)
    children = {}  # pid -> connection
    owners = {}  # connection -> pid
    closing = False
    while True:
        watched = [wake_reader] + list(owners)
        if not closing:
            watched += [server, sys.stdin]
        readable, _, _ = select.select(watched, [], [], 0.2)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is None:
                continue
            owners.pop(conn, None)
            try:
                conn.sendall(b"status %d\n" % status)
            except OSError:
                pass
            conn.close()
        for io in readable:
            if io == wake_reader:
                try:
                    os.read(wake_reader, 4096)
                except BlockingIOError:
                    pass
            elif io is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    closing = True
                    server.close()
            elif io is server:
                if closing:
                    continue
                conn, _ = server.accept()
                fds = []
                try:
                    request, fds = read_request(conn)
                    if len(fds) != 3:
                        raise ValueError("expected three descriptors")
                except (OSError, ValueError) as error:
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall(b"error %s\n" % str(error).encode())
                    except OSError:
                        pass
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_reader)
                    os.close(wake_writer)
                    server.close()
                    for other in owners:
                        other.close()
                    conn.close()
                    become(request, fds)
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass  # the child did it first, or has ended already
                for fd in fds:
                    os.close(fd)
                conn.sendall(b"pid %d\n" % pid)
                children[pid] = conn
                owners[conn] = pid
            else:
                # Anything from the worker, or its end: the worker is gone, so its runner goes
                # too.
                try:
                    gone = not io.recv(4096)
                except OSError:
                    gone = True
                pid = owners.get(io)
                if gone and pid is not None:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                    owners.pop(io, None)
        if closing and not children:
            break
    try:
        os.unlink(path)
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
