#!/usr/bin/env python3
"""The pieces of bench/impact_history.sh that read and write files: the dist-info a source
checkout of a Python project lacks, one commit's result (its selection, from a dry run of
`--changed`, against the recording the map came from and, with FULL=1, the full runs), and
the table and summary over the commits.

  impact_history.py dist_info TREE          writes NAME-VERSION.dist-info (METADATA and
                                             entry_points.txt, from pyproject.toml)
  impact_history.py result KEY=VALUE...      one commit's result as JSON (see `result`)
  impact_history.py line RESULT_JSON         the commit's line of the table
  impact_history.py summary RESULTS COMMITS  the table of the commits judged so far (oldest
                                             first, as COMMITS lists them) and the figures

A run's outcome (`{file: [failed, seconds]}`) is impact_mutants.py's (`outcome EVENTS`), as
are the reading of a dry run's list, `percent`, and the missed files run alone (`missed`,
`alone`).
"""
import glob
import json
import os
import re
import shutil
import statistics
import sys

from impact_mutants import percent, selected_files

TOLD = re.compile(r"^Running (?:all (\d+) files: (.*) \(changes since \w+\)"
                  r"|none of (\d+) files|(\d+) of (\d+) files)", re.M)


def dist_info(tree):
    """What installing the project would leave for importlib.metadata: a dist-info in the
    tree's root, where the test run finds it on sys.path (as the bench's tree from the wheel
    has it), with the entry points of pyproject.toml; any other dist-info goes."""
    import tomllib  # Python 3.11 and later: the venv's, which runs this command
    with open(os.path.join(tree, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    name = project["name"]
    version = project.get("version")
    if version is None:
        with open(os.path.join(tree, name, "__init__.py"), encoding="utf-8") as f:
            found = re.search(r"^__version__ = [\"']([^\"']+)", f.read(), re.M)
        version = found.group(1) if found else "0"
    for old in glob.glob(os.path.join(tree, "*.dist-info")):
        shutil.rmtree(old)
    folder = os.path.join(tree, f"{name}-{version}.dist-info")
    os.mkdir(folder)
    with open(os.path.join(folder, "METADATA"), "w", encoding="utf-8") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = dict(project.get("entry-points", {}))
    if "scripts" in project:
        groups["console_scripts"] = project["scripts"]
    with open(os.path.join(folder, "entry_points.txt"), "w", encoding="utf-8") as f:
        for group, points in groups.items():
            f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) + "\n")


def told(path):
    """(files of the run, everything's reason or None) from what a dry run said."""
    with open(path, encoding="utf-8") as f:
        match = TOLD.search(f.read())
    if not match:
        sys.exit(f"{path}: no 'Running ...' line from the dry run")
    total = match.group(1) or match.group(3) or match.group(5)
    return int(total), match.group(2)


def selection(list_path, told_path, times):
    """A dry run's selection: how many files of how many, the reason when everything runs,
    and the share of the time (`times`: a run's outcome)."""
    total, everything = told(told_path)
    ran = selected_files(list_path)
    seconds = sum(s for _, s in times.values()) or 1.0
    return {"files": total, "selected": len(ran), "everything": everything,
            "share_files": len(ran) / max(total, 1),
            "share_time": 1.0 if everything else
            sum(times.get(f, (False, 0.0))[1] for f in ran) / seconds}


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def result(args):
    """One commit's result from KEY=VALUE arguments: commit, subject, changed (files the
    commit changed), variant, map_from (the commit the map was recorded on), times (that
    recording's outcome), list and told (the dry run), list_all and told_all (the dry run
    without job.impact.ignore), and with FULL=1 before and after (the outcomes of full runs
    at the parent and at the commit). A test file that fails after and not before is
    broken by the commit, one that fails before and not after fixed; `missed` are the broken
    files the selection left out."""
    a = dict(arg.split("=", 1) for arg in args)
    times = read_json(a["times"])
    chosen = selection(a["list"], a["told"], times)
    r = {"commit": a["commit"], "subject": a["subject"], "changed": int(a["changed"]),
         "variant": a["variant"], "map_from": a["map_from"], **chosen,
         "without_ignore": selection(a["list_all"], a["told_all"], times)}
    if a.get("before") and a.get("after"):
        before, after = read_json(a["before"]), read_json(a["after"])
        failed = lambda run: {f for f, (bad, _) in run.items() if bad}  # noqa: E731
        ran = selected_files(a["list"])
        r["broke"] = sorted(failed(after) - failed(before))
        r["fixed"] = sorted(failed(before) - failed(after))
        r["missed"] = [] if chosen["everything"] else [f for f in r["broke"] if f not in ran]
    return r


