#!/usr/bin/env bash
# Where a test run ran: the CPU, its cores, and the versions that decide XLA's numerics.
#   .ci/env.sh [PYTHON]      (make test calls it with the venv's python)
PY=${1:-python3}
model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
[ -n "$model" ] || model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
echo "cpu: ${model:-unknown}, $(nproc) cores usable of $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?')"
"$PY" - <<'PYEOF'
import importlib.metadata as md
import os
import platform

names = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers")
versions = []
for name in names:
    try:
        versions.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        versions.append(f"{name} -")
print(f"python {platform.python_version()}: " + ", ".join(versions))
for key in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
    if os.environ.get(key):
        print(f"{key}={os.environ[key]}")
PYEOF
