"""Running model-written programs: a sandbox and one table of per-language build/run commands.
This package never imports torch."""
