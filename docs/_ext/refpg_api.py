"""Sphinx glue for refpg's API reference.

* ``.. refpg-module:: refpg.kl`` documents one public module: its docstring, a
  table of every name in its ``__all__`` (linked to where each is documented),
  and then, in ``__all__`` order, each name whose home is this module. A name
  re-exported from another module (``refpg.evaluate`` from
  ``refpg.evaluation``) is documented once, at home, and linked from the
  table, so the reference has no duplicate entries.
* A reference to a re-exported name (```refpg.evaluate```, or ```run``` inside
  ``refpg.algorithms``) resolves to that single entry.
* The default role links a name to its entry, renders a name that imports but
  has no entry (a parameter, a NamedTuple field, a private helper) as
  emphasis, as numpydoc projects do, and leaves a name spelled ``refpg.…``
  that does not import a broken reference, so a misspelt one fails a
  nitpicky build.
* The README, included as a page, keeps its links into docs/ and to URLs;
  a link to another file of the repository keeps only its text.
* A reference key such as ``[Schulman2015]`` in a docstring links to the
  References section of the conventions, when that section lists it, and
  ``docs/conventions.md, "Exact quantities"`` to the page and that section.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.errors import PycodeError
from sphinx.ext.autosummary import AutoLink, ImportExceptionGroup, import_by_name
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective


def _python_domain(env):
    domains = getattr(env, "domains", None)
    # Sphinx >= 8.1 names it; 7.4 (the floor) has a plain dict of domains.
    return domains.python_domain if hasattr(domains, "python_domain") else env.get_domain("py")


def _is_public(modname: str) -> bool:
    return not any(part.startswith("_") for part in modname.split("."))


def _defines(module, name: str) -> bool:
    """Whether `module`'s own source assigns `name` at top level (for data, which has no ``__module__``)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\s*(:[^=]*)?=", source, re.MULTILINE) is not None


def home(module, name: str) -> str:
    """The module under which ``module.name`` is documented."""
    obj = getattr(module, name)
    if inspect.ismodule(obj):
        return obj.__name__
    owner = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
    if owner and owner != module.__name__ and _is_public(owner):
        owner_module = importlib.import_module(owner)
        if getattr(owner_module, name, None) is obj and name in getattr(owner_module, "__all__", ()):
            return owner
    if owner is None and not _defines(module, name):
        # Data imported from a sibling: its home is the module whose source assigns it.
        for other in _public_modules_importing(module):
            if getattr(other, name, None) is obj and _defines(other, name) and name in getattr(other, "__all__", ()):
                return other.__name__
    return module.__name__


def _public_modules_importing(module):
    source = inspect.getsource(module)
    for modname in re.findall(r"^\s*from (refpg[\w.]*) import", source, re.MULTILINE):
        if _is_public(modname):
            yield importlib.import_module(modname)


def _summary(module, name: str) -> str:
    """The first paragraph of the documentation of ``module.name`` (a ``#:`` comment for data)."""
    obj = getattr(module, name)
    if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
        doc = inspect.getdoc(obj) or ""
    else:
        doc = _data_doc(importlib.import_module(home(module, name)), name)
    return doc.strip().split("\n\n")[0]


