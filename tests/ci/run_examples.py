#!/usr/bin/env python3
"""Runs the CI examples of the documentation, for tests/docs_examples.rs.

    run_examples.py list FILE.md...             the examples found: one JSON object per line
    run_examples.py workflow FILE.md INDEX      the example wrapped into a whole CI file (YAML)
    run_examples.py run FILE.md INDEX WORKDIR   run the example's shell steps once in WORKDIR

An example is a ```yaml block. Its platform is told by its shape: GitHub Actions (a list of
steps with `run:`/`uses:`, or a workflow with `jobs:`), GitLab CI (jobs with `script:`),
CircleCI (`steps:` with `checkout` or `run:` maps). `run` executes the shell of every step in
order, the way the platform would on a runner where the step's tools exist:
  - GitHub: `${{ }}` expressions are evaluated as the runner does (gha_composite.py's evaluator;
    `hashFiles()` by envsnap's identical `{hashFiles:…}`), `if:` decides whether a step runs,
    each step gets its own $GITHUB_OUTPUT (read back into `steps.<id>.outputs`) and
    `bash -e {0}`; a failing step fails the job. `uses:` steps are the platform's (checkout,
    setup-python, a cache of the store): the store outlives the run, as the cache step keeps it.
    A job `env:` naming an s3:// bucket (credentials from `secrets`) gets the file:// remote in
    $EXAMPLES_FILE_REMOTE instead: the same remote code path, without a server.
  - GitLab: before_script + script run in one `bash -e` shell; after_script in another (with
    CI_JOB_STATUS), as the runner does.
  - GitLab's `cache:` paths are carried from one run of the job to the next, as the runner
    does (the examples keep the store there).
  - CircleCI: each `run:` is its own `bash -eo pipefail` shell. restore_cache/save_cache of the
    store are not emulated: the test's store ($ENVSNAP_STORE) outlives the run instead.
Prints {"ok": bool, "steps": [{"name", "rc", "ran"}], "hits": ["miss"|"exact"|…]}: `hits` are
the `hit=` lines envsnap wrote to $GITHUB_OUTPUT, in order.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gha_composite as gha  # noqa: E402
import ci_templates  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GITLAB_TEMPLATE = os.path.join(REPO, "ci/gitlab/envsnap.gitlab-ci.yml")
ORB = os.path.join(REPO, "ci/circleci/orb.yml")


def load(path):
    return YAML(typ="safe").load(open(path, encoding="utf-8"))
from ruamel.yaml import YAML  # noqa: E402


def blocks(md):
    text = open(md, encoding="utf-8").read()
    out = []
    for m in re.finditer(r"^```ya?ml[^\n]*\n(.*?)^```", text, re.S | re.M):
        line = text[: m.start()].count("\n") + 1
        out.append({"file": md, "line": line, "yaml": m.group(1)})
    return out


def platform(doc):
    if isinstance(doc, list):
        return "github"
    if not isinstance(doc, dict):
        return None
    if "jobs" in doc and isinstance(doc["jobs"], dict):
        j = next(iter(doc["jobs"].values()))
        if isinstance(j, dict) and "runs-on" in j:
            return "github"
        return "circleci"
    if "steps" in doc:
        # A GitHub job shown without its `runs-on` uses actions; CircleCI's steps never do.
        if any(isinstance(st, dict) and "uses" in st for st in doc["steps"] or []):
            return "github"
        return "circleci"
    gitlab_keys = ("script", "before_script", "after_script", "extends")
    if any(isinstance(v, dict) and any(k in v for k in gitlab_keys) for v in doc.values()):
        return "gitlab"
    return None


def examples(md):
    out = []
    for i, b in enumerate(blocks(md)):
        doc = YAML(typ="safe").load(b["yaml"])
        p = platform(doc)
        if p:
            out.append({"index": i, "file": md, "line": b["line"], "platform": p, "doc": doc})
    return out


def wrap(ex):
    """The example as a whole CI file, for the platform's schema."""
    doc, p = ex["doc"], ex["platform"]
    if p == "github":
        if isinstance(doc, dict) and "steps" in doc:
            return {"on": "push", "jobs": {"example": {"runs-on": "ubuntu-24.04", **doc}}}
        if isinstance(doc, list):
            return {"name": "example", "on": "push",
                    "jobs": {"example": {"runs-on": "ubuntu-24.04", "steps": doc}}}
        # A workflow's jobs shown without its trigger.
        return doc if "on" in doc else {"on": "push", **doc}
    if p == "circleci":
        if "jobs" in doc:
            return doc
        cfg = {"version": 2.1,
               "jobs": {"example": {"docker": [{"image": "cimg/python:3.12"}], "steps": doc["steps"]}},
               "workflows": {"main": {"jobs": ["example"]}}}
        if "envsnap/" in json.dumps(doc["steps"]):
            cfg["orbs"] = {"envsnap": load(ORB)}
        return cfg
    return doc


