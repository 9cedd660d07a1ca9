# Makes conf/ the package `synthmed.conf` (mapped in pyproject.toml), so the configs ship inside the wheel and are
# found through importlib.resources. Configs only: no code here.
