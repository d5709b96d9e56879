"""The `kip` command line: `kip distill`, `kip evaluate` (KRR, finite networks under a named protocol,
SLaPkNN), `kip protocols`, `kip export`, `kip label-solve`, `kip trajectories` (MTT's experts), `kip
sweep`, and the Data Diet's `kip score`, `kip prune`, `kip train`. What each accepts: `kip.cli_args`.

Bad input prints one line `kip: error: ...` and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from kip import entry

entry.configure()  # an entry point: before numpy and scipy load (OpenBLAS reads its threads once)

from kip import InputError, TrainingDiverged, cli_args, data, knn, krr, method_run  # noqa: E402
from kip.kernels import rf  # noqa: E402


def _refuse_foreign(args, table: dict[str, tuple[str, ...]]) -> None:
    """One line for an option given that the chosen --method does not use (`table`: option -> methods)."""
    method_run.refuse_foreign(args.method, vars(args), table)


def _check_evaluate_options(args) -> None:
    """One line for an option the chosen method does not use; then the defaults."""
    _refuse_foreign(args, cli_args.EVALUATE_OPTIONS)
    defaults = {"kernel": "fc1", "rf_models": rf.DEFAULT_MODELS, "rf_width": rf.DEFAULT_WIDTH, "precision": "float64",
                "reg": krr.DEFAULT_REG, "block_size": krr.DEFAULT_BLOCK, "protocol": "kip", "seed": 0,
                "k": knn.DEFAULT_K, "networks_per_subset": 1, "cache_dir": os.path.join(cli_args.DEFAULT_RUNS_DIR, "networks")}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _default_out(command: str, args) -> str:
    what = args.method if command == "distill" and args.method in cli_args.NETWORKED else args.kernel
    return os.path.join(cli_args.DEFAULT_RUNS_DIR, f"{command}-{args.dataset}-{what}-ipc{args.ipc}-seed{args.seed}")


def _config(cls, args):
    """The dataclass `cls` from the parsed options of the same names."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _distill(args, run) -> None:
    """`kip distill --method ...`: one line for an option the method does not use, then the run,
    then (with --eval-protocol) its finite networks."""
    _refuse_foreign(args, cli_args.DISTILL_OPTIONS)
    if args.eval_networks is not None and not args.eval_protocol:
        raise InputError("--eval-networks needs --eval-protocol")
    if args.eval_protocol:
        from kip import protocols

        protocols.load(args.eval_protocol)  # a bad name fails before the run, not after it
    out = args.out or _default_out("distill", args)
    progress = not args.no_progress
    if args.method == "kip":
        for name, value in cli_args.KIP_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        run.distill_run(_config(run.DistillConfig, args), out, resume=args.resume, overwrite=args.overwrite, progress=progress)
    elif args.method == "label-solve":
        from kip import label_solve

        args.zca = bool(args.zca)
        label_solve.label_solve_run(_config(label_solve.LabelSolveConfig, args), out, overwrite=args.overwrite)
    else:
        args.init = args.init or "real"
        args.snapshots = bool(args.snapshots)
        args.clock = args.clock or "wall"
        args.eval_every = 100 if args.eval_every is None else args.eval_every
        args.val_size = args.val_size or 0
        method_run.method_run(_config(method_run.MethodConfig, args), out, resume=bool(args.resume),
                              overwrite=args.overwrite, progress=progress)
    if args.eval_protocol:
        from kip import transfer

        transfer.judge_run(out, args.eval_protocol, args.eval_networks, args.data_dir, args.seed, progress)


def main(argv: list[str] | None = None) -> int:
    args = cli_args.parser().parse_args(argv)
    if args.command in cli_args.KERNEL_COMMANDS or (args.command == "evaluate" and args.method == "krr"):
        entry.enable_x64()  # kernel runs solve in float64; finite networks train in float32, as always
    from kip import io, label_solve, report, run  # after parsing, so --help stays fast

    try:
        if args.command == "distill":
            _distill(args, run)
        elif args.command == "label-solve":
            args.zca = bool(args.zca)
            label_solve.label_solve_run(_config(label_solve.LabelSolveConfig, args), args.out or _default_out("label-solve", args),
                                overwrite=args.overwrite)
        elif args.command == "evaluate":
            _check_evaluate_options(args)
            code = report.provenance(allow_dirty=True)  # taken before it runs; its stamp says if the code was dirty
            if args.method == "krr":
                options = run.KernelOptions(args.kernel, args.rf_models, args.rf_width, seed=args.seed)
                result = run.evaluate_run(args.distilled, args.dataset, args.data_dir, options, args.preprocess,
                                          args.precision, args.reg, args.block_size, max_memory=args.max_memory,
                                          devices=args.devices, zca_strength=args.zca_strength, layout=args.layout,
                                          hard_labels=bool(args.hard_labels))
            elif args.method == "slapknn":
                from kip import transfer

                result = transfer.slapknn_run(args.distilled, args.dataset, args.data_dir, args.preprocess, args.k,
                                              args.layout)
            else:
                from kip import protocols, transfer

                overrides = {name: getattr(args, name) for name in protocols.OVERRIDABLE if hasattr(args, name)}
                result = transfer.protocol_run(
                    args.distilled, args.dataset, args.data_dir, args.protocol, overrides, args.matched, args.preprocess,
                    args.zca_strength, args.layout, args.seed, args.networks_per_subset, args.cache_dir,
                    None if args.vectorize is None else args.vectorize == "yes", not args.no_progress,
                    val_from_set=bool(args.val_from_set))
        elif args.command == "trajectories":
            from kip import trajectories

            config = _config(trajectories.TrajectoryConfig, args)
            out = args.out or os.path.join(cli_args.DEFAULT_RUNS_DIR, f"trajectories-{args.dataset}-width{args.width or 128}")
            trajectories.record(config, out, overwrite=args.overwrite, progress=not args.no_progress)
        elif args.command == "protocols":
            from kip import protocols

            print(protocols.listing(args.name))
        elif args.command == "export":
            from kip import release

            done = release.export(args.distilled, args.out, args.dataset, args.data_dir, args.preprocess,
                                  args.zca_strength, args.layout)
            print(f"wrote {done['out']}: images {done['images']} channel-first, preprocessing {done['recipe']}")
        elif args.command in ("score", "prune", "train"):
            from kip import diet

            if args.command == "prune":
                diet.prune_run(args.scores, args.out, args.keep, args.offset, args.class_balanced, args.random, args.seed)
            elif args.command == "score":
                diet.score_run(data.load(args.dataset, args.data_dir), args.score, args.out, cli_args.recipe(args), args.runs,
                               args.epoch, args.seed, args.never_learned, args.last_layer_only, args.overwrite,
                               not args.no_progress)
            else:
                diet.train_run(data.load(args.dataset, args.data_dir), args.subset, cli_args.recipe(args), args.seeds, args.seed,
                               args.out, not args.no_progress)
        elif args.command == "sweep":
            from kip import sweep

            grid = sweep.load(args.config, args.out)
            if args.dry_run:
                for point, _ in grid.cells():
                    print(grid.cell_dir(point))
            else:
                code = report.provenance(allow_dirty=True)  # a sweep is a user's run: its stamp says if the code was dirty
                records = sweep.run_sweep(grid, args.devices, not args.no_progress, overwrite=args.overwrite)
                print(sweep.write_summary(grid, records, code))
        if args.command == "evaluate" and args.out:
            io.write_json(args.out, {**result, "code": code, "environment": run.environment(code)})
    except InputError as e:
        print(f"kip: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"kip: training diverged: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