def _attr_doc(modname: str, name: str) -> str:
    try:
        return "\n".join(ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", name), []))
    except PycodeError:
        return ""


def _data_doc(module, name: str) -> str:
    """The ``#:`` comment of data ``module.name``, or of the module it was imported from."""
    doc = _attr_doc(module.__name__, name)
    if not doc.strip():
        for modname in re.findall(r"^\s*from (refpg[\w.]*) import", inspect.getsource(module), re.MULTILINE):
            other = importlib.import_module(modname)
            if getattr(other, name, None) is getattr(module, name) and _attr_doc(modname, name).strip():
                return _attr_doc(modname, name)
    return doc


def _directive_for(obj) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isroutine(obj):
        return "autofunction"
    return "autodata"


class RefpgModule(SphinxDirective):
    """``.. refpg-module:: NAME``: the module's docstring, a table of its ``__all__``, its own names."""

    required_arguments = 1
    has_content = False

    def run(self):
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        public = list(getattr(module, "__all__", []))
        lines = [f".. automodule:: {modname}", ""]
        if public:
            lines += [".. rubric:: Public names", "", ".. list-table::", "   :widths: 30 70", ""]
            for name in public:
                obj = getattr(module, name)
                target = obj.__name__ if inspect.ismodule(obj) else f"{home(module, name)}.{name}"
                summary = _summary(module, name).splitlines() or [""]
                lines += [f"   * - :py:obj:`{name} <{target}>`", f"     - {summary[0]}"]
                lines += [f"       {line}" for line in summary[1:]]
            lines.append("")
        for name in public:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or home(module, name) != modname:
                continue
            directive = _directive_for(obj)
            if directive == "autodata" and not _attr_doc(modname, name).strip():
                # No comment here (autodoc would show the docstring of the value's type, tuple's say):
                # the comment where the value is defined, if it was imported, else nothing.
                lines += [f".. py:data:: {name}", f"   :module: {modname}"]
                lines += [f"   :value: {obj!r}"] if len(repr(obj)) <= 100 else []
                lines += [""] + [f"   {line}" for line in _data_doc(module, name).splitlines()] + [""]
                continue
            lines += [f".. {directive}:: {modname}.{name}", ""]
            if inspect.isclass(obj):
                lines[-1:-1] = ["   :members:", "   :show-inheritance:"]
            elif directive == "autodata" and len(repr(obj)) > 100:
                lines[-1:-1] = ["   :no-value:"]  # a table of examples or modules, not a value to read
        self.env.note_dependency(inspect.getsourcefile(module))
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<refpg-module {self.arguments[0]}>"), 0, node)
        return node.children


class RefpgAutoLink(AutoLink):
    """`AutoLink`, except that a name starting ``refpg.`` stays a reference even when it does not import."""

    def run(self):
        if self.text.lstrip("~!").startswith("refpg."):
            objects, errors = _python_domain(self.env).role("obj")(
                "obj", self.rawtext, self.text, self.lineno, self.inliner, self.options, self.content)
        else:
            objects, errors = super().run()
        for node in objects:
            if isinstance(node, addnodes.pending_xref):
                node["refpg_autolink"] = True  # see resolve_reexport
        return objects, errors


def _documented_objects(app):
    """id(python object) -> documented full name, for every object the Python domain holds."""
    cache = getattr(app.env, "_refpg_documented", None)
    domain = _python_domain(app.env)
    if cache is None or cache[0] != len(domain.objects):
        by_id = {}
        for fullname, entry in domain.objects.items():
            if entry.objtype == "module" or not fullname.startswith("refpg"):
                continue
            try:
                _, obj, _, _ = import_by_name(fullname)
            except ImportExceptionGroup:
                continue
            if not isinstance(obj, (int, float, complex, str, bytes, type(None))):  # ids of values are shared
                by_id.setdefault(id(obj), fullname)
        cache = (len(domain.objects), by_id)
        app.env._refpg_documented = cache
    return cache[1]


def resolve_reexport(app, env, node, contnode):
    """``missing-reference``: resolve a name re-exported elsewhere to the entry at its home."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, klass = node.get("py:module"), node.get("py:class")
    prefixes = [p for p in (f"{module}.{klass}" if module and klass else None, module)
                if p and not (target == p or target.startswith(f"{p}."))] + [None]  # as AutoLink does
    try:
        _, obj, _, _ = import_by_name(target, prefixes)
    except ImportExceptionGroup:
        return None
    resolved = _resolve_to_home(app, env, node, contnode, target, obj)
    if resolved is None and node.get("refpg_autolink"):
        # `name` imports but has no entry of its own (a NamedTuple field, a private helper): plain emphasis,
        # as for a name that does not import.
        return nodes.emphasis(contnode.astext(), contnode.astext())
    return resolved


def _resolve_to_home(app, env, node, contnode, target, obj):
    domain = _python_domain(env)
    if inspect.ismodule(obj):
        canonical = obj.__name__ if obj.__name__ in domain.objects else None
    else:
        canonical = _documented_objects(app).get(id(obj))
    if canonical is None or canonical == target:
        return None
    return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", canonical, node, contnode)


MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def readme_links(app, relative_path, parent_docname, content):
    """``include-read``: in the README, a link to a repository file outside docs/ keeps only its text.

    Such a link (``[golden/README.md](golden/README.md)``) works on the repository's page but has no
    target in the built docs, where it would be a broken reference; links into docs/, to anchors and
    to URLs are kept.
    """
    srcdir = Path(app.srcdir)
    if (srcdir / relative_path).resolve() != (srcdir.parent / "README.md").resolve():
        return

    def unlink(match):
        text, target = match.groups()
        if target.startswith(("docs/", "#")) or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            return match.group(0)
        return text

    content[0] = MARKDOWN_LINK.sub(unlink, content[0])


CITATION = re.compile(r"\[([A-Z][A-Za-z]+\d{4}[a-z]?)\]")
# A reference key, or the conventions named by path, perhaps with a quoted section title after it
# (docutils has made the quotes typographic by the time the doctree is resolved).
CONTRACT = re.compile(r"""(?x)
    \[(?P<key>[A-Z][A-Za-z]+\d{4}[a-z]?)\]
  | (?P<doc>docs/conventions\.md) (?: (?P<sep>,?\s*\(?) (?P<title>["\u201c][^"\u201d]+["\u201d]) )?
""")


def _contract_keys(app) -> set[str]:
    """The reference keys that the References section of conventions.md lists."""
    path = Path(app.srcdir) / "conventions.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    section = re.split(r"^## References\s*$", text, maxsplit=1, flags=re.MULTILINE)
    return set(CITATION.findall(section[1])) if len(section) == 2 else set()


def _contract_sections(app) -> dict[str, str]:
    """Lower-cased section title -> its anchor, for every section of the conventions."""
    doctree = app.env.get_doctree("conventions")
    return {section[0].astext().strip().lower(): section["ids"][0]
            for section in doctree.findall(nodes.section) if section["ids"]}


def link_contract(app, doctree, docname):
    """``doctree-resolved``: in the API pages, link to the conventions.

    Each ``[Key]`` that the conventions' References list links to that list; each mention of
    ``docs/conventions.md`` links to the page, and a quoted section title right after it
    (``docs/conventions.md, "Exact quantities"``) to that section.
    """
    if "conventions" not in app.env.all_docs or not docname.startswith("api/") or app.builder.format != "html":
        return
    keys, sections = _contract_keys(app), _contract_sections(app)
    page = app.builder.get_relative_uri(docname, "conventions")
    skip = (nodes.literal, nodes.literal_block, nodes.math, nodes.math_block, nodes.reference, nodes.raw)

    def link(text, anchor="", title=None):
        return nodes.reference(text, text, refuri=page + anchor, internal=True, reftitle=title or "conventions")

    for text in list(doctree.findall(nodes.Text)):
        if isinstance(text.parent, skip) or not CONTRACT.search(text):
            continue
        pieces, last = [], 0
        for match in CONTRACT.finditer(text):
            if match["key"] and match["key"] not in keys:
                continue
            pieces.append(nodes.Text(text[last:match.start()]))
            if match["key"]:
                pieces.append(link(match[0], "#references", f"{match['key']} in the conventions' references"))
            else:
                pieces.append(link(match["doc"]))
                if match["title"]:
                    anchor = sections.get(match["title"][1:-1].strip().lower())
                    pieces.append(nodes.Text(match["sep"]))
                    pieces.append(link(match["title"], f"#{anchor}") if anchor else nodes.Text(match["title"]))
            last = match.end()
        if pieces:
            pieces.append(nodes.Text(text[last:]))
            text.parent.replace(text, pieces)


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """A NamedTuple's fields are documented in its Attributes section, not as 'Alias for field number N'."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.add_directive("refpg-module", RefpgModule)
    app.add_role("refpg-autolink", RefpgAutoLink())
    app.connect("missing-reference", resolve_reexport)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
    app.connect("doctree-resolved", link_contract)
    app.connect("include-read", readme_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
