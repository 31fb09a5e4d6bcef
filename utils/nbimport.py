"""Import the lesson code of a notebook without running its heavy cells (cells tagged `export`)."""

from __future__ import annotations

import types
from pathlib import Path

import nbformat


def load_exports(path: str | Path, name: str | None = None) -> types.SimpleNamespace:
    """Execute, in order, the code cells tagged `export` of a notebook; return their globals as a namespace.

    Tests use this to check a notebook's from-scratch implementations against the reference libraries.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and "export" in c.metadata.get("tags", [])]
    if not cells:
        raise ValueError(f"{path.name} has no cells tagged 'export'")
    ns: dict = {"__name__": name or f"notebook_{path.stem}"}
    for src in cells:
        exec(compile(src, f"{path.name}[export]", "exec"), ns)
    return types.SimpleNamespace(**{k: v for k, v in ns.items() if not k.startswith("__")})


def load_definitions(path: str | Path, namespace: dict | None = None) -> dict:
    """Execute only the top-level `def`/`class` statements of a notebook's code cells (no heavy cells run).

    Lab tests use this to take the worked solution's functions from `solutions/`; `namespace` supplies the
    modules those functions use (e.g. {"torch": torch}). Returns the namespace with the definitions added.
    """
    import ast

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    ns = dict(namespace or {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # IPython magics: such cells never hold the definitions
            continue
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        if defs:
            exec(compile(ast.Module(body=defs, type_ignores=[]), f"{path.name}[defs]", "exec"), ns)
    return ns
