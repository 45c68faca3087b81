"""`python -m bench [all|<name>|plots] [--quick]` (names: NAMES below),
or `python -m bench chaos [--minutes N | --quick]` (not part of `all`)."""

from __future__ import annotations

import time

import click

NAMES = ("ingest", "emit_path", "cut", "e2e", "lateness", "scaling", "memory", "worker", "sweeper", "cluster",
         "client", "aio", "http", "instructions")
ON_DEMAND = ("chaos",)  # run only when named, never by `all`


@click.command()
@click.argument("which", type=click.Choice(["all", *NAMES, *ON_DEMAND, "plots"]), default="all")
@click.option("--quick", is_flag=True, help="A short smoke run (small sizes); figures are not meaningful.")
@click.option("--no-plots", is_flag=True, help="Do not redraw the PNG plots.")
@click.option("--minutes", type=float, default=None, help="chaos: how long to inject faults (default 2).")
def main(which: str, quick: bool, no_plots: bool, minutes: float | None) -> None:
    """Run the distbatch benchmarks; each starts its own redis-server on a free loopback port."""
    import importlib

    names = NAMES if which == "all" else () if which == "plots" else (which,)
    for name in names:
        click.echo(f"\n== {name}{' (quick)' if quick else ''}")
        t0 = time.perf_counter()
        extra = {"minutes": minutes} if name == "chaos" else {}
        importlib.import_module(f"bench.{name}").run(quick=quick, **extra)
        click.echo(f"({time.perf_counter() - t0:.1f}s)")
    if not no_plots and not quick and which not in ON_DEMAND:
        from . import plots

        click.echo(f"plots: {[str(p) for p in plots.run()]}")


if __name__ == "__main__":
    main()
