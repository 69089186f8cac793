# gorgon-rs built-in pytest runner (runner protocol, docs/runner-protocol.md). This process
# imports pytest and the project's root conftest.py once and stays pristine. By default it
# forks one long-lived pytest session per worker that is initialised once (configuration,
# plugins, conftest files) and then collects and runs each requested file in turn, as a serial
# `pytest` run does; a session that dies takes only the file it was running, and the next file
# gets a fresh session. With `"isolation": "fork"` in a request, every file (or batch of quick
# files) runs in a fork of its own instead, and a batch that does not simply complete runs
# again file by file.
import json
import os
import selectors
import signal
import sys
import types

import pytest

from gorgon_impact import IMPACT  # None unless the run records (docs/impact.md)

PROTOCOL = 1
DETAIL_LINES = 40


def trim(text):
    lines = str(text).rstrip().splitlines()
    if len(lines) > DETAIL_LINES:
        lines = lines[:DETAIL_LINES] + ["[... %d more lines ...]" % (len(lines) - DETAIL_LINES)]
    return "\n".join(lines)


def relative(text):
    """Paths in messages are shown relative to the workspace, like the files themselves."""
    return text.replace(os.getcwd() + os.sep, "")


def skip_reason(longrepr):
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


class Collector:
    """A pytest plugin that records each test's verdict as pytest gives it, each module that
    pytest skips as a whole (it counts as one skipped test, as in pytest's totals and JUnit),
    and each collection error."""

    def __init__(self, echo_failures=False):
        # In a long-lived session pytest prints its failure reports only when the session
        # ends: print each one with its file instead.
        self.echo_failures = echo_failures
        self.reset()

    def reset(self):
        self.tests = {}
        self.collect_errors = []

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(trim(report.longrepr))
        elif report.skipped and report.nodeid:
            # `pytest.importorskip` or `pytest.skip(allow_module_level=True)` at module level.
            path = report.nodeid.split("::")[0]
            self.tests[report.nodeid] = {
                "name": report.nodeid,
                "classname": os.path.splitext(path)[0].replace("/", "."),
                "file": path,
                "unit": path,
                "status": "skipped",
                "seconds": 0.0,
                "message": relative(skip_reason(report.longrepr)),
            }

    def pytest_runtest_logreport(self, report):
        path, lineno, domain = report.location
        entry = self.tests.setdefault(report.nodeid, {
            "name": domain,
            "classname": os.path.splitext(path)[0].replace(os.sep, "."),
            "file": path,
            "unit": report.nodeid.split("::")[0],
            "id": report.nodeid,
            "line": None if lineno is None else lineno + 1,
            "status": "passed",
            "seconds": 0.0,
        })
        entry["seconds"] += getattr(report, "duration", 0.0) or 0.0
        if entry["status"] in ("failed", "errored"):
            return
        if report.failed:
            # As pytest counts them: a test whose body raised failed (whatever it raised); a
            # failure in its setup or teardown is an error.
            entry["status"] = "failed" if report.when == "call" else "errored"
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None:
                entry["message"] = crash.message
            else:
                lines = str(report.longrepr).strip().splitlines()
                entry["message"] = lines[-1] if lines else report.when + " failed"
            entry["details"] = trim(report.longrepr)
            if self.echo_failures:
                self.echo(report)
        elif report.skipped:
            if hasattr(report, "wasxfail"):
                entry["status"] = "xfailed"
                entry["message"] = "expected to fail: " + str(report.wasxfail) if report.wasxfail else "expected to fail"
            else:
                entry["status"] = "skipped"
                entry["message"] = skip_reason(report.longrepr)
        elif report.when == "call" and hasattr(report, "wasxfail"):
            # A non-strict xfail that passed; a strict one is reported by pytest as failed.
            entry["status"] = "xpassed"
            entry["message"] = "expected to fail, but passed: " + str(report.wasxfail)

    @staticmethod
    def echo(report):
        title = " %s %s " % (report.nodeid, "failed" if report.when == "call" else "failed in " + report.when)
        text = ["", title.center(78, "_"), report.longreprtext]
        for name, content in report.sections:
            text.append(("- %s -" % name).center(78, "-"))
            text.append(content)
        sys.stdout.write("\n".join(text) + "\n")
        sys.stdout.flush()

    def answer(self, path, outcome="completed", message=None):
        if self.collect_errors and outcome == "completed":
            outcome = "load_error"
            message = "%s failed to load:\n%s" % (path, "\n".join(self.collect_errors))
        answer = {"type": "file_done", "file": path, "outcome": outcome, "tests": list(self.tests.values())}
        if message:
            answer["message"] = relative(message)
        if IMPACT is not None:
            try:
                answer["impact"] = IMPACT.take()
            except Exception as error:  # a file without a record always runs; say why
                sys.stderr.write("gorgon: cannot record what %s ran: %r\n" % (path, error))
        return answer


