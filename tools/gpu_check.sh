#!/usr/bin/env bash
# GPU check kit: what the CPU test suite cannot show, run on ONE GPU machine without network in under 8 minutes.
#
#   tools/gpu_check.sh download [--dest DIR] [--print]          # on a machine WITH network: fetch the wheels
#   tools/gpu_check.sh run [--wheels DIR] [--out DIR] [--python PY] [--no-install] [--budget SECONDS] [--quick]
#
# The GPU machine may have nothing but Python 3.12, a CUDA build of torch and transformers. `download` fetches the
# pure-Python dependencies (megatron-core, omegaconf, math-verify, ... at the versions of constraints.txt) as wheels
# for that platform (CPython 3.12, manylinux x86_64), a few MiB in all; copy them over with the working tree.
# `run` installs them into OUT/site (pip --target, first on PYTHONPATH; the machine's own torch and transformers stay
# as they are), then runs the checks below, each skipped with its reason when what it needs is absent, and writes
# OUT/report.md:
#
#   environment   GPU, driver, torch/CUDA, and every installed version that differs from constraints.txt
#   policy        tests/gpu: the default process group carries CPU and CUDA tensors (NCCL beside gloo); Megatron
#                 log-probs equal HF's (fp32) and stay close in bf16; a bf16 train step; the 12 B/param optimizer
#                 state and its offload round trip; padded / bucketed / packed micro-batches agree (THD with TE)
#   vllm          tests/generation_vllm/test_vllm_gpu.py when vLLM imports: lone process, external launcher, sleep
#                 levels 1 and 2, refit through the trainer's lifecycle, vLLM vs Megatron log-probs, shutdown order
#   throughput    benchmarks/train_throughput.py --model qwen2-1.5b: 1.66 B training tokens/s, MFU against the bf16
#                 matmul peak measured in the same run
#   packing       benchmarks/micro_batching.py --model qwen2-1.5b: padding and tokens/s per micro-batch layout
#
# Exit status: 0 when no check failed (skipped ones do not fail the run), 1 otherwise, 2 for bad arguments.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEFAULT_WHEELS="$REPO/wheels/gpu_check"
# Importable names of what the wheels provide; the machine brings torch, transformers (and their dependencies).
KIT_IMPORTS="megatron.core omegaconf math_verify psutil pytest einops"

die() { echo "gpu_check: $*" >&2; exit 2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ------------------------------------------------------------------------------------------------------- download
pin() { grep -E "^$1==" "$REPO/constraints.txt" || die "constraints.txt has no pin for $1"; }

wheel_specs() {
    # Pinned in constraints.txt: exactly those versions. The rest: any version pip finds for the platform.
    local name
    for name in megatron-core omegaconf math-verify latex2sympy2_extended einops; do pin "$name"; done
    echo psutil pytest pluggy iniconfig pygments
}

# Pure-Python packages published as source only (antlr4-python3-runtime 4.9.3, the version omegaconf/hydra need):
# built into a py3-none-any wheel here, which installs on any platform.
sdist_specs() { pin antlr4-python3-runtime; }

cmd_download() {
    local dest=$DEFAULT_WHEELS print_only=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dest) [[ $# -ge 2 ]] || die "--dest needs a directory"; dest=$2; shift 2 ;;
            --print) print_only=1; shift ;;
            *) die "download: unknown option '$1' (see --help)" ;;
        esac
    done
    local specs sdists
    specs=$(wheel_specs | tr '\n' ' ')
    sdists=$(sdist_specs | tr '\n' ' ')
    local cmd=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
               --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64 -d "$dest" $specs)
    local build=(python3 -m pip wheel --no-deps -w "$dest" $sdists)
    if [[ $print_only == 1 ]]; then
        echo "${cmd[*]}"
        echo "${build[*]}"
        return 0
    fi
    mkdir -p "$dest"
    "${cmd[@]}"
    "${build[@]}"
    compgen -G "$dest/*.tar.gz" >/dev/null && rm -f "$dest"/*.tar.gz
    local size
    size=$(du -sm "$dest" | cut -f1)
    echo "wheels in $dest: ${size} MiB (the working tree travels with at most 64 MiB)"
}

# ------------------------------------------------------------------------------------------------------------ run
REPORT=""
FAILED=0
START=$SECONDS
BUDGET=470

record() {  # name status seconds detail
    printf '| %s | %s | %s s | %s |\n' "$1" "$2" "$3" "$4" >> "$REPORT"
    echo "[gpu_check] $1: $2 (${3} s) $4"
}

left() { echo $((BUDGET - (SECONDS - START))); }

# run_check NAME NEED_SECONDS LOG CMD...: runs CMD with the time left, records PASS/FAIL/SKIPPED.
run_check() {
    local name=$1 need=$2 log=$3
    shift 3
    local remaining
    remaining=$(left)
    if (( remaining < need )); then
        record "$name" SKIPPED 0 "time budget: ${remaining} s left, needs about ${need} s"
        return 0
    fi
    local t0=$SECONDS rc=0
    timeout "$remaining" "$@" > "$log" 2>&1 || rc=$?
    local took=$((SECONDS - t0)) tail_line
    tail_line=$(grep -E "passed|failed|error|skipped|MFU|tokens/s|Error" "$log" | tail -n 1 | tr '|' '/' || true)
    if [[ $rc == 0 ]]; then
        record "$name" PASS "$took" "$tail_line"
    elif [[ $rc == 124 ]]; then
        FAILED=1
        record "$name" FAIL "$took" "timed out (budget)"
    else
        FAILED=1
        record "$name" FAIL "$took" "exit $rc: $tail_line (log: $log)"
    fi
}

# probe_all PY MODULE...: one interpreter imports each module; prints "MODULE<TAB>ok" or "MODULE<TAB>the error".
probe_all() {
    local py=$1
    shift
    "$py" - "$@" <<'EOF' 2>/dev/null || true
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
        print(f"{name}\tok")
    except BaseException as err:  # an extension failing to load can raise more than ImportError
        print(f"{name}\t{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
EOF
}

status_of() { awk -F'\t' -v m="$2" '$1 == m {print $2}' <<< "$1"; }

cmd_run() {
    local wheels="" out="" py=python3 install=1 quick=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --wheels) [[ $# -ge 2 ]] || die "--wheels needs a directory"; wheels=$2; shift 2 ;;
            --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out=$2; shift 2 ;;
            --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; py=$2; shift 2 ;;
            --no-install) install=0; shift ;;
            --budget) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--budget needs a number of seconds, got '${2:-}'"
                      BUDGET=$2; shift 2 ;;
            --quick) quick=1; shift ;;
            *) die "run: unknown option '$1' (see --help)" ;;
        esac
    done
    command -v "$py" >/dev/null 2>&1 || die "--python: '$py' is not an executable"
    out=${out:-$REPO/runs/gpu_check/$(date +%Y%m%d-%H%M%S)}
    mkdir -p "$out/logs"
    REPORT="$out/report.md"
    {
        echo "# GPU check, $(date '+%Y-%m-%d %H:%M %Z'), $(hostname)"
        echo
        echo "| check | result | time | detail |"
        echo "|---|---|---|---|"
    } > "$REPORT"

    if [[ $install == 1 ]]; then
        if [[ -z $wheels ]]; then
            [[ -d $DEFAULT_WHEELS ]] || die "no wheels: run 'tools/gpu_check.sh download' where there is network and copy $DEFAULT_WHEELS here, pass --wheels DIR, or use --no-install with a --python that has the dependencies"
            wheels=$DEFAULT_WHEELS
        fi
        [[ -d $wheels ]] || die "--wheels: '$wheels' is not a directory"
        compgen -G "$wheels/*.whl" >/dev/null || die "--wheels: no .whl files in '$wheels'"
        # Into a directory of its own, put first on the path: the machine's torch and transformers stay visible and
        # untouched, and nothing needs venv/ensurepip (often missing from system Pythons).
        local t0=$SECONDS
        if "$py" -m pip install --no-index --no-deps --target "$out/site" "$wheels"/*.whl > "$out/logs/install.log" 2>&1
        then
            record install PASS $((SECONDS - t0)) "$(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $out/site"
        else
            FAILED=1
            record install FAIL $((SECONDS - t0)) "pip install from $wheels failed (log: $out/logs/install.log)"
        fi
        export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1

    # Environment: what the numbers were measured on, and where it departs from the tested version set.
    local t0=$SECONDS
    "$py" - "$REPO/constraints.txt" > "$out/environment.txt" 2>&1 <<'EOF' || true
import platform, sys
from importlib import metadata
print(f"python {platform.python_version()} on {platform.platform()}")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
except Exception as err:
    print(f"torch: {err}")
for line in open(sys.argv[1]):
    line = line.strip()
    if not line or line.startswith("#") or "==" not in line:
        continue
    name, want = line.split("==")
    try:
        got = metadata.version(name)
    except metadata.PackageNotFoundError:
        got = "absent"
    print(f"{name}: {got}" + ("" if got == want else f"   (constraints.txt: {want})"))
EOF
    local cuda=0
    grep -q "cuda available: True" "$out/environment.txt" && cuda=1
    record environment INFO $((SECONDS - t0)) "$(head -n 3 "$out/environment.txt" | tr '\n' ';' | tr '|' '/')"

    local probes mod missing=""
    probes=$(probe_all "$py" $KIT_IMPORTS nemo_igrpo transformer_engine vllm mamba_ssm)
    for mod in $KIT_IMPORTS nemo_igrpo; do
        [[ $(status_of "$probes" "$mod") == ok ]] || missing="$missing $mod"
    done
    if [[ -n $missing ]]; then
        FAILED=1
        record imports FAIL 0 "not importable:$missing"
        echo "report: $REPORT"
        return 1
    fi
    record imports PASS 0 "$KIT_IMPORTS nemo_igrpo"

    local te vllm mamba
    te=$(status_of "$probes" transformer_engine)
    vllm=$(status_of "$probes" vllm)
    mamba=$(status_of "$probes" mamba_ssm)
    record "transformer engine" INFO 0 "$([[ $te == ok ]] && echo "present: packed micro-batches use THD" || echo "absent ($te): local attention, packed rows use a block-diagonal mask")"

    if [[ $cuda != 1 ]]; then
        record policy SKIPPED 0 "no CUDA GPU on this machine"
        record vllm SKIPPED 0 "no CUDA GPU on this machine"
        record throughput SKIPPED 0 "no CUDA GPU on this machine"
        record packing SKIPPED 0 "no CUDA GPU on this machine"
    else
        run_check policy 90 "$out/logs/policy.log" "$py" -m pytest -q -s -p no:cacheprovider -m gpu "$REPO/tests/gpu"
        if [[ $vllm == ok ]]; then
            run_check vllm 150 "$out/logs/vllm.log" env VLLM_ENABLE_V1_MULTIPROCESSING=0 "$py" -m pytest -q -s \
                -p no:cacheprovider "$REPO/tests/generation_vllm/test_vllm_gpu.py"
        else
            record vllm SKIPPED 0 "vLLM does not import ($vllm)"
        fi
        if [[ $mamba == ok ]]; then
            run_check nemotron-h 120 "$out/logs/nemotron_h.log" "$py" -m pytest -q -s -p no:cacheprovider -m gpu \
                "$REPO/tests/conversion/test_nemotron_h.py"
        else
            record nemotron-h SKIPPED 0 "mamba-ssm does not import ($mamba)"
        fi
        if [[ $quick == 1 ]]; then
            record throughput SKIPPED 0 "--quick"
            record packing SKIPPED 0 "--quick"
        else
            run_check throughput 150 "$out/logs/throughput.log" "$py" "$REPO/benchmarks/train_throughput.py" \
                --model qwen2-1.5b --out "$out/train_throughput.json"
            run_check packing 90 "$out/logs/packing.log" "$py" "$REPO/benchmarks/micro_batching.py" \
                --model qwen2-1.5b --batches stage2 --reps 2 --out "$out/micro_batching.json"
        fi
    fi
    {
        echo
        echo "Total: $((SECONDS - START)) s of a ${BUDGET} s budget. Environment: environment.txt; logs: logs/."
        echo
        echo '```'
        cat "$out/environment.txt"
        echo '```'
        for log in "$out"/logs/policy.log "$out"/logs/vllm.log; do
            [[ -f $log ]] || continue
            echo
            echo "measured ($(basename "$log")):"
            echo '```'
            grep -E "^(GPU|bf16|optimizer|peak|padded|bucketed|packed)" "$log" || true
            echo '```'
        done
    } >> "$REPORT"
    echo "report: $REPORT"
    return $FAILED
}

case "${1:-}" in
    download) shift; cmd_download "$@" ;;
    run) shift; cmd_run "$@" ;;
    -h|--help|help) usage ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command '$1': expected 'download' or 'run' (see --help)" ;;
esac
