"""The `sae` subcommands: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import json
import os

from ... import registry
from .output import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, _about, _is_data_problem, _reason, _say,
                     _say_problems)
from .parser import _rule_option, job_options


def _inputs(args, given: list[str]) -> list[str] | None:
    """The files `given` names (directories and globs expanded, `recompute_plan.expand_inputs`);
    None after saying why when one names nothing."""
    from ..recompute_plan import expand_inputs

    try:
        return expand_inputs(given)
    except ValueError as exc:
        _say(f"sae {args.command}: {exc}", err=True)
        return None


def _column_map(args):
    """The `trajectory.ColumnMap` of `--column` and `--no-column-aliases` (recognition of veRL's and
    OpenRLHF's names on by default); None after saying why (a usage error) when a pair is refused."""
    from ...trajectory import ColumnMap

    try:
        return ColumnMap.parse(args.column, aliases=args.column_aliases)
    except ValueError as exc:
        _say(f"sae {args.command}: {exc}", err=True)
        return None


def _validate(args) -> int:
    from ...trajectory import TrajectoryError, validate_file

    column_map = _column_map(args)
    if column_map is None:
        return EXIT_USAGE
    files = _inputs(args, args.files)
    if files is None:
        return EXIT_FAILED
    status = EXIT_OK
    boundary = getattr(args, _rule_option().name)
    verdicts = []
    for path in files:
        try:
            summary = validate_file(path, estimator=args.estimator, boundary=boundary, column_map=column_map)
        except TrajectoryError as exc:
            status = EXIT_FAILED
            verdicts.append({"file": path, "ok": False, "problems": [str(p) for p in exc.problems]})
            if not args.json:
                _say_problems(exc, path)
            continue
        except Exception as exc:  # noqa: BLE001 -- a file the system cannot read goes like a bad one
            if not _is_data_problem(exc):
                raise
            status = EXIT_FAILED
            verdicts.append({"file": path, "ok": False, "problems": [_reason(exc)]})
            if not args.json:
                _say(_about(path, exc), err=True)
            continue
        info = summary.info
        verdicts.append({"file": path, "ok": True, "rows": summary.rows, "tokens": summary.tokens,
                         "spec_version": info.spec_version, "has_metadata": info.has_metadata,
                         "outputs": {k: dict(v) for k, v in sorted(info.estimators.items())},
                         "invalid_outputs": sorted(info.invalid), "unknown_outputs": list(info.unknown),
                         "columns_read_as": dict(summary.columns),
                         "problems": []})
        if not args.json:
            _say(summary.line())
    if args.json:
        _say(json.dumps(verdicts, indent=2, default=str))
    return status


def _recompute(args) -> int:
    from ...trajectory import TrajectoryError
    from ..recompute import plan_runs, recompute

    column_map = _column_map(args)
    if column_map is None:
        return EXIT_USAGE
    common = {o.name: getattr(args, o.name, None) for o in job_options()}
    try:
        runs = plan_runs(args.estimator or ["sae"], common)
        result = recompute(args.input, args.output, runs, engine=args.engine, batch_size=args.batch_size,
                           backend=args.backend, overwrite=args.overwrite, progress=args.progress,
                           ray_address=args.ray_address, column_map=column_map)
    except TrajectoryError as exc:
        _say_problems(exc, exc.source or "sae recompute")
        return EXIT_FAILED
    except ValueError as exc:  # a job that cannot run as asked: usage (Arrow's ValueErrors are not)
        if _is_data_problem(exc):
            raise
        _say(f"sae recompute: {exc}", err=True)
        return EXIT_USAGE
    if args.json:
        import dataclasses

        files = [dataclasses.asdict(f) for f in result.files]
        _say(json.dumps({"ok": result.ok, "files": files, "totals": result.totals(), "removed": result.removed,
                         "notes": result.notes}, indent=2))
    else:
        for f in result.files:
            _say(f.line(), err=f.status == "failed")
        _say(result.summary())
    return EXIT_OK if result.ok else EXIT_FAILED


def _inspect(args) -> int:
    from ...trajectory import TrajectoryError
    from ..summary import check_thresholds, inspect_file

    kwargs = {}
    if args.threshold:
        try:
            kwargs["thresholds"] = check_thresholds(args.threshold)
        except ValueError as exc:
            _say(f"sae inspect: --threshold: {exc}", err=True)
            return EXIT_USAGE
    kwargs["column_map"] = _column_map(args)
    if kwargs["column_map"] is None:
        return EXIT_USAGE
    files = _inputs(args, args.files)
    if files is None:
        return EXIT_FAILED
    status, docs = EXIT_OK, []
    for path in files:
        try:
            inspection = inspect_file(path, batch_size=args.batch_size, **kwargs)
        except TrajectoryError as exc:
            _say_problems(exc, path)
            status = EXIT_FAILED
            continue
        except Exception as exc:  # noqa: BLE001 -- a file the system cannot read; anything else is a bug
            if not _is_data_problem(exc):
                raise
            _say(_about(path, exc), err=True)
            status = EXIT_FAILED
            continue
        if args.json:
            docs.append(inspection.to_dict() if len(files) == 1 else {"file": path, **inspection.to_dict()})
        else:
            _say(inspection.format() if len(files) == 1 else f"== {path}\n{inspection.format()}\n")
    if args.json and docs:
        _say(json.dumps(docs[0] if len(files) == 1 else docs, indent=2))
    return status


def _report(args) -> int:
    from ...trajectory import TrajectoryError
    from ..report import check_out, check_out_dir, load_tokenizer, page_names, write_report
    from ..summary import check_thresholds
    from ...trajectory import paths as tj_paths

    kwargs = {"column_map": _column_map(args)}
    if kwargs["column_map"] is None:
        return EXIT_USAGE
    files = _inputs(args, args.files)
    if files is None:
        return EXIT_FAILED
    many = files != args.files or len(files) > 1  # a directory, a glob, several: a page each and an index
    files = list(dict.fromkeys(files))
    try:  # the arguments first, before the file is read
        if args.threshold:
            kwargs["thresholds"] = check_thresholds(args.threshold)
        if args.responses < 0:
            raise ValueError(f"--responses must be at least 0; got {args.responses}")
        if many:
            check_out_dir(args.out, page_names(files), overwrite=args.overwrite)
        else:
            check_out(args.out)
        if not many and tj_paths.exists(args.out) and not args.overwrite:
            raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
        tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    except (ValueError, OSError) as exc:  # a threshold out of range, an --out that cannot be a page,
        _say(f"sae report: {exc}", err=True)  # a tokenizer that does not load
        return EXIT_USAGE
    if many:
        return _report_many(args, files, tokenizer, kwargs)
    try:
        path = write_report(files[0], args.out, tokenizer=tokenizer, responses=args.responses,
                            batch_size=args.batch_size, color_by=args.color_by, progress=args.progress, **kwargs)
    except TrajectoryError as exc:
        _say_problems(exc, files[0])
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 -- the page cannot be written (ENOSPC, EROFS, ...); else a bug
        if isinstance(exc, ValueError) and not _is_data_problem(exc):  # --color-by naming no set of the file
            _say(f"sae report: {exc}", err=True)
            return EXIT_USAGE
        if not _is_data_problem(exc):
            raise
        _say(f"sae report: {_reason(exc)}", err=True)
        return EXIT_FAILED
    _say(f"wrote {path}")
    return EXIT_OK


def _report_many(args, files: list[str], tokenizer, kwargs: dict) -> int:
    """`sae report` on several files (`report.write_reports`): each page said as it is written, a
    file that fails as `FILE: reason` lines on stderr (the others still reported), then the index."""
    from ..report import write_reports

    def said(page) -> None:
        if page.ok:
            _say(f"wrote {page.page}")
        for problem in page.problems:
            _say(problem if problem.startswith(f"{page.file}: ") else f"{page.file}: {problem}", err=True)

    try:
        pages, index = write_reports(files, args.out, overwrite=args.overwrite, on_page=said, tokenizer=tokenizer,
                                     responses=args.responses, batch_size=args.batch_size, color_by=args.color_by,
                                     progress=args.progress, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- the index cannot be written (ENOSPC, EROFS, ...); else a bug
        if not _is_data_problem(exc):
            raise
        _say(f"sae report: {_reason(exc)}", err=True)
        return EXIT_FAILED
    _say(f"wrote {index} (comparing {sum(p.ok for p in pages)} of {len(pages)} files)")
    return EXIT_OK if all(p.ok for p in pages) else EXIT_FAILED


def _demo(args) -> int:
    from ...lab.demo import DemoConfig, run  # lazily: the lab sits above the tools

    if args.seeds < 2 or args.tasks < 1 or args.samples < 1:
        _say("sae demo: --seeds must be at least 2 (an interval needs two), --tasks and --samples at least 1",
             err=True)
        return EXIT_USAGE
    try:
        text = run(args.out, DemoConfig(seeds=args.seeds, file_tasks=args.tasks, samples=args.samples, seed=args.seed),
                   report=not args.no_report, overwrite=args.overwrite, as_json=args.json)
    except FileExistsError as exc:
        _say(f"sae demo: {exc}", err=True)
        return EXIT_USAGE
    _say(text)
    return EXIT_OK


def _lab(args) -> int:
    import dataclasses

    from ...atomic import write_text_atomic
    from ...lab import present, study  # lazily: the lab sits above the tools

    try:
        if args.results:
            if args.config or args.quick or args.seeds is not None:
                raise ValueError("--from reads results: --config, --quick and --seeds would not apply")
            with open(args.results) as fh:
                doc = json.load(fh)
            if "summary" not in doc:
                raise ValueError(f"{args.results}: no 'summary' (not the output of sae lab --out)")
        else:
            config = study.StudyConfig.quick() if args.quick else study.StudyConfig()
            if args.config:
                with open(args.config) as fh:
                    config = study.StudyConfig.from_dict(json.load(fh))
            if args.seeds is not None:
                config = dataclasses.replace(config, seeds=args.seeds)
            if config.seeds < 2:
                raise ValueError("seeds must be at least 2 (a t-interval needs two)")
        for path in (args.out, args.plot):
            if path and os.path.exists(path) and not args.overwrite:
                raise ValueError(f"{path} exists; pass --overwrite to replace it")
        if args.update_doc and not os.path.isfile(args.update_doc):
            raise ValueError(f"--update-doc {args.update_doc}: no such file")
    except (OSError, ValueError, TypeError) as exc:
        _say(f"sae lab: {_reason(exc)}", err=True)
        return EXIT_USAGE
    if not args.results:
        doc = study.run(config, progress=args.progress)
    if args.out:
        if not args.results:  # floats to 6 significant digits; per seed, every metric or only the primary ones
            doc = study.compact(doc, None if args.seed_metrics == "all" else study.stats.PRIMARY_METRICS)
        write_text_atomic(args.out, json.dumps(doc, indent=None, separators=(",", ":")) + "\n",
                          overwrite=args.overwrite)
    if args.json:
        loop = (doc.get("closed_loop") or {}).get("summary")
        print(json.dumps({"summary": doc["summary"], "closed_loop": loop, "expected_bias": doc.get("expected_bias"),
                          "seconds": doc.get("seconds")}, indent=1))
    else:
        cfg = doc["config"]
        _say(f"{cfg['seeds']} paired seeds; {cfg['tasks']} prompts x {cfg['samples']} responses per batch, "
             f"{cfg['batches']} batches per seed; mean ± 95% t-interval over seeds; * : the interval excludes 0\n")
        for name, table in present.all_tables(doc, markdown=False).items():
            _say(f"{name}\n{table}\n")
    if args.update_doc:
        with open(args.update_doc, encoding="utf-8") as fh:
            text = fh.read()
        try:
            text = present.update_doc(text, present.all_tables(doc))
        except ValueError as exc:  # a marker naming no table: the file is left as it was
            _say(f"sae lab: {args.update_doc}: {exc}", err=True)
            return EXIT_FAILED
        write_text_atomic(args.update_doc, text, overwrite=True)
    if args.plot:
        present.plot(doc["summary"], args.plot, overwrite=args.overwrite)
    for what, path in (("results", args.out), ("tables", args.update_doc), ("plot", args.plot)):
        if path:
            _say(f"wrote {path} ({what})", err=args.json)
    return EXIT_OK


def _warmup(args) -> int:
    import itertools

    from ... import kernels

    try:
        runs = [registry.parse_run(text) for text in args.estimator or ["sae"]]
    except (ValueError, TypeError) as exc:
        _say(f"sae warmup: {exc}", err=True)
        return EXIT_USAGE
    from ...kernels import numba_compile, numba_scan

    total, done, compiled_before = 0.0, [], numba_compile.NOTICE.compiled
    for (name, options), dtype, data, mask, mode in itertools.product(runs, args.dtype or ["float32"],
                                                                      args.data_dtype or [None],
                                                                      args.mask_dtype or ["int64"],
                                                                      args.mask_mode or ["skip"]):
        kw = {"mask_mode": mode, "critic_lam": args.critic_lam, "data_dtype": data, **options}
        try:
            seconds = kernels.warmup(name, dtype=dtype, mask_dtype=None if mask == "none" else mask, **kw)
        except (ValueError, TypeError) as exc:
            _say(f"sae warmup: {exc}", err=True)
            return EXIT_USAGE
        total += seconds
        compiled = numba_compile.NOTICE.compiled - sum(d["compiled"] for d in done) - compiled_before
        done.append({"estimator": name, "options": options, "dtype": dtype, "data_dtype": data or dtype,
                     "mask_dtype": mask,
                     "mask_mode": kw["mask_mode"], "critic_lam": args.critic_lam, "seconds": seconds,
                     "compiled": compiled})
        if not args.json:
            data_text = f"{data} data, " if data else ""
            _say(f"{name} {dtype} values, {data_text}{mask} mask, {kw['mask_mode']} mode: {seconds:.2f} s")
    cache = numba_compile.cache_dir(numba_scan._scan)
    if args.json:  # compiled: numba compilations in this process (0: every kernel loaded from the cache)
        _say(json.dumps({"combinations": done, "totals": {"combinations": len(done), "seconds": total,
                                                          "compiled": sum(d["compiled"] for d in done)},
                         "cache_dir": cache}, indent=2, default=str))
        return EXIT_OK
    where = cache or "none (no writable directory: each process compiles)"
    _say(f"{total:.1f} s in all; {numba_compile.NOTICE.compiled} compiled, the rest loaded; numba cache: {where}")
    return EXIT_OK

def _annotate(args) -> int:
    from ...trajectory import TrajectoryError
    from ..annotate import annotate

    try:
        done = annotate(args.file, args.source, args.out, overwrite=args.overwrite)
    except TrajectoryError as exc:
        _say_problems(exc, exc.source or args.file)
        return EXIT_FAILED
    for line in done.lines():
        _say(line)
    return EXIT_OK


def _spec(args) -> int:
    from ... import spec

    try:
        if args.list:
            for name in spec.spec_names():
                _say(name)
        elif args.path:
            _say(str(spec.spec_path(args.name)))
        else:
            _say(spec.spec_document(args.name or spec.SPEC))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _say(f"sae spec: {exc}", err=True)
        return EXIT_USAGE
    return EXIT_OK


COMMANDS = {"annotate": _annotate, "spec": _spec, "validate": _validate, "recompute": _recompute, "inspect": _inspect, "report": _report,
            "demo": _demo, "lab": _lab, "warmup": _warmup}
