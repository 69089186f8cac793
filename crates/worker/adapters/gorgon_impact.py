# gorgon-rs impact recording for the pytest runner (GORGON_IMPACT_RECORD=1, docs/impact.md):
# which scopes (a module's top level, each function) of the project's own files each test file
# runs. A tracer (sys.settrace) costs a Python call per Python call, 3-4 times a suite's time
# on Python 3.11; instead, the project's modules are compiled with one statement added at the
# top of each function body, `__gorgon_hit__(ID)`, a builtin that is a set's `add`: a few
# tens of nanoseconds a call. The instrumented code is never written to __pycache__.
# While a project module loads, the builtin adds to the load-time set (what a module computes
# as it loads reaches every later file of the process, whichever file loaded it first);
# otherwise to the current file's set, until `take`. Each process also tells, once per module,
# every function it instrumented (`known`, run or not): a change in the body of one no test
# ran selects no test file.
import ast
import builtins
import hashlib
import importlib.machinery
import os
import sys

HIT = "__gorgon_hit__"


class Impact:
    def __init__(self, root):
        self.root = os.path.realpath(root) + os.sep
        self.here = os.path.dirname(os.path.realpath(__file__)) + os.sep
        self.ran = set()
        self.loaded = set()
        self.loading = 0
        # ID -> (path, [first, body, last]); path -> its git blob id.
        self.scopes = []
        self.digests = {}
        # path -> the functions instrumented since the path was last reported.
        self.untold = {}
        builtins.__dict__[HIT] = self.ran.add

    def start(self):
        sys.meta_path.insert(0, Finder(self))

    def project_path(self, filename):
        """The path of a project source below the workspace, or None."""
        real = os.path.realpath(filename)
        if not real.endswith(".py") or not real.startswith(self.root) or real.startswith(self.here):
            return None
        path = real[len(self.root):]
        parts = path.split(os.sep)
        if any(p.startswith(".") or p in ("site-packages", "node_modules") for p in parts):
            return None
        return path

    def scope(self, path, first, body, last):
        self.scopes.append((path, (first, body, last)))
        return len(self.scopes) - 1

    def function(self, path, first, body, last):
        self.untold.setdefault(path, []).append([first, body, last])
        return self.scope(path, first, body, last)

    def instrumented(self, data, path):
        """The module's code with a hit at the top of each function; its module scope's ID."""
        tree = ast.parse(data, filename=path)
        self.digests[path] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        Instrument(self, path, data.splitlines()).visit(tree)
        ast.fix_missing_locations(tree)
        module = self.scope(path, 1, 1, data.count(b"\n") + 1)
        return tree, module

    def executing(self, module_id, run):
        """Runs a project module's body: what runs meanwhile is load-time code."""
        self.loaded.add(module_id)
        self.loading += 1
        builtins.__dict__[HIT] = self.loaded.add
        try:
            run()
        finally:
            self.loading -= 1
            if not self.loading:
                builtins.__dict__[HIT] = self.ran.add

    def session_started(self):
        """What ran before a session's first file (its plugins, conftest hooks) is a
        dependency of each of its files."""
        self.loaded |= self.ran
        self.ran.clear()

    def take(self):
        """The current file's impact (what it ran and everything loaded so far), and a fresh
        start for the next file."""
        impact = {}
        for scope_id in self.ran | self.loaded:
            path, scope = self.scopes[scope_id]
            used = impact.setdefault(path, {"digest": self.digests[path], "ran": set()})
            used["ran"].add(scope)
        # Cleared in place: the builtin is this set's `add`.
        self.ran.clear()
        for path, used in impact.items():
            used["ran"] = [list(scope) for scope in sorted(used["ran"])]
            known = self.untold.pop(path, None)
            if known:
                used["known"] = sorted(known)
        return impact


class Instrument(ast.NodeTransformer):
    """Adds `__gorgon_hit__(ID)` at the top of each function body (after its docstring)."""

    def __init__(self, impact, path, lines):
        self.impact = impact
        self.path = path
        self.lines = lines

    def visit_FunctionDef(self, node):
        self.generic_visit(node)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body = self.body_line(node)
        scope_id = self.impact.function(self.path, first, body, node.end_lineno)
        hit = ast.Expr(ast.Call(ast.Name(HIT, ast.Load()), [ast.Constant(scope_id)], []))
        at = 1 if is_docstring(node.body[0]) else 0
        ast.copy_location(hit, node.body[min(at, len(node.body) - 1)])
        node.body.insert(at, hit)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def body_line(self, node):
        """The first line of the function's body that runs only when it is called: not its
        docstring (the function's `__doc__`, made when it is defined), and not a line shared
        with the signature (`def f(x=g()): return x`), which runs when the function is
        defined. A function that is only a docstring has no such line (past its end)."""
        statements = node.body[1:] if is_docstring(node.body[0]) else node.body
        if not statements:
            return node.end_lineno + 1
        statement = statements[0]
        line = self.lines[statement.lineno - 1] if statement.lineno <= len(self.lines) else b""
        return statement.lineno + (1 if line[:statement.col_offset].strip() else 0)


def is_docstring(statement):
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


class Loader(importlib.machinery.SourceFileLoader):
    """Loads a project module instrumented, never from or into the bytecode cache."""

    impact = None

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        data = self.get_data(path)
        tree, self.module_id = self.impact.instrumented(data, self.impact.project_path(path))
        return compile(tree, path, "exec", dont_inherit=True)

    def exec_module(self, module):
        code = self.get_code(module.__name__)
        self.impact.executing(self.module_id, lambda: exec(code, module.__dict__))


class Finder:
    """Finds the project's modules as the path finder does, and gives them the `Loader`."""

    def __init__(self, impact):
        self.impact = impact

    def find_spec(self, fullname, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = getattr(spec, "loader", None)
        if type(loader) is not importlib.machinery.SourceFileLoader:
            return None
        if self.impact.project_path(spec.origin) is None:
            return None
        spec.loader = Loader(loader.name, loader.path)
        spec.loader.impact = self.impact
        return spec

    def invalidate_caches(self):
        pass


IMPACT = Impact(os.getcwd()) if os.environ.get("GORGON_IMPACT_RECORD") == "1" else None
