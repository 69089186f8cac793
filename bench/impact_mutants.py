#!/usr/bin/env python3
"""The pieces of bench/impact.sh that read and write files: seeded single-line mutations of a
project's source files, applying one, reading a run's event stream, judging a mutation's
selection (a dry run's list) against its full run, and the summary of the state file.

  impact_mutants.py mutants ROOT LANGUAGE SEED COUNT   JSON lines: COUNT valid mutations, with
                                                       the rejected ones drawn on the way
  impact_mutants.py apply ROOT MUTATION_JSON          writes the mutation into its file
  impact_mutants.py outcome EVENTS                    JSON: {file: [failed?, seconds]} of a run
  impact_mutants.py pristine [--union JSON] EVENTS... JSON: the files that failed in any run
  impact_mutants.py judge MUTATION_JSON PRISTINE FULL_EVENTS SELECTED_LIST TOLD
                                                      one result line (see `judge`)
  impact_mutants.py summary STATE                     the figures over the results so far

LANGUAGE is `python` (every .py file outside `tests` folders, except test_*.py and conftest.py)
or `ruby` (lib/**/*.rb; Ripper's tokens, from one `ruby` process). The kinds: a comparison
flipped (== and !=, < and >=, > and <=), a decimal integer constant plus one, a line dropped.
A mutation that does not parse, or (Python) parses to the same syntax tree, is rejected.
"""
import ast
import io
import json
import os
import random
import re
import subprocess
import sys
import tokenize

FLIP = {"==": "!=", "!=": "==", "<": ">=", ">=": "<", ">": "<=", "<=": ">"}
KINDS = ("comparison", "constant", "drop")

RUBY_TOKENS = r"""
require "ripper"
require "json"
flip = %w[== != < > <= >=]
quiet = %i[on_sp on_nl on_ignored_nl on_comment on_embdoc on_embdoc_beg on_embdoc_end
           on_tstring_content on_tstring_beg on_tstring_end on_words_sep]
ARGV.each do |file|
  src = File.read(file)
  lines = src.lines
  code_lines = {}
  Ripper.lex(src).each do |(line, col), type, tok, _|
    text = lines[line - 1] or next
    char = text.byteslice(0, col).force_encoding("UTF-8").length
    kind = if type == :on_op && flip.include?(tok) then "comparison"
           elsif type == :on_int && tok =~ /\A[1-9][0-9_]*\z|\A0\z/ then "constant"
           end
    puts JSON.generate([file, line, char, kind, tok]) if kind
    code_lines[line] = true unless quiet.include?(type) || (type == :on_kw && tok == "end")
  end
  code_lines.each_key { |line| puts JSON.generate([file, line, 0, "drop", ""]) }
end
"""


def source_files(root, language):
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        rel = os.path.relpath(folder, root)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in sorted(files):
            path = os.path.join(*parts, name) if parts else name
            if language == "python":
                if name.endswith(".py") and "tests" not in parts and name != "conftest.py" \
                        and not name.startswith("test_"):
                    found.append(path)
            elif path.startswith("lib" + os.sep) and name.endswith(".rb"):
                found.append(path)
    return found


