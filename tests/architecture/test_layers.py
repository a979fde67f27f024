"""The layering of docs/architecture.md holds: each layer imports only those below it, and no cycles.

Imports inside functions count: they run too (those under ``if TYPE_CHECKING:`` never run, and do not).
The layers are the import contract in pyproject.toml
(``[tool.importlinter]``); ``lint-imports`` checks it in CI as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

from conftest import REPO, require


def test_the_import_contract_is_kept() -> None:
    require("importlinter")
    command = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(command)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    found: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_in_an_import_cycle() -> None:
    grimp = require("grimp")
    # Imports under `if TYPE_CHECKING:` never run; every other one counts, inside functions too.
    graph = grimp.build_graph(
        "neuropod", include_external_packages=False, exclude_type_checking_imports=True, cache_dir=None
    )
    modules = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    assert _cycles(modules) == []