def github_job(doc):
    if isinstance(doc, list):
        return {"steps": doc}
    if "steps" in doc:
        return doc
    return next(iter(doc["jobs"].values()))


def hashfiles_fn(workdir):
    def hash_files(*patterns):
        r = subprocess.run(
            ["envsnap", "key", "{hashFiles:" + ",".join(patterns) + "}"],
            cwd=workdir, capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise gha.ExprError(f"hashFiles: {r.stderr.strip()}")
        return r.stdout.strip()
    return hash_files


class Ctx(dict):
    pass


def run_github(doc, workdir):
    steps_ctx, results, hits, status = {}, [], [], "success"
    hf = hashfiles_fn(workdir)
    orig_call = gha.Parser.call

    def call(self, name, args):
        if name == "hashFiles":
            return hf(*[gha.to_str(a) for a in args])
        return orig_call(self, name, args)

    gha.Parser.call = call
    job = github_job(doc)

    def context():
        return {"status": status, "contexts": {
            "steps": steps_ctx, "env": dict(os.environ),
            "runner": {"os": "Linux", "temp": tempfile.gettempdir(), "arch": "X64"},
            "github": {"workspace": workdir, "run_id": "1", "action_path": ""},
            "inputs": {}, "secrets": {}, "vars": {},
        }}

    # The job's `env:`. A bucket the example names (s3://…, credentials from secrets) becomes a
    # file:// remote the test provides: the same remote code, no server.
    for k, v in ((doc.get("env") if isinstance(doc, dict) else None) or job.get("env") or {}).items():
        v = gha.substitute(gha.to_str(v), context())
        if k == "ENVSNAP_REMOTE" and v.startswith("s3://"):
            v = os.environ["EXAMPLES_FILE_REMOTE"]
        if k.startswith("AWS_"):
            continue
        os.environ[k] = v
    for n, step in enumerate(job["steps"]):
        sid = step.get("id", f"__{n}")
        ctx = context()
        name = step.get("name") or step.get("uses") or (step.get("run") or "").split("\n")[0]
        if not gha.condition(step.get("if"), ctx):
            results.append({"name": name, "rc": None, "ran": False})
            steps_ctx[sid] = {"outputs": {}, "outcome": "skipped"}
            continue
        ours = re.fullmatch(r"[^/@]+/envsnap(/restore|/save)?@.+", step.get("uses", ""))
        if ours:
            # This repository's action, run from the working tree the way the runner runs it
            # (envsnap is on PATH already, so its install step has nothing to do).
            with_ = {k: gha.substitute(gha.to_str(v), ctx) for k, v in (step.get("with") or {}).items()}
            action_dir = os.path.join(REPO, (ours.group(1) or "/").lstrip("/"))
            r = gha.run_action(os.path.join(workdir, ".gha-job"), action_dir, with_)
            ok = r["outcome"] == "success"
            results.append({"name": name, "rc": 0 if ok else 1, "ran": True})
            steps_ctx[sid] = {"outputs": r["outputs"], "outcome": r["outcome"]}
            hits += [r["outputs"]["hit"]] if r["outputs"].get("hit") else []
            if not ok:
                status = "failure"
            continue
        if "run" not in step:
            # The platform's own actions (checkout, setup-python, cache): nothing to run here.
            results.append({"name": name, "rc": 0, "ran": False})
            steps_ctx[sid] = {"outputs": {"cache-hit": "false"}, "outcome": "success"}
            continue
        fd, out_file = tempfile.mkstemp(prefix="gh-output-")
        os.close(fd)
        env = dict(os.environ, GITHUB_OUTPUT=out_file, GITHUB_WORKSPACE=workdir, RUNNER_OS="Linux")
        script = gha.substitute(step["run"], ctx)
        rc = run_shell(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env, workdir)
        outputs = gha.read_kv(out_file)
        hits += hits_of(out_file)
        results.append({"name": name, "rc": rc, "ran": True})
        steps_ctx[sid] = {"outputs": outputs, "outcome": "success" if rc == 0 else "failure"}
        if rc != 0 and not step.get("continue-on-error"):
            status = "failure"
    return status == "success", results, hits


def hits_of(out_file):
    return [l.split("=", 1)[1] for l in open(out_file).read().split("\n") if l.startswith("hit=")]


TEMPLATE_HITS = []


def run_shell(argv, env, cwd):
    p = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(p.stdout)
    # The GitLab template and the CircleCI orb report their restore as `envsnap: <hit> …`.
    TEMPLATE_HITS.extend(re.findall(r"^envsnap: (exact|fallback|miss)\b", p.stdout, re.M))
    return p.returncode


def lines(v):
    if v is None:
        return []
    return [str(x) for x in (v if isinstance(v, list) else [v])]


def run_gitlab(doc, workdir):
    results, hits = [], []
    ok = True
    for name, job in doc.items():
        if name.startswith(".") or not isinstance(job, dict) or not any(k in job for k in ("script", "before_script")):
            continue
        if job.get("extends") == ".envsnap":
            # What `include:` of this repository's template brings, merged as `extends:` does.
            base = dict(load(GITLAB_TEMPLATE)[".envsnap"])
            variables = dict(base.get("variables") or {})
            variables.update(job.get("variables") or {})
            job = {**base, **job, "variables": variables}
        fd, out_file = tempfile.mkstemp(prefix="gl-output-")
        os.close(fd)
        env = dict(os.environ, CI_PROJECT_DIR=workdir, CI_JOB_NAME=name, GITHUB_OUTPUT=out_file)
        for k, v in (job.get("variables") or {}).items():
            # GitLab expands variables inside variables.
            env[k] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), str(v))
        # `cache:` paths (inside the project directory) come back from the previous run of the
        # job before it starts, and are uploaded after after_script when the job succeeded.
        cache = job.get("cache") or []
        paths = [p for c in (cache if isinstance(cache, list) else [cache]) for p in c.get("paths", [])]
        kept = os.path.join(os.path.dirname(workdir), ".gitlab-cache", name)
        for p in paths:
            if os.path.exists(os.path.join(kept, p)):
                shutil.copytree(os.path.join(kept, p), os.path.join(workdir, p), symlinks=True, dirs_exist_ok=True)
        main = "\n".join(lines(job.get("before_script")) + lines(job.get("script")))
        rc = run_shell(["bash", "-e", "-c", main], env, workdir)
        results.append({"name": f"{name}: script", "rc": rc, "ran": True})
        status = "success" if rc == 0 else "failed"
        if job.get("after_script"):
            env["CI_JOB_STATUS"] = status
            arc = run_shell(["bash", "-e", "-c", "\n".join(lines(job["after_script"]))], env, workdir)
            # GitLab ignores an after_script failure; the docs must not rely on that.
            results.append({"name": f"{name}: after_script", "rc": arc, "ran": True})
            ok = ok and arc == 0
        if rc == 0:
            for p in paths:
                if os.path.exists(os.path.join(workdir, p)):
                    shutil.rmtree(os.path.join(kept, p), ignore_errors=True)
                    shutil.copytree(os.path.join(workdir, p), os.path.join(kept, p), symlinks=True)
        hits += hits_of(out_file)
        ok = ok and rc == 0
    return ok, results, hits


