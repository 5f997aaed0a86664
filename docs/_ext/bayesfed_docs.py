"""Sphinx helpers of bayesfed's documentation: tables generated from the code, so they cannot drift.

Directives (usable from MyST Markdown as ```` ```{name} ````):

``bayesfed-roles``
    The pupil-table roles, from :data:`bayesfed.inputs.schema.ROLES`, with the column each has
    in the shipped synthetic study (the mapping of ``models/m2_federation.toml``, checked
    against the Parquet file's columns).
``bayesfed-spec-keys CLASS``
    The keys of one section of a model specification (a pydantic model of
    :mod:`bayesfed.inputs.spec`): type and default come from the class; the content gives one
    ``key: meaning`` line per key (with ``:from-docstring:``, the meanings come from the
    class docstring's numpydoc ``Attributes``), and a key documented but absent from the
    class, or present but undocumented, is a build warning (so a strict build fails).
``bayesfed-spec-example``
    A TOML block shown as such, and validated with :func:`bayesfed.inputs.spec.spec_from_dict` at
    build time: an example that the spec schema rejects is a build warning.
``bayesfed-cli``
    The reference of the ``bayesfed`` command, from the typer app itself: usage, arguments and
    options (with their defaults) of every command. sphinx-click cannot do this: typer (since
    0.26) vendors its own copy of click, whose command objects are not ``click.Command``.

The ``reports/index`` page gets a toctree of ``reports/*/index`` appended only when such pages
exist, so an empty reports folder builds without the "glob pattern didn't match" warning.
"""

from __future__ import annotations

import inspect
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import typer
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SPEC = ROOT / "models" / "m2_federation.toml"
SHIPPED_DATA = ROOT / "data" / "synthetic_study.parquet"

logger = logging.getLogger(__name__)


def _cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


class _MarkdownDirective(SphinxDirective):
    """Emits generated Markdown, parsed by MyST as if it were written in the page."""

    def _parse(self, lines: list[str], titles: bool = False) -> list[nodes.Node]:
        """Parse generated Markdown; with ``titles``, its headings become sections."""
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]),
                                self.content_offset, container, match_titles=titles)
        return list(container.children)


class RolesTable(_MarkdownDirective):
    """The roles of :data:`bayesfed.inputs.schema.ROLES` as a table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import pyarrow.parquet as pq

        from bayesfed.inputs.schema import ROLES
        from bayesfed.inputs.spec import load_spec

        spec = load_spec(SHIPPED_SPEC)
        shipped = set(pq.read_schema(SHIPPED_DATA).names)
        rows = []
        for role in ROLES.values():
            column = spec.column(role.name)
            kind = f"`{role.kind}`"
            if role.levels:
                kind += ": " + ", ".join(f"`{v}`" for v in role.levels)
            rows.append([f"`{role.name}`", f"`{column}`" if column in shipped else "(none)",
                         kind, role.level, role.description])
        for path in (SHIPPED_SPEC, ROOT / "bayesfed" / "schema.py"):
            self.env.note_dependency(str(path))  # rebuild the page when they change
        return self._parse(_md_table(
            ["Role", "Column in the synthetic study", "Type", "Level", "Meaning and units"], rows))


def _type_name(ann: Any) -> str:
    """A pydantic field's annotation in TOML terms."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " or ".join(f'`"{a}"`' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        return f"array of {_type_name(args[0])}"
    if origin is dict:
        return f"table of {_type_name(args[1])}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(ann, str(ann))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, BaseModel):
        return "(defaults)"
    return str(value)


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or value is PydanticUndefined:
        return "(none)"
    return f"`{_toml_value(value)}`"


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> description`` from the numpydoc ``Attributes`` section of a class docstring."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines[:-1])
                     if line.strip() == "Attributes" and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    body = lines[start + 2:]
    for i, line in enumerate(body):
        if line and not line[0].isspace():
            if i + 1 < len(body) and body[i + 1].strip() and set(body[i + 1].strip()) == {"-"}:
                break  # the next section's title
            names = [n.strip() for n in line.split(" : ", 1)[0].split(",")]
            out.update({n: "" for n in names})
        elif line.strip():
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


