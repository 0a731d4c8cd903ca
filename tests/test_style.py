"""The whole tree keeps one style: `ruff format` (pyproject.toml) and ruff's lint rules.

Run `.venv/bin/ruff format . && .venv/bin/ruff check --fix .` to fix what these tests report.
"""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = [sys.executable, "-m", "ruff"]


def _ruff(*args):
    return subprocess.run(
        [*RUFF, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ}
    )


def test_tree_is_formatted():
    out = _ruff("format", "--check", ".")
    assert out.returncode == 0, "run `ruff format .`:\n" + out.stdout + out.stderr


def test_lint_is_clean():
    out = _ruff("check", ".")
    assert out.returncode == 0, "run `ruff check --fix .`:\n" + out.stdout + out.stderr


def test_docstrings_use_plain_backticks():
    """One docstring convention: Google sections and single backticks, no RST roles."""
    bad = []
    for path in sorted((ROOT / "optg_jax").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"``|:(func|class|data|meth|mod|attr):`", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def _own_nodes(fn):
    """The nodes of `fn`'s body, not those of functions or classes defined inside it."""
    todo = list(fn.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _public_functions(tree):
    """(qualified name, node) of module-level functions and public methods of public classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                decorators = {getattr(d, "id", getattr(d, "attr", "")) for d in item.decorator_list}
                # Properties read as attributes: their docstring says what the value is.
                if not item.name.startswith("_") and "property" not in decorators:
                    yield f"{node.name}.{item.name}", item


def _section(doc: str, title: str) -> str | None:
    """The text of a Google-style section (`Args:` ...) of a docstring, or None."""
    match = re.search(rf"^\s*{title}:\s*$", doc, re.MULTILINE)
    if match is None:
        return None
    rest = doc[match.end() :]
    end = re.search(r"^\s*[A-Z][A-Za-z ]*:\s*$", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def docstring_problems(path: Path) -> list[str]:
    """What the docstrings of the public functions in `path` lack (Args/Returns/Yields/Raises)."""
    problems = []
    for name, fn in _public_functions(ast.parse(path.read_text())):
        where = f"{path.relative_to(ROOT)}:{fn.lineno} {name}"
        doc = ast.get_docstring(fn)
        if not doc:
            problems.append(f"{where}: no docstring")
            continue
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)]
        params += [a.arg for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
        params = [p for p in params if p not in ("self", "cls")]
        nodes = list(_own_nodes(fn))
        args = _section(doc, "Args")
        if params and args is None:
            problems.append(f"{where}: no Args: section")
        for param in params if args is not None else ():
            if not re.search(rf"^\s*\**{param}( \(.*\))?:", args, re.MULTILINE):
                problems.append(f"{where}: Args: does not describe {param!r}")
        if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes):
            if _section(doc, "Yields") is None:
                problems.append(f"{where}: no Yields: section")
        elif any(
            isinstance(n, ast.Return)
            and n.value is not None
            and not (isinstance(n.value, ast.Constant) and n.value.value is None)
            for n in nodes
        ):
            if _section(doc, "Returns") is None:
                problems.append(f"{where}: no Returns: section")
        if any(isinstance(n, ast.Raise) and n.exc is not None for n in nodes):
            if _section(doc, "Raises") is None:
                problems.append(f"{where}: no Raises: section")
    return problems


def test_docstring_checker_finds_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / "m.py"
    path.write_text(
        textwrap.dedent('''
            def good(a, *rest, key=1):
                """Does it.

                Args:
                  a: one.
                  *rest: more.
                  key (int): a key.

                Returns:
                  A thing.

                Raises:
                  ValueError: bad `a`.
                """
                if a:
                    raise ValueError(a)
                return a


            def bad(a, b):
                """Only prose about a and b."""

                def inner():
                    return 1

                if a:
                    raise ValueError(a)
                return a + b


            def gen(n):
                """Counts.

                Args:
                  n: how far.

                Returns:
                  Numbers.
                """
                yield from range(n)


            class Public:
                def method(self, x):
                    """Uses x.

                    Args:
                      y: not x.
                    """

                @property
                def value(self):
                    return 1

                def _private(self, z):
                    return z


            def _hidden(q):
                return q
            ''')
    )
    assert docstring_problems(path) == [
        "m.py:21 bad: no Args: section",
        "m.py:21 bad: no Returns: section",
        "m.py:21 bad: no Raises: section",
        "m.py:32 gen: no Yields: section",
        "m.py:45 Public.method: Args: does not describe 'x'",
    ]


@pytest.mark.parametrize(
    "module",
    sorted(str(p.relative_to(ROOT)) for p in (ROOT / "optg_jax").rglob("*.py")),
)
def test_public_functions_have_args_returns_raises(module):
    """Google sections on every public function of optg_jax (names without a leading `_`)."""
    problems = docstring_problems(ROOT / module)
    assert not problems, "\n".join(problems)


MAX_LINES, MAX_PARAMS = 80, 8
# The library's public entry point takes every OptG setting as a keyword (its signature is the
# documented API); everything else groups arguments in records (e.g. `OptGSettings`, `Shard`).
SIZE_EXEMPT = {"optg_jax/optg.py:optg_optax"}


def oversized_functions(root: Path) -> list[str]:
    """Functions (nested ones and methods included) longer than `MAX_LINES` lines, decorators
    and docstring included, or with more than `MAX_PARAMS` parameters (self/cls not counted)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if f"{relative}:{node.name}" in SIZE_EXEMPT:
                continue
            args = node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            names = [a.arg for a in params if a is not None and a.arg not in ("self", "cls")]
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > MAX_LINES:
                problems.append(f"{relative}:{node.lineno} {node.name}: {lines} lines")
            if len(names) > MAX_PARAMS:
                problems.append(f"{relative}:{node.lineno} {node.name}: {len(names)} parameters")
    return problems


def test_size_checker_counts_lines_and_parameters(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES - 1))
    many = ", ".join(f"a{i}" for i in range(MAX_PARAMS)) + ", *rest"
    (package / "m.py").write_text(
        f"def fits(self, {', '.join(f'a{i}' for i in range(MAX_PARAMS))}):\n{body}\n\n\n"
        f"def too_long():\n{body}\n    return 0\n\n\n"
        f"def too_many({many}):\n    return 0\n\n\n"
        "class C:\n    def method(self, *, a, b, c, d, e, f, g, h, i):\n        return a\n"
    )
    assert oversized_functions(package) == [
        f"pkg/m.py:{MAX_LINES + 3} too_long: {MAX_LINES + 1} lines",
        f"pkg/m.py:{2 * MAX_LINES + 6} too_many: {MAX_PARAMS + 1} parameters",
        f"pkg/m.py:{2 * MAX_LINES + 11} method: {MAX_PARAMS + 1} parameters",
    ]


def test_functions_are_short_and_take_few_parameters():
    """No function in optg_jax is longer than 80 lines or takes more than 8 parameters."""
    problems = oversized_functions(ROOT / "optg_jax")
    assert not problems, "\n".join(problems)
