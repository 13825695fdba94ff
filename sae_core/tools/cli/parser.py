"""The `sae` argument parser: subcommands and flags, options and choices read from the registry."""

from __future__ import annotations

import argparse

from ... import registry

class _Version(argparse.Action):
    """`sae --version`: sae-rl's version and the trajectory standard's (read only when asked: the
    standard's module imports pyarrow, which `sae --help` need not)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ...trajectory.metadata import SPEC_VERSION
        from ...version import __version__

        print(f"sae-rl {__version__} (trajectory standard {SPEC_VERSION})", flush=True)
        parser.exit()


WARMUP_MASKS = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "none")


def build_parser() -> argparse.ArgumentParser:
    """The `sae` argument parser. The estimator, rule, option, mask-mode and backend flags and
    choices are read from `sae_core.registry` when this is called: an option added there is a flag
    of `sae recompute` (`--name-with-dashes`, parsed and checked by `Option.parse`)."""
    parser = argparse.ArgumentParser(prog="sae", description="sae-rl: advantage estimators and the trajectory "
                                                             "standard for LLM rollouts")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                      help="errors only: no warnings, no compile notice")
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                      help="also say what sae_core does at length (each kernel compilation)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    estimators = tuple(registry.ESTIMATORS)

    val = sub.add_parser("validate", help="check files against the trajectory standard",
                         description="Check Parquet / Arrow IPC files against the trajectory standard "
                                     "(`sae spec`): one line per good file, the problems of a bad one. FILE "
                                     "is a file, a directory (every shard under it) or a glob pattern (quote it).")
    val.add_argument("files", nargs="+", metavar="FILE")
    val.add_argument("--json", action="store_true",
                     help="print one JSON document: a list with each file's verdict, counts and problems")
    val.add_argument("--estimator", choices=estimators,
                     help="also check that the columns this estimator reads are present")
    _add_option(val, _rule_option())
    _add_column_flags(val)

    rec = sub.add_parser(
        "recompute", help="compute advantages on saved rollouts",
        description="Stream rollouts (the trajectory standard) through one or more estimators and write them "
                    "with their outputs added. INPUT is a file, a directory (every shard under it) or a "
                    "glob pattern (quote it); OUTPUT a file for a file, else a directory. Outputs are atomic; "
                    "a directory job skips shards whose output is already complete.")
    rec.add_argument("input", metavar="INPUT")
    rec.add_argument("output", metavar="OUTPUT")
    rec.add_argument("--estimator", action="append", metavar="NAME[:k=v,...]",
                     help=f"{', '.join(estimators)}, with optional overrides, e.g. sae:threshold=0.1. Repeat for "
                          "several output sets (advantages_gae, advantages_sae, ...). Default: sae")
    for option in job_options():
        _add_option(rec, option)
    rec.add_argument("--batch-size", type=int, default=1024, help="rows per batch and per row group (default 1024)")
    rec.add_argument("--backend", choices=registry.BACKENDS, default="auto",
                     help="estimator backend (default auto)")
    rec.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process; ray: one Ray Data task per shard")
    rec.add_argument("--ray-address", default=None, help="a Ray cluster to join (default: a local instance)")
    rec.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    rec.add_argument("--json", action="store_true",
                     help="print the job's result as one JSON document (each shard's status, rows, tokens, seconds, "
                          "error, note; the totals) instead of lines")
    rec.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal)")
    _add_column_flags(rec, " Outputs are written with the standard's names.")

    ins = sub.add_parser("inspect", help="summarise a file: lengths, boundaries, segments, advantages",
                         description="A summary of a trajectory file: rows, tokens, response lengths, boundary "
                                     "fraction and segment lengths at several thresholds, advantage statistics "
                                     "per estimator, correlations between estimators, NaN counts. FILE is a "
                                     "file, a directory or a glob pattern (quote it): each file in turn.")
    ins.add_argument("files", nargs="+", metavar="FILE")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--threshold", type=float, action="append", default=None, metavar="P",
                     help="a probability threshold to count logprob boundaries at (repeatable; default "
                          "0.05, 0.1, 0.2, 0.5, plus those the file's sae sets recorded)")
    ins.add_argument("--batch-size", type=int, default=1024, help="rows read at a time (default 1024)")
    _add_column_flags(ins)

    rep = sub.add_parser("report", help="a self-contained HTML report of a file (or of several, with an index)",
                         description="One HTML page that needs no network: plots of segment lengths and advantage "
                                     "distributions per estimator, and a token view of a few responses. FILE is a "
                                     "file, a directory (every shard under it) or a glob pattern (quote it). One "
                                     "file: --out is the page. Several (a directory, a glob, or more than one "
                                     "FILE): --out is a directory that gets a page per file (the file's path under "
                                     "the directory holding them all, .html added) and index.html, a table that "
                                     "compares the files (rows, tokens, lengths, each set's advantage mean and std "
                                     "and boundary fraction) with a link to each page; a file that fails is listed "
                                     "there and on stderr, and the others are still reported (exit status 1).")
    rep.add_argument("files", nargs="+", metavar="FILE")
    rep.add_argument("--out", required=True, metavar="PAGE.html|DIR")
    rep.add_argument("--overwrite", action="store_true",
                     help="replace pages that exist (without it, nothing is written when one exists)")
    rep.add_argument("--tokenizer", default=None, metavar="PATH",
                     help="a local transformers tokenizer to decode token ids with")
    rep.add_argument("--responses", type=int, default=4, help="responses in the token view (default 4)")
    rep.add_argument("--threshold", type=float, action="append", default=None, metavar="P",
                     help="a probability threshold to plot segments at (repeatable)")
    rep.add_argument("--batch-size", type=int, default=1024, help="rows read at a time (default 1024)")
    rep.add_argument("--color-by", default=None, metavar="SET",
                     help="the output set whose advantages colour the tokens: its advantages column "
                          "(advantages_sae) or its suffix (sae); default: the first set with boundaries, else "
                          "the first set")
    rep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal)")
    _add_column_flags(rep)

    dem = sub.add_parser("demo", help="the estimator lab at a glance, and the path through files (./dev main)",
                         description="Where SAE beats GAE and where it loses (cosine to the exact policy gradient "
                                     "over paired seeds, with t-intervals and a plot), then rollouts with exact "
                                     "advantages written in the trajectory standard, recomputed with several "
                                     "estimators, scored and reported in HTML.")
    dem.add_argument("--out", default="sae-demo", metavar="DIR", help="where the files go (default ./sae-demo)")
    dem.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in DIR")
    dem.add_argument("--seeds", type=int, default=8, help="paired seeds of the comparison (default 8)")
    dem.add_argument("--tasks", type=int, default=24, help="synthetic prompts in the rollout file (default 24)")
    dem.add_argument("--samples", type=int, default=8, help="responses per prompt (default 8)")
    dem.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    dem.add_argument("--no-report", action="store_true", help="skip the HTML report and the plot")
    dem.add_argument("--json", action="store_true", help="print the results as JSON instead of text")

    lab = sub.add_parser("lab", help="the pre-registered estimator study (docs/lab.md)",
                         description="Every estimator and control on the same rollouts of synthetic RLVR processes "
                                     "with exact values, for hand-made and learned critics, over paired seeds: the "
                                     "cosine of each batch policy gradient to the exact one, the paper's per-segment "
                                     "correlation, and the contrasts fixed before the first run (sae_core.lab.stats"
                                     ".CONTRASTS) as paired 95% t-intervals. The full study takes about 25 minutes on "
                                     "2 cores; --quick about 30 seconds.")
    lab.add_argument("--quick", action="store_true",
                     help="two short settings, five critics, three seeds, a small closed loop")
    lab.add_argument("--config", metavar="FILE.json", help="a study config (see sae_core.lab.StudyConfig.from_dict)")
    lab.add_argument("--seeds", type=int, default=None, help="override the config's number of seeds")
    lab.add_argument("--from", dest="results", metavar="RESULTS.json",
                     help="present the results of an earlier `sae lab --out` instead of running the study")
    lab.add_argument("--out", metavar="FILE.json", help="write the results (every seed's numbers) as JSON")
    lab.add_argument("--seed-metrics", choices=("all", "primary"), default="all",
                     help="per seed in --out: every metric (default) or only the primary ones (cos_batch, "
                          "cos_pooled; the summary keeps every metric's mean and interval)")
    lab.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    lab.add_argument("--update-doc", metavar="FILE.md",
                     help="rewrite the tables between <!-- lab:table NAME --> markers in FILE.md (docs/lab.md)")
    lab.add_argument("--plot", metavar="FILE.png", help="the contrasts as a dot plot (needs matplotlib)")
    lab.add_argument("--overwrite", action="store_true", help="replace --out and --plot if they exist")
    lab.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on stderr (default: when stderr is a terminal)")

    warm = sub.add_parser(
        "warmup", help="compile the CPU (numba) kernels ahead of their first use",
        description="Compile the numba kernels for each combination of the flags below, or load them from numba's "
                    "disk cache, so that the first advantage computation of a training run does not wait for "
                    "them: seconds once per machine and combination, then a fraction of a second per process.")
    warm.add_argument("--estimator", action="append", metavar="NAME[:k=v,...]",
                      help=f"{', '.join(estimators)}, with the options that choose its boundary rule "
                           "(e.g. sae:boundary=entropy). Repeatable. Default: sae")
    warm.add_argument("--dtype", action="append", choices=("float32", "float64"),
                      help="dtype of rewards and values (float32 also covers float16 and bfloat16). Repeatable. "
                           "Default: float32")
    warm.add_argument("--mask-dtype", action="append", choices=WARMUP_MASKS,
                      help="dtype of response_mask (none: no mask). Repeatable. Default: int64 (veRL)")
    warm.add_argument("--data-dtype", action="append", choices=("float16", "bfloat16", "float32", "float64"),
                      help="dtype of the log-probs or entropy the boundary rule reads (veRL may pass bfloat16 "
                           "log-probs). Repeatable. Default: the --dtype")
    warm.add_argument("--mask-mode", action="append", choices=registry.MASK_MODES,
                      help="skip (veRL) or zero (OpenRLHF). Repeatable. Default: skip")
    warm.add_argument("--critic-lam", type=float, default=None, help="a decoupled critic's lambda (VAPO)")
    warm.add_argument("--json", action="store_true",
                      help="print one JSON document instead of lines: each combination (estimator, options, dtypes, "
                           "mask mode), its seconds and the kernels it compiled (0: loaded from the cache); the "
                           "totals; numba's cache directory (null when there is none)")

    ann = sub.add_parser(
        "annotate", help="put the sae_rl metadata back on a file another tool rewrote",
        description="pandas, polars, duckdb and Hugging Face datasets drop the sae_rl metadata when they rewrite a "
                    "file, and with it every output set's parameters. This copies it from ORIGINAL (the file as "
                    "sae-rl wrote it, or a JSON document of its metadata, e.g. `sae validate --json`) onto FILE's "
                    "data, after checking that the data is ORIGINAL's (same trajectory ids in the same order, the "
                    "same values in every column the estimators read or write). The output is written atomically; "
                    "neither input is modified.")
    ann.add_argument("file", metavar="FILE")
    ann.add_argument("--from", dest="source", required=True, metavar="ORIGINAL",
                     help="the file as sae-rl wrote it, or a JSON document of its metadata")
    ann.add_argument("--out", "-o", default=None, metavar="PATH",
                     help="the annotated file to write (default: replace FILE, which needs --overwrite)")
    ann.add_argument("--overwrite", action="store_true",
                     help="replace an existing output (FILE itself when there is no --out)")

    spec = sub.add_parser("spec", help="the trajectory standard's documents, shipped with the package",
                          description="Print a document of the trajectory standard (default SPEC.md), its path "
                                      "(--path), or the list of documents (--list): the spec, the JSON Schemas "
                                      "of a row and of the sae_rl metadata, the conformance vectors.")
    spec.add_argument("name", nargs="?", default=None, metavar="NAME",
                      help="SPEC.md (default), trajectory-1.0.schema.json, metadata-1.0.schema.json, "
                           "conformance/...")
    spec.add_argument("--path", action="store_true", help="print the path instead (no NAME: the directory)")
    spec.add_argument("--list", action="store_true", help="list the documents")
    return parser



def _add_column_flags(parser: argparse.ArgumentParser, more: str = "") -> None:
    """`--column STANDARD=THEIRS` (repeatable) and `--no-column-aliases`: how a file's columns of
    other names are read (`sae_core.trajectory.mapping`); `column_map` in commands turns them into
    a `ColumnMap`."""
    parser.add_argument("--column", action="append", default=None, metavar="STANDARD=THEIRS",
                        help="read the file's column THEIRS as the standard's column STANDARD (repeatable), "
                             "e.g. --column logprobs=old_log_probs; the file is not changed." + more)
    parser.add_argument("--no-column-aliases", dest="column_aliases", action="store_false",
                        help="read columns under the file's own names and --column only; by default the "
                             "names veRL and OpenRLHF use (responses, old_log_probs, rollout_log_probs, "
                             "token_level_rewards, action_mask, ...) are read as the standard's columns they "
                             "hold when those are absent, with a warning")


def job_options() -> list[registry.Option]:
    """The options `sae recompute` takes job-wide: the common arguments, then every option of some
    estimator (registry order); each run takes those its estimator reads."""
    taken = {name for e in registry.ESTIMATORS.values() for name in e.options}
    return [*registry.COMMON.values(), *(o for name, o in registry.OPTIONS.items() if name in taken)]


def _rule_option() -> registry.Option:
    """The option that names sae's boundary rule (`--boundary`)."""
    return next(o for o in registry.OPTIONS.values() if o.kind == "rule")


def _add_option(parser: argparse.ArgumentParser, option: registry.Option) -> None:
    """`--name-with-dashes` for a registry option: dest `name`, default None (not given), the
    registry's help and default, choices for a rule or choice option, else `Option.parse`."""
    flag = "--" + option.name.replace("_", "-")
    default = "" if option.default is None else f" (default {option.default})"
    help_text = (option.help + default).replace("%", "%%")  # argparse formats help with %
    if option.kind in ("rule", "choice"):
        choices = tuple(registry.RULES) if option.kind == "rule" else option.choices
        parser.add_argument(flag, dest=option.name, choices=choices, default=None, help=help_text)
    else:
        metavar = {"int_list": "ID,ID", "int": "N"}.get(option.kind, "X")
        parser.add_argument(flag, dest=option.name, type=_parser_of(option), default=None, metavar=metavar,
                            help=help_text)


def _parser_of(option: registry.Option):
    """`option.parse` as an argparse type: a bad value is a usage error naming the option."""
    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse

