#!/usr/bin/env bash
# Run the suite under AUTOMATIC1111's pins (Python 3.10, torch 2.1.2, numpy 1.26.2, safetensors 0.4.2,
# Pillow 9.5.0, gradio 3.41.2) and optionally Forge's Gradio 4.40. Not part of CI: it downloads ~3 GB
# (torch 2.1.2 + its CUDA wheels from PyPI). Usage: tests/compat_pins.sh [VENV_DIR] [--gradio4]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$HOME/.cache/lora_studio_compat}"
if [ -z "${PY310:-}" ]; then  # first candidate that really is a 3.10 (a pyenv shim may exist but refuse)
  for c in python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then PY310="$c"; break; fi
  done
fi
[ -n "${PY310:-}" ] || { echo "no Python 3.10 found; set PY310=/path/to/python3.10" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  "$PY310" -m venv "$VENV"
  # lycoris-lora 3.4 is the last release that imports on torch 2.1 (4.x uses torch.library.custom_op);
  # onnx<1.18 and huggingface_hub<0.26 keep numpy 1.26 and gradio 3.41 working; transformers 4.30.2, accelerate
  # 0.21.0, fastapi 0.94.0 and httpx 0.24.1 are A1111's pins (gradio 3.41 cannot start its server with newer
  # fastapi/httpx: every app test fails on "localhost is not accessible"); ftfy comes with its open-clip-torch.
  "$VENV/bin/pip" install torch==2.1.2 numpy==1.26.2 safetensors==0.4.2 Pillow==9.5.0 gradio==3.41.2 \
      fastapi==0.94.0 httpx==0.24.1 accelerate==0.21.0 ftfy \
      "huggingface_hub<0.26" onnxruntime "onnx<1.18" pytest hypothesis selenium "lycoris-lora<4" \
      transformers==4.30.2 diffusers==0.30.3
fi
cd "$REPO"
"$VENV/bin/python" -c "import sys, torch, numpy, safetensors, PIL, gradio; print(sys.version.split()[0], torch.__version__, numpy.__version__, safetensors.__version__, PIL.__version__, gradio.__version__)"
# These compare against lycoris 4's API (or hit lycoris 3.4 bugs/gaps): they fail inside lycoris, not lib_lora.
ORACLE_ONLY=(test_algos.py::test_boft_matches_lycoris_at_m1 "test_algos.py::test_diag_oft_matches_lycoris[True-"
             test_algos.py::test_dora_on_lora_both_axes test_algos.py::test_dora_on_loha_and_lokr
             test_algos.py::test_full_matches_module_forward test_algos.py::test_half_precision_base_weights
             test_algos.py::test_lokr_tucker test_algos.py::test_peft_magnitude_vector_is_output_axis
             "test_keys.py::test_real_lycoris_state_dicts[sgm-ia3-" test_algo_kernels.py::test_boft_kernel_against_lycoris)
DESELECT=()
for t in "${ORACLE_ONLY[@]}"; do DESELECT+=(--deselect "tests/lib_lora/$t"); done   # tests mirror the packages
PYTHONPATH="$REPO" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "${DESELECT[@]}"
if [ "${2:-}" = "--gradio4" ]; then
  G4="$VENV-gradio4"
  if [ ! -x "$G4/bin/python" ]; then
    "$PY310" -m venv "$G4"
    # pydantic >= 2.11 (with the fastapi/starlette it pulls in) breaks Gradio 4.40's page setup, so the browser
    # test fails in a fresh venv; these are the newest versions that work with it.
    "$G4/bin/pip" install gradio==4.40.0 "huggingface_hub<0.26" numpy==1.26.2 Pillow==9.5.0 \
        "pydantic<2.11" "fastapi<0.113" "starlette<0.39"
    # torch & co. come from the pinned venv, after Gradio 4's own packages
    echo "$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')" \
        > "$("$G4/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz_pinned.pth"
  fi
  PYTHONPATH="$REPO" "$G4/bin/python" -m pytest -q -p no:cacheprovider tests/lib_lora/ui/test_ui_app.py \
      tests/lib_lora/ui/test_ui_presets_tab.py tests/lib_lora/ui/test_tagger_ui.py tests/lora_studio_webui/test_webui_infotext_xyz.py \
      tests/lora_studio_webui/test_webui_integration.py tests/lora_studio_webui/test_webui_units.py \
      tests/lib_lora/ui/test_ui_merge_tab.py tests/lib_lora/ui/test_ui_merge_live.py
fi
