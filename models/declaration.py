r"""Declarations: a latent-variable network written in TOML, parsed and checked into a :class:`Declaration`.

A declaration describes p(x, z) = prod_g p(z_g | parents) prod_o p(x_o | parents), one point at a time
(every group is replicated over the data plate). A user writes::

    name = "my_mixture"                  # the model's name in the registry (default: the file's stem)
    summary = "..."                      # one line for ``vizoo list`` (optional)
    plate = "points"                     # the data plate's name (optional)

    [latent.z]                           # a latent group
    family = "categorical"               # bernoulli | categorical | gaussian
    size = 3                             # bits, categories, or dimensions
    prior = { probs = [0.5, 0.3, 0.2] }  # bernoulli/categorical: probs (a number or a list); gaussian: loc, scale
    learn_prior = true                   # learn the prior's parameters (default: discrete true, gaussian false)

    [observed.x]                         # an observed group: its columns of the data, in declaration order
    family = "gaussian"                  # bernoulli (0/1) | categorical (counts of `size` outcomes) | gaussian
    size = 2
    scale = "linked"                     # gaussian only: "shared" (one per column), "linked" (log-linear in the
                                         # parents, a scale per parent configuration), or a fixed number

    [link.x]                             # how the group's distribution depends on its parents
    from = ["z"]                         # parent latent groups
    type = "linear"                      # linear | noisy_or | mlp
    function = "identity"                # the inverse link: identity (gaussian), sigmoid (bernoulli), softmax (categorical)
    hidden = [16]                        # mlp only: hidden sizes
    activation = "tanh"                  # mlp only: tanh | relu
    constraint = "nonnegative"           # none | nonnegative: on the link's weight matrices

    [data]                               # optional: which data set feeds which observed group
    x = "faithful"

Links may also go into latent groups (a latent hierarchy); they must form no cycle. A latent group with
a link has no ``prior`` (the link gives its distribution). Every observed group needs a link.

tomllib gives no line numbers, so :class:`_Lines` scans the text for table headers and keys, and every
error names the file, the line and the field (:class:`DeclarationError`).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

FAMILIES = ("bernoulli", "categorical", "gaussian")
LINKS = ("linear", "noisy_or", "mlp")
FUNCTIONS = {"bernoulli": "sigmoid", "categorical": "softmax", "gaussian": "identity"}  # the inverse link each family takes
ACTIVATIONS = ("tanh", "relu")
CONSTRAINTS = ("none", "nonnegative")
SCALES = ("shared", "linked")
DATA_SOURCES = {  # name -> the family its columns are (see models.declared.SOURCES for the loaders)
    "faithful": "gaussian", "iris": "gaussian", "std": "bernoulli", "digits": "bernoulli",
    "news": "categorical", "reuters": "categorical",
}
MAX_SIZE = 100_000

_TOP_KEYS = ("name", "summary", "plate", "latent", "observed", "link", "data")
_GROUP_KEYS = {"latent": ("family", "size", "prior", "learn_prior", "scale"), "observed": ("family", "size", "scale")}
_LINK_KEYS = ("from", "type", "function", "hidden", "activation", "constraint")
_PRIOR_KEYS = {"bernoulli": ("probs",), "categorical": ("probs",), "gaussian": ("loc", "scale")}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DeclarationError(ConfigError):
    """A malformed declaration; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Group:
    """One group of variables, replicated over the data plate.

    role: "latent" or "observed". family: bernoulli | categorical | gaussian. size: bits (bernoulli),
    outcomes (categorical), dimensions (gaussian).
    prior: for a latent group with no link: bernoulli/categorical ``probs`` (size,), gaussian ``loc`` and
        ``scale`` (size,); empty otherwise.
    learn_prior: whether those prior parameters are learned.
    scale: gaussian groups with a link: "shared", "linked" or a fixed float.
    """

    name: str
    role: str
    family: str
    size: int
    prior: dict[str, tuple[float, ...]] = field(default_factory=dict)
    learn_prior: bool = True
    scale: str | float = "shared"

    @property
    def width(self) -> int:
        """Width of the group's encoding as a parent (bits, one-hot, values) and of its data columns."""
        return self.size


