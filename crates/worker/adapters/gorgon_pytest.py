# gorgon-rs built-in pytest runner: imports pytest and the project's conftest.py once, then
# runs each requested file (or batch of quick files) in a fork of this warm process and
# reports every test over the runner protocol (docs/runner-protocol.md). A batch that does not
# simply complete runs again file by file.
import json
import os
import signal
import sys

import pytest

PROTOCOL = 1
DETAIL_LINES = 40


def trim(text):
    lines = str(text).rstrip().splitlines()
    if len(lines) > DETAIL_LINES:
        lines = lines[:DETAIL_LINES] + ["[... %d more lines ...]" % (len(lines) - DETAIL_LINES)]
    return "\n".join(lines)


class Collector:
    """A pytest plugin that records each test's verdict and each collection error."""

    def __init__(self):
        self.tests = {}
        self.collect_errors = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        report.gorgon_assertion = call.excinfo is not None and call.excinfo.errisinstance(AssertionError)

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(trim(report.longrepr))

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
            if report.when == "call":
                entry["status"] = "failed" if getattr(report, "gorgon_assertion", False) else "errored"
            else:
                entry["status"] = "errored"
            crash = getattr(report.longrepr, "reprcrash", None)
            if crash is not None:
                entry["message"] = crash.message
            else:
                lines = str(report.longrepr).strip().splitlines()
                entry["message"] = lines[-1] if lines else report.when + " failed"
            entry["details"] = trim(report.longrepr)
        elif report.skipped:
            entry["status"] = "pending" if hasattr(report, "wasxfail") else "skipped"
            if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
                entry["message"] = report.longrepr[2]
            elif hasattr(report, "wasxfail"):
                entry["message"] = "expected to fail: " + str(report.wasxfail)


def run_files(collector, paths, args):
    path = ", ".join(paths)
    code = pytest.main(["-q", "-p", "no:cacheprovider", *args, *paths], plugins=[collector])
    if collector.collect_errors:
        return {"outcome": "load_error",
                "message": "%s failed to load:\n%s" % (path, "\n".join(collector.collect_errors))}
    if int(code) in (3, 4):
        return {"outcome": "runner_error", "message": "pytest ended with exit code %d on %s" % (int(code), path)}
    return {"outcome": "completed"}


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
            result = run_files(collector, paths, request.get("args") or [])
        except SystemExit as error:
            result = {"outcome": "exited",
                      "message": "%s: a test or the file itself called sys.exit(%r) while the file was running" % (path, error.code)}
        except BaseException as error:  # the child ends here whatever happened
            result = {"outcome": "runner_error", "message": "%s: %s" % (type(error).__name__, error)}
        result["tests"] = list(collector.tests.values())
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
    if result is None:
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            result = {"outcome": "killed",
                      "message": "%s: the process running the file was killed by signal %d (%s)"
                                 % (path, number, signal.Signals(number).name)}
        else:
            result = {"outcome": "exited",
                      "message": "%s: a test or the file itself ended the process with exit status %d (os._exit) while the file was running"
                                 % (path, os.WEXITSTATUS(status))}
    if result.get("message"):
        # Paths in messages are shown relative to the workspace, like the files themselves.
        result["message"] = result["message"].replace(os.getcwd() + os.sep, "")
    result["type"] = "file_done"
    result["file"] = path
    return result


def without_units(answer):
    for test in answer.get("tests") or []:
        test.pop("unit", None)
    return answer


def run_batch(request, proto):
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
        return [without_units(run_forked(request, proto, [path])) for path in files]
    return [without_units({"type": "file_done", "file": path, "outcome": "completed", "tests": by_file[path]})
            for path in files]


def main():
    # stdout carries protocol lines only; anything else printed goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.path.insert(0, os.getcwd())
    if os.path.exists("conftest.py"):
        import conftest  # noqa: F401  (preloads the project's fixtures and what they import)
    proto.write(json.dumps({"type": "hello", "protocol": PROTOCOL,
                            "runner": "pytest %s (python %s)" % (pytest.__version__, sys.version.split()[0]),
                            "batches": True}) + "\n")
    proto.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        if request.get("type") == "run":
            answers = [without_units(run_forked(request, proto, [request["file"]]))]
        elif request.get("type") == "run_batch":
            answers = run_batch(request, proto)
        else:
            continue
        for answer in answers:
            proto.write(json.dumps(answer) + "\n")
        proto.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