@pytest.fixture(scope="session")
def worker_id():
    """pytest-xdist's `worker_id`: this worker's `PYTEST_XDIST_WORKER` (`gw0`, `gw1`, ...,
    which gorgon-rs sets for every worker)."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


@pytest.fixture(scope="session")
def testrun_uid():
    """pytest-xdist's `testrun_uid`: the job's id, the same in every worker of the run."""
    return os.environ.get("GORGON_JOB_ID", "").replace("-", "")


class XdistStandIn:
    """Gives conftests written for pytest-xdist its `worker_id` and `testrun_uid` fixtures,
    unless xdist itself is loaded (its own fixtures then answer, as they do outside
    gorgon-rs)."""

    def pytest_configure(self, config):
        if not config.pluginmanager.hasplugin("xdist"):
            fixtures = types.ModuleType("gorgon_xdist_fixtures")
            fixtures.worker_id = worker_id
            fixtures.testrun_uid = testrun_uid
            config.pluginmanager.register(fixtures, "gorgon-xdist-fixtures")


def base_args(args):
    return ["-q", "-p", "no:cacheprovider", *args]


def without_units(answer):
    for test in answer.get("tests") or []:
        test.pop("unit", None)
    return answer


def death_answer(path, status):
    """The answer for the file a process was running when it died without answering."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return {"type": "file_done", "file": path, "outcome": "killed", "tests": [],
                "message": "%s: the process running the file was killed by signal %d (%s)"
                           % (path, number, signal.Signals(number).name)}
    return {"type": "file_done", "file": path, "outcome": "exited", "tests": [],
            "message": "%s: a test or the file itself ended the process with exit status %d (os._exit) while the file was running"
                       % (path, os.WEXITSTATUS(status))}


# --- isolation "fork": a fork of this pristine process per file or batch --------------------