class SpecKeys(_MarkdownDirective):
    """The keys of one spec section: ``key: meaning`` lines, checked against the class.

    With the ``from-docstring`` flag, meanings come from the class docstring's ``Attributes``
    section (numpydoc), and lines of the content add to or replace them.
    """

    required_arguments = 1
    has_content = True
    option_spec = {"exclude": directives.unchanged, "from-docstring": directives.flag}

    def run(self) -> list[nodes.Node]:
        import importlib

        module, _, name = self.arguments[0].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        self.env.note_dependency(inspect.getfile(cls))
        excluded = set((self.options.get("exclude") or "").split())
        fields = {k: f for k, f in cls.model_fields.items() if k not in excluded}
        meaning: dict[str, str] = {}
        if "from-docstring" in self.options:
            meaning.update({k: v.replace("``", "`") for k, v in _docstring_attributes(cls).items()
                            if v and k not in excluded})
        for line in self.content:
            if not line.strip():
                continue
            if line[:1].isspace() and meaning:  # continuation of the previous key
                last = next(reversed(meaning))
                meaning[last] += " " + line.strip()
                continue
            key, sep, text = line.partition(":")
            if not sep:
                raise self.error(f"expected 'key: meaning', got {line!r}")
            meaning[key.strip()] = text.strip()
        where = self.get_location()
        for key in sorted(set(fields) - set(meaning)):
            logger.warning("%s.%s is not documented (add a '%s: ...' line)", name, key, key,
                           location=where)
        for key in sorted(set(meaning) - set(fields)):
            logger.warning("%s has no key %r (documented here; remove or rename it)", name, key,
                           location=where)
        rows = [[f"`{k}`", _type_name(f.annotation), _default(f), meaning.get(k, "")]
                for k, f in fields.items()]
        return self._parse(_md_table(["Key", "Type", "Default", "Meaning"], rows))


class SpecExample(SphinxDirective):
    """A TOML spec shown as a code block and validated against the spec schema."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        from bayesfed.errors import SpecError
        from bayesfed.inputs.spec import spec_from_dict

        text = "\n".join(self.content)
        self.env.note_dependency(str(ROOT / "bayesfed" / "spec.py"))
        try:
            spec_from_dict(tomllib.loads(text), source="this example")
        except (tomllib.TOMLDecodeError, SpecError) as exc:
            logger.warning("invalid spec example: %s", exc, location=self.get_location())
        block = nodes.literal_block(text, text, language="toml")
        self.set_source_info(block)
        return [block]


def _escape(text: str) -> str:
    """Help text as Markdown: ``<`` would start inline HTML, ``|`` end a table cell."""
    return _cell(text).replace("<", "\\<")


class CliReference(_MarkdownDirective):
    """Usage, arguments and options of ``bayesfed`` and each of its commands."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        import bayesfed.cli

        self.env.note_dependency(inspect.getfile(bayesfed.cli))
        group = typer.main.get_command(bayesfed.cli.app)
        ctx = typer.Context(group, info_name="bayesfed")
        names = group.list_commands(ctx)
        lines = [_escape(group.help or ""), "", "```console", "$ bayesfed [OPTIONS] COMMAND",
                 "```", ""]
        lines += _md_table(["Command", "What it does"],
                           [[f"[`{n}`](#bayesfed-{n})",
                             _escape(group.get_command(ctx, n).get_short_help_str(limit=200))]
                            for n in names])
        for name in names:
            command = group.get_command(ctx, name)
            sub = typer.Context(command, info_name=name, parent=ctx)
            args, opts, usage = [], [], ["[OPTIONS]"]
            for param in command.get_params(sub):
                record = param.get_help_record(sub)
                if record is None or "--help" in param.opts:
                    continue
                flag, _, kind = record[0].partition(" <")
                # defaults that are paths into this checkout are shown relative to it
                help_text = record[1].replace(f"{ROOT}/", "")
                row = [f"`{flag}`", f"`{kind.rstrip('>')}`" if kind else "",
                       _escape(help_text)]
                if param.param_type_name == "argument":
                    metavar = (param.name or "").upper() + ("..." if param.nargs == -1 else "")
                    usage.append(metavar)
                    args.append([f"`{metavar}`", *row[1:]])
                else:
                    opts.append(row)
            lines += ["", f"## `bayesfed {name}`", "", _escape(command.help or ""), "",
                      "```console", f"$ bayesfed {name} {' '.join(usage)}", "```", ""]
            if args:
                lines += [*_md_table(["Argument", "Type", "Meaning"], args), ""]
            if opts:
                lines += _md_table(["Option", "Type", "Meaning"], opts)
        return self._parse(lines, titles=True)


def _append_reports_toctree(app: Sphinx, docname: str, source: list[str]) -> None:
    """Append a toctree of ``reports/*/index`` to ``reports/index`` (or say there is none)."""
    if docname != "reports/index":
        return
    if any(Path(app.srcdir, "reports").glob("*/index.md")):
        source[0] += "\n\n```{toctree}\n:glob:\n:maxdepth: 1\n\n*/index\n```\n"
    else:
        source[0] += "\n\nNo report has been written yet.\n"


def _reread_reports_index(app: Sphinx, env: Any, added: set[str], changed: set[str],
                          removed: set[str]) -> list[str]:
    """Re-read ``reports/index`` on every build: its toctree depends on the folder's content."""
    return ["reports/index"] if "reports/index" in env.found_docs else []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("bayesfed-roles", RolesTable)
    app.add_directive("bayesfed-spec-keys", SpecKeys)
    app.add_directive("bayesfed-spec-example", SpecExample)
    app.add_directive("bayesfed-cli", CliReference)
    app.connect("source-read", _append_reports_toctree)
    app.connect("env-get-outdated", _reread_reports_index)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
