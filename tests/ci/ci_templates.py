#!/usr/bin/env python3
"""Runs the GitLab CI template and the CircleCI orb the way their runners do, for tests/dist.rs.

    ci_templates.py gitlab TEMPLATE WORKDIR CACHE_DIR SCRIPT [--var NAME=VALUE]...
        One job `extends: .envsnap` with these variables and `script: [SCRIPT]`: the hidden
        job's variables under the job's (GitLab's `extends:` merge), variables expanded in
        variables, `cache:` paths brought back from CACHE_DIR before the job and stored after
        after_script when the job succeeded; before_script + script in one shell,
        after_script in a new one with CI_JOB_STATUS.
    ci_templates.py circleci ORB WORKDIR CACHE_DIR STEPS_JSON
        The job's steps (a JSON list: "envsnap/restore" maps, {"run": …}) expanded as CircleCI
        compiles an orb: parameters with defaults, `<< parameters.x >>` substituted (a value that
        is exactly one reference takes the parameter's value), `\\<<` unescaped, `when:`
        conditions, nested commands; each `run` in `bash -eo pipefail` with $BASH_ENV sourced;
        restore_cache (the newest key with a listed prefix) and save_cache (a key is written
        once: caches are immutable) against CACHE_DIR, `{{ arch }}` and `{{ epoch }}` rendered.
Prints {"rc": …, "after_rc": …} (gitlab) or {"steps": [{"name", "rc"}]} (circleci).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

from ruamel.yaml import YAML


def expand_vars(v, env):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), str(v))


def gitlab(template, workdir, cache_dir, script, given):
    doc = YAML(typ="safe").load(open(template, encoding="utf-8"))
    hidden = doc[".envsnap"]
    env = dict(os.environ, CI_PROJECT_DIR=workdir, CI_JOB_NAME="test", CI=os.environ.get("CI", "true"))
    env.pop("GITHUB_OUTPUT", None)
    variables = dict(hidden.get("variables") or {})
    variables.update(given)
    for k, v in variables.items():
        env[k] = expand_vars(v, env)
    cache = hidden.get("cache") or {}
    key = expand_vars(cache.get("key", "default"), env)
    kept = os.path.join(cache_dir, key)
    paths = cache.get("paths", [])
    for p in paths:
        if os.path.exists(os.path.join(kept, p)):
            shutil.copytree(os.path.join(kept, p), os.path.join(workdir, p), symlinks=True, dirs_exist_ok=True)

    def lines(v):
        return [str(x) for x in (v if isinstance(v, list) else [v] if v else [])]

    main = "\n".join(lines(hidden.get("before_script")) + [script])
    rc = subprocess.run(["bash", "-e", "-c", main], env=env, cwd=workdir, stdout=sys.stderr).returncode
    env["CI_JOB_STATUS"] = "success" if rc == 0 else "failed"
    after = "\n".join(lines(hidden.get("after_script")))
    after_rc = subprocess.run(["bash", "-e", "-c", after], env=env, cwd=workdir, stdout=sys.stderr).returncode
    if rc == 0:
        for p in paths:
            if os.path.exists(os.path.join(workdir, p)):
                shutil.rmtree(os.path.join(kept, p), ignore_errors=True)
                shutil.copytree(os.path.join(workdir, p), os.path.join(kept, p), symlinks=True)
    print(json.dumps({"rc": rc, "after_rc": after_rc}))


REF = re.compile(r"<<\s*parameters\.([\w-]+)\s*>>")


def substitute(value, params):
    if isinstance(value, str):
        m = REF.fullmatch(value.strip())
        if m:
            return params[m.group(1)]
        for name in REF.findall(value):
            if name not in params:
                raise SystemExit(f"unknown parameter {name}")
        out = REF.sub(lambda m: str(params[m.group(1)]), value)
        # CircleCI's escape for a literal `<<` (a shell heredoc).
        return out.replace("\\<<", "<<")
    if isinstance(value, list):
        return [substitute(v, params) for v in value]
    if isinstance(value, dict):
        return {substitute(k, params): substitute(v, params) for k, v in value.items()}
    return value


def condition(c):
    if isinstance(c, dict):
        (op, arg), = c.items()
        if op == "equal":
            return all(a == arg[0] for a in arg[1:])
        if op == "not":
            return not condition(arg)
        if op == "and":
            return all(condition(a) for a in arg)
        if op == "or":
            return any(condition(a) for a in arg)
        raise SystemExit(f"unsupported condition {op}")
    return bool(c)


def expand(steps, orb, prefix):
    """Orb command invocations → the primitive steps they compile to."""
    out = []
    for step in steps:
        if isinstance(step, str):
            name, args = step, {}
        else:
            (name, args), = step.items()
            args = args or {}
        if name == "when":
            if condition(args["condition"]):
                out += expand(args["steps"], orb, prefix)
            continue
        cmd_name = name[len(prefix):] if name.startswith(prefix) else name
        if cmd_name in orb.get("commands", {}) and (name.startswith(prefix) or name == cmd_name and prefix == ""):
            cmd = orb["commands"][cmd_name]
            spec = cmd.get("parameters") or {}
            unknown = set(args) - set(spec)
            if unknown:
                raise SystemExit(f"{name}: unknown parameters {sorted(unknown)}")
            params = {}
            for p, s in spec.items():
                if p in args:
                    v = args[p]
                elif "default" in s:
                    v = s["default"]
                else:
                    raise SystemExit(f"{name}: parameter {p} is required")
                if s.get("type") == "enum" and v not in s["enum"]:
                    raise SystemExit(f"{name}: {p}={v!r} not in {s['enum']}")
                params[p] = v
            # Inside the orb, its commands are called without the prefix.
            out += expand(substitute(cmd["steps"], params), orb, "")
            continue
        out.append((name, args))
    return out


def render_cache_key(key):
    return key.replace("{{ arch }}", "arch1-linux-amd64-6_85").replace("{{ epoch }}", str(int(time.time())))


def home(p):
    return os.path.expanduser(p)


def circleci(orb_file, workdir, cache_dir, steps_json):
    orb = YAML(typ="safe").load(open(orb_file, encoding="utf-8"))
    steps = expand(json.loads(steps_json), orb, "envsnap/")
    bash_env = os.path.join(cache_dir, f"bash-env-{os.getpid()}")
    open(bash_env, "w").close()
    env = dict(os.environ, BASH_ENV=bash_env, CIRCLECI="true")
    env.pop("GITHUB_OUTPUT", None)
    results = []
    for name, args in steps:
        if name == "run":
            run = args if isinstance(args, dict) else {"command": args}
            step_env = dict(env)
            step_env.update({k: str(v) for k, v in (run.get("environment") or {}).items()})
            rc = subprocess.run(["bash", "-eo", "pipefail", "-c", run["command"]],
                                env=step_env, cwd=workdir, stdout=sys.stderr).returncode
            results.append({"name": run.get("name", run["command"].split("\n")[0]), "rc": rc})
            if rc != 0:
                break
        elif name == "restore_cache":
            keys = [render_cache_key(k) for k in args.get("keys", [args.get("key")])]
            found = None
            for k in keys:
                cands = sorted((d for d in os.listdir(cache_dir) if d.startswith(k) and os.path.isdir(os.path.join(cache_dir, d))),
                               key=lambda d: os.stat(os.path.join(cache_dir, d)).st_mtime_ns)
                if cands:
                    found = cands[-1]
                    break
            if found:
                saved = json.load(open(os.path.join(cache_dir, found, "paths.json")))
                for i, p in enumerate(saved):
                    shutil.copytree(os.path.join(cache_dir, found, str(i)), p, symlinks=True, dirs_exist_ok=True)
            results.append({"name": f"restore_cache {found}", "rc": 0})
        elif name == "save_cache":
            key = render_cache_key(args["key"])
            d = os.path.join(cache_dir, key)
            if not os.path.exists(d):
                os.makedirs(d)
                paths = [home(p) for p in args["paths"]]
                for i, p in enumerate(paths):
                    if os.path.exists(p):
                        shutil.copytree(p, os.path.join(d, str(i)), symlinks=True)
                json.dump(paths, open(os.path.join(d, "paths.json"), "w"))
            results.append({"name": f"save_cache {key}", "rc": 0})
        else:
            raise SystemExit(f"step {name} is not emulated")
    print(json.dumps({"steps": results}))


def main():
    mode = sys.argv[1]
    if mode == "gitlab":
        template, workdir, cache_dir, script = sys.argv[2:6]
        given = {}
        rest = sys.argv[6:]
        while rest:
            assert rest[0] == "--var"
            k, v = rest[1].split("=", 1)
            given[k] = v
            rest = rest[2:]
        gitlab(template, os.path.abspath(workdir), cache_dir, script, given)
    elif mode == "circleci":
        circleci(sys.argv[2], os.path.abspath(sys.argv[3]), sys.argv[4], sys.argv[5])


if __name__ == "__main__":
    main()