def run_forked(request, proto, paths):
    path = ", ".join(paths)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: run the file, send the result through the pipe, and leave without running
        # any exit handler of the parent's.
        os.close(reader)
        proto.close()
        collector = Collector()
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            if request.get("output_path"):
                out = os.open(request["output_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(out, 1)
                os.dup2(out, 2)
            code = int(pytest.main([*base_args(request.get("args") or []), *paths], plugins=[collector, XdistStandIn()]))
            if code in (3, 4) and not collector.collect_errors:
                result = collector.answer(path, "runner_error", "pytest ended with exit code %d on %s" % (code, path))
            else:
                result = collector.answer(path)
        except SystemExit as error:
            result = collector.answer(path, "exited", "%s: a test or the file itself called sys.exit(%r) while the file was running" % (path, error.code))
        except BaseException as error:  # the child ends here whatever happened
            result = collector.answer(path, "runner_error", "%s: %s" % (type(error).__name__, error))
        data = json.dumps(result).encode()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            while data:
                data = data[os.write(writer, data):]
            os._exit(0)
    os.close(writer)
    chunks = []
    while True:
        chunk = os.read(reader, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(reader)
    _, status = os.waitpid(pid, 0)
    try:
        result = json.loads(b"".join(chunks).decode()) if chunks else None
    except ValueError:
        result = None
    return result if result is not None else death_answer(path, status)


def run_batch_forked(request, proto):
    """Runs quick files in one child and splits the tests by file; when the batch did not
    simply complete or a test cannot be told apart, runs every file again on its own."""
    files = request["files"]
    together = run_forked(request, proto, files)
    by_file = {path: [] for path in files}
    unattributed = [t for t in together.get("tests") or [] if t.get("unit") not in by_file]
    for test in together.get("tests") or []:
        if test.get("unit") in by_file:
            by_file[test["unit"]].append(test)
    if together["outcome"] != "completed" or len(by_file) != len(files) or unattributed:
        return [run_forked(request, proto, [path]) for path in files]
    # In a recording run, each file of the batch gets what the whole batch ran.
    impact = {"impact": together["impact"]} if "impact" in together else {}
    return [{"type": "file_done", "file": path, "outcome": "completed", "tests": by_file[path], **impact}
            for path in files]


# --- isolation "none" (the default): one pytest session per worker --------------------------

class KeepSession:
    """Stands for "the next item" after a file's last test, so that pytest tears down
    everything of the file (module, class, package and directory fixtures) but keeps the
    session's fixtures for the next file, as a serial run does."""

    def __init__(self, session):
        self.session = session

    def listchain(self):
        return [self.session]


class CollectorCache:
    """Keeps the collectors of the tree's directories and packages from one file's collection
    to the next. pytest builds them anew on each `perform_collect`, walking every directory
    on the way to the file (and asking every plugin whether to ignore each entry), which a
    serial run does once; on a real suite that is most of what a file costs beyond its tests.
    The cache lives in the session's own `_collection_cache` and path cache, which pytest
    would otherwise empty on every call."""

    def __init__(self, session):
        self.reports = {}
        self.roots = {}
        collect_path = session._collect_path
        cache = self

        def cached_collect_path(path, _path_cache):
            return collect_path(path, cache.roots)

        class KeptCaches(type(session)):
            _collection_cache = property(lambda _self: cache.reports, lambda _self, _value: None)

        session._collect_path = cached_collect_path
        session.__class__ = KeptCaches

    def clear(self):
        self.reports.clear()
        self.roots.clear()


class SessionServer:
    """A pytest plugin for the long-lived session child: skips the initial collection, then
    serves the supervisor's requests from `requests` (one JSON list of files a line), sending
    `{"type": "start"}` before each file and its `file_done` after it on `results`."""

    def __init__(self, collector, requests, results):
        self.collector = collector
        self.requests = requests
        self.results = results

    def send(self, message):
        sys.stdout.flush()
        sys.stderr.flush()
        self.results.write(json.dumps(message) + "\n")
        self.results.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session):
        session.items = []
        self.cache = CollectorCache(session)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        if IMPACT is not None:
            IMPACT.session_started()
        for line in self.requests:
            for path in json.loads(line):
                self.send({"type": "start", "file": path})
                answer, go_on = self.run_file(session, path)
                self.send(without_units(answer))
                if not go_on:
                    return True
        try:
            session._setupstate.teardown_exact(None)
        except BaseException:  # nothing is left to report it to
            pass
        return True

    def run_file(self, session, path):
        """Collects and runs one file (or test id) of the session: (answer, go on?)."""
        collector = self.collector
        collector.reset()
        session.shouldfail = False
        session.shouldstop = False
        try:
            try:
                items = session.perform_collect([path])
            except pytest.UsageError:
                # Not found in the directories as first collected (pytest collects a file
                # outside its `python_files` patterns only when asked for it): look again.
                self.cache.clear()
                collector.reset()
                items = session.perform_collect([path])
            for index, item in enumerate(items):
                nextitem = items[index + 1] if index + 1 < len(items) else KeepSession(session)
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        except pytest.UsageError as error:
            return collector.answer(path, "load_error", "%s: %s" % (path, error)), True
        except SystemExit as error:
            return collector.answer(path, "exited", "%s: a test or the file itself called sys.exit(%r) while the file was running" % (path, error.code)), False
        except BaseException as error:
            return collector.answer(path, "runner_error", "%s: %s: %s" % (path, type(error).__name__, error)), False
        return collector.answer(path), True


class SessionChild:
    """The supervisor's handle on one session child: its pipes and what it is running."""

    def __init__(self, proto, args):
        self.args = args
        request_reader, request_writer = os.pipe()
        result_reader, result_writer = os.pipe()
        output_reader, output_writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(request_writer)
            os.close(result_reader)
            os.close(output_reader)
            proto.close()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(output_writer, 1)
            os.dup2(output_writer, 2)
            collector = Collector(echo_failures=True)
            server = SessionServer(collector, os.fdopen(request_reader, "r"), os.fdopen(result_writer, "w"))
            try:
                pytest.main(base_args(args), plugins=[server, collector, XdistStandIn()])
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(0)
        os.close(request_reader)
        os.close(result_writer)
        os.close(output_writer)
        self.pid = pid
        self.requests = os.fdopen(request_writer, "w")
        self.results = result_reader
        self.output = output_reader
        self.pending = b""
        self.ran_any = False
        self.started = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.results, selectors.EVENT_READ)
        self.selector.register(self.output, selectors.EVENT_READ)

    def send(self, files):
        try:
            self.requests.write(json.dumps(files) + "\n")
            self.requests.flush()
            return True
        except OSError:
            return False

    def next_message(self, sink):
        """The child's next message, relaying its output to `sink` meanwhile; None once it
        has ended."""
        while b"\n" not in self.pending:
            for key, _ in self.selector.select():
                chunk = os.read(key.fd, 65536)
                if key.fd == self.output:
                    if chunk and sink is not None:
                        sink.write(chunk)
                        sink.flush()
                    elif not chunk:
                        self.selector.unregister(self.output)
                elif chunk:
                    self.pending += chunk
                else:
                    return None
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line.decode())

    def drain(self, sink):
        """Relays what the child has printed so far without waiting for more."""
        os.set_blocking(self.output, False)
        try:
            while True:
                chunk = os.read(self.output, 65536)
                if not chunk:
                    break
                if sink is not None:
                    sink.write(chunk)
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self.output, True)
        if sink is not None:
            sink.flush()

    def close(self):
        """Asks the child to finish its session, then waits for it; its status."""
        try:
            self.requests.close()
        except OSError:
            pass
        self.selector.close()
        os.close(self.results)
        os.close(self.output)
        _, status = os.waitpid(self.pid, 0)
        return status