def run_circleci(doc, workdir):
    steps = doc["steps"] if "steps" in doc else next(iter(doc["jobs"].values()))["steps"]
    # This repository's orb, compiled as CircleCI does; its store is the test's ($ENVSNAP_STORE)
    # rather than ~/.cache/envsnap, which would be this machine's.
    orb = load(ORB)
    for st in steps:
        if isinstance(st, dict) and next(iter(st)) in ("envsnap/restore", "envsnap/save"):
            st[next(iter(st))].setdefault("store", os.environ["ENVSNAP_STORE"])
    steps = [{n: a} for n, a in ci_templates.expand(steps, orb, "envsnap/")]
    bash_env = os.path.join(workdir, ".circleci-bash-env")
    open(bash_env, "w").close()
    os.environ["BASH_ENV"] = bash_env
    results, hits = [], []
    for s in steps:
        if isinstance(s, str) or "run" not in s:
            results.append({"name": str(s if isinstance(s, str) else next(iter(s))), "rc": 0, "ran": False})
            continue
        run = s["run"]
        cmd = run if isinstance(run, str) else run["command"]
        fd, out_file = tempfile.mkstemp(prefix="cc-output-")
        os.close(fd)
        env = dict(os.environ, GITHUB_OUTPUT=out_file, CIRCLE_WORKING_DIRECTORY=workdir)
        if isinstance(run, dict):
            env.update({k: str(v) for k, v in (run.get("environment") or {}).items()})
        rc = run_shell(["bash", "-eo", "pipefail", "-c", cmd], env, workdir)
        hits += hits_of(out_file)
        results.append({"name": cmd.split("\n")[0], "rc": rc, "ran": True})
        if rc != 0:
            return False, results, hits
    return True, results, hits


def main():
    mode = sys.argv[1]
    if mode == "list":
        for md in sys.argv[2:]:
            for ex in examples(md):
                text = json.dumps(ex["doc"])
                print(json.dumps({"file": md, "index": ex["index"], "line": ex["line"],
                                  "platform": ex["platform"], "text": text}))
        return
    md, index = sys.argv[2], int(sys.argv[3])
    ex = next(e for e in examples(md) if e["index"] == index)
    if mode == "workflow":
        y = YAML()
        y.default_flow_style = False
        y.dump(wrap(ex), sys.stdout)
        return
    workdir = os.path.abspath(sys.argv[4])
    os.chdir(workdir)
    os.environ["GITHUB_WORKSPACE"] = workdir
    runner = {"github": run_github, "gitlab": run_gitlab, "circleci": run_circleci}[ex["platform"]]
    ok, steps, hits = runner(ex["doc"], workdir)
    hits = hits + TEMPLATE_HITS
    print(json.dumps({"ok": ok, "steps": steps, "hits": hits}))


if __name__ == "__main__":
    main()
