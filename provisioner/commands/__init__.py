"""Command modules beyond the core ones in cli.py.

Each module here does `from provisioner.cli import cli, out, err, actor` and registers its commands
with `@cli.command()` / `@cli.group()`; cli.py imports every module of this package at the end, so an
area (discovery, routers, lifecycle, audit) adds commands without editing cli.py.
"""