@dataclass(frozen=True)
class Link:
    """child <- parents. kind: linear | noisy_or | mlp; hidden, activation: the mlp's; constraint: on weights."""

    child: str
    parents: tuple[str, ...]
    kind: str
    hidden: tuple[int, ...] = ()
    activation: str = "tanh"
    constraint: str = "none"


@dataclass(frozen=True)
class Declaration:
    """A parsed, checked declaration. ``latents`` are in topological order (parents first)."""

    name: str
    summary: str
    plate: str
    latents: tuple[Group, ...]
    observed: tuple[Group, ...]
    links: dict[str, Link]
    data: dict[str, str]
    source: str = "<declaration>"
    lines: dict[tuple[str, ...], int] = field(default_factory=dict, compare=False, repr=False)

    def where(self, *path: str) -> str:
        """``source, line N, a.b.c``: where a field of this declaration was written, for error messages."""
        line = _Lines.nearest(self.lines, path)
        return f"{self.source}, line {line}, {'.'.join(path)}" if line is not None else f"{self.source}, {'.'.join(path)}"

    @property
    def groups(self) -> dict[str, Group]:
        return {g.name: g for g in (*self.latents, *self.observed)}

    @property
    def discrete(self) -> bool:
        """Every latent group is discrete (its posterior can be enumerated)."""
        return all(g.family != "gaussian" for g in self.latents)

    @property
    def num_configurations(self) -> int:
        """Joint configurations of all latent groups per point (2^K for bernoulli, K for categorical)."""
        return math.prod(2**g.size if g.family == "bernoulli" else g.size for g in self.latents)

    @property
    def data_width(self) -> int:
        return sum(g.size for g in self.observed)

    def columns(self) -> dict[str, slice]:
        """Each observed group's columns of the data matrix (declaration order)."""
        out, start = {}, 0
        for g in self.observed:
            out[g.name] = slice(start, start + g.size)
            start += g.size
        return out

    def in_width(self, link: Link) -> int:
        """Width of the concatenated parent encodings feeding ``link``."""
        return sum(self.groups[p].width for p in link.parents)


class _Lines:
    """Where each table and key of a TOML text is, by scanning its lines (tomllib has no positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")

    def __init__(self, text: str):
        self.where: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                table = self._split(header.group(1))
                self.where.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                path = table + self._split(key.group(1))
                for i in range(len(table) + 1, len(path) + 1):  # dotted keys define their prefixes too
                    self.where.setdefault(path[:i], number)
                for inner in re.findall(r"([A-Za-z0-9_]+)\s*=", line[key.end():]):  # inline tables: { probs = ... }
                    self.where.setdefault(path + (inner,), number)

    @staticmethod
    def _split(dotted: str) -> tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in dotted.split("."))

    def line(self, path: tuple[str, ...]) -> int | None:
        """The line of ``path``, or of its nearest enclosing table or key that has one."""
        return self.nearest(self.where, path)

    @staticmethod
    def nearest(where: dict[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
        for i in range(len(path), 0, -1):
            if path[:i] in where:
                return where[path[:i]]
        return None


class _Checker:
    def __init__(self, source: str, text: str):
        self.source = source
        self.lines = _Lines(text)

    def fail(self, path: tuple[str, ...], message: str) -> DeclarationError:
        line = self.lines.line(path)
        where = f"{self.source}, line {line}" if line is not None else self.source
        return DeclarationError(f"{where}, {'.'.join(path)}: {message}")

    def table(self, raw: Any, path: tuple[str, ...], known: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(path, f"must be a table, got {raw!r}")
        for key in raw:
            if key not in known:
                raise self.fail(path + (key,), f"unknown key {key!r}; known keys: {', '.join(known)}")
        return raw

    def string(self, raw: Any, path: tuple[str, ...], choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(raw, str):
            raise self.fail(path, f"must be a string, got {raw!r}")
        value = raw.lower() if choices is not None else raw
        if choices is not None and value not in choices:
            raise self.fail(path, f"unknown value {raw!r}; known: {', '.join(choices)}")
        return value

    def integer(self, raw: Any, path: tuple[str, ...], low: int = 1) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.fail(path, f"must be an integer, got {raw!r}")
        if not low <= raw <= MAX_SIZE:
            raise self.fail(path, f"must be between {low} and {MAX_SIZE:,}, got {raw}")
        return raw

    def numbers(self, raw: Any, path: tuple[str, ...], size: int) -> tuple[float, ...]:
        """A number (repeated ``size`` times) or a list of exactly ``size`` numbers."""
        values = raw if isinstance(raw, list) else [raw] * size
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise self.fail(path, f"must be a finite number or a list of them, got {raw!r}")
        if len(values) != size:
            raise self.fail(path, f"size mismatch: {len(values)} values for a group of size {size}")
        return tuple(float(v) for v in values)


def parse(text: str, source: str = "<declaration>", default_name: str = "declared") -> Declaration:
    """Parse and check a declaration's TOML text; every error names ``source``, the line and the field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DeclarationError(f"{source}: not valid TOML: {err}") from None
    c = _Checker(source, text)
    c.table(raw, (), _TOP_KEYS)
    name = c.string(raw.get("name", default_name), ("name",))
    if not _NAME.match(name):
        raise c.fail(("name",), f"must be a plain identifier (letters, digits, _), got {name!r}")
    summary = c.string(raw.get("summary", ""), ("summary",))
    plate = c.string(raw.get("plate", "points"), ("plate",))
    if not _NAME.match(plate):
        raise c.fail(("plate",), f"must be a plain identifier, got {plate!r}")

    groups: dict[str, Group] = {}
    for role in ("latent", "observed"):
        tables = raw.get(role, {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise c.fail((role,), f"declare {role} groups as tables, e.g. [{role}.{'z' if role == 'latent' else 'x'}]")
        if not tables:
            raise c.fail((role,), f"declare at least one {role} group, e.g. [{role}.{'z' if role == 'latent' else 'x'}]")
        for gname, body in tables.items():
            if not _NAME.match(gname):
                raise c.fail((role, gname), f"group names must be plain identifiers, got {gname!r}")
            if gname in groups:
                raise c.fail((role, gname), f"the name {gname!r} is used twice")
            if gname == plate:
                raise c.fail((role, gname), f"the group name {gname!r} is also the plate's name")
            groups[gname] = _group(c, role, gname, body, raw)

    links_raw = raw.get("link", {})
    if not isinstance(links_raw, dict) or not all(isinstance(t, dict) for t in links_raw.values()):
        raise c.fail(("link",), "declare links as tables named after their child group, e.g. [link.x]")
    links: dict[str, Link] = {}
    for child, body in links_raw.items():
        if child not in groups:
            raise c.fail(("link", child), f"no group named {child!r}; groups: {', '.join(groups)}")
        links[child] = _link(c, child, body, groups)
    for g in groups.values():
        path = (g.role, g.name)
        if g.role == "observed" and g.name not in links:
            raise c.fail(path, f"observed group {g.name!r} has no link: add [link.{g.name}] with from = [its latent parents]")
        if g.role == "latent" and g.name in links and "prior" in raw["latent"][g.name]:
            raise c.fail(path + ("prior",), f"latent group {g.name!r} has a link, which gives its distribution; remove its prior")
        if g.role == "latent" and g.name in links and "learn_prior" in raw["latent"][g.name]:
            raise c.fail(path + ("learn_prior",), f"latent group {g.name!r} has a link, so no prior to learn; remove learn_prior")
        if g.family == "gaussian" and g.name not in links and "scale" in _raw_group(raw, g):
            raise c.fail(path + ("scale",), "scale applies to a gaussian group with a link; a root's scale is prior.scale")
    order = _topological(c, groups, links)

    data_raw = c.table(raw.get("data", {}), ("data",), tuple(g.name for g in groups.values() if g.role == "observed"))
    data: dict[str, str] = {}
    for gname, src in data_raw.items():
        src = c.string(src, ("data", gname), tuple(DATA_SOURCES))
        if DATA_SOURCES[src] != groups[gname].family:
            raise c.fail(("data", gname), f"data set {src!r} holds {DATA_SOURCES[src]} columns, but observed group "
                                          f"{gname!r} is {groups[gname].family}")
        data[gname] = src
    if data and set(data) != {g.name for g in groups.values() if g.role == "observed"}:
        missing = sorted({g.name for g in groups.values() if g.role == "observed"} - set(data))
        raise c.fail(("data",), f"map every observed group or none; missing: {', '.join(missing)}")

    return Declaration(
        name=name, summary=summary, plate=plate,
        latents=tuple(groups[n] for n in order),
        observed=tuple(g for g in groups.values() if g.role == "observed"),
        links=links, data=data, source=source, lines=c.lines.where,
    )


def _raw_group(raw: dict, g: Group) -> dict:
    return raw[g.role][g.name]


def _group(c: _Checker, role: str, name: str, body: Any, raw: dict) -> Group:
    path = (role, name)
    body = c.table(body, path, _GROUP_KEYS[role])
    if "family" not in body:
        raise c.fail(path, f"missing key 'family' ({', '.join(FAMILIES)})")
    if "size" not in body:
        raise c.fail(path, "missing key 'size'")
    family = c.string(body["family"], path + ("family",), FAMILIES)
    size = c.integer(body["size"], path + ("size",), low=2 if family == "categorical" else 1)
    has_link = name in raw.get("link", {}) if isinstance(raw.get("link", {}), dict) else False
    prior: dict[str, tuple[float, ...]] = {}
    if role == "latent" and not has_link:
        prior_raw = c.table(body.get("prior", {}), path + ("prior",), _PRIOR_KEYS[family])
        if family == "gaussian":
            prior["loc"] = c.numbers(prior_raw.get("loc", 0.0), path + ("prior", "loc"), size)
            prior["scale"] = c.numbers(prior_raw.get("scale", 1.0), path + ("prior", "scale"), size)
            if min(prior["scale"]) <= 0:
                raise c.fail(path + ("prior", "scale"), f"must be > 0, got {list(prior['scale'])}")
        else:
            default = 0.5 if family == "bernoulli" else 1.0 / size
            probs = c.numbers(prior_raw.get("probs", default), path + ("prior", "probs"), size)
            if not all(0 < p < 1 for p in probs):
                raise c.fail(path + ("prior", "probs"), f"must be in (0, 1), got {list(probs)}")
            if family == "categorical" and abs(sum(probs) - 1) > 1e-9:
                raise c.fail(path + ("prior", "probs"), f"must sum to 1, got {sum(probs)}")
            prior["probs"] = probs
    learn = body.get("learn_prior", family != "gaussian")
    if not isinstance(learn, bool):
        raise c.fail(path + ("learn_prior",), f"must be true or false, got {learn!r}")
    scale: str | float = "shared"
    if "scale" in body:
        if family != "gaussian":
            raise c.fail(path + ("scale",), f"scale applies to gaussian groups, not {family}")
        s = body["scale"]
        if isinstance(s, str):
            scale = c.string(s, path + ("scale",), SCALES)
        elif isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0:
            scale = float(s)
        else:
            raise c.fail(path + ("scale",), f"must be 'shared', 'linked' or a number > 0, got {s!r}")
    return Group(name, role, family, size, prior, learn, scale)


def _link(c: _Checker, child: str, body: Any, groups: dict[str, Group]) -> Link:
    path = ("link", child)
    body = c.table(body, path, _LINK_KEYS)
    target = groups[child]
    parents_raw = body.get("from")
    if not isinstance(parents_raw, list) or not parents_raw or not all(isinstance(p, str) for p in parents_raw):
        raise c.fail(path + ("from",), f"must be a non-empty list of latent group names, got {parents_raw!r}")
    for p in parents_raw:
        if p not in groups:
            raise c.fail(path + ("from",), f"no group named {p!r}; groups: {', '.join(groups)}")
        if groups[p].role == "observed":
            raise c.fail(path + ("from",), f"{p!r} is an observed group; parents must be latent groups")
    if len(set(parents_raw)) != len(parents_raw):
        raise c.fail(path + ("from",), f"a parent is listed twice: {parents_raw}")
    kind = c.string(body.get("type", "linear"), path + ("type",), LINKS)
    expected = FUNCTIONS[target.family]
    if "function" in body:
        fn = c.string(body["function"], path + ("function",), tuple(sorted(set(FUNCTIONS.values()))))
        if kind == "noisy_or":
            raise c.fail(path + ("function",), "a noisy_or link has its own function (1 - (1 - leak) exp(-h W)); remove it")
        if fn != expected:
            raise c.fail(path + ("function",), f"function {fn!r} does not fit the {target.family} group {child!r}; "
                                               f"a {target.family} group takes {expected!r}")
    if kind == "noisy_or":
        if target.family != "bernoulli":
            raise c.fail(path + ("type",), f"a noisy_or link needs a bernoulli child, but {child!r} is {target.family}")
        for p in parents_raw:
            if groups[p].family == "gaussian":
                raise c.fail(path + ("from",), f"a noisy_or link needs binary causes, but parent {p!r} is gaussian")
    hidden: tuple[int, ...] = ()
    if "hidden" in body:
        if kind != "mlp":
            raise c.fail(path + ("hidden",), f"hidden sizes apply to an mlp link, not {kind}")
        h = body["hidden"]
        if not isinstance(h, list) or not h:
            raise c.fail(path + ("hidden",), f"must be a non-empty list of layer sizes, got {h!r}")
        hidden = tuple(c.integer(v, path + ("hidden",)) for v in h)
    elif kind == "mlp":
        raise c.fail(path, "an mlp link needs hidden = [sizes]")
    activation = "tanh"
    if "activation" in body:
        if kind != "mlp":
            raise c.fail(path + ("activation",), f"activation applies to an mlp link, not {kind}")
        activation = c.string(body["activation"], path + ("activation",), ACTIVATIONS)
    constraint = c.string(body.get("constraint", "nonnegative" if kind == "noisy_or" else "none"), path + ("constraint",), CONSTRAINTS)
    if kind == "noisy_or" and constraint != "nonnegative":
        raise c.fail(path + ("constraint",), "a noisy_or link's weights are non-negative by definition")
    return Link(child, tuple(parents_raw), kind, hidden, activation, constraint)


def _topological(c: _Checker, groups: dict[str, Group], links: dict[str, Link]) -> list[str]:
    """Latent groups, parents first; a cycle is refused, naming its groups."""
    latents = [n for n, g in groups.items() if g.role == "latent"]
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(name: str, stack: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = stack[stack.index(name):] + [name]
            raise c.fail(("link", name, "from"), f"the links form a cycle: {' -> '.join(reversed(cycle))}")
        state[name] = 1
        for p in links[name].parents if name in links else ():
            visit(p, stack + [name])
        state[name] = 2
        order.append(name)

    for n in latents:
        visit(n, [])
    return order


def load(path: str | Path) -> Declaration:
    """Read and check a declaration file."""
    p = Path(path)
    if not p.is_file():
        raise DeclarationError(f"declaration file not found: {str(path)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DeclarationError(f"{path}: not UTF-8 text: {err}") from None
    return parse(text, str(path), default_name=p.stem)
