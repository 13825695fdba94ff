"""Reading files whose columns have other names: `--column STANDARD=THEIRS`; veRL's and OpenRLHF's names.

A `ColumnMap` says how a file's columns are read as the standard's: explicit pairs (the standard's
name -> the file's, `sae validate --column logprobs=old_log_probs`) and, with aliases=True, the
built-in recognition of the names veRL and OpenRLHF give the same data (`ALIASES`). It is applied
when a file is opened (`reader.Reader`, so by every reader of `io` and every `sae` command that
reads files): the schema and each record batch are renamed, without a copy, and validation,
estimators and the tools see the standard's names only. The file itself is never changed.
`resolve` applies a map to one file's schema, giving its `FileColumns`.

Explicit pairs (`ColumnMap.parse`: split at the first "=", spaces stripped; ValueError prefixed
"--column TEXT: " for the first two rules, a usage error of `sae`):
- STANDARD is a column of the standard (suffixed outputs such as advantages_gae included);
- no two pairs name the same STANDARD, nor the same THEIRS (one column read as two);
- THEIRS is a column of the file, and the file has no column STANDARD as well (unless a pair
  reads that one as something else): otherwise the file is refused, a TrajectoryError naming the flag.

Recognition (aliases=True; the `sae` commands' default, `--no-column-aliases` turns it off; the
library's readers recognise nothing unless asked). For each standard column the file lacks after
the explicit pairs, the first of its `ALIASES` (in table order) that is marked `auto`, is in the
file, is not read by an explicit pair, and has an Arrow type the standard column takes (an alias
that is itself a standard name, OpenRLHF's per-response `rewards`, only when its own column does
not take its type) is read as it. One TrajectoryWarning per file names what was recognised as the
`--column` pairs that say the same, and the other aliases the file has for those columns (it names
no file, so that `sae` says it once for the shards of a job; `sae validate` and `sae inspect` list
each file's pairs). For the log-probs the order is the adapters' `auto` choice: `rollout_log_probs` (the sampler's own: exactly the behaviour policy's), then
`old_log_probs` (veRL) or `action_log_probs` (OpenRLHF), the actor's recomputation.

Names that need no alias: `values`, `advantages`, `returns` (both frameworks), `response_mask`
(veRL). Names not recognised on purpose: `token_level_scores` (veRL's reward before its in-reward
KL penalty: the standard's `rewards` only when there is none; named in hints, never applied);
OpenRLHF's `sequences` (the prompt and the response together, not the response's ids); veRL's `uid`
as a trajectory id (it names the prompt: it is recognised as `group_id`). Neither framework names
a response, so `trajectory_id` has no alias.

Hints (`FileColumns.explain`, applied to every problem a reader reports): a problem of a column read
under another name names the file's column ("column 'old_log_probs' (read as logprobs), row 3: ...");
a missing standard column names the aliases the file has and the flag that reads each
("pass --column logprobs=old_log_probs"; an alias of a type the column does not take says so), or
the note of `NOT_ALIASES`, or, with none, `--column NAME=THEIRS`; a standard column of a type its
column does not take that is an alias of another (a per-response `rewards`) names that flag
("pass --column reward=rewards").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import pyarrow as pa

from .columns import COLUMN, column_for, type_name
from .errors import Problem, TrajectoryError, TrajectoryWarning

FLAG = "--column"
NO_ALIASES_FLAG = "--no-column-aliases"


@dataclass(frozen=True)
class Alias:
    """A framework's name for the data of a standard column.

    auto: read as `column` when the file lacks it (see the module docstring); False: only named in
    the hint of a "missing" problem, the data differing from the standard's in some cases.
    """

    column: str
    name: str
    framework: str
    meaning: str
    auto: bool = True


# In order of preference for each standard column (the first one present is read).
ALIASES: tuple[Alias, ...] = (
    Alias("response_ids", "responses", "veRL", "the sampled response token ids"),
    Alias("response_mask", "action_mask", "OpenRLHF", "1 on the response's action tokens"),
    Alias("logprobs", "rollout_log_probs", "veRL and OpenRLHF", "the sampler's own log-probs"),
    Alias("logprobs", "old_log_probs", "veRL", "the actor's log-probs, recomputed before the update"),
    Alias("logprobs", "action_log_probs", "OpenRLHF", "the actor's log-probs, recomputed before the update"),
    Alias("rewards", "token_level_rewards", "veRL",
          "the per-token reward with any in-reward KL penalty: what veRL's estimators read"),
    Alias("rewards", "token_level_scores", "veRL",
          "the reward function's scores, before veRL's in-reward KL penalty", auto=False),
    Alias("reward", "rewards", "OpenRLHF", "one reward per response"),
    Alias("entropy", "entropys", "veRL", "the policy's entropy per token"),
    Alias("group_id", "uid", "veRL", "the prompt's uid"),
    Alias("prompt_ids", "prompts", "veRL", "the prompt's token ids (left-padded in veRL's batch)"),
)

# Columns that look like a standard column's data but are not: what the hint says instead of a flag.
NOT_ALIASES: tuple[tuple[str, str, str], ...] = (
    ("response_ids", "sequences", "OpenRLHF's 'sequences' hold the prompt and the response together: write each "
                                  "response's own ids (the last tokens, as many as its action_mask has) as a column"),
    ("trajectory_id", "uid", "veRL's 'uid' names the prompt (it is read as group_id), not the response: add a "
                             "column of unique response ids"),
)


@dataclass(frozen=True)
class ColumnMap:
    """How to read a file's columns as the standard's (see the module docstring).

    pairs: (standard name, the file's name) pairs, as `--column STANDARD=THEIRS` gives them;
    aliases: recognise the names of veRL and OpenRLHF (`ALIASES`) for the columns still missing.
    Raises ValueError naming the flag for a pair that can be refused without a file.
    """

    pairs: tuple[tuple[str, str], ...] = ()
    aliases: bool = False

    def __post_init__(self) -> None:
        pairs = tuple((str(s), str(t)) for s, t in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        for std, theirs in pairs:
            flag = f"{FLAG} {std}={theirs}"
            if column_for(std) is None:
                raise ValueError(f"{flag}: {std!r} is not a column of the trajectory standard (its columns: "
                                 f"{', '.join(COLUMN)})")
            if not theirs:
                raise ValueError(f"{flag}: give the file's name for {std}")
            if [s for s, _ in pairs].count(std) > 1:
                raise ValueError(f"{flag}: {std} is mapped twice; give one {FLAG} {std}=...")
            if [t for _, t in pairs].count(theirs) > 1:
                flags = " and ".join(f"{FLAG} {s}={t}" for s, t in pairs if t == theirs)
                raise ValueError(f"{flags}: the file's column {theirs!r} would be read as two standard columns; "
                                 "a column is read as one at most")

    @classmethod
    def parse(cls, texts: Iterable[str] | None, *, aliases: bool = True) -> ColumnMap:
        """A map from `--column` values ("STANDARD=THEIRS" each); ValueError "--column TEXT: why"."""
        pairs = []
        for text in texts or ():
            std, sep, theirs = text.partition("=")
            if not sep or not std.strip():
                raise ValueError(f"{FLAG} {text}: expected STANDARD=THEIRS, e.g. {FLAG} logprobs=old_log_probs")
            pairs.append((std.strip(), theirs.strip()))
        return cls(tuple(pairs), aliases)

    @classmethod
    def of(cls, value: ColumnMap | Mapping[str, str] | None) -> ColumnMap:
        """`value` as a ColumnMap: a ColumnMap as it is; a {standard: theirs} dict as explicit pairs
        (no recognition); None: nothing (every column read under its own name)."""
        if value is None:
            return cls()
        if isinstance(value, ColumnMap):
            return value
        return cls(tuple(value.items()))

    @property
    def empty(self) -> bool:
        return not self.pairs and not self.aliases


@dataclass(frozen=True)
class FileColumns:
    """How one file's columns are read (see `resolve`).

    file_schema: the file's own schema; schema: as read (renamed; the same metadata).
    to_file: {standard name: the file's name} for each column read under another name (explicit
    pairs and recognised aliases), in the file's order; recognised: those that came from `ALIASES`.
    """

    file_schema: pa.Schema
    schema: pa.Schema
    to_file: dict[str, str] = field(default_factory=dict)
    recognised: tuple[str, ...] = ()

    @property
    def from_file(self) -> dict[str, str]:
        return {theirs: std for std, theirs in self.to_file.items()}

    def file_names(self, names: list[str] | None) -> list[str] | None:
        """The file's names of the columns `names` (as read); None stays None (every column)."""
        if names is None or not self.to_file:
            return names
        return [self.to_file.get(n, n) for n in names]

    def rename(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch read from the file under the names as read (no copy)."""
        if not self.to_file:
            return batch
        back = self.from_file
        sch = pa.schema([f.with_name(back.get(f.name, f.name)) for f in batch.schema],
                        metadata=batch.schema.metadata)
        return pa.RecordBatch.from_arrays(batch.columns, schema=sch)

    def explain(self, problems: Iterable[Problem]) -> list[Problem]:
        """`problems` (in the names as read) in the file's names, with hints: a column read under
        another name is named by the file's name (`Problem.read_as` the standard's); a missing
        standard column or one of a type its column does not take gets the flag that would help."""
        out = []
        names = set(self.file_schema.names)
        used = set(self.to_file.values())
        for p in problems:
            if p.column is not None and p.column in self.to_file:
                out.append(replace(p, column=self.to_file[p.column], read_as=p.column))
                continue
            hint = ""
            if p.column is not None and p.message.startswith("missing"):
                hint = self._missing_hint(p.column, names - used, names)
            elif p.column is not None and p.message.startswith("has type") and p.column in names:
                hint = self._type_hint(p.column)
            out.append(replace(p, message=p.message + hint) if hint else p)
        return out

    def _missing_hint(self, column: str, names: set[str], every: set[str]) -> str:
        """names: the file's columns not read as another; every: all of them."""
        if column_for(column) is None:
            return ""
        targets = {column, "reward"} if column == "rewards" else {column}
        found = [a for a in ALIASES if a.column in targets and a.name in names]
        if found:
            described = []
            for a in found:
                typ = self.file_schema.field(a.name).type
                fits = "" if COLUMN[a.column].accepts_type(typ) else \
                    f", of type {type_name(typ)}, which {a.column} does not take"
                described.append(f"'{a.name}' ({a.framework}: {a.meaning}{fits})")
            flags = " or ".join(f"{FLAG} {a.column}={a.name}" for a in found)
            return f"; the file has {' and '.join(described)}: pass {flags}"
        notes = [note for std, name, note in NOT_ALIASES if std == column and name in every]
        if notes:
            return "; " + "; ".join(notes)
        return f"; if the file names it otherwise, pass {FLAG} {column}=THEIRS"

    def _type_hint(self, name: str) -> str:
        typ = self.file_schema.field(name).type
        for a in ALIASES:
            if a.name == name and a.column != name and COLUMN[a.column].accepts_type(typ) \
                    and a.column not in self.file_schema.names:
                return (f"; {a.framework}'s '{name}' is {a.meaning}, the standard's {a.column}: "
                        f"pass {FLAG} {a.column}={name}")
        return ""


def resolve(sch: pa.Schema, column_map: ColumnMap | Mapping[str, str] | None = None, source: str | None = None
            ) -> FileColumns:
    """How the file of schema `sch` (its own names, which are unique) is read under `column_map`.

    Raises TrajectoryError naming `source` and the flag for a pair whose THEIRS the file lacks, or
    whose STANDARD the file has as well. Warns (one TrajectoryWarning) naming the aliases recognised
    as `--column` pairs, and the other aliases the file has for the same columns.
    """
    cmap = ColumnMap.of(column_map)
    if cmap.empty:
        return FileColumns(sch, sch)
    names = sch.names
    present = set(names)
    moved = {theirs for std, theirs in cmap.pairs if std != theirs}
    problems = []
    to_file: dict[str, str] = {}
    for std, theirs in cmap.pairs:
        flag = f"{FLAG} {std}={theirs}"
        if theirs not in present:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            problems.append(Problem(None, None, f"{flag}: the file has no column {theirs!r} (its columns: {shown})"))
        elif std != theirs and std in present and std not in moved:
            problems.append(Problem(None, None, (
                f"{flag}: the file has a column {std!r} too, and two columns cannot both be read as {std}; "
                f"drop this {FLAG} to read the file's own {std}")))
        elif std != theirs:
            to_file[std] = theirs
    if problems:
        raise TrajectoryError(problems, source)
    taken = set(to_file.values()) | {t for _, t in cmap.pairs}
    as_read = {std for std in to_file} | (present - set(to_file.values()))
    recognised: list[str] = []
    chosen_aliases: list[Alias] = []
    others: list[str] = []
    if cmap.aliases:
        # a column whose alias is a standard name first (OpenRLHF's per-response `rewards` read as
        # `reward` frees the name `rewards` for a per-token alias)
        order = sorted(dict.fromkeys(a.column for a in ALIASES),
                       key=lambda s: not any(a.column == s and column_for(a.name) is not None for a in ALIASES))
        for std in order:
            if std in as_read:
                continue
            found = [a for a in ALIASES if a.column == std and a.name in present and a.name not in taken]
            usable = [a for a in found if a.auto and _fits(a, sch)]
            if not usable:
                continue
            chosen = usable[0]
            to_file[std] = chosen.name
            taken.add(chosen.name)
            as_read = (as_read - {chosen.name}) | {std}
            recognised.append(std)
            chosen_aliases.append(chosen)
            others += [f"{FLAG} {std}={a.name}" for a in found if a is not chosen]
        if chosen_aliases:
            chosen_aliases.sort(key=lambda a: names.index(a.name))  # in the file's order
            frameworks = dict.fromkeys(w for a in chosen_aliases for w in a.framework.split(" and "))
            flags = " ".join(f"{FLAG} {a.column}={a.name}" for a in chosen_aliases)
            also = f" (the file also has what {' or '.join(others)} would read instead)" if others else ""
            warnings.warn(f"reading {' and '.join(frameworks)} column names as the standard's, as {flags} "
                          f"would{also}; {NO_ALIASES_FLAG} reads the file's own names only",
                          TrajectoryWarning, stacklevel=2)
    to_file = dict(sorted(to_file.items(), key=lambda kv: names.index(kv[1])))  # in the file's order
    back = {theirs: std for std, theirs in to_file.items()}
    view = pa.schema([f.with_name(back.get(f.name, f.name)) for f in sch], metadata=sch.metadata)
    return FileColumns(sch, view, to_file, tuple(recognised))


def _fits(alias: Alias, sch: pa.Schema) -> bool:
    """Whether the file's column `alias.name` can be read as `alias.column`: a type that column
    takes, and, for a name the standard has too, one its own column does not take."""
    typ = sch.field(alias.name).type
    own = column_for(alias.name)
    return COLUMN[alias.column].accepts_type(typ) and (own is None or not own.accepts_type(typ))


__all__ = ["ALIASES", "Alias", "ColumnMap", "FileColumns", "NOT_ALIASES", "resolve"]
