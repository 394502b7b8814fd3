"""One command line for everything: train | eval | bench | diag | games.

Errors a user can cause (bad flags, unknown games, missing or corrupt files) are printed as one
line on stderr with exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from common.errors import UserError
from train.config import PRESETS, RunConfig, config_flags, preset, reconcile, set_field

def _games_list(text: str) -> list[str]:
    from envs.registry import resolve_games

    names = [g.strip() for g in text.split(",") if g.strip()]
    if not names:
        raise UserError("--games is empty; give a comma-separated list such as Pong,Breakout")
    return resolve_games(names)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2, as for every other user error)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,bench,diag,games}")

    tr = sub.add_parser("train", help="train a sequential multi-game run")
    tr.add_argument("--preset", default="default", choices=sorted(PRESETS),
                    help="named config to start from (default: %(default)s; `smoke` is a tiny check)")
    # One flag per config field (train/config.py), its help the field's docstring.
    for f in config_flags():
        tr.add_argument(f.flag, default=None, type=str, dest=_dest(f.flag), metavar=_metavar(f.kind),
                        help=f"{f.help} [{f.key}; the preset's value if omitted]")
    tr.add_argument("--run-dir", type=Path, default=None,
                    help="where config, TensorBoard logs, checkpoints and evaluation go (default: runs/<preset>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    tr.add_argument("--allow-config-change", action="store_true",
                    help="with --resume, accept flags that change the saved config")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    tr.add_argument("--dist-timeout", type=float, default=1800.0, metavar="S",
                    help="under torchrun: seconds a rank waits in a collective for the others before the job "
                         "stops (rank 0's evaluations pause the others; default: %(default)s)")

    ev = sub.add_parser("eval", help="evaluate a run's stage checkpoints and write eval/forgetting.*, "
                                     "compare finished runs (--compare) or tabulate a T-maze sweep (--sweep)")
    target = ev.add_mutually_exclusive_group(required=True)
    target.add_argument("--run-dir", type=Path, default=None, help="the run directory to evaluate")
    target.add_argument("--compare", type=Path, nargs="+", default=None, metavar="DIR",
                        help="print a side-by-side table of these evaluated runs (runs differing only in "
                             "seed are grouped) with 95%% IQM intervals, and write it as CSV")
    target.add_argument("--sweep", type=Path, nargs="+", default=None, metavar="DIR",
                        help="T-maze runs (one tmaze-D each): print success (the share of evaluation episodes "
                             "that take the cued exit) against delay per method, with 95%% intervals over seeds "
                             "and episodes, and write it as CSV and PNG")
    ev.add_argument("--csv", type=Path, default=None,
                    help="with --compare or --sweep, where the CSV goes (default: <first run>/eval/compare.csv; "
                         "for --sweep: sweep.csv in results/<experiment>/)")
    ev.add_argument("--png", type=Path, default=None,
                    help="with --sweep, where the plot goes (default: sweep.png beside the CSV's default)")
    ev.add_argument("--games", default=None, help="comma-separated games to evaluate after every stage "
                                                  "(default: the schedule's games, each from the stage it is first trained)")
    ev.add_argument("--episodes", type=int, default=None, help="episodes per game (default: the run's eval.episodes)")
    ev.add_argument("--greedy", action="store_true", help="act greedily instead of sampling")
    ev.add_argument("--reference-run", type=Path, nargs="+", default=None, metavar="DIR",
                    help="single-task runs (one game each, trained alone from scratch): adds each game's AUC "
                         "forward transfer against its reference to eval/forgetting.json")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device (default: %(default)s)")

    be = sub.add_parser("bench", help="measure speed; prints a table, or one JSON object with --json")
    be.add_argument("name", help="benchmark: throughput (env, actor, training speed), rtrl (RTRL vs BPTT time and memory), "
                                 "store (the expert store's links and cache policies), moe (MoE learner cost against E), "
                                 "cache (prefetch policies on a real run's trace) or scale (the MoE learner with its "
                                 "experts' state past the machine's RAM)")
    be.add_argument("--json", action="store_true", help="print one JSON object with a `rows` list")
    be.add_argument("--seconds", type=float, default=10.0, help="measuring time per row (default: %(default)s)")

    di = sub.add_parser("diag", help="supervised memory diagnostics of the eLSTM core: RTRL vs TBPTT")
    di.add_argument("task", help="copy | anbn | haystack (see envs/sequence_tasks.py)")
    for flag, kind, name in _DIAG_FLAGS:
        di.add_argument(flag, type=kind, default=None, metavar=name.upper(), help=_diag_help(name))
    di.add_argument("--tb", default=None, metavar="DIR", help=_diag_help("tb"))
    di.add_argument("--json", action="store_true", help="print one JSON line of results on stdout (progress to stderr)")

    sub.add_parser("games", help="list the games that can be trained")
    return parser


# (flag, type, DiagConfig field) of `run.py diag`; help texts and defaults come from train/diag.py.
_DIAG_FLAGS = [("--learning", str, "learning"), ("--unroll", int, "unroll"), ("--segment", int, "segment"),
               ("--hidden-size", int, "hidden_size"), ("--steps", int, "steps"), ("--batch-size", int, "batch_size"),
               ("--lr", float, "lr"), ("--clip", float, "clip"), ("--symbols", int, "symbols"),
               ("--length", int, "length"), ("--delay", int, "delay"), ("--chrono-max", float, "chrono_max"),
               ("--seed", int, "seed"), ("--eval-sequences", int, "eval_sequences"),
               ("--log-every", int, "log_every"), ("--threads", int, "threads")]


def _diag_help(name: str) -> str:
    from train.diag import flag_help

    return flag_help(name)


def _dest(flag: str) -> str:
    return "cfg_" + flag.lstrip("-").replace("-", "_")


def _metavar(kind) -> str:
    return {int: "N", float: "X", bool: "true|false", str: "NAME"}.get(kind, "A,B,...")


def resolve_train_config(args: argparse.Namespace, world=None) -> tuple[RunConfig, Path, list[str]]:
    """The preset (or, with --resume, the saved config) with the given flags applied, and the
    preset values that the flags made it drop (``train.config.reconcile``; a resumed config keeps
    every value). In a distributed ``world`` the run dir and the saved config are rank 0's; the
    flags are each rank's own (``train/distributed.py`` compares the resulting configs)."""
    from train.distributed import World
    from storage.run_dir import RunDir
    from train.run_dir import holds_run, read_config

    world = world or World()
    run_dir = world.broadcast(args.run_dir or Path("runs") / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    rd = RunDir(run_dir)
    saved = world.on_rank0(lambda: read_config(rd).to_dict() if args.resume and holds_run(rd) else None)
    saved = world.broadcast(saved)
    cfg = RunConfig.from_dict(saved) if saved is not None else preset(args.preset)
    chosen = set()
    for f in config_flags():
        raw = getattr(args, _dest(f.flag))
        if raw is not None:
            set_field(cfg, f.key, _parse(f.flag, raw, f.kind))
            chosen.add(f.key)
    cfg.env.games = _games_list(",".join(cfg.env.games))
    dropped = reconcile(cfg, chosen) if saved is None else []
    return cfg, run_dir, dropped


def _parse(flag: str, raw: str, kind):
    if kind == list[str]:
        return _games_list(raw)
    if kind is bool:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise UserError(f"{flag} expects true or false, got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise UserError(f"{flag} expects {kind.__name__}, got {raw!r}") from None


def cmd_train(args: argparse.Namespace) -> None:
    from train.distributed import World
    from train.loop import train

    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise UserError(f"--dist-timeout must be a finite positive number of seconds, got {args.dist_timeout}")
    world = World.from_environment(args.cfg_device or "auto", args.dist_timeout)
    try:
        cfg, run_dir, dropped = resolve_train_config(args, world)
        if dropped and world.main:
            print(f"preset {args.preset!r}: your flags replace {'; '.join(dropped)}", flush=True)
        train(cfg, run_dir, resume=args.resume, allow_config_change=args.allow_config_change,
              show_progress=not args.no_progress, world=world)
    except UserError as e:
        if world.size > 1:
            # Say it now (whose problem it is, if not rank 0's), before the SIGTERM that torchrun sends
            # the ranks once one has failed can end this process.
            if not e.quiet:
                print(f"error: {e}" if world.main else f"error: rank {world.rank}: {e}", file=sys.stderr, flush=True)
                e.quiet = True
            world.exiting = True
        raise
    finally:
        world.close()


def cmd_eval(args: argparse.Namespace) -> None:
    if args.compare is not None:
        from eval.compare import compare_runs

        if args.games is not None or args.episodes is not None or args.greedy or args.reference_run is not None:
            raise UserError("--games, --episodes, --greedy and --reference-run apply to --run-dir, not to --compare")
        compare_runs(args.compare, csv_path=args.csv)
        return
    if args.sweep is not None:
        from eval.sweep import sweep_runs

        if args.games is not None or args.episodes is not None or args.greedy or args.reference_run is not None:
            raise UserError("--games, --episodes, --greedy and --reference-run apply to --run-dir, not to --sweep")
        sweep_runs(args.sweep, csv_path=args.csv, png_path=args.png)
        return
    if args.csv is not None:
        raise UserError("--csv applies only to --compare and --sweep")
    if args.png is not None:
        raise UserError("--png applies only to --sweep")
    from train.evaluate_run import evaluate_run

    games = _games_list(args.games) if args.games is not None else None
    if args.episodes is not None and args.episodes <= 0:
        raise UserError(f"--episodes must be positive, got {args.episodes}")
    evaluate_run(args.run_dir, games=games, episodes=args.episodes, greedy=args.greedy, device=args.device,
                 reference_runs=args.reference_run)


def cmd_bench(args: argparse.Namespace) -> None:
    from bench import run_bench

    run_bench(args.name, as_json=args.json, seconds=args.seconds)


def cmd_diag(args: argparse.Namespace) -> None:
    import json

    from train.diag import DiagConfig, run_diag

    values = {name: getattr(args, name) for _, _, name in _DIAG_FLAGS if getattr(args, name) is not None}
    cfg = DiagConfig(task=args.task, tb=args.tb, **values)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    results = run_diag(cfg, log=log)
    if args.json:
        print(json.dumps(results, sort_keys=True))


def cmd_games(args: argparse.Namespace) -> None:
    from envs.atari_data import ATARI_GAMES
    from envs.registry import GAMES, score_bounds

    print(f"{'game':<20} {'low':>10} {'high':>10}   normalised score = (score - low) / (high - low)")
    for game in GAMES:
        low, high = score_bounds(game)
        kind = "Atari: random / human" if game in ATARI_GAMES else "memory task: random / oracle"
        print(f"{game:<20} {low:>10.1f} {high:>10.1f}   {kind}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "diag": cmd_diag, "games": cmd_games}
    try:
        handlers[args.command](args)
    except UserError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`run.py games | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
