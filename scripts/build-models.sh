#!/usr/bin/env bash
# Rebuild the shipped default models from scratch (`make models`):
#   1. train training/configs/ship/{ultrasound,mammography,histopathology}.yaml into runs/ship/<stage>/
#      and each further member of the stage (members_of: config and seed) beside it; a stage of
#      several members ships their ensemble (`breastdx ensemble`, the members' logits averaged,
#      scored into runs/ship/<stage>-ensemble/), a stage of one its run
#   2. export each best.pt with the torch-vs-ONNX parity check on its test split:
#      - float32 file           -> FULL_STORE (outside git), alias production
#      - fp16 weight storage    -> a scratch store, then `breastdx evaluate` scores that very file
#        on the committed test split(s) at the original resolution and registers it in
#        SHIP_STORE (committed) with the evaluated figures on its card, alias staging; verified,
#        then production. The card's test figures are those of `breastdx evaluate`.
#   2b. the reduced-precision variants auto may serve (VARIANTS=0 skips them): openvino-bf16 for
#      the U-Nets, an int8 file (`breastdx quantize`, calibrated on training images) run by both
#      int8 runtimes for the mammography U-Net and the ResNet50; `breastdx evaluate` on each
#      runtime registers a new version listing it with its test figures (refused beyond a 0.01
#      Dice/AUC loss), verified, then production. (The ultrasound U-Net's int8 passes that rule
#      but loses calibration: docs/results/ultrasound-model.md.)
#   3. verify both stores (sha256, ONNX Runtime load, inputs/outputs vs the card)
# Every run registers NEW versions; a stored version is never overwritten.
#
# Environment (all optional):
#   BREASTDX_DATA_ROOT  data folder holding busi/, busbra/, cbis-ddsm-mass/,
#                       mammography/mini-mias/, idc/ (../shared/data)
#   SHIP_STORE          shipped store (models_registry/store)
#   FULL_STORE          store of the float32 variants, a path or URI (runs/model-store-full)
#   SHIP_RUNS           training output folder (runs/ship)
#   STAGES              stages to build, e.g. "ultrasound" (all three)
#   REUSE_RUNS=1        skip training where a finished run (best.pt + metrics.json) exists
#   TRAIN_OVERRIDES     extra key=value overrides for every training run (smoke tests)
#   PARITY_N            test images in each parity check (64)
#   VENV                virtual environment, created if needed (.venv)
#   EVAL_ULTRASOUND ... data folders the card's test figures are measured on, per stage
#                       (EVAL_ULTRASOUND="busi"; defaults: "busi busbra", "cbis-ddsm-mass
#                       mammography/mini-mias", idc)
#   OMP_NUM_THREADS     torch threads (1: the thread count the shipped cards were measured with;
#                       another count changes float sums, so the figures drift by ~0.03)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}

venv=${VENV:-.venv}
data_root=${BREASTDX_DATA_ROOT:-../shared/data}
ship_store=${SHIP_STORE:-models_registry/store}
full_store=${FULL_STORE:-runs/model-store-full}
runs=${SHIP_RUNS:-runs/ship}
stages=${STAGES:-ultrasound mammography histopathology}
parity_n=${PARITY_N:-64}
read -r -a overrides <<<"${TRAIN_OVERRIDES:-}"

declare -A model_name=(
    [ultrasound]=ultrasound-unet
    [mammography]=mammography-unet
    [histopathology]=histopathology-resnet18
)
declare -A data_dir=(  # data.root of each training run, under the data root
    [ultrasound]=.
    [mammography]=.  # cbis-ddsm-mass/ and mammography/mini-mias/ (dataset cbis_ddsm_coco+mias)
    [histopathology]=idc
)
# Data sets each card's test figures are measured on (space-separated folders under the data
# root), each restricted to its entries of the stage's committed split file's test part.
declare -A eval_dirs=(
    [ultrasound]=${EVAL_ULTRASOUND:-busi busbra}
    [mammography]=${EVAL_MAMMOGRAPHY:-cbis-ddsm-mass mammography/mini-mias}
    [histopathology]=${EVAL_HISTOPATHOLOGY:-idc}
)

# One training run per "config:seed" (configs under training/configs/); more than one: the shipped
# model is their ensemble, with the first config as its recipe (data, split, preprocessing).
declare -A members_of=(
    [ultrasound]="ship/ultrasound.yaml:0 ship/ultrasound.yaml:1 ultrasound-w24.yaml:0"
    [mammography]="ship/mammography.yaml:0"
    [histopathology]="ship/histopathology.yaml:0"
)
member_run() {  # stage, index, config, seed -> the run folder (the first member: runs/ship/<stage>)
    if [[ $2 == 0 ]]; then echo "$runs/$1"; else echo "$runs/$1-$(basename "$3" .yaml)-seed$4"; fi
}

declare -A variants_of=(  # in this order; VARIANTS=0 skips them
    [ultrasound]="openvino-bf16"
    [mammography]="openvino-bf16 openvino-int8 onnxruntime-int8"
    [histopathology]="openvino-int8 onnxruntime-int8"
)

