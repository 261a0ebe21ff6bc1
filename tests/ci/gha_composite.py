#!/usr/bin/env python3
"""Runs a composite GitHub Action the way actions/runner does, for tests/dist.rs.

    gha_composite.py STATE_DIR ACTION_DIR [--with NAME=VALUE]...

One call is one `uses:` step of a job; STATE_DIR carries the job between calls (the job's
environment from $GITHUB_ENV, $GITHUB_PATH entries, the job summary, RUNNER_TEMP).
What the runner does and this reproduces:
  - inputs: `with:` values, else the input's default; an input the action does not declare is
    an error here (a warning on GitHub, almost always a typo);
  - each step's `if:` (default `success()`), `env:` and `run:` go through expression
    substitution (`${{ inputs.x }}`, `${{ steps.id.outputs.x }}`, `${{ github.action_path }}`,
    `${{ runner.temp }}`, `${{ env.X }}`, comparisons, `&&`, `||`, `!`, status functions);
    an unknown context or function is an error, not an empty string;
  - `run:` is written to a file and run as `bash --noprofile --norc -eo pipefail FILE`
    (the runner's `shell: bash`), with GITHUB_ACTION_PATH set and fresh GITHUB_OUTPUT,
    GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY files per step, read back afterwards
    (`name=value` and `name<<DELIM` forms);
  - the first failing step fails the action and skips later steps (unless their `if:` says
    otherwise); the action's outputs are its `outputs.*.value` expressions.
Prints one JSON object: {"outcome", "outputs", "steps": [{"id", "outcome", "rc"}], "summary"}.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

from ruamel.yaml import YAML


class ExprError(Exception):
    pass


TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||<=|>=|[!()<>,.\[\]])"
    r"|(?P<id>[A-Za-z_][A-Za-z0-9_-]*))"
)


def tokenize(s):
    pos, out = 0, []
    while pos < len(s):
        if s[pos:].strip() == "":
            break
        m = TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise ExprError(f"cannot parse expression at {s[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
    return out


def truthy(v):
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, str):
        return v != ""
    return True


def to_str(v):
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def equal(a, b):
    # GitHub: strings compare case-insensitively; mixed types coerce to numbers.
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if type(a) is type(b):
        return a == b

    def num(x):
        if x is None:
            return 0
        if isinstance(x, bool):
            return int(x)
        if isinstance(x, (int, float)):
            return x
        try:
            return float(x.strip()) if x.strip() else 0
        except ValueError:
            return float("nan")

    return num(a) == num(b)


class Parser:
    def __init__(self, tokens, ctx):
        self.t, self.i, self.ctx = tokens, 0, ctx

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ExprError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self):
        v = self.or_()
        if self.i != len(self.t):
            raise ExprError(f"unexpected {self.peek()[1]!r}")
        return v

    def or_(self):
        v = self.and_()
        while self.peek()[1] == "||":
            self.take()
            r = self.and_()
            v = v if truthy(v) else r
        return v

    def and_(self):
        v = self.cmp()
        while self.peek()[1] == "&&":
            self.take()
            r = self.cmp()
            v = r if truthy(v) else v
        return v

    def cmp(self):
        v = self.unary()
        while self.peek()[1] in ("==", "!="):
            op = self.take()[1]
            r = self.unary()
            v = equal(v, r) if op == "==" else not equal(v, r)
        return v

    def unary(self):
        if self.peek()[1] == "!":
            self.take()
            return not truthy(self.unary())
        return self.primary()

    def primary(self):
        kind, val = self.take()
        if kind == "str":
            return val[1:-1].replace("''", "'")
        if kind == "num":
            return float(val)
        if val == "(":
            v = self.or_()
            self.take(")")
            return v
        if kind != "id":
            raise ExprError(f"unexpected {val!r}")
        if val in ("true", "false"):
            return val == "true"
        if val == "null":
            return None
        if self.peek()[1] == "(":
            self.take("(")
            args = []
            while self.peek()[1] != ")":
                args.append(self.or_())
                if self.peek()[1] == ",":
                    self.take()
            self.take(")")
            return self.call(val, args)
        # A context path: name(.prop | ['prop'])*
        path = [val]
        while self.peek()[1] in (".", "["):
            if self.take()[1] == ".":
                path.append(self.take()[1])
            else:
                path.append(to_str(self.or_()))
                self.take("]")
        return self.lookup(path)

    def call(self, name, args):
        status = self.ctx["status"]
        if name == "success":
            return status == "success"
        if name == "failure":
            return status == "failure"
        if name == "always":
            return True
        if name == "cancelled":
            return False
        if name == "contains":
            return to_str(args[1]).lower() in to_str(args[0]).lower()
        if name == "startsWith":
            return to_str(args[0]).lower().startswith(to_str(args[1]).lower())
        if name == "format":
            fmt = to_str(args[0])
            return re.sub(r"\{(\d+)\}", lambda m: to_str(args[int(m.group(1)) + 1]), fmt)
        raise ExprError(f"unknown function {name}()")

    def lookup(self, path):
        root = path[0]
        if root not in self.ctx["contexts"]:
            raise ExprError(f"unknown context {root!r}")
        v = self.ctx["contexts"][root]
        for i, p in enumerate(path[1:], 1):
            if root == "inputs" and i == 1 and p not in v:
                raise ExprError(f"input {p!r} is not declared by the action")
            if root in ("github", "runner") and i == 1 and p not in v:
                raise ExprError(f"{root}.{p} is not provided by this emulation")
            v = v.get(p) if isinstance(v, dict) else None
        return v


def evaluate(expr, ctx):
    return Parser(tokenize(expr), ctx).parse()


def substitute(text, ctx):
    """`${{ expr }}` in a string, as the runner renders `run:` and `env:` values."""
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: to_str(evaluate(m.group(1), ctx)), str(text), flags=re.S)


def condition(expr, ctx):
    if expr is None:
        return ctx["status"] == "success"
    expr = str(expr).strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2]
    # As the runner does: a condition without a status function means `success() && (...)`.
    if not re.search(r"\b(success|failure|always|cancelled)\s*\(", expr):
        expr = f"success() && ({expr})"
    return truthy(evaluate(expr, ctx))


def read_kv(path):
    """$GITHUB_OUTPUT / $GITHUB_ENV syntax: NAME=VALUE lines and NAME<<DELIM heredocs."""
    out = {}
    if not os.path.exists(path):
        return out
    lines = open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise SystemExit(f"{path}: unterminated {name}<<{delim}")
            i += 1
            out[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
        else:
            raise SystemExit(f"{path}: invalid line {line!r}")
    return out


def main():
    state, action_dir = sys.argv[1], os.path.abspath(sys.argv[2])
    given = {}
    args = sys.argv[3:]
    while args:
        if args[0] != "--with" or len(args) < 2 or "=" not in args[1]:
            raise SystemExit(f"usage: {sys.argv[0]} STATE ACTION_DIR [--with NAME=VALUE]...")
        name, value = args[1].split("=", 1)
        given[name] = value
        args = args[2:]
    print(json.dumps(run_action(state, action_dir, given)))


def run_action(state, action_dir, given):
    """One `uses:` step of a composite action; STATE carries the job between calls."""
    action = YAML(typ="safe").load(open(os.path.join(action_dir, "action.yml"), encoding="utf-8"))
    runs = action["runs"]
    if runs.get("using") != "composite":
        raise SystemExit("not a composite action")
    declared = action.get("inputs") or {}
    unknown = set(given) - set(declared)
    if unknown:
        raise SystemExit(f"inputs not declared by {action_dir}/action.yml: {sorted(unknown)}")
    inputs = {}
    for name, spec in declared.items():
        spec = spec or {}
        if name in given:
            inputs[name] = given[name]
        elif spec.get("required") and "default" not in spec:
            raise SystemExit(f"required input {name!r} not given")
        else:
            inputs[name] = to_str(spec.get("default", ""))

    os.makedirs(state, exist_ok=True)
    env_file, path_file = os.path.join(state, "env.json"), os.path.join(state, "path.json")
    job_env = json.load(open(env_file)) if os.path.exists(env_file) else {}
    job_path = json.load(open(path_file)) if os.path.exists(path_file) else []
    temp = os.path.join(state, "runner-temp")
    os.makedirs(temp, exist_ok=True)
    workspace = os.environ.get("GITHUB_WORKSPACE", os.getcwd())

    steps_ctx, results, status = {}, [], "success"
    for n, step in enumerate(runs["steps"]):
        if "run" not in step:
            raise SystemExit(f"step {n}: only run steps are emulated")
        if "shell" not in step:
            raise SystemExit(f"step {n}: a composite run step must set shell")
        base_env = dict(os.environ)
        base_env.update(job_env)
        ctx = {
            "status": status,
            "contexts": {
                "inputs": inputs,
                "steps": steps_ctx,
                "env": base_env,
                "github": {"action_path": action_dir, "workspace": workspace},
                "runner": {"os": "Linux", "temp": temp, "arch": "X64"},
            },
        }
        sid = step.get("id", f"__{n}")
        if not condition(step.get("if"), ctx):
            results.append({"id": sid, "outcome": "skipped", "rc": None})
            steps_ctx[sid] = {"outputs": {}, "outcome": "skipped", "conclusion": "skipped"}
            continue
        files = {}
        for var in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_PATH", "GITHUB_STEP_SUMMARY"):
            fd, files[var] = tempfile.mkstemp(prefix=var.lower() + "-", dir=temp)
            os.close(fd)
        env = dict(base_env)
        env.update({k: substitute(v, ctx) for k, v in (step.get("env") or {}).items()})
        env.update(files)
        env.update({
            "GITHUB_ACTION_PATH": action_dir, "GITHUB_ACTIONS": "true", "CI": "true",
            "RUNNER_OS": "Linux", "RUNNER_TEMP": temp, "GITHUB_WORKSPACE": workspace,
        })
        env["PATH"] = ":".join(list(reversed(job_path)) + [env.get("PATH", "")])
        shell = step["shell"]
        if shell != "bash":
            raise SystemExit(f"step {n}: only shell: bash is emulated")
        fd, script = tempfile.mkstemp(suffix=".sh", dir=temp)
        with os.fdopen(fd, "w") as f:
            f.write(substitute(step["run"], ctx))
        rc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", script],
            env=env, cwd=substitute(step.get("working-directory", workspace), ctx), stdout=sys.stderr,
        ).returncode
        outputs = read_kv(files["GITHUB_OUTPUT"])
        job_env.update(read_kv(files["GITHUB_ENV"]))
        job_path += [l for l in open(files["GITHUB_PATH"]).read().split("\n") if l.strip()]
        with open(os.path.join(state, "summary.md"), "a") as out:
            out.write(open(files["GITHUB_STEP_SUMMARY"]).read())
        outcome = "success" if rc == 0 else "failure"
        if rc != 0 and not step.get("continue-on-error"):
            status = "failure"
        steps_ctx[sid] = {"outputs": outputs, "outcome": outcome, "conclusion": outcome}
        results.append({"id": sid, "outcome": outcome, "rc": rc})

    final_ctx = {"status": status, "contexts": {"steps": steps_ctx, "inputs": inputs}}
    outputs = {
        name: substitute((spec or {}).get("value", ""), final_ctx)
        for name, spec in (action.get("outputs") or {}).items()
    }
    json.dump(job_env, open(env_file, "w"))
    json.dump(job_path, open(path_file, "w"))
    summary_path = os.path.join(state, "summary.md")
    return {
        "outcome": status, "outputs": outputs, "steps": results,
        "summary": open(summary_path).read() if os.path.exists(summary_path) else "",
    }


if __name__ == "__main__":
    try:
        main()
    except ExprError as e:
        raise SystemExit(f"expression error: {e}")
