"""Subcommands beyond ``info`` / ``export`` (each registered only once it works)."""