class Supervisor:
    def __init__(self, proto):
        self.proto = proto
        self.child = None

    def run(self, request, files, emit):
        """Runs `files` in the session child, in order, calling `emit` with each answer. A
        file that fails to be collected in a session that ran other files first is collected
        again, first, in a fresh session, and that answer counts: a serial run collects every
        file before it runs any test, so what earlier files' tests left behind must not make a
        file fail to load."""
        args = request.get("args") or []
        pending = list(files)
        again = set()
        sink = open(request["output_path"], "ab") if request.get("output_path") else None
        try:
            while pending:
                if self.child is not None and self.child.args != args:
                    self.stop()
                if self.child is None:
                    self.child = SessionChild(self.proto, args)
                child = self.child
                running = None
                waiting = list(pending)
                fresh_wanted = False
                if child.send(waiting):
                    while waiting:
                        message = child.next_message(sink)
                        if message is None:
                            break
                        if message.get("type") == "start":
                            running = message["file"]
                            child.ran_any = True
                            child.started += 1
                        elif message.get("file") in waiting:
                            file = message["file"]
                            waiting.remove(file)
                            running = None
                            if message.get("outcome") == "load_error" and child.started > 1 and file not in again:
                                again.add(file)
                                fresh_wanted = True
                                continue
                            pending.remove(file)
                            emit(message)
                child.drain(sink)
                if not waiting:
                    if fresh_wanted:
                        self.stop()
                    continue
                # The child ended: the file it was running takes the blame; the rest run in a
                # fresh session.
                status = self.stop()
                if running is not None:
                    pending.remove(running)
                    emit(death_answer(running, status))
                elif not child.ran_any:
                    first = pending.pop(0)
                    emit({"type": "file_done", "file": first, "outcome": "runner_error", "tests": [],
                          "message": "%s: the pytest session ended before running any file (%s); see its output"
                                     % (first, describe(status))})
        finally:
            if sink is not None:
                sink.close()

    def stop(self):
        child, self.child = self.child, None
        return child.close() if child is not None else 0


def describe(status):
    if os.WIFSIGNALED(status):
        return "killed by signal %d" % os.WTERMSIG(status)
    return "exit status %d" % os.WEXITSTATUS(status)


def main():
    # stdout carries protocol lines only; anything else printed goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.path.insert(0, os.getcwd())
    if IMPACT is not None:
        # Before the project's first line runs: what the conftest loads counts.
        IMPACT.start()
    if os.path.exists("conftest.py"):
        import conftest  # noqa: F401  (preloads the project's fixtures and what they import)
    proto.write(json.dumps({"type": "hello", "protocol": PROTOCOL,
                            "runner": "pytest %s (python %s)" % (pytest.__version__, sys.version.split()[0]),
                            "batches": True}) + "\n")
    proto.flush()
    supervisor = Supervisor(proto)

    def emit(answer):
        proto.write(json.dumps(without_units(answer)) + "\n")
        proto.flush()

    while True:
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        if request.get("type") == "run":
            files = [request["file"]]
        elif request.get("type") == "run_batch":
            files = request["files"]
        else:
            continue
        if request.get("isolation") == "fork":
            answers = [run_forked(request, proto, files)] if request["type"] == "run" else run_batch_forked(request, proto)
            for answer in answers:
                emit(answer)
        else:
            supervisor.run(request, files, emit)
    supervisor.stop()
    os._exit(0)


if __name__ == "__main__":
    main()
