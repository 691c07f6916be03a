"""The subcommands of `archive-local`: argument handling and output only; what they
need is built by `runtime.core` / `runtime.serving`."""
