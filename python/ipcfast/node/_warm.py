"""What a node imports before its first command (its *preloads*), and the
environment variables those imports read.

A preload is only ever an import of modules: ``pkg`` (that module),
``pkg.*`` (the package and all its submodules), ``@group`` (the modules of
every entry point in that group: ``@flake8.extension`` for flake8's plugins).
``@pytest11``, pytest's plugins, is imported the way pytest itself imports
them: through pytest's assertion-rewriting import hook, with the plugin
distributions' modules (e.g. ``hypothesis`` for its plugin
``_hypothesis_pytestplugin``) marked for rewriting, so the code is the same
as in a cold run and pytest does not warn that they were imported before
it could rewrite them. The hook is gone again before the first command.

Some modules read the environment while they are imported (black its cache
directory, hypothesis whether it runs on CI, sphinx the terminal width):
their state then holds the node's values. :func:`recording_environment_reads`
notes every variable read during the preloads, and the node runs a command
only if its environment has the same values for all of them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

__all__ = ["import_preloads", "recording_environment_reads"]

logger = logging.getLogger("ipcfast.node")


def import_preloads(preload: Sequence[str]) -> None:
    """Imports every preload (see the module's text); a module that cannot
    be imported is logged and skipped, except a plain ``pkg``, whose
    ImportError reaches the caller."""
    for module in preload:
        if module == "@pytest11":
            _import_pytest_plugins()
        elif module.startswith("@"):
            _import_entry_points(module[1:])
        elif module.endswith(".*"):
            _import_tree(module[:-2])
        else:
            importlib.import_module(module)
    if preload:
        _warm_metadata()


@contextlib.contextmanager
def recording_environment_reads(into: Dict[str, Optional[str]]) -> Iterator[None]:
    """Records in ``into`` each variable read from ``os.environ`` (or
    ``os.getenv``) inside the block, with the value it had then (None: unset)."""

    class _Recording(type(os.environ)):  # type: ignore[misc]
        def __getitem__(self, key: str) -> str:
            try:
                value: str = super().__getitem__(key)
            except KeyError:
                into.setdefault(key, None)
                raise
            into.setdefault(key, value)
            return value

    plain = type(os.environ)
    os.environ.__class__ = _Recording
    try:
        yield
    finally:
        os.environ.__class__ = plain


def _import_tree(package: str) -> None:
    """Imports a package and every submodule it has (``--preload pkg.*``);
    a submodule that cannot be imported (an optional dependency missing) is
    logged and skipped."""
    module = importlib.import_module(package)
    path = getattr(module, "__path__", None)
    if path is None:
        return
    for info in pkgutil.walk_packages(path, package + ".", onerror=lambda name: None):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        _try_import(info.name, package)


def _try_import(name: str, why: str) -> None:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # an import may even call sys.exit()
        logger.info("preload %s: skipped %s: %r", why, name, exc)


def _entry_points(group: str) -> List[Any]:
    import importlib.metadata as metadata

    found = metadata.entry_points()
    # Python 3.9's entry_points() is a dict of groups; 3.10+ has select().
    return list(found.select(group=group) if hasattr(found, "select") else found.get(group, ()))


def _import_entry_points(group: str) -> None:
    """Imports the module of every entry point in ``group`` (``--preload
    @flake8.extension``: flake8's plugins, which flake8 itself loads only
    while a command runs); one that cannot be imported is logged and skipped."""
    for entry in _entry_points(group):
        _try_import(entry.module, "@" + group)


def _rewritable_names(dist: Any) -> Set[str]:
    """The top-level modules and packages of a distribution, which pytest
    marks for assertion rewriting when the distribution has a plugin."""
    names = set()
    for file in dist.files or ():
        parts = str(file).split("/")
        if len(parts) == 1 and parts[0].endswith(".py") and parts[0] != "setup.py":
            names.add(parts[0][:-3])
        elif len(parts) == 2 and parts[1] == "__init__.py" and parts[0].isidentifier():
            names.add(parts[0])
    return names


class _RewriteConfig:
    """The little of a pytest Config that its rewriting hook reads, holding
    pytest's defaults (no project's ini file is read in the node)."""

    def __init__(self, state_key: Any) -> None:
        self.stash = {state_key: self}

    def getini(self, name: str) -> Any:
        if name == "enable_assertion_pass_hook":
            return False
        raise ValueError(name)  # python_files: the hook falls back to pytest's default

    def trace(self, *message: Any) -> None:
        pass


def _import_pytest_plugins() -> None:
    """``--preload @pytest11``: every pytest plugin module and the modules
    of its distribution, through pytest's own rewriting hook."""
    import importlib.metadata as metadata

    try:
        from _pytest.assertion.rewrite import AssertionRewritingHook, assertstate_key
    except ImportError:  # no pytest, or one laid out differently: plain imports
        _import_entry_points("pytest11")
        return
    plugins: List[str] = []
    names: Set[str] = set()
    for dist in metadata.distributions():
        entries = [ep for ep in dist.entry_points if ep.group == "pytest11"]
        if entries:
            plugins += [ep.module for ep in entries]
            names |= _rewritable_names(dist)
    try:
        hook = AssertionRewritingHook(_RewriteConfig(assertstate_key))  # type: ignore[arg-type]
        hook.mark_rewrite(*names)
    except Exception as exc:
        logger.info("preload @pytest11: pytest's rewriting hook is not usable (%r): plain imports", exc)
        _import_entry_points("pytest11")
        return
    sys.meta_path.insert(0, hook)
    try:
        for name in [*plugins, *sorted(names)]:
            _try_import(name, "@pytest11")
    finally:
        sys.meta_path.remove(hook)


def _warm_metadata() -> None:
    """Reads the installed distributions' metadata once: tools that look up
    their plugins by entry point (pytest, flake8) then find importlib.metadata's
    directory caches filled (they are keyed by the directories' mtimes, so an
    install between commands is still seen) and its parser imported."""
    try:
        import email.parser  # noqa: F401  what Distribution.metadata parses with

        import importlib.metadata as metadata

        metadata.entry_points()
    except Exception as exc:
        logger.info("reading entry points failed: %r", exc)