log() { printf '%s build-models: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

for stage in $stages; do
    if [[ -z "${model_name[$stage]:-}" ]]; then
        echo "build-models: unknown stage '$stage'; stages: ${!model_name[*]}" >&2
        exit 2
    fi
    for dir in ${data_dir[$stage]} ${eval_dirs[$stage]}; do
        if [[ ! -d "$data_root/$dir" ]]; then
            echo "build-models: $data_root/$dir is absent (set BREASTDX_DATA_ROOT)" >&2
            exit 2
        fi
    done
done

scripts/setup-env.sh "$venv" serve,train,dev
bdx="$venv/bin/breastdx"

# 1. Train (fixed seeds, committed split files: the cards' metrics come out again).
for stage in $stages; do
    read -r -a specs <<<"${members_of[$stage]}"
    members=()
    for index in "${!specs[@]}"; do
        config=${specs[$index]%:*} seed=${specs[$index]##*:}
        run=$(member_run "$stage" "$index" "$config" "$seed")
        members+=(--member "$run/best.pt")
        if [[ "${REUSE_RUNS:-0}" == 1 && -f "$run/best.pt" && -f "$run/metrics.json" ]]; then
            log "$stage: reusing the finished run in $run"
            continue
        fi
        log "$stage: training $config (seed $seed) into $run"
        start=$SECONDS
        "$bdx" train --config "training/configs/$config" --no-progress \
            "data.root=$data_root/${data_dir[$stage]}" "output_dir=$run" "seed=$seed" \
            "${overrides[@]}"
        log "$stage: trained in $((SECONDS - start)) s"
    done
    if (( ${#specs[@]} > 1 )); then
        log "$stage: ensemble of ${specs[*]} -> $runs/$stage-ensemble"
        "$bdx" ensemble --config "training/configs/${specs[0]%:*}" "${members[@]}" \
            --out "$runs/$stage-ensemble" "data.root=$data_root/${data_dir[$stage]}"
    fi
done

# 2. Export with parity on the test split, register, promote.
for stage in $stages; do
    name=${model_name[$stage]}
    run="$runs/$stage"
    [[ "${members_of[$stage]}" == *" "* ]] && run="$runs/$stage-ensemble"
    out="$run/export"
    rm -rf "$out"  # exports of an earlier build (runs/ only; the stores keep every version)
    mkdir -p "$out"
    # segmentation: thresholds chosen with the exported file on validation; mammography's is a
    # detection operating point (most masses hit with at most one false mark per film, and at
    # most 40 % of the normal films marked: the issue's test limit is 50 %)
    operating_point=()
    case $stage in
        ultrasound) operating_point=(--operating-point-split val) ;;
        mammography)
            operating_point=(--operating-point-split val --max-fp-per-image 1
                --max-false-lesion-rate 0.4 --image-malignancy lesion_weighted) ;;
    esac
    log "$stage: float32 export -> $full_store"
    "$bdx" export --checkpoint "$run/best.pt" --out "$out/full/model.onnx" \
        --parity-split test --parity-n "$parity_n" "${operating_point[@]}" \
        --register --name "$name" --alias production --store "$full_store" | tee "$out/full.json"
    log "$stage: fp16 weight storage export -> $out/store (scratch)"
    "$bdx" export --checkpoint "$run/best.pt" --out "$out/shipped/model.onnx" --weights-fp16 \
        --parity-split test --parity-n "$parity_n" "${operating_point[@]}" \
        --register --name "$name" --alias staging --store "$out/store" | tee "$out/shipped.json"
    log "$stage: evaluation at the original resolution -> $ship_store (card figures)"
    read -r -a dirs <<<"${eval_dirs[$stage]}"
    split=$("$venv/bin/python" -c 'import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["data"]["split_file"])' "training/configs/ship/$stage.yaml")
    "$bdx" evaluate --stage "$stage" "${dirs[@]/#/$data_root/}" --model "$name@staging" \
        --store "$out/store" --split "$split" --subset test \
        --out "$out/evaluation" --register --register-store "$ship_store" --alias staging
    "$bdx" models verify --store "$ship_store" "$name@staging"
    "$bdx" models promote --store "$ship_store" "$name@staging" --alias production

    # 2b. The reduced-precision variants the service's auto runtime may pick (docs/deployment.md,
    # "Runtimes"): each a new version whose card lists it with its own test figures, refused
    # where a Dice or AUC figure falls more than 0.01 below float32. bf16 runs the same file; the
    # first int8 runtime gets an int8 file calibrated on training images (breastdx quantize),
    # which the versions after it carry.
    [[ "${VARIANTS:-1}" == 1 ]] || continue
    read -r -a variants <<<"${variants_of[$stage]}"
    quantized=0
    for variant in "${variants[@]}"; do
        source_ref="$name@production" source_store="$ship_store"
        if [[ $variant == *-int8 && $quantized == 0 ]]; then
            log "$stage: int8 file, calibrated on the split's training images -> $out/int8-store"
            "$bdx" quantize --stage "$stage" "${dirs[@]/#/$data_root/}" \
                --model "$name@production" --store "$ship_store" --split "$split" \
                --register-store "$out/int8-store" --alias staging
            source_ref="$name@staging" source_store="$out/int8-store" quantized=1
        fi
        log "$stage: $variant evaluated on the test split -> $ship_store"
        "$bdx" evaluate --stage "$stage" "${dirs[@]/#/$data_root/}" --model "$source_ref" \
            --store "$source_store" --split "$split" --subset test --runtime "$variant" \
            --out "$out/evaluation-$variant" --register --register-store "$ship_store" \
            --alias staging
        "$bdx" models verify --store "$ship_store" "$name@staging"
        "$bdx" models promote --store "$ship_store" "$name@staging" --alias production
    done
done

# 3. Verify every version of both stores and show what ships.
"$bdx" models verify --store "$ship_store"
"$bdx" models verify --store "$full_store"
"$bdx" models list --store "$ship_store"
total=$(find "$ship_store" -name '*.onnx' -not -path '*/.staging/*' -printf '%s\n' \
    | awk '{s += $1} END {print s + 0}')
log "ONNX files in $ship_store: $total bytes (budget 100000000)"