def line(r):
    what = (f"everything: {r['everything']}" if r["everything"] else
            f"{r['selected']}/{r['files']} files, {percent(r['share_time'], 1)} of the time")
    if "broke" in r:
        what += f"; broke {len(r['broke'])}, fixed {len(r['fixed'])}, missed {len(r['missed'])}"
        what += "".join(f" {f}: {v}" for f, v in r.get("alone", {}).items())
    subject = r["subject"] if len(r["subject"]) <= 48 else r["subject"][:47] + "…"
    return f"{r['commit'][:9]} {subject:<48} {r['changed']:>3} changed  {what}"


def why_everything(reason):
    """The kind of a reason to run everything, without the file it names."""
    return re.sub(r"^\S+ changed, and ", "", reason)


def summary(results_dir, commits_file):
    with open(commits_file, encoding="utf-8") as f:
        commits = [c for c in f.read().split() if c]
    results = [read_json(p) for c in commits
               if os.path.exists(p := os.path.join(results_dir, c + ".json"))]
    if not results:
        print("no commit judged yet")
        return
    for r in results:
        print(line(r))
    n = len(results)
    files = [r["share_files"] for r in results]
    time = [r["share_time"] for r in results]
    print(f"commits judged: {n} of {len(commits)} "
          f"({', '.join(sorted({r['variant'] for r in results}))})")
    print(f"share selected: files mean {percent(statistics.mean(files), 1)}, median "
          f"{percent(statistics.median(files), 1)}; time mean {percent(statistics.mean(time), 1)}, "
          f"median {percent(statistics.median(time), 1)} (of the recording run's per-file seconds)")
    print(f"selected nothing: {sum(1 for r in results if r['selected'] == 0)}; every file: "
          f"{sum(1 for r in results if r['selected'] == r['files'])} (load-time code or a "
          f"fallback to everything)")
    for label, of in (("everything", lambda r: r), ("everything without job.impact.ignore",
                                                   lambda r: r["without_ignore"])):
        groups = {}
        for r in results:
            if of(r)["everything"]:
                groups.setdefault(why_everything(of(r)["everything"]), []).append(r["commit"][:9])
        print(f"{label}: {sum(len(g) for g in groups.values())}")
        for reason, shas in sorted(groups.items(), key=lambda g: -len(g[1])):
            print(f"  {len(shas)}: {reason} ({', '.join(shas)})")
    full = [r for r in results if "broke" in r]
    if full:
        broke = [r for r in full if r["broke"]]
        misses = [r for r in full if any(v == "failed" for v in r.get("alone", {}).values())]
        print(f"with full runs: {len(full)} commits, {len(broke)} broke a test file "
              f"({sum(len(r['broke']) for r in full)} files), "
              f"{sum(1 for r in full if r['fixed'])} fixed one; recall over the commits that "
              f"broke a file: {percent(len(broke) - len(misses), len(broke))}")
        for r in misses:
            print(f"MISS: {r['commit'][:9]} {r['subject']}: {r['alone']}")


COMMANDS = {
    "dist_info": lambda args: dist_info(args[0]),
    "result": lambda args: print(json.dumps(result(args))),
    "line": lambda args: print(line(json.loads(args[0]))),
    "summary": lambda args: summary(args[0], args[1]),
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: impact_history.py {'|'.join(COMMANDS)} ARGS...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