def python_candidates(root, files):
    """(file, line, column, kind, token) for every place a mutation can go."""
    out = []
    for path in files:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            text = f.read()
        code_lines = set()
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        quiet = (tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                 tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
        for tok in tokens:
            (line, col), kind = tok.start, None
            if tok.type == tokenize.OP and tok.string in FLIP:
                kind = "comparison"
            elif tok.type == tokenize.NUMBER and re.fullmatch(r"[1-9][0-9_]*|0", tok.string):
                kind = "constant"
            if kind:
                out.append((path, line, col, kind, tok.string))
            if tok.type not in quiet:
                code_lines.add(line)
        out.extend((path, line, 0, "drop", "") for line in sorted(code_lines))
    return out


def ruby_candidates(root, files):
    lines = subprocess.run(["ruby", "-e", RUBY_TOKENS, "--", *files], cwd=root, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    return [tuple(json.loads(line)) for line in lines]


def mutated_text(text, line, col, kind, token):
    """The file's text with the mutation, or None when the line is not as expected."""
    lines = text.splitlines(keepends=True)
    old = lines[line - 1]
    if kind == "drop":
        new = ""
    elif old[col:col + len(token)] != token:
        return None
    elif kind == "comparison":
        new = old[:col] + FLIP[token] + old[col + len(token):]
    else:
        new = old[:col] + str(int(token.replace("_", "")) + 1) + old[col + len(token):]
    return "".join(lines[:line - 1]) + new + "".join(lines[line:])


def parses(language, before, after):
    """None when `after` is a real mutation of `before`, else why not."""
    if language == "python":
        try:
            tree = ast.dump(ast.parse(after))
        except (SyntaxError, ValueError):
            return "does not parse"
        return "same syntax tree" if tree == ast.dump(ast.parse(before)) else None
    check = subprocess.run(["ruby", "-rripper", "-e", "exit(Ripper.sexp(STDIN.read) ? 0 : 1)"],
                           input=after, text=True, check=False)
    return None if check.returncode == 0 else "does not parse"


def mutants(root, language, seed, count):
    files = source_files(root, language)
    found = (python_candidates if language == "python" else ruby_candidates)(root, files)
    by_kind = {kind: [c for c in found if c[3] == kind] for kind in KINDS}
    rng = random.Random(seed)
    seen, valid, number = set(), 0, 0
    while valid < count:
        kind = rng.choice(KINDS)
        candidate = rng.choice(by_kind[kind])
        if candidate in seen:
            continue
        seen.add(candidate)
        path, line, col, kind, token = candidate
        with open(os.path.join(root, path), encoding="utf-8") as f:
            before = f.read()
        after = mutated_text(before, line, col, kind, token)
        why = "token not found" if after is None else parses(language, before, after)
        number += 1
        old = before.splitlines()[line - 1]
        new = None if after is None or kind == "drop" else after.splitlines()[line - 1]
        print(json.dumps({"id": number, "file": path, "line": line, "kind": kind, "col": col,
                          "token": token, "old": old, "new": new, "rejected": why}), flush=True)
        valid += why is None


def apply(root, mutation):
    m = json.loads(mutation)
    path = os.path.join(root, m["file"])
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(mutated_text(text, m["line"], m["col"], m["kind"], m["token"]))


def file_of(unit):
    match = re.match(r"(.*?\.(?:py|rb))(?:$|[:\[])", unit)
    return match.group(1) if match else unit


def read_events(path):
    events = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
    return events


def outcome(path):
    """{file: [failed, seconds]} of the run's file_finished events (split files summed)."""
    files = {}
    for event in read_events(path):
        if event["event"] == "file_finished":
            entry = files.setdefault(file_of(event["file"]), [False, 0.0])
            entry[0] = entry[0] or event["verdict"] == "failed"
            entry[1] += event.get("seconds", 0.0)
    return files


def selected_files(path):
    """The files a dry run of --changed lists, one unit a line on its stdout."""
    with open(path, encoding="utf-8") as f:
        return {file_of(line.strip()) for line in f if line.strip()}


def judge(mutation, pristine, full_events, selected_list, told):
    """One mutation's result: the files that failed in the full run and passed in both
    pristine runs (`broke`), the selection (the dry run's list, and what it said on stderr),
    and the broken files it left out (`missed`)."""
    m = json.loads(mutation)
    with open(pristine, encoding="utf-8") as f:
        failed_before = set(json.load(f))
    full = outcome(full_events)
    ran = selected_files(selected_list)
    with open(told, encoding="utf-8") as f:
        said = f.read()
    everything = re.search(r"^Running all \d+ files: (.*)$", said, re.M)
    broke = sorted(f for f, (failed, _) in full.items() if failed and f not in failed_before)
    total_time = sum(seconds for _, seconds in full.values()) or 1.0
    return {
        "id": m["id"], "file": m["file"], "line": m["line"], "kind": m["kind"],
        "old": m["old"], "new": m["new"],
        "files": len(full), "selected": len(ran), "left_out": len(set(full) - ran),
        "everything": everything.group(1) if everything else None,
        "share_files": len(ran) / max(len(full), 1),
        "share_time": sum(full.get(f, (0, 0.0))[1] for f in ran) / total_time,
        "full_seconds": round(total_time, 1),
        "broke": broke, "missed": [f for f in broke if f not in ran],
    }


def percent(part, whole):
    return f"{100.0 * part / whole:.1f} %" if whole else "n/a"


def summary(state, mutants_file):
    with open(state, encoding="utf-8") as f:
        results = [json.loads(line) for line in f if line.strip()]
    rejected = 0
    if os.path.exists(mutants_file):
        with open(mutants_file, encoding="utf-8") as f:
            done = {r["id"] for r in results}
            top = max(done, default=0)
            rejected = sum(1 for line in f
                           if (m := json.loads(line))["rejected"] and m["id"] <= top)
    if not results:
        print("no mutation judged yet")
        return
    breaking = [r for r in results if r["broke"]]
    # A miss counts when the file also fails alone with the mutation (`alone`).
    missing = [r for r in results if any(a == "failed" for a in r.get("alone", {}).values())]
    unconfirmed = [r for r in results if r["missed"] and r not in missing]
    broke_files = sum(len(r["broke"]) for r in results)
    missed_files = sum(sum(a == "failed" for a in r.get("alone", {}).values()) for r in results)
    n = len(results)
    print(f"mutations judged: {n} (and {rejected} drawn that did not parse or changed nothing)")
    print(f"  by kind: " + ", ".join(f"{k} {sum(r['kind'] == k for r in results)}" for k in KINDS))
    print(f"  that broke at least one test file: {len(breaking)} "
          f"({broke_files} broken files in all)")
    print(f"  everything selected (the map cannot follow the change): "
          f"{sum(1 for r in results if r['everything'])}")
    print(f"recall over mutations that broke a file: "
          f"{percent(len(breaking) - sum(1 for r in missing if r in breaking), len(breaking))}; "
          f"over all mutations: {percent(n - len(missing), n)}; "
          f"over broken files: {percent(broke_files - missed_files, broke_files)}")
    print(f"mean share selected: files {percent(sum(r['share_files'] for r in results), n)}, "
          f"time {percent(sum(r['share_time'] for r in results), n)} "
          f"(of the full run's per-file seconds)")
    if breaking:
        print(f"  over the mutations that broke a file: files "
              f"{percent(sum(r['share_files'] for r in breaking), len(breaking))}, time "
              f"{percent(sum(r['share_time'] for r in breaking), len(breaking))}")
    worst = max(results, key=lambda r: r["share_time"])
    print(f"worst case: #{worst['id']} {worst['file']}:{worst['line']} ({worst['kind']}) selects "
          f"{worst['selected']} of {worst['files']} files, {percent(worst['share_time'], 1)} "
          f"of the time" + (f": {worst['everything']}" if worst["everything"] else ""))
    for r in missing + unconfirmed:
        what = "MISS" if r in missing else "left out, but passes alone with the mutation"
        print(f"{what}: #{r['id']} {r['file']}:{r['line']} ({r['kind']}) "
              f"{r['old'].strip()!r} -> {(r['new'] or '').strip()!r}: {r.get('alone', r['missed'])}")


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "mutants":
        mutants(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "apply":
        apply(args[0], args[1])
    elif command == "outcome":
        print(json.dumps(outcome(args[0])))
    elif command == "pristine":
        # [--union PRISTINE_JSON] EVENTS...: the files that failed in any of these runs (and
        # those of an earlier list).
        failed = set()
        if args[:1] == ["--union"]:
            with open(args[1], encoding="utf-8") as f:
                failed |= set(json.load(f))
            args = args[2:]
        for events in args:
            failed |= {f for f, (bad, _) in outcome(events).items() if bad}
        print(json.dumps(sorted(failed)))
    elif command == "judge":
        print(json.dumps(judge(*args)))
    elif command == "missed":
        print("\n".join(json.loads(args[0])["missed"]))
    elif command == "alone":
        # RESULT FILE EVENTS...: the result with `alone`: whether each missed file failed
        # alone with the mutation.
        result = json.loads(args[0])
        result["alone"] = {f: "failed" if outcome(e).get(f, [True])[0] else "passed"
                           for f, e in zip(result["missed"], args[1:])}
        print(json.dumps(result))
    elif command == "brief":
        r = json.loads(args[0])
        print(f"{r['selected']}/{r['files']} selected, broke {len(r['broke'])}, "
              f"missed {r['missed']}" + (f" (alone: {r['alone']})" if r["missed"] else ""))
    elif command == "done":
        with open(args[0], encoding="utf-8") as f:
            print(" ".join(str(json.loads(line)["id"]) for line in f if line.strip()))
    elif command == "valid_id":
        m = json.loads(args[0])
        print("" if m["rejected"] else m["id"])
    elif command == "summary":
        summary(args[0], args[1])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
